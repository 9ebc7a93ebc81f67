//! Writes small ONNX models as protobuf bytes, by hand.
//!
//! Tests build their models here rather than with the importer's generated types, so that a
//! bug in the importer's decoding cannot hide in the test's encoding, and so that deliberately
//! broken models (unknown ops, bad attributes) are easy to write. Field numbers are those of
//! `onnx.proto` (ModelProto, GraphProto, NodeProto, AttributeProto, ValueInfoProto, TensorProto).

/// ONNX `TensorProto.DataType` codes used by the tests.
pub mod elem {
    pub const FLOAT: i32 = 1;
    pub const UINT8: i32 = 2;
    pub const INT8: i32 = 3;
    pub const INT32: i32 = 6;
    pub const INT64: i32 = 7;
    pub const BOOL: i32 = 9;
    pub const DOUBLE: i32 = 11;
}

/// A protobuf message under construction.
#[derive(Debug, Default, Clone)]
pub struct Msg(pub Vec<u8>);

impl Msg {
    fn key(&mut self, field: u32, wire: u8) {
        self.raw_varint(((field as u64) << 3) | wire as u64);
    }

    fn raw_varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    /// An int32/int64/enum field (negative values take ten bytes, as protobuf specifies).
    pub fn int(mut self, field: u32, v: i64) -> Self {
        self.key(field, 0);
        self.raw_varint(v as u64);
        self
    }

    pub fn float(mut self, field: u32, v: f32) -> Self {
        self.key(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn bytes(mut self, field: u32, b: &[u8]) -> Self {
        self.key(field, 2);
        self.raw_varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }

    pub fn str(self, field: u32, s: &str) -> Self {
        self.bytes(field, s.as_bytes())
    }

    pub fn msg(self, field: u32, m: &Msg) -> Self {
        self.bytes(field, &m.0)
    }
}

/// A node attribute.
#[derive(Debug, Clone)]
pub enum Attr {
    Int(&'static str, i64),
    Float(&'static str, f32),
    Str(&'static str, &'static str),
    Ints(&'static str, Vec<i64>),
    Floats(&'static str, Vec<f32>),
}

impl Attr {
    fn encode(&self) -> Msg {
        // AttributeProto: name = 1, f = 2, i = 3, s = 4, floats = 7, ints = 8, type = 20.
        match self {
            Attr::Float(n, v) => Msg::default().str(1, n).float(2, *v).int(20, 1),
            Attr::Int(n, v) => Msg::default().str(1, n).int(3, *v).int(20, 2),
            Attr::Str(n, v) => Msg::default().str(1, n).str(4, v).int(20, 3),
            Attr::Floats(n, v) => v
                .iter()
                .fold(Msg::default().str(1, n), |m, x| m.float(7, *x))
                .int(20, 6),
            Attr::Ints(n, v) => v
                .iter()
                .fold(Msg::default().str(1, n), |m, x| m.int(8, *x))
                .int(20, 7),
        }
    }
}

/// A `NodeProto` in the default domain.
pub fn node(op_type: &str, name: &str, inputs: &[&str], outputs: &[&str], attrs: &[Attr]) -> Msg {
    let mut m = Msg::default();
    for i in inputs {
        m = m.str(1, i);
    }
    for o in outputs {
        m = m.str(2, o);
    }
    m = m.str(3, name).str(4, op_type);
    for a in attrs {
        m = m.msg(5, &a.encode());
    }
    m
}

/// A dimension of a declared shape: a size or a symbol.
#[derive(Debug, Clone, Copy)]
pub enum D {
    N(i64),
    S(&'static str),
}

/// A `ValueInfoProto` for a tensor of element type `elem` (see [`elem`]) and shape `dims`.
pub fn value(name: &str, elem: i32, dims: &[D]) -> Msg {
    let shape = dims.iter().fold(Msg::default(), |m, d| {
        let dim = match d {
            D::N(n) => Msg::default().int(1, *n),
            D::S(s) => Msg::default().str(2, s),
        };
        m.msg(1, &dim)
    });
    let tensor_type = Msg::default().int(1, elem as i64).msg(2, &shape);
    let ty = Msg::default().msg(1, &tensor_type);
    Msg::default().str(1, name).msg(2, &ty)
}

/// A float `TensorProto` with `raw_data`.
pub fn tensor_f32(name: &str, dims: &[i64], data: &[f32]) -> Msg {
    let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let m = dims.iter().fold(Msg::default(), |m, d| m.int(1, *d));
    m.int(2, elem::FLOAT as i64).str(8, name).bytes(9, &raw)
}

/// A `TensorProto` of any fixed-size type from little-endian bytes, as `.pb` input files hold.
pub fn tensor_raw(name: &str, elem: i32, dims: &[i64], raw: &[u8]) -> Msg {
    let m = dims.iter().fold(Msg::default(), |m, d| m.int(1, *d));
    m.int(2, elem as i64).str(8, name).bytes(9, raw)
}

/// A whole model: IR version 8, default-domain opset `opset`.
pub fn model(
    opset: i64,
    nodes: &[Msg],
    inputs: &[Msg],
    outputs: &[Msg],
    initializers: &[Msg],
) -> Vec<u8> {
    let mut g = Msg::default();
    for n in nodes {
        g = g.msg(1, n);
    }
    g = g.str(2, "test");
    for t in initializers {
        g = g.msg(5, t);
    }
    for i in inputs {
        g = g.msg(11, i);
    }
    for o in outputs {
        g = g.msg(12, o);
    }
    let opset_id = Msg::default().str(1, "").int(2, opset);
    Msg::default()
        .int(1, 8)
        .str(2, "mlc-tests")
        .msg(7, &g)
        .msg(8, &opset_id)
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_follow_protobuf() {
        assert_eq!(Msg::default().int(1, 150).0, [0x08, 0x96, 0x01]);
        assert_eq!(Msg::default().int(2, -1).0.len(), 11);
        assert_eq!(Msg::default().str(2, "ab").0, [0x12, 2, b'a', b'b']);
    }
}

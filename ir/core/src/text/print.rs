//! The printer of the text form (grammar in the parent module's docs).
//!
//! The printer never fails and never panics, even on graphs the verifier rejects (printing a
//! broken graph is the first thing one does when debugging it): a value id out of range prints
//! its type as `<invalid>`, which then does not parse.

use super::{
    CANONICAL_NAN_BF16, CANONICAL_NAN_F16, CANONICAL_NAN_F32, CANONICAL_NAN_F64, is_plain_sym,
};
use crate::graph::{Graph, Node, ValueId};
use crate::ops::Op;
use crate::shape::{Dim, TensorType};
use crate::tensor::Tensor;
use half::{bf16, f16};
use std::fmt::Write;

/// How to print a graph.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrintOptions {
    /// Print constants with more elements than this as `[... N elements]`. Such text is for
    /// people: it does not parse. `None` (the default) prints every element.
    pub elide_consts_over: Option<usize>,
}

impl PrintOptions {
    /// Every element of every constant: the form that parses back.
    pub fn exact() -> Self {
        PrintOptions::default()
    }

    /// For human dumps: constants with more than `n` elements are abbreviated.
    pub fn elide_consts_over(n: usize) -> Self {
        PrintOptions {
            elide_consts_over: Some(n),
        }
    }
}

/// The exact text form of a graph; [`super::parse_graph`] reads it back to an equal graph.
pub fn print_graph(g: &Graph) -> String {
    print_graph_with(g, &PrintOptions::exact())
}

/// The text form of a graph, with options.
pub fn print_graph_with(g: &Graph, opts: &PrintOptions) -> String {
    let mut p = Printer {
        out: String::new(),
        opts,
    };
    p.graph(g, 0);
    p.out.push('\n');
    p.out
}

struct Printer<'a> {
    out: String,
    opts: &'a PrintOptions,
}

impl Printer<'_> {
    fn indent(&mut self, depth: usize) {
        for _ in 0..depth {
            self.out.push_str("  ");
        }
    }

    /// Prints `graph (...) -> (...) { ... }` without a trailing newline, the body at `depth + 1`.
    fn graph(&mut self, g: &Graph, depth: usize) {
        self.out.push_str("graph (");
        for (i, p) in g.inputs.iter().enumerate() {
            if i > 0 {
                self.out.push_str(", ");
            }
            let _ = write!(self.out, "{}: ", p.value);
            self.value_type(g, p.value);
            self.out.push(' ');
            self.string(&p.name);
        }
        self.out.push_str(") -> (");
        for (i, p) in g.outputs.iter().enumerate() {
            if i > 0 {
                self.out.push_str(", ");
            }
            let _ = write!(self.out, "{} ", p.value);
            self.string(&p.name);
        }
        self.out.push_str(") {\n");

        for (i, t) in g.consts.iter().enumerate() {
            self.indent(depth + 1);
            let _ = write!(self.out, "@c{i} = const ");
            self.ty(&TensorType::fixed(t.dtype(), t.shape()));
            self.out.push(' ');
            self.elements(t);
            self.out.push('\n');
        }

        // Values that nothing defines still occupy the table; declaring them keeps ids exact.
        let mut defined = vec![false; g.values.len()];
        let mut mark = |v: ValueId| {
            if let Some(d) = defined.get_mut(v.0 as usize) {
                *d = true;
            }
        };
        g.inputs.iter().for_each(|p| mark(p.value));
        g.nodes
            .iter()
            .flat_map(|n| &n.outputs)
            .for_each(|&v| mark(v));
        for (i, _) in defined.iter().enumerate().filter(|(_, d)| !**d) {
            self.indent(depth + 1);
            let v = ValueId(u32::try_from(i).expect("value tables hold fewer than 2^32 values"));
            let _ = write!(self.out, "{v} = undef : ");
            self.value_type(g, v);
            self.out.push('\n');
        }

        for n in &g.nodes {
            self.node(g, n, depth + 1);
        }
        self.indent(depth);
        self.out.push('}');
    }

    fn node(&mut self, g: &Graph, n: &Node, depth: usize) {
        self.indent(depth);
        for (i, v) in n.outputs.iter().enumerate() {
            let _ = write!(self.out, "{}{v}", if i > 0 { ", " } else { "" });
        }
        if !n.outputs.is_empty() {
            self.out.push_str(" = ");
        }
        match &n.op {
            Op::Constant { id } => {
                let _ = write!(self.out, "constant @c{id}");
                if !n.inputs.is_empty() {
                    self.out.push(' ');
                    self.args(&n.inputs);
                }
            }
            op => {
                match op_head(op) {
                    Ok((name, attrs)) => {
                        self.out.push_str(&name);
                        if let Some(a) = attrs {
                            let _ = write!(self.out, " {a} ");
                        }
                    }
                    Err(e) => {
                        let _ = write!(self.out, "<unprintable op: {e}>");
                    }
                }
                self.args(&n.inputs);
            }
        }
        if !n.outputs.is_empty() {
            self.out.push_str(" : ");
            for (i, &v) in n.outputs.iter().enumerate() {
                if i > 0 {
                    self.out.push_str(", ");
                }
                self.value_type(g, v);
            }
        }
        if let Some(loc) = &n.loc {
            self.out.push_str(" loc(");
            self.string(loc);
            self.out.push(')');
        }
        if !n.regions.is_empty() {
            self.out.push_str(" {\n");
            for r in &n.regions {
                self.indent(depth + 1);
                self.graph(r, depth + 1);
                self.out.push('\n');
            }
            self.indent(depth);
            self.out.push('}');
        }
        self.out.push('\n');
    }

    fn args(&mut self, inputs: &[Option<ValueId>]) {
        self.out.push('(');
        for (i, v) in inputs.iter().enumerate() {
            if i > 0 {
                self.out.push_str(", ");
            }
            match v {
                Some(v) => {
                    let _ = write!(self.out, "{v}");
                }
                None => self.out.push('_'),
            }
        }
        self.out.push(')');
    }

    fn value_type(&mut self, g: &Graph, v: ValueId) {
        match g.values.get(v.0 as usize) {
            Some(t) => self.ty(t),
            None => self.out.push_str("<invalid>"),
        }
    }

    /// Like `TensorType`'s `Display`, but quoting symbols that are not identifiers.
    fn ty(&mut self, t: &TensorType) {
        let _ = write!(self.out, "{}[", t.dtype);
        for (i, d) in t.shape.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            match d {
                Dim::Known(n) => {
                    let _ = write!(self.out, "{n}");
                }
                Dim::Sym(s) if is_plain_sym(s) => self.out.push_str(s),
                Dim::Sym(s) => self.string(s),
                Dim::Unknown => self.out.push('?'),
            }
        }
        self.out.push(']');
        if let Some(q) = &t.quant {
            match serde_json::to_string(q) {
                Ok(json) => self.out.push_str(&json),
                Err(e) => {
                    let _ = write!(self.out, "<unprintable quant: {e}>");
                }
            }
        }
    }

    fn string(&mut self, s: &str) {
        // Serializing a `str` to JSON cannot fail.
        match serde_json::to_string(s) {
            Ok(json) => self.out.push_str(&json),
            Err(e) => {
                let _ = write!(self.out, "<unprintable string: {e}>");
            }
        }
    }

    fn elements(&mut self, t: &Tensor) {
        if let Some(max) = self.opts.elide_consts_over
            && t.len() > max
        {
            let _ = write!(self.out, "[... {} elements]", t.len());
            return;
        }
        self.out.push('[');
        match t {
            Tensor::F32(a) => self.list(a.iter(), |o, v| fmt_f32(o, *v)),
            Tensor::F64(a) => self.list(a.iter(), |o, v| fmt_f64(o, *v)),
            Tensor::F16(a) => self.list(a.iter(), |o, v| fmt_f16(o, *v)),
            Tensor::BF16(a) => self.list(a.iter(), |o, v| fmt_bf16(o, *v)),
            Tensor::I8(a) => self.list(a.iter(), display),
            Tensor::U8(a) => self.list(a.iter(), display),
            Tensor::I16(a) => self.list(a.iter(), display),
            Tensor::U16(a) => self.list(a.iter(), display),
            Tensor::I32(a) => self.list(a.iter(), display),
            Tensor::U32(a) => self.list(a.iter(), display),
            Tensor::I64(a) => self.list(a.iter(), display),
            Tensor::U64(a) => self.list(a.iter(), display),
            Tensor::Bool(a) => self.list(a.iter(), display),
            // Storage floats print their codes (hex), which round-trip exactly, NaNs included;
            // the small integers print their values.
            Tensor::F8E4M3FN(a) => self.list(a.iter(), |o, v| code(o, v.0)),
            Tensor::F8E4M3FNUZ(a) => self.list(a.iter(), |o, v| code(o, v.0)),
            Tensor::F8E5M2(a) => self.list(a.iter(), |o, v| code(o, v.0)),
            Tensor::F8E5M2FNUZ(a) => self.list(a.iter(), |o, v| code(o, v.0)),
            Tensor::F8E8M0(a) => self.list(a.iter(), |o, v| code(o, v.0)),
            Tensor::F4E2M1(a) => self.list(a.iter(), |o, v| code(o, v.0)),
            Tensor::I4(a) => self.list(a.iter(), |o, v| display(o, &v.0)),
            Tensor::U4(a) => self.list(a.iter(), |o, v| display(o, &v.0)),
            Tensor::I2(a) => self.list(a.iter(), |o, v| display(o, &v.0)),
            Tensor::U2(a) => self.list(a.iter(), |o, v| display(o, &v.0)),
            Tensor::Str(a) => {
                for (i, s) in a.iter().enumerate() {
                    if i > 0 {
                        self.out.push_str(", ");
                    }
                    self.string(s);
                }
            }
        }
        self.out.push(']');
    }

    fn list<T>(&mut self, items: impl Iterator<Item = T>, f: impl Fn(&mut String, T)) {
        for (i, v) in items.enumerate() {
            if i > 0 {
                self.out.push_str(", ");
            }
            f(&mut self.out, v);
        }
    }
}

fn display(o: &mut String, v: &impl std::fmt::Display) {
    let _ = write!(o, "{v}");
}

/// The code of a storage float element: `0x` and two hex digits.
fn code(o: &mut String, c: u8) {
    let _ = write!(o, "{c:#04x}");
}

/// The printed name of an op and its attributes as compact JSON, from the op's serde form.
///
/// Ops serialize externally tagged; each JSON shape maps to one text shape, so the parser can
/// rebuild the exact JSON without knowing any op:
/// `"x"` is `x`, `{"x": "y"}` is `x.y`, `{"x": {"y": V}}` is `x.y V`, any other `{"x": V}` is `x V`.
pub(super) fn op_head(op: &Op) -> Result<(String, Option<String>), String> {
    use serde_json::Value;
    let compact = |v: &Value| serde_json::to_string(v).map_err(|e| e.to_string());
    match serde_json::to_value(op).map_err(|e| e.to_string())? {
        Value::String(name) => Ok((name, None)),
        Value::Object(m) if m.len() == 1 => {
            let (family, inner) = m.into_iter().next().expect("one entry");
            match inner {
                Value::String(name) => Ok((format!("{family}.{name}"), None)),
                Value::Object(m2) if m2.len() == 1 => {
                    let (name, attrs) = m2.into_iter().next().expect("one entry");
                    Ok((format!("{family}.{name}"), Some(compact(&attrs)?)))
                }
                other => Ok((family, Some(compact(&other)?))),
            }
        }
        other => Err(format!(
            "op serializes to {other}, not an externally tagged enum"
        )),
    }
}

/// Float formatting: Rust's `{:?}` is the shortest decimal that parses back to the same value
/// (`1.0`, `1e-7`, `-0.0`); NaNs and infinities get fixed spellings.
fn fmt_f32(o: &mut String, v: f32) {
    if v.is_nan() {
        nan(
            o,
            v.to_bits() == CANONICAL_NAN_F32,
            format_args!("{:08x}", v.to_bits()),
        );
    } else if v.is_infinite() {
        o.push_str(if v > 0.0 { "inf" } else { "-inf" });
    } else {
        let _ = write!(o, "{v:?}");
    }
}

fn fmt_f64(o: &mut String, v: f64) {
    if v.is_nan() {
        nan(
            o,
            v.to_bits() == CANONICAL_NAN_F64,
            format_args!("{:016x}", v.to_bits()),
        );
    } else if v.is_infinite() {
        o.push_str(if v > 0.0 { "inf" } else { "-inf" });
    } else {
        let _ = write!(o, "{v:?}");
    }
}

fn fmt_f16(o: &mut String, v: f16) {
    if v.is_nan() {
        nan(
            o,
            v.to_bits() == CANONICAL_NAN_F16,
            format_args!("{:04x}", v.to_bits()),
        );
    } else {
        half_float(o, v.to_f32(), |x| f16::from_f32(x) == v);
    }
}

fn fmt_bf16(o: &mut String, v: bf16) {
    if v.is_nan() {
        nan(
            o,
            v.to_bits() == CANONICAL_NAN_BF16,
            format_args!("{:04x}", v.to_bits()),
        );
    } else {
        half_float(o, v.to_f32(), |x| bf16::from_f32(x) == v);
    }
}

fn nan(o: &mut String, canonical: bool, bits: std::fmt::Arguments) {
    if canonical {
        o.push_str("nan");
    } else {
        let _ = write!(o, "nan:0x{bits}");
    }
}

/// The shortest decimal that reads back (as f32, then rounded to the half type, which is how
/// the parser reads it) to the same half value; `x` is the value widened to f32 (exact).
fn half_float(o: &mut String, x: f32, same: impl Fn(f32) -> bool) {
    if x.is_infinite() {
        o.push_str(if x > 0.0 { "inf" } else { "-inf" });
        return;
    }
    for digits in 0..9 {
        let s = format!("{x:.digits$e}");
        if let Ok(y) = s.parse::<f32>()
            && same(y)
        {
            // `y` is the f32 nearest a short decimal, so its own shortest form is that decimal,
            // written the friendly way (`0.1`, not `1e-1`).
            let _ = write!(o, "{y:?}");
            return;
        }
    }
    // Nine significant digits always identify an f32, and `x` is exactly the half value.
    let _ = write!(o, "{x:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16s(v: f16) -> String {
        let mut s = String::new();
        fmt_f16(&mut s, v);
        s
    }

    #[test]
    fn half_floats_print_short() {
        assert_eq!(f16s(f16::from_f32(0.1)), "0.1");
        assert_eq!(f16s(f16::from_f32(-2.5)), "-2.5");
        assert_eq!(f16s(f16::MAX), "65500.0");
        assert_eq!(f16s(f16::NEG_INFINITY), "-inf");
        assert_eq!(f16s(f16::NAN), "nan");
        assert_eq!(f16s(-f16::NAN), "nan:0xfe00");
        assert_eq!(f16s(f16::from_f32(-0.0)), "-0.0");
    }
}

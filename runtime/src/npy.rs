//! Reading and writing NumPy `.npy` files, on raw little-endian bytes plus a shape.
//!
//! The runtime must not depend on the compiler's IR, so this module has its own small element
//! type enum and hands out bytes; the CLI converts them to and from `mlc_ir::Tensor`.
//!
//! Reading accepts format versions 1.0, 2.0 and 3.0, little- and big-endian data (big-endian is
//! byte-swapped on read), C and Fortran order (Fortran order is transposed on read, so the
//! result is always C order), the dtypes `f2 f4 f8 i1 i2 i4 i8 u1 u2 u4 u8 b1` and fixed-width
//! unicode strings `<U`. Writing produces version 1.0 (2.0 when the header would not fit), C
//! order, little-endian. Every malformed file gives an `NpyError`, never a panic: the header is
//! parsed by a small recursive-descent parser for the subset of Python literals that NumPy
//! writes, and sizes are checked before any allocation that the header asks for.

use std::fmt;
use std::path::Path;

/// The element types a `.npy` file can hold for mlc.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElemType {
    F16,
    F32,
    F64,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Bool,
    /// Fixed-width UTF-32 strings (`<U`); the width is chosen on write.
    Str,
}

impl ElemType {
    pub const ALL: [ElemType; 13] = [
        ElemType::F16,
        ElemType::F32,
        ElemType::F64,
        ElemType::I8,
        ElemType::I16,
        ElemType::I32,
        ElemType::I64,
        ElemType::U8,
        ElemType::U16,
        ElemType::U32,
        ElemType::U64,
        ElemType::Bool,
        ElemType::Str,
    ];

    /// Bytes per element; `None` for strings, whose width is per file.
    pub fn size(self) -> Option<usize> {
        Some(match self {
            ElemType::I8 | ElemType::U8 | ElemType::Bool => 1,
            ElemType::F16 | ElemType::I16 | ElemType::U16 => 2,
            ElemType::F32 | ElemType::I32 | ElemType::U32 => 4,
            ElemType::F64 | ElemType::I64 | ElemType::U64 => 8,
            ElemType::Str => return None,
        })
    }

    /// The short name (`f32`, `i64`, `bool`, `str`): the same spelling as mlc's dtypes, so the
    /// compiler side maps types by name without this crate knowing the IR.
    pub fn name(self) -> &'static str {
        self.names().0
    }

    pub fn from_name(name: &str) -> Option<ElemType> {
        ElemType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// NumPy's name for the type (`float32`, `int64`, `bool`, `str`), for messages.
    pub fn numpy_name(self) -> &'static str {
        self.names().1
    }

    /// The type code after the byte-order character (`f4`, `b1`).
    fn code(self) -> &'static str {
        self.names().2
    }

    /// (short name, NumPy name, `.npy` type code), in one table so they cannot drift apart.
    fn names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            ElemType::F16 => ("f16", "float16", "f2"),
            ElemType::F32 => ("f32", "float32", "f4"),
            ElemType::F64 => ("f64", "float64", "f8"),
            ElemType::I8 => ("i8", "int8", "i1"),
            ElemType::I16 => ("i16", "int16", "i2"),
            ElemType::I32 => ("i32", "int32", "i4"),
            ElemType::I64 => ("i64", "int64", "i8"),
            ElemType::U8 => ("u8", "uint8", "u1"),
            ElemType::U16 => ("u16", "uint16", "u2"),
            ElemType::U32 => ("u32", "uint32", "u4"),
            ElemType::U64 => ("u64", "uint64", "u8"),
            ElemType::Bool => ("bool", "bool", "b1"),
            ElemType::Str => ("str", "str", "U"),
        }
    }

    /// The fixed-size type with this code (strings are parsed separately: their code has a width).
    fn from_code(code: &str) -> Option<ElemType> {
        ElemType::ALL
            .into_iter()
            .find(|t| t.size().is_some() && t.code() == code)
    }
}

impl fmt::Display for ElemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.numpy_name())
    }
}

/// The elements of an array, in C order.
#[derive(Clone, Debug, PartialEq)]
pub enum NpyData {
    /// Little-endian bytes of fixed-size elements (bool is one byte, 0 or 1).
    Bytes(Vec<u8>),
    Strings(Vec<String>),
}

/// An array read from or to be written to a `.npy` file.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    pub elem: ElemType,
    pub shape: Vec<usize>,
    pub data: NpyData,
}

/// Why a `.npy` file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("not a .npy file (it does not start with the NumPy magic bytes)")]
    BadMagic,
    #[error("unsupported .npy format version {0}.{1} (mlc reads 1.0, 2.0 and 3.0)")]
    BadVersion(u8, u8),
    #[error("the file ends inside the .npy header: it is truncated")]
    TruncatedHeader,
    #[error("malformed .npy header: {0}")]
    BadHeader(String),
    #[error("unsupported .npy dtype {0:?} (mlc reads f2 f4 f8 i1 i2 i4 i8 u1 u2 u4 u8 b1 and <U)")]
    UnsupportedDType(String),
    #[error("the .npy data holds {found} bytes but shape {shape:?} of {elem} needs {expected}")]
    BadDataLength {
        shape: Vec<usize>,
        elem: ElemType,
        expected: u128,
        found: usize,
    },
    #[error("the .npy string data is not valid UTF-32")]
    BadString,
    #[error("{elements} elements do not fill shape {shape:?}")]
    ShapeMismatch { shape: Vec<usize>, elements: usize },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// True when `bytes` starts like a `.npy` file.
pub fn has_npy_magic(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

impl NpyArray {
    /// An array of fixed-size elements from little-endian bytes; checks the length.
    pub fn from_le_bytes(
        elem: ElemType,
        shape: Vec<usize>,
        bytes: Vec<u8>,
    ) -> Result<NpyArray, NpyError> {
        let Some(size) = elem.size() else {
            return Err(NpyError::UnsupportedDType("str given as bytes".into()));
        };
        let expected = byte_len(&shape, size);
        if expected != bytes.len() as u128 {
            return Err(NpyError::BadDataLength {
                shape,
                elem,
                expected,
                found: bytes.len(),
            });
        }
        Ok(NpyArray {
            elem,
            shape,
            data: NpyData::Bytes(bytes),
        })
    }

    /// An array of strings; checks the count against the shape.
    pub fn from_strings(shape: Vec<usize>, strings: Vec<String>) -> Result<NpyArray, NpyError> {
        if element_count(&shape) != Some(strings.len()) {
            return Err(NpyError::ShapeMismatch {
                shape,
                elements: strings.len(),
            });
        }
        Ok(NpyArray {
            elem: ElemType::Str,
            shape,
            data: NpyData::Strings(strings),
        })
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.data {
            NpyData::Bytes(b) => b.len() / self.elem.size().unwrap_or(1).max(1),
            NpyData::Strings(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parses the bytes of a whole `.npy` file.
    pub fn parse(bytes: &[u8]) -> Result<NpyArray, NpyError> {
        let (header, data) = split_header(bytes)?;
        let header = parse_header(&header)?;
        let mut arr = decode_data(&header, data)?;
        if header.fortran_order && arr.shape.len() > 1 {
            arr = arr.fortran_to_c();
        }
        Ok(arr)
    }

    /// Reads a `.npy` file.
    pub fn read(path: &Path) -> Result<NpyArray, NpyError> {
        NpyArray::parse(&std::fs::read(path)?)
    }

    /// Serializes to the bytes of a version 1.0 `.npy` file (2.0 if the header needs it).
    pub fn to_bytes(&self) -> Vec<u8> {
        let descr = match (&self.data, self.elem) {
            (NpyData::Strings(s), _) => {
                let width = s
                    .iter()
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
                    .max(1);
                format!("<U{width}")
            }
            (_, ElemType::I8 | ElemType::U8 | ElemType::Bool) => format!("|{}", self.elem.code()),
            (_, e) => format!("<{}", e.code()),
        };
        let shape = match self.shape.len() {
            0 => "()".to_string(),
            1 => format!("({},)", self.shape[0]),
            _ => format!(
                "({})",
                self.shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        // NumPy pads the header with spaces and a newline so the data starts 64-byte aligned.
        let (version, prefix) = if header.len() + 11 <= u16::MAX as usize {
            (1u8, 10)
        } else {
            (2u8, 12)
        };
        let total = (prefix + header.len() + 1).div_ceil(64) * 64;
        header.push_str(&" ".repeat(total - prefix - header.len() - 1));
        header.push('\n');
        let mut out = Vec::with_capacity(total + self.data_len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[version, 0]);
        if version == 1 {
            out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(header.as_bytes());
        match &self.data {
            NpyData::Bytes(b) => out.extend_from_slice(b),
            NpyData::Strings(s) => {
                let width = s
                    .iter()
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
                    .max(1);
                for v in s {
                    let n = v.chars().count();
                    for c in v.chars() {
                        out.extend_from_slice(&(c as u32).to_le_bytes());
                    }
                    out.extend(std::iter::repeat_n(0u8, 4 * (width - n)));
                }
            }
        }
        out
    }

    fn data_len(&self) -> usize {
        match &self.data {
            NpyData::Bytes(b) => b.len(),
            NpyData::Strings(s) => s.iter().map(|s| 4 * s.len()).sum(),
        }
    }

    /// Reinterprets data stored in Fortran order (first axis fastest) as C order.
    fn fortran_to_c(self) -> NpyArray {
        // Element `c` (C order, shape s) lives at the Fortran offset whose strides run the
        // other way: stride of axis k = product of dims before k.
        let n = self.len();
        let rank = self.shape.len();
        let mut fstride = vec![1usize; rank];
        for k in 1..rank {
            fstride[k] = fstride[k - 1] * self.shape[k - 1];
        }
        let mut src = Vec::with_capacity(n);
        let mut idx = vec![0usize; rank];
        for _ in 0..n {
            src.push(idx.iter().zip(&fstride).map(|(i, s)| i * s).sum::<usize>());
            for k in (0..rank).rev() {
                idx[k] += 1;
                if idx[k] < self.shape[k] {
                    break;
                }
                idx[k] = 0;
            }
        }
        let data = match self.data {
            NpyData::Bytes(b) => {
                let size = self.elem.size().unwrap_or(1);
                NpyData::Bytes(
                    src.iter()
                        .flat_map(|&i| b[i * size..(i + 1) * size].iter().copied())
                        .collect(),
                )
            }
            NpyData::Strings(s) => NpyData::Strings(src.iter().map(|&i| s[i].clone()).collect()),
        };
        NpyArray {
            elem: self.elem,
            shape: self.shape,
            data,
        }
    }
}

fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Byte length in u128 so that absurd shapes from corrupt headers cannot overflow.
fn byte_len(shape: &[usize], size: usize) -> u128 {
    shape
        .iter()
        .fold(size as u128, |acc, &d| acc.saturating_mul(d as u128))
}

/// Splits a file into its header text and the data that follows.
fn split_header(bytes: &[u8]) -> Result<(String, &[u8]), NpyError> {
    if bytes.len() < MAGIC.len() || !has_npy_magic(bytes) {
        return Err(if MAGIC.starts_with(bytes) {
            NpyError::TruncatedHeader
        } else {
            NpyError::BadMagic
        });
    }
    let (major, minor) = match bytes.get(6..8) {
        Some(&[a, b]) => (a, b),
        _ => return Err(NpyError::TruncatedHeader),
    };
    let (len, start) = match major {
        1 => {
            let b = bytes.get(8..10).ok_or(NpyError::TruncatedHeader)?;
            (u16::from_le_bytes([b[0], b[1]]) as usize, 10usize)
        }
        2 | 3 => {
            let b = bytes.get(8..12).ok_or(NpyError::TruncatedHeader)?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        }
        _ => return Err(NpyError::BadVersion(major, minor)),
    };
    if minor != 0 {
        return Err(NpyError::BadVersion(major, minor));
    }
    let end = start.checked_add(len).ok_or(NpyError::TruncatedHeader)?;
    let raw = bytes.get(start..end).ok_or(NpyError::TruncatedHeader)?;
    // Versions 1 and 2 store the header in latin-1, version 3 in UTF-8.
    let text = if major == 3 {
        String::from_utf8(raw.to_vec())
            .map_err(|_| NpyError::BadHeader("the header is not UTF-8".into()))?
    } else {
        raw.iter().map(|&b| b as char).collect()
    };
    Ok((text, &bytes[end..]))
}

#[derive(Debug)]
struct Header {
    elem: ElemType,
    /// Bytes per element as stored (for strings: 4 × width).
    item_size: usize,
    big_endian: bool,
    fortran_order: bool,
    shape: Vec<usize>,
}

fn parse_header(text: &str) -> Result<Header, NpyError> {
    let bad = |m: &str| NpyError::BadHeader(m.to_string());
    let value = LitParser {
        s: text.as_bytes(),
        pos: 0,
        depth: 0,
    }
    .parse_all()?;
    let Lit::Dict(entries) = value else {
        return Err(bad("the header is not a dictionary"));
    };
    let get = |key: &str| entries.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    let descr = match get("descr") {
        Some(Lit::Str(s)) => s.clone(),
        Some(_) => return Err(NpyError::UnsupportedDType("a structured dtype".into())),
        None => return Err(bad("no 'descr' key")),
    };
    let fortran_order = match get("fortran_order") {
        Some(Lit::Bool(b)) => *b,
        Some(_) => return Err(bad("'fortran_order' is not True or False")),
        None => return Err(bad("no 'fortran_order' key")),
    };
    let shape = match get("shape") {
        Some(Lit::Tuple(items)) => items
            .iter()
            .map(|v| match v {
                Lit::Int(n) => usize::try_from(*n)
                    .map_err(|_| bad("a dimension in 'shape' is negative or too large")),
                _ => Err(bad("'shape' holds something other than integers")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(bad("'shape' is not a tuple")),
        None => return Err(bad("no 'shape' key")),
    };
    let (order, code) = match descr.chars().next() {
        Some(c @ ('<' | '>' | '|' | '=')) => (c, &descr[1..]),
        _ => ('|', descr.as_str()),
    };
    let (elem, item_size) = if let Some(width) = code.strip_prefix('U') {
        let w: usize = width
            .parse()
            .map_err(|_| NpyError::UnsupportedDType(descr.clone()))?;
        if w == 0 {
            return Err(NpyError::UnsupportedDType(descr.clone()));
        }
        (
            ElemType::Str,
            w.checked_mul(4)
                .ok_or_else(|| NpyError::UnsupportedDType(descr.clone()))?,
        )
    } else {
        // NumPy also spells bool as `?`.
        let code = if code == "?" { "b1" } else { code };
        let elem =
            ElemType::from_code(code).ok_or_else(|| NpyError::UnsupportedDType(descr.clone()))?;
        (elem, elem.size().expect("fixed-size type"))
    };
    // `=` is native order; mlc only runs on little-endian hosts.
    Ok(Header {
        elem,
        item_size,
        big_endian: order == '>',
        fortran_order,
        shape,
    })
}

fn decode_data(h: &Header, data: &[u8]) -> Result<NpyArray, NpyError> {
    let expected = byte_len(&h.shape, h.item_size);
    if expected != data.len() as u128 {
        return Err(NpyError::BadDataLength {
            shape: h.shape.clone(),
            elem: h.elem,
            expected,
            found: data.len(),
        });
    }
    if h.elem == ElemType::Str {
        let strings = data
            .chunks_exact(h.item_size)
            .map(|item| {
                let mut s = String::new();
                for c in item.chunks_exact(4) {
                    let b = [c[0], c[1], c[2], c[3]];
                    let cp = if h.big_endian {
                        u32::from_be_bytes(b)
                    } else {
                        u32::from_le_bytes(b)
                    };
                    // NumPy pads short strings with NUL code points.
                    if cp == 0 {
                        break;
                    }
                    s.push(char::from_u32(cp).ok_or(NpyError::BadString)?);
                }
                Ok(s)
            })
            .collect::<Result<Vec<_>, NpyError>>()?;
        return Ok(NpyArray {
            elem: h.elem,
            shape: h.shape.clone(),
            data: NpyData::Strings(strings),
        });
    }
    let mut bytes = data.to_vec();
    if h.big_endian && h.item_size > 1 {
        for item in bytes.chunks_exact_mut(h.item_size) {
            item.reverse();
        }
    }
    if h.elem == ElemType::Bool {
        // Any non-zero byte is true; normalize so consumers can rely on 0/1.
        for b in &mut bytes {
            *b = u8::from(*b != 0);
        }
    }
    Ok(NpyArray {
        elem: h.elem,
        shape: h.shape.clone(),
        data: NpyData::Bytes(bytes),
    })
}

/// The subset of Python literals that appears in `.npy` headers.
#[derive(Debug, PartialEq)]
enum Lit {
    Dict(Vec<(String, Lit)>),
    Tuple(Vec<Lit>),
    Str(String),
    Int(i128),
    Bool(bool),
    None,
}

struct LitParser<'a> {
    s: &'a [u8],
    pos: usize,
    /// Nesting depth, bounded so that a hostile header cannot overflow the stack.
    depth: usize,
}

impl LitParser<'_> {
    fn err(&self, what: &str) -> NpyError {
        NpyError::BadHeader(format!("{what} at byte {}", self.pos))
    }

    fn skip_ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.pos).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), NpyError> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err(&format!("expected {:?}", c as char)))
        }
    }

    fn parse_all(mut self) -> Result<Lit, NpyError> {
        let v = self.value()?;
        if self.peek().is_some() {
            return Err(self.err("trailing characters"));
        }
        Ok(v)
    }

    fn value(&mut self) -> Result<Lit, NpyError> {
        self.depth += 1;
        if self.depth > 16 {
            return Err(self.err("nesting too deep"));
        }
        let v = match self.peek() {
            Some(b'{') => self.dict(),
            Some(b'(') => self.seq(b'(', b')'),
            Some(b'[') => self.seq(b'[', b']'),
            Some(b'\'' | b'"') => self.string().map(Lit::Str),
            Some(c) if c == b'-' || c.is_ascii_digit() => self.int(),
            Some(c) if c.is_ascii_alphabetic() => self.word(),
            Some(_) => Err(self.err("unexpected character")),
            None => Err(self.err("unexpected end of header")),
        };
        self.depth -= 1;
        v
    }

    fn dict(&mut self) -> Result<Lit, NpyError> {
        self.expect(b'{')?;
        let mut entries = Vec::new();
        loop {
            if self.peek() == Some(b'}') {
                self.pos += 1;
                return Ok(Lit::Dict(entries));
            }
            let key = self.string()?;
            self.expect(b':')?;
            let v = self.value()?;
            entries.push((key, v));
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {}
                _ => return Err(self.err("expected ',' or '}'")),
            }
        }
    }

    fn seq(&mut self, open: u8, close: u8) -> Result<Lit, NpyError> {
        self.expect(open)?;
        let mut items = Vec::new();
        loop {
            if self.peek() == Some(close) {
                self.pos += 1;
                return Ok(Lit::Tuple(items));
            }
            items.push(self.value()?);
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(c) if c == close => {}
                _ => return Err(self.err("expected ',' or the end of the sequence")),
            }
        }
    }

    fn string(&mut self) -> Result<String, NpyError> {
        let q = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => return Err(self.err("expected a string")),
        };
        self.pos += 1;
        let start = self.pos;
        while self.pos < self.s.len() && self.s[self.pos] != q {
            if self.s[self.pos] == b'\\' {
                return Err(self.err("escapes in strings are not supported"));
            }
            self.pos += 1;
        }
        if self.pos >= self.s.len() {
            return Err(self.err("unterminated string"));
        }
        let text = String::from_utf8_lossy(&self.s[start..self.pos]).into_owned();
        self.pos += 1;
        Ok(text)
    }

    fn int(&mut self) -> Result<Lit, NpyError> {
        let start = self.pos;
        if self.s.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_digit() {
            self.pos += 1;
        }
        let text =
            std::str::from_utf8(&self.s[start..self.pos]).map_err(|_| self.err("bad integer"))?;
        let n: i128 = text.parse().map_err(|_| self.err("bad integer"))?;
        // Python 2 wrote long integers with an `L` suffix.
        if self.s.get(self.pos) == Some(&b'L') {
            self.pos += 1;
        }
        Ok(Lit::Int(n))
    }

    fn word(&mut self) -> Result<Lit, NpyError> {
        let start = self.pos;
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_alphanumeric() {
            self.pos += 1;
        }
        match &self.s[start..self.pos] {
            b"True" => Ok(Lit::Bool(true)),
            b"False" => Ok(Lit::Bool(false)),
            b"None" => Ok(Lit::None),
            _ => {
                self.pos = start;
                Err(self.err("unknown word"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a file from a header text the way NumPy lays it out.
    fn file(version: u8, header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[version, 0]);
        if version == 1 {
            out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    // Bytes of `np.save(f, np.arange(6, dtype=np.float32).reshape(2, 3))` with NumPy 2.4.
    const NUMPY_F32_2X3: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }                                                          \n\x00\x00\x00\x00\x00\x00\x80?\x00\x00\x00@\x00\x00@@\x00\x00\x80@\x00\x00\xa0@";

    #[test]
    fn reads_numpy_output() {
        let a = NpyArray::parse(NUMPY_F32_2X3).unwrap();
        assert_eq!(a.elem, ElemType::F32);
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, NpyData::Bytes(f32_bytes(&[0., 1., 2., 3., 4., 5.])));
    }

    #[test]
    fn writes_what_numpy_writes() {
        let a = NpyArray::from_le_bytes(
            ElemType::F32,
            vec![2, 3],
            f32_bytes(&[0., 1., 2., 3., 4., 5.]),
        )
        .unwrap();
        assert_eq!(a.to_bytes(), NUMPY_F32_2X3);
    }

    #[test]
    fn round_trips_every_type() {
        for (elem, shape) in [
            (ElemType::F16, vec![3]),
            (ElemType::F64, vec![]),
            (ElemType::I8, vec![2, 2]),
            (ElemType::U8, vec![0, 4]),
            (ElemType::I16, vec![1, 1, 1]),
            (ElemType::U16, vec![2]),
            (ElemType::I32, vec![2]),
            (ElemType::U32, vec![2]),
            (ElemType::I64, vec![5]),
            (ElemType::U64, vec![1]),
            (ElemType::Bool, vec![3]),
        ] {
            let n: usize = shape.iter().product();
            let size = elem.size().unwrap();
            let bytes: Vec<u8> = (0..n * size)
                .map(|i| {
                    if elem == ElemType::Bool {
                        (i % 2) as u8
                    } else {
                        i as u8
                    }
                })
                .collect();
            let a = NpyArray::from_le_bytes(elem, shape, bytes).unwrap();
            let file = a.to_bytes();
            assert_eq!(
                (file.len() - a.data_len()) % 64,
                0,
                "data is 64-byte aligned"
            );
            assert_eq!(NpyArray::parse(&file).unwrap(), a, "{elem}");
        }
        let s = NpyArray::from_strings(vec![2], vec!["héllo".into(), "".into()]).unwrap();
        assert_eq!(NpyArray::parse(&s.to_bytes()).unwrap(), s);
    }

    #[test]
    fn reads_v2_v3_and_header_variants() {
        let data = f32_bytes(&[1.0, 2.0]);
        for (v, h) in [
            (
                2,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n",
            ),
            (
                3,
                "{\"descr\": \"<f4\", \"shape\": (2L,), \"fortran_order\": False}",
            ),
            (1, "{'descr':'<f4','fortran_order':False,'shape':[2]}"),
        ] {
            let a = NpyArray::parse(&file(v, h, &data)).unwrap();
            assert_eq!((a.elem, a.shape.clone()), (ElemType::F32, vec![2]), "{h}");
        }
        let scalar = NpyArray::parse(&file(
            1,
            "{'descr': '<i8', 'fortran_order': False, 'shape': ()}",
            &7i64.to_le_bytes(),
        ))
        .unwrap();
        assert_eq!(scalar.shape, Vec::<usize>::new());
        let b = NpyArray::parse(&file(
            1,
            "{'descr': '|b1', 'fortran_order': False, 'shape': (2,)}",
            &[0, 5],
        ))
        .unwrap();
        assert_eq!(b.data, NpyData::Bytes(vec![0, 1]));
    }

    #[test]
    fn big_endian_is_swapped() {
        let data: Vec<u8> = [1i32, -2].iter().flat_map(|v| v.to_be_bytes()).collect();
        let a = NpyArray::parse(&file(
            1,
            "{'descr': '>i4', 'fortran_order': False, 'shape': (2,)}",
            &data,
        ))
        .unwrap();
        let want: Vec<u8> = [1i32, -2].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(a.data, NpyData::Bytes(want));
    }

    #[test]
    fn fortran_order_is_transposed() {
        // np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)) stores 0 3 1 4 2 5.
        let data: Vec<u8> = [0i16, 3, 1, 4, 2, 5]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let a = NpyArray::parse(&file(
            1,
            "{'descr': '<i2', 'fortran_order': True, 'shape': (2, 3), }",
            &data,
        ))
        .unwrap();
        let want: Vec<u8> = (0i16..6).flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            (a.shape.clone(), a.data),
            (vec![2, 3], NpyData::Bytes(want))
        );
    }

    #[test]
    fn corrupt_files_are_errors() {
        let good = NUMPY_F32_2X3;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "truncated"),
            (b"\x93NUM".to_vec(), "truncated"),
            (b"PK\x03\x04 not numpy".to_vec(), "magic"),
            (good[..9].to_vec(), "truncated"),
            (good[..40].to_vec(), "truncated"),
            (good[..good.len() - 1].to_vec(), "needs 24"),
            ([good, &[0u8][..]].concat(), "needs 24"),
            (file(4, "{}", &[]), "version 4.0"),
            (
                file(1, "{'descr': '<f4', 'fortran_order': False}", &[]),
                "no 'shape'",
            ),
            (
                file(1, "{'descr': '<f4', 'shape': (1,)}", &[0; 4]),
                "no 'fortran_order'",
            ),
            (
                file(1, "{'fortran_order': False, 'shape': (1,)}", &[0; 4]),
                "no 'descr'",
            ),
            (
                file(
                    1,
                    "{'descr': '<c8', 'fortran_order': False, 'shape': (1,)}",
                    &[0; 8],
                ),
                "dtype \"<c8\"",
            ),
            (
                file(
                    1,
                    "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}",
                    &[0; 4],
                ),
                "structured",
            ),
            (
                file(
                    1,
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}",
                    &[],
                ),
                "negative",
            ),
            (
                file(
                    1,
                    "{'descr': '<f4', 'fortran_order': 0, 'shape': (1,)}",
                    &[0; 4],
                ),
                "True or False",
            ),
            (
                file(
                    1,
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999, 99999999999, 99999999999)}",
                    &[],
                ),
                "needs",
            ),
            (
                file(
                    1,
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (1,)",
                    &[0; 4],
                ),
                "malformed",
            ),
            (file(1, "{'descr': '<f4 ", &[]), "unterminated"),
            (
                file(1, "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", &[]),
                "too deep",
            ),
            (
                file(
                    1,
                    "{'descr': '<U0', 'fortran_order': False, 'shape': (1,)}",
                    &[],
                ),
                "<U0",
            ),
            (
                file(
                    1,
                    "{'descr': '<U1', 'fortran_order': False, 'shape': (1,)}",
                    &[0xff; 4],
                ),
                "UTF-32",
            ),
            (
                file(
                    1,
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} junk",
                    &[0; 4],
                ),
                "trailing",
            ),
        ];
        for (bytes, want) in cases {
            let err = NpyArray::parse(&bytes).expect_err(want).to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        // A cheap deterministic fuzz: mutate a good file byte by byte and parse every variant.
        let good = NUMPY_F32_2X3;
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut b = good.to_vec();
            for _ in 0..3 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let i = (state as usize) % b.len();
                b[i] = (state >> 32) as u8;
            }
            let cut = (state >> 40) as usize % (b.len() + 1);
            let _ = NpyArray::parse(&b[..cut]);
            let _ = NpyArray::parse(&b);
        }
    }
}

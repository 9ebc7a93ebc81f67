//! The parser of the text form (grammar in the parent module's docs): a hand-written recursive
//! descent over the source string, with errors that point at a line and column.
//!
//! The parser checks syntax and the consistency of each graph's value and constant tables (every
//! id typed, no id given two types), not the verifier's invariants: a graph that uses a value
//! before defining it parses, so that such graphs can be written down for tests.

use super::{CANONICAL_NAN_BF16, CANONICAL_NAN_F16, CANONICAL_NAN_F32, CANONICAL_NAN_F64};
use crate::dtype::{DType, QuantParams};
use crate::graph::{Graph, Node, Port, ValueId};
use crate::lowbit::{F4E2M1, F8E4M3FN, F8E4M3FNUZ, F8E5M2, F8E5M2FNUZ, F8E8M0, I2, I4, U2, U4};
use crate::ops::Op;
use crate::shape::{Dim, TensorType};
use crate::tensor::{Elem, Tensor};
use half::{bf16, f16};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A parse failure: where (1-based line and column, counted in characters) and what.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{line}:{col}: {kind}")]
pub struct ParseError {
    pub line: usize,
    pub col: usize,
    pub kind: ParseErrorKind,
}

/// What went wrong while parsing.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ParseErrorKind {
    #[error("expected {expected}, found {found}")]
    Expected { expected: String, found: String },
    #[error("unknown dtype `{0}`")]
    UnknownDType(String),
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("invalid op `{name}`: {reason}")]
    BadOp { name: String, reason: String },
    #[error("invalid {dtype} element `{text}`")]
    BadElement { dtype: DType, text: String },
    #[error("number `{0}` is out of range")]
    NumberRange(String),
    #[error("constant has {found} elements, its type {ty} needs {expected}")]
    ElementCount {
        ty: String,
        expected: usize,
        found: usize,
    },
    #[error("constant types must have a static shape and no quantization parameters, found {0}")]
    ConstType(String),
    #[error("the printer elided this constant's elements; elided text does not parse")]
    ElidedConstant,
    #[error("constant @c{0} is defined twice")]
    DuplicateConst(u32),
    #[error("constant @c{0} is missing: constant ids must be 0, 1, 2, ... without gaps")]
    MissingConst(u32),
    #[error("value %{value} is given type {first} and type {second}")]
    TypeConflict {
        value: u32,
        first: String,
        second: String,
    },
    #[error("value %{0} has no type: define it, or declare it with `%{0} = undef : <type>`")]
    Untyped(u32),
    #[error("{values} values but {types} types")]
    TypeCount { values: usize, types: usize },
    #[error("`undef` takes no attributes, inputs, location or regions")]
    BadUndef,
}

/// Parses the text form of a graph (one `graph` and nothing after it but whitespace and comments).
pub fn parse_graph(src: &str) -> Result<Graph, ParseError> {
    let mut p = Parser { src, pos: 0 };
    let g = p.graph()?;
    p.skip_ws();
    if p.pos < src.len() {
        return Err(p.expected("end of input"));
    }
    Ok(g)
}

struct Parser<'a> {
    src: &'a str,
    /// Byte offset of the next character.
    pos: usize,
}

/// The value and constant tables of the graph being parsed, filled as definitions are read.
#[derive(Default)]
struct Tables {
    types: BTreeMap<u32, TensorType>,
    /// Where each value id is first mentioned.
    mentions: BTreeMap<u32, usize>,
    consts: BTreeMap<u32, Tensor>,
}

impl<'a> Parser<'a> {
    // ---- errors ----

    fn error_at(&self, pos: usize, kind: ParseErrorKind) -> ParseError {
        let before = &self.src[..pos.min(self.src.len())];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        ParseError { line, col, kind }
    }

    fn error(&self, kind: ParseErrorKind) -> ParseError {
        self.error_at(self.pos, kind)
    }

    /// "expected X, found <the next token>" at the current position.
    fn expected(&self, what: impl fmt::Display) -> ParseError {
        let rest = &self.src[self.pos..];
        let found = match rest.chars().next() {
            None => "end of input".to_string(),
            Some(c) if c.is_alphanumeric() || c == '_' => {
                let word: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
                    .take(40)
                    .collect();
                format!("`{word}`")
            }
            Some(c) => format!("`{c}`"),
        };
        self.error(ParseErrorKind::Expected {
            expected: what.to_string(),
            found,
        })
    }

    // ---- characters ----

    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    /// Skips whitespace and `#` comments.
    fn skip_ws(&mut self) {
        loop {
            let rest = &self.src[self.pos..];
            let trimmed = rest.trim_start();
            self.pos += rest.len() - trimmed.len();
            if trimmed.starts_with('#') {
                self.pos += trimmed.find('\n').unwrap_or(trimmed.len());
            } else {
                return;
            }
        }
    }

    /// Skips whitespace, then consumes `s` if it comes next.
    fn eat(&mut self, s: &str) -> bool {
        self.skip_ws();
        if self.src[self.pos..].starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    /// Like `eat`, for a keyword: it must not run on into a longer word.
    fn eat_keyword(&mut self, kw: &str) -> bool {
        let start = self.pos;
        if self.word() == kw {
            true
        } else {
            self.pos = start;
            false
        }
    }

    fn expect(&mut self, s: &str) -> Result<(), ParseError> {
        if self.eat(s) {
            Ok(())
        } else {
            Err(self.expected(format_args!("`{s}`")))
        }
    }

    /// Skips whitespace and reads a word of `[A-Za-z0-9_.]` (possibly empty).
    fn word(&mut self) -> &'a str {
        self.skip_ws();
        let rest = &self.src[self.pos..];
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(rest.len());
        self.pos += len;
        &rest[..len]
    }

    fn keyword(&mut self, kw: &str) -> Result<(), ParseError> {
        let start = self.pos;
        if self.word() == kw {
            Ok(())
        } else {
            self.pos = start;
            self.skip_ws();
            Err(self.expected(format_args!("`{kw}`")))
        }
    }

    /// A decimal number after a sigil (`%3`, `@c3`).
    fn number<T: FromStr>(&mut self, what: &str) -> Result<T, ParseError> {
        let rest = &self.src[self.pos..];
        let len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if len == 0 {
            return Err(self.expected(what));
        }
        let text = &rest[..len];
        let n = text
            .parse()
            .map_err(|_| self.error(ParseErrorKind::NumberRange(text.into())))?;
        self.pos += len;
        Ok(n)
    }

    /// One JSON value of type `T`, read with serde_json from the current position.
    fn json<T: DeserializeOwned>(&mut self) -> Result<T, ParseError> {
        self.skip_ws();
        let start = self.pos;
        let rest = &self.src[start..];
        let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<T>();
        match stream.next() {
            Some(Ok(v)) => {
                self.pos = start + stream.byte_offset();
                Ok(v)
            }
            Some(Err(e)) => {
                // serde_json counts lines and columns from `start`; point at the same place.
                let mut at = start;
                for _ in 1..e.line() {
                    at += self.src[at..].find('\n').map_or(0, |i| i + 1);
                }
                let line_rest = &self.src[at..];
                at += line_rest
                    .char_indices()
                    .nth(e.column().saturating_sub(1))
                    .map_or(line_rest.len(), |(i, _)| i);
                let msg = e.to_string();
                let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
                Err(self.error_at(at, ParseErrorKind::Json(msg)))
            }
            None => Err(self.expected("a JSON value")),
        }
    }

    fn string(&mut self) -> Result<String, ParseError> {
        self.skip_ws();
        if self.peek() != Some('"') {
            return Err(self.expected("a string"));
        }
        self.json()
    }

    // ---- graphs ----

    fn graph(&mut self) -> Result<Graph, ParseError> {
        self.keyword("graph")?;
        let mut t = Tables::default();
        let mut g = Graph::new();

        self.expect("(")?;
        if !self.eat(")") {
            loop {
                let (value, at) = self.value(&mut t)?;
                self.expect(":")?;
                let ty = self.ty()?;
                self.define(&mut t, value, ty, at)?;
                let name = self.string()?;
                g.inputs.push(Port { value, name });
                if !self.eat(",") {
                    self.expect(")")?;
                    break;
                }
            }
        }
        self.expect("->")?;
        self.expect("(")?;
        if !self.eat(")") {
            loop {
                let (value, _) = self.value(&mut t)?;
                let name = self.string()?;
                g.outputs.push(Port { value, name });
                if !self.eat(",") {
                    self.expect(")")?;
                    break;
                }
            }
        }
        self.expect("{")?;
        loop {
            self.skip_ws();
            match self.peek() {
                Some('}') => break,
                Some('@') => self.const_decl(&mut t)?,
                Some(_) => {
                    if let Some(node) = self.node(&mut t)? {
                        g.nodes.push(node);
                    }
                }
                None => return Err(self.expected("`}`")),
            }
        }
        let end = self.pos;
        self.pos += 1;

        g.values = self.value_table(&mut t, end)?;
        g.consts = dense(std::mem::take(&mut t.consts))
            .map_err(|id| self.error_at(end, ParseErrorKind::MissingConst(id)))?;
        Ok(g)
    }

    /// Turns the collected types into `Graph::values`, which must be dense.
    fn value_table(&self, t: &mut Tables, end: usize) -> Result<Vec<TensorType>, ParseError> {
        let n = match (t.types.keys().next_back(), t.mentions.keys().next_back()) {
            (None, None) => 0,
            (a, b) => a.max(b).map_or(0, |&m| m as usize + 1),
        };
        if t.types.len() != n {
            let missing = (0..).zip(t.types.keys()).find(|(i, k)| i != *k).map_or(
                u32::try_from(t.types.len()).expect("ids are u32"),
                |(i, _)| i,
            );
            let at = t.mentions.get(&missing).copied().unwrap_or(end);
            return Err(self.error_at(at, ParseErrorKind::Untyped(missing)));
        }
        Ok(std::mem::take(&mut t.types).into_values().collect())
    }

    /// `%N`, noting where it is first mentioned.
    fn value(&mut self, t: &mut Tables) -> Result<(ValueId, usize), ParseError> {
        self.skip_ws();
        let at = self.pos;
        if !self.src[self.pos..].starts_with('%') {
            return Err(self.expected("a value `%N`"));
        }
        self.pos += 1;
        let n: u32 = self.number("a value number")?;
        t.mentions.entry(n).or_insert(at);
        Ok((ValueId(n), at))
    }

    /// Records a definition's type; a value may be defined twice (the verifier objects, the
    /// parser does not), but only with one type.
    fn define(
        &self,
        t: &mut Tables,
        v: ValueId,
        ty: TensorType,
        at: usize,
    ) -> Result<(), ParseError> {
        match t.types.get(&v.0) {
            Some(old) if *old != ty => Err(self.error_at(
                at,
                ParseErrorKind::TypeConflict {
                    value: v.0,
                    first: old.to_string(),
                    second: ty.to_string(),
                },
            )),
            Some(_) => Ok(()),
            None => {
                t.types.insert(v.0, ty);
                Ok(())
            }
        }
    }

    /// `@cN = const T [elements]`.
    fn const_decl(&mut self, t: &mut Tables) -> Result<(), ParseError> {
        let at = self.pos;
        self.expect("@c")?;
        let id: u32 = self.number("a constant number")?;
        self.expect("=")?;
        self.keyword("const")?;
        self.skip_ws();
        let ty_at = self.pos;
        let ty = self.ty()?;
        let shape = match (ty.static_shape(), &ty.quant) {
            (Some(s), None) => s,
            _ => return Err(self.error_at(ty_at, ParseErrorKind::ConstType(ty.to_string()))),
        };
        let tensor = self.elements(&ty, &shape)?;
        if t.consts.insert(id, tensor).is_some() {
            return Err(self.error_at(at, ParseErrorKind::DuplicateConst(id)));
        }
        Ok(())
    }

    /// A node statement; `None` for an `undef` declaration.
    fn node(&mut self, t: &mut Tables) -> Result<Option<Node>, ParseError> {
        let mut outputs = Vec::new();
        let mut output_at = Vec::new();
        self.skip_ws();
        if self.peek() == Some('%') {
            loop {
                let (v, at) = self.value(t)?;
                outputs.push(v);
                output_at.push(at);
                if !self.eat(",") {
                    break;
                }
            }
            self.expect("=")?;
        }
        self.skip_ws();
        let name_at = self.pos;
        let name = self.word();
        if name.is_empty() {
            return Err(self.expected("an op name"));
        }

        let mut inputs = Vec::new();
        let op = match name {
            "undef" => None,
            "constant" => {
                self.expect("@c")?;
                let id: u32 = self.number("a constant number")?;
                if self.eat("(") {
                    inputs = self.args(t)?;
                }
                Some(Op::Constant { id })
            }
            _ => {
                self.skip_ws();
                let attrs = if self.peek() == Some('(') {
                    None
                } else {
                    Some(self.json::<serde_json::Value>()?)
                };
                let op = build_op(name, attrs).map_err(|reason| {
                    self.error_at(
                        name_at,
                        ParseErrorKind::BadOp {
                            name: name.into(),
                            reason,
                        },
                    )
                })?;
                self.expect("(")?;
                inputs = self.args(t)?;
                Some(op)
            }
        };

        self.skip_ws();
        let types_at = self.pos;
        let mut types = Vec::new();
        if self.eat(":") {
            loop {
                types.push(self.ty()?);
                if !self.eat(",") {
                    break;
                }
            }
        }
        if types.len() != outputs.len() {
            self.skip_ws();
            let at = if types.is_empty() { self.pos } else { types_at };
            return Err(self.error_at(
                at,
                ParseErrorKind::TypeCount {
                    values: outputs.len(),
                    types: types.len(),
                },
            ));
        }
        for ((&v, &at), ty) in outputs.iter().zip(&output_at).zip(types) {
            self.define(t, v, ty, at)?;
        }

        let loc = if self.eat_keyword("loc") {
            self.expect("(")?;
            let s = self.string()?;
            self.expect(")")?;
            Some(s)
        } else {
            None
        };

        let mut regions = Vec::new();
        if self.eat("{") {
            while !self.eat("}") {
                regions.push(self.graph()?);
            }
        }

        match op {
            Some(op) => Ok(Some(Node {
                op,
                inputs,
                outputs,
                regions,
                loc,
            })),
            None if inputs.is_empty() && loc.is_none() && regions.is_empty() => Ok(None),
            None => Err(self.error_at(name_at, ParseErrorKind::BadUndef)),
        }
    }

    /// Node arguments after the opening parenthesis, through the closing one.
    fn args(&mut self, t: &mut Tables) -> Result<Vec<Option<ValueId>>, ParseError> {
        let mut args = Vec::new();
        if self.eat(")") {
            return Ok(args);
        }
        loop {
            if self.eat("_") {
                args.push(None);
            } else {
                args.push(Some(self.value(t)?.0));
            }
            if !self.eat(",") {
                self.expect(")")?;
                return Ok(args);
            }
        }
    }

    // ---- types ----

    /// `dtype[dims]` with optional quantization JSON.
    fn ty(&mut self) -> Result<TensorType, ParseError> {
        self.skip_ws();
        let at = self.pos;
        let name = self.word();
        if name.is_empty() {
            return Err(self.expected("a type"));
        }
        let dtype = DType::from_name(name)
            .ok_or_else(|| self.error_at(at, ParseErrorKind::UnknownDType(name.into())))?;
        self.expect("[")?;
        let mut shape = Vec::new();
        if !self.eat("]") {
            loop {
                shape.push(self.dim()?);
                if !self.eat(",") {
                    self.expect("]")?;
                    break;
                }
            }
        }
        // Quantization JSON starts `{"`; a region block starts `{` then `graph` or `}`.
        let mut quant = None;
        let save = self.pos;
        if self.eat("{") {
            let is_json = self.eat("\"");
            self.pos = save;
            if is_json {
                quant = Some(self.json::<QuantParams>()?);
            }
        }
        Ok(TensorType {
            dtype,
            shape,
            quant,
        })
    }

    fn dim(&mut self) -> Result<Dim, ParseError> {
        self.skip_ws();
        match self.peek() {
            Some('?') => {
                self.pos += 1;
                Ok(Dim::Unknown)
            }
            Some('"') => Ok(Dim::Sym(self.json()?)),
            Some(c) if c.is_ascii_digit() => Ok(Dim::Known(self.number("a dimension")?)),
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                let rest = &self.src[self.pos..];
                let len = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                self.pos += len;
                Ok(Dim::Sym(rest[..len].to_string()))
            }
            _ => Err(self.expected("a dimension (number, symbol or `?`)")),
        }
    }

    // ---- constants ----

    fn elements(&mut self, ty: &TensorType, shape: &[usize]) -> Result<Tensor, ParseError> {
        self.skip_ws();
        let start = self.pos;
        self.expect("[")?;
        if self.eat("...") {
            return Err(self.error_at(start, ParseErrorKind::ElidedConstant));
        }
        let d = ty.dtype;
        let t = match d {
            DType::F32 => self.list(start, shape, d, parse_f32)?,
            DType::F64 => self.list(start, shape, d, parse_f64)?,
            DType::F16 => self.list(start, shape, d, parse_f16)?,
            DType::BF16 => self.list(start, shape, d, parse_bf16)?,
            DType::I8 => self.list(start, shape, d, |s| s.parse::<i8>().ok())?,
            DType::U8 => self.list(start, shape, d, |s| s.parse::<u8>().ok())?,
            DType::I16 => self.list(start, shape, d, |s| s.parse::<i16>().ok())?,
            DType::U16 => self.list(start, shape, d, |s| s.parse::<u16>().ok())?,
            DType::I32 => self.list(start, shape, d, |s| s.parse::<i32>().ok())?,
            DType::U32 => self.list(start, shape, d, |s| s.parse::<u32>().ok())?,
            DType::I64 => self.list(start, shape, d, |s| s.parse::<i64>().ok())?,
            DType::U64 => self.list(start, shape, d, |s| s.parse::<u64>().ok())?,
            DType::Bool => self.list(start, shape, d, |s| s.parse::<bool>().ok())?,
            DType::F8E4M3FN => self.list(start, shape, d, |s| parse_code(s, 8).map(F8E4M3FN))?,
            DType::F8E4M3FNUZ => {
                self.list(start, shape, d, |s| parse_code(s, 8).map(F8E4M3FNUZ))?
            }
            DType::F8E5M2 => self.list(start, shape, d, |s| parse_code(s, 8).map(F8E5M2))?,
            DType::F8E5M2FNUZ => {
                self.list(start, shape, d, |s| parse_code(s, 8).map(F8E5M2FNUZ))?
            }
            DType::F8E8M0 => self.list(start, shape, d, |s| parse_code(s, 8).map(F8E8M0))?,
            DType::F4E2M1 => self.list(start, shape, d, |s| parse_code(s, 4).map(F4E2M1))?,
            DType::I4 => self.list(start, shape, d, |s| small_int(s, -8, 7).map(I4))?,
            DType::U4 => self.list(start, shape, d, |s| {
                small_int(s, 0, 15).map(|v| U4(v as u8))
            })?,
            DType::I2 => self.list(start, shape, d, |s| small_int(s, -2, 1).map(I2))?,
            DType::U2 => self.list(start, shape, d, |s| small_int(s, 0, 3).map(|v| U2(v as u8)))?,
            DType::Str => {
                let mut v = Vec::new();
                if !self.eat("]") {
                    loop {
                        v.push(self.string()?);
                        if !self.eat(",") {
                            self.expect("]")?;
                            break;
                        }
                    }
                }
                self.tensor(ty, shape, v, start)?
            }
        };
        Ok(t)
    }

    /// A bracketed list of number-like elements (after the `[` at `start`), through the `]`.
    fn list<T: Elem>(
        &mut self,
        start: usize,
        shape: &[usize],
        dtype: DType,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Tensor, ParseError> {
        let mut v = Vec::with_capacity(shape.iter().product::<usize>().min(1 << 20));
        if !self.eat("]") {
            loop {
                self.skip_ws();
                let rest = &self.src[self.pos..];
                let len = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || "+-.:_".contains(c)))
                    .unwrap_or(rest.len());
                if len == 0 {
                    return Err(self.expected(format_args!("a {dtype} element")));
                }
                let text = &rest[..len];
                let x = parse(text).ok_or_else(|| {
                    self.error(ParseErrorKind::BadElement {
                        dtype,
                        text: text.into(),
                    })
                })?;
                v.push(x);
                self.pos += len;
                if !self.eat(",") {
                    self.expect("]")?;
                    break;
                }
            }
        }
        let ty = TensorType::fixed(dtype, shape);
        self.tensor(&ty, shape, v, start)
    }

    fn tensor<T: Elem>(
        &self,
        ty: &TensorType,
        shape: &[usize],
        v: Vec<T>,
        at: usize,
    ) -> Result<Tensor, ParseError> {
        let expected: usize = shape.iter().product();
        let found = v.len();
        Tensor::from_vec(shape, v).map_err(|_| {
            self.error_at(
                at,
                ParseErrorKind::ElementCount {
                    ty: ty.to_string(),
                    expected,
                    found,
                },
            )
        })
    }
}

/// Rebuilds an op's serde form from its printed name and attributes (the inverse of the
/// printer's `op_head`) and deserializes it.
fn build_op(name: &str, attrs: Option<serde_json::Value>) -> Result<Op, String> {
    use serde_json::Value;
    let json = match (name.split_once('.'), attrs) {
        (None, None) => Value::String(name.into()),
        (None, Some(a)) => Value::Object([(name.to_string(), a)].into_iter().collect()),
        (Some((family, op)), None) => Value::Object(
            [(family.to_string(), Value::String(op.into()))]
                .into_iter()
                .collect(),
        ),
        (Some((family, op)), Some(a)) => {
            let inner = Value::Object([(op.to_string(), a)].into_iter().collect());
            Value::Object([(family.to_string(), inner)].into_iter().collect())
        }
    };
    serde_json::from_value(json).map_err(|e| e.to_string())
}

/// The values of a map keyed 0, 1, 2, ...; the first missing key otherwise.
fn dense<T>(m: BTreeMap<u32, T>) -> Result<Vec<T>, u32> {
    let mut out = Vec::with_capacity(m.len());
    for (i, (k, v)) in (0..).zip(m) {
        if k != i {
            return Err(i);
        }
        out.push(v);
    }
    Ok(out)
}

/// `nan`, `nan:0x<bits>`, `inf`, `-inf`, or a decimal.
fn parse_float<F: FromStr>(
    s: &str,
    nan: F,
    from_bits: impl Fn(&str) -> Option<F>,
    inf: F,
    neg_inf: F,
) -> Option<F> {
    match s {
        "nan" => Some(nan),
        "inf" => Some(inf),
        "-inf" => Some(neg_inf),
        _ => match s.strip_prefix("nan:0x") {
            Some(hex) => from_bits(hex),
            // Rust also reads `NaN`, `infinity`, ...; only the printer's spellings are accepted.
            None if s
                .bytes()
                .any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E') =>
            {
                None
            }
            None => s.parse().ok(),
        },
    }
}

fn parse_f32(s: &str) -> Option<f32> {
    let bits = |h: &str| {
        let v = f32::from_bits(u32::from_str_radix(h, 16).ok()?);
        v.is_nan().then_some(v)
    };
    parse_float(
        s,
        f32::from_bits(CANONICAL_NAN_F32),
        bits,
        f32::INFINITY,
        f32::NEG_INFINITY,
    )
}

fn parse_f64(s: &str) -> Option<f64> {
    let bits = |h: &str| {
        let v = f64::from_bits(u64::from_str_radix(h, 16).ok()?);
        v.is_nan().then_some(v)
    };
    parse_float(
        s,
        f64::from_bits(CANONICAL_NAN_F64),
        bits,
        f64::INFINITY,
        f64::NEG_INFINITY,
    )
}

/// Half types read as f32 and round, exactly as the printer's shortest-form search assumes.
fn parse_f16(s: &str) -> Option<f16> {
    let bits = |h: &str| {
        let v = f16::from_bits(u16::from_str_radix(h, 16).ok()?);
        v.is_nan().then_some(v)
    };
    match s.strip_prefix("nan:0x") {
        Some(h) => bits(h),
        None if s == "nan" => Some(f16::from_bits(CANONICAL_NAN_F16)),
        None => parse_f32(s).filter(|x| !x.is_nan()).map(f16::from_f32),
    }
}

fn parse_bf16(s: &str) -> Option<bf16> {
    let bits = |h: &str| {
        let v = bf16::from_bits(u16::from_str_radix(h, 16).ok()?);
        v.is_nan().then_some(v)
    };
    match s.strip_prefix("nan:0x") {
        Some(h) => bits(h),
        None if s == "nan" => Some(bf16::from_bits(CANONICAL_NAN_BF16)),
        None => parse_f32(s).filter(|x| !x.is_nan()).map(bf16::from_f32),
    }
}

/// The code of a storage float element, `0x` and hex digits, below `2^bits`.
fn parse_code(s: &str, bits: u32) -> Option<u8> {
    let h = s.strip_prefix("0x")?;
    u8::from_str_radix(h, 16)
        .ok()
        .filter(|&c| u32::from(c) < (1 << bits))
}

/// A small integer element in `lo..=hi`.
fn small_int(s: &str, lo: i8, hi: i8) -> Option<i8> {
    s.parse::<i8>().ok().filter(|v| (lo..=hi).contains(v))
}

//! The IR's text form: a printer and a parser that round-trip exactly (`parse(print(g)) == g`).
//!
//! The form is modelled on MLIR and Cranelift's CLIF: one statement per line, SSA values `%N`
//! named by their real `ValueId`s (so the text is the graph, not a renumbering of it), types
//! after a colon, and nested regions in braces:
//!
//! ```text
//! graph (%0: f32[batch,3,224,224] "input", %1: i64[2] "shape") -> (%7 "output") {
//!   @c0 = const f32[2,2] [1.0, 2.0, 3.0, 4.0]
//!   %2 = constant @c0 : f32[2,2]
//!   %3 = ew.add(%0, %2) : f32[batch,3,224,224] loc("Add_1")
//!   %4, %5 = movement.split {"axis":1,"split":[1,2]} (%3) : f32[batch,1,224,224], f32[batch,2,224,224]
//!   %6 = nn.conv {"group":1} (%4, %w, _) : f32[batch,8,222,222]
//!   %8 = control.if (%c, %x) : f32[?] {
//!     graph (%0: f32[2] "x") -> (%1 "y") {
//!       %1 = ew.relu(%0) : f32[2]
//!     }
//!     graph (%0: f32[2] "x") -> (%0 "y") {
//!     }
//!   }
//! }
//! ```
//!
//! Grammar (whitespace, including newlines, is insignificant; `#` starts a comment to the end
//! of the line):
//!
//! ```text
//! graph   := 'graph' '(' [inport {',' inport}] ')' '->' '(' [outport {',' outport}] ')' '{' stmt* '}'
//! inport  := value ':' type string
//! outport := value string
//! stmt    := '@c' N '=' 'const' type '[' [elem {',' elem}] ']'       # a constant-table entry
//!          | value {',' value} '=' 'undef' ':' type {',' type}         # a value no one defines
//!          | [value {',' value} '='] op [':' type {',' type}] ['loc' '(' string ')'] ['{' graph* '}']
//! op      := 'constant' '@c' N ['(' args ')']
//!          | name [json] '(' [arg {',' arg}] ')'                      # arg := value | '_'
//! type    := dtype '[' [dim {',' dim}] ']' [quant-json]               # dim := N | ident | string | '?'
//! ```
//!
//! * Op names and attributes come from serde, so this module never lists ops: an op serializes
//!   (externally tagged) to `{"family": "op"}` (printed `family.op`) or `{"family": {"op": attrs}}`
//!   (printed `family.op attrs`, the attributes as compact JSON); the parser rebuilds that JSON
//!   value and deserializes the `Op`. `constant` nodes print as `constant @cN`.
//! * Constants print every element exactly: floats in their shortest round-tripping decimal form
//!   (`nan`, `inf`, `-inf`, `-0.0` spelled out; a NaN other than the canonical one keeps its bits as
//!   `nan:0x7fc00001`), strings as JSON strings. The float8/float4 storage types print their codes
//!   (`0x3c`, two hex digits), the 4- and 2-bit integers their values. [`PrintOptions::elide_consts_over`] abbreviates large
//!   constants for human dumps (`[... 9408 elements]`); that form does not parse.
//! * Symbolic dims that are not plain identifiers (`past_sequence_length + 1`) are printed as JSON
//!   strings so that they parse back.
//! * `undef` declares a value of the table that neither a graph input nor a node defines, so even
//!   graphs the verifier rejects print and parse back exactly (the parser checks syntax and the
//!   value table's consistency, not the verifier's invariants).
//! * Graph outputs appear only in the header; `return` is not needed.
//!
//! ```
//! use mlc_ir::{parse_graph, print_graph, verify};
//!
//! let src = r#"graph (%0: f32[batch,2] "x") -> (%2 "y") {
//!   @c0 = const f32[2] [0.5, -inf]
//!   %1 = constant @c0 : f32[2]
//!   %2 = ew.add(%0, %1) : f32[batch,2] loc("Add_1")
//! }
//! "#;
//! let g = parse_graph(src)?;
//! assert!(verify(&g).is_ok());
//! assert_eq!(print_graph(&g), src);
//!
//! let err = parse_graph("graph (%0: f31[2] \"x\") -> () {}").unwrap_err();
//! assert_eq!(err.to_string(), "1:12: unknown dtype `f31`");
//! # Ok::<(), mlc_ir::ParseError>(())
//! ```

mod parse;
mod print;

pub use parse::{ParseError, ParseErrorKind, parse_graph};
pub use print::{PrintOptions, print_graph, print_graph_with};

use crate::graph::Graph;
use std::fmt;

impl fmt::Display for Graph {
    /// The exact text form (see [`print_graph`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&print_graph(self))
    }
}

/// Whether a symbolic dim can be printed bare: an identifier that cannot be read as a number,
/// as `?`, or as anything but a dim name.
fn is_plain_sym(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Bits of the NaN that `f32::NAN` and friends produce; other NaNs print with their bits.
const CANONICAL_NAN_F32: u32 = 0x7fc0_0000;
const CANONICAL_NAN_F64: u64 = 0x7ff8_0000_0000_0000;
const CANONICAL_NAN_F16: u16 = 0x7e00;
const CANONICAL_NAN_BF16: u16 = 0x7fc0;

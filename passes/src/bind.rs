//! Input-shape binding: replaces the symbolic dims of a graph by the sizes its inputs are bound to.
//!
//! A symbol names one size everywhere in a graph (`batch` in an input and in an intermediate
//! value are the same number), so binding `input_ids: [1, 8]` against a declared
//! `i64[batch, seq]` fixes `batch = 1` and `seq = 8` in every value type that mentions them.
//! Regions are left alone: their inputs are bound by their node, not by the enclosing graph, and
//! their symbols need not mean what the enclosing graph's do.

use crate::PassError;
use mlc_ir::{Dim, Graph};
use std::collections::BTreeMap;

/// Binds graph inputs by name to concrete shapes and substitutes the symbols this fixes.
///
/// Returns the symbol -> size map derived from the declared input types. Fails, leaving the graph
/// untouched, on an unknown input name, a rank or size that contradicts the declared type, or a
/// symbol bound to two different sizes.
pub fn bind(
    graph: &mut Graph,
    bindings: &[(String, Vec<usize>)],
) -> Result<BTreeMap<String, usize>, PassError> {
    let symbols = symbol_sizes(graph, bindings)?;

    // Dims declared `Unknown` are not shared with anything, so only the bound input itself learns
    // them; every other dim of a bound input is already Known or a symbol in `symbols`.
    for (name, dims) in bindings {
        let port = graph
            .inputs
            .iter()
            .find(|p| &p.name == name)
            .expect("validated by symbol_sizes");
        let ty = &mut graph.values[port.value.0 as usize];
        for (d, &n) in ty.shape.iter_mut().zip(dims) {
            *d = Dim::Known(n);
        }
    }
    substitute(graph, &symbols);
    Ok(symbols)
}

/// Replaces every `Dim::Sym` found in `symbols` by its size, in the value types of `graph` (not
/// of its regions). Returns how many dims changed.
pub fn substitute(graph: &mut Graph, symbols: &BTreeMap<String, usize>) -> usize {
    let mut changed = 0;
    for ty in &mut graph.values {
        for d in &mut ty.shape {
            if let Dim::Sym(s) = d
                && let Some(&n) = symbols.get(s.as_str())
            {
                *d = Dim::Known(n);
                changed += 1;
            }
        }
    }
    changed
}

/// Checks the bindings against the declared input types and derives the symbol sizes.
fn symbol_sizes(
    graph: &Graph,
    bindings: &[(String, Vec<usize>)],
) -> Result<BTreeMap<String, usize>, PassError> {
    let mut symbols: BTreeMap<String, usize> = BTreeMap::new();
    for (i, (name, dims)) in bindings.iter().enumerate() {
        if bindings[..i].iter().any(|(n, _)| n == name) {
            return Err(PassError::DuplicateBinding(name.clone()));
        }
        let port = graph
            .inputs
            .iter()
            .find(|p| &p.name == name)
            .ok_or_else(|| PassError::UnknownInput(name.clone()))?;
        let ty = graph.ty(port.value);
        if ty.rank() != dims.len() {
            return Err(PassError::RankMismatch {
                input: name.clone(),
                declared: ty.to_string(),
                given: dims.clone(),
            });
        }
        for (axis, (d, &n)) in ty.shape.iter().zip(dims).enumerate() {
            match d {
                Dim::Known(k) if *k != n => {
                    return Err(PassError::DimMismatch {
                        input: name.clone(),
                        axis,
                        declared: ty.to_string(),
                        given: n,
                    });
                }
                Dim::Sym(s) => {
                    if let Some(&prev) = symbols.get(s)
                        && prev != n
                    {
                        return Err(PassError::SymbolConflict {
                            symbol: s.clone(),
                            first: prev,
                            second: n,
                        });
                    }
                    symbols.insert(s.clone(), n);
                }
                Dim::Known(_) | Dim::Unknown => {}
            }
        }
    }
    Ok(symbols)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlc_ir::ops::EwOp;
    use mlc_ir::{DType, Op, TensorType};

    fn sym(s: &str) -> Dim {
        Dim::Sym(s.into())
    }

    fn ty(dims: Vec<Dim>) -> TensorType {
        TensorType::new(DType::F32, dims)
    }

    /// `x: [batch, seq]`, `y: [batch, ?]`, `z = x + y` typed `[batch, seq]`, and a region
    /// that mentions `batch` too.
    fn graph() -> Graph {
        let mut g = Graph::new();
        let x = g.add_input("x", ty(vec![sym("batch"), sym("seq")]));
        let y = g.add_input("y", ty(vec![sym("batch"), Dim::Unknown]));
        let mut region = Graph::new();
        let r = region.add_input("r", ty(vec![sym("batch")]));
        region.outputs.push(mlc_ir::Port {
            value: r,
            name: "r".into(),
        });
        let z = g.add_node(
            Op::Ew(EwOp::Add),
            vec![Some(x), Some(y)],
            vec![ty(vec![sym("batch"), sym("seq")])],
            vec![region],
            None,
        )[0];
        g.outputs.push(mlc_ir::Port {
            value: z,
            name: "z".into(),
        });
        g
    }

    fn bound(bindings: &[(&str, &[usize])]) -> Result<(Graph, BTreeMap<String, usize>), PassError> {
        let mut g = graph();
        let b: Vec<(String, Vec<usize>)> = bindings
            .iter()
            .map(|(n, d)| (n.to_string(), d.to_vec()))
            .collect();
        let syms = bind(&mut g, &b)?;
        Ok((g, syms))
    }

    #[test]
    fn binds_symbols_everywhere_but_regions() {
        let (g, syms) = bound(&[("x", &[2, 7]), ("y", &[2, 5])]).expect("consistent bindings");
        assert_eq!(
            syms,
            BTreeMap::from([("batch".to_string(), 2), ("seq".to_string(), 7)])
        );
        assert_eq!(g.values[0].to_string(), "f32[2,7]");
        // The Unknown dim of `y` is the binding's own, no symbol carries it further.
        assert_eq!(g.values[1].to_string(), "f32[2,5]");
        assert_eq!(g.values[2].to_string(), "f32[2,7]");
        assert_eq!(g.nodes[0].regions[0].values[0].to_string(), "f32[batch]");
    }

    #[test]
    fn one_input_binds_symbols_shared_with_others() {
        let (g, _) = bound(&[("x", &[3, 4])]).expect("consistent bindings");
        assert_eq!(g.values[1].to_string(), "f32[3,?]");
    }

    #[test]
    fn rejects_inconsistent_bindings() {
        let err =
            |b: &[(&str, &[usize])]| bound(b).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            err(&[("x", &[2, 7]), ("y", &[3, 5])]),
            "symbol \"batch\" is bound to both 2 and 3"
        );
        assert_eq!(err(&[("w", &[2])]), "no graph input is named \"w\"");
        assert_eq!(
            err(&[("x", &[2])]),
            "input \"x\" has type f32[batch,seq], the binding gives 1 dims: [2]"
        );
        assert_eq!(
            err(&[("x", &[2, 7]), ("x", &[2, 7])]),
            "input \"x\" is bound twice"
        );
    }

    #[test]
    fn rejects_a_size_that_contradicts_a_known_dim() {
        let mut g = Graph::new();
        g.add_input("x", TensorType::fixed(DType::F32, &[1, 3]));
        let e = bind(&mut g, &[("x".into(), vec![1, 4])])
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("input \"x\" has type f32[1,3], the binding gives 4 at axis 1")
        );
    }
}

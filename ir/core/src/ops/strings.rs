//! The strings family: string ops (split, normalize, regex match), n-gram counting (TF-IDF), and
//! the classical-ML ops of `ai.onnx.ml` that the node tests exercise (label encoding, feature
//! extraction, tree ensembles).
//!
//! Every lookup table (TF-IDF pool, label keys, tree nodes) is an attribute in plain serde data,
//! decoded once at import, so kernels never re-parse ONNX attribute encodings.

use super::{InferCx, InferError};
use crate::DType;
use crate::shape::{Dim, Shape, TensorType};
use serde::{Deserialize, Serialize};

/// What `strings.normalize` does to letter case (after stopword removal when case-sensitive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseChange {
    None,
    Lower,
    Upper,
}

/// How `strings.tf_idf` turns n-gram counts into output values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TfIdfMode {
    /// The raw count.
    Tf,
    /// `weight` (1 without weights) where the count is positive, else 0.
    Idf,
    /// `weight * count` (the count without weights).
    TfIdf,
}

/// A list of keys or values: integers, floats or strings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Labels {
    Ints(Vec<i64>),
    Floats(Vec<f64>),
    Strs(Vec<String>),
}

impl Labels {
    pub fn len(&self) -> usize {
        match self {
            Labels::Ints(v) => v.len(),
            Labels::Floats(v) => v.len(),
            Labels::Strs(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One n-gram of the TF-IDF pool and the output column it counts into.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NGram {
    /// The n-gram's items, in order: `Labels::Ints` or `Labels::Strs`.
    pub items: Labels,
    pub column: usize,
}

/// How an ensemble combines the leaf values the trees reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TreeAggregate {
    Average,
    Sum,
    Min,
    Max,
}

/// The function applied to each row of aggregated scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TreePostTransform {
    None,
    Softmax,
    Logistic,
    /// Softmax over the non-zero scores; zeros stay zero.
    SoftmaxZero,
}

/// The test of a branch node: `x[feature] <op> value`, or membership in a set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TreeTest {
    Leq(f64),
    Lt(f64),
    Gte(f64),
    Gt(f64),
    Eq(f64),
    Neq(f64),
    Member(Vec<f64>),
}

/// Where a branch leads: another branch node or a leaf, by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TreeChild {
    Node(usize),
    Leaf(usize),
}

/// A branch node of a tree ensemble.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TreeNode {
    pub feature: usize,
    pub test: TreeTest,
    /// A NaN feature takes the true branch (otherwise NaN fails every test but `neq`).
    pub missing_tracks_true: bool,
    pub if_true: TreeChild,
    pub if_false: TreeChild,
}

/// A leaf of a tree ensemble: it adds `weight` to output column `target`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TreeLeaf {
    pub target: usize,
    pub weight: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StringsOp {
    /// Splits each string of `x` at `delimiter` (at runs of whitespace, with leading and trailing
    /// whitespace ignored, when `None`), at most `maxsplit` times. Outputs: the pieces, shape
    /// `x.shape + [max pieces]` padded with "", and the i64 piece counts, shape `x.shape`.
    Split {
        delimiter: Option<String>,
        maxsplit: Option<usize>,
    },
    /// Removes stopwords from a `[C]` or `[1, C]` string tensor and changes case. A string is
    /// split at single spaces, words equal to a stopword (after case change when not
    /// case-sensitive) are dropped, and the rest rejoined; strings left empty are removed
    /// (one "" remains if nothing is left).
    Normalize {
        case_change: CaseChange,
        case_sensitive: bool,
        stopwords: Vec<String>,
        /// Kept for the record; case mapping is Unicode's default whatever the locale.
        locale: Option<String>,
    },
    /// Whether each whole string matches `pattern` (RE2 syntax); bool, shaped like the input.
    RegexFullMatch { pattern: String },
    /// Counts the pool's n-grams (with up to `max_skip_count` items skipped between
    /// consecutive items) in each row of a `[C]` or `[B, C]` int or string tensor. Output f32
    /// `[n_columns]` or `[B, n_columns]`.
    TfIdf {
        mode: TfIdfMode,
        min_gram_length: usize,
        max_gram_length: usize,
        max_skip_count: usize,
        /// Where the same n-gram appears twice, the later column wins.
        ngrams: Vec<NGram>,
        n_columns: usize,
        /// Per output column; empty for none.
        weights: Vec<f32>,
    },
    /// Maps each element equal to `keys[i]` to `values[i]`, others to `default` (one element);
    /// the output has type `dtype`.
    LabelEncode {
        keys: Labels,
        values: Labels,
        default: Labels,
        dtype: DType,
    },
    /// Gathers elements along the last axis at the indices of input 1 (flattened). A 1-D input
    /// gives a `[1, k]` output.
    ArrayFeatureExtract,
    /// Evaluates a tree ensemble on each row of a `[N, F]` float tensor: output `[N, n_targets]`
    /// of the input's type.
    TreeEnsemble {
        nodes: Vec<TreeNode>,
        leaves: Vec<TreeLeaf>,
        roots: Vec<TreeChild>,
        n_targets: usize,
        aggregate: TreeAggregate,
        post_transform: TreePostTransform,
    },
}

fn want(index: usize, found: DType, ok: bool, expected: &str) -> Result<(), InferError> {
    if ok {
        Ok(())
    } else {
        Err(InferError::DType {
            index,
            expected: expected.into(),
            found,
        })
    }
}

impl StringsOp {
    pub fn infer(&self, cx: &InferCx) -> Result<Vec<TensorType>, InferError> {
        match self {
            StringsOp::Split { .. } => {
                cx.arity(1, 1)?;
                let x = cx.input(0)?;
                want(0, x.dtype, x.dtype == DType::Str, "str")?;
                let mut pieces: Shape = x.shape.clone();
                pieces.push(Dim::Unknown);
                Ok(vec![
                    TensorType::new(DType::Str, pieces),
                    TensorType::new(DType::I64, x.shape.clone()),
                ])
            }
            StringsOp::Normalize { .. } => {
                cx.arity(1, 1)?;
                let x = cx.input(0)?;
                want(0, x.dtype, x.dtype == DType::Str, "str")?;
                let shape = match x.shape.as_slice() {
                    [_] => vec![Dim::Unknown],
                    [rows, _] => vec![rows.clone(), Dim::Unknown],
                    _ => return Err(InferError::Shape("normalize takes [C] or [1, C]".into())),
                };
                Ok(vec![TensorType::new(DType::Str, shape)])
            }
            StringsOp::RegexFullMatch { .. } => {
                cx.arity(1, 1)?;
                let x = cx.input(0)?;
                want(0, x.dtype, x.dtype == DType::Str, "str")?;
                Ok(vec![TensorType::new(DType::Bool, x.shape.clone())])
            }
            StringsOp::TfIdf {
                ngrams, n_columns, ..
            } => {
                cx.arity(1, 1)?;
                let x = cx.input(0)?;
                // An empty pool counts nothing, so it accepts either kind of input.
                let str_pool = ngrams.first().map(|g| matches!(g.items, Labels::Strs(_)));
                let ints = matches!(x.dtype, DType::I32 | DType::I64);
                let strs = x.dtype == DType::Str;
                let (ok, expected) = match str_pool {
                    Some(true) => (strs, "str"),
                    Some(false) => (ints, "i32 or i64"),
                    None => (ints || strs, "str, i32 or i64"),
                };
                want(0, x.dtype, ok, expected)?;
                let shape = match x.shape.as_slice() {
                    [] | [_] => vec![Dim::Known(*n_columns)],
                    [b, _] => vec![b.clone(), Dim::Known(*n_columns)],
                    _ => return Err(InferError::Shape("tf_idf takes [C] or [B, C]".into())),
                };
                Ok(vec![TensorType::new(DType::F32, shape)])
            }
            StringsOp::LabelEncode {
                keys,
                values,
                default,
                dtype,
            } => {
                cx.arity(1, 1)?;
                let x = cx.input(0)?;
                let ok = match keys {
                    Labels::Ints(_) => x.dtype.is_int(),
                    Labels::Floats(_) => x.dtype.is_float(),
                    Labels::Strs(_) => x.dtype == DType::Str,
                };
                want(0, x.dtype, ok, "the type of the keys")?;
                if keys.len() != values.len() {
                    return Err(InferError::Attr {
                        name: "values",
                        reason: format!("{} values for {} keys", values.len(), keys.len()),
                    });
                }
                if default.len() != 1 {
                    return Err(InferError::Attr {
                        name: "default",
                        reason: "must hold one value".into(),
                    });
                }
                Ok(vec![TensorType::new(*dtype, x.shape.clone())])
            }
            StringsOp::ArrayFeatureExtract => {
                cx.arity(2, 2)?;
                let x = cx.input(0)?;
                let idx = cx.input(1)?;
                want(1, idx.dtype, idx.dtype.is_int(), "integer")?;
                let k = idx
                    .shape
                    .iter()
                    .try_fold(1usize, |acc, d| d.known().map(|d| acc * d))
                    .map_or(Dim::Unknown, Dim::Known);
                let shape = match x.shape.as_slice() {
                    [] => return Err(InferError::Shape("input must have rank >= 1".into())),
                    [_] => vec![Dim::Known(1), k],
                    [outer @ .., _] => {
                        let mut s = outer.to_vec();
                        s.push(k);
                        s
                    }
                };
                Ok(vec![TensorType::new(x.dtype, shape)])
            }
            StringsOp::TreeEnsemble { n_targets, .. } => {
                cx.arity(1, 1)?;
                let x = cx.input(0)?;
                want(0, x.dtype, x.dtype.is_float(), "float")?;
                let rows = match x.shape.as_slice() {
                    [n, _] => n.clone(),
                    _ => return Err(InferError::Shape("tree_ensemble takes [N, F]".into())),
                };
                Ok(vec![TensorType::new(
                    x.dtype,
                    vec![rows, Dim::Known(*n_targets)],
                )])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn infer(op: &StringsOp, inputs: Vec<TensorType>) -> Result<Vec<TensorType>, InferError> {
        let inputs: Vec<Option<TensorType>> = inputs.into_iter().map(Some).collect();
        let cx = InferCx {
            inputs: &inputs,
            consts: &[],
            regions: &[],
            n_outputs: 2,
        };
        op.infer(&cx)
    }

    #[test]
    fn split_adds_an_unknown_axis() {
        let op = StringsOp::Split {
            delimiter: None,
            maxsplit: None,
        };
        let out = infer(&op, vec![TensorType::fixed(DType::Str, &[2, 3])]).unwrap();
        assert_eq!(
            out[0].shape,
            vec![Dim::Known(2), Dim::Known(3), Dim::Unknown]
        );
        assert_eq!(out[1], TensorType::fixed(DType::I64, &[2, 3]));
        assert!(infer(&op, vec![TensorType::fixed(DType::F32, &[2])]).is_err());
    }

    #[test]
    fn feature_extract_of_a_vector_is_a_row() {
        let op = StringsOp::ArrayFeatureExtract;
        let out = infer(
            &op,
            vec![
                TensorType::fixed(DType::F32, &[5]),
                TensorType::fixed(DType::I64, &[3]),
            ],
        )
        .unwrap();
        assert_eq!(out[0], TensorType::fixed(DType::F32, &[1, 3]));
    }

    #[test]
    fn attributes_round_trip_through_json() {
        let ops = [
            StringsOp::LabelEncode {
                keys: Labels::Floats(vec![0.5, -0.0]),
                values: Labels::Strs(vec!["a".into(), "b".into()]),
                default: Labels::Strs(vec!["_Unused".into()]),
                dtype: DType::Str,
            },
            StringsOp::TreeEnsemble {
                nodes: vec![TreeNode {
                    feature: 1,
                    test: TreeTest::Member(vec![1.25, 7.0]),
                    missing_tracks_true: true,
                    if_true: TreeChild::Leaf(0),
                    if_false: TreeChild::Node(2),
                }],
                leaves: vec![TreeLeaf {
                    target: 0,
                    weight: 0.1,
                }],
                roots: vec![TreeChild::Node(0)],
                n_targets: 1,
                aggregate: TreeAggregate::Max,
                post_transform: TreePostTransform::SoftmaxZero,
            },
        ];
        for op in ops {
            let text = serde_json::to_string(&op).unwrap();
            let back: StringsOp = serde_json::from_str(&text).unwrap();
            assert_eq!(back, op, "{text}");
        }
    }
}

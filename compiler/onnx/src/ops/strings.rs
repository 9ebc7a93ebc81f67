//! Import of ONNX string ops (StringSplit, StringNormalizer, RegexFullMatch, TfIdfVectorizer)
//! and of the `ai.onnx.ml` ops LabelEncoder, ArrayFeatureExtractor and TreeEnsemble into the
//! `strings` family.
//!
//! Normalized here: LabelEncoder's three attribute forms (opset 1's `classes_strings`, opset 2's
//! typed `keys_*`/`values_*` lists, opset 4's tensors) become one key list, one value list, a
//! default and an output type; TfIdfVectorizer's flat pool with `ngram_counts` and
//! `ngram_indexes` becomes a list of n-grams with their output columns; TreeEnsemble's parallel
//! node arrays become a list of nodes whose children name either a node or a leaf.

use crate::cx::{NodeCx, NodeError, Registry, invalid};
use mlc_ir::ops::StringsOp;
use mlc_ir::ops::strings::{
    CaseChange, Labels, NGram, TfIdfMode, TreeAggregate, TreeChild, TreeLeaf, TreeNode,
    TreePostTransform, TreeTest,
};
use mlc_ir::{DType, Op, Tensor, ValueId};

pub fn register(r: &mut Registry) {
    r.add("", "StringSplit", string_split);
    r.add("", "StringNormalizer", string_normalizer);
    r.add("", "RegexFullMatch", regex_full_match);
    r.add("", "TfIdfVectorizer", tf_idf);
    r.add("ai.onnx.ml", "LabelEncoder", label_encoder);
    r.add("ai.onnx.ml", "ArrayFeatureExtractor", |cx| {
        let (x, idx) = (cx.input(0)?, cx.input(1)?);
        Ok(vec![cx.emit1(
            Op::Strings(StringsOp::ArrayFeatureExtract),
            vec![x, idx],
        )?])
    });
    r.add("ai.onnx.ml", "TreeEnsemble", tree_ensemble);
}

fn bad_attr(name: &str, reason: impl Into<String>) -> NodeError {
    NodeError::Attr {
        name: name.into(),
        reason: reason.into(),
    }
}

fn to_usize(name: &str, v: i64) -> Result<usize, NodeError> {
    usize::try_from(v).map_err(|_| bad_attr(name, format!("{v} is negative")))
}

fn usizes(cx: &NodeCx, name: &str) -> Result<Vec<usize>, NodeError> {
    cx.attr_ints(name)?
        .unwrap_or_default()
        .into_iter()
        .map(|v| to_usize(name, v))
        .collect()
}

fn string_split(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let x = cx.input(0)?;
    // An empty delimiter and a negative maxsplit mean the defaults (whitespace, no limit).
    let delimiter = cx.attr_str_opt("delimiter")?.filter(|d| !d.is_empty());
    let maxsplit = cx
        .attr_int_opt("maxsplit")?
        .and_then(|m| usize::try_from(m).ok());
    let op = StringsOp::Split {
        delimiter,
        maxsplit,
    };
    cx.emit(Op::Strings(op), vec![Some(x)], 2)
}

fn string_normalizer(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let x = cx.input(0)?;
    let case_change = match cx.attr_str("case_change_action", "NONE")?.as_str() {
        "NONE" => CaseChange::None,
        "LOWER" => CaseChange::Lower,
        "UPPER" => CaseChange::Upper,
        other => return Err(bad_attr("case_change_action", format!("unknown {other:?}"))),
    };
    let op = StringsOp::Normalize {
        case_change,
        case_sensitive: cx.attr_int("is_case_sensitive", 0)? != 0,
        stopwords: cx.attr_strs("stopwords")?.unwrap_or_default(),
        locale: cx.attr_str_opt("locale")?,
    };
    Ok(vec![cx.emit1(Op::Strings(op), vec![x])?])
}

fn regex_full_match(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let x = cx.input(0)?;
    let pattern = cx
        .attr_str_opt("pattern")?
        .ok_or_else(|| bad_attr("pattern", "required"))?;
    Ok(vec![cx.emit1(
        Op::Strings(StringsOp::RegexFullMatch { pattern }),
        vec![x],
    )?])
}

fn tf_idf(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let x = cx.input(0)?;
    let mode = match cx.attr_str("mode", "TF")?.as_str() {
        "TF" => TfIdfMode::Tf,
        "IDF" => TfIdfMode::Idf,
        "TFIDF" => TfIdfMode::TfIdf,
        other => return Err(bad_attr("mode", format!("unknown {other:?}"))),
    };
    let min_gram_length = to_usize("min_gram_length", cx.attr_int("min_gram_length", 1)?)?;
    let max_gram_length = to_usize("max_gram_length", cx.attr_int("max_gram_length", 1)?)?;
    let max_skip_count = to_usize("max_skip_count", cx.attr_int("max_skip_count", 0)?)?;
    let counts = usizes(cx, "ngram_counts")?;
    let indexes = usizes(cx, "ngram_indexes")?;
    let pool = match (cx.attr_ints("pool_int64s")?, cx.attr_strs("pool_strings")?) {
        (Some(p), None) => Labels::Ints(p),
        (None, Some(p)) => Labels::Strs(p),
        (None, None) => Labels::Ints(vec![]),
        (Some(_), Some(_)) => return Err(invalid("give pool_int64s or pool_strings, not both")),
    };
    let total = pool.len();
    // Pool items `counts[i]..counts[i + 1]` are the n-grams of length `i + 1`. N-grams are
    // numbered through the whole pool, lengths outside the requested range included, and
    // n-gram `k` counts into column `ngram_indexes[k]`.
    let mut ngrams = Vec::new();
    let mut k = 0;
    for (i, &start) in counts.iter().enumerate() {
        let n = i + 1;
        let end = counts.get(i + 1).copied().unwrap_or(total);
        if start > end || end > total {
            return Err(bad_attr("ngram_counts", "not increasing within the pool"));
        }
        for g in 0..(end - start) / n {
            let (a, b) = (start + g * n, start + (g + 1) * n);
            if (min_gram_length..=max_gram_length).contains(&n) {
                let column = *indexes
                    .get(k)
                    .ok_or_else(|| bad_attr("ngram_indexes", "fewer indexes than n-grams"))?;
                let items = match &pool {
                    Labels::Ints(p) => Labels::Ints(p[a..b].to_vec()),
                    Labels::Strs(p) => Labels::Strs(p[a..b].to_vec()),
                    Labels::Floats(_) => unreachable!("pools are ints or strings"),
                };
                ngrams.push(NGram { items, column });
            }
            k += 1;
        }
    }
    let n_columns = indexes.iter().max().map_or(0, |m| m + 1);
    let weights = cx.attr_floats("weights")?.unwrap_or_default();
    let op = StringsOp::TfIdf {
        mode,
        min_gram_length,
        max_gram_length,
        max_skip_count,
        ngrams,
        n_columns,
        weights,
    };
    Ok(vec![cx.emit1(Op::Strings(op), vec![x])?])
}

/// The elements of a key/value tensor attribute.
fn labels_of(t: &Tensor) -> Result<Labels, NodeError> {
    Ok(match t {
        Tensor::Str(a) => Labels::Strs(a.iter().cloned().collect()),
        _ if t.dtype().is_float() => Labels::Floats(t.to_f64_vec()?),
        _ => Labels::Ints(t.to_i64_vec()?),
    })
}

/// Whichever of `<what>_tensor`, `_int64s`, `_floats`, `_strings` is present, as labels, with
/// the element type it gives the output.
fn labels_attr(cx: &NodeCx, what: &str) -> Result<Option<(Labels, DType)>, NodeError> {
    if let Some(t) = cx.attr_tensor(&format!("{what}_tensor"))? {
        return Ok(Some((labels_of(&t)?, t.dtype())));
    }
    if let Some(v) = cx.attr_ints(&format!("{what}_int64s"))? {
        return Ok(Some((Labels::Ints(v), DType::I64)));
    }
    if let Some(v) = cx.attr_floats(&format!("{what}_floats"))? {
        let v = v.into_iter().map(f64::from).collect();
        return Ok(Some((Labels::Floats(v), DType::F32)));
    }
    if let Some(v) = cx.attr_strs(&format!("{what}_strings"))? {
        return Ok(Some((Labels::Strs(v), DType::Str)));
    }
    Ok(None)
}

fn label_encoder(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let x = cx.input(0)?;
    let default_int = cx.attr_int("default_int64", -1)?;
    let default_str = cx.attr_str("default_string", "_Unused")?;
    let (keys, values, default, dtype) = if cx.opset < 2 {
        // Opset 1 maps strings to their position in `classes_strings`, or back.
        let classes = cx.attr_strs("classes_strings")?.unwrap_or_default();
        let positions = Labels::Ints((0..classes.len() as i64).collect());
        if cx.input_type(0)?.dtype == DType::Str {
            let default = Labels::Ints(vec![default_int]);
            (Labels::Strs(classes), positions, default, DType::I64)
        } else {
            let default = Labels::Strs(vec![default_str]);
            (positions, Labels::Strs(classes), default, DType::Str)
        }
    } else {
        let (keys, _) = labels_attr(cx, "keys")?.ok_or_else(|| bad_attr("keys", "required"))?;
        let (values, dtype) =
            labels_attr(cx, "values")?.ok_or_else(|| bad_attr("values", "required"))?;
        let default = match cx.attr_tensor("default_tensor")? {
            Some(t) => {
                let t = t.cast(match values {
                    Labels::Ints(_) => DType::I64,
                    Labels::Floats(_) => DType::F64,
                    Labels::Strs(_) => DType::Str,
                })?;
                labels_of(&t)?
            }
            None => match values {
                Labels::Ints(_) => Labels::Ints(vec![default_int]),
                Labels::Floats(_) => {
                    Labels::Floats(vec![f64::from(cx.attr_float("default_float", -0.0)?)])
                }
                Labels::Strs(_) => Labels::Strs(vec![default_str]),
            },
        };
        (keys, values, default, dtype)
    };
    let op = StringsOp::LabelEncode {
        keys,
        values,
        default,
        dtype,
    };
    Ok(vec![cx.emit1(Op::Strings(op), vec![x])?])
}

fn tree_ensemble(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let x = cx.input(0)?;
    let floats = |name: &str| -> Result<Vec<f64>, NodeError> {
        match cx.attr_tensor(name)? {
            Some(t) => Ok(t.to_f64_vec()?),
            None => Ok(cx
                .attr_floats(name)?
                .unwrap_or_default()
                .into_iter()
                .map(f64::from)
                .collect()),
        }
    };
    let splits = floats("nodes_splits")?;
    let leaf_weights = floats("leaf_weights")?;
    let members = floats("membership_values")?;
    let modes = match cx.attr_tensor("nodes_modes")? {
        Some(t) => t.to_i64_vec()?,
        None => cx.attr_ints("nodes_modes")?.unwrap_or_default(),
    };
    let features = usizes(cx, "nodes_featureids")?;
    let true_ids = usizes(cx, "nodes_truenodeids")?;
    let false_ids = usizes(cx, "nodes_falsenodeids")?;
    let true_leafs = cx.attr_ints("nodes_trueleafs")?.unwrap_or_default();
    let false_leafs = cx.attr_ints("nodes_falseleafs")?.unwrap_or_default();
    let missing = cx
        .attr_ints("nodes_missing_value_tracks_true")?
        .unwrap_or_default();
    let targets = usizes(cx, "leaf_targetids")?;
    let roots = usizes(cx, "tree_roots")?;
    let n = modes.len();
    let same_len = [
        splits.len(),
        features.len(),
        true_ids.len(),
        false_ids.len(),
        true_leafs.len(),
        false_leafs.len(),
    ];
    if same_len.iter().any(|&l| l != n) || (!missing.is_empty() && missing.len() != n) {
        return Err(invalid("node attributes differ in length"));
    }
    if targets.len() != leaf_weights.len() {
        return Err(invalid("leaf attributes differ in length"));
    }
    let child = |leaf: i64, id: usize| {
        if leaf != 0 {
            TreeChild::Leaf(id)
        } else {
            TreeChild::Node(id)
        }
    };
    // Membership sets are listed in node order, each ended by a NaN.
    let mut sets = members.split(|v| v.is_nan());
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let s = splits[i];
        let test = match modes[i] {
            0 => TreeTest::Leq(s),
            1 => TreeTest::Lt(s),
            2 => TreeTest::Gte(s),
            3 => TreeTest::Gt(s),
            4 => TreeTest::Eq(s),
            5 => TreeTest::Neq(s),
            6 => TreeTest::Member(
                sets.next()
                    .ok_or_else(|| bad_attr("membership_values", "too few sets"))?
                    .to_vec(),
            ),
            m => return Err(bad_attr("nodes_modes", format!("unknown mode {m}"))),
        };
        nodes.push(TreeNode {
            feature: features[i],
            test,
            missing_tracks_true: missing.get(i).is_some_and(|&m| m != 0),
            if_true: child(true_leafs[i], true_ids[i]),
            if_false: child(false_leafs[i], false_ids[i]),
        });
    }
    let leaves = targets
        .into_iter()
        .zip(leaf_weights)
        .map(|(target, weight)| TreeLeaf { target, weight })
        .collect();
    let aggregate = match cx.attr_int("aggregate_function", 1)? {
        0 => TreeAggregate::Average,
        1 => TreeAggregate::Sum,
        2 => TreeAggregate::Min,
        3 => TreeAggregate::Max,
        a => return Err(bad_attr("aggregate_function", format!("unknown {a}"))),
    };
    let post_transform = match cx.attr_int("post_transform", 0)? {
        0 => TreePostTransform::None,
        1 => TreePostTransform::Softmax,
        2 => TreePostTransform::Logistic,
        3 => TreePostTransform::SoftmaxZero,
        4 => {
            return Err(NodeError::Unsupported(
                "TreeEnsemble post_transform PROBIT".into(),
            ));
        }
        p => return Err(bad_attr("post_transform", format!("unknown {p}"))),
    };
    let n_targets = to_usize(
        "n_targets",
        cx.attr_int_opt("n_targets")?
            .ok_or_else(|| bad_attr("n_targets", "required"))?,
    )?;
    let op = StringsOp::TreeEnsemble {
        nodes,
        leaves,
        roots: roots.into_iter().map(TreeChild::Node).collect(),
        n_targets,
        aggregate,
        post_transform,
    };
    Ok(vec![cx.emit1(Op::Strings(op), vec![x])?])
}

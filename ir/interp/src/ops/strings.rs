//! Kernels of the strings family: string split/normalize/regex match, n-gram counting, label
//! encoding, feature extraction and tree ensembles.
//!
//! Semantics follow the ONNX reference implementation (Python's `str.split`, `re.fullmatch`,
//! ...), except where it is plainly an artifact of Python: `strings.normalize` does not strip
//! accents, which the reference does and onnxruntime does not.

use crate::{EvalCx, EvalError, invalid};
use mlc_ir::ops::StringsOp;
use mlc_ir::ops::strings::{
    CaseChange, Labels, NGram, TfIdfMode, TreeAggregate, TreeChild, TreeLeaf, TreeNode,
    TreePostTransform, TreeTest,
};
use mlc_ir::{DType, Elem, Tensor};
use ndarray::ArrayD;
use std::collections::{HashMap, HashSet};

pub fn eval(
    op: &StringsOp,
    inputs: &[Option<&Tensor>],
    _cx: &EvalCx,
) -> Result<Vec<Tensor>, EvalError> {
    let x = input(inputs, 0)?;
    match op {
        StringsOp::Split {
            delimiter,
            maxsplit,
        } => split(x.view::<String>()?, delimiter.as_deref(), *maxsplit),
        StringsOp::Normalize {
            case_change,
            case_sensitive,
            stopwords,
            ..
        } => Ok(vec![normalize(
            x.view::<String>()?,
            *case_change,
            *case_sensitive,
            stopwords,
        )?]),
        StringsOp::RegexFullMatch { pattern } => {
            // Anchoring both ends of a non-capturing group turns a search into a full match.
            let re = regex::Regex::new(&format!("^(?:{pattern})$"))
                .map_err(|e| invalid(format!("bad pattern {pattern:?}: {e}")))?;
            let a = x.view::<String>()?;
            Ok(vec![Tensor::Bool(a.map(|s| re.is_match(s)))])
        }
        StringsOp::TfIdf {
            mode,
            min_gram_length,
            max_gram_length,
            max_skip_count,
            ngrams,
            n_columns,
            weights,
        } => {
            let counter = NGramCounter {
                min_len: *min_gram_length,
                max_len: *max_gram_length,
                max_skip: *max_skip_count,
                n_columns: *n_columns,
            };
            Ok(vec![tf_idf(x, &counter, ngrams, *mode, weights)?])
        }
        StringsOp::LabelEncode {
            keys,
            values,
            default,
            dtype,
        } => Ok(vec![label_encode(x, keys, values, default, *dtype)?]),
        StringsOp::ArrayFeatureExtract => Ok(vec![feature_extract(x, input(inputs, 1)?)?]),
        StringsOp::TreeEnsemble {
            nodes,
            leaves,
            roots,
            n_targets,
            aggregate,
            post_transform,
        } => {
            let ens = Ensemble {
                nodes,
                leaves,
                roots,
                n_targets: *n_targets,
                aggregate: *aggregate,
                post_transform: *post_transform,
            };
            Ok(vec![ens.eval(x)?])
        }
    }
}

fn input<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Result<&'a Tensor, EvalError> {
    inputs
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| invalid(format!("input {i} is required")))
}

/// Python's `str.isspace`: Unicode whitespace plus the ASCII separators 0x1c-0x1f.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// Python's `s.split(None, maxsplit)`: runs of whitespace separate pieces, leading whitespace is
/// skipped, and once `maxsplit` pieces are cut the rest (trailing whitespace included) is the last.
fn split_whitespace(s: &str, maxsplit: Option<usize>) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut rest = s.trim_start_matches(is_py_space);
    while !rest.is_empty() {
        if maxsplit == Some(pieces.len()) {
            pieces.push(rest.to_string());
            break;
        }
        let end = rest.find(is_py_space).unwrap_or(rest.len());
        pieces.push(rest[..end].to_string());
        rest = rest[end..].trim_start_matches(is_py_space);
    }
    pieces
}

fn split(
    x: &ArrayD<String>,
    delimiter: Option<&str>,
    maxsplit: Option<usize>,
) -> Result<Vec<Tensor>, EvalError> {
    let pieces: Vec<Vec<String>> = x
        .iter()
        .map(|s| match delimiter {
            // An empty delimiter means whitespace splitting, as in the reference.
            Some(d) if !d.is_empty() => match maxsplit {
                Some(m) => s.splitn(m + 1, d).map(str::to_string).collect(),
                None => s.split(d).map(str::to_string).collect(),
            },
            _ => split_whitespace(s, maxsplit),
        })
        .collect();
    let width = pieces.iter().map(Vec::len).max().unwrap_or(0);
    let counts: Vec<i64> = pieces.iter().map(|p| p.len() as i64).collect();
    let mut flat = Vec::with_capacity(pieces.len() * width);
    for mut p in pieces {
        p.resize(width, String::new());
        flat.extend(p);
    }
    let mut shape = x.shape().to_vec();
    let counts = Tensor::from_vec(&shape, counts)?;
    shape.push(width);
    Ok(vec![Tensor::from_vec(&shape, flat)?, counts])
}

fn change_case(s: &str, case: CaseChange) -> String {
    match case {
        CaseChange::None => s.to_string(),
        CaseChange::Lower => s.to_lowercase(),
        CaseChange::Upper => s.to_uppercase(),
    }
}

fn remove_stopwords(s: &str, stops: &HashSet<String>) -> String {
    s.split(' ')
        .filter(|w| !stops.contains(*w))
        .collect::<Vec<_>>()
        .join(" ")
}

fn normalize(
    x: &ArrayD<String>,
    case: CaseChange,
    case_sensitive: bool,
    stopwords: &[String],
) -> Result<Tensor, EvalError> {
    let rows = match x.shape() {
        [_] => None,
        [rows, _] => Some(*rows),
        _ => return Err(invalid("normalize takes [C] or [1, C]")),
    };
    // Case-sensitive matching compares the words as given, before the case change;
    // otherwise words and stopwords are compared after the same case change.
    let stops: HashSet<String> = if case_sensitive {
        stopwords.iter().cloned().collect()
    } else {
        stopwords.iter().map(|w| change_case(w, case)).collect()
    };
    let out: Vec<String> = x
        .iter()
        .map(|s| {
            if stops.is_empty() {
                change_case(s, case)
            } else if case_sensitive {
                change_case(&remove_stopwords(s, &stops), case)
            } else {
                remove_stopwords(&change_case(s, case), &stops)
            }
        })
        .collect();
    // Empty strings are dropped from a single row; a multi-row matrix keeps its shape because
    // its rows could end up with different lengths.
    if rows.is_some_and(|r| r != 1) {
        return Ok(Tensor::from_vec(x.shape(), out)?);
    }
    let mut kept: Vec<String> = out.into_iter().filter(|s| !s.is_empty()).collect();
    if kept.is_empty() {
        kept.push(String::new());
    }
    let shape = match rows {
        None => vec![kept.len()],
        Some(_) => vec![1, kept.len()],
    };
    Ok(Tensor::from_vec(&shape, kept)?)
}

/// An item of a TF-IDF row or n-gram.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Item {
    Int(i64),
    Str(String),
}

fn items_of(l: &Labels) -> Result<Vec<Item>, EvalError> {
    match l {
        Labels::Ints(v) => Ok(v.iter().map(|&i| Item::Int(i)).collect()),
        Labels::Strs(v) => Ok(v.iter().map(|s| Item::Str(s.clone())).collect()),
        Labels::Floats(_) => Err(invalid("n-grams hold integers or strings")),
    }
}

struct NGramCounter {
    min_len: usize,
    max_len: usize,
    max_skip: usize,
    n_columns: usize,
}

impl NGramCounter {
    /// Counts, into `freq` (one slot per column), the n-grams of `row` found in `pool`.
    ///
    /// An n-gram with skip distance `d` takes items `start, start + d, ...`. Unigrams do not
    /// depend on the distance, so they are counted at distance 1 only.
    fn count(&self, row: &[Item], pool: &HashMap<Vec<Item>, usize>, freq: &mut [u64]) {
        for skip in 1..=self.max_skip + 1 {
            let min_len = if skip > 1 {
                self.min_len.max(2)
            } else {
                self.min_len.max(1)
            };
            if min_len > self.max_len {
                break;
            }
            for start in 0..row.len() {
                let mut gram = Vec::with_capacity(self.max_len);
                for pos in (start..row.len()).step_by(skip).take(self.max_len) {
                    gram.push(row[pos].clone());
                    if gram.len() >= min_len
                        && let Some(&col) = pool.get(&gram)
                    {
                        freq[col] += 1;
                    }
                }
            }
        }
    }
}

fn tf_idf(
    x: &Tensor,
    counter: &NGramCounter,
    ngrams: &[NGram],
    mode: TfIdfMode,
    weights: &[f32],
) -> Result<Tensor, EvalError> {
    let items: Vec<Item> = match x {
        Tensor::Str(a) => a.iter().map(|s| Item::Str(s.clone())).collect(),
        _ if x.dtype().is_int() => x.to_i64_vec()?.into_iter().map(Item::Int).collect(),
        _ => return Err(invalid("tf_idf takes integer or string tensors")),
    };
    let mut pool = HashMap::new();
    for g in ngrams {
        let gram = items_of(&g.items)?;
        if (counter.min_len..=counter.max_len).contains(&gram.len()) {
            if g.column >= counter.n_columns {
                return Err(invalid("n-gram column out of range"));
            }
            pool.insert(gram, g.column);
        }
    }
    let (rows, out_shape) = match x.shape() {
        [] => (1, vec![counter.n_columns]),
        [_] => (1, vec![counter.n_columns]),
        [b, _] => (*b, vec![*b, counter.n_columns]),
        _ => return Err(invalid("tf_idf takes [C] or [B, C]")),
    };
    if !weights.is_empty() && weights.len() < counter.n_columns {
        return Err(invalid("fewer weights than output columns"));
    }
    let row_len = items.len().checked_div(rows).unwrap_or(0);
    let mut out = Vec::with_capacity(rows * counter.n_columns);
    for r in 0..rows {
        let mut freq = vec![0u64; counter.n_columns];
        counter.count(&items[r * row_len..(r + 1) * row_len], &pool, &mut freq);
        for (c, &f) in freq.iter().enumerate() {
            let w = weights.get(c).copied();
            out.push(match mode {
                TfIdfMode::Tf => f as f32,
                TfIdfMode::Idf if f == 0 => 0.0,
                TfIdfMode::Idf => w.unwrap_or(1.0),
                TfIdfMode::TfIdf => w.unwrap_or(1.0) * f as f32,
            });
        }
    }
    Ok(Tensor::from_vec(&out_shape, out)?)
}

/// A float key for hashing: -0.0 equals 0.0, and NaN keys match NaN inputs.
fn float_key(v: f64) -> u64 {
    if v == 0.0 {
        0
    } else if v.is_nan() {
        f64::NAN.to_bits()
    } else {
        v.to_bits()
    }
}

fn label_encode(
    x: &Tensor,
    keys: &Labels,
    values: &Labels,
    default: &Labels,
    dtype: DType,
) -> Result<Tensor, EvalError> {
    if keys.len() != values.len() {
        return Err(invalid("label_encode needs as many values as keys"));
    }
    // Each input element becomes the position of its key, or `None` for the default. The
    // last of duplicate keys wins, as in a Python dict.
    let slots: Vec<Option<usize>> = match (keys, x) {
        (Labels::Strs(k), Tensor::Str(a)) => {
            let map: HashMap<&str, usize> =
                k.iter().enumerate().map(|(i, s)| (s.as_str(), i)).collect();
            a.iter().map(|s| map.get(s.as_str()).copied()).collect()
        }
        (Labels::Ints(k), _) if x.dtype().is_int() => {
            let map: HashMap<i64, usize> = k.iter().enumerate().map(|(i, &v)| (v, i)).collect();
            x.to_i64_vec()?
                .iter()
                .map(|v| map.get(v).copied())
                .collect()
        }
        (Labels::Floats(k), _) if x.dtype().is_float() => {
            let map: HashMap<u64, usize> = k
                .iter()
                .enumerate()
                .map(|(i, &v)| (float_key(v), i))
                .collect();
            x.to_f64_vec()?
                .iter()
                .map(|&v| map.get(&float_key(v)).copied())
                .collect()
        }
        _ => return Err(invalid("label_encode input does not match its keys")),
    };
    let shape = x.shape();
    let out = match (values, default) {
        (Labels::Ints(v), Labels::Ints(d)) => {
            let d = *d.first().ok_or_else(|| invalid("missing default"))?;
            let data: Vec<i64> = slots.iter().map(|s| s.map_or(d, |i| v[i])).collect();
            Tensor::from_vec(shape, data)?
        }
        (Labels::Floats(v), Labels::Floats(d)) => {
            let d = *d.first().ok_or_else(|| invalid("missing default"))?;
            let data: Vec<f64> = slots.iter().map(|s| s.map_or(d, |i| v[i])).collect();
            Tensor::from_vec(shape, data)?
        }
        (Labels::Strs(v), Labels::Strs(d)) => {
            let d = d.first().ok_or_else(|| invalid("missing default"))?;
            let data: Vec<String> = slots
                .iter()
                .map(|s| s.map_or_else(|| d.clone(), |i| v[i].clone()))
                .collect();
            Tensor::from_vec(shape, data)?
        }
        _ => return Err(invalid("label_encode default does not match its values")),
    };
    Ok(out.cast(dtype)?)
}

fn feature_extract(x: &Tensor, indices: &Tensor) -> Result<Tensor, EvalError> {
    let shape = x.shape();
    let (&last, outer) = shape
        .split_last()
        .ok_or_else(|| invalid("array_feature_extract takes rank >= 1"))?;
    let idx = indices
        .to_i64_vec()?
        .into_iter()
        .map(|i| {
            let j = if i < 0 { i + last as i64 } else { i };
            usize::try_from(j)
                .ok()
                .filter(|&j| j < last)
                .ok_or_else(|| invalid(format!("index {i} out of range for {last} features")))
        })
        .collect::<Result<Vec<usize>, _>>()?;
    let out_shape: Vec<usize> = if outer.is_empty() {
        vec![1, idx.len()]
    } else {
        outer.iter().copied().chain([idx.len()]).collect()
    };
    let rows = outer.iter().product::<usize>();
    mlc_ir::dispatch_all!(x, a => gather_last(a, rows, last, &idx, &out_shape))
}

/// Picks columns `idx` of `a` seen as a `[rows, last]` matrix, shaped `out_shape`.
fn gather_last<T: Elem>(
    a: &ArrayD<T>,
    rows: usize,
    last: usize,
    idx: &[usize],
    out_shape: &[usize],
) -> Result<Tensor, EvalError> {
    let flat: Vec<&T> = a.iter().collect();
    let mut out = Vec::with_capacity(rows * idx.len());
    for r in 0..rows {
        out.extend(idx.iter().map(|&j| flat[r * last + j].clone()));
    }
    Ok(Tensor::from_vec(out_shape, out)?)
}

struct Ensemble<'a> {
    nodes: &'a [TreeNode],
    leaves: &'a [TreeLeaf],
    roots: &'a [TreeChild],
    n_targets: usize,
    aggregate: TreeAggregate,
    post_transform: TreePostTransform,
}

impl Ensemble<'_> {
    /// The leaf that `row` reaches from `root`.
    fn walk(&self, root: TreeChild, row: &[f64]) -> Result<&TreeLeaf, EvalError> {
        let mut at = root;
        // A well-formed tree reaches a leaf in fewer steps than it has nodes; more means a cycle.
        for _ in 0..=self.nodes.len() {
            let n = match at {
                TreeChild::Leaf(i) => {
                    return self
                        .leaves
                        .get(i)
                        .ok_or_else(|| invalid(format!("leaf {i} does not exist")));
                }
                TreeChild::Node(i) => self
                    .nodes
                    .get(i)
                    .ok_or_else(|| invalid(format!("node {i} does not exist")))?,
            };
            let v = *row
                .get(n.feature)
                .ok_or_else(|| invalid(format!("feature {} out of range", n.feature)))?;
            let pass = match &n.test {
                TreeTest::Leq(s) => v <= *s,
                TreeTest::Lt(s) => v < *s,
                TreeTest::Gte(s) => v >= *s,
                TreeTest::Gt(s) => v > *s,
                TreeTest::Eq(s) => v == *s,
                TreeTest::Neq(s) => v != *s,
                TreeTest::Member(set) => set.contains(&v),
            } || (n.missing_tracks_true && v.is_nan());
            at = if pass { n.if_true } else { n.if_false };
        }
        Err(invalid("tree has a cycle"))
    }

    fn eval(&self, x: &Tensor) -> Result<Tensor, EvalError> {
        let [n, f] = *x.shape() else {
            return Err(invalid("tree_ensemble takes [N, F]"));
        };
        let (lowest, highest) = match x.dtype() {
            DType::F32 => (f32::MIN as f64, f32::MAX as f64),
            DType::F16 => (half::f16::MIN.to_f64(), half::f16::MAX.to_f64()),
            DType::BF16 => (half::bf16::MIN.to_f64(), half::bf16::MAX.to_f64()),
            _ => (f64::MIN, f64::MAX),
        };
        let data = x.to_f64_vec()?;
        let mut out = Vec::with_capacity(n * self.n_targets);
        for row in 0..n {
            let feats = &data[row * f..(row + 1) * f];
            // Min and max start from the type's extremes, so targets no leaf reaches keep them.
            let init = match self.aggregate {
                TreeAggregate::Sum | TreeAggregate::Average => 0.0,
                TreeAggregate::Min => highest,
                TreeAggregate::Max => lowest,
            };
            let mut scores = vec![init; self.n_targets];
            for &root in self.roots {
                let leaf = self.walk(root, feats)?;
                let s = scores
                    .get_mut(leaf.target)
                    .ok_or_else(|| invalid(format!("target {} out of range", leaf.target)))?;
                *s = match self.aggregate {
                    TreeAggregate::Sum => *s + leaf.weight,
                    TreeAggregate::Average => *s + leaf.weight / self.roots.len() as f64,
                    TreeAggregate::Min => s.min(leaf.weight),
                    TreeAggregate::Max => s.max(leaf.weight),
                };
            }
            post_transform(&mut scores, self.post_transform);
            out.extend(scores);
        }
        Ok(Tensor::from_vec(&[n, self.n_targets], out)?.cast(x.dtype())?)
    }
}

fn post_transform(scores: &mut [f64], how: TreePostTransform) {
    match how {
        TreePostTransform::None => {}
        TreePostTransform::Logistic => {
            for s in scores.iter_mut() {
                *s = 1.0 / (1.0 + (-*s).exp());
            }
        }
        TreePostTransform::Softmax | TreePostTransform::SoftmaxZero => {
            let zero = how == TreePostTransform::SoftmaxZero;
            let counted = |s: f64| !zero || s != 0.0;
            let max = scores
                .iter()
                .copied()
                .filter(|&s| counted(s))
                .fold(f64::NEG_INFINITY, f64::max);
            let mut sum = 0.0;
            for s in scores.iter_mut() {
                *s = if counted(*s) { (*s - max).exp() } else { 0.0 };
                sum += *s;
            }
            if sum > 0.0 {
                for s in scores.iter_mut() {
                    *s /= sum;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlc_ir::TensorType;

    fn run(op: StringsOp, inputs: &[&Tensor]) -> Vec<Tensor> {
        let types = vec![TensorType::scalar(DType::F32); 2];
        let cx = EvalCx {
            regions: &[],
            output_types: &types,
        };
        let args: Vec<Option<&Tensor>> = inputs.iter().map(|t| Some(*t)).collect();
        eval(&op, &args, &cx).unwrap()
    }

    fn t<T: Elem>(shape: &[usize], v: Vec<T>) -> Tensor {
        Tensor::from_vec(shape, v).unwrap()
    }

    fn strs(shape: &[usize], v: &[&str]) -> Tensor {
        t(shape, v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn split_pads_and_counts() {
        // np.char.split(["hello world", "def.net", "o n n x"], None, 2)
        let x = strs(&[3], &["hello world", "def.net", "  o n  n x "]);
        let out = run(
            StringsOp::Split {
                delimiter: None,
                maxsplit: Some(2),
            },
            &[&x],
        );
        let want = ["hello", "world", "", "def.net", "", "", "o", "n", "n x "];
        assert_eq!(out[0], strs(&[3, 3], &want));
        assert_eq!(out[1], t(&[3], vec![2i64, 1, 3]));

        let x = strs(&[1], &["o-n--x-"]);
        let out = run(
            StringsOp::Split {
                delimiter: Some("-".into()),
                maxsplit: None,
            },
            &[&x],
        );
        assert_eq!(out[0], strs(&[1, 5], &["o", "n", "", "x", ""]));
    }

    #[test]
    fn normalize_drops_stopwords_and_empties() {
        let x = strs(&[1, 4], &["Monday", "tuesday", "monday tuesday", "monday"]);
        let out = run(
            StringsOp::Normalize {
                case_change: CaseChange::Upper,
                case_sensitive: false,
                stopwords: vec!["monday".into()],
                locale: None,
            },
            &[&x],
        );
        assert_eq!(out[0], strs(&[1, 2], &["TUESDAY", "TUESDAY"]));
    }

    #[test]
    fn regex_matches_whole_strings() {
        let x = strs(&[3], &["www.google.com", "www.bbc.co.uk", "xwww.a.com"]);
        let out = run(
            StringsOp::RegexFullMatch {
                pattern: r"www\.[\w.-]+\.\bcom\b".into(),
            },
            &[&x],
        );
        assert_eq!(out[0], t(&[3], vec![true, false, false]));
    }

    #[test]
    fn tf_idf_counts_skip_grams() {
        // test_tfidfvectorizer_tf_uniandbigrams_skip5: unigrams 2 3 5 4, bigrams (5,6) (7,8) (6,7).
        let uni = [2i64, 3, 5, 4];
        let bi = [[5i64, 6], [7, 8], [6, 7]];
        let ngrams: Vec<NGram> = uni
            .iter()
            .map(|&u| Labels::Ints(vec![u]))
            .chain(bi.iter().map(|b| Labels::Ints(b.to_vec())))
            .enumerate()
            .map(|(column, items)| NGram { items, column })
            .collect();
        let op = StringsOp::TfIdf {
            mode: TfIdfMode::Tf,
            min_gram_length: 1,
            max_gram_length: 2,
            max_skip_count: 5,
            ngrams,
            n_columns: 7,
            weights: vec![],
        };
        let x = t(&[12], vec![1i32, 1, 3, 3, 3, 7, 8, 6, 7, 5, 6, 8]);
        let out = run(op, &[&x]);
        assert_eq!(out[0], t(&[7], vec![0f32, 3., 1., 0., 1., 3., 1.]));
    }

    #[test]
    fn label_encode_casts_to_the_value_type() {
        let op = StringsOp::LabelEncode {
            keys: Labels::Strs(vec!["a".into(), "b".into()]),
            values: Labels::Ints(vec![0, 1]),
            default: Labels::Ints(vec![42]),
            dtype: DType::I16,
        };
        let out = run(op, &[&strs(&[3], &["b", "z", "a"])]);
        assert_eq!(out[0], t(&[3], vec![1i16, 42, 0]));
    }

    #[test]
    fn tree_ensemble_sums_leaves() {
        // x[0] <= 2.5 ? leaf 0 (target 0, 5.0) : leaf 1 (target 1, 7.0)
        let op = StringsOp::TreeEnsemble {
            nodes: vec![TreeNode {
                feature: 0,
                test: TreeTest::Leq(2.5),
                missing_tracks_true: false,
                if_true: TreeChild::Leaf(0),
                if_false: TreeChild::Leaf(1),
            }],
            leaves: vec![
                TreeLeaf {
                    target: 0,
                    weight: 5.0,
                },
                TreeLeaf {
                    target: 1,
                    weight: 7.0,
                },
            ],
            roots: vec![TreeChild::Node(0), TreeChild::Node(0)],
            n_targets: 2,
            aggregate: TreeAggregate::Sum,
            post_transform: TreePostTransform::None,
        };
        let out = run(op, &[&t(&[2, 1], vec![1f32, 4.0])]);
        assert_eq!(out[0], t(&[2, 2], vec![10f32, 0., 0., 14.]));
    }
}

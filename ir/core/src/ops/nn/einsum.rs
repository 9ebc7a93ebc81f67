//! Parsing of einsum equations into per-operand label lists.

/// One operand's labels in a parsed einsum equation: each entry is a label index.
#[derive(Clone, Debug, PartialEq)]
pub struct EinsumSpec {
    /// For each input, the label of each of its dims.
    pub inputs: Vec<Vec<usize>>,
    /// The label of each output dim.
    pub output: Vec<usize>,
    /// Number of distinct labels (letters plus ellipsis dims).
    pub n_labels: usize,
}

/// Parses an einsum equation for inputs of the given ranks. Ellipsis dims become labels of
/// their own, right-aligned across operands so that they broadcast as numpy does; in implicit
/// mode the output is the ellipsis dims followed by the letters used once, alphabetically.
pub fn parse_einsum(equation: &str, ranks: &[usize]) -> Result<EinsumSpec, String> {
    let eq: String = equation.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l, Some(r)),
        None => (eq.as_str(), None),
    };
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != ranks.len() {
        return Err(format!(
            "equation {equation:?} has {} operands, {} given",
            terms.len(),
            ranks.len()
        ));
    }
    // Letters get label ids 0..52; ellipsis dims come after.
    let letter = |c: char| -> Result<usize, String> {
        match c {
            'a'..='z' => Ok(c as usize - 'a' as usize),
            'A'..='Z' => Ok(26 + c as usize - 'A' as usize),
            _ => Err(format!("bad character {c:?} in einsum equation")),
        }
    };
    let split_term = |t: &str| -> Result<(Vec<usize>, Option<usize>), String> {
        // Returns the letter labels and the position of the ellipsis among them.
        let mut labels = vec![];
        let mut ell = None;
        let mut rest = t;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix("...") {
                if ell.is_some() {
                    return Err("more than one ellipsis in a term".into());
                }
                ell = Some(labels.len());
                rest = r;
            } else {
                let c = rest.chars().next().expect("non-empty");
                labels.push(letter(c)?);
                rest = &rest[c.len_utf8()..];
            }
        }
        Ok((labels, ell))
    };
    let mut parsed = vec![];
    let mut ell_rank = 0usize;
    for (t, &r) in terms.iter().zip(ranks) {
        let (labels, ell) = split_term(t)?;
        if ell.is_some() {
            if r < labels.len() {
                return Err(format!("term {t:?} has more labels than the rank {r}"));
            }
            ell_rank = ell_rank.max(r - labels.len());
        } else if r != labels.len() {
            return Err(format!("term {t:?} does not match an operand of rank {r}"));
        }
        parsed.push((labels, ell));
    }
    let ell_label = |i: usize| 52 + i;
    let expand = |labels: &[usize], ell: Option<usize>, r: usize| -> Vec<usize> {
        match ell {
            None => labels.to_vec(),
            Some(p) => {
                let e = r - labels.len();
                let mut v = labels[..p].to_vec();
                v.extend((ell_rank - e..ell_rank).map(ell_label));
                v.extend_from_slice(&labels[p..]);
                v
            }
        }
    };
    let inputs: Vec<Vec<usize>> = parsed
        .iter()
        .zip(ranks)
        .map(|((l, e), &r)| expand(l, *e, r))
        .collect();
    let output = match rhs {
        Some(r) => {
            let (labels, ell) = split_term(r)?;
            let out = match ell {
                None => labels,
                Some(p) => {
                    let mut v = labels[..p].to_vec();
                    v.extend((0..ell_rank).map(ell_label));
                    v.extend_from_slice(&labels[p..]);
                    v
                }
            };
            for l in &out {
                if *l < 52 && !inputs.iter().any(|i| i.contains(l)) {
                    return Err(format!("output label {l} does not appear in the inputs"));
                }
            }
            out
        }
        None => {
            let mut counts = [0usize; 52];
            for i in &inputs {
                for &l in i {
                    if l < 52 {
                        counts[l] += 1;
                    }
                }
            }
            let mut v: Vec<usize> = (0..ell_rank).map(ell_label).collect();
            // Alphabetical: numpy orders uppercase before lowercase.
            let order = (26..52).chain(0..26);
            v.extend(order.filter(|&l| counts[l] == 1));
            v
        }
    };
    Ok(EinsumSpec {
        inputs,
        output,
        n_labels: 52 + ell_rank,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn einsum_parse() {
        let s = parse_einsum("...ij,...jk", &[3, 2]).unwrap();
        assert_eq!(s.inputs, vec![vec![52, 8, 9], vec![9, 10]]);
        assert_eq!(s.output, vec![52, 8, 10]);
        let s = parse_einsum("ii->i", &[2]).unwrap();
        assert_eq!(s.output, vec![8]);
        // Implicit output: uppercase sorts before lowercase, repeated letters are summed.
        let s = parse_einsum("ba,aC", &[2, 2]).unwrap();
        assert_eq!(s.output, vec![28, 1]);
        assert!(parse_einsum("ij,jk", &[2]).is_err());
    }
}

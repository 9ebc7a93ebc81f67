//! Tensors in and out of files: `.npy` (via `mlc_runtime::npy`) and ONNX TensorProto `.pb`
//! inputs, and the atomic writing of output files.

use anyhow::{Context, bail};
use mlc_ir::{DType, Tensor};
use mlc_runtime::npy::{self, ElemType, NpyArray, NpyData};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Reads a tensor from a `.npy` file or, for anything else, an ONNX TensorProto file.
///
/// The `.npy` magic decides, not the extension, so a mislabeled file still reads; a `.npy` name
/// on a file without the magic is reported as a bad `.npy` file rather than as a bad protobuf.
pub fn read_tensor(path: &Path) -> anyhow::Result<Tensor> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let is_npy_name = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    if npy::has_npy_magic(&bytes) || is_npy_name {
        let arr = NpyArray::parse(&bytes)
            .with_context(|| format!("{} is not a valid .npy file", path.display()))?;
        return npy_to_tensor(arr).with_context(|| format!("cannot use {}", path.display()));
    }
    Ok(mlc_onnx::read_tensor_pb(path)?)
}

/// The IR dtype of a `.npy` element type; the two share their short names (`f32`, `bool`).
fn dtype_of(elem: ElemType) -> DType {
    DType::from_name(elem.name()).expect("every .npy element type is an mlc dtype")
}

/// The `.npy` element type for a dtype; `None` for bf16, which NumPy has no type for.
fn elem_of(dtype: DType) -> Option<ElemType> {
    ElemType::from_name(dtype.name())
}

pub fn npy_to_tensor(arr: NpyArray) -> anyhow::Result<Tensor> {
    Ok(match arr.data {
        NpyData::Bytes(b) => Tensor::from_le_bytes(dtype_of(arr.elem), &arr.shape, &b)?,
        NpyData::Strings(s) => Tensor::from_vec(&arr.shape, s)?,
    })
}

/// Converts a tensor for writing. bf16 has no NumPy type, so it is widened to f32 (exactly);
/// the second value says so, for a note to the user.
pub fn tensor_to_npy(t: &Tensor) -> anyhow::Result<(NpyArray, Option<&'static str>)> {
    let shape = t.shape().to_vec();
    if let Tensor::Str(a) = t {
        return Ok((
            NpyArray::from_strings(shape, a.iter().cloned().collect())?,
            None,
        ));
    }
    let (t, note) = match elem_of(t.dtype()) {
        Some(_) => (std::borrow::Cow::Borrowed(t), None),
        None => (
            std::borrow::Cow::Owned(t.cast(DType::F32)?),
            Some("bf16 written as float32 (NumPy has no bf16)"),
        ),
    };
    let elem = elem_of(t.dtype()).context("an f32 tensor has a .npy type")?;
    Ok((
        NpyArray::from_le_bytes(elem, shape, t.to_le_bytes()?)?,
        note,
    ))
}

/// The file stem for an output name: every character outside `[A-Za-z0-9._-]` becomes `_`.
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes every `(file name, bytes)` into `dir` so that no reader ever sees a partial file:
/// each goes to a temporary file in `dir` first, and only when all of them are complete and
/// synced are they renamed into place. On failure the temporary files are removed.
pub fn write_all_atomically(
    dir: &Path,
    files: &[(String, Vec<u8>)],
) -> anyhow::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the output directory {}", dir.display()))?;
    let pid = std::process::id();
    let mut temps: Vec<PathBuf> = Vec::with_capacity(files.len());
    let written: anyhow::Result<()> = files.iter().try_for_each(|(name, bytes)| {
        let tmp = dir.join(format!(".{name}.{pid}.tmp"));
        temps.push(tmp.clone());
        let mut f =
            fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))
    });
    let mut finals = Vec::with_capacity(files.len());
    let renamed = written.and_then(|()| {
        files.iter().zip(&temps).try_for_each(|((name, _), tmp)| {
            let target = dir.join(name);
            fs::rename(tmp, &target)
                .with_context(|| format!("cannot move the output into {}", target.display()))?;
            finals.push(target);
            Ok(())
        })
    });
    if let Err(e) = renamed {
        for tmp in &temps {
            // Best effort: the error being reported matters more than a leftover temp file.
            let _ = fs::remove_file(tmp);
        }
        return Err(e);
    }
    Ok(finals)
}

/// One output file name per output, `<sanitized name>.npy`, made unique with `_2`, `_3`, ...
/// when two names sanitize to the same stem (`a/b` and `a:b`).
pub fn output_file_names(names: &[&str]) -> Vec<String> {
    let mut taken = std::collections::HashSet::new();
    names
        .iter()
        .map(|n| {
            let stem = sanitize(n);
            let mut file = format!("{stem}.npy");
            let mut k = 2;
            while !taken.insert(file.to_ascii_lowercase()) {
                file = format!("{stem}_{k}.npy");
                k += 1;
            }
            file
        })
        .collect()
}

/// Fails unless `dir` is a directory or does not exist yet (it is created when writing).
pub fn check_output_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!(
            "the output directory {} exists and is not a directory",
            dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_npy_type_is_a_dtype_and_back() {
        for e in ElemType::ALL {
            assert_eq!(elem_of(dtype_of(e)), Some(e));
        }
        assert_eq!(elem_of(DType::BF16), None);
    }

    #[test]
    fn sanitizes_names() {
        assert_eq!(sanitize("logits"), "logits");
        assert_eq!(sanitize("out/0:1 x"), "out_0_1_x");
        assert_eq!(sanitize("a.b-c_d"), "a.b-c_d");
        assert_eq!(sanitize("ü"), "_");
    }

    #[test]
    fn file_names_are_unique() {
        assert_eq!(
            output_file_names(&["a/b", "a:b", "a_b_2", "y"]),
            ["a_b.npy", "a_b_2.npy", "a_b_2_2.npy", "y.npy"]
        );
    }

    #[test]
    fn tensors_round_trip_through_npy() {
        for t in [
            Tensor::from_vec(&[2, 2], vec![1.5f32, -2.0, 0.0, 7.25]).unwrap(),
            Tensor::from_vec(&[3], vec![true, false, true]).unwrap(),
            Tensor::from_vec(&[1, 2], vec![i64::MIN, i64::MAX]).unwrap(),
            Tensor::from_vec(&[2], vec!["a".to_string(), "ßx".to_string()]).unwrap(),
            Tensor::from_le_bytes(DType::F16, &[], &[0x00, 0x38]).unwrap(),
        ] {
            let (arr, note) = tensor_to_npy(&t).unwrap();
            assert!(note.is_none());
            let back = npy_to_tensor(NpyArray::parse(&arr.to_bytes()).unwrap()).unwrap();
            assert!(back == t, "{:?} != {:?}", back.dtype(), t.dtype());
        }
        let bf = Tensor::from_le_bytes(DType::BF16, &[1], &[0xc0, 0x3f]).unwrap();
        let (arr, note) = tensor_to_npy(&bf).unwrap();
        assert!(note.is_some());
        assert_eq!(arr.elem, ElemType::F32);
    }

    #[test]
    fn writes_atomically() {
        let dir = std::env::temp_dir().join(format!("mlc-cli-atomic-{}", std::process::id()));
        let files = vec![
            ("a.npy".to_string(), vec![1u8, 2]),
            ("b.npy".to_string(), vec![3u8]),
        ];
        let paths = write_all_atomically(&dir, &files).unwrap();
        assert_eq!(fs::read(&paths[0]).unwrap(), [1, 2]);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["a.npy", "b.npy"], "no temporary file is left");
        // A file that cannot be created fails the whole write and leaves nothing new behind.
        let bad = vec![
            ("d.npy".to_string(), vec![0u8]),
            ("sub/c.npy".to_string(), vec![0u8]),
        ];
        assert!(write_all_atomically(&dir, &bad).is_err());
        assert!(!dir.join("d.npy").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}

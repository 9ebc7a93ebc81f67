//! Decoding of ONNX `TensorProto`s (typed fields, `raw_data`, external data files) into tensors.

use crate::proto::onnx::{TensorProto, tensor_proto};
use half::{bf16, f16};
use mlc_ir::{DType, Tensor};
use std::path::Path;

/// The mlc dtype of an ONNX `TensorProto.DataType` code, or the ONNX name of a type mlc lacks.
pub fn dtype_of(code: i32) -> Result<DType, String> {
    use tensor_proto::DataType as D;
    let d = D::from_i32_checked(code);
    Ok(match d {
        Some(D::FLOAT) => DType::F32,
        Some(D::DOUBLE) => DType::F64,
        Some(D::FLOAT16) => DType::F16,
        Some(D::BFLOAT16) => DType::BF16,
        Some(D::INT8) => DType::I8,
        Some(D::UINT8) => DType::U8,
        Some(D::INT16) => DType::I16,
        Some(D::UINT16) => DType::U16,
        Some(D::INT32) => DType::I32,
        Some(D::UINT32) => DType::U32,
        Some(D::INT64) => DType::I64,
        Some(D::UINT64) => DType::U64,
        Some(D::BOOL) => DType::Bool,
        Some(D::STRING) => DType::Str,
        Some(D::FLOAT8E4M3FN) => DType::F8E4M3FN,
        Some(D::FLOAT8E4M3FNUZ) => DType::F8E4M3FNUZ,
        Some(D::FLOAT8E5M2) => DType::F8E5M2,
        Some(D::FLOAT8E5M2FNUZ) => DType::F8E5M2FNUZ,
        Some(D::FLOAT8E8M0) => DType::F8E8M0,
        Some(D::FLOAT4E2M1) => DType::F4E2M1,
        Some(D::INT4) => DType::I4,
        Some(D::UINT4) => DType::U4,
        Some(D::INT2) => DType::I2,
        Some(D::UINT2) => DType::U2,
        Some(other) => return Err(format!("element type {other:?}")),
        None => return Err(format!("unknown element type code {code}")),
    })
}

trait FromI32Checked: Sized {
    fn from_i32_checked(v: i32) -> Option<Self>;
}

impl FromI32Checked for tensor_proto::DataType {
    fn from_i32_checked(v: i32) -> Option<Self> {
        <Self as protobuf::Enum>::from_i32(v)
    }
}

/// Decodes a tensor. `base_dir` resolves external data locations.
pub fn decode(t: &TensorProto, base_dir: Option<&Path>) -> Result<Tensor, String> {
    let dtype = dtype_of(t.data_type())?;
    let shape: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d}")))
        .collect::<Result<_, _>>()?;
    let n: usize = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or("element count overflows")?;

    if t.data_location() == tensor_proto::DataLocation::EXTERNAL {
        let bytes = read_external(t, base_dir)?;
        return Tensor::from_le_bytes(dtype, &shape, &bytes).map_err(|e| e.to_string());
    }
    if let Some(raw) = t.raw_data.as_ref() {
        if dtype == DType::Str {
            return Err("string tensors cannot use raw_data".into());
        }
        return Tensor::from_le_bytes(dtype, &shape, raw).map_err(|e| e.to_string());
    }
    if dtype.is_storage_only() {
        // int32_data holds one byte per entry: a float8 code per element, or for the sub-byte
        // types the packed bytes of `raw_data` (numpy_helper.to_array).
        let bytes: Vec<u8> = t.int32_data.iter().map(|&x| x as u8).collect();
        return Tensor::from_le_bytes(dtype, &shape, &bytes).map_err(|e| e.to_string());
    }
    let check = |len: usize| {
        if len == n {
            Ok(())
        } else {
            Err(format!(
                "{len} elements stored for shape {shape:?} ({n} needed)"
            ))
        }
    };
    let r = match dtype {
        DType::F32 => {
            check(t.float_data.len())?;
            Tensor::from_vec(&shape, t.float_data.clone())
        }
        DType::F64 => {
            check(t.double_data.len())?;
            Tensor::from_vec(&shape, t.double_data.clone())
        }
        DType::I64 => {
            check(t.int64_data.len())?;
            Tensor::from_vec(&shape, t.int64_data.clone())
        }
        DType::U64 => {
            check(t.uint64_data.len())?;
            Tensor::from_vec(&shape, t.uint64_data.clone())
        }
        DType::U32 => {
            check(t.uint64_data.len())?;
            Tensor::from_vec(&shape, t.uint64_data.iter().map(|&v| v as u32).collect())
        }
        DType::Str => {
            check(t.string_data.len())?;
            Tensor::from_vec(
                &shape,
                t.string_data
                    .iter()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .collect(),
            )
        }
        // The remaining types are stored widened in int32_data (16-bit floats as their bits).
        _ => {
            check(t.int32_data.len())?;
            let v = &t.int32_data;
            match dtype {
                DType::I32 => Tensor::from_vec(&shape, v.clone()),
                DType::I16 => Tensor::from_vec(&shape, v.iter().map(|&x| x as i16).collect()),
                DType::U16 => Tensor::from_vec(&shape, v.iter().map(|&x| x as u16).collect()),
                DType::I8 => Tensor::from_vec(&shape, v.iter().map(|&x| x as i8).collect()),
                DType::U8 => Tensor::from_vec(&shape, v.iter().map(|&x| x as u8).collect()),
                DType::Bool => Tensor::from_vec(&shape, v.iter().map(|&x| x != 0).collect()),
                DType::F16 => Tensor::from_vec(
                    &shape,
                    v.iter().map(|&x| f16::from_bits(x as u16)).collect(),
                ),
                DType::BF16 => Tensor::from_vec(
                    &shape,
                    v.iter().map(|&x| bf16::from_bits(x as u16)).collect(),
                ),
                _ => unreachable!("all other dtypes handled above"),
            }
        }
    };
    r.map_err(|e| e.to_string())
}

fn read_external(t: &TensorProto, base_dir: Option<&Path>) -> Result<Vec<u8>, String> {
    let mut location = None;
    let mut offset = 0u64;
    let mut length = None;
    for kv in &t.external_data {
        match kv.key() {
            "location" => location = Some(kv.value().to_string()),
            "offset" => {
                offset = kv
                    .value()
                    .parse()
                    .map_err(|_| format!("bad external offset {:?}", kv.value()))?
            }
            "length" => {
                length = Some(
                    kv.value()
                        .parse::<u64>()
                        .map_err(|_| format!("bad external length {:?}", kv.value()))?,
                )
            }
            _ => {}
        }
    }
    let location = location.ok_or("external data without a location")?;
    let rel = Path::new(&location);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!(
            "external data location {location:?} must be a relative path inside the model's directory"
        ));
    }
    let base = base_dir.ok_or("external data needs the model's directory")?;
    let path = base.join(rel);
    let data = std::fs::read(&path)
        .map_err(|e| format!("cannot read external data file {}: {e}", path.display()))?;
    let start = usize::try_from(offset).map_err(|_| "offset too large")?;
    let end = match length {
        Some(l) => start
            .checked_add(usize::try_from(l).map_err(|_| "length too large")?)
            .ok_or("offset+length overflows")?,
        None => data.len(),
    };
    if start > end || end > data.len() {
        return Err(format!(
            "external data {}: bytes {start}..{end} lie outside the file ({} bytes)",
            path.display(),
            data.len()
        ));
    }
    Ok(data[start..end].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proto(code: tensor_proto::DataType, dims: &[i64], int32_data: &[i32]) -> TensorProto {
        let mut t = TensorProto::new();
        t.set_data_type(code as i32);
        t.dims = dims.to_vec();
        t.int32_data = int32_data.to_vec();
        t
    }

    #[test]
    fn storage_types_from_int32_data() {
        use tensor_proto::DataType as D;
        // Sub-byte types: packed bytes, first element in the low bits, odd counts padded.
        let t = decode(&proto(D::INT4, &[3], &[0x2f, 0x08]), None).unwrap();
        assert_eq!(t.to_i64_vec().unwrap(), [-1, 2, -8]);
        let t = decode(&proto(D::UINT2, &[5], &[0b11_00_10_01, 0b01]), None).unwrap();
        assert_eq!(t.to_i64_vec().unwrap(), [1, 2, 0, 3, 1]);
        assert!(decode(&proto(D::UINT4, &[3], &[0x21]), None).is_err());
        // float8: one code per entry.
        let t = decode(&proto(D::FLOAT8E4M3FN, &[2], &[0x3c, 0xc0]), None).unwrap();
        assert_eq!(t.dtype(), DType::F8E4M3FN);
        assert_eq!(t.to_f64_vec().unwrap(), [1.5, -2.0]);
    }
}

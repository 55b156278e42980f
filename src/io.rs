//! Reading and writing `.safetensors` files (HuggingFace's checkpoint format) and small
//! files atomically: everything is written to a temporary file beside the target, synced,
//! then renamed over it, so a crash never leaves a half-written checkpoint.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// Host-side tensor data: floats (any float dtype is converted to f32) or integers.
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    /// 32-bit floats (f16, bf16 and f64 checkpoints are converted to these).
    F32(Vec<f32>),
    /// 64-bit integers (token ids and labels in the fixtures).
    I64(Vec<i64>),
}

/// A tensor read from (or to be written to) a file.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// The elements, row-major.
    pub data: HostData,
}

impl HostTensor {
    /// An f32 tensor.
    pub fn f32(shape: &[usize], data: Vec<f32>) -> Self {
        HostTensor {
            shape: shape.to_vec(),
            data: HostData::F32(data),
        }
    }

    /// The values as f32 (integers converted).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            HostData::F32(v) => v.clone(),
            HostData::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// The values as i64, or None for a float tensor.
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            HostData::I64(v) => Some(v),
            HostData::F32(_) => None,
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Named tensors, sorted by name.
pub type HostTensors = BTreeMap<String, HostTensor>;

/// An f32 tensor to write: `(name, shape, data)`.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

fn format_error(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::Format {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

fn convert(path: &Path, name: &str, view: &TensorView<'_>) -> Result<HostData> {
    let bytes = view.data();
    let floats = |width: usize, f: &dyn Fn(&[u8]) -> f32| -> HostData {
        HostData::F32(bytes.chunks_exact(width).map(f).collect())
    };
    let ints = |width: usize, f: &dyn Fn(&[u8]) -> i64| -> HostData {
        HostData::I64(bytes.chunks_exact(width).map(f).collect())
    };
    Ok(match view.dtype() {
        Dtype::F32 => floats(4, &|b| f32::from_le_bytes(b.try_into().unwrap())),
        Dtype::F64 => floats(8, &|b| f64::from_le_bytes(b.try_into().unwrap()) as f32),
        Dtype::F16 => floats(2, &|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        Dtype::BF16 => floats(2, &|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        Dtype::I64 => ints(8, &|b| i64::from_le_bytes(b.try_into().unwrap())),
        Dtype::I32 => ints(4, &|b| i32::from_le_bytes(b.try_into().unwrap()) as i64),
        Dtype::I16 => ints(2, &|b| i16::from_le_bytes([b[0], b[1]]) as i64),
        Dtype::I8 => ints(1, &|b| b[0] as i8 as i64),
        Dtype::U8 | Dtype::BOOL => ints(1, &|b| b[0] as i64),
        other => {
            return Err(format_error(
                path,
                format!("tensor {name:?} has unsupported dtype {other:?}"),
            ))
        }
    })
}

/// Parses safetensors bytes; `path` only labels errors.
pub fn parse_safetensors(path: &Path, bytes: &[u8]) -> Result<HostTensors> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| format_error(path, e))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = convert(path, &name, &view)?;
        out.insert(
            name,
            HostTensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(out)
}

/// Reads every tensor of a `.safetensors` file. A corrupt or truncated file, a header that
/// lies about offsets or sizes, or an unsupported dtype is an error naming the file.
pub fn read_safetensors(path: impl AsRef<Path>) -> Result<HostTensors> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    parse_safetensors(path, &bytes)
}

/// Reads a checkpoint: a `.safetensors` file; a sharded checkpoint's index
/// (`model.safetensors.index.json`, whose `weight_map` names each tensor's shard, read from
/// the index's folder); or a folder holding either (`model.safetensors` first). A shard that
/// is missing or corrupt, or a tensor the index names that its shard does not hold, is an
/// error naming the file.
pub fn read_checkpoint(path: impl AsRef<Path>) -> Result<HostTensors> {
    let path = path.as_ref();
    if path.is_dir() {
        let single = path.join("model.safetensors");
        if single.exists() {
            return read_safetensors(single);
        }
        let index = path.join("model.safetensors.index.json");
        if !index.exists() {
            // Say what the folder lacks (it may be a folder named model.safetensors, where a
            // file was meant), not that an index inside it is missing.
            return Err(format_error(
                path,
                "a folder with neither model.safetensors nor model.safetensors.index.json in it",
            ));
        }
        return read_checkpoint(index);
    }
    if !path.to_string_lossy().ends_with(".json") {
        return read_safetensors(path);
    }
    let text = std::fs::read_to_string(path).map_err(|e| io_error(path, e))?;
    let index: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format_error(path, e))?;
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| format_error(path, "no \"weight_map\" object in the index"))?;
    let mut shards: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (tensor, shard) in map {
        let shard = shard.as_str().ok_or_else(|| {
            format_error(path, format!("the shard of {tensor:?} is not a file name"))
        })?;
        if shard.contains(['/', '\\']) {
            return Err(format_error(
                path,
                format!("shard {shard:?} of {tensor:?} is not a file name in the index's folder"),
            ));
        }
        shards.entry(shard).or_default().push(tensor);
    }
    let folder = path.parent().unwrap_or(Path::new("."));
    let mut out = HostTensors::new();
    for (shard, names) in shards {
        let shard_path = folder.join(shard);
        let tensors = read_safetensors(&shard_path)?;
        for name in names {
            let t = tensors.get(name).ok_or_else(|| {
                format_error(
                    &shard_path,
                    format!("the index puts {name:?} here, but it is not"),
                )
            })?;
            out.insert(name.to_string(), t.clone());
        }
    }
    Ok(out)
}

/// Writes f32 tensors as a `.safetensors` file, atomically.
pub fn write_safetensors(
    path: impl AsRef<Path>,
    tensors: &[NamedTensor],
    metadata: &[(&str, &str)],
) -> Result<()> {
    let path = path.as_ref();
    write_atomic(path, &safetensors_bytes(path, tensors, metadata)?)
}

/// The bytes of a `.safetensors` file holding f32 tensors, as [`write_safetensors`] writes
/// it (where there is no file system to write to: a browser tab offers it for download);
/// `path` names it in errors.
pub fn safetensors_bytes(
    path: impl AsRef<Path>,
    tensors: &[NamedTensor],
    metadata: &[(&str, &str)],
) -> Result<Vec<u8>> {
    let path = path.as_ref();
    let bytes: Vec<&[u8]> = tensors
        .iter()
        .map(|(_, _, d)| bytemuck::cast_slice::<f32, u8>(d))
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            TensorView::new(Dtype::F32, shape.clone(), b)
                .map(|v| (name.clone(), v))
                .map_err(|e| format_error(path, e))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = (!metadata.is_empty()).then(|| {
        metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    });
    safetensors::serialize(views, meta).map_err(|e| format_error(path, e))
}

/// Writes `bytes` to `path` through a synced temporary file renamed over it.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid(format!("{}: not a file path", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_error(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_tensors_are_converted() {
        use safetensors::tensor::{Dtype, TensorView};
        let values = [1.5f32, -2.25, 0.099975586, 65504.0];
        let f16: Vec<u8> = values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        let bf16: Vec<u8> = values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        let bytes = safetensors::serialize(
            [
                ("h", TensorView::new(Dtype::F16, vec![2, 2], &f16).unwrap()),
                ("b", TensorView::new(Dtype::BF16, vec![4], &bf16).unwrap()),
            ],
            None,
        )
        .unwrap();
        let t = parse_safetensors(Path::new("half.safetensors"), &bytes).unwrap();
        assert_eq!(t["h"].shape, [2, 2]);
        assert_eq!(t["h"].to_f32(), values);
        let want: Vec<f32> = values
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect();
        assert_eq!(t["b"].to_f32(), want);
    }

    #[test]
    fn round_trip_and_atomic_replace() {
        let dir = std::env::temp_dir().join(format!("roformer-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.safetensors");
        let t = vec![
            (
                "a".to_string(),
                vec![2, 3],
                vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5],
            ),
            ("b".to_string(), vec![1], vec![-1.0]),
        ];
        write_safetensors(&path, &t, &[("format", "pt")]).unwrap();
        let back = read_safetensors(&path).unwrap();
        assert_eq!(back["a"], HostTensor::f32(&[2, 3], t[0].2.clone()));
        assert_eq!(back["b"].to_f32(), vec![-1.0]);
        // Overwrite: no temporary file is left behind.
        write_safetensors(&path, &t[..1], &[]).unwrap();
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("w.safetensors")]);
        assert_eq!(read_safetensors(&path).unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_and_truncated_files_are_errors() {
        let p = Path::new("x.safetensors");
        assert!(matches!(
            parse_safetensors(p, b""),
            Err(Error::Format { .. })
        ));
        assert!(matches!(
            parse_safetensors(p, &[255u8; 64]),
            Err(Error::Format { .. })
        ));
        let mut ok = Vec::new();
        let data = [0u8; 16];
        let v = TensorView::new(Dtype::F32, vec![4], &data).unwrap();
        ok.extend(safetensors::serialize([("t", v)], None).unwrap());
        assert!(parse_safetensors(p, &ok).is_ok());
        assert!(matches!(
            parse_safetensors(p, &ok[..ok.len() - 1]),
            Err(Error::Format { .. })
        ));
    }
}

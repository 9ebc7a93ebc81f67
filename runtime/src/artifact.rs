//! The compiled-artifact container: one file holding a target string, a JSON header (for GPU
//! artifacts, the [`Plan`](crate::plan::Plan)) and named binary sections (weights, PTX modules,
//! later a CPU object or shared library). The format knows nothing of what the sections hold.
//!
//! Layout (all integers little-endian):
//! ```text
//! 0   "MLCA"                       magic
//! 4   u32  format version          FORMAT_VERSION
//! 8   u64  header length H
//! 16  u64  FNV-1a 64 of the header
//! 24  H bytes of JSON header       {"target", "meta", "sections": [{name, kind, offset, len, checksum}]}
//!     zero padding to a multiple of 64: the data region starts here
//!     each section at data start + offset, offset a multiple of 64, zero padding between
//! ```
//! Section offsets are relative to the data region, so the header does not depend on its own
//! length. Every section carries its FNV-1a 64 checksum. Writing is deterministic: the same
//! artifact gives the same bytes (JSON object keys are sorted).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 4] = b"MLCA";
/// The container format's version; readers reject any other.
pub const FORMAT_VERSION: u32 = 1;
/// Alignment of the data region and of every section, in bytes.
pub const ALIGN: usize = 64;
const PREAMBLE: usize = 24;

/// A named blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    /// What the bytes are: `weights`, `ptx`, `object`, ...
    pub kind: String,
    pub data: Vec<u8>,
}

/// An artifact in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Artifact {
    /// What the code is for: `nvptx:sm_90`, `x86_64-linux`, ...
    pub target: String,
    /// Backend-specific header data (a GPU artifact's plan), as JSON.
    pub meta: serde_json::Value,
    pub sections: Vec<Section>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    target: String,
    meta: serde_json::Value,
    sections: Vec<SectionEntry>,
}

#[derive(Serialize, Deserialize)]
struct SectionEntry {
    name: String,
    kind: String,
    offset: u64,
    len: u64,
    checksum: u64,
}

/// Why an artifact could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// (The I/O error is in the message and not marked as the source, so printers that walk
    /// the source chain do not repeat it.)
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A file's contents are not a valid artifact: `error` says why.
    #[error("{}: {error}", path.display())]
    File {
        path: PathBuf,
        error: Box<ArtifactError>,
    },
    #[error("not an mlc artifact (the file does not start with \"MLCA\")")]
    BadMagic,
    #[error(
        "artifact format version {found} is not supported (this runtime reads version {supported}); recompile the model with a matching mlc"
    )]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("artifact is truncated: {what} needs {needed} bytes, the file has {len}")]
    Truncated { what: String, needed: u64, len: u64 },
    #[error("artifact header is corrupt (checksum mismatch)")]
    HeaderChecksum,
    #[error("artifact header is not valid: {0}")]
    Header(String),
    #[error("artifact section {name:?} is corrupt (checksum mismatch)")]
    SectionChecksum { name: String },
    #[error("artifact has no section {0:?}")]
    MissingSection(String),
    #[error("artifact has two sections named {0:?}")]
    DuplicateSection(String),
}

/// FNV-1a, 64 bits: a cheap checksum against truncation and corruption (not against tampering).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn align_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

impl Artifact {
    /// The section named `name`.
    pub fn section(&self, name: &str) -> Result<&Section, ArtifactError> {
        self.sections
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| ArtifactError::MissingSection(name.to_string()))
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ArtifactError> {
        let mut entries = Vec::with_capacity(self.sections.len());
        let mut off = 0usize;
        for (i, s) in self.sections.iter().enumerate() {
            if self.sections[..i].iter().any(|o| o.name == s.name) {
                return Err(ArtifactError::DuplicateSection(s.name.clone()));
            }
            entries.push(SectionEntry {
                name: s.name.clone(),
                kind: s.kind.clone(),
                offset: off as u64,
                len: s.data.len() as u64,
                checksum: fnv1a64(&s.data),
            });
            off = align_up(off + s.data.len());
        }
        let header = Header {
            target: self.target.clone(),
            meta: self.meta.clone(),
            sections: entries,
        };
        let hjson =
            serde_json::to_vec(&header).map_err(|e| ArtifactError::Header(e.to_string()))?;
        let data_start = align_up(PREAMBLE + hjson.len());
        let mut out = Vec::with_capacity(data_start + off);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(hjson.len() as u64).to_le_bytes());
        out.extend_from_slice(&fnv1a64(&hjson).to_le_bytes());
        out.extend_from_slice(&hjson);
        out.resize(data_start, 0);
        for s in &self.sections {
            out.extend_from_slice(&s.data);
            out.resize(align_up(out.len()), 0);
        }
        Ok(out)
    }

    /// Parses and checks an artifact: magic, version, header checksum, section ranges and
    /// checksums.
    pub fn from_bytes(bytes: &[u8]) -> Result<Artifact, ArtifactError> {
        let len = bytes.len() as u64;
        let truncated = |what: &str, needed: u64| ArtifactError::Truncated {
            what: what.to_string(),
            needed,
            len,
        };
        if bytes.len() < 4 {
            return Err(if MAGIC.starts_with(bytes) {
                truncated("the preamble", PREAMBLE as u64)
            } else {
                ArtifactError::BadMagic
            });
        }
        if &bytes[..4] != MAGIC {
            return Err(ArtifactError::BadMagic);
        }
        if bytes.len() < PREAMBLE {
            return Err(truncated("the preamble", PREAMBLE as u64));
        }
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let version = u32_at(4);
        if version != FORMAT_VERSION {
            return Err(ArtifactError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let hlen = u64_at(8);
        let hend = (PREAMBLE as u64)
            .checked_add(hlen)
            .ok_or_else(|| truncated("the header", u64::MAX))?;
        if hend > len {
            return Err(truncated("the header", hend));
        }
        let hbytes = &bytes[PREAMBLE..hend as usize];
        if fnv1a64(hbytes) != u64_at(16) {
            return Err(ArtifactError::HeaderChecksum);
        }
        let header: Header =
            serde_json::from_slice(hbytes).map_err(|e| ArtifactError::Header(e.to_string()))?;
        let data_start = align_up(hend as usize) as u64;
        let mut sections = Vec::with_capacity(header.sections.len());
        for e in header.sections {
            let start = data_start.checked_add(e.offset);
            let end = start.and_then(|s| s.checked_add(e.len));
            let (Some(start), Some(end)) = (start, end) else {
                return Err(truncated(&format!("section {:?}", e.name), u64::MAX));
            };
            if end > len {
                return Err(truncated(&format!("section {:?}", e.name), end));
            }
            let data = &bytes[start as usize..end as usize];
            if fnv1a64(data) != e.checksum {
                return Err(ArtifactError::SectionChecksum { name: e.name });
            }
            if sections.iter().any(|s: &Section| s.name == e.name) {
                return Err(ArtifactError::DuplicateSection(e.name));
            }
            sections.push(Section {
                name: e.name,
                kind: e.kind,
                data: data.to_vec(),
            });
        }
        Ok(Artifact {
            target: header.target,
            meta: header.meta,
            sections,
        })
    }

    pub fn write(&self, path: &Path) -> Result<(), ArtifactError> {
        let bytes = self.to_bytes()?;
        std::fs::write(path, bytes).map_err(|error| ArtifactError::Io {
            path: path.to_path_buf(),
            error,
        })
    }

    pub fn read(path: &Path) -> Result<Artifact, ArtifactError> {
        let bytes = std::fs::read(path).map_err(|error| ArtifactError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Artifact::from_bytes(&bytes).map_err(|error| ArtifactError::File {
            path: path.to_path_buf(),
            error: Box::new(error),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Artifact {
        Artifact {
            target: "nvptx:sm_90".into(),
            meta: serde_json::json!({"b": 1, "a": [1, 2]}),
            sections: vec![
                Section {
                    name: "weights".into(),
                    kind: "weights".into(),
                    data: (0..100u8).collect(),
                },
                Section {
                    name: "k0".into(),
                    kind: "ptx".into(),
                    data: b".version 8.0".to_vec(),
                },
            ],
        }
    }

    #[test]
    fn round_trips_deterministically_and_aligns_sections() {
        let a = sample();
        let bytes = a.to_bytes().unwrap();
        assert_eq!(bytes, a.to_bytes().unwrap());
        assert_eq!(bytes.len() % ALIGN, 0);
        assert_eq!(Artifact::from_bytes(&bytes).unwrap(), a);
    }

    #[test]
    fn rejects_broken_files_with_typed_errors() {
        let bytes = sample().to_bytes().unwrap();
        let check = |b: &[u8], want: &str| {
            let got = format!("{:?}", Artifact::from_bytes(b).unwrap_err());
            assert!(got.starts_with(want), "{got} is not {want}");
        };
        check(b"ELF\x7f....", "BadMagic");
        check(&bytes[..10], "Truncated");
        check(&bytes[..40], "Truncated");
        check(&bytes[..bytes.len() - 70], "Truncated");
        let mut v = bytes.clone();
        v[4] = 9;
        check(&v, "UnsupportedVersion");
        let mut h = bytes.clone();
        h[30] ^= 1;
        check(&h, "HeaderChecksum");
        let mut s = bytes.clone();
        let n = s.len();
        s[n - 64 - 40] ^= 0xff;
        check(&s, "SectionChecksum");
    }
}

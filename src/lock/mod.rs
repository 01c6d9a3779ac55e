//! Lock files: the generated `<set>.lock.yaml` beside each manifest.
//!
//! The model is plain data. [`update`] computes the next lock from the previous one and what
//! the registries answered (pure, no I/O); [`write`] renders it deterministically, so the same
//! inputs always give the same bytes and Git only sees real changes.

mod changes;
mod update;
mod write;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::reference::Digest;

pub use changes::{ChangeKind, PinChange, diff_locks};
pub use update::{
    ImageObservation, Problem, ResolvedDigest, TagObservation, TagObservations, update_lock,
};
pub use write::render;

pub const API_VERSION: &str = "imagelock.dev/v1alpha1";
pub const KIND: &str = "ImageLock";
/// Suffix that marks a generated lock file; manifests never end in it.
pub const LOCK_SUFFIX: &str = ".lock.yaml";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path}: cannot read lock file: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid lock file ({message}); it will be regenerated")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: cannot write lock file: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl LockError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            LockError::Read { .. } => "lock_read",
            LockError::Parse { .. } => "lock_parse",
            LockError::Write { .. } => "lock_write",
        }
    }
}

/// A whole lock file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockFile {
    /// File name of the manifest this lock was generated from.
    pub source: String,
    #[serde(default)]
    pub images: BTreeMap<String, LockedImage>,
}

/// The pins of one image entry (alias).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockedImage {
    pub source: String,
    /// Repository in the mirror registry; absent when the image is not mirrored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, LockedTag>,
}

/// The current pin of one tag, with its earlier generations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockedTag {
    pub digest: Digest,
    pub media_type: String,
    /// Platform (`os/arch[/variant]`) to the digest of its image manifest.
    #[serde(default)]
    pub platforms: BTreeMap<String, Digest>,
    pub generation: u32,
    /// When this digest was first seen for this tag (RFC 3339, UTC, seconds).
    pub resolved_at: String,
    /// True when `pin:` in the manifest holds this tag at this generation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
    /// Other generations, newest first.
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub generation: u32,
    pub digest: Digest,
    pub resolved_at: String,
}

impl LockedTag {
    /// The newest generation known, pinned or not.
    pub fn latest_generation(&self) -> u32 {
        self.history
            .iter()
            .map(|h| h.generation)
            .chain([self.generation])
            .max()
            .unwrap_or(self.generation)
    }
}

/// The lock path for a manifest: `images/a/web.yaml` -> `images/a/web.lock.yaml`.
pub fn lock_path_for(manifest: &Path) -> PathBuf {
    let stem = manifest
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    manifest.with_file_name(format!("{stem}{LOCK_SUFFIX}"))
}

/// True for paths that name a generated lock file.
pub fn is_lock_path(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with(LOCK_SUFFIX))
}

/// Reads the lock beside `manifest` (a path relative to the checkout at `root`). `Ok(None)`
/// when there is none yet.
pub fn read_beside(root: &Path, manifest: &Path) -> Result<Option<LockFile>, LockError> {
    read(&root.join(lock_path_for(manifest)))
}

/// Reads a lock file. `Ok(None)` when there is none yet.
pub fn read(path: &Path) -> Result<Option<LockFile>, LockError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        // Bytes that are not UTF-8 are a broken lock like any other that does not parse.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Err(LockError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            });
        }
        Err(source) => {
            return Err(LockError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    parse(path, &text).map(Some)
}

/// Parses lock file text; `path` only labels errors.
pub fn parse(path: &Path, text: &str) -> Result<LockFile, LockError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Document {
        api_version: String,
        kind: String,
        #[serde(flatten)]
        lock: LockFile,
    }
    let parse_error = |message: String| LockError::Parse {
        path: path.to_owned(),
        message,
    };
    let document: Document =
        serde_saphyr::from_str(text).map_err(|e| parse_error(e.to_string()))?;
    if document.api_version != API_VERSION || document.kind != KIND {
        return Err(parse_error(format!(
            "expected apiVersion {API_VERSION} and kind {KIND}, found {} {}",
            document.api_version, document.kind
        )));
    }
    Ok(document.lock)
}

/// Writes `lock` to `path` if its bytes differ from what is there. Returns true if it wrote.
pub fn write_if_changed(path: &Path, lock: &LockFile) -> Result<bool, LockError> {
    let rendered = render(lock);
    if std::fs::read(path).is_ok_and(|existing| existing == rendered.as_bytes()) {
        return Ok(false);
    }
    write_atomic(path, &rendered)?;
    Ok(true)
}

/// Replaces `path` through a temporary file and a rename, so a reader never sees half a lock.
pub fn write_atomic(path: &Path, text: &str) -> Result<(), LockError> {
    crate::atomic_file::write(path, text.as_bytes(), None).map_err(|source| LockError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_paths() {
        assert_eq!(
            lock_path_for(Path::new("images/team-a/web.yaml")),
            PathBuf::from("images/team-a/web.lock.yaml")
        );
        assert!(is_lock_path(Path::new("images/web.lock.yaml")));
        assert!(!is_lock_path(Path::new("images/web.yaml")));
    }

    #[test]
    fn write_if_changed_only_writes_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.lock.yaml");
        let lock = LockFile {
            source: "web.yaml".into(),
            images: BTreeMap::new(),
        };
        assert!(write_if_changed(&path, &lock).unwrap());
        assert!(!write_if_changed(&path, &lock).unwrap());
        assert_eq!(read(&path).unwrap().unwrap(), lock);
    }

    #[test]
    fn rejects_foreign_documents() {
        let err = parse(
            Path::new("x.lock.yaml"),
            "apiVersion: v1\nkind: Pod\nsource: x\n",
        );
        assert!(matches!(err, Err(LockError::Parse { .. })));
    }
}

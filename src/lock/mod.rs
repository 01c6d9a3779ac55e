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

use crate::manifest::{MAX_FILE_SIZE, walk};
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
/// when there is none yet. Read as every repo file is: no symlink on the way, a regular file
/// of at most [`MAX_FILE_SIZE`](crate::manifest::MAX_FILE_SIZE) bytes.
pub fn read_beside(root: &Path, manifest: &Path) -> Result<Option<LockFile>, LockError> {
    read_in(root, &lock_path_for(manifest))
}

/// Reads the repo-relative lock `relative` of the checkout at `root`. `Ok(None)` when there
/// is none yet.
pub fn read_in(root: &Path, relative: &Path) -> Result<Option<LockFile>, LockError> {
    let read = walk::read_repo_file(root, relative, MAX_FILE_SIZE);
    from_read(&root.join(relative), read)
}

/// Reads a lock file (not following a symlink at `path`). `Ok(None)` when there is none yet.
pub fn read(path: &Path) -> Result<Option<LockFile>, LockError> {
    from_read(path, walk::read_file(path, MAX_FILE_SIZE))
}

/// A lock that is refused (a symlink, not a file, too large, not UTF-8) is a broken lock like
/// any other that does not parse: it is regenerated, never quoted.
fn from_read(
    path: &Path,
    read: std::io::Result<walk::FileRead>,
) -> Result<Option<LockFile>, LockError> {
    match read {
        Ok(walk::FileRead::Missing) => Ok(None),
        Ok(walk::FileRead::Text(text)) => parse(path, &text).map(Some),
        Ok(walk::FileRead::Refused(why)) => Err(LockError::Parse {
            path: path.to_owned(),
            message: why.to_string(),
        }),
        Err(source) => Err(LockError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Parses lock file text; `path` only labels errors. A lock is output, not a manifest: no
/// error quotes any of its text (a lock committed as a link to a secret must not show the
/// secret), only what is wrong and where. Anchors, aliases and deep nesting are refused as
/// in manifests.
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
    crate::manifest::check_shape(text, crate::manifest::MAX_LOCK_NODES)
        .map_err(|e| parse_error(e.to_string()))?;
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: crate::manifest::MAX_YAML_DEPTH,
            max_aliases: 0,
            max_anchors: 0,
            max_documents: 1,
            max_nodes: crate::manifest::MAX_LOCK_NODES,
        },
    };
    let document: Document = serde_saphyr::from_str_with_options(text, options)
        .map_err(|e| parse_error(describe_error(&e)))?;
    if document.api_version != API_VERSION || document.kind != KIND {
        return Err(parse_error(format!(
            "expected apiVersion {API_VERSION} and kind {KIND}"
        )));
    }
    Ok(document.lock)
}

/// What is wrong and where, from a deserializer error, without any of the input: serde's
/// messages quote values (`invalid type: string "..."`), so only the position, a field name
/// of the lock format and the kind of problem are kept.
fn describe_error(mut error: &serde_saphyr::Error) -> String {
    // The wrapper's snippet is lines of the file: only the error inside is looked at.
    while let serde_saphyr::Error::WithSnippet { error: inner, .. }
    | serde_saphyr::Error::AliasError { error: inner, .. } = error
    {
        error = inner;
    }
    let what = match error {
        // Field names and expectations come from this module's types, not from the file.
        serde_saphyr::Error::SerdeMissingField { field, .. } => format!("missing field {field}"),
        serde_saphyr::Error::SerdeInvalidType { expected, .. }
        | serde_saphyr::Error::SerdeInvalidValue { expected, .. } => format!(
            "a value has the wrong type or format; expected {}",
            crate::manifest::escape_text(expected, crate::manifest::EXCERPT_CHARS)
        ),
        serde_saphyr::Error::Budget { .. } => {
            "too large or too deeply nested, or uses anchors or aliases".to_owned()
        }
        serde_saphyr::Error::Eof { .. } => "unexpected end of file".to_owned(),
        serde_saphyr::Error::MultipleDocuments { .. } => "more than one YAML document".to_owned(),
        _ => "a value has the wrong type or format".to_owned(),
    };
    match error.location() {
        Some(at) if at.line() > 0 => {
            format!("line {}, column {}: {what}", at.line(), at.column())
        }
        _ => what,
    }
}

/// Writes `lock` to `path` if its bytes differ from what is there. Returns true if it wrote.
pub fn write_if_changed(path: &Path, lock: &LockFile) -> Result<bool, LockError> {
    let rendered = render(lock);
    if is_unchanged(path, &rendered) {
        return Ok(false);
    }
    write_atomic(path, &rendered)?;
    Ok(true)
}

/// True when `path` is a regular file (not a link) holding exactly `rendered`.
pub fn is_unchanged(path: &Path, rendered: &str) -> bool {
    matches!(
        walk::read_file(path, MAX_FILE_SIZE),
        Ok(walk::FileRead::Text(existing)) if existing == rendered
    )
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

    const SECRET: &str = "ghp_S3CR3T";

    fn parse_error(text: &str) -> String {
        match parse(Path::new("images/web.lock.yaml"), text) {
            Err(e @ LockError::Parse { .. }) => e.to_string(),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn parse_errors_say_where_but_quote_nothing() {
        let header = "apiVersion: imagelock.dev/v1alpha1\nkind: ImageLock\nsource: web.yaml\n";
        for (text, expected) in [
            (
                format!("{SECRET}: [ not yaml\n"),
                "line 2, column 1: invalid YAML",
            ),
            (
                format!("TOKEN={SECRET}\n"),
                "a value has the wrong type or format",
            ),
            (
                format!(
                    "{header}images: {{web: {{source: x, tags: {{latest: {{digest: {SECRET}, mediaType: x, generation: 1, resolvedAt: x}}}}}}}}\n"
                ),
                "a value has the wrong type or format",
            ),
            (
                format!(
                    "{header}images: {{web: {{source: x, tags: {{latest: {{generation: {SECRET}}}}}}}}}\n"
                ),
                "line 4, column",
            ),
            (
                format!("apiVersion: {SECRET}\nkind: ImageLock\nsource: x\n"),
                "expected apiVersion",
            ),
            (
                format!("{header}images: {{}}\n---\n{SECRET}: 1\n"),
                "line 5, column 1",
            ),
            (
                format!("{header}x: &{SECRET} 1\n"),
                "line 4, column 4: YAML anchor is not allowed",
            ),
            (
                format!("{header}x:\n  {}{SECRET}\n", "- ".repeat(20_000)),
                "nested more than 64 levels deep",
            ),
            (
                format!("{header}images:\n  web:\n    tags: {{}}\n"),
                "missing field source",
            ),
        ] {
            let error = parse_error(&text);
            assert!(!error.contains(SECRET), "{error}");
            assert!(error.contains(expected), "{expected:?} in {error}");
            assert!(
                error.starts_with("images/web.lock.yaml: not a valid lock file ("),
                "{error}"
            );
        }
    }

    #[test]
    fn locks_are_read_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("token");
        std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
        std::fs::create_dir_all(dir.path().join("images")).unwrap();
        std::os::unix::fs::symlink(&secret, dir.path().join("images/web.lock.yaml")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("images/zero.lock.yaml")).unwrap();
        for manifest in ["images/web.yaml", "images/zero.yaml"] {
            let error = read_beside(dir.path(), Path::new(manifest)).unwrap_err();
            assert!(matches!(error, LockError::Parse { .. }), "{error:?}");
            assert!(error.to_string().contains("is a symlink"), "{error}");
        }
        let error = read(&dir.path().join("images/zero.lock.yaml")).unwrap_err();
        assert!(error.to_string().contains("is a symlink"), "{error}");
        assert!(
            read_beside(dir.path(), Path::new("images/none.yaml"))
                .unwrap()
                .is_none()
        );
        // A link is never "unchanged": it is replaced by the rendered lock.
        assert!(!is_unchanged(
            &dir.path().join("images/web.lock.yaml"),
            &format!("{SECRET}\n")
        ));
    }
}

//! Which version of a lock file the daemon may read: the one it wrote or verified.
//!
//! Locks are the daemon's output, but they live in a repo many people can commit to. The
//! daemon remembers, per lock path, the git blob id of the version it last wrote (or, at a
//! fresh start, found). When a fetch brings a lock whose blob is another, someone else
//! changed it: [`TrustedLocks`] then gives the last verified version instead (read back from
//! the object store by its id), or no lock when none was ever verified, and names the
//! manifest so that the daemon resolves its entries again at once and commits the healed
//! lock. Such a hand-edited lock is never served, and never the base of new generations.
//!
//! A fresh start knows nothing else, so it trusts the checkout as it is (the git history's
//! authors and committers can be written by anyone who commits); every entry is resolved
//! again in the first pass anyway, which rewrites any pin the registries do not confirm.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::git::{GitError, HeadObjects};
use crate::lock::{self, LockError, LockFile};
use crate::manifest::{ImageSet, MAX_FILE_SIZE};

/// Where reconcile reads a manifest's previous lock from.
pub trait LockSource: Sync {
    /// The lock of the manifest at repo-relative `manifest` in the checkout at `root`;
    /// `Ok(None)` when there is none (to be trusted).
    fn read(&self, root: &Path, manifest: &Path) -> Result<Option<LockFile>, LockError>;

    /// Whether [`LockSource::read`] gives another version than the checkout has for
    /// `manifest`: someone else changed its lock.
    fn replaced(&self, _manifest: &Path) -> bool {
        false
    }
}

/// The lock files of a checkout as they are (the CLI: the user's own work tree).
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckoutLocks;

impl LockSource for CheckoutLocks {
    fn read(&self, root: &Path, manifest: &Path) -> Result<Option<LockFile>, LockError> {
        lock::read_beside(root, manifest)
    }
}

/// The blob ids of the lock files the daemon wrote or verified, by repo-relative lock path.
/// A path without an id: no lock was verified there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifiedLocks {
    blobs: HashMap<PathBuf, String>,
}

impl VerifiedLocks {
    /// Remembers what a pass wrote (or found already written): the blob id of each lock, or
    /// `None` for a lock it removed.
    pub fn record<'a>(&mut self, locks: impl IntoIterator<Item = &'a (PathBuf, Option<String>)>) {
        for (path, blob) in locks {
            match blob {
                Some(blob) => self.blobs.insert(path.clone(), blob.clone()),
                None => self.blobs.remove(path),
            };
        }
    }

    fn get(&self, lock_path: &Path) -> Option<&str> {
        self.blobs.get(lock_path).map(String::as_str)
    }
}

/// The locks of one head as the daemon trusts them.
#[derive(Debug, Default)]
pub struct TrustedLocks {
    /// Manifests whose lock someone else changed, with the last verified version to read
    /// instead (`None`: nothing verified, so no lock).
    replaced: BTreeMap<PathBuf, Option<LockFile>>,
    /// The blob id of each lock as HEAD has it, by lock path (for [`Self::as_verified`]).
    head: Vec<(PathBuf, Option<String>)>,
}

impl LockSource for TrustedLocks {
    fn read(&self, root: &Path, manifest: &Path) -> Result<Option<LockFile>, LockError> {
        match self.replaced.get(manifest) {
            Some(verified) => Ok(verified.clone()),
            None => lock::read_beside(root, manifest),
        }
    }

    fn replaced(&self, manifest: &Path) -> bool {
        self.replaced.contains_key(manifest)
    }
}

impl TrustedLocks {
    /// Compares the lock of each of `sets` in HEAD of the checkout at `root` with
    /// `verified`. `None` for `verified`: nothing is known, the checkout is trusted as it
    /// is (a fresh start; a replica that does not write).
    pub fn open(
        root: &Path,
        sets: &[ImageSet],
        verified: Option<&VerifiedLocks>,
    ) -> Result<TrustedLocks, GitError> {
        let objects = HeadObjects::open(root)?;
        let mut trusted = TrustedLocks::default();
        for set in sets {
            let lock_path = lock::lock_path_for(&set.path);
            let blob = objects.file_blob(&lock_path)?;
            if let Some(verified) = verified {
                let known = verified.get(&lock_path);
                if known != blob.as_deref() {
                    tracing::warn!(
                        lock = %lock_path.display(),
                        "lock changed by a commit imagelock did not make: its last verified version is served and its entries are resolved again"
                    );
                    let baseline = match known {
                        Some(id) => read_verified(&objects, &lock_path, id),
                        None => None,
                    };
                    trusted.replaced.insert(set.path.clone(), baseline);
                    // Still the verified version, as far as the next comparison goes.
                    trusted.head.push((lock_path, known.map(str::to_owned)));
                    continue;
                }
            }
            trusted.head.push((lock_path, blob));
        }
        Ok(trusted)
    }

    /// The manifests whose lock was replaced by its last verified version.
    pub fn replaced(&self) -> impl Iterator<Item = &Path> {
        self.replaced.keys().map(PathBuf::as_path)
    }

    /// What a daemon that trusts this head as it is remembers as verified.
    pub fn as_verified(&self) -> VerifiedLocks {
        let mut verified = VerifiedLocks::default();
        verified.record(&self.head);
        verified
    }
}

/// The verified version `id` of the lock at `lock_path`, from the object store. A version
/// that cannot be read or parsed (it should not happen: the daemon wrote it) is no lock.
fn read_verified(objects: &HeadObjects, lock_path: &Path, id: &str) -> Option<LockFile> {
    let bytes = match objects.blob(id, MAX_FILE_SIZE) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            tracing::warn!(lock = %lock_path.display(), blob = id, "the last verified version of the lock is not in the object store; its entries start over");
            return None;
        }
        Err(e) => {
            tracing::warn!(lock = %lock_path.display(), error = %e, "cannot read the last verified version of the lock; its entries start over");
            return None;
        }
    };
    let text = String::from_utf8(bytes).ok()?;
    lock::parse(lock_path, &text)
        .inspect_err(
            |e| tracing::warn!(error = %e, "the last verified version of the lock does not parse"),
        )
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pins::tests::{mk_lock, mk_set};

    /// Commits `files` (path, text) on top of HEAD of the repository at `root`.
    fn commit(root: &Path, files: &[(&str, &str)]) {
        let repo = git2::Repository::open(root).unwrap();
        let mut index = repo.index().unwrap();
        for (path, text) in files {
            std::fs::create_dir_all(root.join(path).parent().unwrap()).unwrap();
            std::fs::write(root.join(path), text).unwrap();
            index.add_path(Path::new(path)).unwrap();
        }
        index.write().unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let who = git2::Signature::now("someone", "someone@example.com").unwrap();
        let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        repo.commit(Some("HEAD"), &who, &who, "change", &tree, &parents)
            .unwrap();
    }

    #[test]
    fn a_lock_someone_else_changed_reads_as_the_version_last_verified() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        git2::Repository::init(root).unwrap();
        let set = mk_set(
            "images/team-a/web.yaml",
            "team-a",
            "    - {name: web, source: quay.io/company/web, tags: [latest]}\n",
        );
        let ours = lock::render(&mk_lock(&set, &[("web", "latest", 'a')]));
        let lock_path = "images/team-a/web.lock.yaml";
        commit(root, &[(lock_path, &ours)]);
        let sets = [set.clone()];

        // A fresh start trusts the checkout and remembers it.
        let fresh = TrustedLocks::open(root, &sets, None).unwrap();
        assert_eq!(fresh.replaced().count(), 0);
        let verified = fresh.as_verified();
        let read = fresh.read(root, &set.path).unwrap().unwrap();
        assert_eq!(lock::render(&read), ours);

        // Someone else's commit: the verified version is read instead, from the object store.
        let theirs = lock::render(&mk_lock(&set, &[("web", "latest", 'e')]));
        commit(root, &[(lock_path, &theirs)]);
        let trusted = TrustedLocks::open(root, &sets, Some(&verified)).unwrap();
        assert_eq!(trusted.replaced().collect::<Vec<_>>(), [set.path.as_path()]);
        let read = trusted.read(root, &set.path).unwrap().unwrap();
        assert_eq!(lock::render(&read), ours);
        // Without the verified memory, the checkout is what is read.
        let as_is = TrustedLocks::open(root, &sets, None).unwrap();
        assert_eq!(
            lock::render(&as_is.read(root, &set.path).unwrap().unwrap()),
            theirs
        );

        // What the daemon writes back is verified again.
        let mut verified = verified;
        verified.record(&[(
            PathBuf::from(lock_path),
            Some(crate::git::blob_id(ours.as_bytes())),
        )]);
        commit(root, &[(lock_path, &ours)]);
        let healed = TrustedLocks::open(root, &sets, Some(&verified)).unwrap();
        assert_eq!(healed.replaced().count(), 0);

        // A lock committed for a manifest the daemon never locked reads as no lock.
        let new = mk_set(
            "images/team-a/api.yaml",
            "team-a",
            "    - {name: api, source: quay.io/company/api, tags: [latest]}\n",
        );
        let api = lock::render(&mk_lock(&new, &[("api", "latest", 'b')]));
        commit(root, &[("images/team-a/api.lock.yaml", &api)]);
        let sets = [set, new.clone()];
        let trusted = TrustedLocks::open(root, &sets, Some(&verified)).unwrap();
        assert_eq!(trusted.replaced().collect::<Vec<_>>(), [new.path.as_path()]);
        assert_eq!(trusted.read(root, &new.path).unwrap(), None);
    }
}

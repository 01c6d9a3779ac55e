//! Read-only access to the objects of a checkout's HEAD: which blob a path holds, and a
//! blob's bytes by id. The daemon tells the lock files it wrote from those someone else
//! committed by their blob ids (see `crate::pins::trusted`).

use std::path::{Path, PathBuf};

use git2::{ObjectType, Oid, Repository};

use super::{GitError, Operation};

/// The git blob id of `bytes` (what `git hash-object` prints), as hex.
pub fn blob_id(bytes: &[u8]) -> String {
    // Hashing without a repository cannot fail for a blob; an error would be a libgit2 bug,
    // and the empty id then simply matches nothing.
    Oid::hash_object(ObjectType::Blob, bytes)
        .map(|oid| oid.to_string())
        .unwrap_or_default()
}

/// The HEAD commit of the repository whose work tree is `root`, opened for reading.
pub struct HeadObjects {
    repo: Repository,
    tree: Option<Oid>,
    root: PathBuf,
}

impl HeadObjects {
    /// Opens the repository at `root`. An unborn HEAD has no files.
    pub fn open(root: &Path) -> Result<HeadObjects, GitError> {
        let local = |e: git2::Error| GitError::Local {
            operation: Operation::Open,
            path: root.to_owned(),
            message: e.message().to_owned(),
        };
        let repo = Repository::open(root).map_err(local)?;
        let tree = match repo.head() {
            Ok(head) => Some(head.peel_to_tree().map_err(local)?.id()),
            Err(_) => None,
        };
        Ok(HeadObjects {
            repo,
            tree,
            root: root.to_owned(),
        })
    }

    fn local(&self, e: git2::Error) -> GitError {
        GitError::Local {
            operation: Operation::Open,
            path: self.root.clone(),
            message: e.message().to_owned(),
        }
    }

    /// The blob id of the regular file at repo-relative `path` in HEAD. `None` when there is
    /// none, or when the path is something else (a symlink, a directory, a submodule).
    pub fn file_blob(&self, path: &Path) -> Result<Option<String>, GitError> {
        let Some(tree) = self.tree else {
            return Ok(None);
        };
        let tree = self.repo.find_tree(tree).map_err(|e| self.local(e))?;
        let entry = match tree.get_path(path) {
            Ok(entry) => entry,
            Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
            Err(e) => return Err(self.local(e)),
        };
        // 0o100644 and 0o100755: regular files; 0o120000 is a symlink.
        let regular = matches!(entry.filemode(), 0o100644 | 0o100755);
        Ok((regular && entry.kind() == Some(ObjectType::Blob)).then(|| entry.id().to_string()))
    }

    /// The bytes of blob `id`, if the object store has it and it is at most `limit` bytes.
    pub fn blob(&self, id: &str, limit: u64) -> Result<Option<Vec<u8>>, GitError> {
        let Ok(oid) = Oid::from_str(id) else {
            return Ok(None);
        };
        let odb = self.repo.odb().map_err(|e| self.local(e))?;
        // The header first: a large object is never read into memory.
        match odb.read_header(oid) {
            Ok((size, ObjectType::Blob)) if size as u64 <= limit => {}
            Ok(_) => return Ok(None),
            Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
            Err(e) => return Err(self.local(e)),
        }
        let blob = self.repo.find_blob(oid).map_err(|e| self.local(e))?;
        Ok(Some(blob.content().to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_ids_are_gits() {
        // `printf 'hello\n' | git hash-object --stdin`
        assert_eq!(
            blob_id(b"hello\n"),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
    }

    #[test]
    fn reads_head_files_and_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        std::fs::create_dir_all(dir.path().join("images")).unwrap();
        std::fs::write(dir.path().join("images/a.lock.yaml"), "a\n").unwrap();
        std::os::unix::fs::symlink("a.lock.yaml", dir.path().join("images/b.lock.yaml")).unwrap();
        let mut index = repo.index().unwrap();
        index.add_path(Path::new("images/a.lock.yaml")).unwrap();
        index.add_path(Path::new("images/b.lock.yaml")).unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let who = git2::Signature::now("t", "t@example.com").unwrap();
        repo.commit(Some("HEAD"), &who, &who, "m", &tree, &[])
            .unwrap();

        let head = HeadObjects::open(dir.path()).unwrap();
        let id = head
            .file_blob(Path::new("images/a.lock.yaml"))
            .unwrap()
            .unwrap();
        assert_eq!(id, blob_id(b"a\n"));
        assert_eq!(head.blob(&id, 100).unwrap().as_deref(), Some(&b"a\n"[..]));
        assert_eq!(head.blob(&id, 1).unwrap(), None, "over the limit");
        assert_eq!(
            head.file_blob(Path::new("images/b.lock.yaml")).unwrap(),
            None,
            "a symlink is not a lock file"
        );
        assert_eq!(
            head.file_blob(Path::new("images/c.lock.yaml")).unwrap(),
            None
        );
        assert_eq!(head.blob(&blob_id(b"never stored"), 100).unwrap(), None);
    }
}

//! Safe handling of repo-relative paths. The paths come from manifests that pull requests
//! edit, so a path must never lead out of the work tree: no absolute paths, no `..`, no
//! `.git`, and no symlink on the way (a symlink committed to the repo could point anywhere).

use std::io;
use std::path::{Component, Path, PathBuf};

use super::GitError;

/// Checks that `path` is a plain repo-relative path and returns it normalised (`./`
/// components dropped).
pub fn normalize_repo_path(path: &Path) -> Result<PathBuf, GitError> {
    let invalid = |reason| GitError::InvalidPath {
        path: path.to_owned(),
        reason,
    };
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => {
                // Case-insensitive: on such file systems `.GIT` is the git dir too.
                if name.eq_ignore_ascii_case(".git") {
                    return Err(invalid("names the .git directory"));
                }
                out.push(name);
            }
            Component::CurDir => {}
            Component::ParentDir => return Err(invalid("contains a `..` component")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(invalid("is absolute; repo paths are relative"));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(invalid("is empty"));
    }
    Ok(out)
}

/// Joins a repo-relative path onto the work tree `root`, refusing anything that would
/// resolve outside it. Components that exist on disk must not be symlinks; components that
/// do not exist yet are fine (the caller may be about to create them).
pub fn join_repo_path(root: &Path, path: &Path) -> Result<PathBuf, GitError> {
    let relative = normalize_repo_path(path)?;
    let mut current = root.to_path_buf();
    for component in relative.components() {
        current.push(component);
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(GitError::InvalidPath {
                    path: path.to_owned(),
                    reason: "goes through a symlink",
                });
            }
            Ok(_) => {}
            // Nothing below a missing component exists either.
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
                return Err(GitError::InvalidPath {
                    path: path.to_owned(),
                    reason: "goes through a file",
                });
            }
            Err(source) => {
                return Err(GitError::Io {
                    operation: super::Operation::Commit,
                    path: current,
                    source,
                });
            }
        }
    }
    Ok(root.join(relative))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(p: &str) -> PathBuf {
        match normalize_repo_path(Path::new(p)) {
            Ok(p) => p,
            Err(e) => panic!("{p}: {e}"),
        }
    }

    fn reason(p: &str) -> &'static str {
        match normalize_repo_path(Path::new(p)) {
            Err(GitError::InvalidPath { reason, .. }) => reason,
            other => panic!("{p}: expected InvalidPath, got {other:?}"),
        }
    }

    #[test]
    fn accepts_relative_paths() {
        assert_eq!(
            ok("images/a.lock.yaml"),
            PathBuf::from("images/a.lock.yaml")
        );
        assert_eq!(ok("./images/./a.yaml"), PathBuf::from("images/a.yaml"));
        assert_eq!(ok("a..b/c"), PathBuf::from("a..b/c"));
        assert_eq!(ok(".gitignore"), PathBuf::from(".gitignore"));
    }

    #[test]
    fn refuses_escapes() {
        assert_eq!(
            reason("/etc/passwd"),
            "is absolute; repo paths are relative"
        );
        assert_eq!(reason("../x"), "contains a `..` component");
        assert_eq!(reason("images/../../x"), "contains a `..` component");
        assert_eq!(reason(".git/config"), "names the .git directory");
        assert_eq!(reason("sub/.GIT/hooks/x"), "names the .git directory");
        assert_eq!(reason(""), "is empty");
        assert_eq!(reason("./."), "is empty");
    }

    #[test]
    fn join_refuses_symlinks() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let outside = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("images"))?;
        std::os::unix::fs::symlink(outside.path(), dir.path().join("evil"))?;
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("images/link"))?;

        assert_eq!(
            join_repo_path(dir.path(), Path::new("images/new/a.yaml"))?,
            dir.path().join("images/new/a.yaml")
        );
        for bad in ["evil/a.yaml", "images/link"] {
            match join_repo_path(dir.path(), Path::new(bad)) {
                Err(GitError::InvalidPath { reason, .. }) => {
                    assert_eq!(reason, "goes through a symlink")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        Ok(())
    }
}

//! Safe handling of repo-relative paths. The paths come from manifests that pull requests
//! edit, so a path must never lead out of the work tree: no absolute paths, no `..`, no
//! `.git`, and no symlink on the way (a symlink committed to the repo could point anywhere).
//!
//! [`check_component`] is the one rule for which names the commit step takes; the walker
//! over `images/` applies it too, so a manifest whose lock could not be committed is reported
//! for itself instead of failing the commit of every team.

use std::ffi::OsStr;
use std::io;
use std::path::{Component, Path, PathBuf};

use super::GitError;

/// Longest file or directory name (bytes) the commit step takes: Linux's `NAME_MAX`.
pub const MAX_NAME_LEN: usize = 255;
/// Longest repo-relative path (bytes) the commit step takes. Far below `PATH_MAX`, so that a
/// path still opens below a long work dir; far above any real manifest path.
pub const MAX_PATH_LEN: usize = 1024;

/// Why the commit step would refuse a file or directory `name`, if it would: not UTF-8 (lock
/// names and commit messages are text), control or bidirectional-override characters (they
/// forge lines in logs and commit messages), too long, or a name Git or libgit2
/// refuses to stage (`.git` in any case, its NTFS short name `git~1`, `.` and `..`).
pub fn check_component(name: &OsStr) -> Result<(), &'static str> {
    let Some(name) = name.to_str() else {
        return Err("is not valid UTF-8");
    };
    if name.is_empty() || name == "." || name == ".." {
        return Err("contains an empty, `.` or `..` component");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("has a name longer than 255 bytes");
    }
    if name.chars().any(crate::manifest::is_unprintable) {
        return Err("contains a control character");
    }
    // Case-insensitive: on such file systems `.GIT` is the git dir too. libgit2 also refuses
    // the NTFS forms (`.git.`, `.git `, `git~1`), whatever the platform.
    let lower = name.to_ascii_lowercase();
    let bare = lower.split(':').next().unwrap_or_default();
    let bare = bare.trim_end_matches([' ', '.']);
    if bare == ".git" || bare == "git~1" {
        return Err("names the .git directory");
    }
    Ok(())
}

/// Checks that `path` is a plain repo-relative path the commit step can stage (see
/// [`check_component`]) and returns it normalised (`./` components dropped).
pub fn normalize_repo_path(path: &Path) -> Result<PathBuf, GitError> {
    let invalid = |reason| GitError::InvalidPath {
        path: path.to_owned(),
        reason,
    };
    if path.as_os_str().len() > MAX_PATH_LEN {
        return Err(invalid("is longer than 1024 bytes"));
    }
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => {
                check_component(name).map_err(invalid)?;
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
        assert_eq!(reason("images/git~1/x"), "names the .git directory");
        assert_eq!(reason("images/GIT~1 ./x"), "names the .git directory");
        assert_eq!(reason(".git:stream"), "names the .git directory");
    }

    #[test]
    fn refuses_names_the_commit_step_cannot_stage() {
        use std::os::unix::ffi::OsStrExt as _;
        assert_eq!(reason("images/a\nb.yaml"), "contains a control character");
        assert_eq!(
            reason("images/a\u{1b}[31m.yaml"),
            "contains a control character"
        );
        assert_eq!(
            reason("images/\u{202e}lmay.yaml"),
            "contains a control character"
        );
        let long = format!("images/{}.yaml", "a".repeat(251));
        assert_eq!(reason(&long), "has a name longer than 255 bytes");
        assert_eq!(
            ok(&format!("images/{}.yaml", "a".repeat(250)))
                .as_os_str()
                .len(),
            262
        );
        let deep = format!("images/{}", "abcdefgh/".repeat(120));
        assert_eq!(reason(&deep), "is longer than 1024 bytes");
        let latin1 = Path::new(OsStr::from_bytes(b"images/caf\xe9.yaml"));
        assert!(matches!(
            normalize_repo_path(latin1),
            Err(GitError::InvalidPath {
                reason: "is not valid UTF-8",
                ..
            })
        ));
        assert_eq!(
            ok("images/café/web-1.0_x.yaml"),
            PathBuf::from("images/café/web-1.0_x.yaml")
        );
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

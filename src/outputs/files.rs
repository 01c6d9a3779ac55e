//! The file system side of the outputs: safe joins, reads with limits, writes that keep a
//! file's mode, directory walks that never follow a symlink.

use std::fs;
use std::path::{Path, PathBuf};

use super::{GENERATED_HEADER, OutputsError};

use crate::manifest::{MAX_FILE_SIZE, walk};

/// What is at a repo-relative path, read safely.
pub enum Read {
    Missing,
    Text(String),
    /// Not read, and why (a symlink, too large, not UTF-8, not a file).
    Refused(String),
}

/// Joins a repo-relative path onto `root`: no `..`, no absolute path, no symlink on the way.
pub fn join(root: &Path, relative: &Path) -> Result<PathBuf, String> {
    match crate::git::join_repo_path(root, relative) {
        Ok(path) => Ok(path),
        Err(crate::git::GitError::InvalidPath { reason, .. }) => Err(reason.to_owned()),
        Err(other) => Err(other.to_string()),
    }
}

/// Reads a repo-relative text file as every repo file is read ([`walk::read_repo_file`]):
/// symlinks, non-files, large and non-UTF-8 files are refused, without their content.
pub fn read(root: &Path, relative: &Path) -> Result<Read, OutputsError> {
    match walk::read_repo_file(root, relative, MAX_FILE_SIZE) {
        Ok(walk::FileRead::Missing) => Ok(Read::Missing),
        Ok(walk::FileRead::Text(text)) => Ok(Read::Text(text)),
        Ok(walk::FileRead::Refused(why)) => Ok(Read::Refused(why.to_string())),
        Err(source) => Err(OutputsError::Read {
            path: root.join(relative),
            source,
        }),
    }
}

/// True for text imagelock generated: it starts with the header line.
pub fn is_generated(text: &str) -> bool {
    text.strip_prefix(GENERATED_HEADER)
        .is_some_and(|rest| rest.starts_with('\n') || rest.starts_with("\r\n"))
}

/// Writes `text` to the repo-relative `relative` through a temporary file and a rename,
/// creating directories; an existing file keeps its permissions, a new one gets 0644.
pub fn write(root: &Path, relative: &Path, text: &str) -> Result<(), OutputsError> {
    let path = join(root, relative).map_err(|reason| OutputsError::UnsafePath {
        path: relative.to_owned(),
        reason,
    })?;
    let write_error = |source| OutputsError::Write {
        path: path.clone(),
        source,
    };
    let dir = path.parent().unwrap_or(root);
    fs::create_dir_all(dir).map_err(write_error)?;
    let permissions = match fs::metadata(&path) {
        Ok(metadata) => metadata.permissions(),
        Err(_) => {
            use std::os::unix::fs::PermissionsExt as _;
            fs::Permissions::from_mode(0o644)
        }
    };
    crate::atomic_file::write(&path, text.as_bytes(), Some(permissions)).map_err(write_error)
}

/// Removes a generated file, then its directories up to `stop` (exclusive) while they are empty.
pub fn remove(root: &Path, relative: &Path, stop: &Path) -> Result<(), OutputsError> {
    let path = join(root, relative).map_err(|reason| OutputsError::UnsafePath {
        path: relative.to_owned(),
        reason,
    })?;
    fs::remove_file(&path).map_err(|source| OutputsError::Remove {
        path: path.clone(),
        source,
    })?;
    let mut dir = relative.parent();
    while let Some(d) = dir.filter(|d| d.starts_with(stop) && *d != stop) {
        // Fails (and stops) on the first directory that is not empty.
        if fs::remove_dir(root.join(d)).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

/// The `*.yaml` / `*.yml` regular files under a directory.
pub struct YamlFiles {
    /// Repo-relative, sorted.
    pub files: Vec<PathBuf>,
    /// False when a limit or an error left files out: nothing may be removed for not being
    /// listed.
    pub complete: bool,
}

/// The `*.yaml` / `*.yml` regular files under `relative` (itself, when it is one), listed by
/// [`walk::list`]: hidden entries, symlinks and the directories in `skip` are left out.
pub fn yaml_files(root: &Path, relative: &Path, skip: &[&Path]) -> YamlFiles {
    let listing = walk::list(root, relative, skip);
    for (path, problem) in &listing.problems {
        tracing::debug!(path = %walk::escaped_path(path).display(), %problem, "not listed for the outputs");
    }
    YamlFiles {
        files: listing
            .files()
            .filter(|path| {
                let name = path.to_string_lossy();
                name.ends_with(".yaml") || name.ends_with(".yml")
            })
            .map(Path::to_path_buf)
            .collect(),
        complete: listing.complete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_yaml_files_without_following_links() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let outside = tempfile::tempdir()?;
        let root = dir.path();
        for file in [
            "apps/a.yaml",
            "apps/b.yml",
            "apps/c.txt",
            "apps/.hidden.yaml",
            "apps/sub/d.yaml",
            "apps/skip/e.yaml",
        ] {
            fs::create_dir_all(root.join(file).parent().unwrap())?;
            fs::write(root.join(file), "x: 1\n")?;
        }
        fs::write(outside.path().join("secret.yaml"), "x: 1\n")?;
        std::os::unix::fs::symlink(outside.path(), root.join("apps/link"))?;
        std::os::unix::fs::symlink(outside.path().join("secret.yaml"), root.join("apps/f.yaml"))?;
        let files = yaml_files(root, Path::new("apps"), &[Path::new("apps/skip")]).files;
        assert_eq!(
            files,
            [
                PathBuf::from("apps/a.yaml"),
                PathBuf::from("apps/b.yml"),
                PathBuf::from("apps/sub/d.yaml")
            ]
        );
        assert_eq!(
            yaml_files(root, Path::new("apps/a.yaml"), &[]).files.len(),
            1
        );
        assert!(yaml_files(root, Path::new("nope"), &[]).files.is_empty());
        assert!(matches!(
            read(root, Path::new("apps/f.yaml"))?,
            Read::Refused(_)
        ));
        assert!(matches!(
            read(root, Path::new("apps/link/secret.yaml"))?,
            Read::Refused(_)
        ));
        assert!(matches!(
            read(root, Path::new("apps/none.yaml"))?,
            Read::Missing
        ));
        Ok(())
    }

    #[test]
    fn writes_keep_modes_and_removal_tidies_directories() -> Result<(), Box<dyn std::error::Error>>
    {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        let file = Path::new("out/ns/a.yaml");
        write(root, file, "a\n")?;
        assert_eq!(
            fs::metadata(root.join(file))?.permissions().mode() & 0o777,
            0o644
        );
        fs::set_permissions(root.join(file), fs::Permissions::from_mode(0o755))?;
        write(root, file, "b\n")?;
        assert_eq!(fs::read_to_string(root.join(file))?, "b\n");
        assert_eq!(
            fs::metadata(root.join(file))?.permissions().mode() & 0o777,
            0o755
        );
        remove(root, file, Path::new("out"))?;
        assert!(!root.join("out/ns").exists());
        assert!(root.join("out").exists());
        Ok(())
    }

    #[test]
    fn generated_header() {
        assert!(is_generated(
            "# Generated by imagelock. Do not edit.\nx: 1\n"
        ));
        assert!(is_generated("# Generated by imagelock. Do not edit.\r\n"));
        assert!(!is_generated(
            "# Generated by imagelock. Do not edit. Really\n"
        ));
        assert!(!is_generated(
            "x: 1\n# Generated by imagelock. Do not edit.\n"
        ));
    }
}

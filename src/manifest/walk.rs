//! The one way imagelock finds and reads files of the config repo: manifests and locks under
//! `images/`, `imagelock.yaml`, and the files the outputs read or rewrite.
//!
//! One rule, because the repo is edited by pull requests: no symlink is ever followed (a link
//! to `/proc/self/environ` or `/dev/zero`, or back into the repo, is reported and skipped),
//! only regular files are read, each read stops at a size cap while reading (not after), and
//! a walk is bounded in depth and entries. Messages about a refused file never hold its
//! content.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read as _};
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use super::yaml::FILE_START;
use super::{Diagnostic, IMAGES_DIR};
use crate::lock;

/// Largest repo file read (manifests, locks, `imagelock.yaml`, files with setter markers).
pub const MAX_FILE_SIZE: u64 = 8 << 20;
/// Deepest directory nesting below the start of a walk that is listed.
pub const MAX_DEPTH: usize = 32;
/// Most entries (files, directories, links) one walk lists.
pub const MAX_ENTRIES: usize = 100_000;

/// What is at a repo-relative path, read without following links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileRead {
    Missing,
    Text(String),
    /// Not read, and why; the reason never quotes the file.
    Refused(Refusal),
}

/// Why a file was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The file, or a directory on its way, is a symlink.
    Symlink,
    /// A directory, FIFO, socket or device: what it is.
    NotAFile(&'static str),
    TooLarge {
        limit: u64,
    },
    NotUtf8,
    /// The path itself is refused (`..`, `.git`, a name the commit step would refuse).
    Path(&'static str),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Symlink => f.write_str(
                "is a symlink or goes through one; links in the config repo are never followed",
            ),
            Refusal::NotAFile(kind) => write!(f, "is {kind}, not a regular file"),
            Refusal::TooLarge { limit } => {
                write!(f, "is larger than the {limit} bytes read")
            }
            Refusal::NotUtf8 => f.write_str("is not valid UTF-8; save the file as UTF-8"),
            Refusal::Path(reason) => write!(f, "has a path that {reason}"),
        }
    }
}

/// Reads the repo-relative `relative` below `root`: no symlink on the way or at the end, a
/// regular file only, at most `limit` bytes. I/O errors other than "not there" are errors.
pub fn read_repo_file(root: &Path, relative: &Path, limit: u64) -> io::Result<FileRead> {
    match crate::git::join_repo_path(root, relative) {
        Ok(full) => read_file(&full, limit),
        Err(crate::git::GitError::InvalidPath { reason, .. }) => {
            Ok(FileRead::Refused(if reason == "goes through a symlink" {
                Refusal::Symlink
            } else {
                Refusal::Path(reason)
            }))
        }
        Err(crate::git::GitError::Io { source, .. }) => Err(source),
        Err(other) => Err(io::Error::other(other.to_string())),
    }
}

/// Reads the file at `path` if it is a regular file and not a symlink (its directories are
/// the caller's to check, see [`read_repo_file`]), at most `limit` bytes.
pub fn read_file(path: &Path, limit: u64) -> io::Result<FileRead> {
    // O_NOFOLLOW: a link swapped in after a check is refused by the kernel; O_NONBLOCK: opening
    // a FIFO returns at once instead of waiting for a writer (it is then refused as not a file).
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(FileRead::Missing),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Ok(FileRead::Refused(Refusal::Symlink));
        }
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            return Ok(FileRead::Refused(Refusal::Path("goes through a file")));
        }
        Err(e) => return Err(e),
    };
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Ok(FileRead::Refused(Refusal::NotAFile(kind_name(
            &metadata.file_type(),
        ))));
    }
    if metadata.len() > limit {
        return Ok(FileRead::Refused(Refusal::TooLarge { limit }));
    }
    let bytes = read_capped(file, metadata.len(), limit)?;
    let Some(bytes) = bytes else {
        return Ok(FileRead::Refused(Refusal::TooLarge { limit }));
    };
    Ok(match String::from_utf8(bytes) {
        Ok(text) => FileRead::Text(text),
        Err(_) => FileRead::Refused(Refusal::NotUtf8),
    })
}

/// At most `limit` bytes of `file`; `None` when it holds more (it grew since its size was
/// taken, or its size lies, as `/proc` files' do).
fn read_capped(file: File, expected: u64, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let capacity = usize::try_from(expected.min(limit)).unwrap_or(0);
    let mut bytes = Vec::with_capacity(capacity);
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

fn kind_name(file_type: &fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_symlink() {
        "a symlink"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "a device"
    } else {
        "a special file"
    }
}

/// What an entry of a walk is. Symlinks are never followed, so a link to a directory is a
/// [`Kind::Symlink`], not a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// A FIFO, socket or device.
    Special,
}

/// The entries below one directory of the repo.
#[derive(Debug, Default)]
pub struct Listing {
    /// Every entry that was seen, repo-relative, by path: regular files, the directories
    /// entered, symlinks and special files (neither followed nor read). Hidden entries
    /// (`.git`, `.github`) and refused names are not in it.
    pub entries: BTreeMap<PathBuf, Kind>,
    /// Problems, by repo-relative path: names the commit step would refuse, directories too
    /// deep or unreadable, the entry limit.
    pub problems: Vec<(PathBuf, String)>,
    /// False when something was left out because of a limit or an error: what is missing
    /// cannot be told, so nothing may be removed on the grounds that it is not listed.
    pub complete: bool,
}

impl Listing {
    /// The regular files, sorted.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.of_kind(Kind::File)
    }

    /// The entries of one kind, sorted.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Path> {
        self.entries
            .iter()
            .filter(move |(_, k)| **k == kind)
            .map(|(path, _)| path.as_path())
    }
}

/// Lists the repo-relative `relative` below `root` (itself, when it is not a directory),
/// never following a link, leaving out hidden entries and anything under `skip`. Never fails:
/// what cannot be read is a problem and makes the listing incomplete.
pub fn list(root: &Path, relative: &Path, skip: &[&Path]) -> Listing {
    list_bounded(root, relative, skip, MAX_ENTRIES)
}

fn list_bounded(root: &Path, relative: &Path, skip: &[&Path], max_entries: usize) -> Listing {
    let mut walk = Walk {
        root,
        skip,
        max_entries,
        listing: Listing {
            complete: true,
            ..Listing::default()
        },
    };
    // The start itself may be a link (reported as one); the directories above it may not.
    // An empty path is the whole repo.
    let parent = relative.parent().filter(|p| !p.as_os_str().is_empty());
    let checked = if relative.as_os_str().is_empty() {
        Ok(PathBuf::new())
    } else {
        crate::git::normalize_repo_path(relative).and_then(|_| {
            parent.map_or(Ok(PathBuf::new()), |p| crate::git::join_repo_path(root, p))
        })
    };
    if let Err(e) = checked {
        let reason = match e {
            crate::git::GitError::InvalidPath { reason, .. } => reason.to_owned(),
            other => other.to_string(),
        };
        walk.problem(
            &escaped_path(relative),
            format!("the path {reason}; not read"),
        );
        return walk.listing;
    }
    match fs::symlink_metadata(root.join(relative)) {
        Ok(metadata) => {
            let kind = kind_of(&metadata.file_type());
            if kind == Kind::Dir {
                walk.dir(relative, 0);
            } else if !walk.skipped(relative) {
                walk.listing.entries.insert(relative.to_owned(), kind);
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => walk.problem(relative, format!("cannot be read: {}", e.kind())),
    }
    walk.listing
}

fn kind_of(file_type: &fs::FileType) -> Kind {
    if file_type.is_symlink() {
        Kind::Symlink
    } else if file_type.is_dir() {
        Kind::Dir
    } else if file_type.is_file() {
        Kind::File
    } else {
        Kind::Special
    }
}

struct Walk<'a> {
    root: &'a Path,
    skip: &'a [&'a Path],
    max_entries: usize,
    listing: Listing,
}

impl Walk<'_> {
    /// A problem that left entries out of the listing.
    fn problem(&mut self, path: &Path, message: String) {
        self.listing.problems.push((path.to_owned(), message));
        self.listing.complete = false;
    }

    fn skipped(&self, path: &Path) -> bool {
        self.skip.iter().any(|s| path.starts_with(s))
    }

    fn dir(&mut self, relative: &Path, depth: usize) {
        if self.skipped(relative) {
            return;
        }
        if depth > MAX_DEPTH {
            self.problem(
                relative,
                format!("nested more than {MAX_DEPTH} directories deep; not read"),
            );
            return;
        }
        self.listing.entries.insert(relative.to_owned(), Kind::Dir);
        let entries = match fs::read_dir(self.root.join(relative)) {
            Ok(entries) => entries,
            Err(e) => {
                self.problem(relative, format!("cannot list directory: {}", e.kind()));
                return;
            }
        };
        let mut children = Vec::new();
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    self.problem(relative, format!("cannot list directory: {}", e.kind()));
                    return;
                }
            };
            // Refused names count too: each is a problem kept in memory.
            let seen = self.listing.entries.len() + children.len() + self.listing.problems.len();
            if seen >= self.max_entries {
                let message = format!(
                    "more than {} entries in the walk; the rest is not read (split the repository)",
                    self.max_entries
                );
                self.problem(relative, message);
                return;
            }
            let name = entry.file_name();
            if name.as_encoded_bytes().first() == Some(&b'.') {
                continue;
            }
            let path = relative.join(&name);
            // Not a problem for completeness: the lock of such a name has a refused name too,
            // so it is never listed without its manifest.
            if let Err(reason) = crate::git::check_component(&name) {
                self.listing.problems.push((
                    escaped_path(&path),
                    format!("the name {reason}, which Git commits cannot hold; rename it"),
                ));
                continue;
            }
            // DirEntry::file_type does not follow links (d_type, or lstat).
            let kind = match entry.file_type() {
                Ok(file_type) => kind_of(&file_type),
                Err(e) => {
                    self.problem(&path, format!("cannot be read: {}", e.kind()));
                    continue;
                }
            };
            children.push((path, kind));
        }
        children.sort_by(|a, b| a.0.cmp(&b.0));
        for (path, kind) in children {
            if kind == Kind::Dir {
                self.dir(&path, depth + 1);
            } else if !self.skipped(&path) {
                self.listing.entries.insert(path, kind);
            }
        }
    }
}

/// A path that may hold anything, made safe to print: invalid UTF-8 replaced, control and
/// invisible characters escaped, long names cut.
pub fn escaped_path(path: &Path) -> PathBuf {
    PathBuf::from(super::yaml::escape_text(&path.to_string_lossy(), 200))
}

/// The manifests and locks under `images/`, checked against each other.
#[derive(Debug, Default)]
pub struct ImageFiles {
    /// Manifests to read: regular files, names the commit step takes, a lock path free for
    /// them alone. Sorted.
    pub manifests: Vec<PathBuf>,
    /// Lock files: regular files, and symlinks with a lock's name (never read; removed when
    /// orphaned, replaced by a regular lock when written). Sorted.
    pub locks: Vec<PathBuf>,
    /// Lock paths that belong to a manifest-named entry (even a refused one: its lock is
    /// kept, not removed as an orphan).
    pub claimed_locks: BTreeSet<PathBuf>,
    /// Everything refused, with why (content-free).
    pub diagnostics: Vec<Diagnostic>,
    /// See [`Listing::complete`].
    pub complete: bool,
}

/// Walks `images/` below `root` once and sorts its entries into manifests and locks: symlinks
/// and special files are reported and skipped; two manifests with one lock path (`x.yaml`,
/// `x.yml`) are both refused; a manifest whose lock path holds a directory or special file,
/// or whose lock the commit step could not stage, is refused.
pub fn image_files(root: &Path) -> ImageFiles {
    let images = Path::new(IMAGES_DIR);
    let listing = list(root, images, &[]);
    let mut found = ImageFiles {
        complete: listing.complete,
        ..ImageFiles::default()
    };
    let mut report = |path: &Path, message: String| {
        found.diagnostics.push(Diagnostic {
            path: path.to_owned(),
            position: FILE_START,
            message,
        });
    };
    for (path, message) in &listing.problems {
        report(path, message.clone());
    }
    match listing.entries.get(images) {
        None | Some(Kind::Dir) => {}
        Some(Kind::Symlink) => {
            report(
                images,
                format!("{}; nothing under it is read", Refusal::Symlink),
            );
        }
        Some(_) => report(images, "is not a directory; nothing is read".to_owned()),
    }

    // Every manifest-named entry, by the lock path it would have.
    let mut by_lock: BTreeMap<PathBuf, Vec<&Path>> = BTreeMap::new();
    for (path, kind) in &listing.entries {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if path.as_path() == images {
            continue;
        }
        match kind {
            Kind::Symlink if is_lock_name(name) => {
                report(
                    path,
                    format!(
                        "{}; it is never read, and is replaced by a regular lock (or removed)",
                        Refusal::Symlink
                    ),
                );
                found.locks.push(path.clone());
            }
            Kind::Symlink => report(path, format!("{}; it is skipped", Refusal::Symlink)),
            Kind::Special => report(path, "is not a regular file; it is skipped".to_owned()),
            Kind::File if is_lock_name(name) => found.locks.push(path.clone()),
            _ => {}
        }
        if *kind != Kind::Dir && is_manifest_name(name) {
            by_lock
                .entry(lock::lock_path_for(path))
                .or_default()
                .push(path);
        }
    }

    for (lock_path, claimants) in by_lock {
        found.claimed_locks.insert(lock_path.clone());
        let files: Vec<&Path> = claimants
            .iter()
            .copied()
            .filter(|p| listing.entries.get(*p) == Some(&Kind::File))
            .collect();
        if claimants.len() > 1 {
            let names: Vec<String> = claimants.iter().map(|p| p.display().to_string()).collect();
            for path in &files {
                report(
                    path,
                    format!(
                        "{} would share the lock {}; neither is read until one is renamed",
                        names.join(" and "),
                        lock_path.display()
                    ),
                );
            }
            continue;
        }
        let Some(manifest) = files.first() else {
            continue;
        };
        if let Err(crate::git::GitError::InvalidPath { reason, .. }) =
            crate::git::normalize_repo_path(&lock_path)
        {
            report(
                manifest,
                format!(
                    "its lock {} {reason}, so it could not be committed; rename the manifest",
                    lock_path.display()
                ),
            );
            continue;
        }
        match listing.entries.get(&lock_path) {
            Some(Kind::Dir) | Some(Kind::Special) => report(
                manifest,
                format!(
                    "its lock {} is not a regular file; remove it to let imagelock write the lock",
                    lock_path.display()
                ),
            ),
            _ => found.manifests.push(manifest.to_path_buf()),
        }
    }
    found.manifests.sort();
    found
}

/// `*.yaml` and `*.yml`, but not the generated `*.lock.yaml` (`*.lock.yml`).
pub fn is_manifest_name(name: &str) -> bool {
    (name.ends_with(".yaml") || name.ends_with(".yml"))
        && !name.ends_with(".lock.yaml")
        && !name.ends_with(".lock.yml")
}

fn is_lock_name(name: &str) -> bool {
    name.ends_with(lock::LOCK_SUFFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::fs::symlink;

    fn mk_tree(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for file in files {
            let full = dir.path().join(file);
            fs::create_dir_all(full.parent().unwrap()).unwrap();
            fs::write(full, "x: 1\n").unwrap();
        }
        dir
    }

    fn messages(found: &ImageFiles) -> Vec<String> {
        let mut messages: Vec<String> = found.diagnostics.iter().map(ToString::to_string).collect();
        messages.sort();
        messages
    }

    fn strings(paths: &[PathBuf]) -> Vec<String> {
        paths.iter().map(|p| p.display().to_string()).collect()
    }

    #[test]
    fn reads_regular_files_only_and_never_follows_links() {
        let outside = mk_tree(&["secret"]);
        fs::write(outside.path().join("secret"), "TOKEN=hunter2\n").unwrap();
        let dir = mk_tree(&["images/a.yaml", "images/sub/b.yaml"]);
        let root = dir.path();
        symlink(
            outside.path().join("secret"),
            root.join("images/link.lock.yaml"),
        )
        .unwrap();
        symlink(outside.path(), root.join("images/dirlink")).unwrap();
        symlink("/dev/zero", root.join("images/zero.lock.yaml")).unwrap();

        assert_eq!(
            read_repo_file(root, Path::new("images/a.yaml"), 100).unwrap(),
            FileRead::Text("x: 1\n".into())
        );
        for refused in [
            "images/link.lock.yaml",
            "images/zero.lock.yaml",
            "images/dirlink/secret",
        ] {
            assert_eq!(
                read_repo_file(root, Path::new(refused), MAX_FILE_SIZE).unwrap(),
                FileRead::Refused(Refusal::Symlink),
                "{refused}"
            );
        }
        // The leaf alone, for absolute paths.
        assert_eq!(
            read_file(&root.join("images/zero.lock.yaml"), MAX_FILE_SIZE).unwrap(),
            FileRead::Refused(Refusal::Symlink)
        );
        assert_eq!(
            read_repo_file(root, Path::new("images/sub"), 100).unwrap(),
            FileRead::Refused(Refusal::NotAFile("a directory"))
        );
        assert_eq!(
            read_repo_file(root, Path::new("images/none.yaml"), 100).unwrap(),
            FileRead::Missing
        );
        assert_eq!(
            read_repo_file(root, Path::new("images/a.yaml"), 4).unwrap(),
            FileRead::Refused(Refusal::TooLarge { limit: 4 })
        );
        assert_eq!(
            read_repo_file(root, Path::new("../x"), 100).unwrap(),
            FileRead::Refused(Refusal::Path("contains a `..` component"))
        );
        fs::write(root.join("images/latin1.yaml"), b"x: \xe9\n").unwrap();
        assert_eq!(
            read_repo_file(root, Path::new("images/latin1.yaml"), 100).unwrap(),
            FileRead::Refused(Refusal::NotUtf8)
        );
        // What a refusal says never holds the file.
        for refusal in [
            Refusal::Symlink,
            Refusal::NotAFile("a FIFO"),
            Refusal::NotUtf8,
        ] {
            assert!(!refusal.to_string().contains("hunter2"));
        }
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = mk_tree(&[]);
        let fifo = dir.path().join("fifo.lock.yaml");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        assert_eq!(
            read_file(&fifo, 100).unwrap(),
            FileRead::Refused(Refusal::NotAFile("a FIFO"))
        );
    }

    #[test]
    fn proc_files_that_lie_about_their_size_are_cut_while_reading() {
        // /proc files report size 0 and hold more: the cap applies to what is read.
        let bytes = read_capped(File::open("/proc/self/status").unwrap(), 0, 16).unwrap();
        assert_eq!(bytes, None);
        let all = read_capped(File::open("/proc/self/status").unwrap(), 0, 1 << 20).unwrap();
        assert!(all.is_some_and(|b| b.len() > 16));
    }

    #[test]
    fn image_files_sorts_and_refuses() {
        let dir = mk_tree(&[
            "images/team-a/web.yaml",
            "images/team-a/web.lock.yaml",
            "images/team-a/old.lock.yaml",
            "images/team-b/app.yaml",
            "images/team-b/app.yml",
            "images/team-b/app.lock.yaml",
            "images/team-c/dirlock.yaml",
            "images/team-c/dirlock.lock.yaml/x",
            "images/.hidden/x.yaml",
            "images/README.md",
        ]);
        let root = dir.path();
        symlink("../team-a", root.join("images/team-c/link")).unwrap();
        symlink("web.yaml", root.join("images/team-a/alias.yaml")).unwrap();
        symlink("/etc/passwd", root.join("images/team-a/linked.lock.yaml")).unwrap();
        let long = format!("images/team-d/{}.yaml", "a".repeat(250));
        fs::create_dir_all(root.join("images/team-d")).unwrap();
        fs::write(root.join(&long), "x: 1\n").unwrap();
        fs::write(root.join("images/team-d/bad\nname.yaml"), "x: 1\n").unwrap();
        fs::write(
            root.join(std::ffi::OsStr::from_bytes(b"images/team-d/caf\xe9.yaml")),
            "x: 1\n",
        )
        .unwrap();

        let found = image_files(root);
        assert_eq!(strings(&found.manifests), ["images/team-a/web.yaml"]);
        assert_eq!(
            strings(&found.locks),
            [
                "images/team-a/linked.lock.yaml",
                "images/team-a/old.lock.yaml",
                "images/team-a/web.lock.yaml",
                "images/team-b/app.lock.yaml"
            ]
        );
        assert!(
            found
                .claimed_locks
                .contains(Path::new("images/team-b/app.lock.yaml"))
        );
        assert!(
            found
                .claimed_locks
                .contains(Path::new("images/team-a/alias.lock.yaml"))
        );
        assert!(
            !found
                .claimed_locks
                .contains(Path::new("images/team-a/old.lock.yaml"))
        );
        // Refused names cannot claim a listed lock: orphan removal may still go on.
        assert!(found.complete);
        let long_lock = format!("images/team-d/{}.lock.yaml", "a".repeat(250));
        assert_eq!(
            messages(&found),
            [
                "images/team-a/alias.yaml:1:1: is a symlink or goes through one; links in the config repo are never followed; it is skipped".to_owned(),
                "images/team-a/linked.lock.yaml:1:1: is a symlink or goes through one; links in the config repo are never followed; it is never read, and is replaced by a regular lock (or removed)".to_owned(),
                "images/team-b/app.yaml:1:1: images/team-b/app.yaml and images/team-b/app.yml would share the lock images/team-b/app.lock.yaml; neither is read until one is renamed".to_owned(),
                "images/team-b/app.yml:1:1: images/team-b/app.yaml and images/team-b/app.yml would share the lock images/team-b/app.lock.yaml; neither is read until one is renamed".to_owned(),
                "images/team-c/dirlock.yaml:1:1: its lock images/team-c/dirlock.lock.yaml is not a regular file; remove it to let imagelock write the lock".to_owned(),
                "images/team-c/link:1:1: is a symlink or goes through one; links in the config repo are never followed; it is skipped".to_owned(),
                format!("{long}:1:1: its lock {long_lock} has a name longer than 255 bytes, so it could not be committed; rename the manifest"),
                "images/team-d/bad\\nname.yaml:1:1: the name contains a control character, which Git commits cannot hold; rename it".to_owned(),
                "images/team-d/caf\u{fffd}.yaml:1:1: the name is not valid UTF-8, which Git commits cannot hold; rename it".to_owned(),
            ]
        );
    }

    #[test]
    fn a_chain_of_directory_links_costs_nothing() {
        let dir = mk_tree(&["images/d0/x.yaml"]);
        let images = dir.path().join("images");
        for level in 1..=31 {
            let previous = format!("d{}", level - 1);
            // Two links to each level: followed, the walk would be exponential.
            symlink(&previous, images.join(format!("d{level}"))).unwrap();
            symlink(&previous, images.join(format!("e{level}"))).unwrap();
        }
        let found = image_files(dir.path());
        assert_eq!(strings(&found.manifests), ["images/d0/x.yaml"]);
        assert_eq!(
            found.diagnostics.len(),
            62,
            "one per link: {:#?}",
            found.diagnostics
        );
    }

    #[test]
    fn depth_and_images_itself() {
        let deep = format!("images/{}x.yaml", "d/".repeat(MAX_DEPTH + 2));
        let dir = mk_tree(&[&deep]);
        let found = image_files(dir.path());
        assert!(found.manifests.is_empty());
        assert!(!found.complete);
        assert!(messages(&found)[0].contains("nested more than 32 directories deep"));

        let outside = mk_tree(&["x.yaml"]);
        let linked = mk_tree(&[]);
        symlink(outside.path(), linked.path().join("images")).unwrap();
        let found = image_files(linked.path());
        assert!(found.manifests.is_empty());
        assert_eq!(
            messages(&found),
            [
                "images:1:1: is a symlink or goes through one; links in the config repo are never followed; nothing under it is read"
            ]
        );
        assert!(image_files(mk_tree(&[]).path()).complete);
    }

    #[test]
    fn the_entry_limit_makes_a_listing_incomplete() {
        let dir = mk_tree(&[
            "out/a/1.yaml",
            "out/a/2.yaml",
            "out/b/3.yaml",
            "out/b/4.yaml",
        ]);
        let all = list_bounded(dir.path(), Path::new("out"), &[], 7);
        assert!(all.complete && all.files().count() == 4);
        let cut = list_bounded(dir.path(), Path::new("out"), &[], 5);
        assert!(!cut.complete);
        assert!(cut.files().count() < 4);
        assert_eq!(
            cut.problems[0].1,
            "more than 5 entries in the walk; the rest is not read (split the repository)"
        );
    }

    #[test]
    fn refused_names_count_toward_the_entry_limit() {
        let dir = mk_tree(&[]);
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        for i in 0..20 {
            fs::write(out.join(format!("bad\n{i}.yaml")), "x").unwrap();
        }
        let cut = list_bounded(dir.path(), Path::new("out"), &[], 5);
        assert!(!cut.complete);
        assert!(cut.problems.len() <= 6, "{} problems", cut.problems.len());
    }

    #[test]
    fn listings_skip_and_stay_complete() {
        let dir = mk_tree(&["out/a.yaml", "out/skip/b.yaml", "out/.hidden.yaml"]);
        let listing = list(dir.path(), Path::new("out"), &[Path::new("out/skip")]);
        let files: Vec<&Path> = listing.files().collect();
        assert_eq!(files, [Path::new("out/a.yaml")]);
        assert!(listing.complete && listing.problems.is_empty());
        let one = list(dir.path(), Path::new("out/a.yaml"), &[]);
        assert_eq!(one.files().count(), 1);
        assert!(list(dir.path(), Path::new("none"), &[]).entries.is_empty());
    }
}

//! [`Checkout`]: one clone of the config repo in a work dir that imagelock owns.

use std::io;
use std::path::{Path, PathBuf};

use git2::build::CheckoutBuilder;
use git2::{
    AutotagOption, ConfigLevel, ErrorCode, FetchOptions, ObjectType, Oid, PushOptions, Repository,
    RepositoryInitOptions, ResetType, Signature,
};

use super::error::redact_url;
use super::paths::{join_repo_path, normalize_repo_path};
use super::remote::{RemoteCall, ensure_socket_timeouts};
use super::{Author, GitError, GitTimeouts, Operation, RemoteSpec, SyncOutcome};

/// Name of the remote in our clones.
const REMOTE: &str = "origin";
/// Local config key that marks a clone as made by imagelock (and so safe to remove).
const MARKER_KEY: &str = "imagelock.managed";

/// One clone of the config repo in a work dir, owned by one task. Blocking: run its
/// methods on a blocking thread (`Repository` is `Send` but not `Sync`).
pub struct Checkout {
    repo: Repository,
    spec: RemoteSpec,
    workdir: PathBuf,
    timeouts: GitTimeouts,
}

impl std::fmt::Debug for Checkout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkout")
            .field("spec", &self.spec)
            .field("workdir", &self.workdir)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

/// What [`Checkout::open_or_clone`] found in the work dir.
enum Found {
    Nothing,
    Clone { url: Option<String>, ours: bool },
    BrokenClone,
    Foreign(String),
}

impl Checkout {
    /// Opens the clone in `workdir` if it is one of `remote.url`, else clones fresh. An
    /// existing directory is cleared first only if it is empty or an imagelock-made clone
    /// (of another URL, or broken); anything else is refused with
    /// [`GitError::WorkdirNotOurs`].
    ///
    /// Opening does not fetch; call [`Checkout::sync`] next.
    pub fn open_or_clone(
        remote: RemoteSpec,
        workdir: &Path,
        timeouts: GitTimeouts,
    ) -> Result<Checkout, GitError> {
        ensure_socket_timeouts(&timeouts);
        check_branch_name(&remote)?;
        match inspect(workdir)? {
            Found::Nothing => clone_into(remote, workdir, timeouts),
            Found::Clone { url, .. } if url.as_deref() == Some(remote.url.as_str()) => {
                let repo = Repository::open(workdir).map_err(local(Operation::Open, workdir))?;
                tracing::debug!(workdir = %workdir.display(), remote = %redact_url(&remote.url), "opened existing clone");
                Ok(Checkout {
                    repo,
                    spec: remote,
                    workdir: workdir.to_owned(),
                    timeouts,
                })
            }
            Found::Clone { ours: true, .. } | Found::BrokenClone => {
                tracing::info!(workdir = %workdir.display(), remote = %redact_url(&remote.url), "replacing imagelock clone of another remote");
                clear_dir(workdir)?;
                clone_into(remote, workdir, timeouts)
            }
            Found::Clone { ours: false, url } => Err(GitError::WorkdirNotOurs {
                path: workdir.to_owned(),
                what: match url {
                    Some(url) => format!("a clone of {}", redact_url(&url)),
                    None => "a git repository without an origin remote".to_owned(),
                },
            }),
            Found::Foreign(what) => Err(GitError::WorkdirNotOurs {
                path: workdir.to_owned(),
                what,
            }),
        }
    }

    /// Fetches the branch and hard-resets the work tree and index to it. Local changes and
    /// untracked (also ignored) files are discarded: the work dir is ours. Unpushed local
    /// commits are dropped too; callers re-apply their change on the new head.
    pub fn sync(&mut self) -> Result<SyncOutcome, GitError> {
        let previous = self.head_oid()?;
        self.fetch(Operation::Fetch)?;
        let head = self.reset_to_remote(Operation::Fetch)?;
        let outcome = SyncOutcome {
            head: head.to_string(),
            previous: previous.map(|oid| oid.to_string()),
            moved: previous != Some(head),
        };
        if outcome.moved {
            tracing::info!(remote = %redact_url(&self.spec.url), branch = %self.spec.branch, head = %outcome.head, previous = ?outcome.previous, "config repo moved");
        }
        Ok(outcome)
    }

    /// Drops local commits and changes without fetching: the work tree goes back to the
    /// remote head last fetched. After a push that failed or was withheld, so that what is
    /// read from the work tree is only ever what the remote has.
    pub fn discard_local(&mut self) -> Result<(), GitError> {
        self.reset_to_remote(Operation::Reset).map(|_| ())
    }

    /// The work tree: callers write their files below it (see
    /// [`join_repo_path`](super::join_repo_path)).
    pub fn worktree(&self) -> &Path {
        &self.workdir
    }

    /// The commit checked out (hex object id).
    pub fn head(&self) -> Result<String, GitError> {
        match self.head_oid()? {
            Some(oid) => Ok(oid.to_string()),
            None => Err(GitError::Local {
                operation: Operation::Open,
                path: self.workdir.clone(),
                message: "no commit checked out yet (sync first)".to_owned(),
            }),
        }
    }

    /// Stages exactly `paths` (repo-relative; new, modified or deleted files) and commits
    /// them on top of HEAD with `author` as author and committer. `Ok(None)` when the tree
    /// would not change: "nothing to commit" is success.
    pub fn commit(
        &mut self,
        paths: &[PathBuf],
        message: &str,
        author: &Author,
    ) -> Result<Option<String>, GitError> {
        commit_paths(&self.repo, &self.workdir, paths, message, author)
    }

    /// Pushes HEAD to the branch. Never forces: a non-fast-forward, or any ref the server
    /// refuses, is [`GitError::Rejected`].
    pub fn push(&mut self) -> Result<(), GitError> {
        let op = Operation::Push;
        let head = self.head_commit(op)?.id();
        let branch_ref = format!("refs/heads/{}", self.spec.branch);
        // No leading '+': the server must accept it as a fast-forward.
        let refspec = format!("{branch_ref}:{branch_ref}");
        let call = RemoteCall::new(&self.spec, op, self.timeouts.operation);
        let mut remote = self
            .repo
            .find_remote(REMOTE)
            .map_err(local(op, &self.workdir))?;
        let mut options = PushOptions::new();
        options.remote_callbacks(call.callbacks());
        options.proxy_options(RemoteCall::proxy_options());
        let result = remote.push(&[refspec.as_str()], Some(&mut options));
        drop(options);
        result.map_err(|e| call.map_error(e))?;
        if let Some(reason) = call.rejection() {
            return Err(GitError::Rejected {
                url: redact_url(&self.spec.url),
                reason,
            });
        }
        tracing::info!(remote = %redact_url(&self.spec.url), branch = %self.spec.branch, commit = %head, "pushed");
        Ok(())
    }

    /// Repo-relative paths that differ between two commits (added, modified, deleted; a
    /// rename shows as both its old and new path). Sorted, without duplicates.
    pub fn changed_paths(&self, from: &str, to: &str) -> Result<Vec<PathBuf>, GitError> {
        let op = Operation::Diff;
        let err = local(op, &self.workdir);
        let tree = |rev: &str| {
            self.repo
                .revparse_single(rev)
                .and_then(|object| object.peel_to_commit())
                .and_then(|commit| commit.tree())
                .map_err(|e| GitError::UnknownRevision {
                    operation: op,
                    rev: rev.to_owned(),
                    message: e.message().to_owned(),
                })
        };
        let (old, new) = (tree(from)?, tree(to)?);
        let diff = self
            .repo
            .diff_tree_to_tree(Some(&old), Some(&new), None)
            .map_err(&err)?;
        let mut paths: Vec<PathBuf> = diff
            .deltas()
            .flat_map(|delta| [delta.old_file().path(), delta.new_file().path()])
            .flatten()
            .map(Path::to_path_buf)
            .collect();
        paths.sort();
        paths.dedup();
        Ok(paths)
    }

    fn head_oid(&self) -> Result<Option<Oid>, GitError> {
        match self.repo.head() {
            Ok(head) => Ok(head.target()),
            Err(e) if matches!(e.code(), ErrorCode::UnbornBranch | ErrorCode::NotFound) => Ok(None),
            Err(e) => Err(local(Operation::Open, &self.workdir)(e)),
        }
    }

    fn head_commit(&self, op: Operation) -> Result<git2::Commit<'_>, GitError> {
        head_commit(&self.repo, &self.workdir, op)
    }

    fn fetch(&mut self, op: Operation) -> Result<(), GitError> {
        let branch = &self.spec.branch;
        let refspec = format!("+refs/heads/{branch}:refs/remotes/{REMOTE}/{branch}");
        let call = RemoteCall::new(&self.spec, op, self.timeouts.operation);
        let mut remote = self
            .repo
            .find_remote(REMOTE)
            .map_err(local(op, &self.workdir))?;
        let mut options = FetchOptions::new();
        options.remote_callbacks(call.callbacks());
        options.proxy_options(RemoteCall::proxy_options());
        options.download_tags(AutotagOption::None);
        tracing::debug!(remote = %redact_url(&self.spec.url), branch = %branch, "fetching");
        let result = remote.fetch(&[refspec.as_str()], Some(&mut options), None);
        drop(options);
        result.map_err(|e| call.map_error(e))
    }

    /// Points the local branch (and HEAD) at the fetched remote branch and makes the index
    /// and work tree match it exactly.
    fn reset_to_remote(&mut self, op: Operation) -> Result<Oid, GitError> {
        let branch = &self.spec.branch;
        let tracking = format!("refs/remotes/{REMOTE}/{branch}");
        let target = match self.repo.refname_to_id(&tracking) {
            Ok(oid) => oid,
            Err(e) if e.code() == ErrorCode::NotFound => {
                return Err(GitError::BranchNotFound {
                    operation: op,
                    url: redact_url(&self.spec.url),
                    branch: branch.clone(),
                });
            }
            Err(e) => return Err(local(Operation::Reset, &self.workdir)(e)),
        };
        let err = local(Operation::Reset, &self.workdir);
        // A crashed earlier run may have left a merge or rebase in progress.
        self.repo.cleanup_state().map_err(&err)?;
        self.repo
            .set_head(&format!("refs/heads/{branch}"))
            .map_err(&err)?;
        let commit = self
            .repo
            .find_object(target, Some(ObjectType::Commit))
            .map_err(&err)?;
        self.repo
            .reset(&commit, ResetType::Hard, None)
            .map_err(&err)?;
        // A hard reset replaces the checkout strategy with plain FORCE, which keeps
        // untracked files; a second pass removes them (and ignored ones: nothing of ours
        // lives there).
        let mut checkout = CheckoutBuilder::new();
        checkout.force().remove_untracked(true).remove_ignored(true);
        self.repo.checkout_head(Some(&mut checkout)).map_err(&err)?;
        Ok(target)
    }
}

fn check_branch_name(remote: &RemoteSpec) -> Result<(), GitError> {
    let name = format!("refs/heads/{}", remote.branch);
    if remote.branch.is_empty() || !git2::Reference::is_valid_name(&name) {
        return Err(GitError::InvalidBranch {
            url: redact_url(&remote.url),
            branch: remote.branch.clone(),
        });
    }
    Ok(())
}

/// Commits exactly `paths` in `repo` (work tree at `workdir`) on top of HEAD.
fn commit_paths(
    repo: &Repository,
    workdir: &Path,
    paths: &[PathBuf],
    message: &str,
    author: &Author,
) -> Result<Option<String>, GitError> {
    let op = Operation::Commit;
    let err = local(op, workdir);
    // Check every path before touching the index: (repo-relative path, exists on disk).
    let mut entries = Vec::with_capacity(paths.len());
    for path in paths {
        let full = join_repo_path(workdir, path)?;
        let exists = match std::fs::symlink_metadata(&full) {
            Ok(meta) if meta.is_dir() => {
                return Err(GitError::InvalidPath {
                    path: path.clone(),
                    reason: "is a directory; name the files",
                });
            }
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(source) => {
                return Err(GitError::Io {
                    operation: op,
                    path: full,
                    source,
                });
            }
        };
        entries.push((normalize_repo_path(path)?, exists));
    }
    let parent = head_commit(repo, workdir, op)?;
    let parent_tree = parent.tree().map_err(&err)?;

    // Start from HEAD's tree, not the index on disk, so that only `paths` change.
    let mut index = repo.index().map_err(&err)?;
    index.read_tree(&parent_tree).map_err(&err)?;
    for (relative, exists) in &entries {
        if *exists {
            index.add_path(relative).map_err(&err)?;
        } else {
            // Deleted: a file, or a whole directory that was tracked.
            index.remove_path(relative).map_err(&err)?;
            index.remove_dir(relative, 0).map_err(&err)?;
        }
    }
    let tree_id = index.write_tree().map_err(&err)?;
    index.write().map_err(&err)?;
    if tree_id == parent_tree.id() {
        tracing::debug!(paths = paths.len(), "nothing to commit");
        return Ok(None);
    }

    let tree = repo.find_tree(tree_id).map_err(&err)?;
    let signature = Signature::now(&author.name, &author.email).map_err(|e| GitError::Local {
        operation: op,
        path: workdir.to_owned(),
        message: format!(
            "invalid author {:?} <{}>: {}",
            author.name,
            author.email,
            e.message()
        ),
    })?;
    let message = git2::message_prettify(message, None).map_err(&err)?;
    let oid = repo
        .commit(
            Some("HEAD"),
            &signature,
            &signature,
            &message,
            &tree,
            &[&parent],
        )
        .map_err(&err)?;
    tracing::info!(commit = %oid, parent = %parent.id(), paths = paths.len(), "committed");
    Ok(Some(oid.to_string()))
}

/// Commits `paths` (relative to `dir`, the root of a Git work tree) in a local repository,
/// for `imagelock lock --commit`. `Ok(None)` when nothing changed.
pub fn commit_in(
    dir: &Path,
    paths: &[PathBuf],
    message: &str,
    author: &Author,
) -> Result<Option<String>, GitError> {
    let op = Operation::Commit;
    let repo = Repository::open(dir).map_err(local(op, dir))?;
    let is_root = repo
        .workdir()
        .and_then(|w| w.canonicalize().ok())
        .zip(dir.canonicalize().ok())
        .is_some_and(|(w, d)| w == d);
    if !is_root {
        return Err(GitError::Local {
            operation: op,
            path: dir.to_owned(),
            message: "not the root of a Git work tree".into(),
        });
    }
    commit_paths(&repo, dir, paths, message, author)
}

fn head_commit<'r>(
    repo: &'r Repository,
    workdir: &Path,
    op: Operation,
) -> Result<git2::Commit<'r>, GitError> {
    repo.head()
        .and_then(|head| head.peel_to_commit())
        .map_err(|e| GitError::Local {
            operation: op,
            path: workdir.to_owned(),
            message: format!("no commit checked out (sync first): {}", e.message()),
        })
}

fn local(op: Operation, path: &Path) -> impl Fn(git2::Error) -> GitError + '_ {
    move |e| GitError::Local {
        operation: op,
        path: path.to_owned(),
        message: e.message().to_owned(),
    }
}

fn io_error(op: Operation, path: &Path) -> impl Fn(io::Error) -> GitError + '_ {
    move |source| GitError::Io {
        operation: op,
        path: path.to_owned(),
        source,
    }
}

/// Looks at the work dir without changing it.
fn inspect(workdir: &Path) -> Result<Found, GitError> {
    let io_err = io_error(Operation::Open, workdir);
    match std::fs::metadata(workdir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::Nothing),
        Err(e) => return Err(io_err(e)),
        Ok(meta) if !meta.is_dir() => return Ok(Found::Foreign("not a directory".to_owned())),
        Ok(_) => {}
    }
    if std::fs::read_dir(workdir)
        .map_err(&io_err)?
        .next()
        .is_none()
    {
        return Ok(Found::Nothing);
    }
    let git_dir = workdir.join(".git");
    if !git_dir.is_dir() {
        return Ok(Found::Foreign(
            "a non-empty directory that is not a git clone".to_owned(),
        ));
    }
    // Read the marker from the config file alone, so that a clone too broken to open can
    // still be recognised as ours.
    let ours = git2::Config::open(&git_dir.join("config"))
        .and_then(|config| config.get_bool(MARKER_KEY))
        .unwrap_or(false);
    let repo = match Repository::open(workdir) {
        Ok(repo) => repo,
        Err(_) if ours => return Ok(Found::BrokenClone),
        Err(e) => {
            return Ok(Found::Foreign(format!(
                "a git repository that cannot be opened: {}",
                e.message()
            )));
        }
    };
    let url = repo
        .find_remote(REMOTE)
        .ok()
        .and_then(|remote| remote.url().map(str::to_owned).ok());
    Ok(Found::Clone { url, ours })
}

/// Empties the work dir, keeping the directory itself (it may be a volume mount). `.git`
/// goes last: if this is interrupted, the marker is still there and the next run can
/// finish the job.
fn clear_dir(workdir: &Path) -> Result<(), GitError> {
    let io_err = io_error(Operation::Clone, workdir);
    let mut git_dir = None;
    for entry in std::fs::read_dir(workdir).map_err(&io_err)? {
        let entry = entry.map_err(&io_err)?;
        let path = entry.path();
        if entry.file_name() == ".git" {
            git_dir = Some(path);
            continue;
        }
        remove_entry(&path)?;
    }
    if let Some(path) = git_dir {
        remove_entry(&path)?;
    }
    Ok(())
}

fn remove_entry(path: &Path) -> Result<(), GitError> {
    let io_err = io_error(Operation::Clone, path);
    // symlink_metadata: never follow a link out of the work dir while deleting.
    let meta = std::fs::symlink_metadata(path).map_err(&io_err)?;
    if meta.is_dir() {
        std::fs::remove_dir_all(path).map_err(&io_err)
    } else {
        std::fs::remove_file(path).map_err(&io_err)
    }
}

/// A clone in three steps (init with the marker, add the remote, fetch and reset), so that
/// the marker exists before anything is downloaded and a failed clone is recognised as ours
/// on the next start.
fn clone_into(
    spec: RemoteSpec,
    workdir: &Path,
    timeouts: GitTimeouts,
) -> Result<Checkout, GitError> {
    let op = Operation::Clone;
    let err = local(op, workdir);
    std::fs::create_dir_all(workdir).map_err(io_error(op, workdir))?;
    let mut init = RepositoryInitOptions::new();
    init.no_reinit(true)
        .external_template(false)
        .initial_head(&format!("refs/heads/{}", spec.branch));
    let repo = Repository::init_opts(workdir, &init).map_err(&err)?;
    repo.config()
        .and_then(|config| config.open_level(ConfigLevel::Local))
        .and_then(|mut config| config.set_bool(MARKER_KEY, true))
        .map_err(&err)?;
    repo.remote_with_fetch(
        REMOTE,
        &spec.url,
        &format!("+refs/heads/{0}:refs/remotes/{REMOTE}/{0}", spec.branch),
    )
    .map_err(&err)?;
    let mut checkout = Checkout {
        repo,
        spec,
        workdir: workdir.to_owned(),
        timeouts,
    };
    checkout.fetch(op)?;
    let head = checkout.reset_to_remote(op)?;
    tracing::info!(remote = %redact_url(&checkout.spec.url), branch = %checkout.spec.branch, head = %head, workdir = %workdir.display(), "cloned");
    Ok(checkout)
}

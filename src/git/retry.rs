//! The commit-and-push loop: when another writer pushed first, take their commit as the new
//! base and apply our change again on top. Bounded, never forced, never drops their commit.

use std::path::{Path, PathBuf};

use super::{Author, Checkout, GitError};

/// Outcome of [`commit_and_push_with_retry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushResult {
    /// `apply` had nothing to do, or its files already matched HEAD.
    NothingToCommit,
    /// Our commit is on the remote branch.
    Pushed { commit: String, attempts: u32 },
}

/// Errors of [`commit_and_push_with_retry`].
#[derive(Debug, thiserror::Error)]
pub enum RetryError<E> {
    /// Sync, commit or push failed for a reason other than a rejected push.
    #[error(transparent)]
    Git(GitError),
    /// The caller's `apply` failed; nothing was committed in that attempt.
    #[error("applying changes: {0}")]
    Apply(#[source] E),
    /// Every attempt's push was rejected (others kept winning the race).
    #[error("push still rejected after {attempts} attempts: {last}")]
    Exhausted { attempts: u32, last: GitError },
    /// The caller's `may_push` said no right before the push; the commit stays local, and the
    /// next sync drops it.
    #[error("push withheld: this replica may no longer write")]
    PushWithheld,
}

impl<E> RetryError<E> {
    /// A short, fixed label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            RetryError::Git(e) => e.metric_label(),
            RetryError::Apply(_) => "apply",
            RetryError::Exhausted { .. } => "rejected_exhausted",
            RetryError::PushWithheld => "withheld",
        }
    }
}

/// Syncs, lets `apply` write its files on the fresh head, commits exactly the paths it
/// returns and pushes; on [`GitError::Rejected`] starts over from a new sync, at most
/// `max_attempts` times (0 counts as 1).
///
/// `apply` gets the work tree and returns the repo-relative paths it wrote or deleted and
/// the commit message, or `None` when there is nothing to do. It runs once per attempt and
/// must compute its files from what is in the work tree then, since the other writer's
/// commit may have changed them.
pub fn commit_and_push_with_retry<E>(
    checkout: &mut Checkout,
    author: &Author,
    max_attempts: u32,
    apply: impl FnMut(&Path) -> Result<Option<(Vec<PathBuf>, String)>, E>,
) -> Result<PushResult, RetryError<E>> {
    commit_and_push_guarded(checkout, author, max_attempts, apply, || true)
}

/// [`commit_and_push_with_retry`] that asks `may_push` right before each push and gives up
/// with [`RetryError::PushWithheld`] on `false`: the last guard of a writer that may lose its
/// right to write (a lost leader election) while it applies and commits.
pub fn commit_and_push_guarded<E>(
    checkout: &mut Checkout,
    author: &Author,
    max_attempts: u32,
    mut apply: impl FnMut(&Path) -> Result<Option<(Vec<PathBuf>, String)>, E>,
    may_push: impl Fn() -> bool,
) -> Result<PushResult, RetryError<E>> {
    let max_attempts = max_attempts.max(1);
    let mut attempt = 0;
    loop {
        attempt += 1;
        // Also drops our own commit of a previous, rejected attempt: it is rebuilt below.
        checkout.sync().map_err(RetryError::Git)?;
        let Some((paths, message)) = apply(checkout.worktree()).map_err(RetryError::Apply)? else {
            return Ok(PushResult::NothingToCommit);
        };
        let Some(commit) = checkout
            .commit(&paths, &message, author)
            .map_err(RetryError::Git)?
        else {
            return Ok(PushResult::NothingToCommit);
        };
        if !may_push() {
            return Err(RetryError::PushWithheld);
        }
        match checkout.push() {
            Ok(()) => {
                return Ok(PushResult::Pushed {
                    commit,
                    attempts: attempt,
                });
            }
            Err(e) if e.is_rejected() && attempt < max_attempts => {
                tracing::warn!(attempt, max_attempts, error = %e, "push rejected; syncing and applying again");
            }
            Err(e) if e.is_rejected() => {
                return Err(RetryError::Exhausted {
                    attempts: attempt,
                    last: e,
                });
            }
            Err(e) => return Err(RetryError::Git(e)),
        }
    }
}

//! The Git shell around the config repo: clone/fetch into a work dir imagelock owns, commit
//! exactly the files it generated, push without ever forcing, and retry on a lost race by
//! applying the change again on the other writer's commit.
//!
//! Blocking (libgit2): the daemon runs these calls in `spawn_blocking`. Every network call
//! has a deadline ([`GitTimeouts`]); remote URLs are redacted in every error and log line.

mod checkout;
mod error;
mod objects;
mod paths;
mod remote;
mod retry;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use checkout::{Checkout, commit_in};
pub use error::{GitError, Operation, redact_url};
pub use objects::{HeadObjects, blob_id};
pub use paths::{MAX_NAME_LEN, MAX_PATH_LEN, check_component, join_repo_path, normalize_repo_path};
pub use retry::{PushResult, RetryError, commit_and_push_guarded, commit_and_push_with_retry};

/// How to authenticate to the remote. Secrets stay in their files and are read on each
/// use, so a rotated secret is picked up without a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitAuth {
    /// Anonymous (public repos, `file://`).
    None,
    /// https: the token is the password; the user name comes from the URL, or is
    /// `x-access-token` (GitHub apps, GitLab and Gitea accept any name with a token).
    TokenFile(PathBuf),
    /// ssh: the user comes from the URL, or is `git`.
    SshKey {
        private_key: PathBuf,
        passphrase_file: Option<PathBuf>,
    },
}

/// The remote repository and branch imagelock follows and writes to.
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteSpec {
    pub url: String,
    pub branch: String,
    pub auth: GitAuth,
}

impl fmt::Debug for RemoteSpec {
    // The URL may carry a token in its userinfo.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteSpec")
            .field("url", &redact_url(&self.url))
            .field("branch", &self.branch)
            .field("auth", &self.auth)
            .finish()
    }
}

/// Author and committer of imagelock's commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author {
    pub name: String,
    pub email: String,
}

/// Deadlines of network calls. `connect` bounds opening a connection; `operation` bounds a
/// whole fetch or push (and any single stalled socket read or write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GitTimeouts {
    pub connect: Duration,
    pub operation: Duration,
}

impl Default for GitTimeouts {
    fn default() -> Self {
        GitTimeouts {
            connect: Duration::from_secs(10),
            operation: Duration::from_secs(120),
        }
    }
}

/// Result of [`Checkout::sync`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncOutcome {
    /// The commit now checked out (hex object id).
    pub head: String,
    /// The commit checked out before, if any.
    pub previous: Option<String>,
    /// Whether `head` differs from `previous`.
    pub moved: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkout_can_move_to_a_blocking_thread() {
        fn assert_send<T: Send + 'static>() {}
        assert_send::<Checkout>();
        assert_send::<GitError>();
    }

    #[test]
    fn remote_spec_debug_redacts_the_url() {
        let spec = RemoteSpec {
            url: "https://bot:tok@host/r.git".to_owned(),
            branch: "main".to_owned(),
            auth: GitAuth::None,
        };
        let text = format!("{spec:?}");
        assert!(text.contains("https://***@host/r.git"), "{text}");
        assert!(!text.contains("tok"), "{text}");
    }

    #[test]
    fn default_timeouts() {
        let t = GitTimeouts::default();
        assert_eq!(
            (t.connect, t.operation),
            (Duration::from_secs(10), Duration::from_secs(120))
        );
    }
}

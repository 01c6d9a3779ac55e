//! Errors of the Git shell. Every variant says which operation failed and where, with the
//! remote URL redacted: a token embedded in a URL must never reach a log line or a status page.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The Git step that failed; part of every error message and of the metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Open,
    Clone,
    Fetch,
    Reset,
    Commit,
    Push,
    Diff,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Open => "open",
            Operation::Clone => "clone",
            Operation::Fetch => "fetch",
            Operation::Reset => "reset",
            Operation::Commit => "commit",
            Operation::Push => "push",
            Operation::Diff => "diff",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of [`Checkout`](super::Checkout). `url` fields are always redacted (see
/// [`redact_url`]); messages coming from libgit2 are scrubbed of the URL's userinfo too.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// A network step failed (unreachable host, protocol error, missing repository...).
    #[error("git {operation} {url}: {message}")]
    Remote {
        operation: Operation,
        url: String,
        message: String,
    },
    /// The server (or libgit2's fast-forward check) refused our update. Never forced over:
    /// the caller syncs and applies its change again on top of the new head.
    #[error("git push {url}: rejected: {reason}")]
    Rejected { url: String, reason: String },
    /// The operation ran past its deadline ([`GitTimeouts`](super::GitTimeouts)).
    #[error("git {operation} {url}: timed out after {after:?}")]
    Timeout {
        operation: Operation,
        url: String,
        after: Duration,
    },
    /// Credentials missing, unreadable or refused by the server.
    #[error("git {operation} {url}: authentication failed: {message}")]
    Auth {
        operation: Operation,
        url: String,
        message: String,
    },
    /// The configured branch does not exist on the remote.
    #[error("git {operation} {url}: branch {branch:?} not found on the remote")]
    BranchNotFound {
        operation: Operation,
        url: String,
        branch: String,
    },
    /// The configured branch name is not a valid Git branch name.
    #[error("invalid branch name {branch:?} for {url}")]
    InvalidBranch { url: String, branch: String },
    /// The work dir holds something imagelock did not make; it is never removed.
    #[error(
        "work dir {path} is not an imagelock clone of this remote ({what}); refusing to touch it"
    )]
    WorkdirNotOurs { path: PathBuf, what: String },
    /// A caller-supplied path is absolute, escapes the work tree, or goes through a symlink.
    #[error("invalid repository path {path:?}: {reason}")]
    InvalidPath { path: PathBuf, reason: &'static str },
    /// A revision given to [`Checkout::changed_paths`](super::Checkout::changed_paths) does
    /// not name a commit.
    #[error("git {operation}: unknown revision {rev:?}: {message}")]
    UnknownRevision {
        operation: Operation,
        rev: String,
        message: String,
    },
    /// A local repository step failed (index, objects, refs, checkout).
    #[error("git {operation} in {path}: {message}")]
    Local {
        operation: Operation,
        path: PathBuf,
        message: String,
    },
    /// A file system step on the work dir failed.
    #[error("git {operation} in {path}: {source}")]
    Io {
        operation: Operation,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl GitError {
    /// A short, fixed label for metrics (`imagelock_git_errors_total{kind="..."}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            GitError::Remote { .. } => "remote",
            GitError::Rejected { .. } => "rejected",
            GitError::Timeout { .. } => "timeout",
            GitError::Auth { .. } => "auth",
            GitError::BranchNotFound { .. } => "branch_not_found",
            GitError::InvalidBranch { .. } => "invalid_branch",
            GitError::WorkdirNotOurs { .. } => "workdir_not_ours",
            GitError::InvalidPath { .. } => "invalid_path",
            GitError::UnknownRevision { .. } => "unknown_revision",
            GitError::Local { .. } => "local",
            GitError::Io { .. } => "io",
        }
    }

    /// True when a push was refused (non-fast-forward or a server-side rejection); the
    /// retry loop then syncs and tries again.
    pub fn is_rejected(&self) -> bool {
        matches!(self, GitError::Rejected { .. })
    }

    /// The operation that failed, where known.
    pub fn operation(&self) -> Option<Operation> {
        match self {
            GitError::Remote { operation, .. }
            | GitError::Timeout { operation, .. }
            | GitError::Auth { operation, .. }
            | GitError::BranchNotFound { operation, .. }
            | GitError::UnknownRevision { operation, .. }
            | GitError::Local { operation, .. }
            | GitError::Io { operation, .. } => Some(*operation),
            GitError::Rejected { .. } => Some(Operation::Push),
            GitError::InvalidBranch { .. }
            | GitError::WorkdirNotOurs { .. }
            | GitError::InvalidPath { .. } => None,
        }
    }
}

/// Replaces the userinfo of a URL (`https://user:token@host/...`) with `***`.
///
/// Only URLs with a scheme carry userinfo that can hold a secret; scp-like addresses
/// (`git@host:org/repo`) can only name a user and are returned unchanged.
pub fn redact_url(url: &str) -> String {
    match userinfo_span(url) {
        Some((start, end)) => format!("{}***{}", &url[..start], &url[end..]),
        None => url.to_owned(),
    }
}

/// Byte range of the userinfo in `scheme://userinfo@host/...`, if any.
fn userinfo_span(url: &str) -> Option<(usize, usize)> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    // The last '@' ends the userinfo: a password may itself contain an (unencoded) '@'.
    let at = rest[..authority_len].rfind('@')?;
    Some((start, start + at))
}

/// Scrubs a message (from libgit2, from the server) of anything that could carry the URL's
/// secret: the raw URL and its userinfo are replaced by their redacted forms.
pub(crate) fn scrub(message: &str, raw_url: &str) -> String {
    let mut out = message.replace(raw_url, &redact_url(raw_url));
    if let Some((start, end)) = userinfo_span(raw_url) {
        let userinfo = &raw_url[start..end];
        // A bare user name (no password) is no secret, and replacing a short word like
        // "git" everywhere would garble the message.
        if userinfo.contains(':') {
            out = out.replace(userinfo, "***");
            if let Some((_, password)) = userinfo.split_once(':')
                && !password.is_empty()
            {
                out = out.replace(password, "***");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_user_and_token() {
        assert_eq!(
            redact_url("https://user:tok@github.com/org/repo.git"),
            "https://***@github.com/org/repo.git"
        );
    }

    #[test]
    fn redacts_user_only() {
        assert_eq!(
            redact_url("ssh://git@github.com/org/repo.git"),
            "ssh://***@github.com/org/repo.git"
        );
        assert_eq!(
            redact_url("https://x-access-token@host"),
            "https://***@host"
        );
    }

    #[test]
    fn redacts_password_with_at_sign() {
        assert_eq!(
            redact_url("https://u:p@ss@host:8443/r?x=a@b"),
            "https://***@host:8443/r?x=a@b"
        );
    }

    #[test]
    fn leaves_urls_without_userinfo() {
        for url in [
            "https://github.com/org/repo.git",
            "file:///srv/git/repo.git",
            "git@github.com:org/repo.git",
            "/srv/git/repo.git",
            "https://host/path@notuserinfo",
            "",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }

    #[test]
    fn scrub_removes_token_anywhere() {
        let raw = "https://bot:s3cr3t@example.com/r.git";
        let msg = format!("failed for {raw}; also s3cr3t and bot:s3cr3t");
        let out = scrub(&msg, raw);
        assert!(!out.contains("s3cr3t"), "{out}");
        assert!(out.contains("https://***@example.com/r.git"), "{out}");
    }

    #[test]
    fn error_text_is_redacted() {
        let err = GitError::Remote {
            operation: Operation::Fetch,
            url: redact_url("https://a:b@h/r"),
            message: "boom".into(),
        };
        assert_eq!(err.to_string(), "git fetch https://***@h/r: boom");
        assert_eq!(err.metric_label(), "remote");
        assert!(!err.is_rejected());
    }
}

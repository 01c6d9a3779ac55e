//! `imagelock serve`: the long-running reconciler.
//!
//! Tasks: the reconcile loop (fetch, resolve what is due, commit and push), the admin server
//! and, for a `file://` repo, a watcher that wakes the loop when the remote changes. All select
//! on one shutdown token; if an essential task ends, the daemon ends instead of running
//! half-alive.

mod admin;
mod reconciler;
mod schedule;
mod status;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch as watch_channel};
use tokio_util::sync::CancellationToken;

pub use schedule::Scheduler;
pub use status::{ImageStatus, Status, TagStatus};

/// The daemon's own configuration (not the config repo's `imagelock.yaml`): merged by figment
/// from defaults, a YAML file, `IMAGELOCK_*` variables and flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DaemonConfig {
    /// Config repo URL: `file://`, `https://` or `ssh://` / `git@host:path`.
    pub repo: String,
    pub branch: String,
    /// Where the daemon keeps its clone.
    pub workdir: PathBuf,
    /// How often to fetch the repo, e.g. `60s`, `5m`.
    pub poll_interval: String,
    /// https token for the repo, read on each use so a rotated Secret takes effect.
    pub git_token_file: Option<PathBuf>,
    pub git_ssh_key: Option<PathBuf>,
    pub git_ssh_passphrase_file: Option<PathBuf>,
    /// Docker config.json with registry credentials.
    pub registry_config: Option<PathBuf>,
    /// Registry hosts reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Admin endpoints: /healthz, /readyz, /status.
    pub admin_listen: SocketAddr,
    /// Push attempts before a pass gives up (each after a fetch and a rebuild of the locks).
    pub push_attempts: u32,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            repo: String::new(),
            branch: "main".into(),
            workdir: PathBuf::from("/var/lib/imagelock/checkout"),
            poll_interval: "60s".into(),
            git_token_file: None,
            git_ssh_key: None,
            git_ssh_passphrase_file: None,
            registry_config: None,
            insecure_registries: Vec::new(),
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 8081)),
            push_attempts: 5,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("invalid daemon configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin server failed: {0}")]
    Admin(std::io::Error),
    #[error("cannot watch {path}: {message}")]
    Watch { path: PathBuf, message: String },
    #[error("the {0} task ended unexpectedly")]
    TaskEnded(&'static str),
}

impl DaemonError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            DaemonError::Config(_) => "config",
            DaemonError::Listen { .. } => "listen",
            DaemonError::Admin(_) => "admin",
            DaemonError::Watch { .. } => "watch",
            DaemonError::TaskEnded(_) => "task_ended",
        }
    }
}

impl DaemonConfig {
    pub fn poll_interval(&self) -> Result<Duration, DaemonError> {
        humantime::parse_duration(&self.poll_interval)
            .map_err(|e| DaemonError::Config(format!("pollInterval {:?}: {e}", self.poll_interval)))
    }

    fn validate(&self) -> Result<(), DaemonError> {
        if self.repo.is_empty() {
            return Err(DaemonError::Config(
                "no repo: set --repo, IMAGELOCK_REPO or `repo:` in the config file".into(),
            ));
        }
        if self.poll_interval()?.is_zero() {
            return Err(DaemonError::Config(
                "pollInterval must be more than 0s".into(),
            ));
        }
        if self.push_attempts == 0 {
            return Err(DaemonError::Config(
                "pushAttempts must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Why the loop should run a pass now rather than at its next scheduled time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// The remote repo changed (file watch or a Git push hook).
    RepoChanged,
}

/// Runs the daemon until `shutdown` is cancelled or an essential task fails.
pub async fn run(config: DaemonConfig, shutdown: CancellationToken) -> Result<(), DaemonError> {
    config.validate()?;
    let (status_tx, status_rx) = watch_channel::channel(std::sync::Arc::new(Status::default()));
    let (trigger_tx, trigger_rx) = mpsc::channel(16);

    let listener = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: config.admin_listen,
            source,
        })?;
    tracing::info!(addr = %config.admin_listen, "admin endpoints listening");
    let mut admin = tokio::spawn(admin::serve(listener, status_rx, shutdown.clone()));

    // Keep the watcher alive for the daemon's lifetime; dropping it stops the watch.
    let _watcher = match watch::local_repo_path(&config.repo) {
        Some(path) => Some(watch::watch(&path, trigger_tx.clone())?),
        None => None,
    };

    let reconciler = reconciler::Reconciler::new(config, status_tx)?;
    let mut reconcile = tokio::spawn(reconciler.run(trigger_rx, shutdown.clone()));

    let admin_result = |r: Result<std::io::Result<()>, tokio::task::JoinError>, cancelled| match r {
        Ok(Ok(())) if cancelled => Ok(()),
        Ok(Err(e)) => Err(DaemonError::Admin(e)),
        _ => Err(DaemonError::TaskEnded("admin server")),
    };
    let reconcile_result = |r: Result<(), tokio::task::JoinError>, cancelled| match r {
        Ok(()) if cancelled => Ok(()),
        _ => Err(DaemonError::TaskEnded("reconcile loop")),
    };
    let (first, admin_ended) = tokio::select! {
        r = &mut admin => (admin_result(r, shutdown.is_cancelled()), true),
        r = &mut reconcile => (reconcile_result(r, shutdown.is_cancelled()), false),
    };
    // Whatever ended first, the rest stop too, and `run` returns only once they have: the
    // admin port is closed and a commit in flight has finished.
    shutdown.cancel();
    drop(trigger_tx);
    let rest = if admin_ended {
        reconcile_result(reconcile.await, true)
    } else {
        admin_result(admin.await, true)
    };
    first.and(rest)
}

/// Cancels `token` on SIGTERM or Ctrl-C.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        token.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        token.cancel();
    });
}

//! Wakes the reconcile loop when a local (`file://`) config repo changes, instead of waiting
//! for the next poll.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify_debouncer_full::notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer_opt};
use tokio::sync::mpsc;

use super::{DaemonError, Trigger};

pub type RepoWatcher =
    Debouncer<notify_debouncer_full::notify::RecommendedWatcher, RecommendedCache>;

/// The directory of a `file://` URL (or a plain path), if the repo is local.
pub fn local_repo_path(url: &str) -> Option<PathBuf> {
    let path = url.strip_prefix("file://").unwrap_or(url);
    let path = Path::new(path);
    (path.is_absolute() && path.is_dir()).then(|| path.to_path_buf())
}

/// Watches the whole repo directory (refs move by rename, so files alone would miss them).
pub fn watch(path: &Path, triggers: mpsc::Sender<Trigger>) -> Result<RepoWatcher, DaemonError> {
    let error = |e: notify_debouncer_full::notify::Error| DaemonError::Watch {
        path: path.to_owned(),
        message: e.to_string(),
    };
    // A work tree of the repo may hold links committed by anyone: the recursive watch must not
    // follow them (a chain of directory links makes the walk exponential).
    let config = notify_debouncer_full::notify::Config::default().with_follow_symlinks(false);
    let mut debouncer = new_debouncer_opt(
        Duration::from_millis(300),
        None,
        move |result: DebounceEventResult| {
            // Reads are not changes: the daemon's own fetch from the repo opens its files,
            // and waking on that would run pass after pass.
            let changed =
                result.is_ok_and(|events| events.iter().any(|e| is_change(&e.event.kind)));
            if changed {
                // A full channel already holds a wake-up; dropping this one loses nothing.
                let _ = triggers.try_send(Trigger::RepoChanged);
            }
        },
        RecommendedCache::default(),
        config,
    )
    .map_err(error)?;
    debouncer
        .watch(path, RecursiveMode::Recursive)
        .map_err(error)?;
    tracing::info!(path = %path.display(), "watching the local repo for changes");
    Ok(debouncer)
}

/// True for events that change the repo; opening or reading its files is not a change.
pub(crate) fn is_change(kind: &EventKind) -> bool {
    !matches!(kind, EventKind::Access(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify_debouncer_full::notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};

    #[test]
    fn a_chain_of_directory_links_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::create_dir(root.join("d0")).unwrap();
        // Two links per level: followed, 31 levels are 2^31 directories to watch.
        for level in 1..=31 {
            std::fs::create_dir(root.join(format!("d{level}"))).unwrap();
            for link in ["a", "b"] {
                let target = format!("../d{}", level - 1);
                std::os::unix::fs::symlink(target, root.join(format!("d{level}/{link}"))).unwrap();
            }
        }
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (triggers, _rx) = mpsc::channel(1);
            let watched = watch(&root, triggers).map(drop).map_err(|e| e.to_string());
            let _ = done_tx.send(watched);
        });
        let watched = done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("watching a link chain returns at once");
        assert_eq!(watched, Ok(()));
    }

    #[test]
    fn reads_do_not_wake_the_loop() {
        assert!(!is_change(&EventKind::Access(AccessKind::Open(
            AccessMode::Read
        ))));
        assert!(!is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(is_change(&EventKind::Create(CreateKind::File)));
        assert!(is_change(&EventKind::Modify(ModifyKind::Any)));
        assert!(is_change(&EventKind::Any));
    }
}

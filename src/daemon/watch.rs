//! Wakes the reconcile loop when a local (`file://`) config repo changes, instead of waiting
//! for the next poll.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify_debouncer_full::notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
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
    let mut debouncer = new_debouncer(
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

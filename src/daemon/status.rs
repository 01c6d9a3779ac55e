//! What `/status` shows: per image and tag, the last attempt, its result and the next run.
//!
//! The reconcile loop is the only writer; it publishes whole snapshots through a watch
//! channel so readers never wait on it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::reconcile::{Attempt, EntryKey};

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// True once the repo was checked out and its manifests loaded.
    pub ready: bool,
    /// Remote URL, user info removed.
    pub repo: String,
    pub branch: String,
    pub head: Option<String>,
    pub last_sync: Option<DateTime<Utc>>,
    pub last_sync_error: Option<String>,
    pub last_commit: Option<String>,
    pub last_commit_error: Option<String>,
    pub manifest_errors: Vec<String>,
    /// Whether this replica resolves, mirrors and pushes (always, without leader election).
    pub leader: bool,
    /// The leader election Lease, when replicas elect a leader.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseStatus>,
    /// The admission webhook's pins, when the webhook runs and has them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admission: Option<crate::admission::IndexSummary>,
    pub images: Vec<ImageStatus>,
}

/// The leader election as one replica sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseStatus {
    pub name: String,
    pub namespace: String,
    /// This replica's holder identity (its Pod name).
    pub identity: String,
    /// The holder it last saw; `None` while the Lease is free or unknown.
    pub holder: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageStatus {
    pub manifest: PathBuf,
    pub namespace: String,
    pub name: String,
    pub source: String,
    pub next_run: Option<DateTime<Utc>>,
    pub last_attempt: Option<DateTime<Utc>>,
    /// `None` before the first attempt.
    pub success: Option<bool>,
    /// Why the last attempt failed as a whole (for example, listing tags failed).
    pub reason: Option<String>,
    pub tags: BTreeMap<String, TagStatus>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TagStatus {
    pub last_attempt: Option<DateTime<Utc>>,
    pub success: Option<bool>,
    pub reason: Option<String>,
    /// The digest the lock pins now.
    pub digest: Option<String>,
    pub next_run: Option<DateTime<Utc>>,
}

/// Last attempt per entry and tag, kept across passes (an entry not due keeps its last result).
#[derive(Debug, Default)]
pub struct AttemptLog {
    entries: BTreeMap<EntryKey, (DateTime<Utc>, Vec<Attempt>)>,
}

impl AttemptLog {
    pub fn record(&mut self, attempts: Vec<Attempt>, at: DateTime<Utc>) {
        let mut grouped: BTreeMap<EntryKey, Vec<Attempt>> = BTreeMap::new();
        for attempt in attempts {
            grouped
                .entry((attempt.manifest.clone(), attempt.alias.clone()))
                .or_default()
                .push(attempt);
        }
        for (key, attempts) in grouped {
            self.entries.insert(key, (at, attempts));
        }
    }

    /// Fills the attempt fields of `image` from the log.
    pub fn annotate(&self, key: &EntryKey, image: &mut ImageStatus) {
        let Some((at, attempts)) = self.entries.get(key) else {
            return;
        };
        image.last_attempt = Some(*at);
        image.success = Some(attempts.iter().all(|a| a.result.is_ok()));
        for attempt in attempts {
            let Some(tag) = &attempt.tag else {
                image.reason = attempt.result.clone().err();
                continue;
            };
            let status = image.tags.entry(tag.clone()).or_default();
            status.last_attempt = Some(*at);
            status.success = Some(attempt.result.is_ok());
            status.reason = attempt.result.clone().err();
        }
    }

    /// Forgets entries that no longer exist.
    pub fn retain(&mut self, keep: impl Fn(&EntryKey) -> bool) {
        self.entries.retain(|key, _| keep(key));
    }
}

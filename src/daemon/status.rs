//! What `/status` shows: per image and tag, the last attempt, its result and the next run.
//!
//! The reconcile loop is the only writer; it publishes whole snapshots through a watch
//! channel so readers never wait on it. A snapshot's image list sits behind an `Arc` that the
//! loop, the channel and every `/status` answer share: it is built once per publish and never
//! copied. Strings that many entries repeat (manifest path, namespace, failure reasons, pinned
//! digests) are shared `Arc`s too: with 10,000 entries, each copy of the list would be
//! megabytes.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::ser::SerializeMap as _;

use crate::lock::{ImageObservation, TagObservation};
use crate::manifest::ImageSet;
use crate::reconcile::EntryKey;

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
    /// Shared by the snapshots that show the same entries: cloning a `Status` copies none.
    pub images: Arc<[ImageStatus]>,
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

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageStatus {
    /// Shared by the entries of one manifest.
    pub manifest: Arc<Path>,
    pub namespace: Arc<str>,
    pub name: String,
    pub source: String,
    pub next_run: Option<DateTime<Utc>>,
    pub last_attempt: Option<DateTime<Utc>>,
    /// `None` before the first attempt.
    pub success: Option<bool>,
    /// Why the last attempt failed as a whole (for example, listing tags failed).
    pub reason: Option<Arc<str>>,
    pub tags: TagStatuses,
}

/// Per tag, sorted by tag; shown as a JSON object. Most entries follow one or two tags: a
/// vector holds them in one small allocation, where a `BTreeMap` takes a node of eleven.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TagStatuses(pub Vec<(String, TagStatus)>);

impl TagStatuses {
    pub fn get(&self, tag: &str) -> Option<&TagStatus> {
        self.0
            .binary_search_by(|(t, _)| t.as_str().cmp(tag))
            .ok()
            .map(|i| &self.0[i].1)
    }
}

impl Serialize for TagStatuses {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (tag, status) in &self.0 {
            map.serialize_entry(tag, status)?;
        }
        map.end()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TagStatus {
    pub last_attempt: Option<DateTime<Utc>>,
    pub success: Option<bool>,
    pub reason: Option<Arc<str>>,
    /// The digest the lock pins now.
    pub digest: Option<Arc<str>>,
    pub next_run: Option<DateTime<Utc>>,
}

/// An entry's pins: tag -> pinned digest.
pub type Pins = Vec<(String, Arc<str>)>;

/// What `/status` remembers of each entry between passes, by manifest and alias: its last
/// attempt (an entry that was not due keeps the result of its last one) and the pins of the
/// head (read from the lock files once per head).
#[derive(Debug, Default)]
pub struct EntryLog {
    manifests: BTreeMap<PathBuf, BTreeMap<String, Remembered>>,
}

#[derive(Debug, Default)]
struct Remembered {
    attempt: Option<LastAttempt>,
    /// Sorted by tag.
    pins: Pins,
}

#[derive(Debug)]
struct LastAttempt {
    at: DateTime<Utc>,
    /// Why the entry failed as a whole; its tags were not tried.
    reason: Option<Arc<str>>,
    /// Tag -> why it failed (`None`: resolved), sorted by tag.
    tags: Vec<(String, Option<Arc<str>>)>,
}

impl EntryLog {
    /// Records what a pass observed, `at` its time. Entries with nothing to show (no tag
    /// selected) keep their previous attempt.
    pub fn record<'a>(
        &mut self,
        observed: impl IntoIterator<Item = (&'a EntryKey, &'a ImageObservation)>,
        at: DateTime<Utc>,
    ) {
        for ((manifest, alias), observation) in observed {
            let attempt = match &observation.tags {
                Err(reason) => LastAttempt {
                    at,
                    reason: Some(reason.as_str().into()),
                    tags: Vec::new(),
                },
                Ok(tags) if tags.is_empty() => continue,
                Ok(tags) => LastAttempt {
                    at,
                    reason: None,
                    tags: tags
                        .iter()
                        .map(|(tag, t)| {
                            let reason = match t {
                                TagObservation::Resolved(_) => None,
                                TagObservation::Failed(reason) => Some(reason.as_str().into()),
                            };
                            (tag.clone(), reason)
                        })
                        .collect(),
                },
            };
            self.entry(manifest, alias).attempt = Some(attempt);
        }
    }

    /// Replaces every entry's pins (tag -> digest, for the head the lock files were read at).
    pub fn replace_pins(&mut self, pins: impl IntoIterator<Item = (EntryKey, Pins)>) {
        for entries in self.manifests.values_mut() {
            for remembered in entries.values_mut() {
                remembered.pins = Vec::new();
            }
        }
        for ((manifest, alias), mut tags) in pins {
            tags.sort_by(|a, b| a.0.cmp(&b.0));
            self.entry(&manifest, &alias).pins = tags;
        }
        self.forget_empty();
    }

    /// The status of every entry of `sets`, in their order; forgets entries that are gone.
    pub fn images(
        &mut self,
        sets: &[ImageSet],
        next_run: impl Fn(&EntryKey) -> Option<DateTime<Utc>>,
    ) -> Vec<ImageStatus> {
        let mut images = Vec::with_capacity(sets.iter().map(|s| s.images.len()).sum());
        for set in sets {
            let manifest: Arc<Path> = set.path.as_path().into();
            let namespace: Arc<str> = set.namespace.as_str().into();
            let remembered = self.manifests.get(&set.path);
            for spec in &set.images {
                let next_run = next_run(&(set.path.clone(), spec.name.clone()));
                let mut image = ImageStatus {
                    manifest: manifest.clone(),
                    namespace: namespace.clone(),
                    name: spec.name.clone(),
                    source: spec.source.to_string(),
                    next_run,
                    last_attempt: None,
                    success: None,
                    reason: None,
                    tags: TagStatuses::default(),
                };
                if let Some(remembered) = remembered.and_then(|e| e.get(&spec.name)) {
                    remembered.annotate(&mut image);
                }
                images.push(image);
            }
        }
        self.retain(sets);
        images
    }

    fn entry(&mut self, manifest: &Path, alias: &str) -> &mut Remembered {
        self.manifests
            .entry(manifest.to_path_buf())
            .or_default()
            .entry(alias.to_owned())
            .or_default()
    }

    /// Keeps only the entries that `sets` declare.
    fn retain(&mut self, sets: &[ImageSet]) {
        let declared: BTreeMap<&Path, &ImageSet> =
            sets.iter().map(|s| (s.path.as_path(), s)).collect();
        self.manifests.retain(|path, entries| {
            let Some(set) = declared.get(path.as_path()) else {
                return false;
            };
            // A set of the aliases: a manifest may have thousands of entries.
            let aliases: HashSet<&str> = set.images.iter().map(|s| s.name.as_str()).collect();
            entries.retain(|alias, _| aliases.contains(alias.as_str()));
            !entries.is_empty()
        });
    }

    fn forget_empty(&mut self) {
        self.manifests.retain(|_, entries| {
            entries.retain(|_, r| r.attempt.is_some() || !r.pins.is_empty());
            !entries.is_empty()
        });
    }

    /// How many entries are remembered (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.manifests.values().map(BTreeMap::len).sum()
    }
}

impl Remembered {
    /// Fills the attempt and pin fields of `image`; every tag shows the entry's next run.
    fn annotate(&self, image: &mut ImageStatus) {
        let mut tags: Vec<(String, TagStatus)> = self
            .pins
            .iter()
            .map(|(tag, digest)| {
                let status = TagStatus {
                    digest: Some(digest.clone()),
                    ..TagStatus::default()
                };
                (tag.clone(), status)
            })
            .collect();
        if let Some(attempt) = &self.attempt {
            image.last_attempt = Some(attempt.at);
            image.success =
                Some(attempt.reason.is_none() && attempt.tags.iter().all(|t| t.1.is_none()));
            image.reason = attempt.reason.clone();
            for (tag, reason) in &attempt.tags {
                let at = match tags.binary_search_by(|(t, _)| t.cmp(tag)) {
                    Ok(at) => at,
                    Err(at) => {
                        tags.insert(at, (tag.clone(), TagStatus::default()));
                        at
                    }
                };
                let status = &mut tags[at].1;
                status.last_attempt = Some(attempt.at);
                status.success = Some(reason.is_none());
                status.reason = reason.clone();
            }
        }
        for (_, status) in &mut tags {
            status.next_run = image.next_run;
        }
        image.tags = TagStatuses(tags);
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;
    use crate::lock::ResolvedDigest;
    use crate::manifest::mk_image_spec;
    use crate::reference::Digest;

    const DIGEST: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn at(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 21, h, 0, 0).unwrap()
    }

    fn mk_set(aliases: &[&str]) -> ImageSet {
        ImageSet {
            path: PathBuf::from("images/team-a/web.yaml"),
            name: "web".into(),
            namespace: "team-a".into(),
            mirror: false,
            images: aliases
                .iter()
                .map(|a| mk_image_spec(a, &format!("quay.io/company/{a}"), &["1.4", "latest"]))
                .collect(),
        }
    }

    fn key(alias: &str) -> EntryKey {
        (PathBuf::from("images/team-a/web.yaml"), alias.to_owned())
    }

    fn observed(tags: &[(&str, Option<&str>)]) -> ImageObservation {
        let resolved = TagObservation::Resolved(ResolvedDigest {
            digest: DIGEST.parse::<Digest>().unwrap(),
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            platforms: BTreeMap::new(),
        });
        ImageObservation {
            tags: Ok(tags
                .iter()
                .map(|(tag, failed)| {
                    let t = match failed {
                        Some(reason) => TagObservation::Failed((*reason).to_owned()),
                        None => resolved.clone(),
                    };
                    ((*tag).to_owned(), t)
                })
                .collect()),
            pinned: BTreeMap::new(),
            mirror: None,
        }
    }

    #[test]
    fn shows_attempts_and_pins_as_the_json_of_before() {
        let mut log = EntryLog::default();
        log.replace_pins([(key("web"), vec![("latest".to_owned(), DIGEST.into())])]);
        let web = observed(&[("1.4", Some("tag 1.4 not found")), ("latest", None)]);
        log.record([(&key("web"), &web)], at(10));
        let images = log.images(&[mk_set(&["web"])], |_| Some(at(11)));
        assert_eq!(
            serde_json::to_value(&images).unwrap(),
            json!([{
                "manifest": "images/team-a/web.yaml",
                "namespace": "team-a",
                "name": "web",
                "source": "quay.io/company/web",
                "nextRun": "2026-11-21T11:00:00Z",
                "lastAttempt": "2026-11-21T10:00:00Z",
                "success": false,
                "reason": null,
                "tags": {
                    "1.4": {"lastAttempt": "2026-11-21T10:00:00Z", "success": false,
                            "reason": "tag 1.4 not found", "digest": null,
                            "nextRun": "2026-11-21T11:00:00Z"},
                    "latest": {"lastAttempt": "2026-11-21T10:00:00Z", "success": true,
                               "reason": null, "digest": DIGEST,
                               "nextRun": "2026-11-21T11:00:00Z"}
                }
            }])
        );
    }

    #[test]
    fn an_entry_not_attempted_again_keeps_its_last_result() {
        let mut log = EntryLog::default();
        let failed = ImageObservation {
            tags: Err("listing tags: 503".into()),
            pinned: BTreeMap::new(),
            mirror: None,
        };
        log.record([(&key("web"), &failed)], at(10));
        log.record([(&key("api"), &observed(&[("latest", None)]))], at(11));
        let images = log.images(&[mk_set(&["api", "web"])], |_| None);
        let web = &images[1];
        assert_eq!(
            (web.name.as_str(), web.last_attempt, web.success),
            ("web", Some(at(10)), Some(false))
        );
        assert_eq!(web.reason.as_deref(), Some("listing tags: 503"));
        assert!(web.tags.0.is_empty());
        assert_eq!(images[0].tags.get("latest").unwrap().success, Some(true));
    }

    #[test]
    fn new_pins_replace_the_old_and_removed_entries_are_forgotten() {
        let mut log = EntryLog::default();
        log.replace_pins([
            (key("web"), vec![("latest".to_owned(), DIGEST.into())]),
            (key("api"), vec![("latest".to_owned(), DIGEST.into())]),
        ]);
        log.replace_pins([(key("api"), vec![("1.4".to_owned(), DIGEST.into())])]);
        assert_eq!(log.len(), 1, "web has no pins and no attempt left");
        let images = log.images(&[mk_set(&["api"])], |_| None);
        let tags: Vec<&str> = images[0].tags.0.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(tags, ["1.4"]);

        log.record([(&key("web"), &observed(&[("latest", None)]))], at(10));
        log.images(&[mk_set(&["web"])], |_| None);
        assert_eq!(log.len(), 1, "api is no longer declared");
    }

    #[test]
    fn entries_of_a_manifest_share_its_path_and_namespace() {
        let mut log = EntryLog::default();
        let images = log.images(&[mk_set(&["api", "web"])], |_| None);
        assert!(Arc::ptr_eq(&images[0].manifest, &images[1].manifest));
        assert!(Arc::ptr_eq(&images[0].namespace, &images[1].namespace));
    }
}

//! When each image entry is resolved next. Pure: the caller passes the clock.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use crate::manifest::{ImageSet, ImageSpec};
use crate::reconcile::EntryKey;

#[derive(Debug)]
struct Entry {
    /// The spec as last seen, position cleared, so a moved line is not a change.
    spec: ImageSpec,
    next_run: DateTime<Utc>,
}

/// Next-run times per entry. New and changed entries are due at once; unchanged ones follow
/// their cron schedule from their last attempt.
#[derive(Debug, Default)]
pub struct Scheduler {
    entries: BTreeMap<EntryKey, Entry>,
}

impl Scheduler {
    /// Takes in the manifests as they are now. Returns true if any entry was added, changed
    /// or removed.
    pub fn refresh(&mut self, sets: &[ImageSet], now: DateTime<Utc>) -> bool {
        let mut seen = BTreeSet::new();
        let mut changed = false;
        for set in sets {
            for spec in &set.images {
                let key = (set.path.clone(), spec.name.clone());
                let mut spec = spec.clone();
                spec.position = Default::default();
                spec.name_position = Default::default();
                match self.entries.get_mut(&key) {
                    Some(entry) if entry.spec == spec => {}
                    Some(entry) => {
                        entry.spec = spec;
                        entry.next_run = now;
                        changed = true;
                    }
                    None => {
                        self.entries.insert(
                            key.clone(),
                            Entry {
                                spec,
                                next_run: now,
                            },
                        );
                        changed = true;
                    }
                }
                seen.insert(key);
            }
        }
        let before = self.entries.len();
        self.entries.retain(|key, _| seen.contains(key));
        changed || self.entries.len() != before
    }

    /// Entries whose next run has come.
    pub fn due(&self, now: DateTime<Utc>) -> BTreeSet<EntryKey> {
        self.entries
            .iter()
            .filter(|(_, e)| e.next_run <= now)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Records an attempt: the next run follows the entry's schedule from `now`.
    pub fn attempted(&mut self, keys: &BTreeSet<EntryKey>, now: DateTime<Utc>) {
        for key in keys {
            if let Some(entry) = self.entries.get_mut(key) {
                // A schedule that never fires again leaves the entry to manifest changes and hooks.
                entry.next_run = entry
                    .spec
                    .schedule
                    .next_after(now)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC);
            }
        }
    }

    /// Makes the entries that `matches` selects due now (push hooks, manual triggers).
    pub fn trigger(&mut self, matches: impl Fn(&ImageSpec) -> bool, now: DateTime<Utc>) -> usize {
        let mut count = 0;
        for entry in self.entries.values_mut().filter(|e| matches(&e.spec)) {
            entry.next_run = now;
            count += 1;
        }
        count
    }

    pub fn next_run(&self, key: &EntryKey) -> Option<DateTime<Utc>> {
        self.entries.get(key).map(|e| e.next_run)
    }

    /// The earliest next run of any entry.
    pub fn next_wakeup(&self) -> Option<DateTime<Utc>> {
        self.entries.values().map(|e| e.next_run).min()
    }
}

#[cfg(test)]
mod tests {

    use std::path::PathBuf;

    use chrono::TimeZone;

    use super::*;
    use crate::manifest::mk_image_spec;
    use crate::manifest::parse_cron;

    fn mk_set(tags: &[&str], schedule: &str) -> ImageSet {
        ImageSet {
            path: PathBuf::from("images/web.yaml"),
            name: "web".into(),
            namespace: "team-a".into(),
            mirror: false,
            images: vec![ImageSpec {
                schedule: parse_cron(schedule).unwrap(),
                ..mk_image_spec("web", "quay.io/company/web", tags)
            }],
        }
    }

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 21, h, m, 0).unwrap()
    }

    #[test]
    fn new_entries_are_due_then_follow_their_schedule() {
        let mut s = Scheduler::default();
        assert!(s.refresh(&[mk_set(&["latest"], "*/15 * * * *")], at(10, 2)));
        let due = s.due(at(10, 2));
        assert_eq!(due.len(), 1);
        s.attempted(&due, at(10, 2));
        assert!(s.due(at(10, 14)).is_empty());
        assert_eq!(s.next_wakeup(), Some(at(10, 15)));
        assert_eq!(s.due(at(10, 15)).len(), 1);
    }

    #[test]
    fn a_changed_entry_is_due_at_once_an_unchanged_one_is_not() {
        let mut s = Scheduler::default();
        s.refresh(&[mk_set(&["latest"], "0 * * * *")], at(10, 0));
        let due = s.due(at(10, 0));
        s.attempted(&due, at(10, 0));
        let mut moved = mk_set(&["latest"], "0 * * * *");
        moved.images[0].position.line = 40;
        assert!(!s.refresh(&[moved], at(10, 5)));
        assert!(s.due(at(10, 5)).is_empty());
        assert!(s.refresh(&[mk_set(&["latest", "1.4"], "0 * * * *")], at(10, 6)));
        assert_eq!(s.due(at(10, 6)).len(), 1);
    }

    #[test]
    fn removed_entries_are_dropped_and_triggers_make_entries_due() {
        let mut s = Scheduler::default();
        s.refresh(&[mk_set(&["latest"], "0 0 1 1 *")], at(10, 0));
        let due = s.due(at(10, 0));
        s.attempted(&due, at(10, 0));
        assert_eq!(
            s.trigger(|spec| spec.source.repository == "company/web", at(11, 0)),
            1
        );
        assert_eq!(s.due(at(11, 0)).len(), 1);
        assert!(s.refresh(&[], at(11, 1)));
        assert_eq!(s.next_wakeup(), None);
    }
}

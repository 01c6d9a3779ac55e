//! When each image entry is resolved next. Pure: the caller passes the clock.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use crate::manifest::{ImageSet, ImageSpec, Schedule};
use crate::reconcile::EntryKey;

#[derive(Debug)]
struct Entry {
    /// [`ImageSpec::fingerprint`] as last seen: a changed spec is due at once. A copy of the
    /// spec would be hundreds of bytes per entry, for thousands of entries.
    fingerprint: u64,
    schedule: Schedule,
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
                let fingerprint = spec.fingerprint();
                match self.entries.get_mut(&key) {
                    Some(entry) if entry.fingerprint == fingerprint => {}
                    Some(entry) => {
                        *entry = Entry {
                            fingerprint,
                            schedule: spec.schedule.clone(),
                            next_run: now,
                        };
                        changed = true;
                    }
                    None => {
                        self.entries.insert(
                            key.clone(),
                            Entry {
                                fingerprint,
                                schedule: spec.schedule.clone(),
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
                    .schedule
                    .next_after(now)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC);
            }
        }
    }

    /// Makes the entries of `sets` that `matches` selects due now (push hooks, manual
    /// triggers). `sets` are the manifests of the last [`Scheduler::refresh`].
    pub fn trigger(
        &mut self,
        sets: &[ImageSet],
        matches: impl Fn(&ImageSpec) -> bool,
        now: DateTime<Utc>,
    ) -> usize {
        let mut count = 0;
        for set in sets {
            for spec in set.images.iter().filter(|spec| matches(spec)) {
                if let Some(entry) = self.entries.get_mut(&(set.path.clone(), spec.name.clone())) {
                    entry.next_run = now;
                    count += 1;
                }
            }
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
    use crate::manifest::{Pin, Select, TagMatcher, VersionPattern, mk_image_spec, parse_cron};
    use crate::reference::{Digest, ImageRepo};

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
    fn any_change_but_the_position_makes_an_entry_due() {
        let matcher = |exclude: &[&str]| TagMatcher {
            pattern: VersionPattern::parse("v2.13.x").unwrap(),
            allow_prerelease: false,
            select: Select::All,
            exclude: exclude
                .iter()
                .map(|r| regex::Regex::new(r).unwrap())
                .collect(),
        };
        let digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        type Change = Box<dyn Fn(&mut ImageSpec)>;
        let changes: Vec<(&str, Change)> = vec![
            ("name", Box::new(|s| s.name = "web2".into())),
            (
                "source",
                Box::new(|s| s.source = ImageRepo::parse("quay.io/company/api").unwrap()),
            ),
            ("tags", Box::new(|s| s.tags.push("1.4".into()))),
            ("matcher", Box::new(move |s| s.matcher = Some(matcher(&[])))),
            (
                "digests",
                Box::new(move |s| {
                    s.digests
                        .insert(Digest::clone(&digest), vec!["stable".into()]);
                }),
            ),
            (
                "schedule",
                Box::new(|s| s.schedule = parse_cron("5 * * * *").unwrap()),
            ),
            ("keep", Box::new(|s| s.keep = 3)),
            ("pin", Box::new(|s| s.pin = Pin::All(2))),
            (
                "platforms",
                Box::new(|s| s.platforms = vec!["linux/arm64".parse().unwrap()]),
            ),
            ("mirror", Box::new(|s| s.mirror = true)),
        ];
        let mut with_matcher = mk_set(&["latest"], "0 * * * *");
        with_matcher.images[0].matcher = Some(matcher(&[]));
        let mut excluding = with_matcher.clone();
        excluding.images[0].matcher = Some(matcher(&["-debug$"]));
        let mut cases: Vec<(&str, ImageSet, ImageSet)> = vec![("exclude", with_matcher, excluding)];
        for (what, change) in &changes {
            let mut changed = mk_set(&["latest"], "0 * * * *");
            change(&mut changed.images[0]);
            cases.push((what, mk_set(&["latest"], "0 * * * *"), changed));
        }
        for (what, before, after) in cases {
            let mut s = Scheduler::default();
            s.refresh(std::slice::from_ref(&before), at(10, 0));
            let due = s.due(at(10, 0));
            s.attempted(&due, at(10, 0));
            let mut moved = before.clone();
            moved.images[0].position.line += 7;
            moved.images[0].name_position.col += 3;
            assert!(!s.refresh(&[moved], at(10, 1)), "{what}: only moved");
            assert!(s.refresh(&[after], at(10, 2)), "{what}: changed");
            assert_eq!(s.due(at(10, 2)).len(), 1, "{what}: due at once");
        }
    }

    #[test]
    fn removed_entries_are_dropped_and_triggers_make_entries_due() {
        let mut s = Scheduler::default();
        s.refresh(&[mk_set(&["latest"], "0 0 1 1 *")], at(10, 0));
        let due = s.due(at(10, 0));
        s.attempted(&due, at(10, 0));
        let sets = [mk_set(&["latest"], "0 0 1 1 *")];
        assert_eq!(
            s.trigger(
                &sets,
                |spec| spec.source.repository == "company/other",
                at(11, 0)
            ),
            0
        );
        assert_eq!(
            s.trigger(
                &sets,
                |spec| spec.source.repository == "company/web",
                at(11, 0)
            ),
            1
        );
        assert_eq!(s.due(at(11, 0)).len(), 1);
        assert!(s.refresh(&[], at(11, 1)));
        assert_eq!(s.next_wakeup(), None);
    }
}

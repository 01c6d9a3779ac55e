//! Generations: the next lock from the previous one and what the registries answered.
//!
//! Pure: no clock, no network. A tag's generation goes up by one each time the registry shows it
//! at a new digest; older digests move into `history`. `pin:` holds the pin at an earlier
//! generation without forgetting what came later.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};

use super::{HistoryEntry, LockFile, LockedImage, LockedTag};
use crate::manifest::{ImageSet, ImageSpec};
use crate::reference::Digest;

/// What a manifest digest is: enough to write a pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedDigest {
    pub digest: Digest,
    pub media_type: String,
    /// Platform to image manifest digest; for a single-arch image, its own platform.
    pub platforms: BTreeMap<String, Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagObservation {
    Resolved(ResolvedDigest),
    /// This tag could not be resolved; its previous pin (if any) stays.
    Failed(String),
}

/// Tag -> what it points to, sorted by tag, each tag once. Most entries follow a tag or two:
/// a vector holds them in one small allocation, where a `BTreeMap` takes a node of eleven
/// (a kilobyte per entry, for every entry of a pass).
pub type TagObservations = Vec<(String, TagObservation)>;

/// What one resolution pass learned about one image entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageObservation {
    /// The tags the entry selects now and what each points to. `Err` when the entry could not
    /// be resolved at all (a registry down, a tag listing failed): all its pins stay.
    pub tags: Result<TagObservations, String>,
    /// Details of pinned digests that are neither the tag's current digest nor its previous pin.
    pub pinned: BTreeMap<Digest, ResolvedDigest>,
    /// The mirror repository the pins were copied to, when the entry is mirrored.
    pub mirror: Option<String>,
}

/// Something that kept a pin from moving, for status and logs. The lock stays valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub alias: String,
    pub tag: Option<String>,
    pub reason: String,
}

/// Computes the next lock for `set`.
///
/// Entries without an observation keep their previous pins untouched; entries no longer in
/// the manifest are dropped.
pub fn update_lock(
    previous: Option<&LockFile>,
    set: &ImageSet,
    observations: &BTreeMap<String, ImageObservation>,
    now: DateTime<Utc>,
) -> (LockFile, Vec<Problem>) {
    let now = now.to_rfc3339_opts(SecondsFormat::Secs, true);
    let source = set
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut lock = LockFile {
        source,
        images: BTreeMap::new(),
    };
    let mut problems = Vec::new();
    for spec in &set.images {
        let source = spec.source.to_string();
        // A changed source is another image: its old pins say nothing about the new one.
        let prev = previous
            .and_then(|p| p.images.get(&spec.name))
            .filter(|img| img.source == source);
        let image = match observations.get(&spec.name) {
            Some(observation) => update_image(spec, prev, observation, &now, &mut problems),
            None => prev.cloned(),
        };
        if let Some(image) = image {
            lock.images.insert(spec.name.clone(), image);
        }
    }
    (lock, problems)
}

fn update_image(
    spec: &ImageSpec,
    prev: Option<&LockedImage>,
    observation: &ImageObservation,
    now: &str,
    problems: &mut Vec<Problem>,
) -> Option<LockedImage> {
    let tags = match &observation.tags {
        Ok(tags) => tags,
        Err(reason) => {
            problems.push(Problem {
                alias: spec.name.clone(),
                tag: None,
                reason: reason.clone(),
            });
            return prev.cloned();
        }
    };
    let mut image = LockedImage {
        source: spec.source.to_string(),
        mirror: observation.mirror.clone(),
        tags: BTreeMap::new(),
    };
    for (tag, tag_observation) in tags {
        let prev_tag = prev.and_then(|p| p.tags.get(tag));
        let mut problem = |reason: String| {
            problems.push(Problem {
                alias: spec.name.clone(),
                tag: Some(tag.clone()),
                reason,
            })
        };
        let next = match tag_observation {
            TagObservation::Failed(reason) => {
                problem(reason.clone());
                prev_tag.cloned()
            }
            TagObservation::Resolved(current) => {
                let pin = spec.pin.generation_for(tag);
                match next_tag(prev_tag, current, pin, spec.keep, &observation.pinned, now) {
                    Ok(next) => Some(next),
                    Err(reason) => {
                        problem(reason);
                        prev_tag.cloned()
                    }
                }
            }
        };
        if let Some(next) = next {
            image.tags.insert(tag.clone(), next);
        }
    }
    // An entry with nothing pinned yet has no place in the lock.
    (!image.tags.is_empty()).then_some(image)
}

struct Generation {
    number: u32,
    digest: Digest,
    resolved_at: String,
}

fn next_tag(
    prev: Option<&LockedTag>,
    current: &ResolvedDigest,
    pin: Option<u32>,
    keep: u32,
    pinned_details: &BTreeMap<Digest, ResolvedDigest>,
    now: &str,
) -> Result<LockedTag, String> {
    let mut generations: Vec<Generation> = prev
        .map(|p| {
            std::iter::once(Generation {
                number: p.generation,
                digest: p.digest.clone(),
                resolved_at: p.resolved_at.clone(),
            })
            .chain(p.history.iter().map(|h| Generation {
                number: h.generation,
                digest: h.digest.clone(),
                resolved_at: h.resolved_at.clone(),
            }))
            .collect()
        })
        .unwrap_or_default();
    generations.sort_by_key(|g| std::cmp::Reverse(g.number));
    generations.dedup_by_key(|g| g.number);

    // A tag that moves back to an older digest is still a move: compare with the newest only.
    if generations
        .first()
        .is_none_or(|newest| newest.digest != current.digest)
    {
        let number = generations.first().map_or(1, |g| g.number + 1);
        generations.insert(
            0,
            Generation {
                number,
                digest: current.digest.clone(),
                resolved_at: now.to_owned(),
            },
        );
    }

    let top_number = match pin {
        None => generations[0].number,
        Some(wanted) if generations.iter().any(|g| g.number == wanted) => wanted,
        Some(wanted) => {
            let known: Vec<String> = generations.iter().map(|g| g.number.to_string()).collect();
            return Err(format!(
                "pin: generation {wanted} is not in the lock (known generations: {})",
                known.join(", ")
            ));
        }
    };
    let Some(top_index) = generations.iter().position(|g| g.number == top_number) else {
        return Err(format!("generation {top_number} vanished"));
    };
    let top = generations.remove(top_index);

    let (media_type, platforms) = if top.digest == current.digest {
        (current.media_type.clone(), current.platforms.clone())
    } else if let Some(p) = prev.filter(|p| p.digest == top.digest) {
        (p.media_type.clone(), p.platforms.clone())
    } else if let Some(details) = pinned_details.get(&top.digest) {
        (details.media_type.clone(), details.platforms.clone())
    } else {
        return Err(format!(
            "pin: the manifest of generation {top_number} ({}) could not be read",
            top.digest.short()
        ));
    };

    generations.truncate(keep as usize);
    Ok(LockedTag {
        digest: top.digest,
        media_type,
        platforms,
        generation: top.number,
        resolved_at: top.resolved_at,
        pinned: pin.is_some(),
        history: generations
            .into_iter()
            .map(|g| HistoryEntry {
                generation: g.number,
                digest: g.digest,
                resolved_at: g.resolved_at,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use chrono::TimeZone;

    use super::*;
    use crate::manifest::Pin;
    use crate::manifest::mk_image_spec;
    use crate::reference::ImageRepo;

    fn mk_digest(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    fn mk_resolved(c: char) -> ResolvedDigest {
        ResolvedDigest {
            digest: mk_digest(c),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            platforms: BTreeMap::from([("linux/amd64".into(), mk_digest(c))]),
        }
    }

    fn mk_set(pin: Pin, keep: u32) -> ImageSet {
        ImageSet {
            path: PathBuf::from("images/team-a/web.yaml"),
            name: "web".into(),
            namespace: "team-a".into(),
            mirror: false,
            images: vec![ImageSpec {
                keep,
                pin,
                ..mk_image_spec("web", "quay.io/company/web", &["latest"])
            }],
        }
    }

    fn mk_observation(tag: &str, c: char) -> BTreeMap<String, ImageObservation> {
        BTreeMap::from([(
            "web".to_string(),
            ImageObservation {
                tags: Ok(vec![(
                    tag.to_string(),
                    TagObservation::Resolved(mk_resolved(c)),
                )]),
                pinned: BTreeMap::new(),
                mirror: None,
            },
        )])
    }

    fn at(day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, day, 10, 0, 0).unwrap()
    }

    /// Runs the digests through successive passes, one per day.
    fn run(set: &ImageSet, digests: &[char]) -> LockFile {
        let mut lock = None;
        for (day, c) in digests.iter().enumerate() {
            let (next, problems) = update_lock(
                lock.as_ref(),
                set,
                &mk_observation("latest", *c),
                at(day as u32 + 1),
            );
            assert!(problems.is_empty(), "{problems:?}");
            lock = Some(next);
        }
        lock.unwrap()
    }

    #[test]
    fn first_resolution_is_generation_one() {
        let lock = run(&mk_set(Pin::None, 25), &['a']);
        let tag = &lock.images["web"].tags["latest"];
        assert_eq!(tag.generation, 1);
        assert_eq!(tag.digest, mk_digest('a'));
        assert_eq!(tag.resolved_at, "2026-11-01T10:00:00Z");
        assert!(tag.history.is_empty());
        assert_eq!(lock.source, "web.yaml");
    }

    #[test]
    fn unchanged_digest_changes_nothing() {
        let set = mk_set(Pin::None, 25);
        assert_eq!(run(&set, &['a']), run(&set, &['a', 'a', 'a']));
    }

    #[test]
    fn a_moved_tag_bumps_the_generation_and_keeps_history_newest_first() {
        let lock = run(&mk_set(Pin::None, 25), &['a', 'b', 'b', 'c', 'a']);
        let tag = &lock.images["web"].tags["latest"];
        assert_eq!((tag.generation, tag.digest.clone()), (4, mk_digest('a')));
        let history: Vec<(u32, Digest)> = tag
            .history
            .iter()
            .map(|h| (h.generation, h.digest.clone()))
            .collect();
        assert_eq!(
            history,
            vec![
                (3, mk_digest('c')),
                (2, mk_digest('b')),
                (1, mk_digest('a'))
            ]
        );
        // resolvedAt is when the digest was first seen, not when last checked.
        assert_eq!(tag.history[1].resolved_at, "2026-11-02T10:00:00Z");
    }

    #[test]
    fn history_is_capped_by_keep() {
        let lock = run(&mk_set(Pin::None, 2), &['a', 'b', 'c', 'd']);
        let tag = &lock.images["web"].tags["latest"];
        assert_eq!(tag.generation, 4);
        assert_eq!(
            tag.history.iter().map(|h| h.generation).collect::<Vec<_>>(),
            vec![3, 2]
        );
    }

    #[test]
    fn pin_holds_an_older_generation_and_remembers_newer_ones() {
        let unpinned = run(&mk_set(Pin::None, 25), &['a', 'b']);
        let pinned_set = mk_set(Pin::All(1), 25);
        let mut observation = mk_observation("latest", 'c');
        // Without the pinned manifest's details the pin cannot be written.
        let (_, problems) = update_lock(Some(&unpinned), &pinned_set, &observation, at(5));
        assert!(problems[0].reason.contains("generation 1"), "{problems:?}");
        if let Some(web) = observation.get_mut("web") {
            web.pinned.insert(mk_digest('a'), mk_resolved('a'));
        }
        let (pinned, problems) = update_lock(Some(&unpinned), &pinned_set, &observation, at(5));
        assert!(problems.is_empty(), "{problems:?}");
        let tag = &pinned.images["web"].tags["latest"];
        assert!(tag.pinned);
        assert_eq!((tag.generation, tag.digest.clone()), (1, mk_digest('a')));
        // Generation 3 (digest c) was seen while pinned; it waits in history.
        assert_eq!(
            tag.history.iter().map(|h| h.generation).collect::<Vec<_>>(),
            vec![3, 2]
        );

        let (released, _) = update_lock(
            Some(&pinned),
            &mk_set(Pin::None, 25),
            &mk_observation("latest", 'c'),
            at(6),
        );
        let tag = &released.images["web"].tags["latest"];
        assert!(!tag.pinned);
        assert_eq!((tag.generation, tag.digest.clone()), (3, mk_digest('c')));
    }

    #[test]
    fn pin_to_an_unknown_generation_keeps_the_previous_pin_and_says_why() {
        let before = run(&mk_set(Pin::None, 25), &['a', 'b']);
        let (after, problems) = update_lock(
            Some(&before),
            &mk_set(Pin::All(7), 25),
            &mk_observation("latest", 'b'),
            at(9),
        );
        assert_eq!(after, before);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].reason.contains("generation 7"), "{problems:?}");
    }

    #[test]
    fn failures_keep_previous_pins() {
        let before = run(&mk_set(Pin::None, 25), &['a']);
        let failed_tag = BTreeMap::from([(
            "web".to_string(),
            ImageObservation {
                tags: Ok(vec![(
                    "latest".to_string(),
                    TagObservation::Failed("registry down".into()),
                )]),
                pinned: BTreeMap::new(),
                mirror: None,
            },
        )]);
        let (after, problems) =
            update_lock(Some(&before), &mk_set(Pin::None, 25), &failed_tag, at(3));
        assert_eq!(after, before);
        assert_eq!(problems[0].reason, "registry down");

        let failed_image = BTreeMap::from([(
            "web".to_string(),
            ImageObservation {
                tags: Err("listing tags failed".into()),
                pinned: BTreeMap::new(),
                mirror: None,
            },
        )]);
        let (after, problems) =
            update_lock(Some(&before), &mk_set(Pin::None, 25), &failed_image, at(3));
        assert_eq!(after, before);
        assert_eq!(problems[0].tag, None);
    }

    #[test]
    fn unobserved_entries_keep_pins_and_removed_entries_go() {
        let before = run(&mk_set(Pin::None, 25), &['a']);
        let (after, _) = update_lock(
            Some(&before),
            &mk_set(Pin::None, 25),
            &BTreeMap::new(),
            at(3),
        );
        assert_eq!(after, before);

        let mut emptied = mk_set(Pin::None, 25);
        emptied.images.clear();
        let (after, _) = update_lock(Some(&before), &emptied, &BTreeMap::new(), at(3));
        assert!(after.images.is_empty());
    }

    #[test]
    fn a_new_source_starts_over() {
        let before = run(&mk_set(Pin::None, 25), &['a', 'b']);
        let mut moved = mk_set(Pin::None, 25);
        moved.images[0].source = ImageRepo::parse("quay.io/company/web2").unwrap();
        let (after, _) = update_lock(Some(&before), &moved, &mk_observation("latest", 'c'), at(4));
        let tag = &after.images["web"].tags["latest"];
        assert_eq!(tag.generation, 1);
        assert!(tag.history.is_empty());
    }
}

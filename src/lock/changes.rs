//! What changed between two versions of a lock: for commit messages and `plan`.

use std::fmt;

use serde::Serialize;

use super::LockFile;
use crate::reference::Digest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Added,
    Changed,
    Removed,
}

/// One pin that appears, moves or disappears.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PinChange {
    /// Repo-relative path of the lock file.
    pub lock: String,
    pub image: String,
    pub tag: String,
    pub kind: ChangeKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Digest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Digest>,
    /// The generation the tag is at after the change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u32>,
}

impl fmt::Display for PinChange {
    /// `web:latest sha256:abc -> sha256:def`, the line a commit message lists.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = |d: &Option<Digest>| d.as_ref().map_or_else(|| "none".into(), Digest::short);
        write!(
            f,
            "{}:{} {} -> {}",
            self.image,
            self.tag,
            short(&self.from),
            short(&self.to)
        )?;
        if let Some(generation) = self.generation.filter(|_| self.kind != ChangeKind::Removed) {
            write!(f, " (generation {generation})")?;
        }
        Ok(())
    }
}

/// The pin changes from `old` to `new`, sorted.
pub fn diff_locks(
    lock_path: &str,
    old: Option<&LockFile>,
    new: Option<&LockFile>,
) -> Vec<PinChange> {
    let pins = |lock: Option<&LockFile>| {
        lock.into_iter()
            .flat_map(|l| l.images.iter())
            .flat_map(|(image, locked)| {
                locked.tags.iter().map(move |(tag, t)| {
                    (
                        (image.clone(), tag.clone()),
                        (t.digest.clone(), t.generation),
                    )
                })
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let (old, new) = (pins(old), pins(new));
    let mut changes = Vec::new();
    for (key, (digest, generation)) in &new {
        let kind = match old.get(key) {
            None => ChangeKind::Added,
            Some((old_digest, _)) if old_digest != digest => ChangeKind::Changed,
            Some(_) => continue,
        };
        changes.push(PinChange {
            lock: lock_path.to_owned(),
            image: key.0.clone(),
            tag: key.1.clone(),
            kind,
            from: old.get(key).map(|(d, _)| d.clone()),
            to: Some(digest.clone()),
            generation: Some(*generation),
        });
    }
    for (key, (digest, _)) in &old {
        if !new.contains_key(key) {
            changes.push(PinChange {
                lock: lock_path.to_owned(),
                image: key.0.clone(),
                tag: key.1.clone(),
                kind: ChangeKind::Removed,
                from: Some(digest.clone()),
                to: None,
                generation: None,
            });
        }
    }
    changes.sort();
    changes
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::lock::{LockedImage, LockedTag};

    fn mk_lock(tags: &[(&str, char, u32)]) -> LockFile {
        let tags = tags
            .iter()
            .map(|(tag, c, generation)| {
                (
                    tag.to_string(),
                    LockedTag {
                        digest: format!("sha256:{}", c.to_string().repeat(64))
                            .parse()
                            .unwrap(),
                        media_type: "m".into(),
                        platforms: BTreeMap::new(),
                        generation: *generation,
                        resolved_at: "t".into(),
                        pinned: false,
                        history: vec![],
                    },
                )
            })
            .collect();
        LockFile {
            source: "web.yaml".into(),
            images: BTreeMap::from([(
                "web".into(),
                LockedImage {
                    source: "quay.io/company/web".into(),
                    mirror: None,
                    tags,
                },
            )]),
        }
    }

    #[test]
    fn lists_added_changed_and_removed_pins() {
        let old = mk_lock(&[("latest", 'a', 1), ("1.4", 'b', 1), ("old", 'c', 1)]);
        let new = mk_lock(&[("latest", 'd', 2), ("1.4", 'b', 1), ("new", 'e', 1)]);
        let changes = diff_locks("images/web.lock.yaml", Some(&old), Some(&new));
        let lines: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            vec![
                "web:latest sha256:aaaaaaaaaaaa -> sha256:dddddddddddd (generation 2)",
                "web:new none -> sha256:eeeeeeeeeeee (generation 1)",
                "web:old sha256:cccccccccccc -> none",
            ]
        );
        assert!(diff_locks("x", Some(&old), Some(&old)).is_empty());
    }
}

//! What the mirror should hold, and how that compares with what it holds: promotion as sets,
//! as the Container Image Promoter computes it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::CopyRequest;
use super::layout::{self, Placement};
use crate::lock::LockFile;
use crate::manifest::{ImageSet, ImageSpec, MirrorTarget};
use crate::reference::Digest;

/// An image entry whose mirror placement could not be computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementError {
    pub manifest: String,
    pub alias: String,
    pub reason: String,
}

/// The placement of a mirrored entry; `None` when the entry is not mirrored.
pub fn placement(
    target: Option<&MirrorTarget>,
    set: &ImageSet,
    spec: &ImageSpec,
) -> Option<Result<Placement, String>> {
    if !spec.mirror {
        return None;
    }
    let Some(target) = target else {
        return Some(Err(
            "mirror: true but imagelock.yaml has no mirror target".into()
        ));
    };
    Some(layout::place(target, &set.namespace, &spec.name).map_err(|e| e.to_string()))
}

/// A copy the locks want, with the entry and source tags it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedCopy {
    pub manifest: std::path::PathBuf,
    pub alias: String,
    /// The lock's tags (source names) pinned to this digest.
    pub source_tags: Vec<String>,
    pub request: CopyRequest,
}

/// One copy per pinned digest of every mirrored entry, with all the tags that point at it.
pub fn wanted(
    target: Option<&MirrorTarget>,
    sets: &[ImageSet],
    locks: &BTreeMap<std::path::PathBuf, LockFile>,
) -> (Vec<WantedCopy>, Vec<PlacementError>) {
    let mut wanted = Vec::new();
    let mut errors = Vec::new();
    for set in sets {
        let Some(lock) = locks.get(&set.path) else {
            continue;
        };
        for spec in &set.images {
            let error = |reason: String| PlacementError {
                manifest: set.path.to_string_lossy().into_owned(),
                alias: spec.name.clone(),
                reason,
            };
            let placement = match placement(target, set, spec) {
                None => continue,
                Some(Ok(placement)) => placement,
                Some(Err(reason)) => {
                    errors.push(error(reason));
                    continue;
                }
            };
            let Some(locked) = lock.images.get(&spec.name) else {
                continue;
            };
            let mut by_digest: BTreeMap<&Digest, (Vec<String>, Vec<String>)> = BTreeMap::new();
            for (tag, pin) in &locked.tags {
                match placement.tag(tag) {
                    Ok(mirrored) => {
                        let entry = by_digest.entry(&pin.digest).or_default();
                        entry.0.push(tag.clone());
                        entry.1.push(mirrored);
                    }
                    Err(e) => errors.push(error(e.to_string())),
                }
            }
            for (digest, (source_tags, tags)) in by_digest {
                wanted.push(WantedCopy {
                    manifest: set.path.clone(),
                    alias: spec.name.clone(),
                    source_tags,
                    request: CopyRequest {
                        source: spec.source.clone(),
                        digest: digest.clone(),
                        destination: placement.repo.clone(),
                        tags,
                        platforms: spec.platforms.clone(),
                    },
                });
            }
        }
    }
    (wanted, errors)
}

/// Where one wanted copy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// The destination has the manifest by digest.
    Present,
    ToCopy,
    /// The source no longer has the digest: it cannot be copied.
    MissingAtSource,
}

/// The three sets.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MirrorPlan {
    pub present: Vec<CopyRequest>,
    pub to_copy: Vec<CopyRequest>,
    pub missing_at_source: Vec<CopyRequest>,
}

impl MirrorPlan {
    pub fn from_standings(standings: impl IntoIterator<Item = (CopyRequest, Standing)>) -> Self {
        let mut plan = MirrorPlan::default();
        for (request, standing) in standings {
            match standing {
                Standing::Present => plan.present.push(request),
                Standing::ToCopy => plan.to_copy.push(request),
                Standing::MissingAtSource => plan.missing_at_source.push(request),
            }
        }
        plan.present.sort();
        plan.to_copy.sort();
        plan.missing_at_source.sort();
        plan
    }

    /// The sets as text, one image a line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut section = |title: &str, requests: &[CopyRequest]| {
            let _ = writeln!(out, "{title} ({}):", requests.len());
            for r in requests {
                let tags = if r.tags.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", r.tags.join(", "))
                };
                let _ = writeln!(
                    out,
                    "  {}@{} -> {}{tags}",
                    r.source,
                    r.digest.short(),
                    r.destination
                );
            }
        };
        section("already present", &self.present);
        section("to copy", &self.to_copy);
        section("missing at source", &self.missing_at_source);
        out
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::lock::{LockedImage, LockedTag};
    use crate::manifest::MirrorLayout;
    use crate::manifest::mk_image_spec;
    use crate::reference::ImageRepo;

    fn mk_digest(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    fn mk_spec(name: &str, mirror: bool) -> ImageSpec {
        ImageSpec {
            mirror,
            ..mk_image_spec(name, "quay.io/company/web", &["latest", "1.4"])
        }
    }

    fn mk_lock(alias: &str, tags: &[(&str, char)]) -> LockFile {
        let tags = tags
            .iter()
            .map(|(tag, c)| {
                (
                    tag.to_string(),
                    LockedTag {
                        digest: mk_digest(*c),
                        media_type: "m".into(),
                        platforms: BTreeMap::new(),
                        generation: 1,
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
                alias.to_string(),
                LockedImage {
                    source: "quay.io/company/web".into(),
                    mirror: None,
                    tags,
                },
            )]),
        }
    }

    fn mk_set(specs: Vec<ImageSpec>) -> ImageSet {
        ImageSet {
            path: PathBuf::from("images/web.yaml"),
            name: "web".into(),
            namespace: "team-a".into(),
            mirror: true,
            images: specs,
        }
    }

    fn target() -> MirrorTarget {
        MirrorTarget {
            registry: "registry.internal".into(),
            layout: MirrorLayout::PerImage {
                template: "{namespace}/{name}".into(),
            },
            position: Default::default(),
        }
    }

    #[test]
    fn one_request_per_digest_with_all_its_tags() {
        let sets = vec![mk_set(vec![mk_spec("web", true)])];
        let locks = BTreeMap::from([(
            PathBuf::from("images/web.yaml"),
            mk_lock("web", &[("latest", 'a'), ("1.4", 'a'), ("1.3", 'b')]),
        )]);
        let (copies, errors) = wanted(Some(&target()), &sets, &locks);
        assert!(errors.is_empty());
        assert_eq!(copies.len(), 2);
        let first = &copies[0];
        assert_eq!(first.request.digest, mk_digest('a'));
        assert_eq!(
            first.request.tags,
            vec!["1.4".to_string(), "latest".to_string()]
        );
        assert_eq!(first.source_tags, first.request.tags);
        assert_eq!(
            first.request.destination.to_string(),
            "registry.internal/team-a/web"
        );
        assert_eq!(first.alias, "web");
    }

    #[test]
    fn unmirrored_entries_want_nothing_and_a_missing_target_is_an_error() {
        let locks = BTreeMap::from([(
            PathBuf::from("images/web.yaml"),
            mk_lock("web", &[("latest", 'a')]),
        )]);
        let sets = vec![mk_set(vec![mk_spec("web", false)])];
        assert_eq!(wanted(Some(&target()), &sets, &locks), (vec![], vec![]));
        let sets = vec![mk_set(vec![mk_spec("web", true)])];
        let (copies, errors) = wanted(None, &sets, &locks);
        assert!(copies.is_empty());
        assert!(errors[0].reason.contains("no mirror target"));
    }

    #[test]
    fn standings_sort_into_three_sets() {
        let request = |c| CopyRequest {
            source: ImageRepo::parse("quay.io/company/web").unwrap(),
            digest: mk_digest(c),
            destination: ImageRepo::parse("registry.internal/team-a/web").unwrap(),
            tags: vec!["latest".into()],
            platforms: vec![],
        };
        let plan = MirrorPlan::from_standings([
            (request('c'), Standing::MissingAtSource),
            (request('a'), Standing::Present),
            (request('b'), Standing::ToCopy),
        ]);
        assert_eq!(plan.present, vec![request('a')]);
        assert_eq!(plan.to_copy, vec![request('b')]);
        assert_eq!(plan.missing_at_source, vec![request('c')]);
        let text = plan.render();
        assert!(text.contains("already present (1):\n  quay.io/company/web@sha256:aaaaaaaaaaaa -> registry.internal/team-a/web [latest]"), "{text}");
    }
}

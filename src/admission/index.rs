//! Every pin of one revision of the config repo, in hash maps, for answers from memory.
//!
//! The reconcile loop is the only writer: it builds a whole new [`PinIndex`] from its checkout
//! after each pass and swaps it into the [`IndexHandle`]. A request loads the handle once and
//! answers from that one snapshot, so it sees the old pins or the new ones, never a mix.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use serde::Serialize;

use super::AdmissionError;
use crate::lock::{self, LockError, LockFile};
use crate::manifest::{self, AdmissionMode, AdmissionSettings, ImageSet, LoadedRepo};
use crate::reference::ImageRepo;

/// The tag a bare alias (`image: web`) or a bare name (`image: nginx`) stands for.
pub const DEFAULT_TAG: &str = "latest";

/// The pins and namespace modes of one revision of the config repo.
///
/// Built for tens of thousands of pins: the maps share the strings of `sets` (`Arc`s, not
/// copies), and the tags of an alias or a source are a sorted slice rather than a map of
/// their own (most have one or two).
#[derive(Debug, Default)]
pub struct PinIndex {
    /// The config repo commit the index was built from, when known.
    revision: Option<String>,
    settings: AdmissionSettings,
    /// namespace -> alias -> pins.
    aliases: HashMap<Arc<str>, HashMap<Arc<str>, AliasPins>>,
    /// source repository -> its pinned tags, sorted by tag.
    sources: HashMap<Arc<ImageRepo>, Vec<SourcePins>>,
    /// What each manifest contributed, kept so that a manifest that breaks later keeps its
    /// last good pins (see [`PinIndex::build`]).
    sets: BTreeMap<PathBuf, Arc<SetPins>>,
    pinned_tags: usize,
}

/// Tag -> the reference a Pod should run (`<mirror or source>@<digest>`), sorted by tag.
type TagPins = Arc<[(Arc<str>, Arc<str>)]>;

/// The pins one ImageSet manifest contributes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SetPins {
    namespace: Arc<str>,
    images: Vec<ImagePins>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ImagePins {
    alias: Arc<str>,
    source: Option<Arc<ImageRepo>>,
    tags: TagPins,
}

#[derive(Debug)]
struct AliasPins {
    tags: TagPins,
    /// Where in `tags` is the tag `image: <alias>` means: `latest` when pinned, else the only
    /// tag, else none.
    default_tag: Option<usize>,
}

#[derive(Debug)]
struct SourcePins {
    tag: Arc<str>,
    /// The first pin per namespace, preferred for Pods of that namespace (its mirror
    /// repository is the one the namespace's pull secrets are for). The first of all, from
    /// the first manifest (by path) that pins this source and tag, serves other namespaces.
    by_namespace: Vec<(Arc<str>, Arc<str>)>,
}

/// What an image of a Pod resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// A lock pins it: the reference to run.
    Pinned(&'a str),
    /// An alias of the namespace, but which of its tags is meant cannot be told.
    AmbiguousAlias { tags: Vec<&'a str> },
    /// An alias of the namespace whose lock has no pin for this tag.
    UnpinnedAliasTag { tags: Vec<&'a str> },
    /// No lock pins it.
    Unpinned,
}

/// A few figures about an index, for `/status` and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexSummary {
    pub revision: Option<String>,
    pub namespaces: usize,
    pub aliases: usize,
    pub sources: usize,
    pub pinned_tags: usize,
    pub default_mode: String,
}

/// The lock of each manifest of `repo` under `root`, read as the iterator is advanced: one
/// lock in memory at a time, however many manifests there are.
pub fn locks_of<'a>(
    root: &'a Path,
    repo: &'a LoadedRepo,
) -> impl Iterator<Item = (&'a ImageSet, Result<Option<LockFile>, LockError>)> + 'a {
    repo.sets
        .iter()
        .map(move |set| (set, lock::read_beside(root, &set.path)))
}

impl PinIndex {
    /// Builds the index of the checkout at `root` from its loaded manifests: for every valid
    /// ImageSet, the lock beside it. Lock files are the only I/O.
    ///
    /// A manifest with errors is not in `repo.sets`; if `previous` has pins from it, they are
    /// kept (the daemon keeps that manifest's last good lock too), so that a typo in one file
    /// does not unpin a namespace. An invalid `imagelock.yaml` keeps the previous namespace
    /// modes (the defaults at first). Problems are returned as messages for the log.
    pub fn build<'a>(
        locks: impl IntoIterator<Item = (&'a ImageSet, Result<Option<LockFile>, LockError>)>,
        repo: &LoadedRepo,
        revision: Option<String>,
        previous: Option<&PinIndex>,
    ) -> (PinIndex, Vec<String>) {
        let mut problems = Vec::new();
        let mut sets: BTreeMap<PathBuf, Arc<SetPins>> = BTreeMap::new();
        for (set, lock) in locks {
            let lock = match lock {
                Ok(Some(lock)) => lock,
                Ok(None) => continue,
                Err(e) => {
                    problems.push(format!("{e}; its pins are not served until it is fixed"));
                    continue;
                }
            };
            let aliases: Vec<&str> = set.images.iter().map(|spec| spec.name.as_str()).collect();
            sets.insert(
                set.path.clone(),
                Arc::new(set_pins(&set.namespace, &aliases, &lock)),
            );
        }
        if let Some(previous) = previous {
            for diagnostic in &repo.diagnostics {
                if sets.contains_key(&diagnostic.path) {
                    continue;
                }
                if let Some(kept) = previous.sets.get(&diagnostic.path) {
                    sets.insert(diagnostic.path.clone(), kept.clone());
                }
            }
        }
        let settings = match (&repo.config, previous) {
            (Some(config), _) => config.admission.clone(),
            (None, Some(previous)) => {
                problems.push(
                    "imagelock.yaml is invalid; the admission modes of the previous revision stay"
                        .to_owned(),
                );
                previous.settings.clone()
            }
            (None, None) => {
                problems.push(
                    "imagelock.yaml is invalid; every namespace gets the default admission mode (rewrite) until it is fixed"
                        .to_owned(),
                );
                AdmissionSettings::default()
            }
        };
        (PinIndex::from_sets(revision, settings, sets), problems)
    }

    /// Loads the checkout at `root` and builds its index (for tools and tests; the daemon
    /// reuses the repo it has loaded anyway).
    pub fn load(root: &Path) -> Result<(PinIndex, Vec<String>), AdmissionError> {
        let repo = manifest::load_repo(root).map_err(|e| AdmissionError::Load(e.to_string()))?;
        let mut built = PinIndex::build(locks_of(root, &repo), &repo, None, None);
        built
            .1
            .extend(repo.diagnostics.iter().map(ToString::to_string));
        Ok(built)
    }

    fn from_sets(
        revision: Option<String>,
        settings: AdmissionSettings,
        sets: BTreeMap<PathBuf, Arc<SetPins>>,
    ) -> PinIndex {
        let mut aliases: HashMap<Arc<str>, HashMap<Arc<str>, AliasPins>> = HashMap::new();
        let mut sources: HashMap<Arc<ImageRepo>, Vec<SourcePins>> = HashMap::new();
        let mut pinned_tags = 0;
        // In path order: where two manifests claim the same alias, the first one wins, as in
        // `load_repo`.
        for set in sets.values() {
            for image in &set.images {
                pinned_tags += image.tags.len();
                let namespace = aliases.entry(set.namespace.clone()).or_default();
                namespace
                    .entry(image.alias.clone())
                    .or_insert_with(|| AliasPins::new(image.tags.clone()));
                let Some(source) = &image.source else {
                    continue;
                };
                let by_tag = sources.entry(source.clone()).or_default();
                for (tag, target) in image.tags.iter() {
                    let at = match by_tag.binary_search_by(|pins| pins.tag.cmp(tag)) {
                        Ok(at) => at,
                        Err(at) => {
                            let pins = SourcePins {
                                tag: tag.clone(),
                                by_namespace: Vec::new(),
                            };
                            by_tag.insert(at, pins);
                            at
                        }
                    };
                    let pins = &mut by_tag[at];
                    if !pins.by_namespace.iter().any(|(ns, _)| *ns == set.namespace) {
                        pins.by_namespace
                            .push((set.namespace.clone(), target.clone()));
                    }
                }
            }
        }
        for by_tag in sources.values_mut() {
            by_tag.shrink_to_fit();
        }
        PinIndex {
            revision,
            settings,
            aliases,
            sources,
            sets,
            pinned_tags,
        }
    }

    /// The config repo commit this index was built from.
    pub fn revision(&self) -> Option<&str> {
        self.revision.as_deref()
    }

    /// The admission mode of `namespace`.
    pub fn mode_for(&self, namespace: &str) -> AdmissionMode {
        self.settings.mode_for(namespace)
    }

    /// True when `name` is an alias of an ImageSet of `namespace`.
    pub fn is_alias(&self, namespace: &str, name: &str) -> bool {
        self.aliases
            .get(namespace)
            .is_some_and(|aliases| aliases.contains_key(name))
    }

    /// The pin of alias `alias` of `namespace`, for `tag` or (`None`) the alias's default tag.
    /// `None` when `alias` is not an alias of `namespace`.
    pub fn alias(&self, namespace: &str, alias: &str, tag: Option<&str>) -> Option<Lookup<'_>> {
        let pins = self.aliases.get(namespace)?.get(alias)?;
        let found = match tag {
            Some(tag) => pins.tags.binary_search_by(|(t, _)| (**t).cmp(tag)).ok(),
            None if pins.default_tag.is_none() => {
                return Some(Lookup::AmbiguousAlias {
                    tags: pins.sorted_tags(),
                });
            }
            None => pins.default_tag,
        };
        Some(match found {
            Some(at) => Lookup::Pinned(&pins.tags[at].1),
            None => Lookup::UnpinnedAliasTag {
                tags: pins.sorted_tags(),
            },
        })
    }

    /// The pin of `source:tag`, preferring one made by an ImageSet of `namespace`.
    pub fn source(&self, namespace: &str, source: &ImageRepo, tag: &str) -> Lookup<'_> {
        let Some(pins) = self.sources.get(source).and_then(|by_tag| {
            let at = by_tag.binary_search_by(|pins| (*pins.tag).cmp(tag)).ok()?;
            Some(&by_tag[at])
        }) else {
            return Lookup::Unpinned;
        };
        let Some((_, first)) = pins.by_namespace.first() else {
            return Lookup::Unpinned;
        };
        let target = pins
            .by_namespace
            .iter()
            .find(|(ns, _)| **ns == *namespace)
            .map_or(first, |(_, target)| target);
        Lookup::Pinned(target)
    }

    pub fn summary(&self) -> IndexSummary {
        IndexSummary {
            revision: self.revision.clone(),
            namespaces: self.aliases.len(),
            aliases: self.aliases.values().map(HashMap::len).sum(),
            sources: self.sources.len(),
            pinned_tags: self.pinned_tags,
            default_mode: self.settings.default.to_string(),
        }
    }
}

impl AliasPins {
    fn new(tags: TagPins) -> Self {
        let default_tag = match tags.binary_search_by(|(tag, _)| (**tag).cmp(DEFAULT_TAG)) {
            Ok(at) => Some(at),
            Err(_) if tags.len() == 1 => Some(0),
            Err(_) => None,
        };
        AliasPins { tags, default_tag }
    }

    fn sorted_tags(&self) -> Vec<&str> {
        self.tags.iter().map(|(tag, _)| &**tag).collect()
    }
}

/// The pins of the aliases the manifest declares (the manifest says which aliases exist; the
/// lock, what they point to).
fn set_pins(namespace: &str, aliases: &[&str], lock: &LockFile) -> SetPins {
    let images = aliases
        .iter()
        .filter_map(|alias| {
            let locked = lock.images.get(*alias)?;
            let repository = locked.mirror.as_deref().unwrap_or(&locked.source);
            // In tag order: the lock's tags are a sorted map.
            let tags = locked
                .tags
                .iter()
                .map(|(tag, pin)| {
                    let target: Arc<str> = format!("{repository}@{}", pin.digest).into();
                    (Arc::from(tag.as_str()), target)
                })
                .collect();
            Some(ImagePins {
                alias: Arc::from(*alias),
                source: ImageRepo::parse(&locked.source).ok().map(Arc::new),
                tags,
            })
        })
        .collect();
    SetPins {
        namespace: Arc::from(namespace),
        images,
    }
}

/// Where the current [`PinIndex`] lives: one writer swaps it whole, any number of readers load
/// it without waiting. Empty until the first index is stored.
#[derive(Debug, Clone, Default)]
pub struct IndexHandle(Arc<ArcSwapOption<PinIndex>>);

impl IndexHandle {
    pub fn new() -> Self {
        IndexHandle::default()
    }

    /// A handle that already holds `index` (tests, benchmarks).
    pub fn with(index: PinIndex) -> Self {
        let handle = IndexHandle::new();
        handle.store(index);
        handle
    }

    /// The current index, if one was stored. Keep the `Arc` for the whole request.
    pub fn load(&self) -> Option<Arc<PinIndex>> {
        self.0.load_full()
    }

    /// Replaces the index; requests already holding the old one finish with it.
    pub fn store(&self, index: PinIndex) {
        self.0.store(Some(Arc::new(index)));
    }

    pub fn is_loaded(&self) -> bool {
        self.0.load().is_some()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::lock::{LockedImage, LockedTag};
    use crate::reference::Digest;

    pub(crate) fn mk_digest(seed: &str) -> Digest {
        Digest::sha256_of(seed.as_bytes())
    }

    /// `(alias, source, mirror, [(tag, digest seed)])`.
    pub(crate) type MkImage<'a> = (&'a str, &'a str, Option<&'a str>, &'a [(&'a str, &'a str)]);

    pub(crate) fn mk_lock(images: &[MkImage<'_>]) -> LockFile {
        LockFile {
            source: "set.yaml".into(),
            images: images
                .iter()
                .map(|(alias, source, mirror, tags)| {
                    let tags = tags
                        .iter()
                        .map(|(tag, seed)| {
                            (
                                (*tag).to_owned(),
                                LockedTag {
                                    digest: mk_digest(seed),
                                    media_type: "application/vnd.oci.image.index.v1+json".into(),
                                    platforms: BTreeMap::new(),
                                    generation: 1,
                                    resolved_at: "2026-11-20T10:00:00Z".into(),
                                    pinned: false,
                                    history: Vec::new(),
                                },
                            )
                        })
                        .collect();
                    (
                        (*alias).to_owned(),
                        LockedImage {
                            source: (*source).to_owned(),
                            mirror: mirror.map(str::to_owned),
                            tags,
                        },
                    )
                })
                .collect(),
        }
    }

    /// An index from `(manifest path, namespace, lock)` triples, without files.
    pub(crate) fn mk_index(
        settings: AdmissionSettings,
        sets: &[(&str, &str, LockFile)],
    ) -> PinIndex {
        let sets = sets
            .iter()
            .map(|(path, namespace, lock)| {
                let aliases: Vec<&str> = lock.images.keys().map(String::as_str).collect();
                (
                    PathBuf::from(path),
                    Arc::new(set_pins(namespace, &aliases, lock)),
                )
            })
            .collect();
        PinIndex::from_sets(Some("rev".into()), settings, sets)
    }

    fn target(mirror: &str, seed: &str) -> String {
        format!("{mirror}@{}", mk_digest(seed))
    }

    fn web_index() -> PinIndex {
        mk_index(
            AdmissionSettings::default(),
            &[
                (
                    "images/team-a/web.yaml",
                    "team-a",
                    mk_lock(&[
                        (
                            "web",
                            "quay.io/company/web",
                            Some("registry.internal/team-a/web"),
                            &[("latest", "a-latest"), ("1.4", "a-1.4")],
                        ),
                        (
                            "api",
                            "quay.io/company/api",
                            None,
                            &[("v1", "api-v1"), ("v2", "api-v2")],
                        ),
                        (
                            "nginx",
                            "docker.io/library/nginx",
                            None,
                            &[("1.25", "nginx")],
                        ),
                    ]),
                ),
                (
                    "images/team-b/web.yaml",
                    "team-b",
                    mk_lock(&[(
                        "web",
                        "quay.io/company/web",
                        Some("registry.internal/team-b/web"),
                        &[("latest", "b-latest")],
                    )]),
                ),
            ],
        )
    }

    #[test]
    fn aliases_are_per_namespace_with_a_default_tag() {
        let index = web_index();
        assert_eq!(
            index.alias("team-a", "web", None),
            Some(Lookup::Pinned(
                target("registry.internal/team-a/web", "a-latest").as_str()
            ))
        );
        assert_eq!(
            index.alias("team-a", "web", Some("1.4")),
            Some(Lookup::Pinned(
                target("registry.internal/team-a/web", "a-1.4").as_str()
            ))
        );
        // The only tag is the default when there is no `latest`.
        assert_eq!(
            index.alias("team-a", "nginx", None),
            Some(Lookup::Pinned(
                target("docker.io/library/nginx", "nginx").as_str()
            ))
        );
        assert_eq!(
            index.alias("team-a", "api", None),
            Some(Lookup::AmbiguousAlias {
                tags: vec!["v1", "v2"]
            })
        );
        assert_eq!(
            index.alias("team-a", "web", Some("2.0")),
            Some(Lookup::UnpinnedAliasTag {
                tags: vec!["1.4", "latest"]
            })
        );
        assert_eq!(index.alias("team-c", "web", None), None);
        assert!(index.is_alias("team-b", "web"));
        assert!(!index.is_alias("team-b", "api"));
    }

    #[test]
    fn sources_prefer_the_pods_namespace() {
        let index = web_index();
        let web = ImageRepo::parse("quay.io/company/web").unwrap();
        let a = target("registry.internal/team-a/web", "a-latest");
        let b = target("registry.internal/team-b/web", "b-latest");
        assert_eq!(index.source("team-a", &web, "latest"), Lookup::Pinned(&a));
        assert_eq!(index.source("team-b", &web, "latest"), Lookup::Pinned(&b));
        // Elsewhere: the first manifest by path.
        assert_eq!(index.source("team-c", &web, "latest"), Lookup::Pinned(&a));
        assert_eq!(index.source("team-a", &web, "2.0"), Lookup::Unpinned);
        let summary = index.summary();
        assert_eq!(summary.pinned_tags, 6);
        assert_eq!(summary.namespaces, 2);
        assert_eq!(summary.aliases, 4);
        assert_eq!(summary.sources, 3);
    }

    #[test]
    fn handle_swaps_whole_indexes() {
        let handle = IndexHandle::new();
        assert!(!handle.is_loaded());
        assert!(handle.load().is_none());
        handle.store(web_index());
        let held = handle.load().unwrap();
        handle.store(PinIndex::default());
        // A reader keeps the snapshot it loaded.
        assert_eq!(held.summary().pinned_tags, 6);
        assert_eq!(handle.load().unwrap().summary().pinned_tags, 0);
    }

    fn write(root: &Path, path: &str, text: &str) {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    const WEB_SET: &str = "apiVersion: imagelock.dev/v1alpha1\nkind: ImageSet\nmetadata: {name: web, namespace: team-a}\nspec:\n  images:\n    - {name: web, source: quay.io/company/web, tags: [latest]}\n";

    #[test]
    fn builds_from_a_checkout_and_keeps_pins_of_broken_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            root,
            "imagelock.yaml",
            "apiVersion: imagelock.dev/v1alpha1\nkind: Config\nadmission: {namespaces: {team-a: enforce}}\n",
        );
        write(root, "images/team-a/web.yaml", WEB_SET);
        let lock = mk_lock(&[(
            "web",
            "quay.io/company/web",
            Some("registry.internal/team-a/web"),
            &[("latest", "v1")],
        )]);
        write(
            root,
            "images/team-a/web.lock.yaml",
            &crate::lock::render(&lock),
        );
        let (first, problems) = PinIndex::load(root).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(first.mode_for("team-a"), AdmissionMode::Enforce);
        let expected = target("registry.internal/team-a/web", "v1");
        assert_eq!(
            first.alias("team-a", "web", None),
            Some(Lookup::Pinned(expected.as_str()))
        );

        // The manifest breaks and imagelock.yaml too: the last good pins and modes stay.
        write(root, "images/team-a/web.yaml", "kind: ImageSet\nspec: [\n");
        write(root, "imagelock.yaml", "kind: Config\nadmission: 3\n");
        let repo = manifest::load_repo(root).unwrap();
        let (second, problems) = PinIndex::build(locks_of(root, &repo), &repo, None, Some(&first));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(second.mode_for("team-a"), AdmissionMode::Enforce);
        assert_eq!(
            second.alias("team-a", "web", None),
            Some(Lookup::Pinned(expected.as_str()))
        );
        // Without a previous index there is nothing to keep.
        let (fresh, _) = PinIndex::build(locks_of(root, &repo), &repo, None, None);
        assert_eq!(fresh.alias("team-a", "web", None), None);
        assert_eq!(fresh.mode_for("team-a"), AdmissionMode::Rewrite);
    }

    #[test]
    fn a_broken_lock_is_reported_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "images/team-a/web.yaml", WEB_SET);
        write(
            root,
            "images/team-a/web.lock.yaml",
            "apiVersion: v1\nkind: Pod\n",
        );
        let (index, problems) = PinIndex::load(root).unwrap();
        assert_eq!(index.summary().pinned_tags, 0);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("web.lock.yaml"), "{problems:?}");
    }
}

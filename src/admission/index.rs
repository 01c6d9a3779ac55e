//! Every pin of one revision of the config repo, in hash maps, for answers from memory.
//!
//! The pins come from [`crate::pins`], the one derivation the outputs and `/status` use too;
//! this index only lays them out for lookups. The reconcile loop is the only writer: it
//! builds a whole new [`PinIndex`] after each pass and swaps it into the [`IndexHandle`]. A
//! request loads the handle once and answers from that one snapshot, so it sees the old pins
//! or the new ones, never a mix.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use serde::Serialize;

use super::AdmissionError;
use crate::manifest::{AdmissionMode, AdmissionSettings, LoadedRepo};
use crate::pins::{self, CheckoutLocks, Pins};
use crate::reference::ImageRepo;
use crate::tenancy::Tenancy;

/// The tag a bare image name (`image: nginx`) stands for, as for any container runtime.
/// An alias alone means the tag [`crate::pins::alias_tag`] chooses.
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
    /// Its `source:tag` pins serve Pods of every namespace.
    shared: bool,
    images: Vec<ImagePins>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ImagePins {
    alias: Arc<str>,
    source: Arc<ImageRepo>,
    tags: TagPins,
    /// The tag the alias alone means.
    alias_tag: Option<Arc<str>>,
}

#[derive(Debug)]
struct AliasPins {
    tags: TagPins,
    /// The tag `image: <alias>` means ([`crate::pins::alias_tag`]); `None` while nothing is
    /// pinned.
    alias_tag: Option<Arc<str>>,
}

#[derive(Debug)]
struct SourcePins {
    tag: Arc<str>,
    /// The first pin per namespace (by manifest path): Pods of that namespace get it.
    by_namespace: Vec<(Arc<str>, Arc<str>)>,
    /// The first pin of a shared set: Pods of a namespace without its own pin get it.
    shared: Option<Arc<str>>,
}

/// What an image of a Pod resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// A lock pins it: the reference to run.
    Pinned(&'a str),
    /// An alias of the namespace without a pin for the tag meant (the one named, or the
    /// one the alias alone means, then given as `alias_tag`; `None` there while the alias
    /// has no tag yet), and what is pinned.
    UnpinnedAliasTag {
        alias_tag: Option<&'a str>,
        tags: Vec<&'a str>,
    },
    /// No pin its namespace or a shared set declares.
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

impl PinIndex {
    /// Builds the index from `pins` (of the admitted sets of `repo`).
    ///
    /// A manifest with errors is not in `repo.sets`; if `previous` has pins from it, they are
    /// kept (the daemon keeps that manifest's last good lock too), so that a typo in one file
    /// does not unpin a namespace. A manifest refused by tenancy is no such diagnostic: it
    /// keeps nothing. An invalid `imagelock.yaml` keeps the previous namespace modes (the
    /// defaults at first). Problems are returned as messages for the log.
    pub fn build(
        pins: &Pins,
        repo: &LoadedRepo,
        revision: Option<String>,
        previous: Option<&PinIndex>,
    ) -> (PinIndex, Vec<String>) {
        let mut problems = Vec::new();
        let mut sets: BTreeMap<PathBuf, Arc<SetPins>> = pins
            .sets
            .iter()
            .map(|set| (set.manifest.clone(), Arc::new(SetPins::from(set))))
            .collect();
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

    /// Loads the checkout at `root` as the operator's `tenancy` admits it, its lock files
    /// as they are, and builds its index (for tools and tests; the daemon reads the locks it
    /// verified).
    pub fn load_admitted(
        root: &Path,
        tenancy: &Tenancy,
    ) -> Result<(PinIndex, Vec<String>), AdmissionError> {
        let repo = pins::load(root, tenancy).map_err(|e| AdmissionError::Load(e.to_string()))?;
        let read = pins::read(root, &repo, &CheckoutLocks);
        let (index, mut problems) = PinIndex::build(&read.pins, &repo, None, None);
        problems.extend(read.problems);
        problems.extend(repo.all_diagnostics().iter().map(ToString::to_string));
        Ok((index, problems))
    }

    /// [`PinIndex::load_admitted`] for one team (no tenancy configured).
    pub fn load(root: &Path) -> Result<(PinIndex, Vec<String>), AdmissionError> {
        PinIndex::load_admitted(root, &Tenancy::default())
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
                    .or_insert_with(|| AliasPins {
                        tags: image.tags.clone(),
                        alias_tag: image.alias_tag.clone(),
                    });
                let by_tag = sources.entry(image.source.clone()).or_default();
                for (tag, target) in image.tags.iter() {
                    let at = match by_tag.binary_search_by(|pins| pins.tag.cmp(tag)) {
                        Ok(at) => at,
                        Err(at) => {
                            let pins = SourcePins {
                                tag: tag.clone(),
                                by_namespace: Vec::new(),
                                shared: None,
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
                    if set.shared && pins.shared.is_none() {
                        pins.shared = Some(target.clone());
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

    /// The pin of alias `alias` of `namespace`, for `tag` or (`None`) the tag the alias alone
    /// means. `None` when `alias` is not an alias of `namespace`.
    pub fn alias(&self, namespace: &str, alias: &str, tag: Option<&str>) -> Option<Lookup<'_>> {
        let pins = self.aliases.get(namespace)?.get(alias)?;
        let meant: Option<&str> = match tag {
            Some(tag) => Some(tag),
            None => pins.alias_tag.as_deref(),
        };
        let found =
            meant.and_then(|meant| pins.tags.binary_search_by(|(t, _)| (**t).cmp(meant)).ok());
        Some(match found {
            Some(at) => Lookup::Pinned(&pins.tags[at].1),
            None => Lookup::UnpinnedAliasTag {
                alias_tag: match tag {
                    Some(_) => None,
                    None => pins.alias_tag.as_deref(),
                },
                tags: pins.sorted_tags(),
            },
        })
    }

    /// The pin of `source:tag` for a Pod of `namespace`: one made by an ImageSet of
    /// `namespace`, else one of a shared set; never another namespace's.
    pub fn source(&self, namespace: &str, source: &ImageRepo, tag: &str) -> Lookup<'_> {
        let Some(pins) = self.sources.get(source).and_then(|by_tag| {
            let at = by_tag.binary_search_by(|pins| (*pins.tag).cmp(tag)).ok()?;
            Some(&by_tag[at])
        }) else {
            return Lookup::Unpinned;
        };
        let own = pins
            .by_namespace
            .iter()
            .find(|(ns, _)| **ns == *namespace)
            .map(|(_, target)| target);
        match own.or(pins.shared.as_ref()) {
            Some(target) => Lookup::Pinned(target),
            None => Lookup::Unpinned,
        }
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
    fn sorted_tags(&self) -> Vec<&str> {
        self.tags.iter().map(|(tag, _)| &**tag).collect()
    }
}

impl From<&pins::SetPins> for SetPins {
    fn from(set: &pins::SetPins) -> Self {
        SetPins {
            namespace: Arc::from(set.namespace.as_str()),
            shared: set.shared,
            images: set
                .aliases
                .iter()
                .map(|alias| ImagePins {
                    alias: Arc::from(alias.alias.as_str()),
                    source: Arc::new(alias.source.clone()),
                    // In tag order: the pins are sorted by tag.
                    tags: alias
                        .pins
                        .iter()
                        .map(|pin| (Arc::from(pin.tag.as_str()), alias.reference(pin).into()))
                        .collect(),
                    alias_tag: alias.alias_tag.as_deref().map(Arc::from),
                })
                .collect(),
        }
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
    use crate::lock::{LockFile, LockedImage, LockedTag};
    use crate::manifest::{self, ImageSet, ImageSpec, MirrorLayout, MirrorTarget, RepoConfig};
    use crate::reference::Digest;

    pub(crate) fn mk_digest(seed: &str) -> Digest {
        Digest::sha256_of(seed.as_bytes())
    }

    /// `(alias, source, mirror, [(tag, digest seed)])`. A tag with an empty seed is one the
    /// manifest follows that has no pin yet.
    pub(crate) type MkImage<'a> = (&'a str, &'a str, Option<&'a str>, &'a [(&'a str, &'a str)]);

    /// A lock and the manifest it was written for: the entries' sources and tags, mirrored
    /// (under `registry.internal/<namespace>/<alias>`) where a mirror is given.
    /// A lock and the entries of the manifest it was written for.
    pub(crate) type MkLock = (Vec<ImageSpec>, LockFile);

    /// `(manifest path, namespace, lock)`.
    pub(crate) type MkSet<'a> = (&'a str, &'a str, MkLock);

    pub(crate) fn mk_lock(images: &[MkImage<'_>]) -> MkLock {
        let specs = images
            .iter()
            .map(|(alias, source, mirror, tags)| {
                let declared: Vec<&str> = tags.iter().map(|(tag, _)| *tag).collect();
                ImageSpec {
                    mirror: mirror.is_some(),
                    ..manifest::mk_image_spec(alias, source, &declared)
                }
            })
            .collect();
        let lock = LockFile {
            source: String::new(),
            images: images
                .iter()
                .map(|(alias, source, mirror, tags)| {
                    let tags = tags
                        .iter()
                        .filter(|(_, seed)| !seed.is_empty())
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
                            source: ImageRepo::parse(source).unwrap().to_string(),
                            mirror: mirror.map(str::to_owned),
                            tags,
                        },
                    )
                })
                .collect(),
        };
        (specs, lock)
    }

    /// An index from `(manifest path, namespace, lock)` triples, without files.
    pub(crate) fn mk_index(settings: AdmissionSettings, sets: &[MkSet<'_>]) -> PinIndex {
        mk_index_with(settings, sets, &Tenancy::default())
    }

    pub(crate) fn mk_index_with(
        settings: AdmissionSettings,
        sets: &[MkSet<'_>],
        tenancy: &Tenancy,
    ) -> PinIndex {
        let target = MirrorTarget {
            registry: "registry.internal".into(),
            layout: MirrorLayout::PerImage {
                template: "{namespace}/{name}".into(),
            },
            position: crate::manifest::Position { line: 1, col: 1 },
        };
        let sets: Vec<(ImageSet, LockFile)> = sets
            .iter()
            .map(|(path, namespace, (specs, lock))| {
                let path = PathBuf::from(path);
                let mut lock = lock.clone();
                lock.source = path.file_name().unwrap().to_string_lossy().into_owned();
                let set = ImageSet {
                    path,
                    name: "set".into(),
                    namespace: (*namespace).to_owned(),
                    mirror: false,
                    images: specs.clone(),
                };
                (set, lock)
            })
            .collect();
        let pins = Pins::build(
            sets.iter().map(|(set, lock)| (set, lock.clone())),
            Some(&target),
            tenancy,
        );
        let repo = LoadedRepo {
            config: Some(RepoConfig {
                admission: settings,
                mirror: Some(target),
                ..RepoConfig::default()
            }),
            sets: Vec::new(),
            diagnostics: Vec::new(),
        };
        PinIndex::build(&pins, &repo, Some("rev".into()), None).0
    }

    fn target(mirror: &str, seed: &str) -> String {
        format!("{mirror}@{}", mk_digest(seed))
    }

    fn web_index() -> PinIndex {
        mk_index(AdmissionSettings::default(), &web_sets())
    }

    fn web_sets() -> Vec<MkSet<'static>> {
        vec![
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
                    (
                        "worker",
                        "quay.io/company/worker",
                        None,
                        &[("1.0", "worker-1.0"), ("latest", "")],
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
        ]
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
        // Without `latest`, the first tag of `tags:`.
        assert_eq!(
            index.alias("team-a", "nginx", None),
            Some(Lookup::Pinned(
                target("docker.io/library/nginx", "nginx").as_str()
            ))
        );
        assert_eq!(
            index.alias("team-a", "api", None),
            Some(Lookup::Pinned(
                target("quay.io/company/api", "api-v1").as_str()
            ))
        );
        assert_eq!(
            index.alias("team-a", "web", Some("2.0")),
            Some(Lookup::UnpinnedAliasTag {
                alias_tag: None,
                tags: vec!["1.4", "latest"]
            })
        );
        // `worker` follows `latest`, which has no pin yet: it means nothing else meanwhile.
        assert_eq!(
            index.alias("team-a", "worker", None),
            Some(Lookup::UnpinnedAliasTag {
                alias_tag: Some("latest"),
                tags: vec!["1.0"]
            })
        );
        assert_eq!(index.alias("team-c", "web", None), None);
        assert!(index.is_alias("team-b", "web"));
        assert!(!index.is_alias("team-b", "api"));
    }

    #[test]
    fn sources_serve_their_own_namespace_and_shared_sets_only() {
        let index = web_index();
        let web = ImageRepo::parse("quay.io/company/web").unwrap();
        let api = ImageRepo::parse("quay.io/company/api").unwrap();
        let a = target("registry.internal/team-a/web", "a-latest");
        let b = target("registry.internal/team-b/web", "b-latest");
        assert_eq!(index.source("team-a", &web, "latest"), Lookup::Pinned(&a));
        assert_eq!(index.source("team-b", &web, "latest"), Lookup::Pinned(&b));
        // Another namespace's pin is never used: nothing is shared by default.
        assert_eq!(index.source("team-c", &web, "latest"), Lookup::Unpinned);
        assert_eq!(index.source("team-b", &api, "v1"), Lookup::Unpinned);
        assert_eq!(index.source("team-a", &web, "2.0"), Lookup::Unpinned);
        let summary = index.summary();
        assert_eq!(summary.pinned_tags, 7);
        assert_eq!(summary.namespaces, 2);
        assert_eq!(summary.aliases, 5);
        assert_eq!(summary.sources, 4);

        // team-b's set shared by the operator: its `source:tag` pins serve namespaces
        // without their own; team-a keeps its own; aliases stay in team-b.
        let shared = crate::tenancy::Tenancy {
            shared_sets: vec!["images/team-b/**".into()],
            ..crate::tenancy::Tenancy::default()
        };
        let index = mk_index_with(AdmissionSettings::default(), &web_sets(), &shared);
        assert_eq!(index.source("team-c", &web, "latest"), Lookup::Pinned(&b));
        assert_eq!(index.source("team-a", &web, "latest"), Lookup::Pinned(&a));
        assert_eq!(index.alias("team-c", "web", None), None);
    }

    /// The index lays out the pins; it must give every Pod what [`Pins::alias`] and
    /// [`Pins::source`] say.
    #[test]
    fn lookups_agree_with_the_pins_module() {
        use crate::pins::tests::{mk_pins_with, mk_tenancy, three_teams};
        let tenancy = mk_tenancy();
        let unshared = Tenancy {
            shared_sets: Vec::new(),
            ..mk_tenancy()
        };
        for tenancy in [tenancy, unshared] {
            let pins = mk_pins_with(&three_teams(), &tenancy);
            let repo = LoadedRepo {
                config: Some(RepoConfig::default()),
                sets: Vec::new(),
                diagnostics: Vec::new(),
            };
            let (index, _) = PinIndex::build(&pins, &repo, None, None);
            let mut checked = 0;
            for namespace in ["team-a", "team-b", "team-c", "platform"] {
                for alias in ["web", "busybox", "nginx"] {
                    let expected = pins
                        .alias(namespace, alias)
                        .and_then(|a| Some(a.reference(a.alias_pin()?)));
                    let got = match index.alias(namespace, alias, None) {
                        Some(Lookup::Pinned(target)) => Some(target.to_owned()),
                        _ => None,
                    };
                    assert_eq!(got, expected, "{namespace} alias {alias}");
                }
                for source in ["quay.io/company/web", "busybox", "nginx", "redis"] {
                    let source = ImageRepo::parse(source).unwrap();
                    for tag in ["latest", "1.36", "1.25"] {
                        let expected = pins
                            .source(namespace, &source, tag)
                            .map(|(alias, pin)| alias.reference(pin));
                        let got = match index.source(namespace, &source, tag) {
                            Lookup::Pinned(target) => Some(target.to_owned()),
                            _ => None,
                        };
                        assert_eq!(got, expected, "{namespace} {source}:{tag}");
                        checked += usize::from(got.is_some());
                    }
                }
            }
            assert!(checked >= 4, "{checked}");
        }
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
        assert_eq!(held.summary().pinned_tags, 7);
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
        let (_, mut lock) = mk_lock(&[("web", "quay.io/company/web", None, &[("latest", "v1")])]);
        lock.source = "web.yaml".into();
        write(
            root,
            "images/team-a/web.lock.yaml",
            &crate::lock::render(&lock),
        );
        let (first, problems) = PinIndex::load(root).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(first.mode_for("team-a"), AdmissionMode::Enforce);
        let expected = target("quay.io/company/web", "v1");
        assert_eq!(
            first.alias("team-a", "web", None),
            Some(Lookup::Pinned(expected.as_str()))
        );

        // The manifest breaks and imagelock.yaml too: the last good pins and modes stay.
        write(root, "images/team-a/web.yaml", "kind: ImageSet\nspec: [\n");
        write(root, "imagelock.yaml", "kind: Config\nadmission: 3\n");
        let repo = pins::load(root, &Tenancy::default()).unwrap();
        let read = pins::read(root, &repo, &CheckoutLocks);
        let (second, problems) = PinIndex::build(&read.pins, &repo, None, Some(&first));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(second.mode_for("team-a"), AdmissionMode::Enforce);
        assert_eq!(
            second.alias("team-a", "web", None),
            Some(Lookup::Pinned(expected.as_str()))
        );
        // Without a previous index there is nothing to keep.
        let (fresh, _) = PinIndex::build(&read.pins, &repo, None, None);
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

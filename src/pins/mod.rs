//! The pins imagelock serves: one derivation for the admission webhook, the outputs
//! (kustomize, Helm values, setters) and `/status`.
//!
//! A pin is derived from three inputs, each trusted for one thing:
//! - the manifest (reviewed repo content) says which aliases exist, their source and which
//!   tags they follow;
//! - the repo's mirror target with the operator's tenancy says where a Pod pulls from (the
//!   source, or the entry's place in the mirror) and which namespaces a pin serves;
//! - the lock says only which digest each tag is held at.
//!
//! A lock's own `source:` and `mirror:` strings never decide where a Pod pulls from: a lock
//! entry that disagrees with its manifest (another source or mirror repository, a tag the
//! entry does not follow, another digest than `digests:` fixes, a lock written for another
//! manifest) serves nothing, and [`stale_aliases`] names it so that the next pass rebuilds it.
//!
//! [`admit`] applies the operator's tenancy to a loaded repo first: a manifest whose path may
//! not declare its namespace is a diagnostic and contributes nothing. An entry whose source
//! its namespace may not use serves nothing either. A Pod gets the pins of its own
//! namespace's sets, and the `source:tag` pins of sets the operator shares ([`Pins::source`]). [`trusted`] decides
//! which version of a lock the daemon may read (the one it wrote or verified).

pub mod trusted;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::lock::{self, LockFile, LockedImage};
use crate::manifest::{
    Diagnostic, ImageSet, ImageSpec, LoadedRepo, ManifestError, MirrorTarget, Position,
    highest_version_first,
};
use crate::mirror::plan::placement;
use crate::reference::{DOCKER_HUB, Digest, ImageRepo};
use crate::tenancy::Tenancy;

pub use trusted::{CheckoutLocks, LockSource, TrustedLocks, VerifiedLocks};

/// The tag `image: <alias>` means when the entry follows it.
pub const LATEST: &str = "latest";

/// One pinned tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub tag: String,
    pub digest: Digest,
}

/// The pins of one alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasPins {
    pub alias: String,
    pub source: ImageRepo,
    /// Where Pods pull the pinned images from: the entry's mirror repository (from the
    /// mirror target and the entry's namespace and name), or its source.
    pub repository: String,
    /// Pinned tags, sorted by tag.
    pub pins: Vec<Pin>,
    /// The tag the alias alone means (see [`alias_tag`]); `None` when nothing is pinned.
    pub alias_tag: Option<String>,
    /// Tags the manifest names (`tags:` and the tags of `digests:`), pinned or not, so that a
    /// marker naming one that failed to resolve is not reported as unknown.
    pub declared: BTreeSet<String>,
}

impl AliasPins {
    /// The pin of the tag the alias alone means (`image: web`, kustomize's alias entry, Helm
    /// values, a setter marker without a tag). `None` while that tag has no pin.
    pub fn alias_pin(&self) -> Option<&Pin> {
        self.pin(self.alias_tag.as_deref()?)
    }

    pub fn pin(&self, tag: &str) -> Option<&Pin> {
        self.pins
            .binary_search_by(|p| p.tag.as_str().cmp(tag))
            .ok()
            .map(|at| &self.pins[at])
    }

    /// `<repository>@<digest>`: what a Pod pulls.
    pub fn reference(&self, pin: &Pin) -> String {
        format!("{}@{}", self.repository, pin.digest)
    }

    /// The names a workload may use for the source: the full name, and for Docker Hub also
    /// the short form (`nginx` for `docker.io/library/nginx`, `bitnami/redis`).
    pub fn source_names(&self) -> Vec<String> {
        let mut names = vec![self.source.to_string()];
        if self.source.registry == DOCKER_HUB {
            let short = self
                .source
                .repository
                .strip_prefix("library/")
                .unwrap_or(&self.source.repository);
            names.push(short.to_owned());
        }
        names
    }
}

/// The pins of one ImageSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetPins {
    /// The manifest, repo-relative.
    pub manifest: PathBuf,
    pub name: String,
    pub namespace: String,
    /// Whether the operator shares this set: its `source:tag` pins serve every namespace
    /// (its aliases stay with its own namespace).
    pub shared: bool,
    /// In manifest order.
    pub aliases: Vec<AliasPins>,
}

/// Every set's pins, sorted by manifest path (the order that breaks ties between sets).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pins {
    pub sets: Vec<SetPins>,
}

/// The tag `image: <alias>` means, the same for the webhook and every output:
/// 1. `latest` when the entry follows it (in `tags:`, or as a tag of `digests:`);
/// 2. otherwise the first tag of `tags:`;
/// 3. an entry without `tags:` (only `match:` or `digests:`) means its highest pinned
///    version (tags that are no versions come last, by name).
///
/// The choice depends on the manifest alone where it can, so a tag that fails to resolve
/// never makes the alias silently mean another one: it means nothing until that tag is
/// pinned.
pub fn alias_tag<'a>(spec: &'a ImageSpec, pinned: &[&'a str]) -> Option<&'a str> {
    let follows_latest = spec.tags.iter().any(|t| t == LATEST)
        || spec.digests.values().flatten().any(|t| t == LATEST);
    if follows_latest {
        return Some(LATEST);
    }
    if let Some(first) = spec.tags.first() {
        return Some(first);
    }
    pinned
        .iter()
        .copied()
        .min_by(|a, b| highest_version_first(a, b))
}

/// Whether the entry selects `tag`: one of its `tags:`, a tag its `match:` pattern selects,
/// or a tag of `digests:`.
fn selects(spec: &ImageSpec, tag: &str) -> bool {
    spec.tags.iter().any(|t| t == tag)
        || spec.digests.values().flatten().any(|t| t == tag)
        || spec
            .matcher
            .as_ref()
            .is_some_and(|m| !m.select(&[tag.to_owned()]).is_empty())
}

/// The digest `digests:` fixes for `tag`, if any.
fn fixed_digest<'s>(spec: &'s ImageSpec, tag: &str) -> Option<&'s Digest> {
    spec.digests
        .iter()
        .find(|(_, tags)| tags.iter().any(|t| t == tag))
        .map(|(digest, _)| digest)
}

/// Where Pods pull the entry's pins from, from the manifest and the mirror target only; the
/// lock's `mirror:` must say the same. `Err` when a mirrored entry has no valid place.
fn repository_of(
    target: Option<&MirrorTarget>,
    set: &ImageSet,
    spec: &ImageSpec,
) -> Result<(String, Option<String>), String> {
    match placement(target, set, spec) {
        None => Ok((spec.source.to_string(), None)),
        Some(Ok(place)) => {
            let name = place.lock_name();
            Ok((name.clone(), Some(name)))
        }
        Some(Err(reason)) => Err(reason),
    }
}

/// Why the lock entry `locked` of `spec` cannot be served as it is, if it cannot: the lock
/// must name the manifest's source and the mirror repository the config gives, and hold
/// only tags the entry selects (at the digest `digests:` fixes, for those).
pub fn disagreement(
    target: Option<&MirrorTarget>,
    set: &ImageSet,
    spec: &ImageSpec,
    locked: &LockedImage,
) -> Option<String> {
    let source = spec.source.to_string();
    if locked.source != source {
        return Some(format!(
            "the lock says source {}, the manifest {source}",
            locked.source
        ));
    }
    let expected_mirror = match repository_of(target, set, spec) {
        Ok((_, mirror)) => mirror,
        Err(reason) => return Some(reason),
    };
    if locked.mirror != expected_mirror {
        return Some(format!(
            "the lock says mirror {}, the configuration {}",
            locked.mirror.as_deref().unwrap_or("(none)"),
            expected_mirror.as_deref().unwrap_or("(none)")
        ));
    }
    for (tag, pin) in &locked.tags {
        if !selects(spec, tag) {
            return Some(format!(
                "the lock pins tag {tag}, which the entry does not follow"
            ));
        }
        if let Some(fixed) = fixed_digest(spec, tag)
            && *fixed != pin.digest
        {
            return Some(format!(
                "the lock pins {tag} at {}, digests: says {}",
                pin.digest.short(),
                fixed.short()
            ));
        }
    }
    None
}

/// Whether `lock` was written for the manifest at `manifest` (its `source:` names the
/// manifest's file): `web.yml` never reads the lock of `web.yaml`.
fn written_for(manifest: &Path, lock: &LockFile) -> bool {
    manifest
        .file_name()
        .is_some_and(|name| name.to_string_lossy() == lock.source)
}

/// The aliases of `set` whose entry in `lock` disagrees with the manifest and the config
/// (see [`disagreement`]), with the reason: the next pass resolves them again and rewrites
/// their entries from the manifest. Entries without a lock entry are not stale: they are
/// new, and due anyway.
pub fn stale_aliases(
    target: Option<&MirrorTarget>,
    set: &ImageSet,
    lock: &LockFile,
) -> Vec<(String, String)> {
    let foreign = !written_for(&set.path, lock);
    set.images
        .iter()
        .filter_map(|spec| {
            let locked = lock.images.get(&spec.name)?;
            let reason = if foreign {
                Some(format!("the lock was written for {}", lock.source))
            } else {
                disagreement(target, set, spec, locked)
            };
            reason.map(|reason| (spec.name.clone(), reason))
        })
        .collect()
}

impl Pins {
    /// The pins of each set and its lock (as the caller trusts it), consumed one at a time so
    /// only one lock is in memory. Sets that `tenancy` does not let declare their namespace
    /// contribute nothing (callers [`admit`] them out first; this is the last guard).
    pub fn build<'a>(
        inputs: impl IntoIterator<Item = (&'a ImageSet, LockFile)>,
        target: Option<&MirrorTarget>,
        tenancy: &Tenancy,
    ) -> Pins {
        let mut sets: Vec<SetPins> = inputs
            .into_iter()
            .filter(|(set, _)| tenancy.may_declare(&set.namespace, &set.path).is_ok())
            .map(|(set, lock)| set_pins(set, &lock, target, tenancy))
            .collect();
        sets.sort_by(|a, b| a.manifest.cmp(&b.manifest));
        Pins { sets }
    }

    /// Namespaces with at least one set, sorted.
    pub fn namespaces(&self) -> BTreeSet<&str> {
        self.sets.iter().map(|s| s.namespace.as_str()).collect()
    }

    /// The sets of `namespace`, in manifest path order.
    pub fn in_namespace<'p>(
        &'p self,
        namespace: &'p str,
    ) -> impl Iterator<Item = &'p SetPins> + 'p {
        self.sets.iter().filter(move |s| s.namespace == namespace)
    }

    /// Alias `alias` of `namespace`: the first set (by path) of that namespace declaring it.
    /// Aliases never cross namespaces, shared sets included.
    pub fn alias<'p>(&'p self, namespace: &'p str, alias: &str) -> Option<&'p AliasPins> {
        self.in_namespace(namespace)
            .flat_map(|s| &s.aliases)
            .find(|a| a.alias == alias)
    }

    /// The pin a Pod of `namespace` gets for `source:tag`, with the alias that pins it: one
    /// made by a set of its own namespace, else one of a shared set (the first by path of
    /// each). A pin of another namespace's set is never used.
    pub fn source(
        &self,
        namespace: &str,
        source: &ImageRepo,
        tag: &str,
    ) -> Option<(&AliasPins, &Pin)> {
        let own = self.sets.iter().filter(|s| s.namespace == namespace);
        first_pin(own, source, tag)
            .or_else(|| first_pin(self.sets.iter().filter(|s| s.shared), source, tag))
    }
}

/// The first pin of `source:tag` among `sets`.
fn first_pin<'p>(
    sets: impl Iterator<Item = &'p SetPins>,
    source: &ImageRepo,
    tag: &str,
) -> Option<(&'p AliasPins, &'p Pin)> {
    sets.flat_map(|s| &s.aliases)
        .filter(|a| a.source == *source)
        .find_map(|a| Some((a, a.pin(tag)?)))
}

fn set_pins(
    set: &ImageSet,
    lock: &LockFile,
    target: Option<&MirrorTarget>,
    tenancy: &Tenancy,
) -> SetPins {
    let ours = written_for(&set.path, lock);
    let aliases = set
        .images
        .iter()
        .map(|spec| {
            let repository = repository_of(target, set, spec);
            // A source the namespace may not use is never resolved; a lock pinning it anyway
            // (written while the daemon was away) is not served either.
            let may_pull = tenancy.may_pull(&set.namespace, &spec.source).is_ok();
            let locked = lock
                .images
                .get(&spec.name)
                .filter(|_| ours && may_pull)
                .filter(|locked| disagreement(target, set, spec, locked).is_none());
            let mut pins: Vec<Pin> = match (locked, &repository) {
                (Some(locked), Ok(_)) => locked
                    .tags
                    .iter()
                    .map(|(tag, pin)| Pin {
                        tag: tag.clone(),
                        digest: pin.digest.clone(),
                    })
                    .collect(),
                _ => Vec::new(),
            };
            pins.sort_by(|a, b| a.tag.cmp(&b.tag));
            let pinned: Vec<&str> = pins.iter().map(|p| p.tag.as_str()).collect();
            let alias_tag = if pins.is_empty() {
                None
            } else {
                alias_tag(spec, &pinned).map(str::to_owned)
            };
            AliasPins {
                alias: spec.name.clone(),
                source: spec.source.clone(),
                repository: repository.map_or_else(|_| spec.source.to_string(), |(r, _)| r),
                pins,
                alias_tag,
                declared: spec
                    .tags
                    .iter()
                    .chain(spec.digests.values().flatten())
                    .cloned()
                    .collect(),
            }
        })
        .collect();
    SetPins {
        manifest: set.path.clone(),
        name: set.name.clone(),
        namespace: set.namespace.clone(),
        shared: tenancy.is_shared(&set.path),
        aliases,
    }
}

/// What [`read`] found in a checkout.
#[derive(Debug, Default)]
pub struct Read {
    pub pins: Pins,
    /// Locks that could not be read, for the log: their pins are not served.
    pub problems: Vec<String>,
    /// Entries (manifest, alias) whose lock entry disagrees with the manifest, with why:
    /// resolve them again now (see [`stale_aliases`]).
    pub stale: Vec<(PathBuf, String, String)>,
}

/// The pins of every admitted set of the checkout at `root`, each lock read from `locks`
/// as the iteration reaches it: one lock in memory at a time, however many manifests.
pub fn read(root: &Path, repo: &Admitted, locks: &dyn LockSource) -> Read {
    let target = repo.config.as_ref().and_then(|c| c.mirror.as_ref());
    let mut problems = Vec::new();
    let mut stale = Vec::new();
    let inputs = repo
        .sets
        .iter()
        .filter_map(|set| match locks.read(root, &set.path) {
            Ok(Some(lock)) => {
                stale.extend(
                    stale_aliases(target, set, &lock)
                        .into_iter()
                        .map(|(alias, why)| (set.path.clone(), alias, why)),
                );
                Some((set, lock))
            }
            Ok(None) => None,
            Err(e) => {
                problems.push(format!("{e}; its pins are not served until it is fixed"));
                None
            }
        });
    let pins = Pins::build(inputs, target, &repo.tenancy);
    Read {
        pins,
        problems,
        stale,
    }
}

/// The manifests of a checkout as the operator's tenancy admits them. Derefs to the loaded
/// repo, whose `sets` are only the admitted ones.
#[derive(Debug)]
pub struct Admitted {
    repo: LoadedRepo,
    /// One per manifest refused by tenancy or for sharing its lock file with another: file
    /// and reason. Kept apart from the repo's diagnostics, which keep a broken manifest's
    /// last good pins; these keep nothing.
    pub refused: Vec<Diagnostic>,
    /// The tenancy it was admitted by.
    pub tenancy: Tenancy,
}

impl std::ops::Deref for Admitted {
    type Target = LoadedRepo;

    fn deref(&self) -> &LoadedRepo {
        &self.repo
    }
}

impl Admitted {
    /// Every problem to report: the repo's diagnostics and the refusals, sorted by path.
    pub fn all_diagnostics(&self) -> Vec<Diagnostic> {
        let mut all: Vec<Diagnostic> = self
            .repo
            .diagnostics
            .iter()
            .chain(&self.refused)
            .cloned()
            .collect();
        all.sort_by(|a, b| (&a.path, a.position).cmp(&(&b.path, b.position)));
        all
    }

    /// The repo-relative paths of the refused manifests.
    pub fn refused_paths(&self) -> BTreeSet<&Path> {
        self.refused.iter().map(|d| d.path.as_path()).collect()
    }
}

/// Loads the checkout at `root` and [`admit`]s its manifests.
pub fn load(root: &Path, tenancy: &Tenancy) -> Result<Admitted, ManifestError> {
    Ok(admit(crate::manifest::load_repo(root)?, tenancy))
}

/// Takes out of `repo.sets` every manifest that may not declare its namespace (tenancy), and
/// every group of manifests whose locks would be one file (`web.yaml` and `web.yml`): none
/// of their pins is served, written or resolved. Then, among the rest, every later
/// definition of an alias in one namespace (a diagnostic that keeps the file's last good
/// pins, see [`LoadedRepo::drop_duplicate_aliases`]).
pub fn admit(mut repo: LoadedRepo, tenancy: &Tenancy) -> Admitted {
    let mut refused = Vec::new();
    let at_start = Position { line: 1, col: 1 };
    repo.sets
        .retain(|set| match tenancy.may_declare(&set.namespace, &set.path) {
            Ok(()) => true,
            Err(e) => {
                refused.push(Diagnostic {
                    path: set.path.clone(),
                    position: at_start,
                    message: format!(
                        "metadata.namespace: {e}; none of its pins is served or written"
                    ),
                });
                false
            }
        });
    // Among the admitted only: a refused manifest cannot take its neighbour down with it.
    let mut by_lock: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    for set in &repo.sets {
        by_lock
            .entry(lock::lock_path_for(&set.path))
            .or_default()
            .push(set.path.clone());
    }
    repo.sets.retain(|set| {
        let lock_path = lock::lock_path_for(&set.path);
        let sharing: Vec<String> = by_lock
            .get(&lock_path)
            .into_iter()
            .flatten()
            .filter(|other| **other != set.path)
            .map(|other| other.display().to_string())
            .collect();
        if sharing.is_empty() {
            return true;
        }
        refused.push(Diagnostic {
            path: set.path.clone(),
            position: at_start,
            message: format!(
                "its lock {} would also be the lock of {}; rename one of them (none of their pins is served or written)",
                lock_path.display(),
                sharing.join(", ")
            ),
        });
        false
    });
    // Among the admitted only, again: a refused manifest cannot shadow another's alias.
    repo.drop_duplicate_aliases();
    refused.sort_by(|a, b| a.path.cmp(&b.path));
    Admitted {
        repo,
        refused,
        tenancy: tenancy.clone(),
    }
}

#[cfg(test)]
pub(crate) mod tests;

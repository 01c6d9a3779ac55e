//! The validated model of the config repo: `imagelock.yaml` and the ImageSet manifests.
//!
//! Everything here has passed validation; code that consumes it never re-checks.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::reference::{Digest, ImageRepo, Platform};

/// Default number of generations kept per tag.
pub const DEFAULT_KEEP: u32 = 25;
/// Default re-resolve cadence.
pub const DEFAULT_SCHEDULE: &str = "*/15 * * * *";

/// A 1-based line and column in a source file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub line: usize,
    pub col: usize,
}

/// A standard 5-field cron schedule, kept with its source text.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub expression: String,
    /// Shared: a parsed cron is kilobytes, and thousands of entries use a few expressions.
    pub cron: std::sync::Arc<croner::Cron>,
}

impl Schedule {
    /// The first run strictly after `after`; `None` for an expression that never fires again.
    pub fn next_after(
        &self,
        after: chrono::DateTime<chrono::Utc>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        // Cron has minute granularity; drop the clock's sub-second part so runs land on the
        // minute (croner keeps it otherwise).
        let after = chrono::Timelike::with_nanosecond(&after, 0).unwrap_or(after);
        self.cron.find_next_occurrence(&after, false).ok()
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.expression == other.expression
    }
}

/// `imagelock.yaml`: settings for the whole config repo. A repo without the file gets
/// `RepoConfig::default()`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepoConfig {
    pub mirror: Option<MirrorTarget>,
    /// Per-registry settings keyed by registry host (`quay.io`, `localhost:5000`); Docker Hub's
    /// aliases (`index.docker.io`) are stored as `docker.io`, as in [`ImageRepo`].
    pub registries: BTreeMap<String, RegistrySettings>,
    pub defaults: Defaults,
    pub git: GitSettings,
    /// `outputs:`: files generated from the locks and committed with them.
    pub outputs: Outputs,
    /// `admission:`: what the webhook does with each namespace's Pods.
    pub admission: AdmissionSettings,
}

/// `admission:` in `imagelock.yaml`:
///
/// ```yaml
/// admission:
///   default: rewrite          # namespaces not listed below (rewrite when omitted)
///   namespaces:
///     team-a: enforce
///     sandbox: audit
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdmissionSettings {
    /// The mode of every namespace not listed in `namespaces`.
    pub default: AdmissionMode,
    /// Per-namespace modes, by namespace name.
    pub namespaces: BTreeMap<String, AdmissionMode>,
}

impl AdmissionSettings {
    /// The mode that applies to Pods of `namespace`.
    pub fn mode_for(&self, namespace: &str) -> AdmissionMode {
        self.namespaces
            .get(namespace)
            .copied()
            .unwrap_or(self.default)
    }
}

/// What the admission webhook does with a namespace's Pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum AdmissionMode {
    /// Rewrite images a lock pins to their digest; leave everything else alone.
    #[default]
    Rewrite,
    /// Rewrite like `Rewrite`, and deny Pods with an image that is neither pinned by a lock
    /// nor already given by digest.
    Enforce,
    /// Change nothing; say in warnings what `Enforce` would rewrite or deny.
    Audit,
    /// Change nothing, say nothing.
    Off,
}

impl AdmissionMode {
    /// Every mode, in the order the documentation lists them.
    pub const ALL: [AdmissionMode; 4] = [
        AdmissionMode::Rewrite,
        AdmissionMode::Enforce,
        AdmissionMode::Audit,
        AdmissionMode::Off,
    ];

    /// The name used in `imagelock.yaml`.
    pub fn as_str(self) -> &'static str {
        match self {
            AdmissionMode::Rewrite => "rewrite",
            AdmissionMode::Enforce => "enforce",
            AdmissionMode::Audit => "audit",
            AdmissionMode::Off => "off",
        }
    }
}

impl std::fmt::Display for AdmissionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AdmissionMode {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AdmissionMode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == s)
            .ok_or(())
    }
}

/// `outputs:` in `imagelock.yaml`. Every path is repo-relative, normalised, free of `..`
/// and `.git`; the two generated directories lie outside `images/` and apart from each other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outputs {
    /// `kustomize.path`: one Component per namespace, `<path>/<namespace>/kustomization.yaml`.
    pub kustomize: Option<OutputPath>,
    /// `helmValues.path`: one values file per ImageSet, `<path>/<namespace>/<set>.yaml`.
    pub helm_values: Option<OutputPath>,
    /// `setters.paths`: files and directories whose marked lines are rewritten. An empty path
    /// is the whole repository.
    pub setters: Vec<OutputPath>,
}

impl Outputs {
    pub fn is_empty(&self) -> bool {
        self.kustomize.is_none() && self.helm_values.is_none() && self.setters.is_empty()
    }
}

/// A repo-relative path from `outputs:`, with where it is written in `imagelock.yaml` for
/// problems found when the outputs are generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputPath {
    pub path: PathBuf,
    pub position: Position,
    /// Its field path, like `outputs.setters.paths[0]`.
    pub field: String,
}

/// Where mirrored images go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorTarget {
    /// Registry host, with port when not the default.
    pub registry: String,
    pub layout: MirrorLayout,
    /// Where `registry:` is written in `imagelock.yaml`, for diagnostics that only the
    /// operator's settings can decide (`mirrorRegistries`).
    pub position: Position,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorLayout {
    /// One repository per image; template over `{namespace}` and `{name}`, e.g. `{namespace}/{name}`.
    PerImage { template: String },
    /// Everything in one repository; tags are prefixed by the template, e.g. `{namespace}-{name}`.
    Single {
        repository: String,
        tag_prefix: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrySettings {
    /// Requests per second at most; `None` is the operator's ceiling (unlimited without one).
    /// Plain HTTP and logins are not here: only the operator sets them.
    pub rate_limit: Option<u32>,
    /// Requests in flight at most.
    pub concurrency: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    pub schedule: Schedule,
    pub keep: u32,
    pub mirror: bool,
    /// Empty: copy and accept every platform.
    pub platforms: Vec<Platform>,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            schedule: default_schedule(),
            keep: DEFAULT_KEEP,
            mirror: false,
            platforms: Vec::new(),
        }
    }
}

/// The default schedule, parsed from a constant that the tests prove valid.
pub fn default_schedule() -> Schedule {
    crate::manifest::parse_cron(DEFAULT_SCHEDULE)
        .unwrap_or_else(|_| unreachable!("DEFAULT_SCHEDULE is a valid cron expression"))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitSettings {
    pub author_name: String,
    pub author_email: String,
    /// Commit subject template; `{count}` is replaced by the number of changed pins.
    pub message: String,
}

impl Default for GitSettings {
    fn default() -> Self {
        GitSettings {
            author_name: "imagelock".into(),
            author_email: "imagelock@localhost".into(),
            message: "imagelock: update {count} image pin(s)".into(),
        }
    }
}

/// One ImageSet manifest file.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    /// Path relative to the repo root, with `/` separators (`images/team-a/web.yaml`).
    pub path: PathBuf,
    pub name: String,
    pub namespace: String,
    /// `spec.mirror`, already defaulted from `imagelock.yaml`.
    pub mirror: bool,
    pub images: Vec<ImageSpec>,
}

/// One entry of `spec.images`, with defaults from `imagelock.yaml` applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSpec {
    /// The alias pods may use as `image:`.
    pub name: String,
    pub source: ImageRepo,
    /// Plain tags to follow.
    pub tags: Vec<String>,
    /// A version pattern over the repository's tags.
    pub matcher: Option<TagMatcher>,
    /// Promoter-style exact digests and the tags they get in the mirror.
    pub digests: BTreeMap<Digest, Vec<String>>,
    pub schedule: Schedule,
    pub keep: u32,
    pub pin: Pin,
    /// Platforms that must be present; empty accepts any.
    pub platforms: Vec<Platform>,
    pub mirror: bool,
    /// Where the entry starts in its manifest, for errors found after parsing.
    pub position: Position,
    /// Where the entry's `name:` value is (duplicate aliases are reported there).
    pub name_position: Position,
}

impl ImageSpec {
    /// A hash of everything that decides what the entry resolves to and when: all of it but
    /// where it stands in its manifest. Equal specs (positions aside) have equal fingerprints;
    /// the scheduler keeps this instead of a copy of the spec to tell a changed entry.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::hash::DefaultHasher::new();
        self.name.hash(&mut hasher);
        self.schedule.expression.hash(&mut hasher);
        self.hash_selection(&mut hasher);
        hasher.finish()
    }

    /// A hash of what decides the entry's tags and pins: its source and selection rules,
    /// `pin`, `keep` and `mirror`. What the registries answered for one spec holds for any
    /// spec of the same selection fingerprint, whatever its alias or schedule.
    pub fn selection_fingerprint(&self) -> u64 {
        use std::hash::Hasher as _;
        let mut hasher = std::hash::DefaultHasher::new();
        self.hash_selection(&mut hasher);
        hasher.finish()
    }

    fn hash_selection(&self, hasher: &mut impl std::hash::Hasher) {
        use std::hash::Hash as _;
        // Every field named, so that a new one cannot be left out unnoticed.
        let ImageSpec {
            name: _,     // in `fingerprint`
            schedule: _, // in `fingerprint`
            source,
            tags,
            matcher,
            digests,
            keep,
            pin,
            platforms,
            mirror,
            position: _,
            name_position: _,
        } = self;
        source.hash(hasher);
        tags.hash(hasher);
        matcher.hash(hasher);
        digests.hash(hasher);
        keep.hash(hasher);
        pin.hash(hasher);
        platforms.hash(hasher);
        mirror.hash(hasher);
    }
}

/// Which tags of a repository a `match:` entry selects.
#[derive(Debug, Clone)]
pub struct TagMatcher {
    pub pattern: VersionPattern,
    pub allow_prerelease: bool,
    pub select: Select,
    pub exclude: Vec<regex::Regex>,
}

impl PartialEq for TagMatcher {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
            && self.allow_prerelease == other.allow_prerelease
            && self.select == other.select
            && self
                .exclude
                .iter()
                .map(regex::Regex::as_str)
                .eq(other.exclude.iter().map(regex::Regex::as_str))
    }
}

/// Hashes what [`PartialEq`] compares, so that equal matchers hash alike.
impl std::hash::Hash for TagMatcher {
    fn hash<H: std::hash::Hasher>(&self, hasher: &mut H) {
        std::mem::discriminant(&self.pattern).hash(hasher);
        self.pattern.text().hash(hasher);
        self.allow_prerelease.hash(hasher);
        self.select.hash(hasher);
        self.exclude.len().hash(hasher);
        for regex in &self.exclude {
            regex.as_str().hash(hasher);
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum VersionPattern {
    /// `v2.13.x`, `2.x.0`, `4.x.x`: each of major, minor, patch fixed or `x`; `v` prefix kept.
    X {
        v_prefix: bool,
        parts: [Option<u64>; 3],
        text: String,
    },
    /// A semver range such as `>=2.13, <2.14`.
    Semver {
        req: semver::VersionReq,
        text: String,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Select {
    /// Every matching tag.
    #[default]
    All,
    /// Only the highest matching version.
    Latest,
}

/// `pin:` holds tags at an earlier generation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum Pin {
    #[default]
    None,
    /// `pin: 2`: every tag of the entry held at generation 2.
    All(u32),
    /// `pin: {latest: 2}`: per tag.
    PerTag(BTreeMap<String, u32>),
}

impl Pin {
    /// The generation `tag` is held at, if any.
    pub fn generation_for(&self, tag: &str) -> Option<u32> {
        match self {
            Pin::None => None,
            Pin::All(generation) => Some(*generation),
            Pin::PerTag(map) => map.get(tag).copied(),
        }
    }
}

/// An image entry with the defaults, for tests across the crate: override fields with
/// `ImageSpec { keep: 2, ..mk_image_spec(..) }`.
#[cfg(test)]
pub(crate) fn mk_image_spec(name: &str, source: &str, tags: &[&str]) -> ImageSpec {
    ImageSpec {
        name: name.into(),
        source: ImageRepo::parse(source).unwrap_or_else(|e| panic!("test source {source}: {e}")),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        matcher: None,
        digests: BTreeMap::new(),
        schedule: default_schedule(),
        keep: DEFAULT_KEEP,
        pin: Pin::None,
        platforms: vec![],
        mirror: false,
        position: Position::default(),
        name_position: Position::default(),
    }
}

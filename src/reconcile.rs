//! One reconcile pass over a checkout of the config repo, in two steps:
//!
//! 1. [`observe`] (network): resolve the image entries that are due.
//! 2. [`mirror`] (network): copy the pins those entries would get into the mirror; a pin whose
//!    copy fails becomes a failure, so the lock never points at what the mirror lacks.
//! 3. [`apply`] (files, no network): load the manifests again, compute each lock from its
//!    previous version and the observations, write what changed, remove orphaned locks, and
//!    bring the outputs (`outputs:` in `imagelock.yaml`) up to date with the new locks.
//!
//! Keeping the steps apart lets the daemon re-run [`apply`] on a fresh head after a rejected
//! push without asking the registries again.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use futures_util::stream;

use crate::lock::{
    self, ImageObservation, LockFile, LockedImage, PinChange, Problem, TagObservation,
};
use crate::manifest::{self, Diagnostic, ImageSet, ImageSpec, LoadedRepo};
use crate::mirror::progress::Progress;
use crate::mirror::{CopyReport, EngineOptions, MirrorEngine, plan};
use crate::outputs::{self, OutputChange};
use crate::pins::{Admitted, CheckoutLocks, LockSource, Pins};
use crate::registry::{RegistryAccess, RegistryClient, RegistryPolicy};
use crate::resolve::resolve_image;

/// Image entries resolved at once across a pass.
const IMAGE_CONCURRENCY: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error(transparent)]
    Outputs(#[from] outputs::OutputsError),
    #[error("{path}: cannot remove orphaned lock file: {source}")]
    RemoveOrphan {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot tell which lock files imagelock wrote: {0}")]
    Git(#[from] crate::git::GitError),
}

impl ReconcileError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            ReconcileError::Manifest(_) => "manifest",
            ReconcileError::Lock(e) => e.metric_label(),
            ReconcileError::Outputs(e) => e.metric_label(),
            ReconcileError::RemoveOrphan { .. } => "remove_orphan",
            ReconcileError::Git(e) => e.metric_label(),
        }
    }
}

/// How long one entry may take in a pass, so that a slow registry delays only its own
/// entries: past its deadline an entry fails with the reason and keeps its previous pins,
/// and the rest of the pass goes on to be written and committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Resolving one entry: listing its tags and asking what each points to. Default 2m.
    pub entry: Duration,
    /// Copying one image into the mirror (blobs, manifests, referrers). Default 30m: a
    /// large image takes a while even at full speed, and a stalled or trickling one is
    /// stopped sooner by the client's idle timeout and minimum transfer rate.
    pub mirror: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            entry: Duration::from_secs(120),
            mirror: Duration::from_secs(30 * 60),
        }
    }
}

impl Deadlines {
    /// From durations as written in the configuration (`90s`, `2m`, `1h`); `entry_key` and
    /// `mirror_key` name the settings in errors.
    pub fn parse(
        (entry_key, entry): (&str, &str),
        (mirror_key, mirror): (&str, &str),
    ) -> Result<Self, String> {
        let parse = |key: &str, value: &str| match humantime::parse_duration(value) {
            Ok(d) if d.is_zero() => Err(format!("{key} must be more than 0s")),
            Ok(d) => Ok(d),
            Err(e) => Err(format!("{key} {value:?}: {e}")),
        };
        Ok(Deadlines {
            entry: parse(entry_key, entry)?,
            mirror: parse(mirror_key, mirror)?,
        })
    }
}

/// Identifies an image entry across passes: manifest path and alias.
pub type EntryKey = (PathBuf, String);

/// What the registries said in one pass, with the [`ImageSpec::selection_fingerprint`] of the
/// spec each answer was for (a copy of the spec would be hundreds of bytes per entry).
#[derive(Debug, Default)]
pub struct Observations {
    entries: BTreeMap<EntryKey, (u64, ImageObservation)>,
}

impl Observations {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Turns `tags` of an entry (all of them when `None`) into failures with `reason`.
    fn fail_tags(&mut self, key: &EntryKey, tags: Option<&[String]>, reason: &str) {
        let Some((_, observation)) = self.entries.get_mut(key) else {
            return;
        };
        let Ok(observed) = &mut observation.tags else {
            return;
        };
        for (tag, t) in observed.iter_mut() {
            if tags.is_none_or(|only| only.contains(tag)) {
                *t = TagObservation::Failed(reason.to_owned());
            }
        }
    }

    /// What each entry's resolution gave, by entry.
    pub fn iter(&self) -> impl Iterator<Item = (&EntryKey, &ImageObservation)> {
        self.entries
            .iter()
            .map(|(key, (_, observation))| (key, observation))
    }
}

/// Loads the checkout at `root` as the operator's settings admit it: `imagelock.yaml` vetted
/// against the registry `policy` ([`vet_repo`]), then only the manifests `tenancy` lets
/// declare their namespace ([`crate::pins::admit`]).
pub fn load(
    root: &Path,
    policy: &RegistryPolicy,
    tenancy: &crate::tenancy::Tenancy,
) -> Result<Admitted, manifest::ManifestError> {
    let mut repo = manifest::load_repo(root)?;
    vet_repo(&mut repo, policy, tenancy);
    Ok(crate::pins::admit(repo, tenancy))
}

/// Applies the operator's mirror rules to a loaded repo: a `mirror.registry` that is not among
/// the operator's `mirrorRegistries`, or under tenancy a layout that does not keep namespaces
/// apart ([`crate::mirror::layout::check_separates_namespaces`]), makes `imagelock.yaml`
/// invalid, with a diagnostic at its `registry:`, so nothing is mirrored there and no lock or
/// pin is written pointing there.
pub fn vet_repo(repo: &mut LoadedRepo, policy: &RegistryPolicy, tenancy: &crate::tenancy::Tenancy) {
    let Some(target) = repo.config.as_ref().and_then(|c| c.mirror.as_ref()) else {
        return;
    };
    let refused = policy.check_mirror(&target.registry).and_then(|()| {
        if tenancy.is_enforced() {
            crate::mirror::layout::check_separates_namespaces(&target.layout)
        } else {
            Ok(())
        }
    });
    if let Err(reason) = refused {
        repo.diagnostics.push(Diagnostic {
            path: PathBuf::from(manifest::CONFIG_FILE),
            position: target.position,
            message: reason,
        });
        repo.diagnostics
            .sort_by(|a, b| (&a.path, a.position).cmp(&(&b.path, b.position)));
        repo.config = None;
    }
}

/// Resolves every entry of `repo` for which `due` says yes, each with its namespace's client,
/// from its previous lock as `locks` gives it and within `deadline` (from when it starts; 8
/// entries run at once). An entry whose namespace may not pull its source fails with the reason.
pub async fn observe(
    access: &RegistryAccess,
    root: &Path,
    repo: &LoadedRepo,
    locks: &dyn LockSource,
    due: &(dyn Fn(&ImageSet, &ImageSpec) -> bool + Sync),
    deadline: Duration,
) -> Observations {
    let deadline = EntryDeadline::new(deadline);
    let entries = observe_due(access, root, repo, locks, due, &deadline)
        .collect()
        .await;
    Observations { entries }
}

/// Entries of one registry that may run into their deadline in a pass; its entries after
/// that are not tried in the pass. Many entries on one slow registry would otherwise hold
/// the pass for `entries / IMAGE_CONCURRENCY` deadlines, and every other team with it.
const TIMEOUTS_PER_REGISTRY: usize = 2;

/// The entry deadline of one pass, and the registries that ran into it.
struct EntryDeadline {
    limit: Duration,
    timed_out: std::sync::Mutex<HashMap<String, usize>>,
}

impl EntryDeadline {
    fn new(limit: Duration) -> Self {
        EntryDeadline {
            limit,
            timed_out: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn timeouts(&self, registry: &str) -> usize {
        let timed_out = self.timed_out.lock().unwrap_or_else(|e| e.into_inner());
        timed_out.get(registry).copied().unwrap_or(0)
    }

    fn record_timeout(&self, registry: &str) {
        let mut timed_out = self.timed_out.lock().unwrap_or_else(|e| e.into_inner());
        *timed_out.entry(registry.to_owned()).or_default() += 1;
    }

    /// Resolves `spec` within the deadline; an entry of a registry that already timed out
    /// [`TIMEOUTS_PER_REGISTRY`] times in this pass fails at once.
    async fn resolve(
        &self,
        client: &RegistryClient,
        spec: &ImageSpec,
        previous: Option<&LockedImage>,
    ) -> Result<ImageObservation, String> {
        let registry = &spec.source.registry;
        let timeouts = self.timeouts(registry);
        let limit = humantime::format_duration(self.limit);
        if timeouts >= TIMEOUTS_PER_REGISTRY {
            return Err(format!(
                "not resolved in this pass: {timeouts} entries of {registry} timed out after {limit}"
            ));
        }
        // Dropping a resolution half-way is safe: it only reads.
        match tokio::time::timeout(self.limit, resolve_image(client, spec, previous)).await {
            Ok(observation) => Ok(observation),
            Err(_) => {
                self.record_timeout(registry);
                Err(format!("timed out after {limit} resolving {}", spec.source))
            }
        }
    }
}

/// The entries to resolve, each with the previous lock of its manifest. Lazy: a manifest's
/// previous lock is read when the entries before it are under way, and dropped once its own
/// entries are resolved. Reading them all first would hold every previous pin of the repo
/// (kilobytes per entry) for the whole pass.
fn due_entries<'a>(
    root: &'a Path,
    repo: &'a LoadedRepo,
    locks: &'a dyn LockSource,
    due: &'a (dyn Fn(&ImageSet, &ImageSpec) -> bool + Sync),
) -> impl Iterator<Item = (&'a ImageSet, &'a ImageSpec, Option<Arc<LockFile>>)> + Send + 'a {
    repo.sets.iter().flat_map(move |set| {
        let specs: Vec<&ImageSpec> = set.images.iter().filter(|spec| due(set, spec)).collect();
        let previous = if specs.is_empty() {
            None
        } else {
            read_previous_or_none(locks, root, &set.path).map(Arc::new)
        };
        specs
            .into_iter()
            .map(move |spec| (set, spec, previous.clone()))
    })
}

/// The observations of the due entries, [`IMAGE_CONCURRENCY`] at a time. A plain fn names
/// the lifetimes of the items, which the daemon's task needs to be `Send` (the same closure
/// inside the async fn is not general enough for the compiler).
fn observe_due<'a>(
    access: &'a RegistryAccess,
    root: &'a Path,
    repo: &'a LoadedRepo,
    locks: &'a dyn LockSource,
    due: &'a (dyn Fn(&ImageSet, &ImageSpec) -> bool + Sync),
    deadline: &'a EntryDeadline,
) -> impl futures_util::Stream<Item = (EntryKey, (u64, ImageObservation))> + Send + 'a {
    stream::iter(due_entries(root, repo, locks, due))
        .map(move |(set, spec, previous)| observe_entry(access, set, spec, previous, deadline))
        .buffer_unordered(IMAGE_CONCURRENCY)
}

async fn observe_entry(
    access: &RegistryAccess,
    set: &ImageSet,
    spec: &ImageSpec,
    previous: Option<Arc<LockFile>>,
    deadline: &EntryDeadline,
) -> (EntryKey, (u64, ImageObservation)) {
    let previous = previous.as_ref().and_then(|p| p.images.get(&spec.name));
    let clients = access
        .may_pull(&set.namespace, &spec.source)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            access
                .for_namespace(&set.namespace)
                .map_err(|e| format!("namespace {}: {e}", set.namespace))
        });
    let resolved = match clients {
        Ok(clients) => deadline.resolve(&clients.pull, spec, previous).await,
        Err(reason) => Err(reason),
    };
    let observation = match resolved {
        Ok(observation) => observation,
        Err(reason) => {
            tracing::warn!(manifest = %set.path.display(), image = %spec.name, "{reason}; its pins stay as they were");
            ImageObservation {
                tags: Err(reason),
                pinned: BTreeMap::new(),
                mirror: None,
            }
        }
    };
    count_resolutions(spec, &observation);
    (
        (set.path.clone(), spec.name.clone()),
        (spec.selection_fingerprint(), observation),
    )
}

/// Counts an entry's tag resolutions in the metrics: one per tag, or one failure when the
/// entry could not be resolved at all.
fn count_resolutions(spec: &ImageSpec, observation: &ImageObservation) {
    let metrics = &crate::telemetry::METRICS;
    let registry = &spec.source.registry;
    match &observation.tags {
        Err(_) => metrics.resolution(registry, false),
        Ok(tags) => {
            for (_, t) in tags {
                metrics.resolution(registry, matches!(t, TagObservation::Resolved(_)));
            }
        }
    }
}

/// How [`mirror`] builds the engine of each namespace: the options (an image copy's deadline
/// among them) and where progress goes.
#[derive(Clone)]
pub struct EngineSettings {
    pub options: EngineOptions,
    pub progress: Arc<dyn Progress>,
}

/// Copies into the mirror every pin that the observed, mirrored entries would get. Tags whose
/// copy fails (or whose entry has no valid mirror placement) become failures with the reason,
/// so [`apply`] keeps their previous pins. Sets each mirrored observation's `mirror` name.
///
/// A mirror registry the operator does not allow (`mirrorRegistries`) fails every mirrored
/// entry and copies nothing. Each namespace's images are copied by an engine of its own, with
/// its client: blobs are shared within a namespace, never mounted across namespaces.
pub async fn mirror(
    access: &RegistryAccess,
    engines: &EngineSettings,
    root: &Path,
    repo: &LoadedRepo,
    locks: &dyn LockSource,
    observations: &mut Observations,
    now: DateTime<Utc>,
) -> CopyReport {
    let target = repo.config.as_ref().and_then(|c| c.mirror.as_ref());
    if let Some(refused) =
        target.and_then(|t| access.operator().policy().check_mirror(&t.registry).err())
    {
        let mirrored: Vec<EntryKey> = repo
            .sets
            .iter()
            .flat_map(|set| {
                set.images
                    .iter()
                    .filter(|spec| spec.mirror)
                    .map(|spec| (set.path.clone(), spec.name.clone()))
            })
            .collect();
        for key in mirrored {
            observations.fail_tags(&key, None, &refused);
        }
        return CopyReport::default();
    }
    let mut sets = Vec::new();
    let mut prospective_locks = BTreeMap::new();
    for set in &repo.sets {
        let mut observed = set.clone();
        observed.images.retain(|spec| {
            spec.mirror
                && observations
                    .entries
                    .contains_key(&(set.path.clone(), spec.name.clone()))
        });
        if observed.images.is_empty() {
            continue;
        }
        let relevant: BTreeMap<String, ImageObservation> = observed
            .images
            .iter()
            .filter_map(|spec| {
                let (_, observation) = observations
                    .entries
                    .get(&(set.path.clone(), spec.name.clone()))?;
                Some((spec.name.clone(), observation.clone()))
            })
            .collect();
        let previous = read_previous_or_none(locks, root, &set.path);
        let (prospective, _) = lock::update_lock(previous.as_ref(), &observed, &relevant, now);
        for spec in &observed.images {
            let name = plan::placement(target, &observed, spec).and_then(Result::ok);
            if let Some(entry) = observations
                .entries
                .get_mut(&(set.path.clone(), spec.name.clone()))
            {
                entry.1.mirror = name.map(|p| p.lock_name());
            }
        }
        prospective_locks.insert(set.path.clone(), prospective);
        sets.push(observed);
    }

    let (wanted, placement_errors) = plan::wanted(target, &sets, &prospective_locks);
    for error in placement_errors {
        let key = (PathBuf::from(&error.manifest), error.alias.clone());
        observations.fail_tags(&key, None, &format!("mirror: {}", error.reason));
    }
    let NamespaceCopies { groups, refused } = copies_by_namespace(access, repo, &wanted);
    for (copy, reason) in refused {
        let key = (copy.manifest.clone(), copy.alias.clone());
        observations.fail_tags(&key, Some(&copy.source_tags), &reason);
    }
    let mut report = CopyReport::default();
    for (namespace, copies) in groups {
        let engine = match access.for_namespace(namespace) {
            Ok(clients) => {
                MirrorEngine::new(clients.mirror, engines.options, engines.progress.clone())
            }
            Err(e) => {
                let reason = format!("namespace {namespace}: {e}");
                for copy in copies {
                    let key = (copy.manifest.clone(), copy.alias.clone());
                    observations.fail_tags(&key, Some(&copy.source_tags), &reason);
                }
                continue;
            }
        };
        let requests = copies.iter().map(|w| w.request.clone()).collect();
        for (copy, (request, result)) in copies.iter().zip(engine.copy_all(requests).await) {
            match result {
                Ok(copied) => report.add(&copied),
                Err(e) => {
                    tracing::warn!(image = %request.source, digest = %request.digest, error = %e, "mirror copy failed; the pin stays where it was");
                    let reason = format!("mirror to {}: {e}", request.destination);
                    observations.fail_tags(
                        &(copy.manifest.clone(), copy.alias.clone()),
                        Some(&copy.source_tags),
                        &reason,
                    );
                }
            }
        }
    }
    report
}

/// Names the mirror repository of every observed, mirrored entry as [`mirror`] does after
/// its copies, without copying: a dry run then computes the lock (and the outputs) the
/// daemon would write.
pub fn name_mirrors(repo: &LoadedRepo, observations: &mut Observations) {
    let target = repo.config.as_ref().and_then(|c| c.mirror.as_ref());
    for set in &repo.sets {
        for spec in &set.images {
            let Some(Ok(place)) = plan::placement(target, set, spec) else {
                continue;
            };
            if let Some(entry) = observations
                .entries
                .get_mut(&(set.path.clone(), spec.name.clone()))
            {
                entry.1.mirror = Some(place.lock_name());
            }
        }
    }
}

/// Mirror copies sorted by the namespace that makes them ([`copies_by_namespace`]).
pub struct NamespaceCopies<'r, C> {
    /// Per namespace (one group, `""`, for a one-team repo): the copies its client makes.
    pub groups: BTreeMap<&'r str, Vec<C>>,
    /// The copies their namespace may not make, each with the reason: a source outside its
    /// prefixes, or one on a mirror registry.
    pub refused: Vec<(C, String)>,
}

/// Sorts mirror copies by the namespace whose client makes them.
pub fn copies_by_namespace<'r, C: std::borrow::Borrow<plan::WantedCopy>>(
    access: &RegistryAccess,
    repo: &'r LoadedRepo,
    copies: impl IntoIterator<Item = C>,
) -> NamespaceCopies<'r, C> {
    let enforced = access.tenancy().is_enforced();
    let mut groups: BTreeMap<&str, Vec<C>> = BTreeMap::new();
    let mut refused = Vec::new();
    for copy in copies {
        let wanted = copy.borrow();
        let namespace = repo
            .sets
            .iter()
            .find(|set| set.path == wanted.manifest)
            .map_or("", |set| set.namespace.as_str());
        let source = &wanted.request.source;
        let refusal = match access.may_pull(namespace, source) {
            Err(e) => Some(e.to_string()),
            Ok(()) => access.mirror_source_refusal(namespace, source),
        };
        match refusal {
            Some(reason) => refused.push((copy, reason)),
            None => groups
                .entry(if enforced { namespace } else { "" })
                .or_default()
                .push(copy),
        }
    }
    NamespaceCopies { groups, refused }
}

/// Whether [`apply`] writes files or only computes what would change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Write,
    DryRun,
}

/// What a pass changed (or would change).
#[derive(Debug, Default)]
pub struct Outcome {
    pub changes: Vec<PinChange>,
    /// Repo-relative paths written or removed: locks and outputs, sorted.
    pub touched: Vec<PathBuf>,
    /// The output files among `touched`, and how each changed.
    pub outputs: Vec<OutputChange>,
    /// Pins that could not move, per manifest.
    pub problems: Vec<(PathBuf, Problem)>,
    /// Manifest errors (those files' locks were left as they were), and problems that left an
    /// output or a marked line as it was.
    pub diagnostics: Vec<Diagnostic>,
    /// True when `imagelock.yaml` is invalid: nothing was locked.
    pub config_invalid: bool,
    /// Every lock this pass computed, by repo-relative path, with the git blob id of its
    /// bytes (`None`: removed). Written or already so, these are the pass's own output.
    pub locks: Vec<(PathBuf, Option<String>)>,
    /// Locks someone else had changed that this pass wrote back from the version last
    /// verified (see [`crate::pins::trusted`]), by repo-relative path.
    pub restored: Vec<PathBuf>,
}

impl Outcome {
    /// The commit message: [`commit_message`], and a line per restored lock.
    pub fn commit_message(&self, subject_template: &str) -> String {
        let mut message = commit_message(subject_template, &self.changes);
        if !self.restored.is_empty() {
            message.push_str(if self.changes.is_empty() {
                "\n\n"
            } else {
                "\n"
            });
            for lock in &self.restored {
                message.push_str(&format!(
                    "{}: restored as imagelock last wrote it (another commit changed it)\n",
                    lock.display()
                ));
            }
        }
        message
    }
}

/// Applies `observations` to the checkout at `root`, its manifests admitted by `tenancy`
/// and its lock files taken as they are.
pub fn apply(
    root: &Path,
    tenancy: &crate::tenancy::Tenancy,
    observations: &Observations,
    now: DateTime<Utc>,
    mode: Mode,
) -> Result<Outcome, ReconcileError> {
    let repo = crate::pins::load(root, tenancy)?;
    apply_to(root, &repo, &CheckoutLocks, observations, now, mode)
}

/// [`apply`] with the manifests of `root` already loaded and admitted, each previous lock
/// read from `locks`.
pub fn apply_to(
    root: &Path,
    repo: &Admitted,
    locks: &dyn LockSource,
    observations: &Observations,
    now: DateTime<Utc>,
    mode: Mode,
) -> Result<Outcome, ReconcileError> {
    let mut outcome = Outcome {
        diagnostics: repo.all_diagnostics(),
        config_invalid: repo.config.is_none(),
        ..Outcome::default()
    };
    let Some(config) = &repo.config else {
        return Ok(outcome);
    };
    // The new locks are kept for the outputs only: a lock of a few hundred entries holds
    // hundreds of kilobytes, and a repo may have thousands of entries.
    let keep_locks = !config.outputs.is_empty();
    let mut next_locks = Vec::new();
    for set in &repo.sets {
        let lock_rel = lock::lock_path_for(&set.path);
        let previous = read_previous(locks, root, &set.path)?;
        // An observation made for another version of the entry (the manifest changed under a
        // retried push) is not applied; the entry is resolved again in the next pass.
        let relevant: BTreeMap<String, ImageObservation> = set
            .images
            .iter()
            .filter_map(|spec| {
                let (selection, observation) = observations
                    .entries
                    .get(&(set.path.clone(), spec.name.clone()))?;
                (*selection == spec.selection_fingerprint())
                    .then(|| (spec.name.clone(), observation.clone()))
            })
            .collect();
        let (next, problems) = lock::update_lock(previous.as_ref(), set, &relevant, now);
        outcome
            .problems
            .extend(problems.into_iter().map(|p| (set.path.clone(), p)));
        let lock_label = lock_rel.to_string_lossy().into_owned();
        let changes = lock::diff_locks(&lock_label, previous.as_ref(), Some(&next));
        let path = root.join(&lock_rel);
        let rendered = lock::render(&next);
        outcome.locks.push((
            lock_rel.clone(),
            Some(crate::git::blob_id(rendered.as_bytes())),
        ));
        if !lock::is_unchanged(&path, &rendered) {
            if mode == Mode::Write {
                lock::write_atomic(&path, &rendered)?;
            }
            if locks.replaced(&set.path) {
                outcome.restored.push(lock_rel.clone());
            }
            outcome.touched.push(lock_rel);
        }
        outcome.changes.extend(changes);
        if keep_locks {
            next_locks.push((set, next));
        }
    }
    remove_orphans(root, repo, mode, &mut outcome)?;

    // Outputs follow the locks as this pass leaves them, written or not.
    if keep_locks {
        let frozen = outputs::Frozen::of(root, repo, &repo.tenancy)?;
        let pins = Pins::build(next_locks, config.mirror.as_ref(), &repo.tenancy);
        let report = outputs::generate(root, &config.outputs, &pins, &frozen, mode == Mode::Write)?;
        outcome
            .touched
            .extend(report.changes.iter().map(|c| c.path.clone()));
        outcome.touched.sort();
        outcome.outputs = report.changes;
        outcome.diagnostics.extend(report.diagnostics);
    }
    Ok(outcome)
}

/// The lock beside `manifest`. One that does not parse is regenerated from nothing (it is
/// not a lock imagelock wrote); one that cannot be read is an error, so that a passing I/O
/// fault never rewrites a lock without its history.
fn read_previous(
    locks: &dyn LockSource,
    root: &Path,
    manifest: &Path,
) -> Result<Option<LockFile>, lock::LockError> {
    match locks.read(root, manifest) {
        Err(e @ lock::LockError::Parse { .. }) => {
            tracing::warn!(error = %e, "previous lock is not valid; it is regenerated");
            Ok(None)
        }
        other => other,
    }
}

/// [`read_previous`] for what only reads: resolution and mirroring go on without the
/// previous pins, which only save requests there.
fn read_previous_or_none(locks: &dyn LockSource, root: &Path, manifest: &Path) -> Option<LockFile> {
    read_previous(locks, root, manifest).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "previous lock unreadable; resolving without it");
        None
    })
}

/// Locks whose manifest is gone are removed. A manifest that exists but has errors (or is
/// refused by the walker) keeps its lock (the last good one). Nothing is removed when
/// `images/` could not be listed completely.
fn remove_orphans(
    root: &Path,
    repo: &LoadedRepo,
    mode: Mode,
    outcome: &mut Outcome,
) -> Result<(), ReconcileError> {
    let files = manifest::walk::image_files(root);
    if !files.complete {
        tracing::warn!("images/ was not listed completely; no orphaned lock is removed");
        return Ok(());
    }
    for rel in files.locks {
        if files.claimed_locks.contains(&rel)
            || repo
                .sets
                .iter()
                .any(|s| lock::lock_path_for(&s.path) == rel)
        {
            continue;
        }
        let previous = lock::read_in(root, &rel).ok().flatten();
        let label = rel.to_string_lossy().into_owned();
        outcome
            .changes
            .extend(lock::diff_locks(&label, previous.as_ref(), None));
        if mode == Mode::Write {
            let path = root.join(&rel);
            std::fs::remove_file(&path)
                .map_err(|source| ReconcileError::RemoveOrphan { path, source })?;
        }
        outcome.locks.push((rel.clone(), None));
        outcome.touched.push(rel);
    }
    outcome.touched.sort();
    Ok(())
}

/// The commit message: the configured subject, then one line per pin change.
pub fn commit_message(subject_template: &str, changes: &[PinChange]) -> String {
    let subject = subject_template.replace("{count}", &changes.len().to_string());
    let mut message = subject.trim_end().to_owned();
    if !changes.is_empty() {
        message.push_str("\n\n");
        for change in changes {
            message.push_str(&format!("{}: {change}\n", change.lock));
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::ChangeKind;
    use crate::reference::Digest;

    #[test]
    fn commit_message_lists_changes() {
        let d = |c: char| {
            format!("sha256:{}", c.to_string().repeat(64))
                .parse::<Digest>()
                .unwrap()
        };
        let changes = vec![PinChange {
            lock: "images/web.lock.yaml".into(),
            image: "web".into(),
            tag: "latest".into(),
            kind: ChangeKind::Changed,
            from: Some(d('a')),
            to: Some(d('b')),
            generation: Some(2),
        }];
        assert_eq!(
            commit_message("imagelock: update {count} image pin(s)", &changes),
            "imagelock: update 1 image pin(s)\n\n\
             images/web.lock.yaml: web:latest sha256:aaaaaaaaaaaa -> sha256:bbbbbbbbbbbb (generation 2)\n"
        );
    }

    fn mk_repo(manifests: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(
            root.join("imagelock.yaml"),
            "apiVersion: imagelock.dev/v1alpha1\nkind: Config\n",
        )
        .unwrap();
        for manifest in manifests {
            let path = root.join(manifest);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let alias = path
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .replace('.', "-");
            std::fs::write(
                path,
                format!("apiVersion: imagelock.dev/v1alpha1\nkind: ImageSet\nmetadata: {{name: {alias}, namespace: team-a}}\nspec:\n  images:\n    - {{name: {alias}, source: quay.io/company/web, tags: [latest]}}\n"),
            )
            .unwrap();
        }
        dir
    }

    fn apply_now(root: &Path) -> Result<Outcome, ReconcileError> {
        apply(
            root,
            &crate::tenancy::Tenancy::default(),
            &Observations::default(),
            chrono::Utc::now(),
            Mode::Write,
        )
    }

    #[test]
    fn under_tenancy_a_mirror_layout_must_keep_namespaces_apart() {
        let dir = mk_repo(&["images/team-a/web.yaml"]);
        let root = dir.path();
        let config = |prefix: &str| {
            format!(
                "apiVersion: imagelock.dev/v1alpha1\nkind: Config\nmirror:\n  registry: registry.internal\n  repository: all\n  tagPrefix: \"{prefix}\"\n"
            )
        };
        let policy = RegistryPolicy {
            mirrors: ["registry.internal".to_owned()].into(),
            ..RegistryPolicy::default()
        };
        let tenancy = crate::tenancy::Tenancy {
            namespaces: [(
                "team-a".to_owned(),
                crate::tenancy::NamespacePolicy {
                    paths: vec!["images/team-a/**".into()],
                    ..Default::default()
                },
            )]
            .into(),
            shared_sets: Vec::new(),
        };
        std::fs::write(root.join("imagelock.yaml"), config("{namespace}-{name}")).unwrap();
        let shared = load(root, &policy, &tenancy).unwrap();
        assert!(shared.config.is_none(), "nothing is mirrored with it");
        let message = shared.all_diagnostics()[0].to_string();
        assert!(
            message.starts_with("imagelock.yaml:") && message.contains("keep namespaces apart"),
            "{message}"
        );
        // One team: any layout; many teams: one that tells them apart.
        let one_team = load(root, &policy, &crate::tenancy::Tenancy::default()).unwrap();
        assert!(one_team.config.is_some());
        std::fs::write(root.join("imagelock.yaml"), config("{namespace}_{name}")).unwrap();
        assert!(load(root, &policy, &tenancy).unwrap().config.is_some());
    }

    #[test]
    fn a_directory_where_the_lock_goes_fails_only_its_manifest() {
        let dir = mk_repo(&["images/web.yaml", "images/api.yaml"]);
        let root = dir.path();
        std::fs::create_dir(root.join("images/web.lock.yaml")).unwrap();
        let outcome = apply_now(root).unwrap();
        assert_eq!(outcome.touched, [PathBuf::from("images/api.lock.yaml")]);
        assert!(
            outcome.diagnostics[0].to_string().starts_with(
                "images/web.yaml:1:1: its lock images/web.lock.yaml is not a regular file"
            ),
            "{:?}",
            outcome.diagnostics
        );
        assert!(
            root.join("images/web.lock.yaml").is_dir(),
            "nothing was written over it"
        );
    }

    #[test]
    fn a_lock_committed_as_a_symlink_is_replaced_never_followed() {
        let dir = mk_repo(&["images/web.yaml"]);
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("token");
        std::fs::write(&secret, "apiVersion: hunter2\n").unwrap();
        let root = dir.path();
        std::os::unix::fs::symlink(&secret, root.join("images/web.lock.yaml")).unwrap();
        let outcome = apply_now(root).unwrap();
        assert_eq!(outcome.touched, [PathBuf::from("images/web.lock.yaml")]);
        let lock = root.join("images/web.lock.yaml");
        assert!(std::fs::symlink_metadata(&lock).unwrap().is_file());
        assert_eq!(
            std::fs::read_to_string(&secret).unwrap(),
            "apiVersion: hunter2\n"
        );
        let shown = format!("{outcome:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn links_under_images_are_neither_read_nor_written_through() {
        // A link back into the repo: followed, team-a's manifest would also be
        // images/team-b/link/web.yaml, whose lock the commit step refuses.
        let dir = mk_repo(&["images/team-a/web.yaml"]);
        let root = dir.path();
        std::fs::create_dir_all(root.join("images/team-b")).unwrap();
        std::os::unix::fs::symlink("../team-a", root.join("images/team-b/link")).unwrap();
        let outcome = apply_now(root).unwrap();
        assert_eq!(
            outcome.touched,
            [PathBuf::from("images/team-a/web.lock.yaml")]
        );
        for path in &outcome.touched {
            crate::git::join_repo_path(root, path).expect("the commit step takes every path");
        }
    }

    #[test]
    fn no_orphan_is_removed_when_images_was_not_listed_completely() {
        let deep = format!("images/{}web.yaml", "d/".repeat(40));
        let dir = mk_repo(&[&deep]);
        let root = dir.path();
        std::fs::write(root.join("images/gone.lock.yaml"), "apiVersion: x\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("images/link.lock.yaml")).unwrap();
        let outcome = apply_now(root).unwrap();
        assert!(outcome.touched.is_empty(), "{:?}", outcome.touched);
        assert!(root.join("images/gone.lock.yaml").exists());
        std::fs::remove_dir_all(root.join("images/d")).unwrap();
        // Complete again: the orphan and the orphaned link (not what it points at) go.
        let outcome = apply_now(root).unwrap();
        assert_eq!(
            outcome.touched,
            [
                PathBuf::from("images/gone.lock.yaml"),
                PathBuf::from("images/link.lock.yaml")
            ]
        );
        assert!(std::fs::symlink_metadata(root.join("images/link.lock.yaml")).is_err());
        assert!(Path::new("/etc/passwd").exists());
    }

    #[test]
    fn orphans_go_but_locks_of_refused_manifests_stay() {
        let dir = mk_repo(&["images/web.yaml", "images/app.yaml", "images/app.yml"]);
        let root = dir.path();
        for lock in ["images/gone.lock.yaml", "images/app.lock.yaml"] {
            std::fs::write(root.join(lock), "apiVersion: x\n").unwrap();
        }
        let outcome = apply_now(root).unwrap();
        assert_eq!(
            outcome.touched,
            [
                PathBuf::from("images/gone.lock.yaml"),
                PathBuf::from("images/web.lock.yaml")
            ]
        );
        assert!(!root.join("images/gone.lock.yaml").exists());
        assert!(root.join("images/app.lock.yaml").exists());
    }
}

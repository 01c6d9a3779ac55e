//! The reconcile loop: fetch, resolve what is due, write locks, commit and push.
//!
//! With leader election, every replica fetches and keeps the webhook's pins and `/status`
//! current; only the leader goes on to resolve, mirror and push. A leader that loses the
//! Lease drops its pass at once, and the push itself asks once more right before it starts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::hooks::{self, HookEvent};
use super::leader::Leadership;
use super::schedule::Scheduler;
use super::status::{EntryLog, Pins, Status};
use super::{DaemonConfig, DaemonError, Trigger};
use crate::admission::{IndexHandle, PinIndex};
use crate::git::{self, Author, Checkout, GitAuth, GitTimeouts, PushResult, RemoteSpec};
use crate::manifest::{self, RegistrySettings, RepoConfig};
use crate::mirror::EngineOptions;
use crate::mirror::progress::Silent;
use crate::pins::{self, Admitted, TrustedLocks, VerifiedLocks};
use crate::reconcile::{self, Deadlines, EngineSettings, EntryKey, Mode, Observations};
use crate::reference::ImageRepo;
use crate::registry::{RegistryAccess, RegistryError, RegistryPolicy};
use crate::tenancy::Tenancy;

/// Loads the checkout on a blocking thread (parsing thousands of entries takes long enough to
/// hold up the webhook's requests on the runtime) as the operator's settings admit it: the
/// registry policy and the tenancy ([`reconcile::load`]).
async fn load_repo(
    worktree: PathBuf,
    policy: Arc<RegistryPolicy>,
    tenancy: Tenancy,
) -> Result<Arc<Admitted>, manifest::ManifestError> {
    let path = worktree.clone();
    match tokio::task::spawn_blocking(move || reconcile::load(&worktree, &policy, &tenancy)).await {
        Ok(loaded) => loaded.map(Arc::new),
        Err(e) => Err(manifest::ManifestError::Io {
            path,
            source: std::io::Error::other(format!("the loading task failed: {e}")),
        }),
    }
}

/// Pushes remembered between two passes at most; a pass normally follows at once.
const MAX_PENDING_PUSHES: usize = 1024;

pub struct Reconciler {
    config: DaemonConfig,
    poll_interval: Duration,
    remote: RemoteSpec,
    checkout: Option<Checkout>,
    scheduler: Scheduler,
    /// Per entry, its last attempt and its pins, for `/status`.
    entries: EntryLog,
    /// Image pushes (repository, tags) that hooks reported since the last pass.
    pushes: Vec<(ImageRepo, Vec<String>)>,
    /// The operator's registry policy (checked at start).
    policy: Arc<RegistryPolicy>,
    /// The registry clients and the repo's registry settings they were built for; rebuilt
    /// when those change.
    access: Option<(
        std::collections::BTreeMap<String, RegistrySettings>,
        Arc<RegistryAccess>,
    )>,
    status_tx: watch::Sender<Arc<Status>>,
    status: Status,
    /// The admission webhook's pins, swapped after every load of the repo.
    index: Option<IndexHandle>,
    /// The head whose lock files gave `entries` and the webhook's index their pins: they are
    /// read once per head rather than on every pass.
    pins_revision: Option<String>,
    /// The blob ids of the lock files this daemon wrote or verified; `None` until the first
    /// checkout, which is trusted as it is (nothing else is known then).
    verified: Option<Arc<VerifiedLocks>>,
    /// The locks of `pins_revision` as this daemon trusts them; `None` when they could not
    /// be told apart (nothing is resolved then).
    trusted: Option<Arc<TrustedLocks>>,
    /// Entries to resolve in the next pass whatever their schedule: their lock was changed by
    /// someone else, or disagrees with their manifest.
    untrusted: std::collections::BTreeSet<EntryKey>,
    /// Whether this replica may resolve, mirror and push.
    leadership: Leadership,
    /// How long one entry may take to resolve, and one image to copy.
    deadlines: Deadlines,
}

impl Reconciler {
    pub fn new(
        config: DaemonConfig,
        status_tx: watch::Sender<Arc<Status>>,
        index: Option<IndexHandle>,
        leadership: Leadership,
    ) -> Result<Self, DaemonError> {
        let auth = match (&config.git_token_file, &config.git_ssh_key) {
            (Some(_), Some(_)) => {
                return Err(DaemonError::Config(
                    "set either gitTokenFile or gitSshKey, not both".into(),
                ));
            }
            (Some(token), None) => GitAuth::TokenFile(token.clone()),
            (None, Some(key)) => GitAuth::SshKey {
                private_key: key.clone(),
                passphrase_file: config.git_ssh_passphrase_file.clone(),
            },
            (None, None) => GitAuth::None,
        };
        let remote = RemoteSpec {
            url: config.repo.clone(),
            branch: config.branch.clone(),
            auth,
        };
        let status = Status {
            repo: git::redact_url(&config.repo),
            branch: config.branch.clone(),
            ..Status::default()
        };
        Ok(Reconciler {
            poll_interval: config.poll_interval()?,
            deadlines: config.deadlines()?,
            policy: Arc::new(config.registry_policy()?),
            config,
            remote,
            checkout: None,
            scheduler: Scheduler::default(),
            entries: EntryLog::default(),
            pushes: Vec::new(),
            access: None,
            status_tx,
            status,
            index,
            pins_revision: None,
            verified: None,
            trusted: None,
            untrusted: std::collections::BTreeSet::new(),
            leadership,
        })
    }

    /// Runs passes until shutdown. A pass in flight finishes its commit; none starts after.
    pub async fn run(mut self, mut triggers: mpsc::Receiver<Trigger>, shutdown: CancellationToken) {
        let mut last_poll = tokio::time::Instant::now();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            self.pass(&shutdown).await;
            // What the pass allocated for itself is free now: give it back, rather than
            // keep the pass's peak as the daemon's size until the next one. A few ms with
            // 10,000 entries: on a blocking thread, so the webhook keeps this worker.
            let trimming = std::time::Instant::now();
            if tokio::task::spawn_blocking(super::memory::release_free_memory)
                .await
                .is_ok()
            {
                tracing::debug!(
                    micros = trimming.elapsed().as_micros() as u64,
                    "freed heap memory returned to the system"
                );
            }

            let until_poll = self.poll_interval.saturating_sub(last_poll.elapsed());
            let until_due = self
                .scheduler
                .next_wakeup()
                .map(|at| (at - Utc::now()).to_std().unwrap_or(Duration::ZERO))
                .unwrap_or(until_poll);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(until_poll.min(until_due)) => {}
                // A new leader starts its first pass at once, not at the next poll.
                _ = self.leadership.acquired(), if !self.leadership.is_leader() => {}
                trigger = triggers.recv() => {
                    if let Some(trigger) = trigger {
                        tracing::debug!(?trigger, "woken");
                        self.on_trigger(&trigger);
                    }
                }
            }
            if last_poll.elapsed() >= self.poll_interval {
                last_poll = tokio::time::Instant::now();
            }
        }
        tracing::info!("reconcile loop stopped");
    }

    /// A pushed image makes the entries it can affect due in the pass that follows, matched
    /// against the manifests that pass fetches.
    fn on_trigger(&mut self, trigger: &Trigger) {
        if let Trigger::Hook(HookEvent::ImagePushed { repo, tags }) = trigger {
            let push = (repo.clone(), tags.clone());
            if self.pushes.contains(&push) {
                return;
            }
            if self.pushes.len() >= MAX_PENDING_PUSHES {
                tracing::warn!(%repo, ?tags, "push hook dropped: too many pushes wait for a pass");
                return;
            }
            self.pushes.push(push);
        }
    }

    /// Makes the entries whose lock someone else changed, or whose lock disagrees with the
    /// manifest, due now: their lock is rebuilt from the manifest and the registries.
    fn apply_untrusted(&mut self, repo: &Admitted, now: DateTime<Utc>) {
        let untrusted = std::mem::take(&mut self.untrusted);
        if untrusted.is_empty() {
            return;
        }
        let mut count = 0;
        for set in &repo.sets {
            count += self.scheduler.trigger(
                std::slice::from_ref(set),
                |spec| untrusted.contains(&(set.path.clone(), spec.name.clone())),
                now,
            );
        }
        tracing::info!(
            entries = count,
            "entries with untrusted or stale locks: due now"
        );
    }

    /// Makes the entries that the pushes since the last pass affect due now.
    fn apply_pushes(&mut self, repo: &Admitted, now: DateTime<Utc>) {
        for (source, tags) in std::mem::take(&mut self.pushes) {
            let count = self.scheduler.trigger(
                &repo.sets,
                |spec| hooks::affects(spec, &source, &tags),
                now,
            );
            tracing::info!(repo = %source, ?tags, entries = count, "push hook: entries due now");
        }
    }

    /// One pass: every wake-up fetches first, so locks are always computed on the newest head.
    /// Errors are logged and kept in the status; the loop goes on.
    async fn pass(&mut self, shutdown: &CancellationToken) {
        let now = Utc::now();
        let moved = match self.sync().await {
            Ok(moved) => moved,
            Err(e) => {
                tracing::warn!(error = %e, "cannot sync the config repo");
                self.status.last_sync_error = Some(e.to_string());
                self.publish(None);
                return;
            }
        };
        let Some(worktree) = self.checkout.as_ref().map(|c| c.worktree().to_path_buf()) else {
            return;
        };
        let Some(repo) = self.load(worktree.clone()).await else {
            return;
        };
        for diagnostic in &repo.diagnostics {
            tracing::warn!(%diagnostic, "manifest error; its last good lock stays");
        }
        for diagnostic in &repo.refused {
            tracing::warn!(%diagnostic, "manifest refused; none of its pins is served or written");
        }
        // The webhook gets the pins as they are now, before any slow resolving.
        self.update_pins(&repo).await;
        let Some(config) = repo.config.clone() else {
            tracing::error!("imagelock.yaml is invalid; nothing is locked until it is fixed");
            self.publish(Some(&repo));
            return;
        };
        // The rest writes (the mirror, the config repo): the leader's part. A replica that
        // never led keeps its scheduler empty, so when it takes over everything is due.
        let leadership = self.leadership.clone();
        if !leadership.is_leader() {
            // Hooks reach every replica; a follower's pushes would only pile up (when it takes
            // over, everything is due anyway).
            self.pushes.clear();
            self.untrusted.clear();
            self.publish(Some(&repo));
            return;
        }
        let entries_changed = self.scheduler.refresh(&repo.sets, now);
        self.apply_pushes(&repo, now);
        self.apply_untrusted(&repo, now);
        let Some(trusted) = self.trusted.clone() else {
            tracing::warn!(
                "the lock files of this head could not be checked; nothing is resolved until they can"
            );
            self.publish(Some(&repo));
            return;
        };
        let due = self.scheduler.due(now);
        if due.is_empty() && !entries_changed && !moved {
            self.publish(Some(&repo));
            return;
        }

        let access = match self.access(&config) {
            Ok(access) => access,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the registry client");
                self.status.last_commit_error =
                    Some(format!("cannot build the registry client: {e}"));
                self.publish(Some(&repo));
                return;
            }
        };
        let in_due = |set: &manifest::ImageSet, spec: &manifest::ImageSpec| {
            due.contains(&(set.path.clone(), spec.name.clone()))
        };
        // Resolving has no side effects: on shutdown, drop it rather than wait for slow
        // registries (`run` waits for this loop to end).
        let mut observations = tokio::select! {
            observations = reconcile::observe(&access, &worktree, &repo, trusted.as_ref(), &in_due, self.deadlines.entry) => observations,
            _ = shutdown.cancelled() => return,
            _ = leadership.lost() => return self.drop_pass(&repo),
        };
        if repo
            .sets
            .iter()
            .any(|set| set.images.iter().any(|spec| spec.mirror))
        {
            // One engine per pass (per namespace under tenancy): blobs shared by images are
            // copied once. Dropping a copy on shutdown is safe: the registry keeps only
            // complete, verified content.
            let engines = EngineSettings {
                options: EngineOptions {
                    image_timeout: Some(self.deadlines.mirror),
                    ..EngineOptions::default()
                },
                progress: Arc::new(Silent),
            };
            let report = tokio::select! {
                report = reconcile::mirror(&access, &engines, &worktree, &repo, trusted.as_ref(), &mut observations, now) => report,
                _ = shutdown.cancelled() => return,
                _ = leadership.lost() => return self.drop_pass(&repo),
            };
            tracing::info!(
                manifests = report.manifests_pushed,
                blobs = report.blobs_uploaded,
                bytes = report.bytes_uploaded,
                mounted = report.blobs_mounted,
                "mirror pass done"
            );
        }
        self.scheduler.attempted(&due, now);
        self.entries.record(observations.iter(), now);

        // Shutdown between resolving and committing: the commit is not started.
        if shutdown.is_cancelled() {
            return;
        }
        if !leadership.is_leader() {
            return self.drop_pass(&repo);
        }
        // The commit loads the manifests again, on the head it is made on, and hands them
        // back: the status and the webhook then show that head. Two copies of the repo at
        // once would double its memory (thousands of entries), so this one goes first.
        drop(repo);
        drop(trusted);
        let repo = match self.commit(observations, &config, now).await {
            Some(repo) => repo,
            None => match self.load(worktree).await {
                Some(repo) => repo,
                None => return,
            },
        };
        self.update_pins(&repo).await;
        self.publish(Some(&repo));
    }

    /// Ends a pass whose replica lost the Lease: nothing of it is written; the new leader
    /// resolves for itself.
    fn drop_pass(&mut self, repo: &Admitted) {
        tracing::info!("leadership lost: the pass in flight stops before writing");
        self.publish(Some(repo));
    }

    /// Loads the manifests of the checkout; a failure is logged and published.
    async fn load(&mut self, worktree: PathBuf) -> Option<Arc<Admitted>> {
        match load_repo(worktree, self.policy.clone(), self.config.tenancy.clone()).await {
            Ok(repo) => Some(repo),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the config repo");
                self.status.last_sync_error = Some(e.to_string());
                self.publish(None);
                None
            }
        }
    }

    /// Clones on first use, then fetches and resets. Returns whether the head moved.
    async fn sync(&mut self) -> Result<bool, String> {
        let remote = self.remote.clone();
        let workdir = self.config.workdir.clone();
        let checkout = self.checkout.take();
        let joined = tokio::task::spawn_blocking(move || {
            let mut checkout = match checkout {
                Some(checkout) => checkout,
                None => Checkout::open_or_clone(remote, &workdir, GitTimeouts::default())?,
            };
            let outcome = checkout.sync();
            Ok::<_, git::GitError>((checkout, outcome))
        })
        .await;
        let (checkout, outcome) = match joined {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                count_git_error(&e);
                return Err(e.to_string());
            }
            Err(e) => return Err(format!("git task failed: {e}")),
        };
        self.checkout = Some(checkout);
        let outcome = outcome.map_err(|e| {
            count_git_error(&e);
            e.to_string()
        })?;
        if outcome.moved {
            tracing::info!(head = %outcome.head, "config repo moved");
        }
        self.status.head = Some(outcome.head);
        let synced = Utc::now();
        self.status.last_sync = Some(synced);
        crate::telemetry::METRICS.synced(&self.status.repo, synced);
        self.status.last_sync_error = None;
        Ok(outcome.moved)
    }

    fn access(&mut self, config: &RepoConfig) -> Result<Arc<RegistryAccess>, RegistryError> {
        if let Some((settings, access)) = &self.access
            && *settings == config.registries
        {
            return Ok(access.clone());
        }
        let access = Arc::new(self.config.registry_access(&config.registries)?);
        self.access = Some((config.registries.clone(), access.clone()));
        Ok(access)
    }

    /// Applies the observations on the current head, commits and pushes; on a rejected push,
    /// fetches and applies again on the new head. Returns the manifests as loaded on the head
    /// it leaves (pushed or not), when it got that far.
    async fn commit(
        &mut self,
        observations: Observations,
        config: &RepoConfig,
        now: DateTime<Utc>,
    ) -> Option<Arc<Admitted>> {
        let mut checkout = self.checkout.take()?;
        let author = Author {
            name: config.git.author_name.clone(),
            email: config.git.author_email.clone(),
        };
        let template = config.git.message.clone();
        let attempts = self.config.push_attempts;
        let leadership = self.leadership.clone();
        let tenancy = self.config.tenancy.clone();
        let verified = self.verified.clone().unwrap_or_default();
        let policy = self.policy.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let mut changes = Vec::new();
            let mut loaded = None;
            let mut written = Vec::new();
            let apply = |worktree: &std::path::Path| {
                // The previous attempt's manifests go before these are read.
                loaded = None;
                written.clear();
                let repo = Arc::new(reconcile::load(worktree, &policy, &tenancy)?);
                // The head this attempt is made on may bring locks someone else changed: the
                // locks are computed from the versions this daemon verified.
                let trusted = TrustedLocks::open(worktree, &repo.sets, Some(&verified))?;
                let outcome =
                    reconcile::apply_to(worktree, &repo, &trusted, &observations, now, Mode::Write);
                loaded = Some(repo);
                let mut outcome = outcome?;
                written = std::mem::take(&mut outcome.locks);
                if outcome.touched.is_empty() {
                    return Ok(None);
                }
                let message = outcome.commit_message(&template);
                changes = outcome.changes;
                Ok::<_, reconcile::ReconcileError>(Some((outcome.touched, message)))
            };
            // The last guard: a Lease lost while the locks were written stops the push.
            let result =
                git::commit_and_push_guarded(&mut checkout, &author, attempts, apply, || {
                    leadership.is_leader()
                });
            let failed = result.is_err();
            // Unpushed locks are nobody's pins: the work tree (read for the status and the
            // webhook) goes back to what the remote has.
            if failed {
                loaded = None;
                if let Err(e) = checkout.discard_local() {
                    tracing::warn!(error = %e, "cannot drop the unpushed lock commit");
                }
            }
            (checkout, result, changes, loaded, written)
        })
        .await;
        let (checkout, result, changes, loaded, written) = match joined {
            Ok(joined) => joined,
            Err(e) => {
                // The checkout went with the failed task; the next pass clones or reopens it.
                tracing::error!(error = %e, "commit task failed");
                self.status.last_commit_error = Some(format!("commit task failed: {e}"));
                return None;
            }
        };
        self.checkout = Some(checkout);
        // What the remote has now is what this pass computed: its own locks.
        if result.is_ok() {
            let mut verified = self.verified.take().unwrap_or_default();
            Arc::make_mut(&mut verified).record(&written);
            self.verified = Some(verified);
        }
        match result {
            Ok(PushResult::NothingToCommit) => {
                tracing::debug!("locks unchanged; nothing to commit");
                self.status.last_commit_error = None;
            }
            Ok(PushResult::Pushed { commit, attempts }) => {
                let metrics = &crate::telemetry::METRICS;
                metrics.commits.inc();
                metrics
                    .push_retries
                    .inc_by(u64::from(attempts.saturating_sub(1)));
                for change in &changes {
                    tracing::info!(lock = %change.lock, %change, "pin changed");
                }
                tracing::info!(%commit, attempts, changes = changes.len(), "pushed lock update");
                self.status.head = Some(commit.clone());
                self.status.last_commit = Some(commit);
                self.status.last_commit_error = None;
            }
            Err(git::RetryError::PushWithheld) => {
                tracing::info!("leadership lost before the push: the lock commit is dropped");
            }
            Err(e) => {
                crate::telemetry::METRICS.git_error(retry_error_operation(&e));
                tracing::error!(error = %e, "cannot commit lock changes");
                self.status.last_commit_error = Some(e.to_string());
            }
        }
        loaded
    }

    /// Reads the lock files of the checkout once per head, on a blocking thread (thousands of
    /// entries would hold up the webhook), as this daemon trusts them (see
    /// [`crate::pins::trusted`]), and gives their pins to `/status` and, when the webhook
    /// runs, to a new index swapped in for the old one. Readers holding the old index finish
    /// with it. Entries whose lock someone else changed, or whose lock disagrees with the
    /// manifest, are due in the next pass.
    async fn update_pins(&mut self, repo: &Arc<Admitted>) {
        if self.pins_revision.is_some() && self.pins_revision == self.status.head {
            return;
        }
        let Some(root) = self.checkout.as_ref().map(|c| c.worktree().to_path_buf()) else {
            return;
        };
        let current = self.index.as_ref().map(IndexHandle::load);
        let revision = self.status.head.clone();
        let loaded = repo.clone();
        // A replica that does not write cannot tell the leader's commits from others': it
        // trusts the checkout as it is, as a fresh start does.
        let verified = self
            .verified
            .clone()
            .filter(|_| self.leadership.is_leader());
        let built = tokio::task::spawn_blocking(move || {
            let trusted = TrustedLocks::open(&root, &loaded.sets, verified.as_deref())?;
            let read = pins::read(&root, &loaded, &trusted);
            let status_pins = entry_pins(&read.pins);
            let index = current.map(|current| {
                let (index, mut problems) =
                    PinIndex::build(&read.pins, &loaded, revision, current.as_deref());
                problems.extend(read.problems);
                (index, problems)
            });
            Ok::<_, git::GitError>((trusted, read.stale, status_pins, index))
        })
        .await;
        let (trusted, stale, pins, index) = match built {
            Ok(Ok(built)) => built,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot tell which lock files this daemon wrote; the current pins stay");
                self.trusted = None;
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the pins failed; the current ones stay");
                self.trusted = None;
                return;
            }
        };
        for (manifest, alias, why) in &stale {
            tracing::warn!(manifest = %manifest.display(), %alias, %why, "lock entry disagrees with its manifest: not served, resolved again");
        }
        self.untrusted.extend(
            stale
                .into_iter()
                .map(|(manifest, alias, _)| (manifest, alias)),
        );
        for manifest in trusted.replaced() {
            if let Some(set) = repo.sets.iter().find(|s| s.path == manifest) {
                self.untrusted.extend(
                    set.images
                        .iter()
                        .map(|spec| (set.path.clone(), spec.name.clone())),
                );
            }
        }
        if self.verified.is_none() || !self.leadership.is_leader() {
            self.verified = Some(Arc::new(trusted.as_verified()));
        }
        self.trusted = Some(Arc::new(trusted));
        self.entries.replace_pins(pins);
        self.pins_revision = self.status.head.clone();
        let (Some(handle), Some((index, problems))) = (&self.index, index) else {
            return;
        };
        for problem in &problems {
            tracing::warn!(%problem, "admission pins");
        }
        let summary = index.summary();
        tracing::info!(
            revision = summary.revision.as_deref().unwrap_or("-"),
            pinned_tags = summary.pinned_tags,
            aliases = summary.aliases,
            "admission pins updated"
        );
        self.status.admission = Some(summary);
        handle.store(index);
    }

    /// Publishes a status snapshot for the admin endpoints (the pins as of the last
    /// [`Self::update_pins`]).
    fn publish(&mut self, repo: Option<&Admitted>) {
        if let Some(repo) = repo {
            self.status.ready = true;
            self.status.manifest_errors = repo
                .all_diagnostics()
                .iter()
                .map(ToString::to_string)
                .collect();
            let scheduler = &self.scheduler;
            self.status.images = self
                .entries
                .images(&repo.sets, |key| scheduler.next_run(key))
                .into();
        }
        self.status_tx.send_replace(Arc::new(self.status.clone()));
    }
}

/// The pins `/status` shows, per entry: the tags the pins module serves and their digests.
fn entry_pins(pins: &pins::Pins) -> Vec<(EntryKey, Pins)> {
    pins.sets
        .iter()
        .flat_map(|set| {
            set.aliases
                .iter()
                .filter(|alias| !alias.pins.is_empty())
                .map(|alias| {
                    let tags = alias
                        .pins
                        .iter()
                        .map(|pin| (pin.tag.clone(), Arc::from(pin.digest.as_str())))
                        .collect();
                    ((set.manifest.clone(), alias.alias.clone()), tags)
                })
        })
        .collect()
}

/// The `operation` label of a failed commit step: the Git operation that failed, `apply` when
/// writing the locks failed, `push` when every push was rejected.
fn retry_error_operation<E>(error: &git::RetryError<E>) -> &'static str {
    match error {
        git::RetryError::Git(e) => git_error_operation(e),
        git::RetryError::Apply(_) => "apply",
        git::RetryError::Exhausted { .. } | git::RetryError::PushWithheld => "push",
    }
}

fn git_error_operation(error: &git::GitError) -> &'static str {
    error.operation().map_or("other", git::Operation::as_str)
}

/// Counts a failed fetch/clone of the config repo.
fn count_git_error(error: &git::GitError) {
    crate::telemetry::METRICS.git_error(git_error_operation(error));
}

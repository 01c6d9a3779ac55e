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
use crate::admission::{self, IndexHandle, PinIndex};
use crate::git::{self, Author, Checkout, GitAuth, GitTimeouts, PushResult, RemoteSpec};
use crate::lock;
use crate::manifest::{self, LoadedRepo, RegistrySettings, RepoConfig};
use crate::mirror::progress::Silent;
use crate::reconcile::{self, EntryKey, Mode, Observations};
use crate::reference::ImageRepo;
use crate::registry::{RegistryAccess, RegistryError, RegistryPolicy};

/// Loads the checkout on a blocking thread (parsing thousands of entries takes long enough to
/// hold up the webhook's requests on the runtime), under the operator's registry policy.
async fn load_repo(
    worktree: PathBuf,
    policy: Arc<RegistryPolicy>,
) -> Result<Arc<LoadedRepo>, manifest::ManifestError> {
    let path = worktree.clone();
    match tokio::task::spawn_blocking(move || load_vetted(&worktree, &policy)).await {
        Ok(loaded) => loaded.map(Arc::new),
        Err(e) => Err(manifest::ManifestError::Io {
            path,
            source: std::io::Error::other(format!("the loading task failed: {e}")),
        }),
    }
}

/// The manifests of `worktree`, with what the operator's policy refuses in them reported
/// ([`reconcile::vet_repo`]).
fn load_vetted(
    worktree: &std::path::Path,
    policy: &RegistryPolicy,
) -> Result<LoadedRepo, manifest::ManifestError> {
    let mut repo = manifest::load_repo(worktree)?;
    reconcile::vet_repo(&mut repo, policy);
    Ok(repo)
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
    /// Whether this replica may resolve, mirror and push.
    leadership: Leadership,
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

    /// Makes the entries that the pushes since the last pass affect due now.
    fn apply_pushes(&mut self, repo: &LoadedRepo, now: DateTime<Utc>) {
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
            self.publish(Some(&repo));
            return;
        }
        let entries_changed = self.scheduler.refresh(&repo.sets, now);
        self.apply_pushes(&repo, now);
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
            observations = reconcile::observe(&access, &worktree, &repo, &in_due) => observations,
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
            let report = tokio::select! {
                report = reconcile::mirror(&access, Arc::new(Silent), &worktree, &repo, &mut observations, now) => report,
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
    fn drop_pass(&mut self, repo: &LoadedRepo) {
        tracing::info!("leadership lost: the pass in flight stops before writing");
        self.publish(Some(repo));
    }

    /// Loads the manifests of the checkout; a failure is logged and published.
    async fn load(&mut self, worktree: PathBuf) -> Option<Arc<LoadedRepo>> {
        match load_repo(worktree, self.policy.clone()).await {
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
    ) -> Option<Arc<LoadedRepo>> {
        let mut checkout = self.checkout.take()?;
        let author = Author {
            name: config.git.author_name.clone(),
            email: config.git.author_email.clone(),
        };
        let template = config.git.message.clone();
        let attempts = self.config.push_attempts;
        let leadership = self.leadership.clone();
        let policy = self.policy.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let mut changes = Vec::new();
            let mut loaded = None;
            let apply = |worktree: &std::path::Path| {
                // The previous attempt's manifests go before these are read.
                loaded = None;
                let repo = Arc::new(load_vetted(worktree, &policy)?);
                let outcome = reconcile::apply_to(worktree, &repo, &observations, now, Mode::Write);
                loaded = Some(repo);
                let outcome = outcome?;
                if outcome.touched.is_empty() {
                    return Ok(None);
                }
                let message = reconcile::commit_message(&template, &outcome.changes);
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
            (checkout, result, changes, loaded)
        })
        .await;
        let (checkout, result, changes, loaded) = match joined {
            Ok(joined) => joined,
            Err(e) => {
                // The checkout went with the failed task; the next pass clones or reopens it.
                tracing::error!(error = %e, "commit task failed");
                self.status.last_commit_error = Some(format!("commit task failed: {e}"));
                return None;
            }
        };
        self.checkout = Some(checkout);
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
    /// entries would hold up the webhook), and gives their pins to `/status` and, when the
    /// webhook runs, to a new index swapped in for the old one. Readers holding the old index
    /// finish with it.
    async fn update_pins(&mut self, repo: &Arc<LoadedRepo>) {
        if self.pins_revision.is_some() && self.pins_revision == self.status.head {
            return;
        }
        let Some(root) = self.checkout.as_ref().map(|c| c.worktree().to_path_buf()) else {
            return;
        };
        let current = self.index.as_ref().map(IndexHandle::load);
        let revision = self.status.head.clone();
        let repo = repo.clone();
        let built = tokio::task::spawn_blocking(move || {
            let mut pins = Vec::new();
            let locks = admission::locks_of(&root, &repo).inspect(|(set, lock)| {
                if let Ok(Some(lock)) = lock {
                    add_entry_pins(set, lock, &mut pins);
                }
            });
            let index = match current {
                Some(current) => Some(PinIndex::build(locks, &repo, revision, current.as_deref())),
                None => {
                    // Without a webhook only the status wants the pins.
                    locks.for_each(drop);
                    None
                }
            };
            (pins, index)
        })
        .await;
        let (pins, index) = match built {
            Ok(built) => built,
            Err(e) => {
                tracing::error!(error = %e, "reading the pins failed; the current ones stay");
                return;
            }
        };
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
    fn publish(&mut self, repo: Option<&LoadedRepo>) {
        if let Some(repo) = repo {
            self.status.ready = true;
            self.status.manifest_errors =
                repo.diagnostics.iter().map(ToString::to_string).collect();
            let scheduler = &self.scheduler;
            self.status.images = self
                .entries
                .images(&repo.sets, |key| scheduler.next_run(key))
                .into();
        }
        self.status_tx.send_replace(Arc::new(self.status.clone()));
    }
}

/// Adds the pinned digests of the entries of `set`, from its lock.
fn add_entry_pins(
    set: &manifest::ImageSet,
    lock: &lock::LockFile,
    pins: &mut Vec<(EntryKey, Pins)>,
) {
    for (alias, image) in &lock.images {
        let tags = image
            .tags
            .iter()
            .map(|(tag, pin)| (tag.clone(), Arc::from(pin.digest.as_str())))
            .collect();
        pins.push(((set.path.clone(), alias.clone()), tags));
    }
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

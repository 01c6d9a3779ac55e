//! `imagelock::daemon::run` in-process, end to end: a real `docker-registry`, a bare `file://`
//! config repo with the `git` CLI as the other writer, and the admin endpoints over HTTP.
//!
//! Nothing here asserts on durations: every wait is a bounded poll for an observable result
//! (a commit on the remote, a field of `/status`), so a slow machine only makes a test slower.

use std::future::Future;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use imagelock::daemon::{DaemonConfig, DaemonError};
use imagelock::git::{
    Author, Checkout, GitAuth, GitTimeouts, PushResult, RemoteSpec, commit_and_push_with_retry,
};
use imagelock::lock::{LockFile, LockedTag};
use imagelock::manifest;
use imagelock::reconcile::{self, Mode};
use imagelock::registry::{
    ClientConfig, CredentialStore, RegistryAccess, RegistryClient, RegistryPolicy,
};
use imagelock::tenancy::Tenancy;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::common::{
    ConfigRepo, FakeApiServer, Fault, FaultProxy, HostileRegistry, ImageSpec, PushedImage,
    PushedIndex, TestRegistry, free_port, git, image_set, push_image, push_index, repo_config,
    skopeo_digest,
};

/// Upper bound of every wait: far above what a pass takes, so only a hang reaches it.
const WAIT: Duration = Duration::from_secs(30);
const TICK: Duration = Duration::from_millis(100);

const WEB_MANIFEST: &str = "images/team-a/web.yaml";
const WEB_LOCK: &str = "images/team-a/web.lock.yaml";

// ---- helpers -------------------------------------------------------------------------

/// Polls `check` every [`TICK`] until it yields a value; panics naming `what` after [`WAIT`].
pub(crate) async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(TICK).await;
    }
}

/// libgit2's socket timeouts are process-wide and the first checkout sets them (see
/// `git::remote::ensure_socket_timeouts`). The daemon uses the default (a 120 s socket stall
/// limit); `git.rs` relies on 5 s. Claim the same 5 s first, whichever module runs first.
fn git_timeouts() -> GitTimeouts {
    GitTimeouts {
        connect: Duration::from_secs(5),
        operation: Duration::from_secs(5),
    }
}

fn claim_git_socket_timeouts(repo: &ConfigRepo) {
    let dir = tempfile::tempdir().expect("tempdir");
    Checkout::open_or_clone(remote_spec(repo), &dir.path().join("repo"), git_timeouts())
        .expect("warm-up clone");
}

fn remote_spec(repo: &ConfigRepo) -> RemoteSpec {
    RemoteSpec {
        url: repo.url(),
        branch: "main".to_owned(),
        auth: GitAuth::None,
    }
}

/// One `web` entry on `host` following `latest` and `1.0`, plus `extra` entries (YAML).
fn web_manifest(host: &str, extra: &str) -> String {
    image_set(
        "team-a",
        "web",
        &format!(
            "    - name: web\n      source: {host}/team-a/web\n      tags: [latest, \"1.0\"]\n{extra}"
        ),
    )
}

/// A config repo with `imagelock.yaml`, a README and `images/team-a/web.yaml`.
fn config_repo(manifest: String) -> ConfigRepo {
    ConfigRepo::new(&[
        ("imagelock.yaml", repo_config()),
        ("README.md", "config repo\n".to_owned()),
        (WEB_MANIFEST, manifest),
    ])
}

/// `latest` as a two-platform index and `1.0` as a single-arch image, on `team-a/web`.
async fn push_web(host: &str) -> (PushedIndex, PushedImage) {
    let index = push_index(
        host,
        "team-a/web",
        "latest",
        &["linux/amd64", "linux/arm64"],
    )
    .await;
    let single = push_image(host, "team-a/web", "1.0", ImageSpec::small("linux/amd64")).await;
    (index, single)
}

/// The lock at `path` on the remote's main, parsed.
pub(crate) fn remote_lock(repo: &ConfigRepo, path: &str) -> Option<LockFile> {
    let text = repo.show(path)?;
    Some(imagelock::lock::parse(Path::new(path), &text).expect("lock parses"))
}

fn tag<'l>(lock: &'l LockFile, image: &str, tag: &str) -> &'l LockedTag {
    lock.images
        .get(image)
        .and_then(|i| i.tags.get(tag))
        .unwrap_or_else(|| panic!("no pin for {image}:{tag} in {lock:#?}"))
}

fn timestamp(value: &Value) -> Option<DateTime<Utc>> {
    value.as_str()?.parse().ok()
}

/// `/status` entry of the image `name`.
fn image<'s>(status: &'s Value, name: &str) -> &'s Value {
    status["images"]
        .as_array()
        .and_then(|images| images.iter().find(|i| i["name"] == name))
        .unwrap_or_else(|| panic!("no image {name:?} in /status: {status:#}"))
}

/// A daemon running in this process, cancelled (not awaited) on drop so a failed test leaves
/// nothing behind.
pub(crate) struct Daemon {
    token: CancellationToken,
    handle: Option<JoinHandle<Result<(), DaemonError>>>,
    admin: SocketAddr,
    http: reqwest::Client,
}

impl Daemon {
    /// Starts `daemon::run` and waits until its admin endpoints answer. The admin port was
    /// free when chosen; if something took it before the daemon bound it, tries another.
    async fn start(
        repo: &ConfigRepo,
        workdir: &Path,
        poll_interval: &str,
        insecure: &[&str],
    ) -> Self {
        Self::start_with(repo, workdir, poll_interval, insecure, |_| {}).await
    }

    /// [`Daemon::start`] with more configuration.
    pub(crate) async fn start_with(
        repo: &ConfigRepo,
        workdir: &Path,
        poll_interval: &str,
        insecure: &[&str],
        customize: impl Fn(&mut DaemonConfig),
    ) -> Self {
        Self::start_full(repo, workdir, poll_interval, insecure, None, customize).await
    }

    /// [`Daemon::start`] (1 s polls, `host` insecure, a checkout under `dir`) as the replica
    /// `pod_name` of several: leader election through `server`.
    async fn start_elected(
        repo: &ConfigRepo,
        dir: &Path,
        host: &str,
        server: &FakeApiServer,
        pod_name: &str,
    ) -> Self {
        let elected = |config: &mut DaemonConfig| {
            config.leader_election = true;
            config.pod_name = Some(pod_name.to_owned());
            config.lease_name = LEASE.to_owned();
            // Seconds rather than client-go's 15 s, so a take-over fits in a test.
            config.lease_duration = "2s".to_owned();
            config.lease_renew_deadline = "1s".to_owned();
            config.lease_retry_period = "200ms".to_owned();
        };
        let workdir = dir.join("checkout");
        let kube = Some(server.client());
        Self::start_full(repo, &workdir, "1s", &[host], kube, elected).await
    }

    async fn start_full(
        repo: &ConfigRepo,
        workdir: &Path,
        poll_interval: &str,
        insecure: &[&str],
        kube: Option<kube::Client>,
        customize: impl Fn(&mut DaemonConfig),
    ) -> Self {
        claim_git_socket_timeouts(repo);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("http client");
        for _ in 0..3 {
            let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let mut config = DaemonConfig {
                repo: repo.url(),
                workdir: workdir.to_owned(),
                poll_interval: poll_interval.to_owned(),
                insecure_registries: insecure.iter().map(|h| (*h).to_owned()).collect(),
                // The tests' registries are the operator's own: allowed as mirrors too.
                mirror_registries: insecure.iter().map(|h| (*h).to_owned()).collect(),
                admin_listen: admin,
                ..DaemonConfig::default()
            };
            customize(&mut config);
            let token = CancellationToken::new();
            let handle = tokio::spawn(imagelock::daemon::run_with_kube(
                config,
                kube.clone(),
                token.clone(),
            ));
            let mut daemon = Daemon {
                token,
                handle: Some(handle),
                admin,
                http: http.clone(),
            };
            let up = wait_for("the admin endpoints to answer", || async {
                if daemon.get("/healthz").await == Some(200) {
                    return Some(true);
                }
                (!daemon.is_running()).then_some(false)
            })
            .await;
            if up {
                return daemon;
            }
            let handle = daemon.handle.take().expect("handle");
            match handle.await.expect("daemon task") {
                Err(DaemonError::Listen { .. }) => continue,
                other => panic!("daemon::run ended before its admin port answered: {other:?}"),
            }
        }
        panic!("daemon::run could not listen on a free port in 3 tries");
    }

    /// The HTTP status of `GET path` on the admin port, or `None` when nothing answers.
    async fn get(&self, path: &str) -> Option<u16> {
        let response = self
            .http
            .get(format!("http://{}{path}", self.admin))
            .send()
            .await
            .ok()?;
        Some(response.status().as_u16())
    }

    pub(crate) async fn status(&self) -> Option<Value> {
        let response = self
            .http
            .get(format!("http://{}/status", self.admin))
            .send()
            .await
            .ok()?;
        assert_eq!(response.status().as_u16(), 200, "/status");
        Some(response.json().await.expect("/status is JSON"))
    }

    /// Waits for the status `ready` returns `Some` for.
    pub(crate) async fn wait_status<T>(
        &self,
        what: &str,
        ready: impl Fn(&Value) -> Option<T>,
    ) -> T {
        wait_for(what, || async {
            self.status().await.as_ref().and_then(&ready)
        })
        .await
    }

    /// Waits until the daemon has pushed a commit and returns `/status` then.
    pub(crate) async fn wait_committed(&self) -> Value {
        self.wait_status("the daemon to push a lock commit", |s| {
            (!s["lastCommit"].is_null()).then(|| s.clone())
        })
        .await
    }

    /// Waits until the first pass (resolve, commit step, status) is done: every image shows
    /// an attempt. Returns `/status` then.
    async fn wait_first_pass(&self) -> Value {
        self.wait_status("the first pass to finish", |s| {
            let images = s["images"].as_array()?;
            (!images.is_empty() && images.iter().all(|i| !i["lastAttempt"].is_null()))
                .then(|| s.clone())
        })
        .await
    }

    /// Waits until `lastSync` is later than `after`; returns the new `lastSync`.
    async fn wait_sync_after(&self, after: DateTime<Utc>) -> DateTime<Utc> {
        self.wait_status("another sync of the config repo", |s| {
            timestamp(&s["lastSync"]).filter(|t| *t > after)
        })
        .await
    }

    fn is_running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Cancels and asserts that `run` returns `Ok` within [`WAIT`].
    pub(crate) async fn stop(mut self) {
        self.token.cancel();
        let handle = self.handle.take().expect("running");
        match tokio::time::timeout(WAIT, handle).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("daemon::run failed on shutdown: {e}"),
            Ok(Err(e)) => panic!("daemon task panicked: {e}"),
            Err(_) => panic!("daemon::run did not return within {WAIT:?} of cancellation"),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

// ---- end to end ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_commit_end_to_end_with_status_and_a_down_registry() {
    let registry = TestRegistry::start();
    let host = registry.host();
    let (index, single) = push_web(&host).await;
    let down = format!("127.0.0.1:{}", free_port());
    let repo = config_repo(web_manifest(
        &host,
        &format!("    - name: down\n      source: {down}/x/y\n      tags: [latest]\n"),
    ));
    let dir = tempfile::tempdir().expect("tempdir");

    let daemon = Daemon::start(&repo, &dir.path().join("checkout"), "1s", &[&host, &down]).await;
    assert_eq!(daemon.get("/healthz").await, Some(200));
    wait_for("/readyz to be 200", || async {
        (daemon.get("/readyz").await == Some(200)).then_some(())
    })
    .await;
    let status = daemon.wait_committed().await;

    // Exactly one commit on top of the initial one.
    assert_eq!(repo.commit_count(), 2, "{:?}", repo.subjects());
    let lock = remote_lock(&repo, WEB_LOCK).expect("lock on the remote");
    let latest = tag(&lock, "web", "latest");
    assert_eq!(latest.digest, index.digest);
    assert_eq!(latest.media_type, "application/vnd.oci.image.index.v1+json");
    assert_eq!(latest.platforms, index.children);
    assert_eq!(latest.generation, 1);
    let one = tag(&lock, "web", "1.0");
    assert_eq!(one.digest, single.digest);
    assert_eq!(one.generation, 1);
    assert_eq!(
        skopeo_digest(&host, "team-a/web", "latest").await,
        latest.digest
    );
    assert_eq!(skopeo_digest(&host, "team-a/web", "1.0").await, one.digest);
    // The unreachable entry never resolved: nothing to pin, so no place in the lock.
    assert!(!lock.images.contains_key("down"), "{lock:#?}");

    // /status: the good image resolved, the down one failed with its reason.
    assert_eq!(status["ready"], true);
    assert!(status["lastCommitError"].is_null(), "{status:#}");
    assert_eq!(status["head"], status["lastCommit"]);
    let web = image(&status, "web");
    assert_eq!(web["success"], true, "{web:#}");
    assert_eq!(web["tags"]["latest"]["digest"], index.digest.as_str());
    assert_eq!(web["tags"]["latest"]["success"], true);
    assert_eq!(web["tags"]["1.0"]["digest"], single.digest.as_str());
    assert!(timestamp(&web["nextRun"]).is_some(), "{web:#}");
    let down_status = image(&status, "down");
    assert_eq!(down_status["success"], false, "{down_status:#}");
    assert!(
        timestamp(&down_status["nextRun"]).is_some(),
        "{down_status:#}"
    );
    // A per-tag failure: the reason sits on the tag (the entry-wide `reason` is for failures
    // such as a tag listing).
    let reason = down_status["tags"]["latest"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains(&down), "{down_status:#}");
    assert_eq!(down_status["tags"]["latest"]["success"], false);
    assert!(down_status["tags"]["latest"]["digest"].is_null());

    // The failure stays local: the daemon goes on syncing and answering.
    let synced = timestamp(&status["lastSync"]).expect("lastSync");
    daemon.wait_sync_after(synced).await;
    assert!(daemon.is_running());
    assert_eq!(daemon.get("/healthz").await, Some(200));
    assert_eq!(daemon.get("/readyz").await, Some(200));
    assert_eq!(repo.commit_count(), 2, "{:?}", repo.subjects());
    daemon.stop().await;
}

/// The value of the sample `line_start` (metric name and labels) in an OpenMetrics text.
fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(line_start)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_after_the_first_commit() {
    let registry = TestRegistry::start();
    let host = registry.host();
    push_web(&host).await;
    let repo = config_repo(web_manifest(&host, ""));
    let dir = tempfile::tempdir().expect("tempdir");

    let daemon = Daemon::start(&repo, &dir.path().join("checkout"), "1s", &[&host]).await;
    daemon.wait_committed().await;
    let response = daemon
        .http
        .get(format!("http://{}/metrics", daemon.admin))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = response.text().await.expect("metrics body");
    assert!(text.trim_end().ends_with("# EOF"), "{text}");

    // The metrics are process-wide and the other daemon tests of this binary commit too:
    // at least this daemon's commit. Series labelled with this test's registry or repo are
    // this test's alone.
    let commits = sample(&text, "imagelock_commits_total").expect("commits counter");
    assert!(commits >= 1.0, "{text}");
    let requests: f64 = text
        .lines()
        .filter(|line| {
            line.starts_with(&format!(
                "imagelock_registry_requests_total{{registry=\"{host}\","
            ))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(requests > 0.0, "no requests counted for {host}:\n{text}");
    let resolved = sample(
        &text,
        &format!("imagelock_resolutions_total{{registry=\"{host}\",outcome=\"success\"}}"),
    );
    assert!(resolved.is_some_and(|n| n >= 2.0), "{text}");
    let synced = sample(
        &text,
        &format!(
            "imagelock_last_successful_sync_timestamp_seconds{{repository=\"{}\"}}",
            repo.url()
        ),
    );
    assert!(synced.is_some_and(|t| t > 0.0), "{text}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_second_commit_without_registry_changes() {
    let registry = TestRegistry::start();
    let host = registry.host();
    push_web(&host).await;
    let repo = config_repo(web_manifest(&host, ""));
    let dir = tempfile::tempdir().expect("tempdir");

    let daemon = Daemon::start(&repo, &dir.path().join("first"), "1s", &[&host]).await;
    let status = daemon.wait_committed().await;
    assert_eq!(repo.commit_count(), 2);
    let lock = repo.show(WEB_LOCK).expect("lock");

    // Several polls later: synced twice more, nothing committed.
    let mut synced = timestamp(&status["lastSync"]).expect("lastSync");
    for _ in 0..2 {
        synced = daemon.wait_sync_after(synced).await;
    }
    assert_eq!(repo.commit_count(), 2, "{:?}", repo.subjects());
    daemon.stop().await;

    // A new daemon on a fresh clone resolves every entry at start: same pins, same bytes.
    let daemon = Daemon::start(&repo, &dir.path().join("second"), "1s", &[&host]).await;
    let status = daemon.wait_first_pass().await;
    assert_eq!(image(&status, "web")["success"], true, "{status:#}");
    assert!(status["lastCommit"].is_null(), "{status:#}");
    assert!(status["lastCommitError"].is_null(), "{status:#}");
    daemon
        .wait_sync_after(timestamp(&status["lastSync"]).expect("lastSync"))
        .await;
    assert_eq!(repo.commit_count(), 2, "{:?}", repo.subjects());
    assert_eq!(repo.show(WEB_LOCK).as_deref(), Some(lock.as_str()));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_moved_tag_makes_exactly_one_commit_with_a_new_generation() {
    let registry = TestRegistry::start();
    let host = registry.host();
    let (old, single) = push_web(&host).await;
    let repo = config_repo(web_manifest(&host, ""));
    let dir = tempfile::tempdir().expect("tempdir");
    let workdir = dir.path().join("checkout");

    let daemon = Daemon::start(&repo, &workdir, "1s", &[&host]).await;
    daemon.wait_committed().await;
    daemon.stop().await;
    assert_eq!(repo.commit_count(), 2);
    let before = remote_lock(&repo, WEB_LOCK).expect("lock");
    let old_resolved_at = tag(&before, "web", "latest").resolved_at.clone();

    // `latest` moves upstream; the restarted daemon (same work dir) resolves it at start.
    let new = push_index(
        &host,
        "team-a/web",
        "latest",
        &["linux/amd64", "linux/arm64"],
    )
    .await;
    assert_ne!(new.digest, old.digest);
    let daemon = Daemon::start(&repo, &workdir, "1s", &[&host]).await;
    let status = daemon.wait_committed().await;
    assert_eq!(repo.commit_count(), 3, "{:?}", repo.subjects());

    let lock = remote_lock(&repo, WEB_LOCK).expect("lock");
    let latest = tag(&lock, "web", "latest");
    assert_eq!(latest.digest, new.digest);
    assert_eq!(latest.generation, 2);
    assert_eq!(latest.history.len(), 1, "{latest:#?}");
    assert_eq!(latest.history[0].generation, 1);
    assert_eq!(latest.history[0].digest, old.digest);
    assert_eq!(latest.history[0].resolved_at, old_resolved_at);
    // The tag that did not move is untouched.
    assert_eq!(tag(&lock, "web", "1.0"), tag(&before, "web", "1.0"));
    assert_eq!(tag(&lock, "web", "1.0").digest, single.digest);

    let message = git(&repo.bare, &["log", "-1", "--format=%B", "main"]);
    let line = format!(
        "web:latest {} -> {}",
        old.digest.short(),
        new.digest.short()
    );
    assert!(message.contains(&line), "{line:?} not in {message:?}");
    assert!(!message.contains("web:1.0"), "{message}");
    assert_eq!(
        image(&status, "web")["tags"]["latest"]["digest"],
        new.digest.as_str()
    );

    // And only one: later polls find nothing more to do.
    daemon
        .wait_sync_after(timestamp(&status["lastSync"]).expect("lastSync"))
        .await;
    assert_eq!(repo.commit_count(), 3, "{:?}", repo.subjects());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_push_to_the_local_repo_wakes_the_daemon_without_a_poll() {
    let registry = TestRegistry::start();
    let host = registry.host();
    push_web(&host).await;
    let api = push_image(&host, "team-b/api", "2.0", ImageSpec::small("linux/arm64")).await;
    let repo = config_repo(web_manifest(&host, ""));
    let dir = tempfile::tempdir().expect("tempdir");

    // No poll for an hour: only the file watch on the bare repo can start the next pass.
    let daemon = Daemon::start(&repo, &dir.path().join("checkout"), "1h", &[&host]).await;
    daemon.wait_committed().await;
    assert_eq!(repo.commit_count(), 2);

    let manifest = image_set(
        "team-b",
        "api",
        &format!("    - name: api\n      source: {host}/team-b/api\n      tags: [\"2.0\"]\n"),
    );
    repo.push_change("images/team-b/api.yaml", &manifest, "add api");
    let lock = wait_for("the api lock on the remote", || async {
        remote_lock(&repo, "images/team-b/api.lock.yaml")
    })
    .await;
    assert_eq!(tag(&lock, "api", "2.0").digest, api.digest);
    assert_eq!(repo.commit_count(), 4, "{:?}", repo.subjects());
    assert_eq!(repo.subjects()[1], "add api");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_an_idle_daemon_returns_ok_and_closes_the_admin_port() {
    let registry = TestRegistry::start();
    let host = registry.host();
    push_web(&host).await;
    let repo = config_repo(web_manifest(&host, ""));
    let dir = tempfile::tempdir().expect("tempdir");

    let daemon = Daemon::start(&repo, &dir.path().join("checkout"), "1h", &[&host]).await;
    daemon.wait_committed().await;
    assert_eq!(daemon.get("/healthz").await, Some(200));
    let admin = daemon.admin;
    daemon.stop().await;
    // `run` has returned: nothing listens on the admin port any more.
    assert!(
        TcpStream::connect_timeout(&admin, Duration::from_secs(1)).is_err(),
        "the admin port still accepts connections after run returned"
    );
}

/// `web` behind a proxy that holds every manifest request for an hour, and a config repo
/// that names it through the proxy: a pass that resolves stays in flight. Keep the registry.
async fn stalled_web() -> (TestRegistry, FaultProxy, ConfigRepo, tempfile::TempDir) {
    let registry = TestRegistry::start();
    push_web(&registry.host()).await;
    let proxy = FaultProxy::start(&registry.host()).await;
    proxy.add_rule("manifests", Fault::Delay(Duration::from_secs(3600)), None);
    let repo = config_repo(web_manifest(&proxy.host(), ""));
    let dir = tempfile::tempdir().expect("tempdir");
    (registry, proxy, repo, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_while_a_registry_stalls_does_not_wait_for_it() {
    // Far longer than any wait here: `run` must not sit out the registry's timeouts.
    let (_registry, proxy, repo, dir) = stalled_web().await;
    let host = proxy.host();

    let daemon = Daemon::start(&repo, &dir.path().join("checkout"), "1h", &[&host]).await;
    wait_for("a manifest request held by the proxy", || async {
        (proxy.max_in_flight() > 0).then_some(())
    })
    .await;
    let admin = daemon.admin;
    daemon.stop().await;
    assert!(TcpStream::connect_timeout(&admin, Duration::from_secs(1)).is_err());
    assert_eq!(repo.commit_count(), 1, "{:?}", repo.subjects());
}

// ---- the race with a second writer ---------------------------------------------------

/// The daemon's commit step, driven directly: another writer lands a commit between our sync
/// and our push; the retry rebuilds the lock on their commit and pushes on top.
#[test]
fn a_second_writer_racing_the_push_keeps_both_commits() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let registry = TestRegistry::start();
    let host = registry.host();
    let (index, _) = runtime.block_on(push_web(&host));
    let repo = config_repo(web_manifest(&host, ""));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut checkout = Checkout::open_or_clone(
        remote_spec(&repo),
        &dir.path().join("checkout"),
        git_timeouts(),
    )
    .expect("clone");
    checkout.sync().expect("sync");
    let initial = checkout.head().expect("head");

    let client = RegistryClient::new(ClientConfig {
        policy: RegistryPolicy::insecure([host.clone()]),
        ..ClientConfig::default()
    })
    .expect("client");
    let access = RegistryAccess::new(
        client,
        std::sync::Arc::new(CredentialStore::empty()),
        Tenancy::default(),
    );
    let loaded = manifest::load_repo(checkout.worktree()).expect("load");
    let observations = runtime.block_on(reconcile::observe(
        &access,
        checkout.worktree(),
        &loaded,
        &imagelock::pins::CheckoutLocks,
        &|_, _| true,
        reconcile::Deadlines::default().entry,
    ));
    let now = Utc::now();

    let mut calls = 0;
    let mut theirs = None;
    let author = Author {
        name: "imagelock-bot".to_owned(),
        email: "bot@example.com".to_owned(),
    };
    let result = commit_and_push_with_retry(&mut checkout, &author, 3, |worktree| {
        calls += 1;
        if calls == 1 {
            repo.push_change("README.md", "edited by another writer\n", "docs: readme");
            theirs = Some(git(&repo.bare, &["rev-parse", "main"]).trim().to_owned());
        }
        let outcome = reconcile::apply(
            worktree,
            &Default::default(),
            &observations,
            now,
            Mode::Write,
        )?;
        let message = reconcile::commit_message("chore(images): {count} pin(s)", &outcome.changes);
        Ok::<_, reconcile::ReconcileError>(Some((outcome.touched, message)))
    })
    .expect("commit and push");

    let PushResult::Pushed { commit, attempts } = result else {
        panic!("expected a push, got {result:?}");
    };
    assert_eq!((attempts, calls), (2, 2));
    let theirs = theirs.expect("the other writer ran");
    assert_eq!(
        repo.subjects(),
        [
            "chore(images): 2 pin(s)",
            "docs: readme",
            "initial manifests"
        ]
    );
    assert_eq!(git(&repo.bare, &["rev-parse", "main"]).trim(), commit);
    assert_eq!(
        git(&repo.bare, &["rev-parse", "main^"]).trim(),
        theirs,
        "our commit sits directly on the other writer's"
    );
    assert_ne!(theirs, initial);
    assert_eq!(
        repo.show("README.md").as_deref(),
        Some("edited by another writer\n")
    );
    let lock = remote_lock(&repo, WEB_LOCK).expect("lock");
    assert_eq!(tag(&lock, "web", "latest").digest, index.digest);
    // Our commit touched only the lock.
    let files = git(
        &repo.bare,
        &["diff-tree", "--no-commit-id", "--name-only", "-r", "main"],
    );
    assert_eq!(files.trim(), WEB_LOCK);
}

#[tokio::test]
async fn a_quay_push_hook_resolves_at_once_and_a_wrong_secret_triggers_nothing() {
    let registry = TestRegistry::start();
    let host = registry.host();
    push_web(&host).await;
    // Scheduled once a year and polled hourly: only the hook can make it resolve now.
    let repo = config_repo(web_manifest(&host, "      schedule: \"0 0 1 1 *\"\n"));
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = "0123456789abcdef-hook-secret";
    let secret_file = dir.path().join("hook-secret");
    std::fs::write(&secret_file, format!("{secret}\n")).expect("write secret");
    let hooks = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let daemon = Daemon::start_with(&repo, &dir.path().join("checkout"), "1h", &[&host], |c| {
        c.hooks_listen = Some(hooks);
        c.hook_secret_file = Some(secret_file.clone());
    })
    .await;
    daemon.wait_committed().await;
    assert_eq!(repo.commit_count(), 2);

    let moved = push_index(
        &host,
        "team-a/web",
        "latest",
        &["linux/amd64", "linux/arm64"],
    )
    .await;
    let payload = serde_json::json!({
        "name": "web", "repository": "team-a/web", "namespace": "team-a",
        "docker_url": format!("{host}/team-a/web"), "updated_tags": ["latest"],
    })
    .to_string();
    let post = |url: String, token: Option<&str>| {
        let mut request = daemon.http.post(url).body(payload.clone());
        if let Some(token) = token {
            request = request.header("X-Imagelock-Token", token);
        }
        async move {
            request
                .send()
                .await
                .expect("hook request")
                .status()
                .as_u16()
        }
    };
    let base = format!("http://{hooks}/hooks");
    assert_eq!(
        post(format!("{base}/quay/not-the-secret-at-all"), None).await,
        401
    );
    assert_eq!(
        post(format!("{base}/quay"), Some("not-the-secret-at-all")).await,
        401
    );
    assert_eq!(post(format!("{base}/quay"), None).await, 401);
    // Refused hooks trigger nothing: give a wrongly woken daemon time to commit, then look.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(repo.commit_count(), 2, "{:?}", repo.subjects());

    assert_eq!(post(format!("{base}/quay/{secret}"), None).await, 202);
    wait_for("the hook's commit", || async {
        (repo.commit_count() == 3).then_some(())
    })
    .await;
    let lock = remote_lock(&repo, WEB_LOCK).expect("lock");
    let latest = tag(&lock, "web", "latest");
    assert_eq!((latest.generation, &latest.digest), (2, &moved.digest));
    daemon.stop().await;
}

// ---- leader election -----------------------------------------------------------------

/// The Lease the replicas of these tests compete for.
const LEASE: &str = "imagelock";

/// Plays another replica that holds the Lease: writes it as `holder` every 200 ms (a 2 s
/// lease) until dropped.
struct OtherReplica(JoinHandle<()>);

impl OtherReplica {
    fn hold(server: &FakeApiServer, holder: &'static str) -> Self {
        let server = server.clone();
        OtherReplica(tokio::spawn(async move {
            loop {
                server.hold_as(LEASE, holder, 2);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }))
    }
}

impl Drop for OtherReplica {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_that_does_not_lead_commits_nothing_until_it_takes_over() {
    let registry = TestRegistry::start();
    let host = registry.host();
    push_web(&host).await;
    let repo = config_repo(web_manifest(&host, ""));
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeApiServer::default();
    let other = OtherReplica::hold(&server, "replica-a");

    let daemon = Daemon::start_elected(&repo, dir.path(), &host, &server, "replica-b").await;
    // It follows the repo and answers, but resolves and writes nothing.
    let status = daemon
        .wait_status("the repo loaded while another replica leads", |s| {
            (s["ready"] == true && s["lease"]["holder"] == "replica-a").then(|| s.clone())
        })
        .await;
    assert_eq!(status["leader"], false, "{status:#}");
    assert_eq!(status["lease"]["identity"], "replica-b");
    assert_eq!(status["lease"]["name"], LEASE);
    let mut synced = timestamp(&status["lastSync"]).expect("lastSync");
    for _ in 0..2 {
        synced = daemon.wait_sync_after(synced).await;
    }
    assert_eq!(daemon.get("/readyz").await, Some(200));
    let status = daemon.status().await.expect("/status");
    assert!(image(&status, "web")["lastAttempt"].is_null(), "{status:#}");
    assert_eq!(repo.commit_count(), 1, "{:?}", repo.subjects());

    // The other replica goes away: its Lease expires, this one takes over and commits.
    drop(other);
    let status = daemon.wait_committed().await;
    assert_eq!(status["leader"], true, "{status:#}");
    assert_eq!(status["lease"]["holder"], "replica-b");
    assert_eq!(repo.commit_count(), 2, "{:?}", repo.subjects());
    assert_eq!(server.holder(LEASE).as_deref(), Some("replica-b"));

    // Stopping hands the Lease over: no holder, a 1 s duration.
    daemon.stop().await;
    let spec = server.lease(LEASE).and_then(|l| l.spec).expect("the Lease");
    assert_eq!(spec.holder_identity, None, "{spec:?}");
    assert_eq!(spec.lease_duration_seconds, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_the_lease_drops_the_pass_in_flight() {
    // Resolving hangs: the pass stays in flight until something drops it.
    let (_registry, proxy, repo, dir) = stalled_web().await;
    let host = proxy.host();
    let server = FakeApiServer::default();

    let daemon = Daemon::start_elected(&repo, dir.path(), &host, &server, "replica-b").await;
    wait_for(
        "the leader's manifest request held by the proxy",
        || async { (proxy.max_in_flight() > 0).then_some(()) },
    )
    .await;
    let status = daemon.status().await.expect("/status");
    assert_eq!(status["leader"], true, "{status:#}");
    // The pass in flight publishes nothing until it ends.
    let before = timestamp(&status["lastSync"]).unwrap_or(DateTime::<Utc>::MIN_UTC);

    // Another replica takes the Lease: the next renewal is refused and leadership ends at
    // once. Only a dropped pass lets the loop fetch again.
    let _other = OtherReplica::hold(&server, "replica-a");
    daemon
        .wait_status("leadership to be lost", |s| {
            (s["leader"] == false).then_some(())
        })
        .await;
    daemon.wait_sync_after(before).await;
    assert_eq!(repo.commit_count(), 1, "{:?}", repo.subjects());
    daemon.stop().await;
    // Not the holder any more: nothing was released.
    assert_eq!(server.holder(LEASE).as_deref(), Some("replica-a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_registry_fails_its_entry_at_the_deadline_and_the_pass_commits_the_rest() {
    let registry = TestRegistry::start();
    let host = registry.host();
    let (index, _) = push_web(&host).await;
    // A tag page every 2 s, each linking to one more: the pass would wait for 1,000 pages.
    let hostile = HostileRegistry::start(Duration::from_secs(2), Duration::from_secs(3600)).await;
    let slow = hostile.host();
    let repo = config_repo(web_manifest(
        &host,
        &format!("    - name: slow\n      source: {slow}/slow\n      match: v1.x.x\n"),
    ));
    let dir = tempfile::tempdir().expect("tempdir");

    let daemon = Daemon::start_with(
        &repo,
        &dir.path().join("checkout"),
        "1s",
        &[&host, &slow],
        |config| config.entry_timeout = "3s".to_owned(),
    )
    .await;
    let status = daemon.wait_committed().await;

    let lock = remote_lock(&repo, WEB_LOCK).expect("lock on the remote");
    assert_eq!(tag(&lock, "web", "latest").digest, index.digest);
    assert!(!lock.images.contains_key("slow"), "{lock:#?}");
    let slow_status = image(&status, "slow");
    assert_eq!(slow_status["success"], false, "{slow_status:#}");
    let reason = slow_status["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("timed out after 3s resolving {slow}/slow")),
        "{slow_status:#}"
    );
    daemon.stop().await;
}

//! `imagelock serve`: the long-running reconciler.
//!
//! Tasks: the reconcile loop (fetch, resolve what is due, commit and push), the admin server,
//! the admission webhook when `webhookListen` is set (its pins swapped by the reconcile loop
//! after every pass) and, for a `file://` repo, a watcher that wakes the loop when the remote
//! changes. All select on one shutdown token; if an essential task ends, the daemon ends
//! instead of running half-alive.
//!
//! With `leaderElection`, a Lease elector runs too: every replica serves, only the holder of
//! the Lease writes (see [`leader`]). It outlives the reconcile loop on shutdown, so a push in
//! flight stays covered by the Lease until it ends; then the Lease is released.

mod admin;
pub mod hooks;
pub mod leader;
mod memory;
mod reconciler;
mod schedule;
mod status;
pub(crate) mod watch;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch as watch_channel};
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::admission::{self, AdmissionError, CertReloader, IndexHandle, SelfSigned, TlsFiles};
use crate::manifest::RegistrySettings;
use crate::registry::{
    ClientConfig, CredentialStore, RegistryAccess, RegistryClient, RegistryError, RegistryLimits,
    RegistryPolicy,
};
use crate::tenancy::Tenancy;
use leader::{Leadership, LeaseElector, LeaseSettings};

pub use memory::tune_allocator;
pub use schedule::Scheduler;
pub use status::{ImageStatus, LeaseStatus, Status, TagStatus};

/// The daemon's own configuration (not the config repo's `imagelock.yaml`): merged by figment
/// from defaults, a YAML file, `IMAGELOCK_*` variables and flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DaemonConfig {
    /// Config repo URL: `file://`, `https://` or `ssh://` / `git@host:path`.
    pub repo: String,
    pub branch: String,
    /// Where the daemon keeps its clone.
    pub workdir: PathBuf,
    /// How often to fetch the repo, e.g. `60s`, `5m`.
    pub poll_interval: String,
    /// https token for the repo, read on each use so a rotated Secret takes effect.
    pub git_token_file: Option<PathBuf>,
    pub git_ssh_key: Option<PathBuf>,
    pub git_ssh_passphrase_file: Option<PathBuf>,
    /// Docker config.json with registry credentials.
    pub registry_config: Option<PathBuf>,
    /// Registry hosts reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// When not empty, the only registry hosts (besides the insecure and mirror ones) that
    /// sources, token realms and redirects may reach; `*.example.com` lists subdomains.
    pub allowed_registries: Vec<String>,
    /// The registries the repo's `mirror.registry` may name; none by default.
    pub mirror_registries: Vec<String>,
    /// Registry host -> the `auths` entry of `registryConfig` that serves it (default: the
    /// entry named after the host). A login is sent to no other host.
    pub registry_credentials: BTreeMap<String, String>,
    /// Registry host -> token realm hosts elsewhere that its login may be sent to.
    pub token_realms: BTreeMap<String, Vec<String>>,
    /// Registry host -> ceilings for its rate limit and concurrency (the repo may only lower
    /// them).
    pub registry_limits: BTreeMap<String, RegistryLimits>,
    /// Admin endpoints: /healthz, /readyz, /status.
    pub admin_listen: SocketAddr,
    /// Push attempts before a pass gives up (each after a fetch and a rebuild of the locks).
    pub push_attempts: u32,
    /// Admission webhook address (HTTPS, `POST /mutate`); no webhook when unset.
    pub webhook_listen: Option<SocketAddr>,
    /// The webhook's serving certificate chain (PEM), reloaded when it changes.
    pub tls_cert: Option<PathBuf>,
    /// The key of `tls_cert` (PEM).
    pub tls_key: Option<PathBuf>,
    /// Instead of `tls_cert`/`tls_key`: generate a CA and a serving certificate in this
    /// directory; `ca.crt` there is the webhook configuration's `caBundle`.
    pub tls_self_signed: Option<PathBuf>,
    /// The webhook's Service name, for the generated certificate.
    pub webhook_service: String,
    /// The webhook Service's namespace, for the generated certificate.
    pub webhook_namespace: String,
    /// Push hooks address (plain HTTP: `POST /hooks/{dockerhub,quay,git}`); none when unset.
    pub hooks_listen: Option<SocketAddr>,
    /// File holding the hooks' shared secret (required with `hooksListen`).
    pub hook_secret_file: Option<PathBuf>,
    /// Elect one writer among replicas through a `coordination.k8s.io` Lease: every replica
    /// serves, only the holder resolves, mirrors and pushes. Needs `podName` and API access
    /// (in-cluster service account, or a kubeconfig).
    pub leader_election: bool,
    /// The Lease's name.
    pub lease_name: String,
    /// The Lease's namespace; by default the service account's (or the kubeconfig's).
    pub lease_namespace: Option<String>,
    /// This replica's identity in the Lease: its Pod name (`IMAGELOCK_POD_NAME`).
    pub pod_name: Option<String>,
    /// How long others wait after the Lease last changed before taking it over (whole seconds).
    pub lease_duration: String,
    /// How long the leader may fail to renew before it stops writing (less than leaseDuration).
    pub lease_renew_deadline: String,
    /// The pause between attempts to renew or acquire the Lease (less than leaseRenewDeadline).
    pub lease_retry_period: String,
    /// Which manifests may declare which namespace, what each namespace may pull with which
    /// logins, and which sets are shared across namespaces.
    pub tenancy: Tenancy,
    // Server limits: what no client can exceed (see `crate::serving`).
    /// Webhook connections past their TLS handshake at most.
    pub webhook_max_connections: usize,
    /// Webhook connections of one peer (an IPv4 address, an IPv6 /64), handshakes included.
    pub webhook_max_connections_per_peer: usize,
    /// Admin port connections at most.
    pub admin_max_connections: usize,
    /// Hooks port connections at most.
    pub hooks_max_connections: usize,
    /// Admin and hooks connections of one peer at most (behind an ingress, the hooks see one
    /// peer: the ingress controller).
    pub max_connections_per_peer: usize,
    /// File descriptors the admin and hooks servers leave free for the webhook; by default a
    /// quarter of the open-file limit, at least 16 and at most 1024.
    pub fd_reserve: Option<u64>,
    // Bounded work (a slow registry delays only its own entries).
    /// How long resolving one image entry may take in a pass (`2m`); past it the entry fails
    /// alone with the reason, keeps its pins, and the rest of the pass is committed.
    pub entry_timeout: String,
    /// How long copying one image into the mirror may take in a pass (`30m`).
    pub mirror_timeout: String,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            repo: String::new(),
            branch: "main".into(),
            workdir: PathBuf::from("/var/lib/imagelock/checkout"),
            poll_interval: "60s".into(),
            git_token_file: None,
            git_ssh_key: None,
            git_ssh_passphrase_file: None,
            registry_config: None,
            insecure_registries: Vec::new(),
            allowed_registries: Vec::new(),
            mirror_registries: Vec::new(),
            registry_credentials: BTreeMap::new(),
            token_realms: BTreeMap::new(),
            registry_limits: BTreeMap::new(),
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 8081)),
            push_attempts: 5,
            webhook_listen: None,
            tls_cert: None,
            tls_key: None,
            tls_self_signed: None,
            webhook_service: "imagelock".into(),
            webhook_namespace: "imagelock".into(),
            hooks_listen: None,
            hook_secret_file: None,
            leader_election: false,
            lease_name: "imagelock".into(),
            lease_namespace: None,
            pod_name: None,
            lease_duration: "15s".into(),
            lease_renew_deadline: "10s".into(),
            lease_retry_period: "2s".into(),
            tenancy: Tenancy::default(),
            webhook_max_connections: 1024,
            webhook_max_connections_per_peer: 256,
            admin_max_connections: 64,
            hooks_max_connections: 64,
            max_connections_per_peer: 16,
            fd_reserve: None,
            entry_timeout: "2m".into(),
            mirror_timeout: "30m".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("invalid daemon configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin server failed: {0}")]
    Admin(std::io::Error),
    #[error("hooks server failed: {0}")]
    Hooks(std::io::Error),
    #[error("cannot watch {path}: {message}")]
    Watch { path: PathBuf, message: String },
    #[error("admission webhook: {0}")]
    Webhook(#[from] AdmissionError),
    #[error("the {0} task ended unexpectedly")]
    TaskEnded(&'static str),
    #[error("leader election needs the Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
}

impl DaemonError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            DaemonError::Config(_) => "config",
            DaemonError::Listen { .. } => "listen",
            DaemonError::Admin(_) => "admin",
            DaemonError::Hooks(_) => "hooks",
            DaemonError::Watch { .. } => "watch",
            DaemonError::Webhook(_) => "webhook",
            DaemonError::TaskEnded(_) => "task_ended",
            DaemonError::Kube(_) => "kube",
        }
    }
}

impl DaemonConfig {
    pub fn poll_interval(&self) -> Result<Duration, DaemonError> {
        humantime::parse_duration(&self.poll_interval)
            .map_err(|e| DaemonError::Config(format!("pollInterval {:?}: {e}", self.poll_interval)))
    }

    fn validate(&self) -> Result<(), DaemonError> {
        if self.repo.is_empty() {
            return Err(DaemonError::Config(
                "no repo: set --repo, IMAGELOCK_REPO or `repo:` in the config file".into(),
            ));
        }
        if self.poll_interval()?.is_zero() {
            return Err(DaemonError::Config(
                "pollInterval must be more than 0s".into(),
            ));
        }
        if self.push_attempts == 0 {
            return Err(DaemonError::Config(
                "pushAttempts must be at least 1".into(),
            ));
        }
        if self.hooks_listen.is_some() && self.hook_secret_file.is_none() {
            return Err(DaemonError::Config(
                "hooksListen needs hookSecretFile: hooks are never served without a secret".into(),
            ));
        }
        for (key, value) in [
            ("webhookMaxConnections", self.webhook_max_connections),
            (
                "webhookMaxConnectionsPerPeer",
                self.webhook_max_connections_per_peer,
            ),
            ("adminMaxConnections", self.admin_max_connections),
            ("hooksMaxConnections", self.hooks_max_connections),
            ("maxConnectionsPerPeer", self.max_connections_per_peer),
        ] {
            if value == 0 {
                return Err(DaemonError::Config(format!("{key} must be at least 1")));
            }
        }
        self.tenancy
            .validate()
            .map_err(|e| DaemonError::Config(e.to_string()))?;
        self.lease_settings()?;
        self.deadlines()?;
        self.registry_policy()?;
        self.webhook_tls().map(|_| ())
    }

    /// `entryTimeout` and `mirrorTimeout`.
    pub fn deadlines(&self) -> Result<crate::reconcile::Deadlines, DaemonError> {
        crate::reconcile::Deadlines::parse(
            ("entryTimeout", &self.entry_timeout),
            ("mirrorTimeout", &self.mirror_timeout),
        )
        .map_err(DaemonError::Config)
    }

    /// The operator's registry policy, checked (hosts well formed, limits at least 1).
    pub fn registry_policy(&self) -> Result<RegistryPolicy, DaemonError> {
        let set = |hosts: &[String]| hosts.iter().cloned().collect();
        RegistryPolicy {
            insecure: set(&self.insecure_registries),
            allowed: set(&self.allowed_registries),
            mirrors: set(&self.mirror_registries),
            credential_names: self.registry_credentials.clone(),
            token_realms: self
                .token_realms
                .iter()
                .map(|(host, realms)| (host.clone(), set(realms)))
                .collect(),
            limits: self.registry_limits.clone(),
        }
        .validated()
        .map_err(DaemonError::Config)
    }

    /// The registry clients for the repo's per-registry `settings`: the operator's, and one
    /// scope per namespace under tenancy. Reads `registryConfig`.
    pub fn registry_access(
        &self,
        settings: &BTreeMap<String, RegistrySettings>,
    ) -> Result<RegistryAccess, RegistryError> {
        let policy = self.registry_policy().map_err(|e| RegistryError::Config {
            reason: e.to_string(),
        })?;
        let credentials = match &self.registry_config {
            Some(path) => CredentialStore::from_docker_config_file(path)?,
            None => CredentialStore::empty(),
        };
        let operator = RegistryClient::new(ClientConfig {
            policy,
            registries: settings.clone(),
            credentials: credentials.clone(),
            ..ClientConfig::default()
        })?;
        Ok(RegistryAccess::new(
            operator,
            std::sync::Arc::new(credentials),
            self.tenancy.clone(),
        ))
    }

    /// How to keep the leader election Lease; `None` without leader election.
    pub fn lease_settings(&self) -> Result<Option<LeaseSettings>, DaemonError> {
        if !self.leader_election {
            return Ok(None);
        }
        let identity = match self.pod_name.as_deref().map(str::trim) {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => {
                return Err(DaemonError::Config(
                    "leaderElection needs podName, this replica's identity in the Lease: set IMAGELOCK_POD_NAME (from the downward API's metadata.name) or `podName:`".into(),
                ));
            }
        };
        if self.lease_name.is_empty() {
            return Err(DaemonError::Config("leaseName is empty".into()));
        }
        let duration = |key: &str, value: &str| {
            humantime::parse_duration(value)
                .map_err(|e| DaemonError::Config(format!("{key} {value:?}: {e}")))
        };
        let settings = LeaseSettings {
            lease_duration: duration("leaseDuration", &self.lease_duration)?,
            renew_deadline: duration("leaseRenewDeadline", &self.lease_renew_deadline)?,
            retry_period: duration("leaseRetryPeriod", &self.lease_retry_period)?,
            ..LeaseSettings::new(self.lease_name.clone(), identity)
        };
        settings.validate().map_err(DaemonError::Config)?;
        Ok(Some(settings))
    }

    /// Where the webhook's certificate comes from; `None` when there is no webhook.
    fn webhook_tls(&self) -> Result<Option<WebhookTls>, DaemonError> {
        let files = (&self.tls_cert, &self.tls_key);
        let tls = match (&self.tls_self_signed, files) {
            (Some(_), (Some(_), _) | (_, Some(_))) => {
                return Err(DaemonError::Config(
                    "set either tlsSelfSigned or tlsCert and tlsKey, not both".into(),
                ));
            }
            (Some(dir), (None, None)) => {
                for (what, name) in [
                    ("webhookService", &self.webhook_service),
                    ("webhookNamespace", &self.webhook_namespace),
                ] {
                    if !crate::manifest::is_dns_label(name) {
                        return Err(DaemonError::Config(format!(
                            "{what} {name:?} is not a valid Kubernetes name (lowercase letters, digits and -)"
                        )));
                    }
                }
                Some(WebhookTls::SelfSigned(SelfSigned {
                    dir: dir.clone(),
                    service: self.webhook_service.clone(),
                    namespace: self.webhook_namespace.clone(),
                }))
            }
            (None, (Some(cert), Some(key))) => Some(WebhookTls::Files(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            })),
            (None, (Some(_), None) | (None, Some(_))) => {
                return Err(DaemonError::Config(
                    "tlsCert and tlsKey go together: set both".into(),
                ));
            }
            (None, (None, None)) => None,
        };
        match (self.webhook_listen, tls) {
            (Some(_), Some(tls)) => Ok(Some(tls)),
            (Some(_), None) => Err(DaemonError::Config(
                "webhookListen needs a certificate: set tlsCert and tlsKey, or tlsSelfSigned"
                    .into(),
            )),
            (None, Some(_)) => Err(DaemonError::Config(
                "TLS settings without webhookListen: set webhookListen to serve the webhook".into(),
            )),
            (None, None) => Ok(None),
        }
    }
}

/// The webhook's certificate: files (a mounted Secret) or generated.
#[derive(Debug, Clone)]
enum WebhookTls {
    Files(TlsFiles),
    SelfSigned(SelfSigned),
}

/// How often the certificate files are checked even without a change event.
const CERT_POLL: Duration = Duration::from_secs(60);

/// The limits of a plain-HTTP server (admin, hooks) of `config`.
fn plain_limits(
    config: &DaemonConfig,
    max_connections: usize,
    fds: &Arc<crate::serving::FdBudget>,
) -> crate::serving::PlainLimits {
    crate::serving::PlainLimits {
        max_connections,
        max_per_peer: config.max_connections_per_peer,
        fds: Some(fds.clone()),
        ..crate::serving::PlainLimits::default()
    }
}

/// How long the plain-HTTP servers (admin, hooks) give one request, reading its body
/// included, before answering 408: a slow client cannot hold a handler.
pub(crate) const HTTP_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The timeout layer for the plain-HTTP routers.
pub(crate) fn request_timeout() -> tower_http::timeout::TimeoutLayer {
    tower_http::timeout::TimeoutLayer::with_status_code(
        axum::http::StatusCode::REQUEST_TIMEOUT,
        HTTP_REQUEST_TIMEOUT,
    )
}

/// Why the loop should run a pass now rather than at its next scheduled time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// The remote repo changed (file watch).
    RepoChanged,
    /// A push hook arrived.
    Hook(hooks::HookEvent),
}

/// Runs the daemon until `shutdown` is cancelled or an essential task fails. With
/// `leaderElection`, reaches the API server through the in-cluster service account (or a
/// kubeconfig, outside a cluster).
pub async fn run(config: DaemonConfig, shutdown: CancellationToken) -> Result<(), DaemonError> {
    config.validate()?;
    let kube = if config.leader_election {
        Some(
            kube::Client::try_default()
                .await
                .map_err(DaemonError::Kube)?,
        )
    } else {
        None
    };
    run_with_kube(config, kube, shutdown).await
}

/// [`run`] with the API server client given (tests pass one over a fake API server); it is
/// used only with `leaderElection`.
pub async fn run_with_kube(
    config: DaemonConfig,
    kube: Option<kube::Client>,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    config.validate()?;
    match crate::serving::raise_open_file_limit() {
        Ok(limit) if limit.now != limit.before => {
            tracing::info!(
                from = limit.before,
                to = limit.now,
                "raised the open-file limit"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    // Counted against the raised limit: the admin and hooks servers leave this many free.
    let fds = crate::serving::FdBudget::for_process(config.fd_reserve);
    tracing::info!(
        limit = ?fds.limit(),
        reserve = fds.reserve(),
        "file descriptors kept for the webhook"
    );
    // Stopped only once the reconcile loop has ended (see the module doc).
    let elector_stop = CancellationToken::new();
    let (leadership, elector) = match (config.lease_settings()?, kube) {
        (None, _) => (Leadership::always(), None),
        (Some(_), None) => {
            return Err(DaemonError::Config(
                "leaderElection is on but no Kubernetes API client was given".into(),
            ));
        }
        (Some(settings), Some(client)) => {
            let namespace = config
                .lease_namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_owned());
            tracing::info!(
                lease = %settings.name,
                %namespace,
                identity = %settings.identity,
                "leader election on: only the Lease holder writes"
            );
            let api = kube::Api::namespaced(client, &namespace);
            let (elector, leadership) = LeaseElector::new(api, &namespace, settings);
            (leadership, Some(elector))
        }
    };
    let (status_tx, status_rx) = watch_channel::channel(std::sync::Arc::new(Status::default()));
    let (trigger_tx, trigger_rx) = mpsc::channel(16);

    // The webhook's certificate and port first: a bad certificate stops the daemon at once.
    let webhook = match (config.webhook_listen, config.webhook_tls()?) {
        (Some(addr), Some(tls)) => Some(Webhook::prepare(addr, tls, &config).await?),
        _ => None,
    };
    let index = webhook.as_ref().map(|w| w.index.clone());

    let listener = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: config.admin_listen,
            source,
        })?;
    tracing::info!(addr = %config.admin_listen, "admin endpoints listening");
    let admin = tokio::spawn({
        let serve = admin::serve(
            listener,
            status_rx,
            index.clone(),
            leadership.clone(),
            plain_limits(&config, config.admin_max_connections, &fds),
            shutdown.clone(),
        );
        async move { serve.await.map_err(DaemonError::Admin) }
    });

    let hooks = match (config.hooks_listen, &config.hook_secret_file) {
        (Some(addr), Some(secret_file)) => {
            let secret = hooks::HookSecret::from_file(secret_file)
                .map_err(|e| DaemonError::Config(e.to_string()))?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| DaemonError::Listen { addr, source })?;
            tracing::info!(%addr, "push hooks listening");
            let router = hooks::router(secret, trigger_tx.clone());
            let serve = crate::serving::serve_plain(
                "hooks",
                listener,
                router,
                plain_limits(&config, config.hooks_max_connections, &fds),
                shutdown.clone(),
            );
            Some(tokio::spawn(async move {
                serve.await.map_err(DaemonError::Hooks)
            }))
        }
        _ => None,
    };

    // Keep the watcher alive for the daemon's lifetime; dropping it stops the watch.
    let _watcher = match watch::local_repo_path(&config.repo) {
        Some(path) => Some(watch::watch(&path, trigger_tx.clone())?),
        None => None,
    };

    let reconciler = reconciler::Reconciler::new(config, status_tx, index, leadership)?;
    // Started last, when nothing can fail any more: an early error must not leave it holding
    // the Lease.
    let elector = elector.map(|elector| {
        let run = elector.run(elector_stop.clone());
        tokio::spawn(async move {
            run.await;
            Ok(())
        })
    });
    let reconcile = tokio::spawn({
        let run = reconciler.run(trigger_rx, shutdown.clone());
        // Dropped when the loop ends, panics included: only then may the Lease go.
        let release_lease = elector_stop.clone().drop_guard();
        async move {
            run.await;
            drop(release_lease);
            Ok(())
        }
    });

    let mut tasks = vec![
        named("admin server", admin),
        named("reconcile loop", reconcile),
    ];
    if let Some(hooks) = hooks {
        tasks.push(named("hooks server", hooks));
    }
    if let Some(elector) = elector {
        tasks.push(named("leader election", elector));
    }
    if let Some(webhook) = webhook {
        tasks.push(named(
            "webhook server",
            tokio::spawn(webhook.run(shutdown.clone())),
        ));
    }
    let ((name, result), _, rest) = futures_util::future::select_all(tasks).await;
    let first = task_result(name, result, shutdown.is_cancelled());
    // Whatever ended first, the rest stop too, and `run` returns only once they have: the
    // ports are closed and a commit in flight has finished.
    shutdown.cancel();
    drop(trigger_tx);
    let mut outcome = first;
    for task in rest {
        let (name, result) = task.await;
        outcome = outcome.and(task_result(name, result, true));
    }
    outcome
}

type TaskOutput = (&'static str, Result<Result<(), DaemonError>, JoinError>);

fn named(
    name: &'static str,
    handle: JoinHandle<Result<(), DaemonError>>,
) -> Pin<Box<dyn Future<Output = TaskOutput> + Send>> {
    Box::pin(async move { (name, handle.await) })
}

/// A task that returns is fine only after shutdown was asked for.
fn task_result(
    name: &'static str,
    result: Result<Result<(), DaemonError>, JoinError>,
    cancelled: bool,
) -> Result<(), DaemonError> {
    match result {
        Ok(Ok(())) if cancelled => Ok(()),
        Ok(Err(e)) => Err(e),
        _ => Err(DaemonError::TaskEnded(name)),
    }
}

/// The admission webhook, ready to serve: its port bound, its certificate loaded, its pins
/// still empty until the reconcile loop stores the first index.
struct Webhook {
    listener: tokio::net::TcpListener,
    certs: Arc<CertReloader>,
    tls: Arc<rustls::ServerConfig>,
    index: IndexHandle,
    max_connections: usize,
    max_connections_per_peer: usize,
}

impl Webhook {
    async fn prepare(
        addr: SocketAddr,
        tls: WebhookTls,
        config: &DaemonConfig,
    ) -> Result<Self, DaemonError> {
        let files = match tls {
            WebhookTls::Files(files) => files,
            WebhookTls::SelfSigned(generated) => {
                tokio::task::spawn_blocking(move || generated.ensure())
                    .await
                    .map_err(|e| AdmissionError::Generate(e.to_string()))??
            }
        };
        let provider = admission::tls::provider();
        let certs = CertReloader::load(files, provider.clone())?;
        let tls = Arc::new(admission::tls::server_config(certs.clone(), provider)?);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| DaemonError::Listen { addr, source })?;
        tracing::info!(%addr, "admission webhook listening (HTTPS, POST /mutate)");
        Ok(Webhook {
            listener,
            certs,
            tls,
            index: IndexHandle::new(),
            max_connections: config.webhook_max_connections,
            max_connections_per_peer: config.webhook_max_connections_per_peer,
        })
    }

    async fn run(self, shutdown: CancellationToken) -> Result<(), DaemonError> {
        let server = admission::serve(
            self.listener,
            self.tls,
            self.index,
            admission::ServerOptions {
                observer: Some(admission::RequestObserver(Arc::new(
                    |status, mode, took| {
                        crate::telemetry::METRICS.admission(status.as_u16(), mode, took)
                    },
                ))),
                max_connections: self.max_connections,
                max_handshakes: self.max_connections,
                max_connections_per_peer: self.max_connections_per_peer,
                ..admission::ServerOptions::default()
            },
            shutdown.clone(),
        );
        tokio::join!(server, self.certs.watch(CERT_POLL, shutdown));
        Ok(())
    }
}

/// Cancels `token` on SIGTERM or Ctrl-C.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        token.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        token.cancel();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_config(
        listen: bool,
        cert: bool,
        key: bool,
        self_signed: bool,
    ) -> Result<Option<WebhookTls>, DaemonError> {
        let config = DaemonConfig {
            repo: "file:///srv/config".into(),
            webhook_listen: listen.then(|| "127.0.0.1:8443".parse().unwrap()),
            tls_cert: cert.then(|| "/tls/tls.crt".into()),
            tls_key: key.then(|| "/tls/tls.key".into()),
            tls_self_signed: self_signed.then(|| "/tls/generated".into()),
            ..DaemonConfig::default()
        };
        config.validate()?;
        config.webhook_tls()
    }

    fn config_error(result: Result<Option<WebhookTls>, DaemonError>) -> String {
        match result {
            Err(DaemonError::Config(message)) => message,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn webhook_needs_exactly_one_certificate_source() {
        assert!(mk_config(false, false, false, false).unwrap().is_none());
        assert!(matches!(
            mk_config(true, true, true, false),
            Ok(Some(WebhookTls::Files(_)))
        ));
        assert!(matches!(
            mk_config(true, false, false, true),
            Ok(Some(WebhookTls::SelfSigned(_)))
        ));
        assert!(config_error(mk_config(true, false, false, false)).contains("needs a certificate"));
        assert!(config_error(mk_config(true, true, false, false)).contains("go together"));
        assert!(config_error(mk_config(true, true, true, true)).contains("not both"));
        assert!(
            config_error(mk_config(false, true, true, false)).contains("without webhookListen")
        );
    }

    #[test]
    fn connection_limits_must_allow_a_connection() {
        let zero = DaemonConfig {
            repo: "file:///srv/config".into(),
            max_connections_per_peer: 0,
            ..DaemonConfig::default()
        };
        match zero.validate() {
            Err(DaemonError::Config(message)) => {
                assert!(message.contains("maxConnectionsPerPeer"), "{message}")
            }
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn a_tenancy_glob_that_matches_nothing_is_a_config_error() {
        let config = DaemonConfig {
            repo: "file:///srv/config".into(),
            tenancy: Tenancy {
                shared_sets: vec!["/images/platform/**".into()],
                ..Tenancy::default()
            },
            ..DaemonConfig::default()
        };
        assert!(
            matches!(config.validate(), Err(DaemonError::Config(m)) if m.contains("invalid glob"))
        );
    }

    #[test]
    fn generated_certificates_need_kubernetes_names() {
        let config = DaemonConfig {
            repo: "file:///srv/config".into(),
            webhook_listen: Some("127.0.0.1:8443".parse().unwrap()),
            tls_self_signed: Some("/tls".into()),
            webhook_namespace: "Bad_Name".into(),
            ..DaemonConfig::default()
        };
        assert!(config_error(config.webhook_tls()).contains("webhookNamespace"));
    }

    #[test]
    fn leader_election_needs_a_pod_name_and_a_lease_the_leader_stays_inside() {
        let elected = |pod_name: Option<&str>, renew_deadline: &str| DaemonConfig {
            repo: "file:///srv/config".into(),
            leader_election: true,
            pod_name: pod_name.map(Into::into),
            lease_renew_deadline: renew_deadline.into(),
            ..DaemonConfig::default()
        };
        let error = |config: DaemonConfig| match config.validate() {
            Err(DaemonError::Config(message)) => message,
            other => panic!("expected a config error, got {other:?}"),
        };
        assert!(error(elected(None, "10s")).contains("IMAGELOCK_POD_NAME"));
        assert!(error(elected(Some(" "), "10s")).contains("podName"));
        assert!(error(elected(Some("imagelock-0"), "15s")).contains("leaseRenewDeadline"));
        assert!(
            error(elected(Some("imagelock-0"), "soon")).contains("leaseRenewDeadline \"soon\"")
        );
        let settings = elected(Some("imagelock-0"), "10s")
            .lease_settings()
            .unwrap();
        assert_eq!(
            settings,
            Some(LeaseSettings::new("imagelock", "imagelock-0"))
        );
        // Without election, nothing about it is required or checked.
        let single = DaemonConfig {
            repo: "file:///srv/config".into(),
            lease_renew_deadline: "soon".into(),
            ..DaemonConfig::default()
        };
        assert!(single.validate().is_ok());
        assert_eq!(single.lease_settings().unwrap(), None);
    }
}

//! The request engine under [`RegistryClient`](super::RegistryClient): per-host limits,
//! timeouts, retries with backoff and `Retry-After`, and the 401 challenge round trip.

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue,
    RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode, Url};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ClientConfig;
use super::auth::{self, TokenCache};
use super::budget;
use super::credentials::{Credential, Logins, Secret};
use super::error::{RegistryError, Target, registry_code, registry_message};
use super::policy::{self, DOCKER_HUB_API, GuardedResolver, RegistryPolicy};
use super::retry::{backoff_delay, parse_retry_after};
use crate::manifest::RegistrySettings;
use crate::reference::DOCKER_HUB;

/// The header in which registries name a manifest's digest.
pub const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";
/// Largest token-realm answer read.
const MAX_TOKEN_BODY: u64 = 1 << 20;
/// Largest error body read (the message is all we want from it).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// One registry host: where it is, how it is reached and the limits that protect it.
pub(crate) struct Host {
    /// As written in image references (`docker.io`, `localhost:5000`).
    pub name: String,
    /// `scheme://host[:port]`.
    pub base: Url,
    permits: Arc<Semaphore>,
    /// How many permits `permits` started with.
    capacity: usize,
    spacing: Option<Duration>,
    next_start: Mutex<Instant>,
}

impl Host {
    /// Waits for this request's start slot under the rate limit: starts are spaced
    /// `1 / rate_limit` apart, first come first served.
    async fn pace(&self) {
        let Some(spacing) = self.spacing else { return };
        let start = {
            let mut next = self.next_start.lock().unwrap_or_else(|e| e.into_inner());
            let start = (*next).max(Instant::now());
            *next = start + spacing;
            start
        };
        tokio::time::sleep_until(start.into()).await;
    }

    /// `base/path`, for requests about `target`.
    pub fn url(&self, target: &Target, path: &str) -> Result<Url, RegistryError> {
        self.base
            .join(path)
            .map_err(|e| RegistryError::InvalidResponse {
                target: target.clone(),
                reason: format!("cannot build the request URL: {e}"),
            })
    }

    /// Up to `count` connection slots of this host (never more than it has), held until the
    /// permit is dropped.
    pub async fn slots(&self, count: usize) -> Result<OwnedSemaphorePermit, RegistryError> {
        let count = u32::try_from(count.clamp(1, self.capacity)).unwrap_or(1);
        self.permits
            .clone()
            .acquire_many_owned(count)
            .await
            .map_err(|_| RegistryError::Config {
                reason: "registry client is shutting down".into(),
            })
    }
}

/// One logical request; it may be sent several times.
pub(crate) struct Request<'a> {
    pub target: &'a Target,
    pub method: Method,
    pub url: Url,
    pub accept: Option<&'static str>,
    /// Largest body read for a successful response; more is [`RegistryError::TooLarge`].
    pub max_body: u64,
    /// `Some(scope)`: registry auth, answered from the token cache and by challenge.
    /// `None`: send `fixed_auth` as is (token realm requests).
    pub scope: Option<&'a str>,
    pub fixed_auth: Option<Secret>,
    /// An `application/x-www-form-urlencoded` body.
    pub form: Option<String>,
    /// A small body sent as is with its `Content-Type` (manifests); cheap to resend.
    pub body: Option<(String, Bytes)>,
    /// More headers (`Range`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Leave a successful response's body unread, in [`Response::stream`]: the request
    /// timeout then covers only the response head.
    pub stream: bool,
    /// Whether to take one of the host's connection permits. `false` when the caller already
    /// holds slots for this request ([`Host::slots`]) and for token realm requests, which must
    /// never wait for a permit held by the request they authenticate.
    pub take_permit: bool,
}

impl<'a> Request<'a> {
    /// A request authenticated for `scope`, with no body.
    pub fn new(target: &'a Target, method: Method, url: Url, scope: &'a str) -> Self {
        Request {
            target,
            method,
            url,
            accept: None,
            max_body: 0,
            scope: Some(scope),
            fixed_auth: None,
            form: None,
            body: None,
            headers: Vec::new(),
            stream: false,
            take_permit: true,
        }
    }
}

pub(crate) struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// What `body` holds of the client's memory budget, released with the last holder.
    pub held: budget::Held,
    /// With [`Request::stream`] and a success status: the response, its body unread.
    pub stream: Option<reqwest::Response>,
}

impl Response {
    pub fn header(&self, name: impl reqwest::header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The registry's explanation from the body, for errors.
    pub fn message(&self) -> String {
        registry_message(&self.body)
    }

    /// How long the registry asks to wait (`Retry-After`), when it says so readably.
    pub fn retry_after(&self) -> Option<Duration> {
        self.header(RETRY_AFTER)
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
    }
}

/// Watches a streaming request body for stalls: the body calls [`IdleWatch::touch`] for each
/// chunk and [`IdleWatch::finish`] at its end.
pub(crate) struct IdleWatch {
    pub idle: Duration,
    /// Last progress, and when the body ended.
    state: Mutex<(Instant, Option<Instant>)>,
}

impl IdleWatch {
    pub fn new(idle: Duration) -> Self {
        IdleWatch {
            idle,
            state: Mutex::new((Instant::now(), None)),
        }
    }

    pub fn touch(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0 = Instant::now();
    }

    pub fn finish(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.1.get_or_insert_with(Instant::now);
    }

    /// Resolves when the body made no progress for `idle`, or when it ended more than
    /// `answer` ago without an answer; yields the limit that was hit.
    async fn stalled(&self, answer: Duration) -> Duration {
        let tick = (self.idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        loop {
            tokio::time::sleep(tick).await;
            let (last, finished) = *self.state.lock().unwrap_or_else(|e| e.into_inner());
            match finished {
                Some(at) if at.elapsed() > answer => return answer,
                Some(_) => {}
                None if last.elapsed() > self.idle => return self.idle,
                None => {}
            }
        }
    }
}

/// Counts one request in the metrics exactly once: by its response head or send error, or,
/// when it times out before either, as a request without a response.
struct CountedSend<'a> {
    registry: &'a str,
    method: &'a Method,
    counted: AtomicBool,
}

impl<'a> CountedSend<'a> {
    fn new(registry: &'a str, method: &'a Method) -> Self {
        CountedSend {
            registry,
            method,
            counted: AtomicBool::new(false),
        }
    }

    async fn send(&self, builder: reqwest::RequestBuilder) -> Result<reqwest::Response, Failure> {
        let sent = builder.send().await;
        record_response(self.registry, self.method, sent.as_ref().ok());
        self.counted.store(true, Ordering::Relaxed);
        sent.map_err(classify)
    }

    /// The request timed out: counted without a response unless its head already was.
    fn timed_out(&self) {
        if !self.counted.load(Ordering::Relaxed) {
            record_response(self.registry, self.method, None);
        }
    }
}

/// Why one send failed before a complete response arrived.
enum Failure {
    Timeout,
    Connect(String),
    Network(String),
    TooLarge,
    Invalid(String),
}

impl Failure {
    fn retryable(&self) -> bool {
        matches!(
            self,
            Failure::Timeout | Failure::Connect(_) | Failure::Network(_)
        )
    }

    fn into_error(self, target: &Target, timeout: Duration, max_body: u64) -> RegistryError {
        let target = target.clone();
        match self {
            Failure::Timeout => RegistryError::Timeout {
                target,
                after: timeout,
            },
            Failure::Connect(cause) => RegistryError::Connect { target, cause },
            Failure::Network(cause) => RegistryError::Network { target, cause },
            Failure::TooLarge => RegistryError::TooLarge {
                target,
                limit: max_body,
            },
            Failure::Invalid(reason) => RegistryError::InvalidResponse { target, reason },
        }
    }
}

/// Counts a response (or a request that got none) in the registry metrics.
fn record_response(registry: &str, method: &Method, response: Option<&reqwest::Response>) {
    let remaining = response.and_then(|r| {
        r.headers()
            .get("ratelimit-remaining")
            .and_then(|v| v.to_str().ok())
    });
    crate::telemetry::METRICS.registry_response(
        registry,
        method.as_str(),
        response.map(|r| r.status().as_u16()),
        remaining,
    );
}

/// A reqwest error and its causes on one line ("…: Connection refused (os error 111)"),
/// without the URL.
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

pub(crate) fn classify_error(
    error: reqwest::Error,
    target: &Target,
    timeout: Duration,
) -> RegistryError {
    classify(error).into_error(target, timeout, 0)
}

fn classify(error: reqwest::Error) -> Failure {
    if error.is_timeout() {
        Failure::Timeout
    } else if error.is_redirect() {
        // A redirect the policy refused (or a loop): the same answer on every attempt.
        Failure::Invalid(describe(error))
    } else if error.is_connect() {
        Failure::Connect(describe(error))
    } else if error.is_builder() {
        Failure::Invalid(describe(error))
    } else {
        Failure::Network(describe(error))
    }
}

/// What every credential scope of a client shares: connections, the hosts with their limits,
/// timeouts and the operator's policy. Nothing in here depends on whose logins are used.
pub(crate) struct Shared {
    http: reqwest::Client,
    request_timeout: Duration,
    pub idle_timeout: Duration,
    max_attempts: u32,
    backoff_base: Duration,
    max_retry_after: Duration,
    policy: Arc<RegistryPolicy>,
    registries: std::collections::BTreeMap<String, RegistrySettings>,
    hosts: Mutex<HashMap<String, Arc<Host>>>,
    /// The memory budget of bodies read whole, shared by every credential scope.
    buffered: Arc<Semaphore>,
}

/// One credential scope of a client: the shared part, the logins of the scope and the tokens
/// they got. Tokens never cross scopes: a token one namespace's login obtained is never sent
/// for another namespace's request.
pub(crate) struct Engine {
    shared: Arc<Shared>,
    logins: Logins,
    tokens: TokenCache,
}

impl std::ops::Deref for Engine {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl Engine {
    pub fn new(config: ClientConfig) -> Result<Self, RegistryError> {
        let config_err = |reason: String| RegistryError::Config { reason };
        for (registry, settings) in &config.registries {
            if settings.concurrency == Some(0) {
                return Err(config_err(format!(
                    "{registry}: concurrency must be at least 1"
                )));
            }
            if settings.rate_limit == Some(0) {
                return Err(config_err(format!(
                    "{registry}: rate_limit must be at least 1"
                )));
            }
        }
        if config.max_attempts == 0 {
            return Err(config_err("max_attempts must be at least 1".into()));
        }
        let policy = Arc::new(config.policy.validated().map_err(config_err)?);
        for (registry, entry) in &policy.credential_names {
            if config.credentials.by_name(entry).is_none() {
                return Err(config_err(format!(
                    "registryCredentials.{registry}: the registry config has no auths entry {entry:?}"
                )));
            }
        }
        let redirect_policy = policy.clone();
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!("imagelock/", env!("CARGO_PKG_VERSION")))
            // Every name is resolved through the operator's policy: an unlisted name that
            // resolves inside the cluster is refused, whenever it is resolved.
            .dns_resolver(GuardedResolver::new(policy.clone()))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                // Blob downloads redirect to storage (S3, a CDN); never from https down to
                // plain http, and only to hosts the policy allows (with an allowlist: listed
                // ones). reqwest drops Authorization when the host changes.
                let downgrade = attempt.url().scheme() == "http"
                    && attempt.previous().iter().any(|u| u.scheme() == "https");
                if downgrade {
                    attempt.error("redirect from https to plain http refused")
                } else if attempt.previous().len() > 10 {
                    attempt.error("more than 10 redirects")
                } else if let Err(reason) = redirect_policy.check_redirect(attempt.url()) {
                    attempt.error(reason)
                } else {
                    attempt.follow()
                }
            }))
            .build()
            .map_err(|e| config_err(format!("cannot build the HTTP client: {}", describe(e))))?;
        let shared = Arc::new(Shared {
            http,
            request_timeout: config.request_timeout,
            idle_timeout: config.idle_timeout,
            max_attempts: config.max_attempts,
            backoff_base: config.backoff_base,
            max_retry_after: config.max_retry_after,
            policy,
            registries: config.registries,
            hosts: Mutex::new(HashMap::new()),
            buffered: budget::pool(),
        });
        Ok(Engine::scope(
            shared,
            Logins::all(Arc::new(config.credentials)),
        ))
    }

    fn scope(shared: Arc<Shared>, logins: Logins) -> Self {
        Engine {
            shared,
            logins,
            tokens: TokenCache::default(),
        }
    }

    /// Another credential scope over the same connections, hosts and limits, with its own
    /// (empty) token cache.
    pub fn with_logins(&self, logins: Logins) -> Self {
        Engine::scope(self.shared.clone(), logins)
    }

    /// The operator's policy this client applies.
    pub fn policy(&self) -> &RegistryPolicy {
        &self.policy
    }

    /// The login this scope sends to `host`, if any.
    fn credential(&self, host: &Host) -> Option<&Credential> {
        self.logins.for_registry(&host.name, &self.policy)
    }

    /// The user name of the login this scope would send to `registry`, for tests.
    #[cfg(test)]
    pub fn login_user(&self, registry: &str) -> Option<&str> {
        match self.logins.for_registry(registry, &self.policy)? {
            Credential::Basic { username, .. } | Credential::IdentityToken { username, .. } => {
                Some(username)
            }
        }
    }

    /// The state of `registry`, created on first use.
    pub fn host(&self, registry: &str, target: &Target) -> Result<Arc<Host>, RegistryError> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(host) = hosts.get(registry) {
            return Ok(host.clone());
        }
        self.policy
            .check_host(registry)
            .map_err(|reason| RegistryError::Refused {
                target: target.clone(),
                reason,
            })?;
        let limits = self
            .policy
            .limits_for(registry, self.registries.get(registry));
        let scheme = if self.policy.is_insecure(registry) {
            "http"
        } else {
            "https"
        };
        // Docker Hub's API does not live at the name used in references.
        let authority = if registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            registry
        };
        let base = Url::parse(&format!("{scheme}://{authority}/"))
            .ok()
            .filter(|u| u.path() == "/" && u.query().is_none() && u.host().is_some())
            .ok_or_else(|| RegistryError::Config {
                reason: format!("{target}: {registry:?} is not a registry host name"),
            })?;
        // The URL parser reads `0x7f.1` or `2130706433` as 127.0.0.1: judge the address the
        // connection will use too, not only the name as written.
        if let Some(normalized) = policy::url_host(&base)
            && normalized != authority
        {
            self.policy
                .check_host(&normalized)
                .map_err(|reason| RegistryError::Refused {
                    target: target.clone(),
                    reason,
                })?;
        }
        let concurrency = limits
            .concurrency
            .unwrap_or(policy::DEFAULT_CONCURRENCY)
            .max(1);
        let host = Arc::new(Host {
            name: registry.to_owned(),
            base,
            permits: Arc::new(Semaphore::new(concurrency)),
            capacity: concurrency,
            spacing: limits
                .rate_limit
                .map(|per_second| Duration::from_secs(1) / per_second.max(1)),
            next_start: Mutex::new(Instant::now()),
        });
        hosts.insert(registry.to_owned(), host.clone());
        Ok(host)
    }

    /// Sends once: waits for a permit (unless the caller holds one) and a start slot, then the
    /// request and its whole body within the request timeout.
    async fn once(
        &self,
        host: &Host,
        request: &Request<'_>,
        auth: Option<&Secret>,
    ) -> Result<Response, Failure> {
        let _permit = if request.take_permit {
            Some(
                host.permits
                    .acquire()
                    .await
                    .map_err(|_| Failure::Invalid("client is shutting down".into()))?,
            )
        } else {
            None
        };
        host.pace().await;
        let mut builder = self.builder(request, auth)?;
        if let Some(form) = &request.form {
            builder = builder
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(form.clone());
        }
        if let Some((content_type, body)) = &request.body {
            builder = builder
                .header(CONTENT_TYPE, content_type.as_str())
                .body(body.clone());
        }
        let max_body = request.max_body;
        let counted = CountedSend::new(&host.name, &request.method);
        let exchange = async {
            let mut response = counted.send(builder).await?;
            let status = response.status();
            let headers = response.headers().clone();
            let declared = headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            // A HEAD's Content-Length describes the body a GET would send.
            let head = request.method == Method::HEAD;
            if request.stream && status.is_success() {
                return Ok(Response {
                    status,
                    headers,
                    body: Vec::new(),
                    held: budget::Held::default(),
                    stream: Some(response),
                });
            }
            if !head && status.is_success() && declared.is_some_and(|len| len > max_body) {
                return Err(Failure::TooLarge);
            }
            // Error bodies are read up to their own small cap and cut there: only the
            // message matters.
            let cap = if status.is_success() {
                usize::try_from(max_body).unwrap_or(usize::MAX)
            } else {
                MAX_ERROR_BODY
            };
            let mut body = Vec::new();
            // Bodies read whole count against the client's memory budget (see `budget`), by
            // what they allocate: the body grows as a Vec would, never past its cap, and each
            // growth is reserved first.
            let mut reserved = budget::Reservation::default();
            let out_of_budget = |_| Failure::Invalid("client is shutting down".into());
            if !head {
                if let Some(len) = declared.and_then(|l| usize::try_from(l).ok()) {
                    let len = len.min(cap);
                    reserved
                        .grow_to(&self.buffered, len)
                        .await
                        .map_err(out_of_budget)?;
                    body.reserve_exact(len);
                }
                while let Some(chunk) = response.chunk().await.map_err(classify)? {
                    let room = cap - body.len();
                    if chunk.len() > room && status.is_success() {
                        return Err(Failure::TooLarge);
                    }
                    let take = &chunk[..chunk.len().min(room)];
                    let needed = body.len() + take.len();
                    if needed > body.capacity() {
                        let capacity = needed.max(body.capacity() * 2).min(cap);
                        reserved
                            .grow_to(&self.buffered, capacity)
                            .await
                            .map_err(out_of_budget)?;
                        body.reserve_exact(capacity - body.len());
                    }
                    body.extend_from_slice(take);
                    if chunk.len() > room {
                        break;
                    }
                }
                reserved.shrink_to(body.capacity());
            }
            Ok(Response {
                status,
                headers,
                body,
                held: reserved.into_held(),
                stream: None,
            })
        };
        match tokio::time::timeout(self.request_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => {
                counted.timed_out();
                Err(Failure::Timeout)
            }
        }
    }

    /// The request with its method, URL, `Accept`, extra headers and `Authorization`.
    fn builder(
        &self,
        request: &Request<'_>,
        auth: Option<&Secret>,
    ) -> Result<reqwest::RequestBuilder, Failure> {
        let mut builder = self
            .http
            .request(request.method.clone(), request.url.clone());
        if let Some(accept) = request.accept {
            builder = builder.header(ACCEPT, accept);
        }
        for (name, value) in &request.headers {
            builder = builder.header(name.clone(), value.clone());
        }
        if let Some(auth) = auth {
            let mut value = HeaderValue::from_str(auth.expose())
                .map_err(|_| Failure::Invalid("credential is not a valid header value".into()))?;
            value.set_sensitive(true);
            builder = builder.header(AUTHORIZATION, value);
        }
        Ok(builder)
    }

    /// Sends `request` once with a streaming `body` (a blob upload), which cannot be sent
    /// again: no retry. The caller warms the token with an earlier request of the same scope;
    /// if that token has run out since, a `GET /v2/` answers the challenge before the body
    /// goes. Instead of a whole-request timeout, `idle` bounds every pause of the body
    /// ([`IdleWatch`]); once the body is sent, the registry has the request timeout to answer.
    pub async fn send_streaming_body(
        &self,
        host: &Host,
        request: &Request<'_>,
        content_type: &str,
        content_length: Option<u64>,
        body: reqwest::Body,
        watch: &IdleWatch,
    ) -> Result<Response, RegistryError> {
        let target = request.target;
        let _permit = if request.take_permit {
            Some(host.slots(1).await?)
        } else {
            None
        };
        host.pace().await;
        if let Some(scope) = request.scope
            && self.tokens.expired(&host.name, scope)
        {
            // The session's token ran out while the upload waited or ran. A 401 now would
            // spend the body, so a request that can be sent twice answers the challenge first.
            let url = host.url(target, "v2/")?;
            let probe = Request {
                take_permit: false,
                // `/v2/` answers with a small JSON object, `{}` in distribution.
                max_body: 64 * 1024,
                ..Request::new(target, Method::GET, url, scope)
            };
            self.send(host, &probe).await?;
        }
        // The body's idle clock starts now, not while the request waited for its slot.
        watch.touch();
        let auth = request
            .scope
            .and_then(|scope| self.tokens.get(&host.name, scope));
        let mut builder = self
            .builder(request, auth.as_ref())
            .map_err(|f| f.into_error(target, self.request_timeout, 0))?
            .header(CONTENT_TYPE, content_type)
            .body(body);
        if let Some(length) = content_length {
            builder = builder.header(CONTENT_LENGTH, length);
        }
        let counted = CountedSend::new(&host.name, &request.method);
        let exchange = async {
            let mut response = counted.send(builder).await?;
            let status = response.status();
            let headers = response.headers().clone();
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(classify)? {
                let room = MAX_ERROR_BODY.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(Response {
                status,
                headers,
                body,
                held: budget::Held::default(),
                stream: None,
            })
        };
        let stalled = watch.stalled(self.request_timeout);
        let response = tokio::select! {
            result = exchange => result.map_err(|f: Failure| f.into_error(target, watch.idle, 0))?,
            after = stalled => {
                counted.timed_out();
                return Err(RegistryError::Timeout { target: target.clone(), after });
            }
        };
        if response.status == StatusCode::UNAUTHORIZED
            && let Some(scope) = request.scope
        {
            // The body is spent: answer the challenge so the caller's next attempt carries a
            // valid token, and let the 401 through.
            self.authenticate(host, target, scope, &response).await?;
        }
        Ok(response)
    }

    /// How long an upload body may pause. Its bytes come from a download that is given up on
    /// after `idle_timeout` of silence and then resumed with a request that has
    /// `request_timeout` to answer; the upload outlasts both, or a source that goes silent
    /// would fail the upload (blaming the destination) instead of being resumed.
    pub fn upload_idle(&self) -> Duration {
        self.idle_timeout + self.request_timeout
    }

    /// How long to wait before a failed streamed transfer starts over (its `attempt`-th
    /// failure): the registry's `Retry-After` for [`RegistryError::Busy`], otherwise backoff.
    /// `None` when the registry asks for longer than the client allows: give up instead.
    pub fn retry_delay(&self, error: &RegistryError, attempt: u32) -> Option<Duration> {
        let retry_after = match error {
            RegistryError::Busy { retry_after, .. } => *retry_after,
            _ => None,
        };
        self.wait_before_retry(retry_after, attempt)
    }

    /// The one rule for waiting before a retry: what the registry asked for with
    /// `Retry-After`, otherwise backoff for `attempt`; `None` when the registry asks for longer
    /// than `max_retry_after` (give up instead).
    fn wait_before_retry(&self, retry_after: Option<Duration>, attempt: u32) -> Option<Duration> {
        match retry_after {
            Some(wait) => (wait <= self.max_retry_after).then_some(wait),
            None => Some(backoff_delay(self.backoff_base, attempt)),
        }
    }

    /// Sends `request` until it gets a final answer: answers one 401 challenge, retries
    /// 5xx, 429 and network failures with backoff (honouring `Retry-After`) up to
    /// `max_attempts`. Any other status is returned for the caller to judge.
    pub async fn send(
        &self,
        host: &Host,
        request: &Request<'_>,
    ) -> Result<Response, RegistryError> {
        let target = request.target;
        let mut attempt = 0u32;
        let mut challenged = false;
        loop {
            attempt += 1;
            let auth = match request.scope {
                Some(scope) => self.tokens.get(&host.name, scope),
                None => request.fixed_auth.clone(),
            };
            let outcome = self.once(host, request, auth.as_ref()).await;
            let (delay, why) = match outcome {
                Ok(response)
                    if response.status == StatusCode::UNAUTHORIZED
                        && !challenged
                        && request.scope.is_some() =>
                {
                    challenged = true;
                    // The challenge round trip is not a failed attempt.
                    attempt -= 1;
                    let scope = request.scope.unwrap_or_default();
                    self.authenticate(host, target, scope, &response).await?;
                    continue;
                }
                Ok(response)
                    if response.status == StatusCode::TOO_MANY_REQUESTS
                        || response.status.is_server_error() =>
                {
                    let status = response.status;
                    let retry_after = response.retry_after();
                    let Some(delay) = self.wait_before_retry(retry_after, attempt) else {
                        let reason = format!(
                            "the registry asks to retry after {}s, more than the {}s allowed",
                            retry_after.unwrap_or_default().as_secs(),
                            self.max_retry_after.as_secs()
                        );
                        return Err(final_status_error(target, &response, reason));
                    };
                    if attempt >= self.max_attempts {
                        let reason = format!("gave up after {attempt} attempts");
                        return Err(final_status_error(target, &response, reason));
                    }
                    (delay, format!("HTTP {}", status.as_u16()))
                }
                Ok(response) => return Ok(response),
                Err(failure) if failure.retryable() && attempt < self.max_attempts => {
                    let why = match &failure {
                        Failure::Timeout => "timeout".to_owned(),
                        Failure::Connect(cause) => format!("cannot connect: {cause}"),
                        Failure::Network(cause) | Failure::Invalid(cause) => cause.clone(),
                        Failure::TooLarge => "too large".to_owned(),
                    };
                    (backoff_delay(self.backoff_base, attempt), why)
                }
                Err(failure) => {
                    return Err(failure.into_error(target, self.request_timeout, request.max_body));
                }
            };
            if attempt == 1 {
                tracing::debug!(
                    registry = %target.registry, repository = %target.repository,
                    method = %request.method, path = request.url.path(), attempt,
                    delay_ms = delay.as_millis() as u64, "retrying after {why}"
                );
            } else {
                tracing::warn!(
                    registry = %target.registry, repository = %target.repository,
                    method = %request.method, path = request.url.path(), attempt,
                    delay_ms = delay.as_millis() as u64, "retrying after {why}"
                );
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// Answers a 401: caches Basic credentials, or fetches and caches a Bearer token.
    async fn authenticate(
        &self,
        host: &Host,
        target: &Target,
        scope: &str,
        response: &Response,
    ) -> Result<(), RegistryError> {
        let challenges: Vec<auth::Challenge> = response
            .headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(auth::parse_challenges)
            .collect();
        let unauthorized = |message: String| RegistryError::Unauthorized {
            target: target.clone(),
            status: 401,
            message,
        };
        let Some(challenge) = auth::preferred_challenge(&challenges) else {
            return Err(unauthorized(join_message(
                &response.message(),
                "no Basic or Bearer challenge in WWW-Authenticate",
            )));
        };
        if challenge.scheme == "basic" {
            let header = self.credential(host).and_then(auth::basic_for);
            let Some(header) = header else {
                return Err(unauthorized(format!(
                    "the registry requires a user name and password; none configured for {}",
                    host.name
                )));
            };
            self.tokens.put_basic(&host.name, scope, header);
            return Ok(());
        }
        let realm = challenge
            .param("realm")
            .ok_or_else(|| unauthorized("Bearer challenge without a realm".into()))?;
        // Ask for what we need and what the challenge names: a registry names only the
        // repository of the request, while a cross-repository mount also needs pull on the
        // source repository.
        let mut scopes: Vec<&str> = scope.split_whitespace().collect();
        for named in challenge
            .param("scope")
            .unwrap_or_default()
            .split_whitespace()
        {
            if !scopes.contains(&named) {
                scopes.push(named);
            }
        }
        let (token, lifetime) = self
            .fetch_token(
                host,
                target,
                realm,
                challenge.param("service"),
                &scopes.join(" "),
            )
            .await?;
        self.tokens.put_bearer(&host.name, scope, &token, lifetime);
        Ok(())
    }

    /// Gets a Bearer token from `realm` (token spec; OAuth2 refresh-token grant for identity
    /// tokens). Credentials go only over https, or to a host explicitly marked insecure.
    async fn fetch_token(
        &self,
        host: &Host,
        target: &Target,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(Secret, Duration), RegistryError> {
        let invalid = |reason: String| RegistryError::InvalidResponse {
            target: target.clone(),
            reason,
        };
        let mut url = Url::parse(realm).map_err(|_| {
            invalid(format!(
                "token realm {} is not a URL",
                crate::manifest::quote(realm)
            ))
        })?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(invalid(format!(
                "token realm {} is not http(s)",
                crate::manifest::quote(realm)
            )));
        }
        let realm_host = policy::url_host(&url).unwrap_or_default();
        // Plain http only where the operator allows it, with a login or without: an anonymous
        // token fetched in the clear is one anyone on the path can swap.
        self.policy
            .check_scheme(&url)
            .map_err(|reason| RegistryError::Refused {
                target: target.clone(),
                reason: format!("token realm {reason}"),
            })?;
        let credential = self.credential(host);
        let api_host = policy::url_host(&host.base).unwrap_or_default();
        self.policy
            .check_realm(&host.name, &api_host, &realm_host, credential.is_some())
            .map_err(|reason| RegistryError::Refused {
                target: target.clone(),
                reason,
            })?;
        let scopes: Vec<&str> = scope.split_whitespace().collect();
        let mut request = Request {
            target,
            method: Method::GET,
            url: url.clone(),
            accept: Some("application/json"),
            max_body: MAX_TOKEN_BODY,
            scope: None,
            fixed_auth: None,
            form: None,
            body: None,
            headers: Vec::new(),
            stream: false,
            // The realm is another service; and a request holding this host's slots may be
            // the one that needs the token.
            take_permit: false,
        };
        match credential {
            Some(Credential::IdentityToken { token, .. }) => {
                let mut form = form_urlencoded::Serializer::new(String::new());
                form.append_pair("grant_type", "refresh_token");
                form.append_pair("client_id", "imagelock");
                form.append_pair("refresh_token", token.expose());
                if let Some(service) = service {
                    form.append_pair("service", service);
                }
                for scope in &scopes {
                    form.append_pair("scope", scope);
                }
                request.method = Method::POST;
                request.form = Some(form.finish());
            }
            credential => {
                {
                    let mut query = url.query_pairs_mut();
                    if let Some(service) = service {
                        query.append_pair("service", service);
                    }
                    for scope in &scopes {
                        query.append_pair("scope", scope);
                    }
                }
                request.url = url;
                request.fixed_auth = credential.and_then(auth::basic_for);
            }
        }
        // Boxed: `send` -> `authenticate` -> `fetch_token` -> `send` is a (bounded) cycle,
        // since realm requests carry no scope and never reach `authenticate` again.
        let response = Box::pin(self.send(host, &request)).await?;
        match response.status {
            status if status.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(RegistryError::Unauthorized {
                    target: target.clone(),
                    status: response.status.as_u16(),
                    message: join_message(
                        &response.message(),
                        &format!("token realm {realm_host} refused the request"),
                    ),
                });
            }
            status => {
                return Err(RegistryError::Http {
                    target: target.clone(),
                    status: status.as_u16(),
                    message: join_message(
                        &response.message(),
                        &format!("token realm {realm_host}"),
                    ),
                });
            }
        }
        serde_json::from_slice::<auth::TokenResponse>(&response.body)
            .ok()
            .and_then(auth::TokenResponse::into_token)
            .ok_or_else(|| invalid(format!("token realm {realm_host} answered without a token")))
    }
}

fn join_message(registry_message: &str, ours: &str) -> String {
    if registry_message.is_empty() {
        ours.to_owned()
    } else {
        format!("{ours}: {registry_message}")
    }
}

/// The error for a 429 or 5xx that will not be retried any more.
fn final_status_error(target: &Target, response: &Response, reason: String) -> RegistryError {
    let message = join_message(&response.message(), &reason);
    if response.status == StatusCode::TOO_MANY_REQUESTS {
        RegistryError::TooManyRequests {
            target: target.clone(),
            reason: message,
        }
    } else {
        RegistryError::Http {
            target: target.clone(),
            status: response.status.as_u16(),
            message,
        }
    }
}

/// The error for a final non-success status other than 429/5xx.
pub(crate) fn status_error(target: &Target, response: &Response) -> RegistryError {
    let target = target.clone();
    let message = response.message();
    match response.status {
        StatusCode::UNAUTHORIZED => RegistryError::Unauthorized {
            target,
            status: 401,
            message,
        },
        StatusCode::FORBIDDEN => RegistryError::Denied { target, message },
        StatusCode::NOT_FOUND => RegistryError::NotFound { target, message },
        status => RegistryError::Http {
            target,
            status: status.as_u16(),
            message,
        },
    }
}

/// The error for a refused write (upload, manifest push): 401 and 403 as for reads, with the
/// registry's message; 429 and a passing 5xx as [`RegistryError::Busy`] with the registry's
/// `Retry-After` (only a streamed upload gets here with those: other requests are retried
/// inside [`Engine::send`]); other 4xx as [`RegistryError::Rejected`] with the registry's code.
pub(crate) fn write_error(target: &Target, response: &Response) -> RegistryError {
    match response.status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => {
            status_error(target, response)
        }
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::INTERNAL_SERVER_ERROR
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => RegistryError::Busy {
            target: target.clone(),
            status: response.status.as_u16(),
            message: response.message(),
            retry_after: response.retry_after(),
        },
        status if status.is_client_error() => RegistryError::Rejected {
            target: target.clone(),
            status: status.as_u16(),
            code: registry_code(&response.body),
            message: response.message(),
        },
        _ => status_error(target, response),
    }
}

//! Push hooks: a Docker Hub or Quay push notification re-resolves the image entries it can
//! affect; a Git push notification fetches the config repo at once.
//!
//! Every hook is authenticated by one shared secret, compared in constant time (`subtle`,
//! `hmac`'s own verification for signatures), given in one of these forms:
//! - in the path (`/hooks/dockerhub/<secret>`: Docker Hub and Quay cannot send headers), in
//!   `X-Imagelock-Token` or in `X-Gitlab-Token` (GitLab);
//! - as an HMAC-SHA256 of the body: `X-Hub-Signature-256: sha256=<hex>` (GitHub, Gitea,
//!   Forgejo) or `X-Gitea-Signature: <hex>`;
//! - as a [Standard Webhooks](https://www.standardwebhooks.com/) signature:
//!   `webhook-signature: v1,<base64 HMAC-SHA256 of "<webhook-id>.<webhook-timestamp>.<body>">`.
//!   The secret is the key; a `whsec_<base64>` secret is decoded first, as the spec says.
//!
//! Replays are refused (409) where the sender signs something that tells deliveries apart:
//! a Standard Webhooks timestamp more than [`TIMESTAMP_TOLERANCE`] away from now is refused
//! (401) and its id is remembered; a body signature (GitHub, Gitea) is remembered, so the same
//! signed body is accepted once (their delivery id headers are not signed: a new one does not
//! make a replay new). Delivery ids (`X-GitHub-Delivery`, `X-Gitea-Delivery`,
//! `X-Gitlab-Event-UUID`) are remembered too. The memory is bounded ([`REPLAY_CAPACITY`]
//! entries, each kept for [`REPLAY_MEMORY`]) and only authenticated requests enter it.
//!
//! A request that fails authentication gets 401 and triggers nothing; one that passes gets
//! 202 whether or not an image matched, so the answer never tells whether an image exists.
//! Failures are logged at most once per [`FAILURE_LOG_INTERVAL`], with the count of the
//! lines held back, so a flood of bad requests cannot flood the log.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use hmac::{KeyInit as _, Mac as _};
use serde::Deserialize;
use sha2::Digest as _;
use subtle::ConstantTimeEq as _;
use tokio::sync::mpsc;

use super::Trigger;
use crate::manifest::ImageSpec;
use crate::reference::ImageRepo;
use crate::serving::LogLimiter;

/// How far a signed timestamp may be from the daemon's clock (the Standard Webhooks
/// recommendation).
pub const TIMESTAMP_TOLERANCE: Duration = Duration::from_secs(5 * 60);
/// How long a delivery id or signature is remembered: longer than a timestamp stays valid.
pub const REPLAY_MEMORY: Duration = Duration::from_secs(60 * 60);
/// Deliveries remembered at most; the oldest are forgotten first.
pub const REPLAY_CAPACITY: usize = 10_000;
/// At most one log line per kind of failure per interval.
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Push payloads are small; anything bigger is not one.
const MAX_BODY: usize = 256 * 1024;
/// Standard Webhooks signatures looked at in one `webhook-signature` header.
const MAX_SIGNATURES: usize = 8;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HookError {
    #[error("payload is not valid JSON for a {kind} push: {message}")]
    Payload { kind: &'static str, message: String },
    #[error("{kind} push names an invalid repository {name:?}: {message}")]
    Repository {
        kind: &'static str,
        name: String,
        message: String,
    },
    #[error("cannot read the hook secret {path}: {message}")]
    Secret { path: String, message: String },
}

impl HookError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            HookError::Payload { .. } => "payload",
            HookError::Repository { .. } => "repository",
            HookError::Secret { .. } => "secret",
        }
    }
}

/// What a push notification says happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookEvent {
    /// New content under these tags of this repository.
    ImagePushed { repo: ImageRepo, tags: Vec<String> },
    /// The config repo has new commits.
    RepoPushed,
}

/// Docker Hub's push webhook: `{"push_data": {"tag": ...}, "repository": {"repo_name": ...}}`.
pub fn parse_dockerhub(body: &[u8]) -> Result<HookEvent, HookError> {
    #[derive(Deserialize)]
    struct Payload {
        push_data: PushData,
        repository: Repository,
    }
    #[derive(Deserialize)]
    struct PushData {
        tag: Option<String>,
    }
    #[derive(Deserialize)]
    struct Repository {
        repo_name: String,
    }
    let payload: Payload = serde_json::from_slice(body).map_err(|e| HookError::Payload {
        kind: "Docker Hub",
        message: e.to_string(),
    })?;
    let name = payload.repository.repo_name;
    // Docker Hub names repositories without the registry: `library/nginx`, `company/web`.
    let repo =
        ImageRepo::parse(&format!("docker.io/{name}")).map_err(|e| HookError::Repository {
            kind: "Docker Hub",
            name: name.clone(),
            message: e.to_string(),
        })?;
    Ok(HookEvent::ImagePushed {
        repo,
        tags: payload.push_data.tag.into_iter().collect(),
    })
}

/// Quay's repository push notification: `{"docker_url": "quay.io/ns/repo", "updated_tags": [...]}`.
pub fn parse_quay(body: &[u8]) -> Result<HookEvent, HookError> {
    #[derive(Deserialize)]
    struct Payload {
        docker_url: String,
        #[serde(default)]
        updated_tags: Vec<String>,
    }
    let payload: Payload = serde_json::from_slice(body).map_err(|e| HookError::Payload {
        kind: "Quay",
        message: e.to_string(),
    })?;
    // `docker_url` carries the host, so self-hosted Quay works as quay.io does.
    let repo = ImageRepo::parse(&payload.docker_url).map_err(|e| HookError::Repository {
        kind: "Quay",
        name: payload.docker_url.clone(),
        message: e.to_string(),
    })?;
    Ok(HookEvent::ImagePushed {
        repo,
        tags: payload.updated_tags,
    })
}

/// Whether a push of `tags` to `repo` can move a pin of `spec`: the entry follows one of the
/// tags, or its pattern selects one. Promoter-style `digests:` never move; a push without
/// tags affects every entry of the repository.
pub fn affects(spec: &ImageSpec, repo: &ImageRepo, tags: &[String]) -> bool {
    if spec.source != *repo {
        return false;
    }
    if tags.is_empty() {
        return !spec.tags.is_empty() || spec.matcher.is_some();
    }
    tags.iter().any(|tag| {
        spec.tags.contains(tag)
            || spec
                .matcher
                .as_ref()
                .is_some_and(|m| !m.select(std::slice::from_ref(tag)).is_empty())
    })
}

/// The shared secret. Redacted in `Debug`; compared in constant time.
#[derive(Clone)]
pub struct HookSecret(Arc<[u8]>);

impl std::fmt::Debug for HookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HookSecret(<redacted>)")
    }
}

impl HookSecret {
    /// Reads the secret from a file (a mounted Secret); surrounding whitespace is dropped.
    pub fn from_file(path: &std::path::Path) -> Result<Self, HookError> {
        let text = std::fs::read_to_string(path).map_err(|e| HookError::Secret {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let secret = text.trim();
        if secret.len() < 16 {
            return Err(HookError::Secret {
                path: path.display().to_string(),
                message: "the secret must be at least 16 characters".into(),
            });
        }
        Ok(HookSecret(Arc::from(secret.as_bytes())))
    }

    #[cfg(test)]
    fn new(secret: &str) -> Self {
        HookSecret(Arc::from(secret.as_bytes()))
    }

    fn matches_token(&self, presented: &str) -> bool {
        // Length is not secret (the operator fixes it); the contents are.
        bool::from(self.0.as_ref().ct_eq(presented.as_bytes()))
    }

    fn mac(&self) -> Option<hmac::Hmac<sha2::Sha256>> {
        hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0).ok()
    }

    /// `presented` is the hex of HMAC-SHA256(secret, body).
    fn matches_body_signature(&self, body: &[u8], presented: &str) -> Option<Vec<u8>> {
        let presented = hex::decode(presented.trim()).ok()?;
        let mut mac = self.mac()?;
        mac.update(body);
        mac.verify_slice(&presented).ok()?;
        Some(presented)
    }

    /// The Standard Webhooks key: the secret, or the bytes of a `whsec_<base64>` secret.
    fn standard_key(&self) -> Vec<u8> {
        use base64::Engine as _;
        std::str::from_utf8(&self.0)
            .ok()
            .and_then(|s| s.strip_prefix("whsec_"))
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .unwrap_or_else(|| self.0.to_vec())
    }

    /// `header` holds space-separated `v1,<base64>` signatures of `<id>.<timestamp>.<body>`
    /// (several while a sender rotates keys). The MAC is computed once, and at most
    /// [`MAX_SIGNATURES`] signatures are looked at: an unauthenticated header of a thousand
    /// would otherwise cost a thousand MACs of the body.
    fn matches_standard(&self, id: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
        use base64::Engine as _;
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.standard_key()) else {
            return false;
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        let expected = mac.finalize().into_bytes();
        header
            .split_ascii_whitespace()
            .take(MAX_SIGNATURES)
            .any(|signature| {
                signature
                    .strip_prefix("v1,")
                    .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
                    .is_some_and(|presented| bool::from(expected.as_slice().ct_eq(&presented)))
            })
    }

    /// How the request proves it knows the secret, or `None` when it does not.
    pub fn authenticate(
        &self,
        path_token: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Option<Proof> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if let (Some(id), Some(timestamp), Some(signature)) = (
            header("webhook-id"),
            header("webhook-timestamp"),
            header("webhook-signature"),
        ) && self.matches_standard(id, timestamp, body, signature)
        {
            return Some(Proof::Signed {
                id: id.to_owned(),
                timestamp: timestamp.to_owned(),
            });
        }
        let signature = header("x-hub-signature-256")
            .and_then(|s| s.strip_prefix("sha256="))
            .or_else(|| header("x-gitea-signature"))
            .and_then(|s| self.matches_body_signature(body, s));
        if let Some(signature) = signature {
            return Some(Proof::BodySignature(signature));
        }
        let token = path_token
            .or_else(|| header("x-imagelock-token"))
            .or_else(|| header("x-gitlab-token"));
        token
            .is_some_and(|t| self.matches_token(t))
            .then_some(Proof::Token)
    }

    /// Whether the request carries the secret in any accepted form.
    pub fn authenticates(
        &self,
        path_token: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> bool {
        self.authenticate(path_token, headers, body).is_some()
    }
}

/// What authenticated a hook request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// The secret itself (path or header): nothing tells one delivery from its replay.
    Token,
    /// An HMAC of the body (GitHub, Gitea): the signature identifies the body.
    BodySignature(Vec<u8>),
    /// A Standard Webhooks signature over the delivery's id and timestamp and the body.
    Signed { id: String, timestamp: String },
}

/// Why an authenticated request is refused as a replay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Replay {
    #[error("signed timestamp {0:?} is not within 5 minutes of now")]
    Stale(String),
    #[error("this delivery was already accepted")]
    Seen,
}

/// The delivery ids and signatures of recently accepted hooks: bounded in count and age.
#[derive(Debug)]
pub struct ReplayGuard {
    memory: Duration,
    capacity: usize,
    seen: Mutex<SeenDeliveries>,
}

#[derive(Debug, Default)]
struct SeenDeliveries {
    at: HashMap<[u8; 32], Instant>,
    order: VecDeque<([u8; 32], Instant)>,
}

impl ReplayGuard {
    pub fn new(memory: Duration, capacity: usize) -> Self {
        ReplayGuard {
            memory,
            capacity: capacity.max(1),
            seen: Mutex::default(),
        }
    }

    /// Refuses a replay of an authenticated request, else remembers it. `now` is the
    /// daemon's clock in Unix seconds (for signed timestamps), `at` the monotonic one.
    pub fn check(
        &self,
        proof: &Proof,
        headers: &HeaderMap,
        now: i64,
        at: Instant,
    ) -> Result<(), Replay> {
        let mut keys: Vec<[u8; 32]> = Vec::new();
        match proof {
            Proof::Token => {}
            Proof::BodySignature(signature) => keys.push(key("signature", signature)),
            Proof::Signed { id, timestamp } => {
                let fresh = timestamp
                    .trim()
                    .parse::<i64>()
                    .is_ok_and(|sent| sent.abs_diff(now) <= TIMESTAMP_TOLERANCE.as_secs());
                if !fresh {
                    return Err(Replay::Stale(excerpt(timestamp, 32)));
                }
                keys.push(key("webhook-id", id.as_bytes()));
            }
        }
        for name in [
            "x-github-delivery",
            "x-gitea-delivery",
            "x-gitlab-event-uuid",
        ] {
            if let Some(id) = headers.get(name) {
                keys.push(key(name, id.as_bytes()));
            }
        }
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.forget_older_than(at, self.memory);
        if keys.iter().any(|k| seen.at.contains_key(k)) {
            return Err(Replay::Seen);
        }
        for k in keys {
            while seen.order.len() >= self.capacity {
                seen.forget_oldest();
            }
            seen.at.insert(k, at);
            seen.order.push_back((k, at));
        }
        Ok(())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .at
            .len()
    }
}

impl SeenDeliveries {
    fn forget_older_than(&mut self, now: Instant, memory: Duration) {
        while self
            .order
            .front()
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) >= memory)
        {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((k, at)) = self.order.pop_front()
            && self.at.get(&k) == Some(&at)
        {
            self.at.remove(&k);
        }
    }
}

/// A fixed-size key for what is remembered, whatever the sender put in its header.
fn key(kind: &str, value: &[u8]) -> [u8; 32] {
    let mut hash = sha2::Sha256::new();
    hash.update(kind.as_bytes());
    hash.update([0]);
    hash.update(value);
    hash.finalize().into()
}

/// At most `max` characters of what a client sent, for a log line.
fn excerpt(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

#[derive(Clone)]
struct HookState {
    secret: HookSecret,
    triggers: mpsc::Sender<Trigger>,
    replays: Arc<ReplayGuard>,
}

/// The hooks router: `POST /hooks/{dockerhub,quay,git}[/<secret>]`.
pub fn router(secret: HookSecret, triggers: mpsc::Sender<Trigger>) -> Router {
    Router::new()
        .route("/hooks/{kind}", post(without_token))
        .route("/hooks/{kind}/{token}", post(with_token))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(super::request_timeout())
        .with_state(HookState {
            secret,
            triggers,
            replays: Arc::new(ReplayGuard::new(REPLAY_MEMORY, REPLAY_CAPACITY)),
        })
}

async fn without_token(
    State(state): State<HookState>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    handle(&state, &kind, None, &headers, &body).await
}

async fn with_token(
    State(state): State<HookState>,
    Path((kind, token)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    handle(&state, &kind, Some(&token), &headers, &body).await
}

async fn handle(
    state: &HookState,
    kind: &str,
    token: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> (StatusCode, &'static str) {
    static UNAUTHENTICATED: LogLimiter = LogLimiter::new(FAILURE_LOG_INTERVAL);
    static REPLAYED: LogLimiter = LogLimiter::new(FAILURE_LOG_INTERVAL);
    static INVALID: LogLimiter = LogLimiter::new(FAILURE_LOG_INTERVAL);
    // Authenticate before looking at anything else, the kind included (and never log what
    // the client named it: that is not bounded either).
    let Some(proof) = state.secret.authenticate(token, headers, body) else {
        crate::telemetry::METRICS.refused("hooks", "unauthenticated");
        if let Some(suppressed) = UNAUTHENTICATED.allow() {
            tracing::warn!(suppressed, "hook refused: missing or wrong secret");
        }
        return (StatusCode::UNAUTHORIZED, "unauthorized\n");
    };
    let now = chrono::Utc::now().timestamp();
    if let Err(replay) = state.replays.check(&proof, headers, now, Instant::now()) {
        let reason = match replay {
            Replay::Stale(_) => "stale",
            Replay::Seen => "replay",
        };
        crate::telemetry::METRICS.refused("hooks", reason);
        if let Some(suppressed) = REPLAYED.allow() {
            tracing::warn!(hook = %excerpt(kind, 32), suppressed, "hook refused: {replay}");
        }
        return match replay {
            Replay::Stale(_) => (StatusCode::UNAUTHORIZED, "stale timestamp\n"),
            Replay::Seen => (StatusCode::CONFLICT, "already delivered\n"),
        };
    }
    let event = match kind {
        "dockerhub" => parse_dockerhub(body),
        "quay" => parse_quay(body),
        "git" => Ok(HookEvent::RepoPushed),
        _ => return (StatusCode::NOT_FOUND, "unknown hook\n"),
    };
    match event {
        Ok(event) => {
            tracing::info!(hook = kind, ?event, "hook accepted");
            // A full queue already holds a pass that will see this push too.
            let _ = state.triggers.try_send(Trigger::Hook(event));
            (StatusCode::ACCEPTED, "accepted\n")
        }
        Err(e) => {
            if let Some(suppressed) = INVALID.allow() {
                // The error quotes the payload: a short excerpt of it.
                let error = excerpt(&e.to_string(), 200);
                tracing::warn!(hook = kind, %error, suppressed, "hook payload refused");
            }
            (StatusCode::BAD_REQUEST, "invalid payload\n")
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::manifest::mk_image_spec;
    use crate::manifest::{TagMatcher, VersionPattern};

    /// Docker Hub's documented push payload.
    const DOCKERHUB: &str = r#"{
      "callback_url": "https://registry.hub.docker.com/u/svendowideit/testhook/hook/2141b5bi5i5b02bec211i4eeih0242eg11000a/",
      "push_data": {"pushed_at": 1417566161, "pusher": "trustedbuilder", "tag": "latest"},
      "repository": {
        "comment_count": 0, "date_created": 1417494799, "description": "", "is_official": false,
        "is_private": true, "is_trusted": true, "name": "testhook", "namespace": "svendowideit",
        "owner": "svendowideit", "repo_name": "svendowideit/testhook",
        "repo_url": "https://registry.hub.docker.com/u/svendowideit/testhook/", "star_count": 0,
        "status": "Active"
      }
    }"#;

    /// Quay's documented repository push notification.
    const QUAY: &str = r#"{
      "name": "repository", "repository": "mynamespace/repository", "namespace": "mynamespace",
      "docker_url": "quay.io/mynamespace/repository",
      "homepage": "https://quay.io/repository/mynamespace/repository",
      "updated_tags": ["latest", "v1.2"]
    }"#;

    fn mk_spec(source: &str, tags: &[&str], pattern: Option<&str>) -> ImageSpec {
        ImageSpec {
            matcher: pattern.map(|p| TagMatcher {
                pattern: VersionPattern::parse(p).unwrap(),
                allow_prerelease: false,
                select: Default::default(),
                exclude: vec![],
            }),
            ..mk_image_spec("x", source, tags)
        }
    }

    #[test]
    fn docker_hub_payload() {
        let event = parse_dockerhub(DOCKERHUB.as_bytes()).unwrap();
        assert_eq!(
            event,
            HookEvent::ImagePushed {
                repo: ImageRepo::parse("docker.io/svendowideit/testhook").unwrap(),
                tags: vec!["latest".into()],
            }
        );
        assert!(parse_dockerhub(b"{}").is_err());
        assert!(parse_dockerhub(b"not json").is_err());
    }

    #[test]
    fn quay_payload() {
        let event = parse_quay(QUAY.as_bytes()).unwrap();
        assert_eq!(
            event,
            HookEvent::ImagePushed {
                repo: ImageRepo::parse("quay.io/mynamespace/repository").unwrap(),
                tags: vec!["latest".into(), "v1.2".into()],
            }
        );
    }

    #[test]
    fn pushes_affect_entries_that_follow_the_tag_or_match_it() {
        let repo = ImageRepo::parse("quay.io/company/web").unwrap();
        let tags = ["v2.13.4".to_string()];
        assert!(affects(
            &mk_spec("quay.io/company/web", &[], Some("v2.13.x")),
            &repo,
            &tags
        ));
        assert!(!affects(
            &mk_spec("quay.io/company/web", &[], Some("v2.14.x")),
            &repo,
            &tags
        ));
        assert!(affects(
            &mk_spec("quay.io/company/web", &["v2.13.4"], None),
            &repo,
            &tags
        ));
        assert!(!affects(
            &mk_spec("quay.io/company/web", &["latest"], None),
            &repo,
            &tags
        ));
        assert!(!affects(
            &mk_spec("quay.io/company/api", &["v2.13.4"], None),
            &repo,
            &tags
        ));
        assert!(affects(
            &mk_spec("quay.io/company/web", &["latest"], None),
            &repo,
            &[]
        ));
    }

    #[test]
    fn secrets_by_path_header_or_signature() {
        let secret = HookSecret::new("0123456789abcdef-secret");
        let none = HeaderMap::new();
        assert!(secret.authenticates(Some("0123456789abcdef-secret"), &none, b""));
        assert!(!secret.authenticates(Some("0123456789abcdef-secreT"), &none, b""));
        assert!(!secret.authenticates(None, &none, b""));

        let mut headers = HeaderMap::new();
        headers.insert(
            "x-imagelock-token",
            "0123456789abcdef-secret".parse().unwrap(),
        );
        assert!(secret.authenticates(None, &headers, b""));

        let body = br#"{"ref":"refs/heads/main"}"#;
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(b"0123456789abcdef-secret").unwrap();
        mac.update(body);
        let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        let mut headers = HeaderMap::new();
        headers.insert("x-hub-signature-256", signature.parse().unwrap());
        assert!(secret.authenticates(None, &headers, body));
        assert!(!secret.authenticates(None, &headers, b"tampered"));
        assert_eq!(format!("{secret:?}"), "HookSecret(<redacted>)");
    }

    fn standard_headers(secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> HeaderMap {
        use base64::Engine as _;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", id.parse().unwrap());
        headers.insert("webhook-timestamp", timestamp.to_string().parse().unwrap());
        headers.insert(
            "webhook-signature",
            format!("v1,bm90IGl0 v1,{signature}").parse().unwrap(),
        );
        headers
    }

    #[test]
    fn standard_webhooks_signatures_cover_id_timestamp_and_body() {
        let secret = HookSecret::new("0123456789abcdef-secret");
        let body = b"{}";
        let headers = standard_headers(b"0123456789abcdef-secret", "msg_1", 1_700_000_000, body);
        assert_eq!(
            secret.authenticate(None, &headers, body),
            Some(Proof::Signed {
                id: "msg_1".into(),
                timestamp: "1700000000".into()
            })
        );
        assert_eq!(secret.authenticate(None, &headers, b"{ }"), None);
        let mut other_id = headers.clone();
        other_id.insert("webhook-id", "msg_2".parse().unwrap());
        assert_eq!(secret.authenticate(None, &other_id, body), None);
        let mut other_time = headers.clone();
        other_time.insert("webhook-timestamp", "1700000001".parse().unwrap());
        assert_eq!(secret.authenticate(None, &other_time, body), None);

        // A `whsec_` secret is the base64 of the key.
        use base64::Engine as _;
        let key = b"raw key bytes, 16+";
        let whsec = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        );
        let headers = standard_headers(key, "msg_1", 1_700_000_000, body);
        assert!(HookSecret::new(&whsec).authenticates(None, &headers, body));
    }

    #[test]
    fn a_header_of_many_signatures_is_looked_at_only_in_part() {
        // Each signature looked at used to cost a MAC of the whole body: a header of a
        // thousand made one unauthenticated request cost a thousand MACs.
        let secret = HookSecret::new("0123456789abcdef-secret");
        let body = b"{}";
        let headers = standard_headers(b"0123456789abcdef-secret", "msg_1", 1_700_000_000, body);
        let valid = headers["webhook-signature"].to_str().unwrap().to_owned();
        for (junk, accepted) in [(MAX_SIGNATURES - 2, true), (1_000, false)] {
            let mut flooded = headers.clone();
            let header = format!("{} {valid}", "v1,bm90IGl0 ".repeat(junk));
            flooded.insert("webhook-signature", header.parse().unwrap());
            assert_eq!(
                secret.authenticates(None, &flooded, body),
                accepted,
                "{junk} signatures before the valid ones"
            );
        }
    }

    #[test]
    fn gitea_and_gitlab_headers() {
        let secret = HookSecret::new("0123456789abcdef-secret");
        let body = b"{}";
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(b"0123456789abcdef-secret").unwrap();
        mac.update(body);
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-gitea-signature",
            hex::encode(mac.finalize().into_bytes()).parse().unwrap(),
        );
        assert!(matches!(
            secret.authenticate(None, &headers, body),
            Some(Proof::BodySignature(_))
        ));
        let mut headers = HeaderMap::new();
        headers.insert("x-gitlab-token", "0123456789abcdef-secret".parse().unwrap());
        assert_eq!(
            secret.authenticate(None, &headers, body),
            Some(Proof::Token)
        );
        headers.insert("x-gitlab-token", "0123456789abcdef-secreX".parse().unwrap());
        assert_eq!(secret.authenticate(None, &headers, body), None);
    }

    #[test]
    fn replays_are_refused_and_memory_is_bounded() {
        let guard = ReplayGuard::new(Duration::from_secs(60), 3);
        let now = 1_700_000_000;
        let t0 = Instant::now();
        let none = HeaderMap::new();
        let signed = |id: &str, timestamp: i64| Proof::Signed {
            id: id.into(),
            timestamp: timestamp.to_string(),
        };

        assert_eq!(guard.check(&signed("a", now), &none, now, t0), Ok(()));
        assert_eq!(
            guard.check(&signed("a", now), &none, now, t0),
            Err(Replay::Seen)
        );
        // Outside the window either way, or not a number.
        for stale in [now - 301, now + 301] {
            assert!(matches!(
                guard.check(&signed("b", stale), &none, now, t0),
                Err(Replay::Stale(_))
            ));
        }
        assert!(matches!(
            guard.check(
                &Proof::Signed {
                    id: "c".into(),
                    timestamp: "soon".into()
                },
                &none,
                now,
                t0
            ),
            Err(Replay::Stale(_))
        ));
        assert_eq!(guard.check(&signed("b", now - 299), &none, now, t0), Ok(()));

        // The same signed body, whatever delivery id comes with it.
        let body = Proof::BodySignature(vec![1, 2, 3]);
        let mut delivery = HeaderMap::new();
        delivery.insert("x-github-delivery", "d-1".parse().unwrap());
        assert_eq!(guard.check(&body, &delivery, now, t0), Ok(()));
        delivery.insert("x-github-delivery", "d-2".parse().unwrap());
        assert_eq!(guard.check(&body, &delivery, now, t0), Err(Replay::Seen));
        // A delivery id seen before, with a token.
        delivery.insert("x-github-delivery", "d-1".parse().unwrap());
        assert_eq!(
            guard.check(&Proof::Token, &delivery, now, t0),
            Err(Replay::Seen)
        );
        assert_eq!(guard.check(&Proof::Token, &none, now, t0), Ok(()));

        // At most 3 remembered: the oldest ("a") is forgotten first.
        assert_eq!(guard.len(), 3);
        assert_eq!(guard.check(&signed("a", now), &none, now, t0), Ok(()));
        // And everything is forgotten after its time.
        let later = t0 + Duration::from_secs(61);
        assert_eq!(guard.check(&signed("a", now), &none, now, later), Ok(()));
        assert_eq!(guard.len(), 1);
    }
}

//! Push hooks: a Docker Hub or Quay push notification re-resolves the image entries it can
//! affect; a Git push notification fetches the config repo at once.
//!
//! Every hook is authenticated by one shared secret, given either in the path
//! (`/hooks/dockerhub/<secret>`: Docker Hub cannot send headers), in `X-Imagelock-Token`, or
//! as an HMAC-SHA256 of the body in `X-Hub-Signature-256: sha256=<hex>` (GitHub, Gitea).
//! A request that fails authentication gets 401 and triggers nothing; one that passes gets
//! 202 whether or not an image matched, so the answer never tells whether an image exists.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use hmac::{KeyInit as _, Mac as _};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::Trigger;
use crate::manifest::ImageSpec;
use crate::reference::ImageRepo;

/// Push payloads are small; anything bigger is not one.
const MAX_BODY: usize = 256 * 1024;

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
        constant_time_eq(&self.0, presented.as_bytes())
    }

    /// `header` is `sha256=<hex of HMAC-SHA256(secret, body)>`.
    fn matches_signature(&self, body: &[u8], header: &str) -> bool {
        let Some(presented) = header
            .strip_prefix("sha256=")
            .and_then(|h| hex::decode(h).ok())
        else {
            return false;
        };
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0) else {
            return false;
        };
        mac.update(body);
        mac.verify_slice(&presented).is_ok()
    }

    /// Whether the request carries the secret in any accepted form.
    pub fn authenticates(
        &self,
        path_token: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> bool {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        path_token.is_some_and(|t| self.matches_token(t))
            || header("x-imagelock-token").is_some_and(|t| self.matches_token(t))
            || header("x-hub-signature-256").is_some_and(|s| self.matches_signature(body, s))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Length is not secret (it is fixed by the operator); the contents are.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Clone)]
struct HookState {
    secret: HookSecret,
    triggers: mpsc::Sender<Trigger>,
}

/// The hooks router: `POST /hooks/{dockerhub,quay,git}[/<secret>]`.
pub fn router(secret: HookSecret, triggers: mpsc::Sender<Trigger>) -> Router {
    Router::new()
        .route("/hooks/{kind}", post(without_token))
        .route("/hooks/{kind}/{token}", post(with_token))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(super::request_timeout())
        .with_state(HookState { secret, triggers })
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
    // Authenticate before looking at anything else, the kind included.
    if !state.secret.authenticates(token, headers, body) {
        tracing::warn!(hook = kind, "hook refused: missing or wrong secret");
        return (StatusCode::UNAUTHORIZED, "unauthorized\n");
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
            tracing::warn!(hook = kind, error = %e, "hook payload refused");
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
}

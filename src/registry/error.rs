//! Errors of the registry client: each says which registry, repository and reference it is
//! about, and carries the HTTP status and the registry's own message where there was one.
//! No variant ever holds a credential or token.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::reference::{Digest, ImageRepo};

/// What a request was about: `registry/repository` plus the tag or digest, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub registry: String,
    pub repository: String,
    pub reference: Option<String>,
}

impl Target {
    pub fn new(repo: &ImageRepo, reference: Option<&str>) -> Self {
        Target {
            registry: repo.registry.clone(),
            repository: repo.repository.clone(),
            reference: reference.map(str::to_owned),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        match self.reference.as_deref() {
            Some(reference) if reference.contains(':') => write!(f, "@{reference}"),
            Some(reference) => write!(f, ":{reference}"),
            None => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// 401 even after answering the registry's challenge, or no usable credentials.
    #[error("{target}: unauthorized (HTTP {status}){}", detail(message))]
    Unauthorized {
        target: Target,
        status: u16,
        message: String,
    },
    /// 403: authenticated but not allowed.
    #[error("{target}: access denied (HTTP 403){}", detail(message))]
    Denied { target: Target, message: String },
    /// 404 where something had to exist (a repository, a blob).
    #[error("{target}: not found (HTTP 404){}", detail(message))]
    NotFound { target: Target, message: String },
    /// Any other unexpected status, including 5xx once retries are spent.
    #[error("{target}: HTTP {status}{}", detail(message))]
    Http {
        target: Target,
        status: u16,
        message: String,
    },
    /// A write (blob upload, manifest push) the registry refused with a 4xx other than
    /// 401/403/404, with the registry's first error code (`MANIFEST_BLOB_UNKNOWN`,
    /// `DIGEST_INVALID`, `SIZE_INVALID`, `BLOB_UPLOAD_INVALID`, a quota code...) and message.
    #[error("{target}: rejected (HTTP {status}){}", detail(message))]
    Rejected {
        target: Target,
        status: u16,
        code: String,
        message: String,
    },
    #[error("{target}: no complete response within {}s", after.as_secs_f32())]
    Timeout { target: Target, after: Duration },
    /// No connection: refused, DNS, TLS handshake.
    #[error("{target}: cannot connect: {cause}")]
    Connect { target: Target, cause: String },
    /// The connection broke after it was made (reset, truncated body).
    #[error("{target}: network error: {cause}")]
    Network { target: Target, cause: String },
    /// 429 and the registry's `Retry-After` was longer than allowed, or attempts ran out.
    #[error("{target}: too many requests (HTTP 429): {reason}")]
    TooManyRequests { target: Target, reason: String },
    /// A streamed upload (a blob in a PUT or PATCH body) answered with 429, 500, 502, 503 or
    /// 504. The body is spent, so the request cannot be sent again as it is: the caller
    /// starts a new upload, after `retry_after` when the registry named one.
    #[error("{target}: the registry is busy (HTTP {status}){}", detail(message))]
    Busy {
        target: Target,
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("{target}: digest mismatch: expected {expected}, content hashes to {actual}")]
    DigestMismatch {
        target: Target,
        expected: Digest,
        actual: Digest,
    },
    /// The registry answered, but not with what the protocol requires.
    #[error("{target}: invalid response: {reason}")]
    InvalidResponse { target: Target, reason: String },
    #[error("{target}: response larger than the {limit}-byte limit")]
    TooLarge { target: Target, limit: u64 },
    /// A tag listing went past one of its bounds ([`super::tags::TagLimits`]).
    #[error("tag list of {target} exceeds {limit}")]
    TagListTooLong {
        target: Target,
        limit: super::tags::TagLimit,
    },
    /// A blob download averaged less than the client's floor over its window. Not retryable:
    /// the same source at the same pace would only hold a transfer slot again; the next pass
    /// tries again.
    #[error(
        "{target}: transfer too slow: {bytes} bytes in {}s, below the minimum of {floor} bytes/s",
        window.as_secs_f32()
    )]
    TooSlow {
        target: Target,
        bytes: u64,
        window: Duration,
        floor: u64,
    },
    /// A tag or digest that cannot be used in a request path.
    #[error("{target}: invalid reference: use a tag or a sha256:/sha512: digest")]
    InvalidReference { target: Target },
    /// A manifest or image config that does not parse (found after the fetch, which has no
    /// repository at hand: callers add it).
    #[error("invalid {document}: {reason}")]
    InvalidDocument {
        document: &'static str,
        reason: String,
    },
    /// A Docker config / dockerconfigjson file that cannot be used.
    #[error("credentials file {}: {reason}", path.display())]
    Credentials { path: PathBuf, reason: String },
    /// Client settings that cannot work.
    #[error("registry client configuration: {reason}")]
    Config { reason: String },
    /// The operator's registry policy forbids the request (an unlisted or internal host, a
    /// token realm the login may not go to).
    #[error("{target}: refused: {reason}")]
    Refused { target: Target, reason: String },
}

fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl RegistryError {
    /// A stable, low-cardinality label for metrics (`imagelock_registry_errors_total{reason}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            RegistryError::Unauthorized { .. } => "unauthorized",
            RegistryError::Denied { .. } => "denied",
            RegistryError::NotFound { .. } => "not_found",
            RegistryError::Http { status, .. } if *status >= 500 => "server_error",
            RegistryError::Http { .. } => "http_error",
            RegistryError::Rejected { .. } => "rejected",
            RegistryError::Timeout { .. } => "timeout",
            RegistryError::Connect { .. } => "connect",
            RegistryError::Network { .. } => "network",
            RegistryError::TooManyRequests { .. } => "too_many_requests",
            RegistryError::Busy { status: 429, .. } => "too_many_requests",
            RegistryError::Busy { .. } => "server_error",
            RegistryError::DigestMismatch { .. } => "digest_mismatch",
            RegistryError::InvalidResponse { .. } => "invalid_response",
            RegistryError::TooLarge { .. } => "too_large",
            RegistryError::TagListTooLong { .. } => "tag_list_too_long",
            RegistryError::TooSlow { .. } => "too_slow",
            RegistryError::InvalidReference { .. } => "invalid_reference",
            RegistryError::InvalidDocument { .. } => "invalid_document",
            RegistryError::Credentials { .. } => "credentials",
            RegistryError::Config { .. } => "config",
            RegistryError::Refused { .. } => "refused",
        }
    }

    /// True when trying again later may succeed without anyone changing anything: the
    /// registry was down, slow, overloaded or the network broke. The client has already
    /// retried these within its attempt budget; this tells a scheduler to try next round.
    pub fn is_retryable(&self) -> bool {
        match self {
            RegistryError::Timeout { .. }
            | RegistryError::Connect { .. }
            | RegistryError::Network { .. }
            | RegistryError::TooManyRequests { .. }
            | RegistryError::Busy { .. } => true,
            RegistryError::Http { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// The HTTP status behind the error, when there was a response.
    pub fn status(&self) -> Option<u16> {
        match self {
            RegistryError::Unauthorized { status, .. }
            | RegistryError::Http { status, .. }
            | RegistryError::Rejected { status, .. }
            | RegistryError::Busy { status, .. } => Some(*status),
            RegistryError::Denied { .. } => Some(403),
            RegistryError::NotFound { .. } => Some(404),
            RegistryError::TooManyRequests { .. } => Some(429),
            _ => None,
        }
    }

    /// The registry's error code (`MANIFEST_BLOB_UNKNOWN`, `DENIED`...) of a refused write.
    pub fn code(&self) -> Option<&str> {
        match self {
            RegistryError::Rejected { code, .. } if !code.is_empty() => Some(code),
            _ => None,
        }
    }

    /// What the error is about, when it came from a request.
    pub fn target(&self) -> Option<&Target> {
        match self {
            RegistryError::Unauthorized { target, .. }
            | RegistryError::Denied { target, .. }
            | RegistryError::NotFound { target, .. }
            | RegistryError::Http { target, .. }
            | RegistryError::Rejected { target, .. }
            | RegistryError::Timeout { target, .. }
            | RegistryError::Connect { target, .. }
            | RegistryError::Network { target, .. }
            | RegistryError::TooManyRequests { target, .. }
            | RegistryError::Busy { target, .. }
            | RegistryError::DigestMismatch { target, .. }
            | RegistryError::InvalidResponse { target, .. }
            | RegistryError::TooLarge { target, .. }
            | RegistryError::TagListTooLong { target, .. }
            | RegistryError::TooSlow { target, .. }
            | RegistryError::Refused { target, .. }
            | RegistryError::InvalidReference { target } => Some(target),
            RegistryError::InvalidDocument { .. }
            | RegistryError::Credentials { .. }
            | RegistryError::Config { .. } => None,
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// The first error code of a distribution error body, or `""`.
pub fn registry_code(body: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|parsed| parsed.errors.into_iter().find(|e| !e.code.is_empty()))
        .map(|e| e.code)
        .unwrap_or_default()
}

/// Longest piece of a non-JSON error body quoted in an error.
const MAX_QUOTED_BODY: usize = 200;

/// The registry's own explanation from an error body: the distribution JSON
/// `{"errors":[{"code","message"}]}` as `CODE: message; ...`, else the start of a text body
/// (a proxy's HTML page, say) on one line.
pub fn registry_message(body: &[u8]) -> String {
    let message = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(parsed) if !parsed.errors.is_empty() => parsed
            .errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{}: {}", e.code, e.message),
                (false, true) => e.code.clone(),
                _ => e.message.clone(),
            })
            .collect::<Vec<_>>()
            .join("; "),
        _ => String::from_utf8_lossy(body).into_owned(),
    };
    // The registry's words end up in logs, /status and pull request comments: one line, cut
    // short, and no control character (a terminal escape) survives, JSON-escaped or not.
    let one_line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    crate::manifest::escape_text(&one_line, MAX_QUOTED_BODY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_message_is_one_short_line_without_control_characters() {
        let long = format!(
            r#"{{"errors":[{{"code":"DENIED","message":"\u001b[2J{}\nnext"}}]}}"#,
            "x".repeat(10_000)
        );
        let message = registry_message(long.as_bytes());
        assert!(message.starts_with("DENIED: \\u{1b}[2J"), "{message}");
        assert!(message.chars().count() <= MAX_QUOTED_BODY + 16, "{message}");
        assert!(!message.chars().any(char::is_control), "{message}");
        let text = registry_message(b"<html>\x1b]0;title\x07 Bad\ngateway</html>");
        assert!(!text.chars().any(char::is_control), "{text}");
    }

    fn mk_target(reference: Option<&str>) -> Target {
        Target {
            registry: "quay.io".into(),
            repository: "company/web".into(),
            reference: reference.map(str::to_owned),
        }
    }

    #[test]
    fn distribution_error_json() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"x"}},{"code":"DENIED","message":""}]}"#;
        assert_eq!(
            registry_message(body),
            "MANIFEST_UNKNOWN: manifest unknown; DENIED"
        );
        assert_eq!(registry_code(body), "MANIFEST_UNKNOWN");
        assert_eq!(registry_code(b"<html>"), "");
    }

    #[test]
    fn text_bodies_are_shortened_to_one_line() {
        assert_eq!(
            registry_message(b"<html>\n  Bad   gateway\n</html>"),
            "<html> Bad gateway </html>"
        );
        let long = "x".repeat(1000);
        assert_eq!(
            registry_message(long.as_bytes()).chars().count(),
            MAX_QUOTED_BODY + 1
        );
        assert_eq!(registry_message(b""), "");
    }

    #[test]
    fn display_names_registry_repository_reference_and_status() {
        let err = RegistryError::Http {
            target: mk_target(Some("latest")),
            status: 502,
            message: "bad gateway".into(),
        };
        assert_eq!(
            err.to_string(),
            "quay.io/company/web:latest: HTTP 502: bad gateway"
        );
        assert!(err.is_retryable());
        assert_eq!(err.metric_label(), "server_error");
        let digest = Digest::sha256_of(b"x");
        let err = RegistryError::NotFound {
            target: mk_target(Some(digest.as_str())),
            message: String::new(),
        };
        assert_eq!(
            err.to_string(),
            format!("quay.io/company/web@{digest}: not found (HTTP 404)")
        );
        assert!(!err.is_retryable());
        assert_eq!(err.status(), Some(404));
    }
}

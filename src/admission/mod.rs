//! The mutating admission webhook: keeps cluster workloads on the digests the locks pin.
//!
//! Three layers, from the inside out:
//! - [`index`]: every pin of one revision of the config repo in hash maps (alias per namespace;
//!   source repository and tag), laid out by [`PinIndex::build`] from the pins
//!   [`crate::pins`] derives, and published through an [`IndexHandle`] that the reconcile
//!   loop swaps whole.
//! - [`mutate`]: the pure decision. An `AdmissionReview` and an index in, an
//!   `AdmissionReview` (JSONPatch, denial or warnings) out; no I/O, no clock.
//! - [`server`] and [`tls`]: the HTTPS shell (`POST /mutate`) with body limits and timeouts,
//!   and certificates that are reloaded when the mounted Secret changes, or generated.
//!
//! Nothing on the request path calls a registry or Git: answers come from memory.

pub mod index;
pub mod mutate;
pub mod server;
pub mod tls;

use std::path::PathBuf;

pub use index::{IndexHandle, IndexSummary, PinIndex};
pub use mutate::{Answer, REWRITTEN_ANNOTATION, ReviewError, review, review_body};
pub use server::{RequestObserver, ServerOptions, serve};
pub use tls::{CertReloader, SelfSigned, TlsFiles};

/// Errors of the admission module: setting up the server and its certificates, and loading
/// the pins. A bad request is not an error here (see [`ReviewError`]): it gets its answer.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    InvalidPem { path: PathBuf, message: String },
    #[error("the certificate {} and the key {} do not belong together: {message}", cert.display(), key.display())]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
    #[error("cannot generate the self-signed certificates: {0}")]
    Generate(String),
    #[error("invalid TLS settings: {0}")]
    Tls(String),
    #[error("cannot watch {} for certificate changes: {message}", path.display())]
    Watch { path: PathBuf, message: String },
    #[error("cannot load the pins: {0}")]
    Load(String),
}

impl AdmissionError {
    /// A short, bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            AdmissionError::Read { .. } => "read",
            AdmissionError::Write { .. } => "write",
            AdmissionError::InvalidPem { .. } => "invalid_pem",
            AdmissionError::KeyMismatch { .. } => "key_mismatch",
            AdmissionError::Generate(_) => "generate",
            AdmissionError::Tls(_) => "tls",
            AdmissionError::Watch { .. } => "watch",
            AdmissionError::Load(_) => "load",
        }
    }
}

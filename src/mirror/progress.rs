//! Progress of a mirror run. The engine reports to a [`Progress`]; the CLI shows bars on a
//! terminal and summary lines otherwise.

use crate::reference::Digest;

/// Receives progress events from the engine. Implementations must be cheap: `bytes` is called
/// for every chunk streamed.
pub trait Progress: Send + Sync {
    fn image_started(&self, _image: &str) {}
    fn image_finished(&self, _image: &str, _ok: bool) {}
    /// A blob upload begins; `size` from its descriptor.
    fn blob_started(&self, _digest: &Digest, _size: u64) {}
    fn bytes(&self, _count: u64) {}
    fn blob_finished(&self, _digest: &Digest) {}
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {}

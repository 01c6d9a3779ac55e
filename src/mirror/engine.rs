//! The copy engine (being written).

use std::sync::Arc;

use super::progress::Progress;
use crate::registry::RegistryClient;

/// Limits for one engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Blob transfers in flight at once across the run (per-host limits still apply).
    pub blobs_in_flight: usize,
    /// Images copied at once.
    pub images_in_flight: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            blobs_in_flight: 16,
            images_in_flight: 8,
        }
    }
}

/// Copies images between registries; one per run so blobs are deduplicated across images.
pub struct MirrorEngine {
    client: RegistryClient,
    options: EngineOptions,
    progress: Arc<dyn Progress>,
}

impl MirrorEngine {
    pub fn new(
        client: RegistryClient,
        options: EngineOptions,
        progress: Arc<dyn Progress>,
    ) -> Self {
        MirrorEngine {
            client,
            options,
            progress,
        }
    }
}

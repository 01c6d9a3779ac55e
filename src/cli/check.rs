//! `imagelock check`: validate without touching the network.

use std::path::Path;
use std::process::ExitCode;

use super::RegistryArgs;

/// Validates the checkout at `dir`; a manifest that may not declare its namespace under the
/// operator's tenancy, or a mirror registry the operator does not allow, is an error like any
/// other.
pub fn run(dir: &Path, registry: &RegistryArgs) -> anyhow::Result<ExitCode> {
    let (repo, _) = super::load_admitted(dir, registry)?;
    let diagnostics = repo.all_diagnostics();
    for diagnostic in &diagnostics {
        eprintln!("{diagnostic}");
    }
    let images: usize = repo.sets.iter().map(|s| s.images.len()).sum();
    if diagnostics.is_empty() {
        println!("ok: {} manifest(s), {images} image(s)", repo.sets.len());
    } else {
        eprintln!("{} error(s)", diagnostics.len());
    }
    Ok(super::exit_code(!diagnostics.is_empty()))
}

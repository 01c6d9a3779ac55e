//! `imagelock check`: validate without touching the network.

use std::path::Path;
use std::process::ExitCode;

use crate::manifest;

pub fn run(dir: &Path) -> anyhow::Result<ExitCode> {
    let repo = manifest::load_repo(dir)?;
    for diagnostic in &repo.diagnostics {
        eprintln!("{diagnostic}");
    }
    let images: usize = repo.sets.iter().map(|s| s.images.len()).sum();
    if repo.diagnostics.is_empty() {
        println!("ok: {} manifest(s), {images} image(s)", repo.sets.len());
    } else {
        eprintln!("{} error(s)", repo.diagnostics.len());
    }
    Ok(super::exit_code(!repo.diagnostics.is_empty()))
}

//! `imagelock mirror`: make the mirror hold everything the locks pin.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use futures_util::StreamExt as _;

use super::RegistryArgs;
use crate::lock;
use crate::manifest;
use crate::mirror::plan::{self, MirrorPlan, Standing};
use crate::mirror::progress::TerminalProgress;
use crate::mirror::{self as mirroring, CopyReport, EngineOptions, MirrorEngine};

/// Presence checks in flight at once.
const CHECKS_IN_FLIGHT: usize = 32;

pub async fn run(dir: &Path, dry_run: bool, registry: &RegistryArgs) -> anyhow::Result<ExitCode> {
    let repo = manifest::load_repo(dir)?;
    for diagnostic in &repo.diagnostics {
        eprintln!("{diagnostic}");
    }
    let config = repo
        .config
        .clone()
        .context("imagelock.yaml is invalid; fix it first (see `imagelock check`)")?;
    let mut locks = BTreeMap::new();
    for set in &repo.sets {
        if let Some(locked) = lock::read(&dir.join(lock::lock_path_for(&set.path)))? {
            locks.insert(set.path.clone(), locked);
        }
    }
    let (wanted, placement_errors) = plan::wanted(config.mirror.as_ref(), &repo.sets, &locks);
    let mut failed = !repo.diagnostics.is_empty() || !placement_errors.is_empty();
    for error in &placement_errors {
        eprintln!("{}: {}: {}", error.manifest, error.alias, error.reason);
    }

    let client = registry.client(&config)?;
    let standings: Vec<_> = futures_util::stream::iter(wanted)
        .map(|w| {
            let client = &client;
            async move {
                let standing = mirroring::standing(client, &w.request).await;
                (w.request, standing)
            }
        })
        .buffered(CHECKS_IN_FLIGHT)
        .collect()
        .await;
    let mut checked = Vec::new();
    let mut fetched = Vec::new();
    for (request, standing) in standings {
        match standing {
            Ok((standing, manifest)) => {
                fetched.extend(manifest.map(|m| (request.source.clone(), m)));
                checked.push((request, standing));
            }
            Err(e) => {
                // Unknown standing: try the copy, which reports the real failure.
                eprintln!("{} -> {}: {e}", request.source, request.destination);
                checked.push((request, Standing::ToCopy));
            }
        }
    }
    let plan = MirrorPlan::from_standings(checked);
    print!("{}", plan.render());
    failed |= !plan.missing_at_source.is_empty();
    if dry_run || plan.to_copy.is_empty() {
        return Ok(super::exit_code(failed));
    }

    let progress = Arc::new(TerminalProgress::new(plan.to_copy.len() as u64));
    let engine = MirrorEngine::new(client, EngineOptions::default(), progress.clone());
    for (source, manifest) in fetched {
        engine.prefetched(source, manifest);
    }
    let results = engine.copy_all_missing(plan.to_copy.clone()).await;
    progress.finish();
    let mut total = CopyReport::default();
    let mut copied = 0;
    for (request, result) in &results {
        match result {
            Ok(report) => {
                copied += 1;
                total.add(report);
            }
            Err(e) => {
                failed = true;
                eprintln!(
                    "failed: {}@{} -> {}: {e}",
                    request.source,
                    request.digest.short(),
                    request.destination
                );
            }
        }
    }
    println!(
        "copied {copied}/{} image(s): {}",
        results.len(),
        summary(&total)
    );
    Ok(super::exit_code(failed))
}

/// `12 blob(s) uploaded (40.0 MiB), 2 mounted, 5 already there, 6 manifest(s) pushed, 0 referrer(s)`
pub fn summary(report: &CopyReport) -> String {
    format!(
        "{} blob(s) uploaded ({:.1} MiB), {} mounted, {} already there, {} manifest(s) pushed, {} referrer(s)",
        report.blobs_uploaded,
        report.bytes_uploaded as f64 / (1024.0 * 1024.0),
        report.blobs_mounted,
        report.blobs_present,
        report.manifests_pushed,
        report.referrers,
    )
}

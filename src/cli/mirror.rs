//! `imagelock mirror`: make the mirror hold everything the locks pin.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt as _;

use super::RegistryArgs;
use crate::lock;
use crate::mirror::plan::{self, MirrorPlan, Standing, WantedCopy};
use crate::mirror::progress::TerminalProgress;
use crate::mirror::{self as mirroring, CopyOutcome, CopyReport, EngineOptions, MirrorEngine};
use crate::reconcile;
use crate::registry::RegistryClient;

/// Presence checks in flight at once.
const CHECKS_IN_FLIGHT: usize = 32;

/// Mirrors what the locks of the manifests the operator's settings admit pin: a manifest
/// that may not declare its namespace never gets anything copied into that namespace's
/// place in the mirror. Each image's copy stops at `image_timeout`, as in the daemon.
pub async fn run(
    dir: &Path,
    dry_run: bool,
    registry: &RegistryArgs,
    image_timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let (repo, access) = super::load_admitted(dir, registry)?;
    let diagnostics = repo.all_diagnostics();
    for diagnostic in &diagnostics {
        eprintln!("{diagnostic}");
    }
    let config = repo
        .config
        .clone()
        .context("imagelock.yaml is invalid; fix it first (see `imagelock check`)")?;
    let mut locks = BTreeMap::new();
    for set in &repo.sets {
        if let Some(locked) = lock::read_beside(dir, &set.path)? {
            locks.insert(set.path.clone(), locked);
        }
    }
    let (wanted, placement_errors) = plan::wanted(config.mirror.as_ref(), &repo.sets, &locks);
    let mut failed = !diagnostics.is_empty() || !placement_errors.is_empty();
    for error in &placement_errors {
        eprintln!("{}: {}: {}", error.manifest, error.alias, error.reason);
    }

    // Each namespace's copies with its own client; a source its namespace may not use is an
    // error, not a copy.
    let reconcile::NamespaceCopies {
        mut groups,
        refused,
    } = reconcile::copies_by_namespace(&access, &repo, wanted);
    for (copy, reason) in &refused {
        eprintln!("{}: {}: {reason}", copy.manifest.display(), copy.alias);
        failed = true;
    }
    if groups.is_empty() {
        // Nothing wanted: the three sets are still printed, all empty.
        groups.insert("", Vec::new());
    }
    for (namespace, copies) in groups {
        let client = access.for_namespace(namespace)?.mirror;
        let options = EngineOptions {
            image_timeout: Some(image_timeout),
            ..EngineOptions::default()
        };
        mirror_group(client, options, copies, dry_run, &mut failed).await;
    }
    Ok(super::exit_code(failed))
}

/// Checks and (unless `dry_run`) copies one namespace's images with its client.
async fn mirror_group(
    client: RegistryClient,
    options: EngineOptions,
    wanted: Vec<WantedCopy>,
    dry_run: bool,
    failed: &mut bool,
) {
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
    *failed |= !plan.missing_at_source.is_empty();
    if dry_run {
        return;
    }

    let progress = Arc::new(TerminalProgress::new(plan.to_copy.len() as u64));
    let engine = MirrorEngine::new(client, options, progress.clone());
    for (source, manifest) in fetched {
        engine.prefetched(source, manifest);
    }
    let results = if plan.to_copy.is_empty() {
        Vec::new()
    } else {
        engine.copy_all_missing(plan.to_copy.clone()).await
    };
    progress.finish();
    if !results.is_empty() {
        let (done, total) = tally(&results, failed);
        println!(
            "copied {done}/{} image(s): {}",
            results.len(),
            summary(&total)
        );
    }
    // An image copied earlier may have been signed or attested at the source since.
    if !plan.present.is_empty() {
        let results = engine.copy_referrers_of(plan.present.clone()).await;
        let (done, total) = tally(&results, failed);
        println!(
            "checked the referrers of {done}/{} present image(s): {} referrer(s), {} manifest(s) pushed",
            results.len(),
            total.referrers,
            total.manifests_pushed
        );
    }
}

/// Prints each failure of `results` (and sets `failed`); returns how many succeeded and the
/// sum of their reports.
fn tally(results: &[CopyOutcome], failed: &mut bool) -> (usize, CopyReport) {
    let mut total = CopyReport::default();
    let mut done = 0;
    for (request, result) in results {
        match result {
            Ok(report) => {
                done += 1;
                total.add(report);
            }
            Err(e) => {
                *failed = true;
                eprintln!(
                    "failed: {}@{} -> {}: {e}",
                    request.source,
                    request.digest.short(),
                    request.destination
                );
            }
        }
    }
    (done, total)
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

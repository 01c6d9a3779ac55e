//! `imagelock lock`: resolve, write lock files, optionally commit them.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;

use super::RegistryArgs;
use crate::git::{self, Author};
use crate::lock::ChangeKind;
use crate::mirror::EngineOptions;
use crate::mirror::progress::TerminalProgress;
use crate::pins::CheckoutLocks;
use crate::reconcile::{self, Deadlines, EngineSettings, Mode};

/// Locks the checkout at `dir`; manifests the operator's settings refuse are reported and
/// neither resolved, mirrored nor locked.
pub async fn run(
    dir: &Path,
    commit: bool,
    registry: &RegistryArgs,
    deadlines: Deadlines,
) -> anyhow::Result<ExitCode> {
    let (repo, access, mut observations) =
        super::observe_admitted(dir, registry, deadlines.entry).await?;
    if repo
        .sets
        .iter()
        .any(|set| set.images.iter().any(|spec| spec.mirror))
    {
        let progress = Arc::new(TerminalProgress::new(0));
        let engines = EngineSettings {
            options: EngineOptions {
                image_timeout: Some(deadlines.mirror),
                ..EngineOptions::default()
            },
            progress: progress.clone(),
        };
        let report = reconcile::mirror(
            &access,
            &engines,
            dir,
            &repo,
            &CheckoutLocks,
            &mut observations,
            chrono::Utc::now(),
        )
        .await;
        progress.finish();
        println!("mirror: {}", super::mirror::summary(&report));
    }
    // The manifests as resolved: loading them again could admit a file changed meanwhile.
    let outcome = reconcile::apply_to(
        dir,
        &repo,
        &CheckoutLocks,
        &observations,
        chrono::Utc::now(),
        Mode::Write,
    )?;
    let failed = super::plan::report_errors(&outcome);
    for change in &outcome.changes {
        println!("{}: {change}", change.lock);
    }
    for output in &outcome.outputs {
        let done = match output.kind {
            ChangeKind::Added => "written",
            ChangeKind::Changed => "updated",
            ChangeKind::Removed => "removed",
        };
        println!("{}: {done}", output.path.display());
    }
    if commit && !outcome.touched.is_empty() {
        let config = repo.config.clone().unwrap_or_default();
        let author = Author {
            name: config.git.author_name.clone(),
            email: config.git.author_email.clone(),
        };
        let message = outcome.commit_message(&config.git.message);
        match git::commit_in(dir, &outcome.touched, &message, &author)
            .with_context(|| format!("cannot commit in {}", dir.display()))?
        {
            Some(id) => println!("committed {id}"),
            None => println!("nothing to commit"),
        }
    } else if outcome.touched.is_empty() {
        println!("locks and outputs are up to date");
    }
    Ok(super::exit_code(failed))
}

//! `imagelock lock`: resolve, write lock files, optionally commit them.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;

use super::RegistryArgs;
use crate::git::{self, Author};
use crate::lock::ChangeKind;
use crate::manifest;
use crate::mirror::progress::TerminalProgress;
use crate::reconcile::{self, Mode};

pub async fn run(dir: &Path, commit: bool, registry: &RegistryArgs) -> anyhow::Result<ExitCode> {
    let mut repo = manifest::load_repo(dir)?;
    let config = repo.config.clone().unwrap_or_default();
    let access = registry.access(&config)?;
    reconcile::vet_repo(&mut repo, access.operator().policy());
    let mut observations = reconcile::observe(&access, dir, &repo, &|_, _| true).await;
    if repo
        .sets
        .iter()
        .any(|set| set.images.iter().any(|spec| spec.mirror))
    {
        let progress = Arc::new(TerminalProgress::new(0));
        let report = reconcile::mirror(
            &access,
            progress.clone(),
            dir,
            &repo,
            &mut observations,
            chrono::Utc::now(),
        )
        .await;
        progress.finish();
        println!("mirror: {}", super::mirror::summary(&report));
    }
    let outcome = reconcile::apply_to(dir, &repo, &observations, chrono::Utc::now(), Mode::Write)?;
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
        let author = Author {
            name: config.git.author_name.clone(),
            email: config.git.author_email.clone(),
        };
        let message = reconcile::commit_message(&config.git.message, &outcome.changes);
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

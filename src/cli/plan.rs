//! `imagelock plan`: what the locks would change, for pull request comments.

use std::path::Path;
use std::process::ExitCode;

use serde_json::json;

use super::RegistryArgs;
use crate::lock::{ChangeKind, PinChange};
use crate::manifest;
use crate::reconcile::{self, Mode, Outcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Markdown,
    Json,
}

pub async fn run(dir: &Path, format: Format, registry: &RegistryArgs) -> anyhow::Result<ExitCode> {
    let mut repo = manifest::load_repo(dir)?;
    let access = registry.access(&repo.config.clone().unwrap_or_default())?;
    reconcile::vet_repo(&mut repo, access.operator().policy());
    let observations = reconcile::observe(&access, dir, &repo, &|_, _| true).await;
    let outcome = reconcile::apply_to(dir, &repo, &observations, chrono::Utc::now(), Mode::DryRun)?;
    let rendered = match format {
        Format::Text => text(&outcome),
        Format::Markdown => markdown(&outcome),
        Format::Json => serde_json::to_string_pretty(&json_report(&outcome))? + "\n",
    };
    print!("{rendered}");
    let failed = !outcome.problems.is_empty() || !outcome.diagnostics.is_empty();
    Ok(super::exit_code(failed))
}

/// Prints manifest and resolution errors to stderr; true if there were any.
pub fn report_errors(outcome: &Outcome) -> bool {
    for diagnostic in &outcome.diagnostics {
        eprintln!("{diagnostic}");
    }
    for (manifest, problem) in &outcome.problems {
        eprintln!("{}: {}", manifest.display(), problem_line(problem));
    }
    !outcome.diagnostics.is_empty() || !outcome.problems.is_empty()
}

fn problem_line(problem: &crate::lock::Problem) -> String {
    match &problem.tag {
        Some(tag) => format!("{}:{tag}: {}", problem.alias, problem.reason),
        None => format!("{}: {}", problem.alias, problem.reason),
    }
}

fn sign(kind: ChangeKind) -> char {
    match kind {
        ChangeKind::Added => '+',
        ChangeKind::Changed => '~',
        ChangeKind::Removed => '-',
    }
}

fn text(outcome: &Outcome) -> String {
    let mut out = String::new();
    let mut current_lock = None;
    for change in &outcome.changes {
        if current_lock != Some(&change.lock) {
            out.push_str(&format!("{}\n", change.lock));
            current_lock = Some(&change.lock);
        }
        out.push_str(&format!("  {} {change}\n", sign(change.kind)));
    }
    if !outcome.outputs.is_empty() {
        out.push_str("outputs\n");
        for output in &outcome.outputs {
            out.push_str(&format!(
                "  {} {}\n",
                sign(output.kind),
                output.path.display()
            ));
        }
    }
    for diagnostic in &outcome.diagnostics {
        out.push_str(&format!("error: {diagnostic}\n"));
    }
    for (manifest, problem) in &outcome.problems {
        out.push_str(&format!(
            "error: {}: {}\n",
            manifest.display(),
            problem_line(problem)
        ));
    }
    out.push_str(&summary(outcome));
    out
}

fn summary(outcome: &Outcome) -> String {
    let count = |kind| outcome.changes.iter().filter(|c| c.kind == kind).count();
    let outputs = match outcome.outputs.len() {
        0 => String::new(),
        n => format!("; {n} output file(s) to update"),
    };
    format!(
        "{} added, {} changed, {} removed, {} error(s){outputs}\n",
        count(ChangeKind::Added),
        count(ChangeKind::Changed),
        count(ChangeKind::Removed),
        outcome.diagnostics.len() + outcome.problems.len()
    )
}

fn markdown(outcome: &Outcome) -> String {
    let mut out = String::from("### imagelock plan\n\n");
    if outcome.changes.is_empty() {
        out.push_str("No pin changes.\n");
    } else {
        out.push_str("| | Lock | Image | Tag | From | To |\n|---|---|---|---|---|---|\n");
        for PinChange {
            lock,
            image,
            tag,
            kind,
            from,
            to,
            ..
        } in &outcome.changes
        {
            let digest = |d: &Option<crate::reference::Digest>| {
                d.as_ref()
                    .map_or_else(|| "—".to_owned(), |d| format!("`{}`", d.short()))
            };
            out.push_str(&format!(
                "| {} | `{lock}` | `{image}` | `{tag}` | {} | {} |\n",
                sign(*kind),
                digest(from),
                digest(to)
            ));
        }
    }
    if !outcome.outputs.is_empty() {
        out.push_str("\n**Outputs**\n\n");
        for output in &outcome.outputs {
            out.push_str(&format!(
                "- {} `{}`\n",
                sign(output.kind),
                output.path.display()
            ));
        }
    }
    if !outcome.diagnostics.is_empty() || !outcome.problems.is_empty() {
        out.push_str("\n**Errors**\n\n");
        for diagnostic in &outcome.diagnostics {
            out.push_str(&format!("- `{diagnostic}`\n"));
        }
        for (manifest, problem) in &outcome.problems {
            out.push_str(&format!(
                "- `{}`: {}\n",
                manifest.display(),
                problem_line(problem)
            ));
        }
    }
    out.push('\n');
    out.push_str(&summary(outcome));
    out
}

fn json_report(outcome: &Outcome) -> serde_json::Value {
    json!({
        "changes": outcome.changes,
        "outputs": outcome.outputs,
        "errors": outcome.diagnostics.iter().map(|d| json!({
            "file": d.path,
            "line": d.position.line,
            "column": d.position.col,
            "message": d.message,
        })).chain(outcome.problems.iter().map(|(manifest, p)| json!({
            "file": manifest,
            "image": p.alias,
            "tag": p.tag,
            "message": p.reason,
        }))).collect::<Vec<_>>(),
    })
}

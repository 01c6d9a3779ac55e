//! `imagelock plan`: what the locks would change, for pull request comments.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;

use super::RegistryArgs;
use crate::lock::{ChangeKind, PinChange};
use crate::pins::CheckoutLocks;
use crate::reconcile::{self, Mode, Outcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Markdown,
    Json,
}

/// Plans the checkout at `dir`; manifests the operator's settings refuse are reported and
/// neither resolved nor locked.
pub async fn run(
    dir: &Path,
    format: Format,
    registry: &RegistryArgs,
    entry_timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let (repo, _, mut observations) = super::observe_admitted(dir, registry, entry_timeout).await?;
    // Nothing is copied, but the lock shown is the one `lock` would write after copying.
    reconcile::name_mirrors(&repo, &mut observations);
    let outcome = reconcile::apply_to(
        dir,
        &repo,
        &CheckoutLocks,
        &observations,
        chrono::Utc::now(),
        Mode::DryRun,
    )?;
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

/// `text` from the repo or a registry made inert in a GitHub/GitLab markdown comment: it
/// renders as the same characters and can neither format, link, mention, embed HTML, nor
/// leave its table cell or list item.
///
/// Markdown punctuation is backslash-escaped; `<`, `>`, `&` and `|` become character
/// references (a `|` would end a table cell even inside a code span); line breaks and other
/// control characters become spaces; a zero-width space after `@`, in `://` and after `www`
/// stops mentions and autolinks.
pub fn escape_markdown(text: &str) -> String {
    const ZERO_WIDTH_SPACE: &str = "&#8203;";
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    for (at, c) in text.char_indices() {
        let rest = &text[at + c.len_utf8()..];
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '|' => out.push_str("&#124;"),
            '@' => {
                out.push('@');
                out.push_str(ZERO_WIDTH_SPACE);
            }
            ':' if rest.starts_with("//") => {
                out.push(':');
                out.push_str(ZERO_WIDTH_SPACE);
            }
            '.' if text
                .get(at.saturating_sub(3)..at)
                .is_some_and(|w| w.eq_ignore_ascii_case("www")) =>
            {
                out.push_str(ZERO_WIDTH_SPACE);
                out.push_str("\\.");
            }
            '\\' | '`' | '*' | '_' | '~' | '[' | ']' | '(' | ')' | '#' | '!' | '{' | '}' | '+'
            | '-' | '.' | '=' | '"' | '\'' | '$' | '^' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Untrusted `text` in monospace: an HTML `<code>` element around [`escape_markdown`] (a
/// markdown code span cannot hold a backtick or escape anything).
fn code(text: &str) -> String {
    format!("<code>{}</code>", escape_markdown(text))
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
            // A digest is `sha256:` and hex by construction: nothing to escape.
            let digest = |d: &Option<crate::reference::Digest>| {
                d.as_ref()
                    .map_or_else(|| "—".to_owned(), |d| format!("`{}`", d.short()))
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                sign(*kind),
                code(lock),
                code(image),
                code(tag),
                digest(from),
                digest(to)
            ));
        }
    }
    if !outcome.outputs.is_empty() {
        out.push_str("\n**Outputs**\n\n");
        for output in &outcome.outputs {
            out.push_str(&format!(
                "- {} {}\n",
                sign(output.kind),
                code(&output.path.display().to_string())
            ));
        }
    }
    if !outcome.diagnostics.is_empty() || !outcome.problems.is_empty() {
        out.push_str("\n**Errors**\n\n");
        for diagnostic in &outcome.diagnostics {
            out.push_str(&format!("- {}\n", code(&diagnostic.to_string())));
        }
        for (manifest, problem) in &outcome.problems {
            out.push_str(&format!(
                "- {}: {}\n",
                code(&manifest.display().to_string()),
                escape_markdown(&problem_line(problem))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_stay_readable() {
        assert_eq!(escape_markdown("web"), "web");
        assert_eq!(escape_markdown("v2.13.4"), "v2\\.13\\.4");
        assert_eq!(
            escape_markdown("images/team-a/web.lock.yaml"),
            "images/team\\-a/web\\.lock\\.yaml"
        );
    }

    #[test]
    fn nothing_quoted_can_format_link_mention_or_break_out() {
        let hostile = [
            "`x` | **bold** | [link](https://evil.example/x) ![img](https://evil.example/i.png)",
            "<img src=x onerror=alert(1)><script>alert(1)</script></code>",
            "@org/team and @someone, mail me@example.com",
            "line one\n| injected | row |\r\n# heading",
            "http://evil.example www.evil.example WWW.EVIL.EXAMPLE",
            "&lt;already escaped&gt; \\` ~~strike~~ _em_ <!-- comment -->",
        ];
        for text in hostile {
            let escaped = escape_markdown(text);
            for forbidden in ["<", ">", "|", "\n", "\r", "://", "www.", "WWW."] {
                assert!(!escaped.contains(forbidden), "{forbidden:?} in {escaped:?}");
            }
            // Every markdown character is escaped: none stands unescaped.
            let mut chars = escaped.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    chars.next();
                    continue;
                }
                // A character reference (`&#124;`) is one character.
                if c == '&' {
                    chars.by_ref().find(|c| *c == ';');
                    continue;
                }
                assert!(!"`*_[]()!~#".contains(c), "unescaped {c:?} in {escaped:?}");
            }
            assert!(
                !escaped.contains("@")
                    || escaped.matches('@').count() == escaped.matches("@&#8203;").count()
            );
        }
        assert_eq!(
            escape_markdown("@someone"),
            "@&#8203;someone",
            "a zero-width space stops the mention"
        );
        assert_eq!(escape_markdown("a|b"), "a&#124;b");
        assert_eq!(escape_markdown("</code>"), "&lt;/code&gt;");
        assert_eq!(escape_markdown("\\`"), "\\\\\\`");
        assert_eq!(code("`x`"), "<code>\\`x\\`</code>");
    }

    #[test]
    fn a_hostile_tag_stays_in_its_table_cell() {
        let change = PinChange {
            lock: "images/team-a/x.lock.yaml".into(),
            image: "web".into(),
            tag: "1.0|</code><img src=x>\n| @admins | [x](http://evil) |".into(),
            kind: ChangeKind::Added,
            from: None,
            to: None,
            generation: Some(1),
        };
        let outcome = Outcome {
            changes: vec![change],
            ..Outcome::default()
        };
        let rendered = markdown(&outcome);
        let rows: Vec<&str> = rendered.lines().filter(|l| l.starts_with("| +")).collect();
        assert_eq!(rows.len(), 1, "{rendered}");
        // Seven cell borders: six cells, nothing more.
        assert_eq!(rows[0].matches('|').count(), 7, "{}", rows[0]);
        assert!(!rendered.contains("<img"), "{rendered}");
        assert!(!rendered.contains("@admins"), "{rendered}");
        assert!(!rendered.contains("](http"), "{rendered}");
    }
}

//! The config repo's files: `imagelock.yaml` and ImageSet manifests, parsed with positions
//! and validated so that every error names its file, line and column.
//!
//! [`load_repo`] reads a whole checkout and never lets one bad file stop the others;
//! [`parse_repo_config`] and [`parse_image_set`] check one file's text and report all of its
//! errors at once.

mod common;
mod config;
mod imageset;
mod load;
mod model;
mod pattern;
pub mod walk;
mod yaml;

use std::fmt;
use std::path::PathBuf;

pub use common::is_dns_label;
pub use config::parse_repo_config;
pub use imageset::{parse_image_set, peek_metadata};
pub use load::{CONFIG_FILE, IMAGES_DIR, LoadedRepo, load_repo};
pub use model::*;
pub use pattern::highest_version_first;
pub use walk::{MAX_DEPTH, MAX_FILE_SIZE};
pub use yaml::{
    EXCERPT_CHARS, MAX_LOCK_NODES, MAX_YAML_DEPTH, MAX_YAML_NODES, ShapeError, check_shape,
    check_size, escape_text, is_unprintable, quote,
};

/// API version of every file imagelock reads or writes.
pub const API_VERSION: &str = "imagelock.dev/v1alpha1";

/// One problem in one file, at a 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Path relative to the repo root (`images/team-a/web.yaml`).
    pub path: PathBuf,
    pub position: Position,
    /// What is wrong and what would be right, usually starting with the field path
    /// (`spec.images[1].schedule: invalid cron expression ...`).
    pub message: String,
}

impl fmt::Display for Diagnostic {
    /// `images/team-a/web.yaml:12:7: spec.images[1].schedule: ...`, the form editors and CI
    /// annotations understand.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The path comes from the repo too: printed escaped, like any excerpt.
        write!(
            f,
            "{}:{}:{}: {}",
            escape_text(&self.path.to_string_lossy(), crate::git::MAX_PATH_LEN),
            self.position.line,
            self.position.col,
            self.message
        )
    }
}

/// Errors of the manifest module. Problems inside files are [`Diagnostic`]s, not errors:
/// only a repo that cannot be read at all is an error.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read the config repo at {}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config repo {} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    /// For callers that need all of a repo's diagnostics as one error.
    #[error("{} error(s) in the config repo:{}", .0.len(), list(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ManifestError {
    /// A short, bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ManifestError::Io { .. } => "io",
            ManifestError::NotADirectory { .. } => "not_a_directory",
            ManifestError::Invalid(_) => "invalid",
        }
    }
}

fn list(diagnostics: &[Diagnostic]) -> String {
    diagnostics.iter().map(|d| format!("\n  {d}")).collect()
}

/// Parses a standard 5-field cron expression (minute hour day-of-month month day-of-week;
/// weekdays 0-7 with 0 and 7 Sunday, or `SUN`-`SAT`; `@hourly`-style nicknames). When both
/// day fields are restricted a day matching either runs, as in Vixie cron.
///
/// The error says why, for a message like `invalid cron expression "…": <why>`.
pub fn parse_cron(expression: &str) -> Result<Schedule, String> {
    let fields = expression.split_whitespace().count();
    if !expression.trim_start().starts_with('@') && fields != 5 {
        let hint = match fields {
            6 | 7 => " (seconds and years are not supported)",
            _ => "",
        };
        return Err(format!(
            "it has {fields} field(s), not minute hour day-of-month month day-of-week{hint}"
        ));
    }
    if let Some(cron) = interned(expression) {
        return Ok(Schedule {
            expression: expression.to_owned(),
            cron,
        });
    }
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .build()
        .parse(expression)
        .map_err(|e| match e {
            croner::errors::CronError::InvalidPattern(why)
            | croner::errors::CronError::IllegalCharacters(why)
            | croner::errors::CronError::ComponentError(why) => why,
            other => other.to_string(),
        })?;
    Ok(Schedule {
        expression: expression.to_owned(),
        cron: intern(expression, cron),
    })
}

/// Parsed schedules by expression, so equal expressions share one parse. Bounded: a repo
/// with more distinct expressions than this parses the rest per entry.
static SCHEDULES: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<croner::Cron>>>,
> = std::sync::LazyLock::new(Default::default);
const MAX_INTERNED_SCHEDULES: usize = 1024;

fn interned(expression: &str) -> Option<std::sync::Arc<croner::Cron>> {
    SCHEDULES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(expression)
        .cloned()
}

fn intern(expression: &str, cron: croner::Cron) -> std::sync::Arc<croner::Cron> {
    let cron = std::sync::Arc::new(cron);
    let mut schedules = SCHEDULES.lock().unwrap_or_else(|e| e.into_inner());
    if schedules.len() < MAX_INTERNED_SCHEDULES {
        schedules.insert(expression.to_owned(), cron.clone());
    }
    cron
}

#[cfg(test)]
mod tests {

    #[test]
    fn equal_expressions_share_one_parsed_schedule() {
        let a = parse_cron("17 */3 * * 1-5").unwrap();
        let b = parse_cron("17 */3 * * 1-5").unwrap();
        assert!(std::sync::Arc::ptr_eq(&a.cron, &b.cron));
        assert_eq!(a, b);
    }

    use super::*;
    use chrono::{Datelike, TimeZone, Utc, Weekday};

    fn next(expression: &str, after: chrono::DateTime<Utc>) -> chrono::DateTime<Utc> {
        parse_cron(expression).unwrap().next_after(after).unwrap()
    }

    // 2026-11-20 is a Friday.
    fn friday_noon() -> chrono::DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).unwrap()
    }

    #[test]
    fn the_selection_fingerprint_leaves_out_alias_schedule_and_position() {
        let spec = mk_image_spec("web", "quay.io/company/web", &["latest"]);
        let mut renamed = ImageSpec {
            name: "web2".into(),
            schedule: parse_cron("5 * * * *").unwrap(),
            ..spec.clone()
        };
        renamed.position.line = 9;
        assert_eq!(
            spec.selection_fingerprint(),
            renamed.selection_fingerprint()
        );
        assert_ne!(spec.fingerprint(), renamed.fingerprint());
        for other in [
            ImageSpec {
                keep: 3,
                ..spec.clone()
            },
            ImageSpec {
                tags: vec!["latest".into(), "1.4".into()],
                ..spec.clone()
            },
            ImageSpec {
                mirror: true,
                ..spec.clone()
            },
        ] {
            assert_ne!(spec.selection_fingerprint(), other.selection_fingerprint());
        }
    }

    #[test]
    fn default_schedule_is_valid() {
        assert_eq!(default_schedule().expression, DEFAULT_SCHEDULE);
    }

    #[test]
    fn weekday_one_is_monday() {
        let at = next("0 0 * * 1", friday_noon());
        assert_eq!(at.weekday(), Weekday::Mon);
        assert_eq!(at, Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap());
        assert_eq!(next("0 0 * * MON", friday_noon()), at);
        assert_eq!(next("0 0 * * mon", friday_noon()), at);
        assert_eq!(next("0 0 * * 0", friday_noon()).weekday(), Weekday::Sun);
        assert_eq!(next("0 0 * * 7", friday_noon()).weekday(), Weekday::Sun);
        assert_eq!(next("0 0 * * SUN", friday_noon()).weekday(), Weekday::Sun);
        assert_eq!(next("0 0 * * 6", friday_noon()).weekday(), Weekday::Sat);
        assert_eq!(
            next("0 0 * * MON-FRI", friday_noon()).weekday(),
            Weekday::Mon
        );
    }

    #[test]
    fn steps_and_nicknames() {
        let start = Utc.with_ymd_and_hms(2026, 11, 20, 12, 7, 30).unwrap();
        assert_eq!(
            next("*/15 * * * *", start),
            Utc.with_ymd_and_hms(2026, 11, 20, 12, 15, 0).unwrap()
        );
        assert_eq!(
            next("@hourly", start),
            Utc.with_ymd_and_hms(2026, 11, 20, 13, 0, 0).unwrap()
        );
        assert_eq!(
            next("30 2 1 JAN *", start),
            Utc.with_ymd_and_hms(2027, 1, 1, 2, 30, 0).unwrap()
        );
    }

    #[test]
    fn day_fields_are_ored_like_vixie_cron() {
        // The 1st of the month or any Monday, whichever comes first.
        assert_eq!(next("0 0 1 * 1", friday_noon()).weekday(), Weekday::Mon);
    }

    #[test]
    fn rejects_wrong_field_counts_and_values() {
        let six = parse_cron("0 */15 * * * *").unwrap_err();
        assert!(
            six.contains("6 field(s)") && six.contains("seconds"),
            "{six}"
        );
        assert!(parse_cron("*/15 * *").unwrap_err().contains("3 field(s)"));
        assert!(parse_cron("").unwrap_err().contains("0 field(s)"));
        assert!(parse_cron("0 0 * * 1 2026").is_err());
        assert!(parse_cron("75 * * * *").is_err());
        assert!(parse_cron("* 24 * * *").is_err());
        assert!(parse_cron("* * * * monday").is_err());
        assert!(parse_cron("@reboot").is_err());
    }

    #[test]
    fn diagnostic_display() {
        let d = Diagnostic {
            path: PathBuf::from("images/team-a/web.yaml"),
            position: Position { line: 12, col: 7 },
            message: "spec.images[1].schedule: bad".into(),
        };
        assert_eq!(
            d.to_string(),
            "images/team-a/web.yaml:12:7: spec.images[1].schedule: bad"
        );
        let e = ManifestError::Invalid(vec![d.clone(), d]);
        assert_eq!(e.metric_label(), "invalid");
        assert!(
            e.to_string()
                .starts_with("2 error(s) in the config repo:\n  images/")
        );
    }
}

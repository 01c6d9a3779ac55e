//! The config repo's files: `imagelock.yaml` and ImageSet manifests, parsed with positions
//! and validated so that every error names its file, line and column.

mod model;

pub use model::*;

/// Parses a standard 5-field cron expression (minute hour day-of-month month day-of-week).
pub fn parse_cron(expression: &str) -> Result<Schedule, String> {
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .build()
        .parse(expression)
        .map_err(|e| e.to_string())?;
    Ok(Schedule {
        expression: expression.to_owned(),
        cron,
    })
}

//! Setter markers: a line of any YAML file that ends in
//! `# {"imagelock": "<namespace>:<alias>[:<tag>]"}` gets the scalar value before the marker
//! replaced with the pin, in place. Every other byte of the file stays as it was: comments,
//! order, line endings, the quoting style of the value (a plain value whose new text could be
//! misread when written plain is double-quoted instead; see [`stays_plain`]).
//!
//! The marker is JSON: `{"imagelock": "team-a:web"}` pins to the tag the alias means,
//! `{"imagelock": "team-a:web:1.4"}` to tag `1.4`. An optional `"part"` picks what is written:
//! `image` (default, `<repository>@<digest>`), `repository`, `digest` or `tag`, for values
//! files that keep them apart.
//!
//! The file is parsed as YAML (saphyr's event parser) to find the value a marker follows; the
//! bytes around it are never re-emitted. After the rewrite the file is parsed again and must
//! give the same events with only the marked values changed, or nothing is written.

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError};

// JSON values and marker comments print as written (JSON quotes its own strings), cut short.
use crate::char_index::CharIndex;
use crate::manifest::{EXCERPT_CHARS, MAX_YAML_NODES, ShapeError, check_size, escape_text, quote};
use crate::yaml_scalar::{quoted, single_quoted, stays_plain};

/// The key of the marker object.
pub const MARKER_KEY: &str = "imagelock";

/// What a marker asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub namespace: String,
    pub alias: String,
    /// `None`: the tag the alias means ([`crate::pins::alias_tag`]).
    pub tag: Option<String>,
    pub part: Part,
}

/// Which part of the pin a marked value receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Part {
    /// `<repository>@<digest>`.
    #[default]
    Image,
    Repository,
    Digest,
    Tag,
}

/// The answer to a marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The value to write.
    Value(String),
    /// Leave the line as it is, without a report (the pin is unknown for a reason reported
    /// elsewhere, such as a manifest with errors).
    Leave,
    /// Leave the line as it is and report why.
    Problem(String),
}

/// A problem on a line, 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// What [`rewrite`] did to a file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// The new text, when any value changed.
    pub text: Option<String>,
    pub problems: Vec<Problem>,
}

/// Rewrites the marked values of `text`, asking `resolve` for each marker.
pub fn rewrite(text: &str, resolve: &dyn Fn(&Marker) -> Resolution) -> Rewrite {
    let mut result = Rewrite::default();
    // Most YAML files have no marker: skip the parse.
    if !text.contains(MARKER_KEY) {
        return result;
    }
    let lines = split_lines(text);
    let candidates: Vec<Candidate> = lines.iter().filter_map(find_marker).collect();
    if candidates.is_empty() {
        return result;
    }
    // The scan keeps every event: bound them first (a marker in a file of millions of values).
    // Syntax errors are the scan's to report.
    if let Err(error) = check_size(text, MAX_YAML_NODES)
        && !matches!(error, ShapeError::Syntax(_))
    {
        let at = error.marker();
        result.problems.push(Problem {
            line: at.line(),
            col: at.col() + 1,
            message: format!(
                "{}; its imagelock markers are not applied",
                error.message(None)
            ),
        });
        return result;
    }
    let scan = match scan(text) {
        Ok(scan) => scan,
        Err(error) => {
            result.problems.push(Problem {
                line: error.marker().line(),
                col: error.marker().col() + 1,
                message: format!(
                    "not valid YAML ({}); its imagelock markers are not applied",
                    escape_text(error.info(), 200)
                ),
            });
            return result;
        }
    };

    let mut replacements: Vec<Replacement> = Vec::new();
    for candidate in &candidates {
        let line = &lines[candidate.line - 1];
        if scan.in_block_scalar(line.number) {
            continue; // Text inside a `|` or `>` block: content, not a comment.
        }
        let problem = |message: String| Problem {
            line: line.number,
            col: line.col_of(candidate.hash),
            message,
        };
        let marker = match &candidate.marker {
            Ok(marker) => marker,
            Err(message) => {
                result.problems.push(problem(message.clone()));
                continue;
            }
        };
        match locate(text, line, candidate.hash, &scan) {
            Err(message) => result.problems.push(problem(message)),
            Ok(found) => match resolve(marker) {
                Resolution::Leave => {}
                Resolution::Problem(message) => result.problems.push(problem(message)),
                Resolution::Value(value) => {
                    let new = match found.style {
                        ScalarStyle::SingleQuoted => single_quoted(&value),
                        ScalarStyle::DoubleQuoted => quoted(&value),
                        _ if stays_plain(&value) && !after_colon_and_tab(text, found.start) => {
                            value.clone()
                        }
                        _ => quoted(&value),
                    };
                    if text[found.start..found.end] != new {
                        replacements.push(Replacement {
                            start: found.start,
                            end: found.end,
                            text: new,
                            event: found.event,
                            value,
                        });
                    }
                }
            },
        }
    }
    if replacements.is_empty() {
        return result;
    }

    let mut out = String::with_capacity(text.len() + 64 * replacements.len());
    let mut at = 0;
    for r in &replacements {
        out.push_str(&text[at..r.start]);
        out.push_str(&r.text);
        at = r.end;
    }
    out.push_str(&text[at..]);

    // The new file must read as the old one with exactly the marked values changed.
    let mut expected = scan.events;
    for r in &replacements {
        if let Some(event) = expected.get_mut(r.event) {
            event.value = Some(r.value.clone());
        }
    }
    match self::scan(&out) {
        Ok(after) if after.events == expected => result.text = Some(out),
        _ => result.problems.push(Problem {
            line: 1,
            col: 1,
            message: "the rewrite would change more than the marked values; the file is left as it is (please report this as a bug)".into(),
        }),
    }
    result
}

/// True when the value at byte `start` follows a `:` and then a tab (`image:\tweb`). saphyr
/// refuses a plain scalar that starts with a letter or digit there ("':' must be followed by a
/// valid YAML whitespace"), though it reads `image:\t~web` and `image:\t"web"`; a plain value
/// replaced there is written quoted, or the rewrite would fail its own check.
fn after_colon_and_tab(text: &str, start: usize) -> bool {
    let before = &text[..start];
    let value_side = before.trim_end_matches([' ', '\t']);
    value_side.ends_with(':') && before[value_side.len()..].starts_with('\t')
}

/// A marked value's new text.
struct Replacement {
    /// Byte range of the old value, quotes included.
    start: usize,
    end: usize,
    /// The new value as written, quotes included.
    text: String,
    /// Its event, and its value as a reader gets it, for the check after the rewrite.
    event: usize,
    value: String,
}

/// One line of the file, without its `\n` (and `\r`).
struct Line<'t> {
    /// 1-based.
    number: usize,
    /// Byte offset of the line in the file.
    start: usize,
    /// Char index of the line's start in the file (the parser counts chars).
    start_char: usize,
    content: &'t str,
}

impl Line<'_> {
    /// 1-based column of the byte offset `at` (in the file) on this line.
    fn col_of(&self, at: usize) -> usize {
        let before = &self.content[..at.saturating_sub(self.start).min(self.content.len())];
        before.trim_start_matches('\u{feff}').chars().count() + 1
    }
}

fn split_lines(text: &str) -> Vec<Line<'_>> {
    let mut lines = Vec::new();
    let (mut start, mut start_char, mut chars) = (0, 0, 0);
    for (i, c) in text.char_indices() {
        chars += 1;
        if c == '\n' {
            lines.push(Line {
                number: lines.len() + 1,
                start,
                start_char,
                content: text[start..i].strip_suffix('\r').unwrap_or(&text[start..i]),
            });
            start = i + 1;
            start_char = chars;
        }
    }
    if start < text.len() {
        lines.push(Line {
            number: lines.len() + 1,
            start,
            start_char,
            content: text[start..].strip_suffix('\r').unwrap_or(&text[start..]),
        });
    }
    lines
}

/// A marker comment on a line.
struct Candidate {
    line: usize,
    /// Byte offset of its `#` in the file.
    hash: usize,
    marker: Result<Marker, String>,
}

/// The first comment of the line that is an imagelock marker. On a line that is all comment
/// only a comment that is itself a marker counts (a misplaced one, reported); a marker inside
/// commented-out YAML (`# image: web # {...}`) is not one.
fn find_marker(line: &Line<'_>) -> Option<Candidate> {
    let content = line.content;
    let all_comment = content
        .trim_start_matches('\u{feff}')
        .trim_start()
        .starts_with('#');
    for (i, _) in content.match_indices('#') {
        // A `#` starts a comment only at the start of a line or after white space.
        if i > 0 && !matches!(content.as_bytes()[i - 1], b' ' | b'\t') {
            continue;
        }
        let comment = content[i + 1..].trim();
        if !comment.starts_with('{') || !comment.contains(MARKER_KEY) {
            if all_comment {
                return None;
            }
            continue;
        }
        let marker = match serde_json::from_str::<serde_json::Value>(comment) {
            Ok(serde_json::Value::Object(object)) if object.contains_key(MARKER_KEY) => {
                parse_marker(&object)
            }
            // JSON of some other tool.
            Ok(_) => continue,
            Err(e) => Err(format!(
                "marker {} is not valid JSON ({e}); expected {{\"imagelock\": \"<namespace>:<alias>[:<tag>]\"}}",
                escape_text(comment, EXCERPT_CHARS)
            )),
        };
        return Some(Candidate {
            line: line.number,
            hash: line.start + i,
            marker,
        });
    }
    None
}

fn parse_marker(object: &serde_json::Map<String, serde_json::Value>) -> Result<Marker, String> {
    const FORM: &str = "expected \"<namespace>:<alias>\" or \"<namespace>:<alias>:<tag>\", like \"team-a:web:latest\"";
    let mut part = Part::default();
    let mut reference = None;
    for (key, value) in object {
        match (key.as_str(), value.as_str()) {
            (MARKER_KEY, Some(text)) => reference = Some(text),
            (MARKER_KEY, None) => {
                return Err(format!(
                    "marker value {} is not a string; {FORM}",
                    escape_text(&value.to_string(), EXCERPT_CHARS)
                ));
            }
            ("part", Some("image")) => part = Part::Image,
            ("part", Some("repository")) => part = Part::Repository,
            ("part", Some("digest")) => part = Part::Digest,
            ("part", Some("tag")) => part = Part::Tag,
            ("part", _) => {
                return Err(format!(
                    "marker part {} is not one of \"image\", \"repository\", \"digest\", \"tag\"",
                    escape_text(&value.to_string(), EXCERPT_CHARS)
                ));
            }
            (other, _) => {
                return Err(format!(
                    "unknown key {} in the marker; it takes \"imagelock\" and optionally \"part\"",
                    quote(other)
                ));
            }
        }
    }
    let reference = reference.unwrap_or_default();
    let fields: Vec<&str> = reference.split(':').collect();
    let bad = || format!("marker {}: {FORM}", quote(reference));
    if fields.iter().any(|f| f.trim().is_empty() || *f != f.trim()) {
        return Err(bad());
    }
    match fields.as_slice() {
        [namespace, alias] | [namespace, alias, _] => Ok(Marker {
            namespace: (*namespace).to_owned(),
            alias: (*alias).to_owned(),
            tag: fields.get(2).map(|t| (*t).to_owned()),
            part,
        }),
        _ => Err(bad()),
    }
}

/// The events of a file, reduced to what a rewrite may not change, and its value scalars.
#[derive(Debug)]
struct Scan {
    events: Vec<EventShape>,
    values: Vec<ValueScalar>,
    /// Lines of block scalars' content (first, last), 1-based.
    blocks: Vec<(usize, usize)>,
}

impl Scan {
    /// Blocks come in file order and never overlap, so the one before `line` decides.
    fn in_block_scalar(&self, line: usize) -> bool {
        let after = self.blocks.partition_point(|(first, _)| *first <= line);
        after > 0 && self.blocks[after - 1].1 >= line
    }

    /// The value scalars starting on `line`, found by bisection (they come in file order)
    /// rather than by a walk through all of them for every marker.
    fn values_on(&self, line: usize) -> &[ValueScalar] {
        let from = self.values.partition_point(|v| v.line < line);
        let to = from + self.values[from..].partition_point(|v| v.line == line);
        &self.values[from..to]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct EventShape {
    kind: &'static str,
    value: Option<String>,
}

/// A scalar in value position (a mapping value or a sequence item), where it starts.
#[derive(Debug)]
struct ValueScalar {
    line: usize,
    /// Char index in the file.
    index: usize,
    style: ScalarStyle,
    value: String,
    /// Index into [`Scan::events`].
    event: usize,
}

/// The events of `text` (split into `lines`).
fn scan(text: &str) -> Result<Scan, ScanError> {
    enum Frame {
        Sequence,
        Mapping { next_is_key: bool },
    }
    let mut stack: Vec<Frame> = Vec::new();
    let chars = CharIndex::new(text);
    let mut scan = Scan {
        events: Vec::new(),
        values: Vec::new(),
        blocks: Vec::new(),
    };
    for next in Parser::new_from_str(text) {
        let (event, span) = next?;
        // A node in a mapping is a key and a value in turn.
        let is_key = match (&event, stack.last_mut()) {
            (
                Event::Scalar(..)
                | Event::Alias(_)
                | Event::SequenceStart(..)
                | Event::MappingStart(..),
                Some(Frame::Mapping { next_is_key }),
            ) => {
                let was = *next_is_key;
                *next_is_key = !was;
                was
            }
            _ => false,
        };
        let (kind, value) = match event {
            Event::Scalar(value, style, _, _) => {
                if matches!(style, ScalarStyle::Literal | ScalarStyle::Folded) {
                    scan.blocks.push(block_lines(&chars, &span));
                } else if !is_key {
                    scan.values.push(ValueScalar {
                        line: span.start.line(),
                        index: span.start.index(),
                        style,
                        value: value.to_string(),
                        event: scan.events.len(),
                    });
                }
                ("scalar", Some(value.into_owned()))
            }
            Event::SequenceStart(..) => {
                stack.push(Frame::Sequence);
                ("sequence", None)
            }
            Event::MappingStart(..) => {
                stack.push(Frame::Mapping { next_is_key: true });
                ("mapping", None)
            }
            Event::SequenceEnd | Event::MappingEnd => {
                stack.pop();
                ("end", None)
            }
            Event::Alias(_) => ("alias", None),
            Event::DocumentStart(_) => ("document", None),
            Event::DocumentEnd => ("document end", None),
            Event::StreamStart | Event::StreamEnd | Event::Nothing => continue,
        };
        scan.events.push(EventShape { kind, value });
    }
    Ok(scan)
}

/// The content lines of a block scalar. Its span ends where the next token starts, which is
/// the indentation of the line after the content (not part of it).
fn block_lines(chars: &CharIndex<'_>, span: &saphyr_parser::Span) -> (usize, usize) {
    let (first, end) = (span.start.line(), span.end.line());
    let end_line_text = chars
        .slice(
            span.end.index().saturating_sub(span.end.col()),
            span.end.index(),
        )
        .unwrap_or_default();
    let last = if end > first && end_line_text.trim().is_empty() {
        end - 1
    } else {
        end
    };
    (first, last)
}

/// The value a marker follows: its byte range and style.
struct Found {
    start: usize,
    end: usize,
    style: ScalarStyle,
    event: usize,
}

fn locate(text: &str, line: &Line<'_>, hash: usize, scan: &Scan) -> Result<Found, String> {
    const NO_VALUE: &str = "the marker follows no value on this line; put it after a plain or quoted value, like image: web # {\"imagelock\": \"team-a:web\"}";
    let scalar = scan
        .values_on(line.number)
        .iter()
        .filter_map(|v| Some((byte_offset(line, v.index)?, v)))
        .rfind(|(start, _)| *start < hash);
    let Some((start, scalar)) = scalar else {
        return Err(NO_VALUE.into());
    };
    let rest = &text[start..line.start + line.content.len()];
    let raw_len = match scalar.style {
        ScalarStyle::Plain if rest.starts_with(&scalar.value) && !scalar.value.is_empty() => {
            Some(scalar.value.len())
        }
        ScalarStyle::SingleQuoted => {
            let raw = single_quoted(&scalar.value);
            rest.starts_with(&raw).then_some(raw.len())
        }
        ScalarStyle::DoubleQuoted => double_quoted_len(rest),
        _ => None,
    };
    let Some(raw_len) = raw_len else {
        return Err(match scalar.style {
            ScalarStyle::Plain if scalar.value.is_empty() => NO_VALUE.into(),
            _ => "the marked value is not a single plain or quoted scalar on this line (a value over several lines, or with a tag or anchor); it is not rewritten".into(),
        });
    };
    let end = start + raw_len;
    if end > hash || !text[end..hash].chars().all(|c| c == ' ' || c == '\t') {
        return Err("the marker must directly follow the value it pins (flow collections like {image: web} are not rewritten)".into());
    }
    Ok(Found {
        start,
        end,
        style: scalar.style,
        event: scalar.event,
    })
}

/// The byte offset of the file's char `index`, which must lie on `line`.
fn byte_offset(line: &Line<'_>, index: usize) -> Option<usize> {
    let within = index.checked_sub(line.start_char)?;
    if within == line.content.chars().count() {
        return Some(line.start + line.content.len());
    }
    line.content
        .char_indices()
        .nth(within)
        .map(|(b, _)| line.start + b)
}

/// Length of the double-quoted scalar at the start of `rest`, if it closes on this line.
fn double_quoted_len(rest: &str) -> Option<usize> {
    let mut chars = rest.char_indices();
    if chars.next()?.1 != '"' {
        return None;
    }
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                chars.next()?;
            }
            '"' => return Some(i + 1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_resolver(marker: &Marker) -> Resolution {
        let digest = format!("sha256:{}", "a".repeat(64));
        match (
            marker.namespace.as_str(),
            marker.alias.as_str(),
            marker.tag.as_deref(),
        ) {
            ("team-a", "web", None | Some("latest")) => Resolution::Value(match marker.part {
                Part::Image => format!("registry.internal/team-a/web@{digest}"),
                Part::Repository => "registry.internal/team-a/web".into(),
                Part::Digest => digest,
                Part::Tag => "latest".into(),
            }),
            ("team-a", "numeric", _) => Resolution::Value("1.0".into()),
            ("team-a", "quote", _) => Resolution::Value("it's \"x\"".into()),
            ("team-b", _, _) => Resolution::Leave,
            (ns, alias, _) => Resolution::Problem(format!("unknown alias {alias:?} in {ns:?}")),
        }
    }

    fn run(text: &str) -> Rewrite {
        rewrite(text, &mk_resolver)
    }

    fn rewritten(text: &str) -> String {
        let result = run(text);
        assert!(result.problems.is_empty(), "{:#?}", result.problems);
        result.text.unwrap_or_else(|| text.to_owned())
    }

    fn problems(text: &str) -> Vec<String> {
        run(text)
            .problems
            .iter()
            .map(|p| format!("{}:{}: {}", p.line, p.col, p.message))
            .collect()
    }

    const M: &str = r#"# {"imagelock": "team-a:web"}"#;
    const PINNED: &str = "registry.internal/team-a/web@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    /// Markers are matched to their values and to block scalars by bisection: between many
    /// block scalars and marked lines, each marker finds the value on its own line and a
    /// marker inside a block is left alone.
    #[test]
    fn many_markers_among_block_scalars() {
        let mut text = String::new();
        let mut expected = String::new();
        for i in 0..300 {
            text.push_str(&format!("k{i}: web {M}\nb{i}: |\n  web {M}\n  x\n"));
            expected.push_str(&format!("k{i}: {PINNED} {M}\nb{i}: |\n  web {M}\n  x\n"));
        }
        assert_eq!(rewritten(&text), expected);
    }

    /// Found by the fuzzer: `key:<tab>~web` reads as YAML, `key:<tab>registry...` does not
    /// for saphyr, so a plain value after a colon and a tab is written quoted.
    #[test]
    fn a_plain_value_after_a_colon_and_a_tab_is_quoted() {
        assert_eq!(
            rewritten(&format!("image:\t~web {M}\n")),
            format!("image:\t\"{PINNED}\" {M}\n")
        );
        assert_eq!(
            rewritten(&format!("- a:\t\t~web {M}\n")),
            format!("- a:\t\t\"{PINNED}\" {M}\n")
        );
        // A space first: plain stays plain.
        assert_eq!(
            rewritten(&format!("image: \t~web {M}\n")),
            format!("image: \t{PINNED} {M}\n")
        );
    }

    #[test]
    fn many_blocks_and_markers_each_found_by_line() {
        // Markers inside block scalars are content; those after values are rewritten. Blocks
        // and values are found by line (binary search), not by walking the whole file each.
        let mut text = String::new();
        let mut want = String::new();
        for i in 0..2_000 {
            let block = format!("b{i}: |\n  text {M}\n  more\n");
            text.push_str(&block);
            want.push_str(&block);
            text.push_str(&format!("i{i}: web {M}\n"));
            want.push_str(&format!("i{i}: {PINNED} {M}\n"));
        }
        text.push_str("last: >\n  folded");
        want.push_str("last: >\n  folded");
        assert_eq!(rewritten(&text), want);
    }

    #[test]
    fn styles_are_kept() {
        assert_eq!(
            rewritten(&format!("image: web {M}\n")),
            format!("image: {PINNED} {M}\n")
        );
        assert_eq!(
            rewritten(&format!("image: \"web\"   {M}\n")),
            format!("image: \"{PINNED}\"   {M}\n")
        );
        assert_eq!(
            rewritten(&format!("image: 'web'\t{M}\n")),
            format!("image: '{PINNED}'\t{M}\n")
        );
        // Idempotent: the second run finds nothing to change.
        let once = rewritten(&format!("- image: web {M}\n"));
        assert!(run(&once).text.is_none());
    }

    #[test]
    fn values_that_plain_would_misread_are_quoted() {
        let marker = r#"# {"imagelock": "team-a:numeric"}"#;
        assert_eq!(
            rewritten(&format!("tag: x {marker}\n")),
            format!("tag: \"1.0\" {marker}\n")
        );
        let marker = r#"# {"imagelock": "team-a:quote"}"#;
        assert_eq!(
            rewritten(&format!("a: 'x' {marker}\nb: \"x\" {marker}\n")),
            format!("a: 'it''s \"x\"' {marker}\nb: \"it's \\\"x\\\"\" {marker}\n")
        );
    }

    #[test]
    fn parts_tags_and_crlf() {
        let text = "image:\r\n  repository: x # {\"imagelock\": \"team-a:web\", \"part\": \"repository\"}\r\n  digest: \"\" # {\"part\": \"digest\", \"imagelock\": \"team-a:web:latest\"}\r\n  tag: old # {\"imagelock\": \"team-a:web\", \"part\": \"tag\"}";
        assert_eq!(
            rewritten(text),
            format!(
                "image:\r\n  repository: registry.internal/team-a/web # {{\"imagelock\": \"team-a:web\", \"part\": \"repository\"}}\r\n  digest: \"sha256:{}\" # {{\"part\": \"digest\", \"imagelock\": \"team-a:web:latest\"}}\r\n  tag: latest # {{\"imagelock\": \"team-a:web\", \"part\": \"tag\"}}",
                "a".repeat(64)
            )
        );
    }

    #[test]
    fn unicode_before_the_value_and_a_bom() {
        let text = format!("\u{feff}# café\nname: \"héllo\"\nimage: web {M}\n");
        assert_eq!(
            rewritten(&text),
            format!("\u{feff}# café\nname: \"héllo\"\nimage: {PINNED} {M}\n")
        );
    }

    #[test]
    fn problems_leave_the_line_alone() {
        let text = format!(
            "a: web # {{\"imagelock\": \"team-a:nope\"}}
b: web # {{\"imagelock\": \"team-b:web\"}}
c: web # {{\"imagelock\": team-a}}
d: web # {{\"imagelock\": \"team-a\"}}
e: web # {{\"imagelock\": \"team-a:web\", \"x\": 1}}
f: {{image: web}} {M}
g: {M}
{M}
h: |
  image: web {M}
  more {M}
i: [web, x] {M}
j: \"web
  two\" {M}
k: web # {{\"$imagepolicy\": \"flux:imagelock\"}}
# image: web {M}
l: web {M}
"
        );
        assert_eq!(
            problems(&text),
            [
                "1:8: unknown alias \"nope\" in \"team-a\"",
                "3:8: marker {\"imagelock\": team-a} is not valid JSON (expected ident at line 1 column 16); expected {\"imagelock\": \"<namespace>:<alias>[:<tag>]\"}",
                "4:8: marker \"team-a\": expected \"<namespace>:<alias>\" or \"<namespace>:<alias>:<tag>\", like \"team-a:web:latest\"",
                "5:8: unknown key \"x\" in the marker; it takes \"imagelock\" and optionally \"part\"",
                "6:17: the marker must directly follow the value it pins (flow collections like {image: web} are not rewritten)",
                "7:4: the marker follows no value on this line; put it after a plain or quoted value, like image: web # {\"imagelock\": \"team-a:web\"}",
                "8:1: the marker follows no value on this line; put it after a plain or quoted value, like image: web # {\"imagelock\": \"team-a:web\"}",
                "12:13: the marker must directly follow the value it pins (flow collections like {image: web} are not rewritten)",
                "14:8: the marker follows no value on this line; put it after a plain or quoted value, like image: web # {\"imagelock\": \"team-a:web\"}",
            ]
        );
        // The one good marker still applies.
        let result = run(&text);
        let out = result.text.unwrap();
        assert!(out.ends_with(&format!("l: {PINNED} {M}\n")), "{out}");
        assert_eq!(out.lines().count(), text.lines().count());
    }

    #[test]
    fn invalid_yaml_is_reported_once() {
        assert_eq!(
            problems(&format!("image: web {M}\nx: [\n")),
            [
                "3:1: not valid YAML (while parsing a node, did not find expected node content); its imagelock markers are not applied"
            ]
        );
        // Without a marker the file is not even parsed.
        assert_eq!(run("x: [\n"), Rewrite::default());
    }

    #[test]
    fn huge_files_are_refused_before_their_events_are_kept() {
        let text = format!("image: web {M}\nx: [{}]\n", "a,".repeat(MAX_YAML_NODES));
        let found = problems(&text);
        assert_eq!(found.len(), 1);
        assert!(found[0].starts_with("2:"), "{found:?}");
        assert!(found[0].contains("more than 200000 values"), "{found:?}");
        // A long bad marker is quoted short.
        let long = format!("image: web # {{\"imagelock\": {}}}\n", "x".repeat(5_000));
        let found = problems(&long);
        assert!(
            found[0].len() < 400 && found[0].contains("xxx…"),
            "{found:?}"
        );
        // Anchors are the author's business in these files.
        let anchored = format!("base: &b {{a: 1}}\nother: *b\nimage: web {M}\n");
        assert_eq!(
            rewritten(&anchored),
            format!("base: &b {{a: 1}}\nother: *b\nimage: {PINNED} {M}\n")
        );
    }
}

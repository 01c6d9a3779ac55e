//! Walking a saphyr `MarkedYaml` tree by hand (not serde) so that every error carries a
//! position and all of a file's errors are collected instead of only the first.
//!
//! Conventions of the walk: an explicit `null` (`keep:` with nothing after it) counts as "not
//! set" for optional fields, as in Kubernetes manifests; keys must be strings; a plain scalar
//! that YAML reads as a number (`1.10`) is taken with its exact source text where a string is
//! expected, so that `tags: [1.10]` means the tag `1.10` and not the float `1.1`.

use std::borrow::Cow;
use std::fmt;
use std::path::Path;

use saphyr::{LoadableYamlNode, MarkedYaml, Marker, Scalar, ScanError, YamlData};
use saphyr_parser::{Event, Parser};

use super::{Diagnostic, Position};
use crate::char_index::CharIndex;

/// Longest excerpt of a file a message quotes, in characters.
pub const EXCERPT_CHARS: usize = 80;
/// Longest message a diagnostic holds, in characters: a safety net under [`quote`].
const MAX_MESSAGE_CHARS: usize = 600;

/// Deepest nesting of sequences and mappings in a file imagelock reads. Its own files need
/// fewer than 10 levels; the limit keeps every later recursion (building, dropping and
/// walking the tree) shallow.
pub const MAX_YAML_DEPTH: usize = 64;
/// Most nodes (scalars, sequences, mappings) in a manifest or `imagelock.yaml`: the tree
/// built from them takes about 150 bytes a node.
pub const MAX_YAML_NODES: usize = 200_000;
/// Most nodes in a lock, which is read as a stream, not as a tree.
pub const MAX_LOCK_NODES: usize = 2_000_000;

/// C0 and C1 controls, DEL, and the Unicode marks that reorder or hide text (Trojan Source):
/// characters that must not reach a log line, a terminal or a commit message as they are.
pub fn is_unprintable(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// `text` on one line and at most `max_chars` long (then ending in `…`), with line breaks,
/// tabs and unprintable characters escaped.
pub fn escape_text(text: &str, max_chars: usize) -> String {
    escape(text, max_chars, false)
}

/// A short quoted excerpt of input for a message: `"…"`, at most [`EXCERPT_CHARS`]
/// characters of `text`, on one line, quotes and unprintable characters escaped. Every
/// message that shows what a file holds goes through this.
pub fn quote(text: &str) -> String {
    format!("\"{}\"", escape(text, EXCERPT_CHARS, true))
}

/// The one funnel for what a manifest diagnostic says: every double-quoted excerpt in it (as
/// `{:?}` and [`quote`] write them) cut to [`EXCERPT_CHARS`], then the whole message on one
/// line and at most [`MAX_MESSAGE_CHARS`] long, unprintable characters escaped.
pub fn bound_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_MESSAGE_CHARS));
    let mut chars = message.chars();
    let mut in_quote = false;
    let mut quoted = 0usize;
    while let Some(c) = chars.next() {
        if !in_quote {
            in_quote = c == '"';
            quoted = 0;
            out.push(c);
            continue;
        }
        let escaped = if c == '\\' { chars.next() } else { None };
        if c == '"' {
            in_quote = false;
            out.push(c);
            continue;
        }
        quoted += 1;
        if quoted <= EXCERPT_CHARS {
            out.push(c);
            out.extend(escaped);
        } else if quoted == EXCERPT_CHARS + 1 {
            out.push('…');
        }
    }
    escape_text(&out, MAX_MESSAGE_CHARS)
}

fn escape(text: &str, max_chars: usize, quoted: bool) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars + 8));
    for (i, c) in text.chars().enumerate() {
        if i == max_chars {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '"' | '\\' if quoted => {
                out.push('\\');
                out.push(c);
            }
            c if is_unprintable(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// Why a YAML file's structure is refused before a tree is built from it.
#[derive(Debug)]
pub enum ShapeError {
    Syntax(ScanError),
    TooDeep(Marker),
    TooManyNodes(Marker, usize),
    Anchor(Marker),
    Alias(Marker),
}

impl ShapeError {
    pub fn marker(&self) -> &Marker {
        match self {
            ShapeError::Syntax(e) => e.marker(),
            ShapeError::TooDeep(at)
            | ShapeError::TooManyNodes(at, _)
            | ShapeError::Anchor(at)
            | ShapeError::Alias(at) => at,
        }
    }

    /// The message, naming the anchor or alias from `source` when it is given (a manifest);
    /// without it (a lock), nothing of the file is quoted.
    pub fn message(&self, source: Option<&str>) -> String {
        let name = |sigil: char| {
            source
                .and_then(|s| property_name(s, self.marker().index(), sigil))
                .map(|n| format!(" {}", quote(&format!("{sigil}{n}"))))
                .unwrap_or_default()
        };
        match self {
            ShapeError::Syntax(e) => format!("invalid YAML: {}", escape_text(e.info(), 200)),
            ShapeError::TooDeep(_) => format!(
                "nested more than {MAX_YAML_DEPTH} levels deep; imagelock files need far fewer"
            ),
            ShapeError::TooManyNodes(_, limit) => {
                format!("more than {limit} values; split the file")
            }
            ShapeError::Anchor(_) => format!(
                "YAML anchor{} is not allowed: anchors and aliases are refused in imagelock files, write the value out",
                name('&')
            ),
            ShapeError::Alias(_) => format!(
                "YAML alias{} is not allowed: anchors and aliases are refused in imagelock files, write the value out",
                name('*')
            ),
        }
    }
}

impl fmt::Display for ShapeError {
    /// `line L, column C: what`, quoting nothing of the file.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = position(self.marker());
        write!(
            f,
            "line {}, column {}: {}",
            at.line,
            at.col,
            self.message(None)
        )
    }
}

/// Checks a YAML stream's structure on the parser's events (which are produced without
/// recursion), before anything recursive runs over it: nesting at most [`MAX_YAML_DEPTH`],
/// at most `max_nodes` nodes, no anchors and no aliases (an alias bomb expands a few
/// kilobytes into gigabytes). Stops at the first problem.
pub fn check_shape(source: &str, max_nodes: usize) -> Result<(), ShapeError> {
    check_events(source, max_nodes, false)
}

/// [`check_shape`] for YAML that is not imagelock's own (files with setter markers), where
/// anchors and aliases are the author's business: only nesting and the node count.
pub fn check_size(source: &str, max_nodes: usize) -> Result<(), ShapeError> {
    check_events(source, max_nodes, true)
}

fn check_events(source: &str, max_nodes: usize, anchors: bool) -> Result<(), ShapeError> {
    let mut depth = 0usize;
    let mut nodes = 0usize;
    for next in Parser::new_from_str(source) {
        let (event, span) = next.map_err(ShapeError::Syntax)?;
        let anchor = match event {
            Event::Alias(_) if anchors => continue,
            Event::Alias(_) => return Err(ShapeError::Alias(span.start)),
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                depth += 1;
                if depth > MAX_YAML_DEPTH {
                    return Err(ShapeError::TooDeep(span.start));
                }
                anchor
            }
            Event::Scalar(_, _, anchor, _) => anchor,
            Event::SequenceEnd | Event::MappingEnd => {
                depth = depth.saturating_sub(1);
                continue;
            }
            _ => continue,
        };
        if anchor != 0 && !anchors {
            return Err(ShapeError::Anchor(span.start));
        }
        nodes += 1;
        if nodes > max_nodes {
            return Err(ShapeError::TooManyNodes(span.start, max_nodes));
        }
    }
    Ok(())
}

/// The name after `sigil` (`&` or `*`) at or shortly after char `index` of `source`.
fn property_name(source: &str, index: usize, sigil: char) -> Option<String> {
    let rest: String = source.chars().skip(index).take(EXCERPT_CHARS * 2).collect();
    let start = rest.find(sigil)?;
    let name: String = rest[start + 1..]
        .chars()
        .take_while(|c| !c.is_whitespace() && !matches!(c, ',' | '[' | ']' | '{' | '}'))
        .collect();
    (!name.is_empty()).then_some(name)
}

pub(crate) type Node<'n> = MarkedYaml<'n>;

/// Where a marker points, 1-based line and column (saphyr's columns are 0-based).
pub(crate) fn position(marker: &Marker) -> Position {
    Position {
        line: marker.line(),
        col: marker.col() + 1,
    }
}

/// The position used for whole-file problems (unreadable, empty, refused).
pub(crate) const FILE_START: Position = Position { line: 1, col: 1 };

/// A node together with its field path (`spec.images[1].schedule`) and where to report it.
#[derive(Debug, Clone)]
pub(crate) struct Value<'n> {
    pub node: &'n Node<'n>,
    pub field: String,
    pub position: Position,
}

impl Value<'_> {
    pub fn is_null(&self) -> bool {
        matches!(data(self.node), YamlData::Value(Scalar::Null))
    }

    pub fn is_integer(&self) -> bool {
        matches!(data(self.node), YamlData::Value(Scalar::Integer(_)))
    }

    /// `[]` or `{}`.
    pub fn is_empty_collection(&self) -> bool {
        match data(self.node) {
            YamlData::Sequence(items) => items.is_empty(),
            YamlData::Mapping(entries) => entries.is_empty(),
            _ => false,
        }
    }

    pub fn is_mapping(&self) -> bool {
        matches!(data(self.node), YamlData::Mapping(_))
    }
}

/// A mapping with a fixed set of known fields, already checked for unknown ones.
#[derive(Debug)]
pub(crate) struct Map<'n> {
    pub field: String,
    pub position: Position,
    entries: Vec<(&'static str, Value<'n>)>,
}

impl<'n> Map<'n> {
    /// The value of a field that is present and not `null`.
    pub fn get(&self, name: &str) -> Option<&Value<'n>> {
        self.entries
            .iter()
            .find(|(key, value)| *key == name && !value.is_null())
            .map(|(_, value)| value)
    }
}

/// `parent.child`, or `child` at the top level.
pub(crate) fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_owned()
    } else {
        format!("{parent}.{child}")
    }
}

/// A field path with a free-form key: `registries["quay.io"]`.
pub(crate) fn keyed(parent: &str, key: &str) -> String {
    format!("{parent}[{}]", quote(key))
}

fn data<'a, 'n>(node: &'a Node<'n>) -> &'a YamlData<'n, Node<'n>> {
    match &node.data {
        YamlData::Tagged(_, inner) => data(inner),
        other => other,
    }
}

/// What a node is, for "expected X, found Y" messages.
pub(crate) fn describe(node: &Node<'_>) -> String {
    match data(node) {
        YamlData::Value(Scalar::Null) => "nothing (null)".into(),
        YamlData::Value(Scalar::Boolean(b)) => format!("the boolean {b}"),
        YamlData::Value(Scalar::Integer(i)) => format!("the number {i}"),
        YamlData::Value(Scalar::FloatingPoint(f)) => format!("the number {f}"),
        YamlData::Value(Scalar::String(s)) => format!("the string {}", quote(s)),
        YamlData::Sequence(_) => "a list".into(),
        YamlData::Mapping(_) => "a mapping".into(),
        _ => "an invalid value".into(),
    }
}

/// The diagnostics of one file, and the source they point into.
pub(crate) struct Doc<'s> {
    path: &'s Path,
    source: &'s str,
    /// saphyr's char indexes into `source`, as byte offsets.
    chars: CharIndex<'s>,
    diagnostics: Vec<Diagnostic>,
}

impl<'s> Doc<'s> {
    pub fn new(path: &'s Path, source: &'s str) -> Self {
        Doc {
            path,
            source,
            chars: CharIndex::new(source),
            diagnostics: Vec::new(),
        }
    }

    /// Records an error about `field` (empty for the whole file).
    pub fn error(&mut self, position: Position, field: &str, message: impl fmt::Display) {
        let message = if field.is_empty() {
            message.to_string()
        } else {
            format!("{field}: {message}")
        };
        let message = bound_message(&message);
        self.diagnostics.push(Diagnostic {
            path: self.path.to_path_buf(),
            position,
            message,
        });
    }

    /// How many diagnostics there are so far, for [`Doc::discard_since`].
    pub fn mark(&self) -> usize {
        self.diagnostics.len()
    }

    /// Drops the diagnostics recorded from `mark` up to `until`, keeping later ones.
    pub fn discard_since(&mut self, mark: usize, until: usize) {
        if mark <= until && until <= self.diagnostics.len() {
            self.diagnostics.drain(mark..until);
        }
    }

    /// `Ok` only when nothing was reported and a value was built; the diagnostics sorted by
    /// position otherwise.
    pub fn finish<T>(mut self, value: Option<T>) -> Result<T, Vec<Diagnostic>> {
        match value {
            Some(value) if self.diagnostics.is_empty() => Ok(value),
            _ => {
                self.diagnostics.sort_by_key(|d| d.position);
                Err(self.diagnostics)
            }
        }
    }

    /// Parses the source as exactly one YAML document; reports syntax errors, duplicate keys,
    /// an empty file and extra documents.
    pub fn load(&mut self, what: &str) -> Option<Node<'s>> {
        // saphyr builds (and drops) the tree recursively: check the shape first.
        if let Err(error) = check_shape(self.source, MAX_YAML_NODES) {
            match error {
                ShapeError::Syntax(error) => self.scan_error(&error),
                other => {
                    let message = other.message(Some(self.source));
                    self.error(position(other.marker()), "", message);
                }
            }
            return None;
        }
        let mut documents = match Node::load_from_str(self.source) {
            Ok(documents) => documents,
            Err(error) => {
                self.scan_error(&error);
                return None;
            }
        };
        if documents.len() > 1 {
            let extra = &documents[1];
            self.error(
                position(&extra.span.start),
                "",
                "a second YAML document; a file holds only one, move this one into a file of its own",
            );
            return None;
        }
        match documents.pop() {
            Some(root) if !matches!(data(&root), YamlData::Value(Scalar::Null)) => Some(root),
            _ => {
                self.error(
                    FILE_START,
                    "",
                    format!("the file is empty; expected {what}"),
                );
                None
            }
        }
    }

    fn scan_error(&mut self, error: &ScanError) {
        let at = position(error.marker());
        if error.info() == "duplicated key in mapping" {
            let key = self.key_text_at(error.marker().index());
            let message = match key {
                Some(key) => format!(
                    "duplicate key {}; a key may appear only once in a mapping, merge the two entries",
                    quote(&key)
                ),
                None => {
                    "duplicate key; a key may appear only once in a mapping, merge the two entries"
                        .to_owned()
                }
            };
            self.error(at, "", message);
        } else {
            self.error(
                at,
                "",
                format!("invalid YAML: {}", escape_text(error.info(), 200)),
            );
        }
    }

    /// The text of a mapping key starting at char `index` (for the duplicate key message).
    fn key_text_at(&self, index: usize) -> Option<String> {
        let rest: String = self.source.chars().skip(index).take(256).collect();
        let key = match rest.chars().next()? {
            quote @ ('"' | '\'') => rest[1..].split(quote).next()?.to_owned(),
            _ => {
                let end = rest.find(['\n', ',', '}', ']']).unwrap_or(rest.len());
                let line = rest[..end].trim_end();
                let line = line
                    .find(": ")
                    .map_or(line.trim_end_matches(':'), |i| &line[..i]);
                line.trim().to_owned()
            }
        };
        (!key.is_empty()).then_some(key)
    }

    /// The exact source text of a plain scalar node, without any anchor or tag before it.
    fn scalar_source(&self, node: &Node<'_>) -> Option<String> {
        let (start, end) = (node.span.start.index(), node.span.end.index());
        if end <= start {
            return None;
        }
        let mut text = self.chars.slice(start, end)?.trim();
        // `&anchor 1.10` or `!!float 1.10`: the node's span includes these properties.
        while text.starts_with(['&', '!']) {
            text = text.split_once(char::is_whitespace)?.1.trim_start();
        }
        Some(text.to_owned())
    }

    /// Checks that `value` is a mapping, reports keys that are not strings or not `known`
    /// (with a suggestion), and returns the known entries.
    pub fn mapping<'n>(
        &mut self,
        value: &Value<'n>,
        known: &'static [&'static str],
    ) -> Option<Map<'n>> {
        let YamlData::Mapping(mapping) = data(value.node) else {
            self.error(
                value.position,
                &value.field,
                format!("expected a mapping, found {}", describe(value.node)),
            );
            return None;
        };
        let mut entries = Vec::new();
        for (key, node) in mapping {
            let Some((name, key_position)) = self.key(key, &value.field) else {
                continue;
            };
            let Some(known_name) = known.iter().find(|k| **k == name) else {
                let place = if value.field.is_empty() {
                    "at the top level".to_owned()
                } else {
                    format!("in {}", value.field)
                };
                let hint = match suggest(&name, known) {
                    Some(close) => format!("did you mean {close:?}?"),
                    None => format!("known fields: {}", known.join(", ")),
                };
                self.error(
                    key_position,
                    "",
                    format!("unknown field {} {place}; {hint}", quote(&name)),
                );
                continue;
            };
            entries.push((
                *known_name,
                child_value(node, join(&value.field, known_name), key_position),
            ));
        }
        Some(Map {
            field: value.field.clone(),
            position: value.position,
            entries,
        })
    }

    /// A mapping with free-form string keys (`registries`, `digests`, `pin`), in file order.
    pub fn dict<'n>(&mut self, value: &Value<'n>) -> Option<Vec<(String, Position, Value<'n>)>> {
        let YamlData::Mapping(mapping) = data(value.node) else {
            self.error(
                value.position,
                &value.field,
                format!("expected a mapping, found {}", describe(value.node)),
            );
            return None;
        };
        let mut entries = Vec::new();
        for (key, node) in mapping {
            let Some((name, key_position)) = self.key(key, &value.field) else {
                continue;
            };
            let field = keyed(&value.field, &name);
            entries.push((name, key_position, child_value(node, field, key_position)));
        }
        Some(entries)
    }

    fn key(&mut self, key: &Node<'_>, field: &str) -> Option<(String, Position)> {
        let key_position = position(&key.span.start);
        match self.scalar_text(key) {
            Some(name) => Some((name, key_position)),
            None => {
                self.error(
                    key_position,
                    field,
                    format!("keys must be strings, found {}", describe(key)),
                );
                None
            }
        }
    }

    /// A required field: reports it missing (at the mapping) or empty (at its key).
    pub fn required<'m, 'n>(
        &mut self,
        map: &'m Map<'n>,
        name: &str,
        hint: &str,
    ) -> Option<&'m Value<'n>> {
        if let Some(value) = map.get(name) {
            return Some(value);
        }
        match map.entries.iter().find(|(key, _)| *key == name) {
            Some((_, value)) => {
                self.error(
                    value.position,
                    &value.field,
                    format!("has no value; {hint}"),
                );
            }
            None => self.error(
                map.position,
                &map.field,
                format!("missing required field {name:?}; {hint}"),
            ),
        }
        None
    }

    /// Text of a scalar that can stand for a string: strings, and numbers in their source form.
    fn scalar_text(&self, node: &Node<'_>) -> Option<String> {
        match data(node) {
            YamlData::Value(Scalar::String(s)) => Some(s.to_string()),
            YamlData::Value(scalar @ (Scalar::Integer(_) | Scalar::FloatingPoint(_))) => {
                // Take the source text when it reads back as the same number (`1.10`, `010`);
                // otherwise (an alias, say) the number as YAML understood it.
                let from_source = self
                    .scalar_source(node)
                    .filter(|text| Scalar::parse_from_cow(Cow::Borrowed(text)) == *scalar);
                Some(from_source.unwrap_or_else(|| match scalar {
                    Scalar::Integer(i) => i.to_string(),
                    Scalar::FloatingPoint(f) => f.to_string(),
                    _ => String::new(),
                }))
            }
            _ => None,
        }
    }

    /// A string (or a number taken as its text).
    pub fn string(&mut self, value: &Value<'_>) -> Option<String> {
        let text = self.scalar_text(value.node);
        if text.is_none() {
            let hint = match data(value.node) {
                YamlData::Value(Scalar::Boolean(_)) => "; quote it if you mean the text",
                _ => "",
            };
            self.error(
                value.position,
                &value.field,
                format!("expected a string, found {}{hint}", describe(value.node)),
            );
        }
        text
    }

    pub fn boolean(&mut self, value: &Value<'_>) -> Option<bool> {
        match data(value.node) {
            YamlData::Value(Scalar::Boolean(b)) => Some(*b),
            _ => {
                self.error(
                    value.position,
                    &value.field,
                    format!("expected true or false, found {}", describe(value.node)),
                );
                None
            }
        }
    }

    /// An integer within `min..=max`; `what` names it in messages ("generation number").
    pub fn integer(&mut self, value: &Value<'_>, min: i64, max: i64, what: &str) -> Option<i64> {
        match data(value.node) {
            YamlData::Value(Scalar::Integer(i)) if (min..=max).contains(i) => Some(*i),
            YamlData::Value(Scalar::Integer(i)) => {
                self.error(
                    value.position,
                    &value.field,
                    format!("{i} is out of range; expected {what} from {min} to {max}"),
                );
                None
            }
            _ => {
                self.error(
                    value.position,
                    &value.field,
                    format!(
                        "expected {what} from {min} to {max}, found {}",
                        describe(value.node)
                    ),
                );
                None
            }
        }
    }

    /// The items of a list.
    pub fn list<'n>(&mut self, value: &Value<'n>) -> Option<Vec<Value<'n>>> {
        let YamlData::Sequence(items) = data(value.node) else {
            self.error(
                value.position,
                &value.field,
                format!("expected a list, found {}", describe(value.node)),
            );
            return None;
        };
        Some(
            items
                .iter()
                .enumerate()
                .map(|(i, node)| Value {
                    node,
                    field: format!("{}[{i}]", value.field),
                    position: position(&node.span.start),
                })
                .collect(),
        )
    }

    /// A list of strings, each with its value for positions; bad items are reported and left out.
    pub fn string_list<'n>(&mut self, value: &Value<'n>) -> Option<Vec<(String, Value<'n>)>> {
        let items = self.list(value)?;
        Some(
            items
                .into_iter()
                .filter_map(|item| self.string(&item).map(|text| (text, item)))
                .collect(),
        )
    }
}

/// The value under a key; a `null` value is reported at its key, since it has no text of its own.
fn child_value<'n>(node: &'n Node<'n>, field: String, key_position: Position) -> Value<'n> {
    let is_null = matches!(data(node), YamlData::Value(Scalar::Null));
    Value {
        node,
        field,
        position: if is_null {
            key_position
        } else {
            position(&node.span.start)
        },
    }
}

/// The root node as a value, for the top-level mapping.
pub(crate) fn root_value<'n>(node: &'n Node<'n>) -> Value<'n> {
    Value {
        node,
        field: String::new(),
        position: position(&node.span.start),
    }
}

/// The known field closest to `unknown`: the same once case, `_` and `-` are ignored
/// (`allow_prerelease` -> `allowPrerelease`), or within a small edit distance (`tag` -> `tags`).
pub(crate) fn suggest<'k>(unknown: &str, known: &[&'k str]) -> Option<&'k str> {
    // No field name is this long; the edit distance would cost its length squared.
    if unknown.len() > 64 {
        return None;
    }
    let normalise = |s: &str| {
        s.chars()
            .filter(|c| !matches!(c, '_' | '-'))
            .flat_map(char::to_lowercase)
            .collect::<String>()
    };
    let wanted = normalise(unknown);
    if let Some(same) = known.iter().find(|k| normalise(k) == wanted) {
        return Some(same);
    }
    let limit = (wanted.chars().count() / 3).max(2);
    known
        .iter()
        .map(|k| (levenshtein(&wanted, &normalise(k)), *k))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, k)| k)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let known = [
            "name",
            "source",
            "tags",
            "match",
            "allowPrerelease",
            "schedule",
        ];
        assert_eq!(suggest("tag", &known), Some("tags"));
        assert_eq!(suggest("allow_prerelease", &known), Some("allowPrerelease"));
        assert_eq!(suggest("AllowPreRelease", &known), Some("allowPrerelease"));
        assert_eq!(suggest("shedule", &known), Some("schedule"));
        assert_eq!(suggest("sorce", &known), Some("source"));
        assert_eq!(suggest("completely", &known), None);
        assert_eq!(suggest(&"t".repeat(100_000), &known), None);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
    }

    fn diagnostics(source: &str) -> Vec<String> {
        let mut doc = Doc::new(Path::new("images/x.yaml"), source);
        let loaded = doc.load("an ImageSet manifest");
        assert!(loaded.is_none(), "{source:.80}");
        doc.finish::<()>(None)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn deep_nesting_is_refused_before_a_tree_is_built() {
        // 20,000 levels in 40 KB: saphyr's loader (and the tree's drop) would recurse that deep.
        let source = format!("{}x\n", "- ".repeat(20_000));
        assert_eq!(
            diagnostics(&source),
            [
                "images/x.yaml:1:129: nested more than 64 levels deep; imagelock files need far fewer"
            ]
        );
        // Flow collections: the scanner stops at its own limit (255) before the parser
        // reaches ours; either way, one diagnostic.
        let flow = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
        assert_eq!(diagnostics(&flow).len(), 1);
        let mappings: String = (0..3_000)
            .map(|i| format!("{}k:\n", " ".repeat(i)))
            .collect();
        assert!(diagnostics(&mappings)[0].contains("nested more than 64 levels"));
        // 64 levels are fine.
        let ok = format!("{}x\n", "- ".repeat(MAX_YAML_DEPTH));
        assert!(check_shape(&ok, MAX_YAML_NODES).is_ok());
    }

    #[test]
    fn anchors_and_aliases_are_refused_by_name() {
        let bomb = "a: &a [\"lol\",\"lol\"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n";
        assert_eq!(
            diagnostics(bomb),
            [
                "images/x.yaml:1:4: YAML anchor \"&a\" is not allowed: anchors and aliases are refused in imagelock files, write the value out"
            ]
        );
        assert_eq!(
            diagnostics("spec: &spec\n  images: []\n"),
            [
                "images/x.yaml:1:7: YAML anchor \"&spec\" is not allowed: anchors and aliases are refused in imagelock files, write the value out"
            ]
        );
        // For a lock, nothing of the file: no name.
        let error = check_shape("a: &secret-name x\n", MAX_LOCK_NODES).unwrap_err();
        assert_eq!(
            error.to_string(),
            "line 1, column 4: YAML anchor is not allowed: anchors and aliases are refused in imagelock files, write the value out"
        );
    }

    #[test]
    fn numbers_keep_their_source_text_after_many_wide_chars() {
        // Multi-byte chars before and between the numbers: char and byte indexes differ.
        let padding = "# é€😀\n".repeat(300);
        let tags: Vec<String> = (0..600).map(|i| format!("{i}.10")).collect();
        let source = format!("{padding}tags: [{}]  # ünïcode\n", tags.join(", "));
        let mut doc = Doc::new(Path::new("images/x.yaml"), &source);
        let root = doc.load("a test").unwrap();
        let map = doc.mapping(&root_value(&root), &["tags"]).unwrap();
        let list = doc.string_list(map.get("tags").unwrap()).unwrap();
        let got: Vec<String> = list.into_iter().map(|(text, _)| text).collect();
        assert_eq!(got, tags);
    }

    #[test]
    fn node_counts_are_bounded() {
        let many = format!("[{}]", "a,".repeat(20));
        assert!(matches!(
            check_shape(&many, 10),
            Err(ShapeError::TooManyNodes(_, 10))
        ));
        assert!(check_shape(&many, 100).is_ok());
    }

    #[test]
    fn excerpts_are_short_and_on_one_line() {
        assert_eq!(quote("web"), "\"web\"");
        assert_eq!(
            quote("a\"b\\c\nd\u{1b}[31m\u{202e}"),
            "\"a\\\"b\\\\c\\nd\\u{1b}[31m\\u{202e}\""
        );
        let long = quote(&"x".repeat(10_000));
        assert_eq!(long.chars().count(), EXCERPT_CHARS + 3);
        assert!(long.ends_with("x…\""));
        // The funnel cuts what `{:?}` quoted, keeps the rest.
        let message = format!("invalid tag {:?}; expected a tag", "y".repeat(5_000));
        let bounded = bound_message(&message);
        assert_eq!(
            bounded,
            format!("invalid tag \"{}…\"; expected a tag", "y".repeat(80))
        );
        let message = format!("unknown field {:?} at the top level", "a\"b\n".repeat(100));
        let bounded = bound_message(&message);
        assert!(bounded.ends_with("…\" at the top level"), "{bounded}");
        assert!(!bounded.contains('\n'));
        assert!(bound_message(&"z".repeat(100_000)).chars().count() <= MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn diagnostics_quote_at_most_an_excerpt() {
        let key = "k".repeat(500);
        let got = diagnostics(&format!("{key}: 1\n{key}: 2\n"));
        assert_eq!(got.len(), 1);
        assert!(got[0].len() < 200, "{}", got[0]);
        let secret = format!("SECRET{}", "s".repeat(300));
        let mut doc = Doc::new(Path::new("images/x.yaml"), "x");
        doc.error(FILE_START, "", format!("bad value {secret:?}"));
        let message = doc.finish::<()>(None).unwrap_err()[0].to_string();
        assert!(message.len() < 150, "{message}");
    }
}

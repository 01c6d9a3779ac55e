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

use super::{Diagnostic, Position};
use crate::char_index::CharIndex;

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
    format!("{parent}[{key:?}]")
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
        YamlData::Value(Scalar::String(s)) => format!("the string {s:?}"),
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
                    "duplicate key {key:?}; a key may appear only once in a mapping, merge the two entries"
                ),
                None => {
                    "duplicate key; a key may appear only once in a mapping, merge the two entries"
                        .to_owned()
                }
            };
            self.error(at, "", message);
        } else {
            self.error(at, "", format!("invalid YAML: {}", error.info()));
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
                    format!("unknown field {name:?} {place}; {hint}"),
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
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
    }
}

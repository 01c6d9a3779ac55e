//! Checks shared by `imagelock.yaml` and ImageSet manifests.

use std::collections::HashMap;

use crate::reference::Platform;

use super::API_VERSION;
use super::model::Schedule;
use super::parse_cron;
use super::yaml::{Doc, Map, Node, Value, root_value};

/// Largest `keep:`; a lock with more generations per tag stops being reviewable.
pub(crate) const MAX_KEEP: i64 = 1000;

/// The top-level mapping of a file of `kind`, with `apiVersion` and `kind` checked. `None`
/// when `kind` names another kind of file: then only that is reported, since every other
/// field would be noise.
pub(crate) fn top_level<'n>(
    doc: &mut Doc<'_>,
    root: &'n Node<'n>,
    kind: &str,
    known: &'static [&'static str],
) -> Option<Map<'n>> {
    let mark = doc.mark();
    let map = doc.mapping(&root_value(root), known)?;
    let fields_checked = doc.mark();
    if header(doc, &map, kind) {
        Some(map)
    } else {
        doc.discard_since(mark, fields_checked);
        None
    }
}

/// Checks `apiVersion` and `kind`. Returns false when `kind` names another kind of file.
fn header(doc: &mut Doc<'_>, map: &Map<'_>, kind: &str) -> bool {
    if let Some(value) = doc.required(
        map,
        "apiVersion",
        &format!("expected apiVersion: {API_VERSION}"),
    ) && let Some(api_version) = doc.string(value)
        && api_version != API_VERSION
    {
        doc.error(
            value.position,
            &value.field,
            format!("expected {API_VERSION:?}, found {api_version:?}"),
        );
    }
    let Some(value) = doc.required(map, "kind", &format!("expected kind: {kind}")) else {
        return true;
    };
    match doc.string(value) {
        Some(found) if found == kind => true,
        Some(found) => {
            doc.error(
                value.position,
                &value.field,
                format!("expected {kind:?}, found {found:?}"),
            );
            false
        }
        None => false,
    }
}

pub(crate) fn schedule(doc: &mut Doc<'_>, value: &Value<'_>) -> Option<Schedule> {
    let text = doc.string(value)?;
    match parse_cron(&text) {
        Ok(schedule) => Some(schedule),
        Err(why) => {
            doc.error(
                value.position,
                &value.field,
                format!(
                    "invalid cron expression {text:?}: {why}; expected 5 fields like \"*/15 * * * *\""
                ),
            );
            None
        }
    }
}

pub(crate) fn keep(doc: &mut Doc<'_>, value: &Value<'_>) -> Option<u32> {
    doc.integer(value, 1, MAX_KEEP, "a number of generations")
        .and_then(|keep| u32::try_from(keep).ok())
}

/// A list of `os/arch[/variant]`, each at most once.
pub(crate) fn platforms(doc: &mut Doc<'_>, value: &Value<'_>) -> Option<Vec<Platform>> {
    let items = doc.string_list(value)?;
    let mut seen: HashMap<Platform, String> = HashMap::new();
    let mut platforms = Vec::new();
    for (text, item) in items {
        match text.parse::<Platform>() {
            Ok(platform) => {
                if let Some(first) = seen.get(&platform) {
                    doc.error(
                        item.position,
                        &item.field,
                        format!("platform {text:?} is listed twice (also {first})"),
                    );
                } else {
                    seen.insert(platform.clone(), item.field.clone());
                    platforms.push(platform);
                }
            }
            Err(error) => doc.error(
                item.position,
                &item.field,
                format!("{error}, like linux/amd64 or linux/arm64/v8"),
            ),
        }
    }
    Some(platforms)
}

/// A non-empty string on one line.
pub(crate) fn line(doc: &mut Doc<'_>, value: &Value<'_>, example: &str) -> Option<String> {
    let text = doc.string(value)?;
    if text.trim().is_empty() || text.contains(['\n', '\r']) {
        doc.error(
            value.position,
            &value.field,
            format!("expected one non-empty line, like {example:?}"),
        );
        return None;
    }
    Some(text)
}

/// A registry host with an optional port, as it appears in image references
/// (`registry.internal`, `localhost:5000`, `10.0.0.5:5000`).
pub(crate) fn is_registry_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok_and(|n| n > 0)
    });
    port_ok && !name.is_empty() && name.len() <= 253 && name.split('.').all(is_dns_label)
}

/// A registry host from a string value, with a hint for the usual mistakes.
pub(crate) fn registry_host(doc: &mut Doc<'_>, value: &Value<'_>) -> Option<String> {
    let host = doc.string(value)?;
    check_registry_host(doc, value, &host).then_some(host)
}

pub(crate) fn check_registry_host(doc: &mut Doc<'_>, value: &Value<'_>, host: &str) -> bool {
    if is_registry_host(host) {
        return true;
    }
    let hint = if host.contains("://") {
        "; leave out the scheme (plain HTTP is the operator's setting, insecureRegistries)"
    } else if host.contains('/') {
        "; leave out the path (a mirror's path goes into layout:, like \"mirror/{namespace}/{name}\")"
    } else if host.bytes().any(|b| b.is_ascii_uppercase()) {
        "; use lowercase"
    } else {
        ""
    };
    doc.error(
        value.position,
        &value.field,
        format!(
            "invalid registry host {host:?}: expected host[:port] like registry.internal or localhost:5000{hint}"
        ),
    );
    false
}

/// A DNS-1123 label: at most 63 lowercase letters, digits and `-`, starting and ending with a
/// letter or digit (Kubernetes namespace names).
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// DNS-1123 labels joined by `.`, at most `max` characters (object names, image aliases).
pub(crate) fn is_dns_name(name: &str, max: usize) -> bool {
    name.len() <= max && name.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_hosts() {
        for ok in [
            "registry.internal",
            "localhost:5000",
            "10.0.0.5:5000",
            "docker.io",
            "my-registry.example.com:443",
        ] {
            assert!(is_registry_host(ok), "{ok}");
        }
        for bad in [
            "",
            "https://registry.internal",
            "registry.internal/mirror",
            "Registry.internal",
            "host:",
            "host:0",
            "host:99999",
            "-bad.example",
            "a..b",
        ] {
            assert!(!is_registry_host(bad), "{bad}");
        }
    }

    #[test]
    fn dns_names() {
        assert!(is_dns_label("team-a"));
        assert!(!is_dns_label("Team-a"));
        assert!(!is_dns_label("team_a"));
        assert!(!is_dns_label("-team"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_name("web.frontend", 63));
        assert!(!is_dns_name("web..frontend", 63));
        assert!(!is_dns_name("web.", 63));
    }
}

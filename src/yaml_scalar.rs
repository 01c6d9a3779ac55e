//! One quoting rule for every YAML file imagelock writes (locks, outputs, setter rewrites).
//!
//! A scalar is written plain only when every YAML reader (1.1 and 1.2, Kubernetes' included)
//! reads it back as the same string; otherwise it is double-quoted with JSON-compatible
//! escapes. Deciding this in one place keeps all generated files consistent and reviewable.

/// A block-context scalar: plain when YAML reads it back as the same string, quoted otherwise.
pub fn scalar(s: &str) -> String {
    if is_plain_safe(s, false) {
        s.to_owned()
    } else {
        quoted(s)
    }
}

/// A scalar inside `{...}` or `[...]`, where `:` and `,` also end a plain scalar.
pub fn flow_scalar(s: &str) -> String {
    if is_plain_safe(s, true) {
        s.to_owned()
    } else {
        quoted(s)
    }
}

/// True when `s` can be written as a plain scalar (in flow context when `flow`).
pub fn is_plain_safe(s: &str, flow: bool) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    // Starting with a letter rules out numbers, indicators and most special forms; `@` is
    // reserved only as a first character, so `repo@sha256:...` stays plain.
    let allowed =
        |c: char| c.is_ascii_alphanumeric() || "_./+-@".contains(c) || (!flow && c == ':');
    first.is_ascii_alphabetic()
        && s.chars().all(allowed)
        && !s.ends_with(':')
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n"
        )
}

/// True when a value someone wrote plain may be replaced by `s` and stay plain: the rule of
/// [`is_plain_safe`], widened to strings that start with a digit and contain a `/` (image
/// references on an IP address registry, `127.0.0.1:5000/team-a/web@sha256:...`): no number,
/// date, boolean or null form of YAML 1.1 or 1.2 contains a `/`. Files imagelock generates keep
/// the strict rule, so that their bytes never change with this one.
pub fn stays_plain(s: &str) -> bool {
    let reference_like = s.starts_with(|c: char| c.is_ascii_digit())
        && s.contains('/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./+-@:".contains(c))
        && !s.ends_with(':');
    is_plain_safe(s, false) || reference_like
}

/// A double-quoted scalar with JSON-compatible escapes (valid YAML 1.2).
pub fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{}\"", s.escape_default()))
}

/// A single-quoted scalar (`'` doubled), for rewriting a value the user wrote that way.
pub fn single_quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_what_yaml_would_misread() {
        for s in [
            "1.4", "true", "no", "", "-x", "a: b", "x,y", "#c", "100", "a b", "NULL", "@x",
        ] {
            assert!(!is_plain_safe(s, false), "{s:?} must be quoted");
        }
        for s in [
            "latest",
            "v2.13.1",
            "quay.io/company/web",
            "sha256:abc",
            "registry.internal:5000/team-a/web@sha256:abc",
        ] {
            assert!(is_plain_safe(s, false), "{s:?} can stay plain");
        }
        assert!(!is_plain_safe("sha256:abc", true));
    }

    #[test]
    fn references_on_ip_registries_stay_plain() {
        assert!(stays_plain("127.0.0.1:5000/team-a/web@sha256:abc"));
        assert!(stays_plain("web"));
        for s in [
            "1.4",
            "10:30",
            "2026-11-20",
            "1e3",
            "0x1f",
            "1/",
            "1/a b",
            "1/a:",
        ] {
            let plain_ok = s.contains('/') && !s.contains(' ') && !s.ends_with(':');
            assert_eq!(stays_plain(s), plain_ok, "{s:?}");
        }
    }

    #[test]
    fn quoting_forms() {
        assert_eq!(scalar("1.4"), "\"1.4\"");
        assert_eq!(scalar("web"), "web");
        assert_eq!(flow_scalar("linux/amd64"), "linux/amd64");
        assert_eq!(quoted("a\"b"), "\"a\\\"b\"");
        assert_eq!(single_quoted("it's"), "'it''s'");
    }
}

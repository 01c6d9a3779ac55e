//! Tag selection for `match:` entries: a pure function from a repository's tag list to the
//! tags an entry follows, highest version first.
//!
//! Tags are read as versions leniently: an optional `v`, exactly `MAJOR.MINOR.PATCH`, and
//! anything after the first `-` is a prerelease (so `1.2.3-debug` and `1.2.3-alpine` are
//! prereleases too, and `exclude:` is how users drop such variants). Tags that are not versions
//! (`latest`, `1.25`, `2024-01-01`) never match.

use std::cmp::Ordering;

use super::model::{Select, TagMatcher, VersionPattern};

impl VersionPattern {
    /// Parses a `match:` value: an x-pattern (`v2.13.x`, `2.x.0`, `4.x.x`: optional `v`,
    /// exactly three dot-separated parts, each a number or `x`), or else a semver range such as
    /// `>=2.13, <2.14`. The error says why and what would be right.
    pub fn parse(text: &str) -> Result<VersionPattern, String> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(format!("empty pattern; {}", PATTERN_HINT));
        }
        if let Some((v_prefix, parts)) = parse_x_pattern(trimmed) {
            return Ok(VersionPattern::X {
                v_prefix,
                parts,
                text: text.to_owned(),
            });
        }
        match semver::VersionReq::parse(trimmed) {
            Ok(req) => Ok(VersionPattern::Semver {
                req,
                text: text.to_owned(),
            }),
            Err(error) => Err(format!(
                "invalid pattern {text:?}: {error}; {}",
                PATTERN_HINT
            )),
        }
    }

    /// The pattern as written in the manifest.
    pub fn text(&self) -> &str {
        match self {
            VersionPattern::X { text, .. } | VersionPattern::Semver { text, .. } => text,
        }
    }

    fn matches(&self, version: &TagVersion<'_>) -> bool {
        match self {
            VersionPattern::X {
                v_prefix, parts, ..
            } => {
                *v_prefix == version.v_prefix
                    && parts
                        .iter()
                        .zip(version.numbers())
                        .all(|(part, number)| part.is_none_or(|fixed| fixed == number))
            }
            // A prerelease is judged by its release version, so `2.14.0-rc1` is not in
            // `>=2.13, <2.14` (semver precedence would put it below 2.14.0) while `2.13.0-rc1` is.
            VersionPattern::Semver { req, .. } => req.matches(&semver::Version::new(
                version.major,
                version.minor,
                version.patch,
            )),
        }
    }
}

const PATTERN_HINT: &str = "expected an x-pattern like v2.13.x or 2.x.0 (optional v, three parts each a number or x) or a semver range like \">=2.13, <2.14\"";

/// `v2.13.x` -> (true, [Some(2), Some(13), None]).
fn parse_x_pattern(text: &str) -> Option<(bool, [Option<u64>; 3])> {
    let (v_prefix, rest) = match text.strip_prefix('v') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let mut parts = [None; 3];
    let mut count = 0;
    for part in rest.split('.') {
        let slot = parts.get_mut(count)?;
        *slot = match part {
            "x" => None,
            _ => Some(parse_number(part)?),
        };
        count += 1;
    }
    (count == 3).then_some((v_prefix, parts))
}

fn parse_number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A tag read as a version.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TagVersion<'t> {
    v_prefix: bool,
    major: u64,
    minor: u64,
    patch: u64,
    /// Everything after the first `-`; empty for a release.
    pre: &'t str,
}

impl TagVersion<'_> {
    fn numbers(&self) -> [u64; 3] {
        [self.major, self.minor, self.patch]
    }

    /// Semver precedence (build metadata cannot occur: `+` is not allowed in tags).
    fn precedence(&self, other: &Self) -> Ordering {
        self.numbers()
            .cmp(&other.numbers())
            .then_with(|| compare_prerelease(self.pre, other.pre))
    }
}

fn parse_tag(tag: &str) -> Option<TagVersion<'_>> {
    let (v_prefix, rest) = match tag.strip_prefix('v') {
        Some(rest) => (true, rest),
        None => (false, tag),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((_, "")) => return None,
        Some((core, pre)) => (core, pre),
        None => (rest, ""),
    };
    let mut numbers = core.split('.').map(parse_number);
    let version = TagVersion {
        v_prefix,
        major: numbers.next()??,
        minor: numbers.next()??,
        patch: numbers.next()??,
        pre,
    };
    numbers.next().is_none().then_some(version)
}

/// Semver 2.0.0 §11 precedence of prerelease strings; the empty string (a release) is highest.
/// Identifiers compare numerically when both are numeric, numeric below alphanumeric, others
/// by ASCII; a shorter list of equal identifiers is lower. Note that by this rule `rc10` sorts
/// below `rc2` (`rc.10` does not), exactly as semver and Flux order them.
fn compare_prerelease(a: &str, b: &str) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Greater,
        (false, true) => return Ordering::Less,
        (false, false) => {}
    }
    let mut left = a.split('.');
    let mut right = b.split('.');
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let order = compare_identifier(x, y);
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

fn compare_identifier(x: &str, y: &str) -> Ordering {
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match (numeric(x), numeric(y)) {
        // Compare digit strings without parsing, so huge numbers cannot overflow.
        (true, true) => {
            let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
            x.len().cmp(&y.len()).then_with(|| x.cmp(y))
        }
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => x.cmp(y),
    }
}

/// A sort order for tags: highest version first, equal versions by text; tags that are not
/// versions after every version, by text. Versions here are lenient (`1.25`, `v2`, `1.2.3.4`,
/// each with an optional `-prerelease`), since a tag need not have three parts to be ordered;
/// missing parts count as 0 and prereleases follow semver precedence.
pub fn highest_version_first(a: &str, b: &str) -> Ordering {
    fn lenient(tag: &str) -> Option<(Vec<u64>, &str)> {
        let rest = tag.strip_prefix('v').unwrap_or(tag);
        let (core, pre) = match rest.split_once('-') {
            Some((_, "")) => return None,
            Some((core, pre)) => (core, pre),
            None => (rest, ""),
        };
        let numbers = core
            .split('.')
            .map(parse_number)
            .collect::<Option<Vec<_>>>()?;
        Some((numbers, pre))
    }
    let compare = |(na, pa): &(Vec<u64>, &str), (nb, pb): &(Vec<u64>, &str)| {
        let parts = na.len().max(nb.len());
        let padded = |n: &Vec<u64>| {
            (0..parts)
                .map(|i| n.get(i).copied().unwrap_or(0))
                .collect::<Vec<_>>()
        };
        padded(na)
            .cmp(&padded(nb))
            .then_with(|| compare_prerelease(pa, pb))
    };
    match (lenient(a), lenient(b)) {
        (Some(va), Some(vb)) => compare(&vb, &va).then_with(|| a.cmp(b)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

impl TagMatcher {
    /// Whether [`Self::select`] can pick `tag` (it picks among the tags this accepts): the
    /// filter a tag listing applies page by page, so that only candidates are kept.
    pub fn accepts(&self, tag: &str) -> bool {
        self.version_of(tag).is_some()
    }

    /// `tag` read as a version, when the pattern, `allowPrerelease` and `exclude` let it in.
    fn version_of<'t>(&self, tag: &'t str) -> Option<TagVersion<'t>> {
        parse_tag(tag)
            .filter(|version| self.allow_prerelease || version.pre.is_empty())
            .filter(|version| self.pattern.matches(version))
            .filter(|_| !self.exclude.iter().any(|re| re.is_match(tag)))
    }

    /// The tags of `tags` this matcher selects, highest version first (ties in precedence,
    /// such as `1.0.0` and `v1.0.0` under a semver range, by tag text); at most one with
    /// [`Select::Latest`].
    pub fn select(&self, tags: &[String]) -> Vec<String> {
        let mut selected: Vec<(TagVersion<'_>, &String)> = tags
            .iter()
            .filter_map(|tag| self.version_of(tag).map(|version| (version, tag)))
            .collect();
        selected.sort_by(|(va, ta), (vb, tb)| vb.precedence(va).then_with(|| ta.cmp(tb)));
        selected.dedup_by(|(_, a), (_, b)| a == b);
        if self.select == Select::Latest {
            selected.truncate(1);
        }
        selected.into_iter().map(|(_, tag)| tag.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_matcher(pattern: &str) -> TagMatcher {
        TagMatcher {
            pattern: VersionPattern::parse(pattern).unwrap(),
            allow_prerelease: false,
            select: Select::All,
            exclude: Vec::new(),
        }
    }

    fn mk_tags(tags: &[&str]) -> Vec<String> {
        tags.iter().map(|t| (*t).to_owned()).collect()
    }

    fn select(matcher: &TagMatcher, tags: &[&str]) -> Vec<String> {
        matcher.select(&mk_tags(tags))
    }

    const ARGO: &[&str] = &[
        "latest",
        "v2.12.9",
        "v2.13.0-rc1",
        "v2.13.0-rc2",
        "v2.13.0",
        "v2.13.1",
        "v2.13.10",
        "v2.13.2",
        "v2.13.2-debug",
        "v2.14.0-rc1",
        "v2.14.0",
        "2.13.5",
        "v2.13",
        "v2.13.3.1",
        "sha-abc123",
    ];

    #[test]
    fn x_pattern_keeps_v_style_and_sorts_highest_first() {
        let m = mk_matcher("v2.13.x");
        assert_eq!(
            select(&m, ARGO),
            ["v2.13.10", "v2.13.2", "v2.13.1", "v2.13.0"]
        );
        // Without `v` only the unprefixed tags match.
        assert_eq!(select(&mk_matcher("2.13.x"), ARGO), ["2.13.5"]);
    }

    #[test]
    fn x_pattern_with_prereleases() {
        let mut m = mk_matcher("v2.13.x");
        m.allow_prerelease = true;
        assert_eq!(
            select(&m, ARGO),
            [
                "v2.13.10",
                "v2.13.2",
                "v2.13.2-debug",
                "v2.13.1",
                "v2.13.0",
                "v2.13.0-rc2",
                "v2.13.0-rc1"
            ]
        );
        m.exclude = vec![regex::Regex::new("-debug$").unwrap()];
        assert!(!select(&m, ARGO).contains(&"v2.13.2-debug".to_owned()));
        assert_eq!(select(&m, ARGO).len(), 6);
    }

    #[test]
    fn x_pattern_fixed_parts_anywhere() {
        let tags = &["2.0.0", "2.1.0", "2.1.1", "2.10.0", "3.0.0", "1.9.0"];
        assert_eq!(
            select(&mk_matcher("2.x.0"), tags),
            ["2.10.0", "2.1.0", "2.0.0"]
        );
        assert_eq!(
            select(&mk_matcher("x.x.x"), tags),
            ["3.0.0", "2.10.0", "2.1.1", "2.1.0", "2.0.0", "1.9.0"]
        );
        assert_eq!(select(&mk_matcher("2.1.1"), tags), ["2.1.1"]);
        let m = mk_matcher("4.x.x");
        assert!(select(&m, tags).is_empty());
    }

    #[test]
    fn semver_range_with_and_without_prereleases() {
        let mut m = mk_matcher(">=2.13, <2.14");
        assert_eq!(
            select(&m, ARGO),
            ["v2.13.10", "2.13.5", "v2.13.2", "v2.13.1", "v2.13.0"]
        );
        m.allow_prerelease = true;
        let got = select(&m, ARGO);
        assert!(got.contains(&"v2.13.0-rc1".to_owned()));
        // Its release version 2.14.0 is outside the range.
        assert!(!got.contains(&"v2.14.0-rc1".to_owned()));
        assert_eq!(got.last().map(String::as_str), Some("v2.13.0-rc1"));
    }

    #[test]
    fn semver_caret_and_wildcard() {
        let tags = &["1.2.3", "1.3.0", "2.0.0", "1.2.2", "0.9.9"];
        assert_eq!(
            select(&mk_matcher("^1.2"), tags),
            ["1.3.0", "1.2.3", "1.2.2"]
        );
        assert_eq!(select(&mk_matcher("1.2.*"), tags), ["1.2.3", "1.2.2"]);
        assert_eq!(select(&mk_matcher("*").clone(), tags).len(), 5);
    }

    #[test]
    fn latest_selects_one() {
        let mut m = mk_matcher("v2.x.x");
        m.select = Select::Latest;
        assert_eq!(select(&m, ARGO), ["v2.14.0"]);
        m.allow_prerelease = true;
        assert_eq!(select(&m, ARGO), ["v2.14.0"]);
        assert!(select(&m, &["latest", "main"]).is_empty());
    }

    #[test]
    fn ties_broken_by_text() {
        let mut m = mk_matcher(">=1.0.0-0");
        m.allow_prerelease = true;
        assert_eq!(select(&m, &["v1.0.0", "1.0.0"]), ["1.0.0", "v1.0.0"]);
        m.select = Select::Latest;
        assert_eq!(select(&m, &["v1.0.0", "1.0.0"]), ["1.0.0"]);
        // `rc.01` and `rc.1` have the same precedence.
        m.select = Select::All;
        assert_eq!(
            select(&m, &["1.0.0-rc.1", "1.0.0-rc.01"]),
            ["1.0.0-rc.01", "1.0.0-rc.1"]
        );
    }

    #[test]
    fn duplicate_input_tags_appear_once() {
        assert_eq!(select(&mk_matcher("1.x.x"), &["1.0.0", "1.0.0"]), ["1.0.0"]);
    }

    #[test]
    fn prerelease_precedence_follows_semver() {
        // The ordering example of semver 2.0.0 §11, lowest first.
        let ordered = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
        ];
        let mut m = mk_matcher("1.0.0");
        m.allow_prerelease = true;
        let mut expected: Vec<&str> = ordered.to_vec();
        expected.reverse();
        let mut shuffled = ordered.to_vec();
        shuffled.rotate_left(3);
        assert_eq!(select(&m, &shuffled), expected);
        // And agrees with the semver crate wherever it can parse the tags.
        for a in ordered {
            for b in ordered {
                let (pa, pb) = (parse_tag(a).unwrap(), parse_tag(b).unwrap());
                let (sa, sb) = (
                    semver::Version::parse(a).unwrap(),
                    semver::Version::parse(b).unwrap(),
                );
                assert_eq!(pa.precedence(&pb), sa.cmp(&sb), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn lenient_tag_parsing() {
        assert_eq!(
            parse_tag("v1.2.3-rc1"),
            Some(TagVersion {
                v_prefix: true,
                major: 1,
                minor: 2,
                patch: 3,
                pre: "rc1"
            })
        );
        assert!(parse_tag("1.2.3-debug_x").is_some());
        assert!(parse_tag("1.2.3-alpine-3.19").is_some());
        for not_a_version in [
            "latest", "1.2", "1.2.3.4", "1.2.3-", "v", "V1.2.3", "1..3", "a.b.c", "1.2.x",
            "1.2.3+b", "",
        ] {
            assert_eq!(parse_tag(not_a_version), None, "{not_a_version}");
        }
        assert!(parse_tag("99999999999999999999.0.0").is_none());
        assert_eq!(
            compare_identifier("18446744073709551616", "2"),
            Ordering::Greater
        );
    }

    #[test]
    fn pattern_parsing() {
        assert_eq!(
            VersionPattern::parse("v2.13.x").unwrap(),
            VersionPattern::X {
                v_prefix: true,
                parts: [Some(2), Some(13), None],
                text: "v2.13.x".into()
            }
        );
        assert!(matches!(
            VersionPattern::parse(">=2.13, <2.14").unwrap(),
            VersionPattern::Semver { .. }
        ));
        assert_eq!(VersionPattern::parse("2.x.0").unwrap().text(), "2.x.0");
        for bad in ["", "v2.13", "v2.13.x.x", "2.13.y", ">=v2", "latest"] {
            let error = VersionPattern::parse(bad).unwrap_err();
            assert!(error.contains("x-pattern like v2.13.x"), "{bad}: {error}");
        }
    }

    #[test]
    fn version_order_for_any_tags() {
        let mut tags = mk_tags(&[
            "stable",
            "1.24",
            "1.25",
            "v1.25.0",
            "1.25.1",
            "latest",
            "1.25.1-rc1",
            "2",
            "x-1",
        ]);
        tags.sort_by(|a, b| highest_version_first(a, b));
        assert_eq!(
            tags,
            [
                "2",
                "1.25.1",
                "1.25.1-rc1",
                "1.25",
                "v1.25.0",
                "1.24",
                "latest",
                "stable",
                "x-1"
            ]
        );
    }

    #[test]
    fn thousands_of_tags() {
        // Every combination of 10 majors, 10 minors, 12 patches, in three styles.
        let mut tags = Vec::new();
        for major in 0..10 {
            for minor in 0..10 {
                for patch in 0..12 {
                    tags.push(format!("v{major}.{minor}.{patch}"));
                    tags.push(format!("v{major}.{minor}.{patch}-rc{}", patch % 3));
                    tags.push(format!("{major}.{minor}.{patch}-debug"));
                }
            }
        }
        tags.extend(["latest", "stable", "main"].map(String::from));
        tags.reverse();
        assert!(tags.len() > 3_000);

        let m = mk_matcher("v2.13.x");
        assert!(m.select(&tags).is_empty(), "minor 13 does not exist");

        let m = mk_matcher("v2.3.x");
        let got = m.select(&tags);
        assert_eq!(got.len(), 12);
        assert_eq!(got[0], "v2.3.11");
        assert_eq!(got[11], "v2.3.0");

        let mut m = mk_matcher(">=3.5, <4");
        m.allow_prerelease = true;
        m.exclude = vec![regex::Regex::new("-debug$").unwrap()];
        let got = m.select(&tags);
        assert_eq!(got.len(), 5 * 12 * 2);
        assert_eq!(got[0], "v3.9.11");
        assert_eq!(got[1], "v3.9.11-rc2");
        assert!(
            got.iter()
                .all(|t| t.starts_with('v') && !t.ends_with("-debug"))
        );
        let is_sorted = got.windows(2).all(|w| {
            parse_tag(&w[0])
                .unwrap()
                .precedence(&parse_tag(&w[1]).unwrap())
                .is_ge()
        });
        assert!(is_sorted);

        m.select = Select::Latest;
        assert_eq!(m.select(&tags), ["v3.9.11"]);

        let m = mk_matcher("x.x.x");
        assert_eq!(
            m.select(&tags).len(),
            0,
            "only -debug prereleases lack the v"
        );
    }

    #[test]
    fn filtering_pages_with_accepts_selects_what_the_whole_list_would() {
        let mut with_prerelease = mk_matcher(">=2.13, <2.14");
        with_prerelease.allow_prerelease = true;
        with_prerelease.exclude = vec![regex::Regex::new("-debug$").unwrap()];
        let mut latest = mk_matcher("v2.x.x");
        latest.select = Select::Latest;
        for matcher in [mk_matcher("v2.13.x"), with_prerelease, latest] {
            let whole = select(&matcher, ARGO);
            // Pages of 4, each filtered as it is read; only accepted tags are kept.
            let kept: Vec<String> = ARGO
                .chunks(4)
                .flat_map(|page| page.iter().filter(|tag| matcher.accepts(tag)))
                .map(|tag| (*tag).to_owned())
                .collect();
            assert!(kept.len() < ARGO.len());
            assert_eq!(matcher.select(&kept), whole);
        }
        assert!(!mk_matcher("v2.13.x").accepts("latest"));
        assert!(!mk_matcher("v2.13.x").accepts("v2.13.0-rc1"));
    }
}

//! Tag list pagination (distribution spec "Listing Tags"): `n` and `last` query parameters and
//! the RFC 8288 `Link: <url>; rel="next"` header, with guards for registries that ignore both.
//!
//! A tag list is registry input without a natural end: a page may be huge and a `Link` may
//! lead on forever. So a listing is bounded in distinct tags, in bytes (per page and in all)
//! and in pages, and a listing past a bound is an error, never a silent cut. Each page is
//! parsed as a stream and filtered while it is read: only the tags the caller can use are
//! kept, the others are remembered as a 64-bit hash (to notice a server that repeats itself).

use std::collections::HashSet;
use std::fmt;
use std::hash::{BuildHasher as _, RandomState};

use reqwest::Url;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::reference::is_valid_tag;

/// Tags asked for per page.
pub const PAGE_SIZE: usize = 1000;

/// How far one tag listing may go. Going past any of them fails the listing with
/// [`TagLimit`], naming the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagLimits {
    /// Distinct tags seen (kept or not). Default 100,000.
    pub max_tags: usize,
    /// Bytes of all pages together. Default 16 MiB.
    pub max_bytes: u64,
    /// Bytes of one page. Default 4 MiB (a registry that ignores `n` sends everything at
    /// once: 100,000 tags of 40 characters fit).
    pub max_page_bytes: u64,
    /// Pages. Default 1,000 (100,000 tags at the 100 per page some registries insist on).
    pub max_pages: usize,
}

impl Default for TagLimits {
    fn default() -> Self {
        TagLimits {
            max_tags: 100_000,
            max_bytes: 16 << 20,
            max_page_bytes: 4 << 20,
            max_pages: 1_000,
        }
    }
}

/// The bound a tag listing went past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagLimit {
    Tags(usize),
    Bytes(u64),
    PageBytes(u64),
    Pages(usize),
}

impl fmt::Display for TagLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TagLimit::Tags(n) => write!(f, "{n} tags"),
            TagLimit::Bytes(n) => write!(f, "{n} bytes"),
            TagLimit::PageBytes(n) => write!(f, "{n} bytes in one page"),
            TagLimit::Pages(n) => write!(f, "{n} pages"),
        }
    }
}

/// The target of the `rel="next"` link in a `Link` header value, as written (maybe relative).
pub fn parse_link_next(header: &str) -> Option<String> {
    let mut rest = header;
    loop {
        let open = rest.find('<')?;
        let close = open + rest[open..].find('>')?;
        let target = &rest[open + 1..close];
        rest = &rest[close + 1..];
        // Parameters run to the next ',' outside quotes.
        let mut in_quotes = false;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                if c == '"' {
                    in_quotes = !in_quotes;
                }
                c == ',' && !in_quotes
            })
            .map_or(rest.len(), |(i, _)| i);
        let params = &rest[..end];
        rest = &rest[end..];
        let is_next = params.split(';').any(|param| {
            let Some((name, value)) = param.split_once('=') else {
                return false;
            };
            name.trim().eq_ignore_ascii_case("rel")
                && value
                    .trim()
                    .trim_matches('"')
                    .split_ascii_whitespace()
                    .any(|rel| rel.eq_ignore_ascii_case("next"))
        });
        if is_next {
            return Some(target.trim().to_owned());
        }
    }
}

/// Why a page could not be taken.
#[derive(Debug)]
pub enum PageError {
    /// The page is not `{"tags": [...]}`.
    Json(serde_json::Error),
    /// The listing went past a bound.
    Limit(TagLimit),
}

/// Collects the tags a caller keeps, page by page, and decides which page comes next.
pub struct TagPager<'k> {
    base: Url,
    limits: TagLimits,
    keep: &'k (dyn Fn(&str) -> bool + Sync),
    kept: Vec<String>,
    /// Hashes of every distinct tag seen, kept or not: 8 bytes a tag instead of the tag.
    seen: HashSet<u64>,
    hasher: RandomState,
    visited: HashSet<String>,
    pages: usize,
    bytes: u64,
}

/// What one page held, as it was read.
#[derive(Default)]
struct PageState {
    len: usize,
    new_tags: usize,
    last: String,
    exceeded: Option<TagLimit>,
}

impl<'k> TagPager<'k> {
    /// A listing of `base` (…/tags/list) that keeps the valid tags `keep` accepts.
    pub fn new(base: Url, limits: TagLimits, keep: &'k (dyn Fn(&str) -> bool + Sync)) -> Self {
        TagPager {
            base,
            limits,
            keep,
            kept: Vec::new(),
            seen: HashSet::new(),
            hasher: RandomState::new(),
            visited: HashSet::new(),
            pages: 0,
            bytes: 0,
        }
    }

    /// The largest body the next page may have: the per-page cap, or what is left of the
    /// whole listing's, whichever is smaller, with the bound that applies.
    pub fn page_cap(&self) -> (u64, TagLimit) {
        let left = self.limits.max_bytes.saturating_sub(self.bytes);
        if left < self.limits.max_page_bytes {
            (left, TagLimit::Bytes(self.limits.max_bytes))
        } else {
            (
                self.limits.max_page_bytes,
                TagLimit::PageBytes(self.limits.max_page_bytes),
            )
        }
    }

    /// Takes the body of one page fetched from `current` and returns the next URL to fetch,
    /// or `None` when the listing is complete. `link` is the response's `Link` header value,
    /// if any.
    pub fn next(
        &mut self,
        current: &Url,
        body: &[u8],
        link: Option<&str>,
    ) -> Result<Option<Url>, PageError> {
        self.visited.insert(current.as_str().to_owned());
        self.pages += 1;
        self.bytes += body.len() as u64;
        if self.bytes > self.limits.max_bytes {
            return Err(PageError::Limit(TagLimit::Bytes(self.limits.max_bytes)));
        }
        let mut page = PageState::default();
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        let parsed = PageSeed {
            pager: self,
            page: &mut page,
        }
        .deserialize(&mut deserializer)
        .and_then(|()| deserializer.end());
        if let Some(limit) = page.exceeded {
            return Err(PageError::Limit(limit));
        }
        parsed.map_err(PageError::Json)?;
        // A page with nothing new means the server ignores our paging (docker-registry 2.8
        // ignores `n` and `last` and returns everything every time): following it would loop.
        if page.len == 0 || page.new_tags == 0 {
            return Ok(None);
        }
        let next = match link.and_then(parse_link_next) {
            Some(target) => match current.join(&target) {
                Ok(url) => url,
                Err(_) => return Ok(None),
            },
            None if page.len >= PAGE_SIZE => {
                // No Link but a full page: ask for what follows the last tag ourselves.
                let mut url = first_page(&self.base);
                url.query_pairs_mut().append_pair("last", &page.last);
                url
            }
            // A short page without a Link is the last one.
            None => return Ok(None),
        };
        if self.visited.contains(next.as_str()) {
            return Ok(None);
        }
        if self.pages >= self.limits.max_pages {
            return Err(PageError::Limit(TagLimit::Pages(self.limits.max_pages)));
        }
        Ok(Some(next))
    }

    /// One tag of a page.
    fn take(&mut self, page: &mut PageState, tag: &str) -> Result<(), TagLimit> {
        page.len += 1;
        page.last.clear();
        page.last.push_str(tag);
        if !self.seen.insert(self.hasher.hash_one(tag)) {
            return Ok(());
        }
        if self.seen.len() > self.limits.max_tags {
            return Err(TagLimit::Tags(self.limits.max_tags));
        }
        page.new_tags += 1;
        if is_valid_tag(tag) && (self.keep)(tag) {
            self.kept.push(tag.to_owned());
        }
        Ok(())
    }

    /// The tags kept, first occurrence order.
    pub fn into_tags(self) -> Vec<String> {
        self.kept
    }
}

/// Reads `{"tags": [...]}` (other keys ignored, `tags` may be null or absent) into the pager
/// without building the list.
struct PageSeed<'p, 'k> {
    pager: &'p mut TagPager<'k>,
    page: &'p mut PageState,
}

impl<'de> DeserializeSeed<'de> for PageSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PageSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"an object {"tags": [...]}"#)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "tags" {
                map.next_value_seed(TagsSeed {
                    pager: &mut *self.pager,
                    page: &mut *self.page,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// The `tags` value: null or an array of strings, each handed to the pager as it is read.
struct TagsSeed<'p, 'k> {
    pager: &'p mut TagPager<'k>,
    page: &'p mut PageState,
}

impl<'de> DeserializeSeed<'de> for TagsSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for TagsSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of tag strings or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(TagSeed {
                pager: &mut *self.pager,
                page: &mut *self.page,
            })?
            .is_some()
        {}
        Ok(())
    }
}

/// One tag string, borrowed from the page where it can be.
struct TagSeed<'p, 'k> {
    pager: &'p mut TagPager<'k>,
    page: &'p mut PageState,
}

impl<'de> DeserializeSeed<'de> for TagSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for TagSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a tag string")
    }

    fn visit_str<E: de::Error>(self, tag: &str) -> Result<(), E> {
        self.pager.take(self.page, tag).map_err(|limit| {
            self.page.exceeded = Some(limit);
            E::custom(format!("more than {limit}"))
        })
    }
}

/// The first page's URL: `base` (…/tags/list) with `n`.
pub fn first_page(base: &Url) -> Url {
    let mut url = base.clone();
    url.query_pairs_mut()
        .clear()
        .append_pair("n", &PAGE_SIZE.to_string());
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_tags(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("t{i:05}")).collect()
    }

    fn mk_page(tags: &[String]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"name": "team/web", "tags": tags})).unwrap()
    }

    fn mk_base() -> Url {
        Url::parse("https://r.example/v2/team/web/tags/list").unwrap()
    }

    const ALL: &(dyn Fn(&str) -> bool + Sync) = &|_| true;

    fn mk_pager(limits: TagLimits) -> TagPager<'static> {
        TagPager::new(mk_base(), limits, ALL)
    }

    fn next(pager: &mut TagPager<'_>, url: &Url, tags: &[&str], link: Option<&str>) -> Option<Url> {
        let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        pager.next(url, &mk_page(&tags), link).unwrap()
    }

    fn limit_of(result: Result<Option<Url>, PageError>) -> TagLimit {
        match result {
            Err(PageError::Limit(limit)) => limit,
            Err(PageError::Json(e)) => panic!("not a limit: {e}"),
            Ok(next) => panic!("no error, next page {next:?}"),
        }
    }

    #[test]
    fn link_header_forms() {
        assert_eq!(
            parse_link_next(r#"</v2/web/tags/list?last=b&n=2>; rel="next""#).as_deref(),
            Some("/v2/web/tags/list?last=b&n=2")
        );
        assert_eq!(
            parse_link_next("<https://r.example/v2/x/tags/list?n=1&last=a>;rel=next").as_deref(),
            Some("https://r.example/v2/x/tags/list?n=1&last=a")
        );
        assert_eq!(
            parse_link_next(r#"</first>; rel="first", </p?a=1,2>; title="a, b"; rel="prev next""#)
                .as_deref(),
            Some("/p?a=1,2")
        );
        assert_eq!(parse_link_next(r#"</prev>; rel="prev""#), None);
        assert_eq!(parse_link_next(""), None);
        assert_eq!(parse_link_next("<unterminated; rel=next"), None);
    }

    #[test]
    fn follows_relative_links() {
        let mut pager = mk_pager(TagLimits::default());
        let first = first_page(&mk_base());
        assert_eq!(
            first.as_str(),
            "https://r.example/v2/team/web/tags/list?n=1000"
        );
        let next = next(
            &mut pager,
            &first,
            &["a", "b"],
            Some(r#"</v2/team/web/tags/list?last=b&n=1000>; rel="next""#),
        )
        .unwrap();
        assert_eq!(
            next.as_str(),
            "https://r.example/v2/team/web/tags/list?last=b&n=1000"
        );
        assert!(
            pager
                .next(&next, br#"{"tags": ["c"]}"#, None)
                .unwrap()
                .is_none()
        );
        assert_eq!(pager.into_tags(), ["a", "b", "c"]);
    }

    #[test]
    fn full_page_without_link_continues_with_last() {
        let mut pager = mk_pager(TagLimits::default());
        let first = first_page(&mk_base());
        let next = pager
            .next(&first, &mk_page(&mk_tags(0..1000)), None)
            .unwrap()
            .unwrap();
        assert_eq!(
            next.as_str(),
            "https://r.example/v2/team/web/tags/list?n=1000&last=t00999"
        );
        let end = pager.next(&next, &mk_page(&mk_tags(1000..1200)), None);
        assert!(end.unwrap().is_none());
        assert_eq!(pager.into_tags().len(), 1200);
    }

    #[test]
    fn server_that_ignores_paging_stops_after_a_repeat() {
        let mut pager = mk_pager(TagLimits::default());
        let first = first_page(&mk_base());
        let everything = mk_page(&mk_tags(0..1200));
        let next = pager.next(&first, &everything, None).unwrap().unwrap();
        assert!(pager.next(&next, &everything, None).unwrap().is_none());
        assert_eq!(pager.into_tags(), mk_tags(0..1200));
    }

    #[test]
    fn link_loop_and_overlap_are_deduplicated() {
        let mut pager = mk_pager(TagLimits::default());
        let first = first_page(&mk_base());
        let link = r#"</v2/team/web/tags/list?n=1000>; rel="next""#;
        // The link points back at the page just read.
        assert!(next(&mut pager, &first, &["a"], Some(link)).is_none());
        let mut pager = mk_pager(TagLimits::default());
        let second = next(&mut pager, &first, &["a", "b"], Some("</p2>; rel=next")).unwrap();
        assert!(next(&mut pager, &second, &["b", "c"], None).is_none());
        assert_eq!(pager.into_tags(), ["a", "b", "c"]);
    }

    #[test]
    fn empty_and_null_pages_end() {
        let first = first_page(&mk_base());
        for body in [
            &br#"{"tags": []}"#[..],
            br#"{"tags": null}"#,
            br#"{"name": "x"}"#,
        ] {
            let mut pager = mk_pager(TagLimits::default());
            let next = pager.next(&first, body, Some("</p2>; rel=next"));
            assert!(next.unwrap().is_none());
        }
    }

    #[test]
    fn only_what_the_filter_keeps_is_held_and_invalid_tags_never_are() {
        let keep: &(dyn Fn(&str) -> bool + Sync) = &|tag| tag.starts_with("v1.");
        let mut pager = TagPager::new(mk_base(), TagLimits::default(), keep);
        let first = first_page(&mk_base());
        let long = format!("v1.{}", "9".repeat(200));
        let body = serde_json::to_vec(&serde_json::json!({
            "tags": ["v1.0.0", "v2.0.0", "latest", "v1.0.0", "v1.bad tag", long, "v1.2.0"],
        }))
        .unwrap();
        assert!(pager.next(&first, &body, None).unwrap().is_none());
        assert_eq!(pager.into_tags(), ["v1.0.0", "v1.2.0"]);
    }

    #[test]
    fn endless_links_fail_at_the_tag_count() {
        let limits = TagLimits {
            max_tags: 2_500,
            ..TagLimits::default()
        };
        let mut pager = mk_pager(limits);
        let mut url = first_page(&mk_base());
        let mut page = 0;
        let limit = loop {
            let tags = mk_tags(page * 1000..(page + 1) * 1000);
            let link = format!("</v2/team/web/tags/list?page={}>; rel=next", page + 1);
            match pager.next(&url, &mk_page(&tags), Some(&link)) {
                Ok(Some(next)) => url = next,
                other => break limit_of(other),
            }
            page += 1;
        };
        assert_eq!(limit, TagLimit::Tags(2_500));
        assert_eq!(page, 2, "the third page went past 2,500 tags");
    }

    #[test]
    fn endless_small_pages_fail_at_the_page_count() {
        let limits = TagLimits {
            max_pages: 5,
            ..TagLimits::default()
        };
        let mut pager = mk_pager(limits);
        let mut url = first_page(&mk_base());
        let mut pages = 0;
        let limit = loop {
            pages += 1;
            let tag = format!("t{pages}");
            let link = format!("</p{pages}>; rel=next");
            match pager.next(&url, &mk_page(&[tag]), Some(&link)) {
                Ok(Some(next)) => url = next,
                other => break limit_of(other),
            }
        };
        assert_eq!((limit, pages), (TagLimit::Pages(5), 5));
        assert_eq!(limit.to_string(), "5 pages");
    }

    #[test]
    fn bytes_are_capped_per_page_and_in_all() {
        let limits = TagLimits {
            max_bytes: 25_000,
            max_page_bytes: 10_000,
            ..TagLimits::default()
        };
        let mut pager = mk_pager(limits);
        assert_eq!(pager.page_cap(), (10_000, TagLimit::PageBytes(10_000)));
        let page = mk_page(&mk_tags(0..1000));
        assert!(page.len() > 9_000 && page.len() < 10_000, "{}", page.len());
        let next = pager
            .next(&first_page(&mk_base()), &page, Some("</p2>; rel=next"))
            .unwrap()
            .unwrap();
        let next = pager
            .next(
                &next,
                &mk_page(&mk_tags(1000..2000)),
                Some("</p3>; rel=next"),
            )
            .unwrap()
            .unwrap();
        // What is left of the whole listing is less than a page.
        let (cap, limit) = pager.page_cap();
        assert!(cap < 10_000 && cap > 5_000, "{cap}");
        assert_eq!(limit, TagLimit::Bytes(25_000));
        let over = pager.next(&next, &mk_page(&mk_tags(2000..3000)), None);
        assert_eq!(limit_of(over), TagLimit::Bytes(25_000));
        assert_eq!(TagLimit::Bytes(25_000).to_string(), "25000 bytes");
    }

    #[test]
    fn a_page_of_many_tiny_tags_is_not_built_as_a_list() {
        // 4 MiB of one-character tags would be over 100 MiB as a Vec<String>; streamed, only
        // the hashes of the distinct ones are held, and the count bound stops it.
        let mut body = Vec::from(&br#"{"tags":["#[..]);
        for _ in 0..1_000_000 {
            body.extend_from_slice(br#""a","#);
        }
        body.extend_from_slice(br#""b"]}"#);
        let mut pager = mk_pager(TagLimits::default());
        pager.next(&first_page(&mk_base()), &body, None).unwrap();
        assert_eq!(pager.into_tags(), ["a", "b"]);
    }

    #[test]
    fn hostile_json_is_an_error_not_a_crash() {
        let first = first_page(&mk_base());
        let deep = format!(
            r#"{{"x": {}1{}, "tags": ["a"]}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let huge_number = format!(r#"{{"x": 1{}, "tags": ["a"]}}"#, "0".repeat(1 << 20));
        let deep_tags = format!(
            r#"{{"tags": {}"a"{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        for body in [
            deep.as_bytes(),
            huge_number.as_bytes(),
            deep_tags.as_bytes(),
            br#"{"tags": [1, 2]}"#,
            br#"{"tags": "a"}"#,
            br#"["a"]"#,
            br#"{"tags": ["a"]} trailing"#,
            b"",
        ] {
            let mut pager = mk_pager(TagLimits::default());
            // Ignored deep values are skipped without recursion; what is read as tags must
            // be a flat array of strings.
            let _ = pager.next(&first, body, None);
        }
        let mut pager = mk_pager(TagLimits::default());
        assert!(matches!(
            pager.next(&first, br#"{"tags": [1]}"#, None),
            Err(PageError::Json(_))
        ));
        let mut pager = mk_pager(TagLimits::default());
        assert!(matches!(
            pager.next(&first, deep_tags.as_bytes(), None),
            Err(PageError::Json(_))
        ));
    }
}

//! Tag list pagination (distribution spec "Listing Tags"): `n` and `last` query parameters and
//! the RFC 8288 `Link: <url>; rel="next"` header, with guards for registries that ignore both.

use std::collections::HashSet;

use reqwest::Url;

/// Tags asked for per page.
pub const PAGE_SIZE: usize = 1000;
/// Upper bound on pages of one listing (ten million tags), against a server that never ends.
pub const MAX_PAGES: usize = 10_000;

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

/// The first page's URL: `base` (…/tags/list) with `n`.
pub fn first_page(base: &Url) -> Url {
    let mut url = base.clone();
    url.query_pairs_mut()
        .clear()
        .append_pair("n", &PAGE_SIZE.to_string());
    url
}

/// Collects tags page by page and decides which page comes next.
pub struct TagPager {
    base: Url,
    tags: Vec<String>,
    seen: HashSet<String>,
    visited: HashSet<String>,
    pages: usize,
}

impl TagPager {
    pub fn new(base: Url) -> Self {
        TagPager {
            base,
            tags: Vec::new(),
            seen: HashSet::new(),
            visited: HashSet::new(),
            pages: 0,
        }
    }

    /// Takes one page fetched from `current` and returns the next URL to fetch, or `None` when
    /// the listing is complete. `link` is the response's `Link` header value, if any.
    pub fn next(&mut self, current: &Url, page: Vec<String>, link: Option<&str>) -> Option<Url> {
        self.visited.insert(current.as_str().to_owned());
        self.pages += 1;
        let page_len = page.len();
        let last = page.last().cloned();
        let mut new_tags = 0;
        for tag in page {
            if self.seen.insert(tag.clone()) {
                self.tags.push(tag);
                new_tags += 1;
            }
        }
        // A page with nothing new means the server ignores our paging (docker-registry 2.8
        // ignores `n` and `last` and returns everything every time): following it would loop.
        if page_len == 0 || new_tags == 0 || self.pages >= MAX_PAGES {
            return None;
        }
        let next = match link.and_then(parse_link_next) {
            Some(target) => current.join(&target).ok()?,
            None if page_len >= PAGE_SIZE => {
                // No Link but a full page: ask for what follows the last tag ourselves.
                let mut url = first_page(&self.base);
                url.query_pairs_mut().append_pair("last", last.as_deref()?);
                url
            }
            // A short page without a Link is the last one.
            None => return None,
        };
        (!self.visited.contains(next.as_str())).then_some(next)
    }

    /// Every tag seen, first occurrence order.
    pub fn into_tags(self) -> Vec<String> {
        self.tags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_tags(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("t{i:05}")).collect()
    }

    fn mk_base() -> Url {
        Url::parse("https://r.example/v2/team/web/tags/list").unwrap()
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
        let mut pager = TagPager::new(mk_base());
        let first = first_page(&mk_base());
        assert_eq!(
            first.as_str(),
            "https://r.example/v2/team/web/tags/list?n=1000"
        );
        let next = pager
            .next(
                &first,
                vec!["a".into(), "b".into()],
                Some(r#"</v2/team/web/tags/list?last=b&n=1000>; rel="next""#),
            )
            .unwrap();
        assert_eq!(
            next.as_str(),
            "https://r.example/v2/team/web/tags/list?last=b&n=1000"
        );
        assert!(pager.next(&next, vec!["c".into()], None).is_none());
        assert_eq!(pager.into_tags(), ["a", "b", "c"]);
    }

    #[test]
    fn full_page_without_link_continues_with_last() {
        let mut pager = TagPager::new(mk_base());
        let first = first_page(&mk_base());
        let next = pager.next(&first, mk_tags(0..1000), None).unwrap();
        assert_eq!(
            next.as_str(),
            "https://r.example/v2/team/web/tags/list?n=1000&last=t00999"
        );
        assert!(pager.next(&next, mk_tags(1000..1200), None).is_none());
        assert_eq!(pager.into_tags().len(), 1200);
    }

    #[test]
    fn server_that_ignores_paging_stops_after_a_repeat() {
        let mut pager = TagPager::new(mk_base());
        let first = first_page(&mk_base());
        let everything = mk_tags(0..1200);
        let next = pager.next(&first, everything.clone(), None).unwrap();
        assert!(pager.next(&next, everything, None).is_none());
        assert_eq!(pager.into_tags(), mk_tags(0..1200));
    }

    #[test]
    fn link_loop_and_overlap_are_deduplicated() {
        let mut pager = TagPager::new(mk_base());
        let first = first_page(&mk_base());
        let link = r#"</v2/team/web/tags/list?n=1000>; rel="next""#;
        // The link points back at the page just read.
        assert!(pager.next(&first, vec!["a".into()], Some(link)).is_none());
        let mut pager = TagPager::new(mk_base());
        let next = pager
            .next(
                &first,
                vec!["a".into(), "b".into()],
                Some("</p2>; rel=next"),
            )
            .unwrap();
        assert!(
            pager
                .next(&next, vec!["b".into(), "c".into()], None)
                .is_none()
        );
        assert_eq!(pager.into_tags(), ["a", "b", "c"]);
    }

    #[test]
    fn empty_page_ends() {
        let mut pager = TagPager::new(mk_base());
        assert!(
            pager
                .next(&first_page(&mk_base()), vec![], Some("</p2>; rel=next"))
                .is_none()
        );
    }
}

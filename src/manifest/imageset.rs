//! ImageSet manifests (`images/**/*.yaml`): parsing with positions and validation.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::reference::{Digest, ImageRepo, is_valid_tag};

use super::common::{self, is_dns_label, is_dns_name, top_level};
use super::model::{
    Defaults, ImageSet, ImageSpec, Pin, RepoConfig, Select, TagMatcher, VersionPattern,
};
use super::yaml::{Doc, Map, Node, Value, root_value};
use super::{Diagnostic, Position};

const ROOT: &[&str] = &["apiVersion", "kind", "metadata", "spec"];
const METADATA: &[&str] = &["name", "namespace"];
const SPEC: &[&str] = &["mirror", "images"];
const IMAGE: &[&str] = &[
    "name",
    "source",
    "tags",
    "match",
    "allowPrerelease",
    "select",
    "exclude",
    "digests",
    "platforms",
    "schedule",
    "keep",
    "pin",
    "mirror",
];
/// Fields that only mean something together with `match:`.
const MATCH_ONLY: &[&str] = &["allowPrerelease", "select", "exclude"];

/// Longest alias: a DNS label's length, so that it fits in repository paths and tag prefixes.
const MAX_ALIAS: usize = 63;

/// Parses and validates one ImageSet manifest against the repo settings (defaults, whether a
/// mirror target exists). `path` is repo-relative; it goes into [`ImageSet::path`] and the
/// diagnostics. Returns every problem of the file, not only the first.
pub fn parse_image_set(
    path: &Path,
    text: &str,
    config: &RepoConfig,
) -> Result<ImageSet, Vec<Diagnostic>> {
    parse(path, text, Some(config))
}

/// `config` is `None` when `imagelock.yaml` itself is invalid: the set is then checked against
/// the built-in defaults, leaving out the checks that need the real settings.
pub(crate) fn parse(
    path: &Path,
    text: &str,
    config: Option<&RepoConfig>,
) -> Result<ImageSet, Vec<Diagnostic>> {
    let defaults = config.map_or_else(Defaults::default, |c| c.defaults.clone());
    let context = Context {
        path,
        defaults: &defaults,
        // Without valid settings we cannot tell whether a mirror exists: assume it does.
        has_mirror_target: config.is_none_or(|c| c.mirror.is_some()),
    };
    let mut doc = Doc::new(path, text);
    let set = doc
        .load("an ImageSet manifest")
        .and_then(|root| image_set(&mut doc, &root, &context));
    doc.finish(set)
}

/// `metadata.name` and `metadata.namespace` of a manifest that may be invalid elsewhere, so
/// that what was generated from its last good lock can be kept. `None` when the file is not
/// YAML or either value is missing or invalid.
pub fn peek_metadata(text: &str) -> Option<(String, String)> {
    let mut doc = Doc::new(Path::new(""), text);
    let root = doc.load("an ImageSet manifest")?;
    let map = doc.mapping(&root_value(&root), ROOT)?;
    let (name, namespace) = metadata(&mut doc, map.get("metadata")?)?;
    Some((name?, namespace?))
}

struct Context<'a> {
    path: &'a Path,
    defaults: &'a Defaults,
    has_mirror_target: bool,
}

fn image_set(doc: &mut Doc<'_>, root: &Node<'_>, context: &Context<'_>) -> Option<ImageSet> {
    let map = top_level(doc, root, "ImageSet", ROOT)?;
    let metadata = doc
        .required(
            &map,
            "metadata",
            "expected metadata: {name: ..., namespace: ...}",
        )
        .and_then(|value| metadata(doc, value));
    let spec = doc
        .required(&map, "spec", "expected spec: with images: to follow")
        .and_then(|value| doc.mapping(value, SPEC));
    let (name, namespace) = metadata.unwrap_or_default();
    let spec = spec?;

    let mirror = match spec.get("mirror") {
        Some(value) => {
            let mirror = doc.boolean(value).unwrap_or_default();
            check_mirror_target(doc, value, mirror, context);
            mirror
        }
        None => context.defaults.mirror,
    };
    let items = doc
        .required(
            &spec,
            "images",
            "expected a list of images, each with name: and source:",
        )
        .and_then(|value| {
            let items = doc.list(value)?;
            if items.is_empty() {
                doc.error(
                    value.position,
                    &value.field,
                    "is empty; list at least one image with name: and source:",
                );
            }
            Some(items)
        })
        .unwrap_or_default();

    let mut images = Vec::new();
    let mut aliases: HashMap<String, Position> = HashMap::new();
    for item in &items {
        let Some(image) = image(doc, item, mirror, context) else {
            continue;
        };
        if let Some(first) = aliases.get(&image.name) {
            doc.error(
                image.name_position,
                &format!("{}.name", item.field),
                format!(
                    "duplicate alias {:?} in namespace {:?}; it is already defined at {}:{}:{}, and aliases must be unique per namespace",
                    image.name,
                    namespace.as_deref().unwrap_or_default(),
                    context.path.display(),
                    first.line,
                    first.col
                ),
            );
            continue;
        }
        aliases.insert(image.name.clone(), image.name_position);
        images.push(image);
    }
    Some(ImageSet {
        path: context.path.to_path_buf(),
        name: name?,
        namespace: namespace?,
        mirror,
        images,
    })
}

fn metadata(doc: &mut Doc<'_>, value: &Value<'_>) -> Option<(Option<String>, Option<String>)> {
    let map = doc.mapping(value, METADATA)?;
    let name = doc
        .required(&map, "name", "expected the set's name, like name: web")
        .and_then(|value| {
            let name = doc.string(value)?;
            if !is_dns_name(&name, 253) {
                doc.error(
                    value.position,
                    &value.field,
                    format!(
                        "invalid name {name:?}: use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
                    ),
                );
                return None;
            }
            Some(name)
        });
    let namespace = doc
        .required(
            &map,
            "namespace",
            "expected the Kubernetes namespace whose pods use these aliases, like namespace: team-a",
        )
        .and_then(|value| {
            let namespace = doc.string(value)?;
            if !is_dns_label(&namespace) {
                doc.error(
                    value.position,
                    &value.field,
                    format!(
                        "invalid namespace {namespace:?}: a Kubernetes namespace is at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
                    ),
                );
                return None;
            }
            Some(namespace)
        });
    Some((name, namespace))
}

fn check_mirror_target(doc: &mut Doc<'_>, value: &Value<'_>, mirror: bool, context: &Context<'_>) {
    if mirror && !context.has_mirror_target {
        doc.error(
            value.position,
            &value.field,
            "is true but imagelock.yaml has no mirror: target; add mirror: {registry: ...} there or set this to false",
        );
    }
}

/// One entry of `spec.images`, with defaults applied.
fn image(
    doc: &mut Doc<'_>,
    item: &Value<'_>,
    set_mirror: bool,
    context: &Context<'_>,
) -> Option<ImageSpec> {
    let map = doc.mapping(item, IMAGE)?;
    let name = doc
        .required(
            &map,
            "name",
            "expected the alias pods use as image:, like name: web",
        )
        .and_then(|value| alias(doc, value).map(|name| (name, value.position)));
    let source = doc
        .required(
            &map,
            "source",
            "expected the repository to follow, like source: quay.io/company/web",
        )
        .and_then(|value| source(doc, value));

    // Every tag this entry produces, with the field that produced it first.
    let mut produced: HashMap<String, String> = HashMap::new();
    let tags = match map.get("tags") {
        Some(value) => tags(doc, value, &mut produced),
        None => Vec::new(),
    };
    let matcher = map.get("match").and_then(|value| matcher(doc, &map, value));
    if map.get("match").is_none() {
        for field in MATCH_ONLY {
            if let Some(value) = map.get(field) {
                doc.error(
                    value.position,
                    &value.field,
                    format!("only applies together with match:; add match: or remove {field}:"),
                );
            }
        }
    }
    let digests = match map.get("digests") {
        Some(value) => digests(doc, value, &mut produced),
        None => BTreeMap::new(),
    };
    let given = |name: &str| {
        map.get(name)
            .is_some_and(|value| !value.is_empty_collection())
    };
    if !given("tags") && !given("match") && !given("digests") {
        doc.error(
            map.position,
            &map.field,
            "nothing to follow; add tags: (a list of tags), match: (a version pattern like v2.13.x) or digests: (digest -> tags)",
        );
    }
    let pin = match map.get("pin") {
        Some(value) => pin(doc, value, &tags, &digests, map.get("match").is_some()),
        None => Some(Pin::None),
    };
    let platforms = match map.get("platforms") {
        Some(value) => common::platforms(doc, value),
        None => Some(context.defaults.platforms.clone()),
    };
    let schedule = match map.get("schedule") {
        Some(value) => common::schedule(doc, value),
        None => Some(context.defaults.schedule.clone()),
    };
    let keep = match map.get("keep") {
        Some(value) => common::keep(doc, value),
        None => Some(context.defaults.keep),
    };
    let mirror = match map.get("mirror") {
        Some(value) => {
            let mirror = doc.boolean(value);
            check_mirror_target(doc, value, mirror.unwrap_or_default(), context);
            mirror
        }
        None => Some(set_mirror),
    };
    let (name, name_position) = name?;
    Some(ImageSpec {
        name,
        source: source?,
        tags,
        matcher,
        digests,
        schedule: schedule?,
        keep: keep?,
        pin: pin?,
        platforms: platforms?,
        mirror: mirror?,
        position: map.position,
        name_position,
    })
}

fn alias(doc: &mut Doc<'_>, value: &Value<'_>) -> Option<String> {
    let name = doc.string(value)?;
    if !is_dns_name(&name, MAX_ALIAS) {
        doc.error(
            value.position,
            &value.field,
            format!(
                "invalid alias {name:?}: use at most {MAX_ALIAS} lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, like web or argocd-server"
            ),
        );
        return None;
    }
    Some(name)
}

fn source(doc: &mut Doc<'_>, value: &Value<'_>) -> Option<ImageRepo> {
    let text = doc.string(value)?;
    let problem = if let Some((_, digest)) = text.split_once('@') {
        format!(
            "{text:?} names a digest (@{digest}); give the repository alone and list digests under digests:"
        )
    } else if let Some((_, tag)) = text
        .rsplit_once('/')
        .map_or(text.as_str(), |(_, last)| last)
        .split_once(':')
    {
        format!(
            "{text:?} names a tag (:{tag}); give the repository alone and list tags under tags:"
        )
    } else {
        match ImageRepo::parse(&text) {
            Ok(repo) => return Some(repo),
            Err(error) => format!("{error}; expected a repository like quay.io/company/web"),
        }
    };
    doc.error(value.position, &value.field, problem);
    None
}

/// Records that `tag` is produced by `field`; reports it if something produced it already.
fn produce(
    doc: &mut Doc<'_>,
    produced: &mut HashMap<String, String>,
    tag: &str,
    item: &Value<'_>,
) -> bool {
    match produced.get(tag) {
        Some(first) => {
            doc.error(
                item.position,
                &item.field,
                format!(
                    "tag {tag:?} is already produced by {first}; each tag may appear once per image"
                ),
            );
            false
        }
        None => {
            produced.insert(tag.to_owned(), item.field.clone());
            true
        }
    }
}

fn valid_tag(doc: &mut Doc<'_>, tag: &str, item: &Value<'_>) -> bool {
    if is_valid_tag(tag) {
        return true;
    }
    doc.error(
        item.position,
        &item.field,
        crate::reference::ReferenceError::Tag(tag.to_owned()),
    );
    false
}

fn tags(
    doc: &mut Doc<'_>,
    value: &Value<'_>,
    produced: &mut HashMap<String, String>,
) -> Vec<String> {
    let mut tags = Vec::new();
    for (tag, item) in doc.string_list(value).unwrap_or_default() {
        if valid_tag(doc, &tag, &item) && produce(doc, produced, &tag, &item) {
            tags.push(tag);
        }
    }
    tags
}

/// `match:` with its companions; `None` when something is wrong (and reported).
fn matcher(doc: &mut Doc<'_>, map: &Map<'_>, value: &Value<'_>) -> Option<TagMatcher> {
    let text = doc.string(value)?;
    let pattern = match VersionPattern::parse(&text) {
        Ok(pattern) => Some(pattern),
        Err(why) => {
            doc.error(value.position, &value.field, why);
            None
        }
    };
    let allow_prerelease = match map.get("allowPrerelease") {
        Some(value) => doc.boolean(value),
        None => Some(false),
    };
    let select = match map.get("select") {
        Some(value) => doc.string(value).and_then(|text| match text.as_str() {
            "all" => Some(Select::All),
            "latest" => Some(Select::Latest),
            other => {
                doc.error(
                    value.position,
                    &value.field,
                    format!(
                        "unknown selection {other:?}; expected all (every matching tag) or latest (the highest only)"
                    ),
                );
                None
            }
        }),
        None => Some(Select::All),
    };
    let exclude = match map.get("exclude") {
        Some(value) => doc.string_list(value).map(|patterns| {
            patterns
                .into_iter()
                .filter_map(|(pattern, item)| regex(doc, &pattern, &item))
                .collect::<Vec<_>>()
        }),
        None => Some(Vec::new()),
    };
    Some(TagMatcher {
        pattern: pattern?,
        allow_prerelease: allow_prerelease?,
        select: select?,
        exclude: exclude?,
    })
}

fn regex(doc: &mut Doc<'_>, pattern: &str, item: &Value<'_>) -> Option<regex::Regex> {
    match regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
    {
        Ok(regex) => Some(regex),
        Err(error) => {
            // Syntax errors span several lines (the pattern, a caret, "error: ..."); keep the
            // last, which says what is wrong.
            let text = error.to_string();
            let why = text
                .lines()
                .rev()
                .find_map(|line| line.strip_prefix("error: "))
                .unwrap_or(text.trim());
            doc.error(
                item.position,
                &item.field,
                format!(
                    "invalid regex {pattern:?}: {why}; expected a regular expression like \"-debug$\""
                ),
            );
            None
        }
    }
}

fn digests(
    doc: &mut Doc<'_>,
    value: &Value<'_>,
    produced: &mut HashMap<String, String>,
) -> BTreeMap<Digest, Vec<String>> {
    let mut digests = BTreeMap::new();
    for (key, key_position, tags_value) in doc.dict(value).unwrap_or_default() {
        let digest = match key.parse::<Digest>() {
            Ok(digest) => Some(digest),
            Err(error) => {
                doc.error(key_position, &value.field, error);
                None
            }
        };
        // An empty list copies the digest without giving it a tag in the mirror.
        let mut tags = Vec::new();
        for (tag, item) in doc.string_list(&tags_value).unwrap_or_default() {
            if valid_tag(doc, &tag, &item) && produce(doc, produced, &tag, &item) {
                tags.push(tag);
            }
        }
        if let Some(digest) = digest {
            digests.insert(digest, tags);
        }
    }
    digests
}

/// `pin: 2` (every tag) or `pin: {tag: generation}`.
fn pin(
    doc: &mut Doc<'_>,
    value: &Value<'_>,
    tags: &[String],
    digests: &BTreeMap<Digest, Vec<String>>,
    has_match: bool,
) -> Option<Pin> {
    const GENERATION: &str = "a generation number";
    let max = i64::from(u32::MAX);
    if tags.is_empty() && !has_match {
        doc.error(
            value.position,
            &value.field,
            "pins hold followed tags at a generation, but this image follows none; digests: are fixed already, remove pin:",
        );
        return None;
    }
    if !value.is_mapping() {
        if !value.is_integer() {
            doc.error(
                value.position,
                &value.field,
                format!(
                    "expected a generation number (pin: 2 holds every tag) or a mapping of tag to generation (pin: {{latest: 2}}), found {}",
                    super::yaml::describe(value.node)
                ),
            );
            return None;
        }
        let generation = doc.integer(value, 1, max, GENERATION)?;
        return u32::try_from(generation).ok().map(Pin::All);
    }
    let mut pins = BTreeMap::new();
    for (tag, key_position, generation) in doc.dict(value)? {
        let from_digests = digests.values().any(|list| list.contains(&tag));
        let problem = if !is_valid_tag(&tag) {
            Some(crate::reference::ReferenceError::Tag(tag.clone()).to_string())
        } else if from_digests {
            Some(format!(
                "tag {tag:?} comes from digests:, which are fixed; only tags followed by tags: or match: can be pinned"
            ))
        } else if !has_match && !tags.contains(&tag) {
            Some(format!(
                "{tag:?} is not one of this image's tags ({}); pin one of them",
                tags.join(", ")
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            doc.error(key_position, &value.field, problem);
        }
        if let Some(generation) = doc.integer(&generation, 1, max, GENERATION) {
            pins.insert(tag, u32::try_from(generation).unwrap_or(u32::MAX));
        }
    }
    Some(if pins.is_empty() {
        Pin::None
    } else {
        Pin::PerTag(pins)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::model::{MirrorLayout, MirrorTarget};
    use crate::reference::Platform;

    const PATH: &str = "images/team-a/web.yaml";
    const DIGEST: &str = "sha256:e8ca3da36cba5ab1f2e85e2ac06d6f6d4cbe6fd87b69bd2e3f6a0c3da2b2d5a1";

    fn mk_config() -> RepoConfig {
        RepoConfig {
            mirror: Some(MirrorTarget {
                registry: "registry.internal".into(),
                layout: MirrorLayout::PerImage {
                    template: "{namespace}/{name}".into(),
                },
                position: Default::default(),
            }),
            ..RepoConfig::default()
        }
    }

    /// A manifest whose `spec.images` entries are `images`, written from column 0 and
    /// indented here; the first entry is on line 8, its first key at column 7.
    fn mk_manifest(images: &str) -> String {
        let mut text = String::from(
            "apiVersion: imagelock.dev/v1alpha1\nkind: ImageSet\nmetadata:\n  name: web\n  namespace: team-a\nspec:\n  images:\n",
        );
        for line in images.lines() {
            text.push_str("    ");
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    fn mk_set(text: &str) -> ImageSet {
        match parse_image_set(Path::new(PATH), text, &mk_config()) {
            Ok(set) => set,
            Err(diagnostics) => panic!("{diagnostics:#?}"),
        }
    }

    fn errors_with(text: &str, config: &RepoConfig) -> Vec<String> {
        match parse_image_set(Path::new(PATH), text, config) {
            Ok(set) => panic!("expected errors, parsed {set:#?}"),
            Err(diagnostics) => diagnostics.iter().map(ToString::to_string).collect(),
        }
    }

    fn errors(text: &str) -> Vec<String> {
        errors_with(text, &mk_config())
    }

    /// The single error of `text`.
    fn error(text: &str) -> String {
        let errors = errors(text);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        errors.into_iter().next().unwrap_or_default()
    }

    #[test]
    fn metadata_of_an_invalid_manifest() {
        let broken = mk_manifest("- name: Web\n  source: nowhere\n  tagz: [1]");
        assert!(parse_image_set(Path::new(PATH), &broken, &mk_config()).is_err());
        assert_eq!(
            peek_metadata(&broken),
            Some(("web".to_owned(), "team-a".to_owned()))
        );
        assert_eq!(peek_metadata("kind: [\n"), None);
        assert_eq!(peek_metadata("metadata: {name: web}\n"), None);
        assert_eq!(
            peek_metadata("metadata: {name: web, namespace: Team}\n"),
            None
        );
    }

    #[test]
    fn design_example_is_valid() {
        let text = include_str!("../../tests/fixtures/manifests/design-example.yaml");
        let set = mk_set(text);
        assert_eq!(set.path, Path::new(PATH));
        assert_eq!(
            (set.name.as_str(), set.namespace.as_str()),
            ("web", "team-a")
        );
        assert!(set.mirror);
        assert_eq!(set.images.len(), 3);

        let web = &set.images[0];
        assert_eq!(web.name, "web");
        assert_eq!(web.source.to_string(), "quay.io/company/web");
        assert_eq!(web.tags, ["latest", "1.4"]);
        assert_eq!(web.schedule.expression, "*/15 * * * *");
        assert_eq!(web.keep, 10);
        assert_eq!(web.pin, Pin::All(2));
        assert!(web.matcher.is_none());
        assert!(web.mirror);
        assert_eq!(web.position, Position { line: 9, col: 7 });
        assert_eq!(web.name_position, Position { line: 9, col: 13 });

        let argocd = &set.images[1];
        let matcher = argocd.matcher.as_ref().unwrap();
        assert_eq!(matcher.pattern.text(), "v2.13.x");
        assert!(matcher.allow_prerelease);
        assert_eq!(matcher.select, Select::All);
        assert_eq!(matcher.exclude[0].as_str(), "-debug$");
        assert_eq!(argocd.keep, crate::manifest::DEFAULT_KEEP);
        assert!(argocd.tags.is_empty());

        let nginx = &set.images[2];
        assert_eq!(nginx.source.to_string(), "docker.io/library/nginx");
        let digest: Digest = DIGEST.parse().unwrap();
        assert_eq!(nginx.digests[&digest], ["1.25", "stable"]);
        assert_eq!(
            nginx.platforms,
            [
                "linux/amd64".parse::<Platform>().unwrap(),
                "linux/arm64".parse().unwrap()
            ]
        );
    }

    #[test]
    fn defaults_applied() {
        let mut config = mk_config();
        config.defaults = Defaults {
            schedule: crate::manifest::parse_cron("0 * * * *").unwrap(),
            keep: 7,
            mirror: true,
            platforms: vec!["linux/amd64".parse().unwrap()],
        };
        let text = mk_manifest(
            "- name: web\n  source: quay.io/company/web\n  tags: [latest]\n- name: api\n  source: quay.io/company/api\n  tags: [latest]\n  keep: 3\n  mirror: false\n  schedule: \"@daily\"\n  platforms: [linux/arm64]",
        );
        let set = parse_image_set(Path::new(PATH), &text, &config).unwrap();
        assert!(set.mirror, "spec.mirror defaults from imagelock.yaml");
        let web = &set.images[0];
        assert_eq!(web.schedule.expression, "0 * * * *");
        assert_eq!(web.keep, 7);
        assert!(web.mirror);
        assert_eq!(web.platforms, config.defaults.platforms);
        assert_eq!(web.pin, Pin::None);
        let api = &set.images[1];
        assert_eq!((api.keep, api.mirror), (3, false));
        assert_eq!(api.schedule.expression, "@daily");
        assert_eq!(api.platforms, ["linux/arm64".parse::<Platform>().unwrap()]);

        // Built-in defaults, and spec.mirror over the repo default.
        let text = "apiVersion: imagelock.dev/v1alpha1\nkind: ImageSet\nmetadata: {name: web, namespace: team-a}\nspec:\n  mirror: false\n  images:\n    - {name: web, source: nginx, tags: [latest]}\n";
        let set = parse_image_set(Path::new(PATH), text, &config).unwrap();
        assert!(!set.mirror && !set.images[0].mirror);
        let set = parse_image_set(Path::new(PATH), text, &RepoConfig::default()).unwrap();
        let web = &set.images[0];
        assert_eq!(web.schedule.expression, crate::manifest::DEFAULT_SCHEDULE);
        assert_eq!(web.keep, crate::manifest::DEFAULT_KEEP);
        assert!(web.platforms.is_empty());
    }

    #[test]
    fn numbers_are_tags_as_written() {
        let set = mk_set(&mk_manifest(
            "- name: web\n  source: nginx\n  tags: [1.10, 2, 010, 1.20, !!str 3.0]\n  pin: {1.10: 2}",
        ));
        assert_eq!(set.images[0].tags, ["1.10", "2", "010", "1.20", "3.0"]);
        assert_eq!(
            set.images[0].pin,
            Pin::PerTag([("1.10".to_owned(), 2)].into())
        );
    }

    /// Numbers far into a file with multi-byte text before them keep their written form too
    /// (their source text is found by char index, without a walk from the file's start).
    #[test]
    fn many_numbers_after_multibyte_text_are_tags_as_written() {
        let tags: Vec<String> = (0..2000).map(|i| format!("{}.{i}0", i % 7)).collect();
        let set = mk_set(&mk_manifest(&format!(
            "# {}\n- name: web\n  source: nginx\n  tags: [{}]",
            "ü€".repeat(700),
            tags.join(", ")
        )));
        assert_eq!(set.images[0].tags, tags);
    }

    #[test]
    fn yaml_syntax_error() {
        let text = mk_manifest("- name: web\n  tags: [latest, 1.4\n  source: nginx");
        assert_eq!(
            error(&text),
            "images/team-a/web.yaml:10:13: invalid YAML: illegal placement of ':' indicator"
        );
        let bad_indent = "apiVersion: imagelock.dev/v1alpha1\nkind: ImageSet\n  metadata: x\n";
        assert!(error(bad_indent).starts_with("images/team-a/web.yaml:3:11: invalid YAML: "));
    }

    #[test]
    fn duplicate_key() {
        let text = mk_manifest("- name: web\n  source: nginx\n  tags: [latest]\n  tags: [stable]");
        assert_eq!(
            error(&text),
            "images/team-a/web.yaml:11:7: duplicate key \"tags\"; a key may appear only once in a mapping, merge the two entries"
        );
        let flow = mk_manifest("- {name: web, source: nginx, 'name': x}");
        assert!(error(&flow).starts_with("images/team-a/web.yaml:8:34: duplicate key \"name\""));
    }

    #[test]
    fn empty_file_and_several_documents() {
        assert_eq!(
            error(""),
            "images/team-a/web.yaml:1:1: the file is empty; expected an ImageSet manifest"
        );
        assert_eq!(error("# nothing yet\n"), error(""));
        let two = format!(
            "{}---\nkind: ImageSet\n",
            mk_manifest("- {name: web, source: nginx, tags: [a]}")
        );
        assert_eq!(
            error(&two),
            "images/team-a/web.yaml:10:1: a second YAML document; a file holds only one, move this one into a file of its own"
        );
    }

    #[test]
    fn wrong_kind_and_api_version() {
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {}\n";
        assert_eq!(
            errors(text),
            [
                "images/team-a/web.yaml:1:13: apiVersion: expected \"imagelock.dev/v1alpha1\", found \"apps/v1\"",
                "images/team-a/web.yaml:2:7: kind: expected \"ImageSet\", found \"Deployment\"",
            ]
        );
        let text = mk_manifest("- {name: web, source: nginx, tags: [a]}")
            .replace("imagelock.dev/v1alpha1", "imagelock.dev/v1");
        assert_eq!(
            error(&text),
            "images/team-a/web.yaml:1:13: apiVersion: expected \"imagelock.dev/v1alpha1\", found \"imagelock.dev/v1\""
        );
        let text =
            mk_manifest("- {name: web, source: nginx, tags: [a]}").replace("kind: ImageSet\n", "");
        assert_eq!(
            error(&text),
            "images/team-a/web.yaml:1:1: missing required field \"kind\"; expected kind: ImageSet"
        );
        assert_eq!(
            error("- a list\n"),
            "images/team-a/web.yaml:1:1: expected a mapping, found a list"
        );
    }

    #[test]
    fn another_kind_of_file_gets_one_message() {
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, labels: {app: web}}\nspec:\n  replicas: 2\n";
        assert_eq!(
            errors(text),
            [
                "images/team-a/web.yaml:1:13: apiVersion: expected \"imagelock.dev/v1alpha1\", found \"apps/v1\"",
                "images/team-a/web.yaml:2:7: kind: expected \"ImageSet\", found \"Deployment\"",
            ]
        );
    }

    #[test]
    fn crlf_line_endings() {
        let text = mk_manifest("- name: web\n  source: nginx\n  tags: [a]\n  tags: [b]")
            .replace('\n', "\r\n");
        assert_eq!(
            error(&text),
            "images/team-a/web.yaml:11:7: duplicate key \"tags\"; a key may appear only once in a mapping, merge the two entries"
        );
        let text = mk_manifest("- name: web\n  source: nginx\n  tags: [a]\n  keep: 0")
            .replace('\n', "\r\n");
        assert!(
            error(&text).starts_with(
                "images/team-a/web.yaml:11:13: spec.images[0].keep: 0 is out of range"
            )
        );
    }

    #[test]
    fn missing_required_fields() {
        let text = mk_manifest("- name: web\n  tags: [latest]");
        assert_eq!(
            error(&text),
            "images/team-a/web.yaml:8:7: spec.images[0]: missing required field \"source\"; expected the repository to follow, like source: quay.io/company/web"
        );
        let text = mk_manifest("- name: web\n  source:\n  tags: [latest]");
        assert_eq!(
            error(&text),
            "images/team-a/web.yaml:9:7: spec.images[0].source: has no value; expected the repository to follow, like source: quay.io/company/web"
        );
        let text = "apiVersion: imagelock.dev/v1alpha1\nkind: ImageSet\nmetadata:\n  name: web\nspec:\n  images: []\n";
        assert_eq!(
            errors(text),
            [
                "images/team-a/web.yaml:4:3: metadata: missing required field \"namespace\"; expected the Kubernetes namespace whose pods use these aliases, like namespace: team-a",
                "images/team-a/web.yaml:6:11: spec.images: is empty; list at least one image with name: and source:",
            ]
        );
        let text = "apiVersion: imagelock.dev/v1alpha1\nkind: ImageSet\nmetadata: {name: web, namespace: team-a}\n";
        assert_eq!(
            error(text),
            "images/team-a/web.yaml:1:1: missing required field \"spec\"; expected spec: with images: to follow"
        );
    }

    #[test]
    fn wrong_types() {
        let text = mk_manifest(
            "- name: web\n  source: nginx\n  tags: latest\n  keep: \"10\"\n  mirror: yes\n  allowPrerelease: true\n  match: [1]",
        );
        assert_eq!(
            errors(&text),
            [
                "images/team-a/web.yaml:10:13: spec.images[0].tags: expected a list, found the string \"latest\"",
                "images/team-a/web.yaml:11:13: spec.images[0].keep: expected a number of generations from 1 to 1000, found the string \"10\"",
                "images/team-a/web.yaml:12:15: spec.images[0].mirror: expected true or false, found the string \"yes\"",
                "images/team-a/web.yaml:14:14: spec.images[0].match: expected a string, found a list",
            ]
        );
        let text = mk_manifest("- name: true\n  source: nginx\n  tags: [a]");
        assert_eq!(
            error(&text),
            "images/team-a/web.yaml:8:13: spec.images[0].name: expected a string, found the boolean true; quote it if you mean the text"
        );
        let text = mk_manifest("- name: web\n  source: nginx\n  tags: [~]");
        assert_eq!(
            error(&text),
            "images/team-a/web.yaml:10:14: spec.images[0].tags[0]: expected a string, found nothing (null)"
        );
        let text = mk_manifest("- name: web\n  source: nginx\n  digests: {1: [a]}");
        assert_eq!(
            error(&text),
            "images/team-a/web.yaml:10:17: spec.images[0].digests: invalid digest \"1\": expected sha256:<64 hex> or sha512:<128 hex>, lowercase"
        );
    }

    #[test]
    fn unknown_fields_with_suggestions() {
        let text = mk_manifest(
            "- name: web\n  source: nginx\n  tag: [latest]\n  allow_prerelease: true\n  frobnicate: 1",
        );
        assert_eq!(
            errors(&text),
            [
                "images/team-a/web.yaml:8:7: spec.images[0]: nothing to follow; add tags: (a list of tags), match: (a version pattern like v2.13.x) or digests: (digest -> tags)",
                "images/team-a/web.yaml:10:7: unknown field \"tag\" in spec.images[0]; did you mean \"tags\"?",
                "images/team-a/web.yaml:11:7: unknown field \"allow_prerelease\" in spec.images[0]; did you mean \"allowPrerelease\"?",
                "images/team-a/web.yaml:12:7: unknown field \"frobnicate\" in spec.images[0]; known fields: name, source, tags, match, allowPrerelease, select, exclude, digests, platforms, schedule, keep, pin, mirror",
            ]
        );
        let text =
            mk_manifest("- {name: web, source: nginx, tags: [a]}").replace("metadata:", "metdata:");
        assert_eq!(
            errors(&text)[..2],
            [
                "images/team-a/web.yaml:1:1: missing required field \"metadata\"; expected metadata: {name: ..., namespace: ...}",
                "images/team-a/web.yaml:3:1: unknown field \"metdata\" at the top level; did you mean \"metadata\"?",
            ]
        );
    }

    #[test]
    fn bad_cron() {
        let text =
            mk_manifest("- name: web\n  source: nginx\n  tags: [a]\n  schedule: \"*/15 * *\"");
        assert_eq!(
            error(&text),
            "images/team-a/web.yaml:11:17: spec.images[0].schedule: invalid cron expression \"*/15 * *\": it has 3 field(s), not minute hour day-of-month month day-of-week; expected 5 fields like \"*/15 * * * *\""
        );
        let text =
            mk_manifest("- name: web\n  source: nginx\n  tags: [a]\n  schedule: \"61 * * * *\"");
        assert!(error(&text).starts_with(
            "images/team-a/web.yaml:11:17: spec.images[0].schedule: invalid cron expression \"61 * * * *\": "
        ));
    }

    #[test]
    fn bad_regex() {
        let text = mk_manifest(
            "- name: argocd\n  source: quay.io/argoproj/argocd\n  match: v2.13.x\n  exclude: [\"-debug$\", \"(rc\"]",
        );
        assert_eq!(
            error(&text),
            "images/team-a/web.yaml:11:28: spec.images[0].exclude[1]: invalid regex \"(rc\": unclosed group; expected a regular expression like \"-debug$\""
        );
    }

    #[test]
    fn bad_match_pattern() {
        let text = mk_manifest("- name: argocd\n  source: quay.io/argoproj/argocd\n  match: v2.13");
        let e = error(&text);
        assert!(
            e.starts_with(
                "images/team-a/web.yaml:10:14: spec.images[0].match: invalid pattern \"v2.13\": "
            ),
            "{e}"
        );
        assert!(e.ends_with("expected an x-pattern like v2.13.x or 2.x.0 (optional v, three parts each a number or x) or a semver range like \">=2.13, <2.14\""));
    }

    #[test]
    fn bad_digest() {
        let text = mk_manifest(&format!(
            "- name: nginx\n  source: nginx\n  digests:\n    \"{DIGEST}\": [\"1.25\"]\n    \"sha256:e8ca\": [stable]"
        ));
        assert_eq!(
            error(&text),
            "images/team-a/web.yaml:12:9: spec.images[0].digests: invalid digest \"sha256:e8ca\": expected sha256:<64 hex> or sha512:<128 hex>, lowercase"
        );
    }

    #[test]
    fn bad_platform() {
        let text = mk_manifest(
            "- name: web\n  source: nginx\n  tags: [a]\n  platforms: [linux/amd64, linux, linux/amd64]",
        );
        assert_eq!(
            errors(&text),
            [
                "images/team-a/web.yaml:11:32: spec.images[0].platforms[1]: invalid platform \"linux\": expected os/arch or os/arch/variant, like linux/amd64 or linux/arm64/v8",
                "images/team-a/web.yaml:11:39: spec.images[0].platforms[2]: platform \"linux/amd64\" is listed twice (also spec.images[0].platforms[0])",
            ]
        );
    }

    #[test]
    fn bad_source() {
        let cases = [
            (
                "quay.io/company/web:1.4",
                "\"quay.io/company/web:1.4\" names a tag (:1.4); give the repository alone and list tags under tags:",
            ),
            (
                "nginx@sha256:abc",
                "\"nginx@sha256:abc\" names a digest (@sha256:abc); give the repository alone and list digests under digests:",
            ),
            (
                "Quay.io/Company/Web",
                "invalid repository name \"Quay.io/Company/Web\": use lowercase letters, digits and . _ - / separators; expected a repository like quay.io/company/web",
            ),
        ];
        for (source, message) in cases {
            let text = mk_manifest(&format!("- name: web\n  source: {source}\n  tags: [a]"));
            assert_eq!(
                error(&text),
                format!("images/team-a/web.yaml:9:15: spec.images[0].source: {message}")
            );
        }
        // A registry port is not a tag.
        let set = mk_set(&mk_manifest(
            "- name: web\n  source: localhost:5000/team/web\n  tags: [a]",
        ));
        assert_eq!(set.images[0].source.registry, "localhost:5000");
    }

    #[test]
    fn bad_tag() {
        let text = mk_manifest("- name: web\n  source: nginx\n  tags: [latest, -bad, \"a b\"]");
        assert_eq!(
            errors(&text),
            [
                "images/team-a/web.yaml:10:22: spec.images[0].tags[1]: invalid tag \"-bad\": up to 128 of [A-Za-z0-9_.-], not starting with . or -",
                "images/team-a/web.yaml:10:28: spec.images[0].tags[2]: invalid tag \"a b\": up to 128 of [A-Za-z0-9_.-], not starting with . or -",
            ]
        );
    }

    #[test]
    fn keep_out_of_range() {
        for (keep, col) in [("0", 13), ("1001", 13), ("-3", 13)] {
            let text = mk_manifest(&format!(
                "- name: web\n  source: nginx\n  tags: [a]\n  keep: {keep}"
            ));
            assert_eq!(
                error(&text),
                format!(
                    "images/team-a/web.yaml:11:{col}: spec.images[0].keep: {keep} is out of range; expected a number of generations from 1 to 1000"
                )
            );
        }
        let text = mk_manifest("- name: web\n  source: nginx\n  tags: [a]\n  keep: 2.5");
        assert_eq!(
            error(&text),
            "images/team-a/web.yaml:11:13: spec.images[0].keep: expected a number of generations from 1 to 1000, found the number 2.5"
        );
    }

    #[test]
    fn bad_pin() {
        let text = mk_manifest(
            "- name: web\n  source: nginx\n  tags: [latest, \"1.4\"]\n  pin: {stable: 2, latest: 0}",
        );
        assert_eq!(
            errors(&text),
            [
                "images/team-a/web.yaml:11:13: spec.images[0].pin: \"stable\" is not one of this image's tags (latest, 1.4); pin one of them",
                "images/team-a/web.yaml:11:32: spec.images[0].pin[\"latest\"]: 0 is out of range; expected a generation number from 1 to 4294967295",
            ]
        );
        let text = mk_manifest("- name: web\n  source: nginx\n  tags: [latest]\n  pin: 0");
        assert_eq!(
            error(&text),
            "images/team-a/web.yaml:11:12: spec.images[0].pin: 0 is out of range; expected a generation number from 1 to 4294967295"
        );
        let text = mk_manifest("- name: web\n  source: nginx\n  tags: [latest]\n  pin: [1]");
        assert_eq!(
            error(&text),
            "images/team-a/web.yaml:11:12: spec.images[0].pin: expected a generation number (pin: 2 holds every tag) or a mapping of tag to generation (pin: {latest: 2}), found a list"
        );
        let text = mk_manifest(&format!(
            "- name: web\n  source: nginx\n  digests: {{\"{DIGEST}\": [a]}}\n  pin: 2"
        ));
        assert!(error(&text).starts_with(
            "images/team-a/web.yaml:11:12: spec.images[0].pin: pins hold followed tags"
        ));
        let text = mk_manifest(&format!(
            "- name: web\n  source: nginx\n  tags: [b]\n  digests: {{\"{DIGEST}\": [a]}}\n  pin: {{a: 2}}"
        ));
        assert_eq!(
            error(&text),
            "images/team-a/web.yaml:12:13: spec.images[0].pin: tag \"a\" comes from digests:, which are fixed; only tags followed by tags: or match: can be pinned"
        );
        // With match: any tag may be pinned, as it may be a matched one.
        let set = mk_set(&mk_manifest(
            "- name: argocd\n  source: quay.io/argoproj/argocd\n  match: v2.13.x\n  pin: {v2.13.1: 3}",
        ));
        assert_eq!(set.images[0].pin.generation_for("v2.13.1"), Some(3));
    }

    #[test]
    fn duplicate_alias_in_one_file() {
        let text = mk_manifest(
            "- name: web\n  source: nginx\n  tags: [a]\n- name: web\n  source: quay.io/company/web\n  tags: [b]",
        );
        assert_eq!(
            error(&text),
            "images/team-a/web.yaml:11:13: spec.images[1].name: duplicate alias \"web\" in namespace \"team-a\"; it is already defined at images/team-a/web.yaml:8:13, and aliases must be unique per namespace"
        );
    }

    #[test]
    fn bad_alias_and_namespace() {
        let text =
            mk_manifest("- name: Web_1\n  source: nginx\n  tags: [a]").replace("team-a", "Team A");
        assert_eq!(
            errors(&text),
            [
                "images/team-a/web.yaml:5:14: metadata.namespace: invalid namespace \"Team A\": a Kubernetes namespace is at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit",
                "images/team-a/web.yaml:8:13: spec.images[0].name: invalid alias \"Web_1\": use at most 63 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, like web or argocd-server",
            ]
        );
    }

    #[test]
    fn match_only_fields_need_match() {
        let text = mk_manifest(
            "- name: web\n  source: nginx\n  tags: [a]\n  select: latest\n  exclude: [x]",
        );
        assert_eq!(
            errors(&text),
            [
                "images/team-a/web.yaml:11:15: spec.images[0].select: only applies together with match:; add match: or remove select:",
                "images/team-a/web.yaml:12:16: spec.images[0].exclude: only applies together with match:; add match: or remove exclude:",
            ]
        );
        let text = mk_manifest("- name: web\n  source: nginx\n  match: 1.x.x\n  select: newest");
        assert_eq!(
            error(&text),
            "images/team-a/web.yaml:11:15: spec.images[0].select: unknown selection \"newest\"; expected all (every matching tag) or latest (the highest only)"
        );
    }

    #[test]
    fn tag_produced_twice() {
        let text = mk_manifest(&format!(
            "- name: nginx\n  source: nginx\n  tags: [stable, stable]\n  digests:\n    \"{DIGEST}\": [\"1.25\", stable]"
        ));
        assert_eq!(
            errors(&text),
            [
                "images/team-a/web.yaml:10:22: spec.images[0].tags[1]: tag \"stable\" is already produced by spec.images[0].tags[0]; each tag may appear once per image",
                format!("images/team-a/web.yaml:12:93: spec.images[0].digests[\"{DIGEST}\"][1]: tag \"stable\" is already produced by spec.images[0].tags[0]; each tag may appear once per image").as_str(),
            ]
        );
    }

    #[test]
    fn mirror_needs_a_target() {
        let text = mk_manifest("- name: web\n  source: nginx\n  tags: [a]\n  mirror: true");
        assert_eq!(
            errors_with(&text, &RepoConfig::default()),
            [
                "images/team-a/web.yaml:11:15: spec.images[0].mirror: is true but imagelock.yaml has no mirror: target; add mirror: {registry: ...} there or set this to false"
            ]
        );
        // Unknown settings (invalid imagelock.yaml): not reported.
        assert!(parse(Path::new(PATH), &text, None).is_ok());
    }

    #[test]
    fn all_errors_of_a_file_are_reported() {
        let text = "\
apiVersion: imagelock.dev/v1alpha1
kind: ImageSet
metadata:
  name: web
  namespace: team_a
spec:
  images:
    - name: web
      source: quay.io/company/web:latest
      tags: [latest]
      schedule: every 5 minutes
      keep: 0
    - name: argocd
      source: quay.io/argoproj/argocd
      match: v2.13.x
      exclude: [\"[\"]
      platform: [linux/amd64]
";
        let errors = errors(text);
        let positions: Vec<&str> = errors
            .iter()
            .map(|e| e.split(": ").next().unwrap_or_default())
            .collect();
        assert_eq!(
            positions,
            [
                "images/team-a/web.yaml:5:14",
                "images/team-a/web.yaml:9:15",
                "images/team-a/web.yaml:11:17",
                "images/team-a/web.yaml:12:13",
                "images/team-a/web.yaml:16:17",
                "images/team-a/web.yaml:17:7",
            ],
            "{errors:#?}"
        );
        assert!(errors[5].ends_with("did you mean \"platforms\"?"));
    }
}

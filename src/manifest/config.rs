//! `imagelock.yaml`: repo settings.
//!
//! ```yaml
//! apiVersion: imagelock.dev/v1alpha1
//! kind: Config
//! mirror:                               # optional; one of the two layouts
//!   registry: registry.internal
//!   layout: "{namespace}/{name}"        # one repository per image (the default)
//!   # repository: all-images            # or everything in one repository,
//!   # tagPrefix: "{namespace}-{name}"   # tags prefixed (this prefix is the default)
//! registries:
//!   quay.io: {rateLimit: 10, concurrency: 4}   # only lower the operator's ceilings
//! defaults: {schedule: "*/15 * * * *", keep: 25, mirror: false, platforms: [linux/amd64]}
//! git: {authorName: imagelock, authorEmail: imagelock@example.com, message: "..."}
//! outputs:                              # generated files, committed with the locks
//!   kustomize: {path: outputs/kustomize}    # <path>/<namespace>/kustomization.yaml
//!   helmValues: {path: outputs/helm}        # <path>/<namespace>/<set>.yaml
//!   setters: {paths: [apps/]}               # marked lines rewritten in these files
//! admission:                           # what the webhook does with Pods, per namespace
//!   default: rewrite                    # rewrite | enforce | audit | off (default rewrite)
//!   namespaces: {team-a: enforce}
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::reference::{DOCKER_HUB, ImageRepo, is_valid_tag};

use super::Diagnostic;
use super::common::{self, top_level};
use super::load::IMAGES_DIR;
use super::model::{
    AdmissionMode, AdmissionSettings, Defaults, GitSettings, MirrorLayout, MirrorTarget,
    OutputPath, Outputs, RegistrySettings, RepoConfig,
};
use super::yaml::{Doc, Node, Value, suggest};

const ROOT: &[&str] = &[
    "apiVersion",
    "kind",
    "mirror",
    "registries",
    "defaults",
    "git",
    "outputs",
    "admission",
];
const MIRROR: &[&str] = &["registry", "layout", "repository", "tagPrefix"];
const REGISTRY: &[&str] = &["rateLimit", "concurrency", "insecure", "credential"];
const DEFAULTS: &[&str] = &["schedule", "keep", "mirror", "platforms"];
const GIT: &[&str] = &["authorName", "authorEmail", "message"];
const ADMISSION: &[&str] = &["default", "namespaces"];
const OUTPUTS: &[&str] = &["kustomize", "helmValues", "setters"];
const OUTPUT_DIR: &[&str] = &["path"];
const SETTERS: &[&str] = &["paths"];

/// The per-image layout when `mirror:` names only a registry.
pub const DEFAULT_LAYOUT: &str = "{namespace}/{name}";
/// The tag prefix when `mirror:` names one repository without `tagPrefix:`.
pub const DEFAULT_TAG_PREFIX: &str = "{namespace}-{name}";

/// Parses and validates `imagelock.yaml`; `path` is repo-relative and only used in diagnostics.
/// Returns every problem of the file, not only the first.
pub fn parse_repo_config(path: &Path, text: &str) -> Result<RepoConfig, Vec<Diagnostic>> {
    let mut doc = Doc::new(path, text);
    let config = doc
        .load("repo settings with kind: Config")
        .and_then(|root| repo_config(&mut doc, &root));
    doc.finish(config)
}

fn repo_config(doc: &mut Doc<'_>, root: &Node<'_>) -> Option<RepoConfig> {
    let map = top_level(doc, root, "Config", ROOT)?;
    let mut config = RepoConfig::default();
    if let Some(value) = map.get("mirror") {
        config.mirror = mirror(doc, value);
    }
    if let Some(value) = map.get("registries") {
        config.registries = registries(doc, value).unwrap_or_default();
    }
    if let Some(value) = map.get("defaults") {
        config.defaults = defaults(doc, value, config.mirror.is_some()).unwrap_or_default();
    }
    if let Some(value) = map.get("git") {
        config.git = git(doc, value).unwrap_or_default();
    }
    if let Some(value) = map.get("outputs") {
        config.outputs = outputs(doc, value).unwrap_or_default();
    }
    if let Some(value) = map.get("admission") {
        config.admission = admission(doc, value).unwrap_or_default();
    }
    Some(config)
}

fn mirror(doc: &mut Doc<'_>, value: &Value<'_>) -> Option<MirrorTarget> {
    let map = doc.mapping(value, MIRROR)?;
    let registry = doc
        .required(
            &map,
            "registry",
            "the mirror's registry host, like registry.internal or localhost:5000",
        )
        .and_then(|value| common::registry_host(doc, value));
    let layout = match (
        map.get("layout"),
        map.get("repository"),
        map.get("tagPrefix"),
    ) {
        (None, None, None) => Some(MirrorLayout::PerImage {
            template: DEFAULT_LAYOUT.to_owned(),
        }),
        (Some(layout), None, None) => template(doc, layout, Target::Repository)
            .map(|template| MirrorLayout::PerImage { template }),
        (None, Some(repository), prefix) => {
            let repository = single_repository(doc, repository);
            let tag_prefix = match prefix {
                Some(prefix) => template(doc, prefix, Target::TagPrefix),
                None => Some(DEFAULT_TAG_PREFIX.to_owned()),
            };
            Some(MirrorLayout::Single {
                repository: repository?,
                tag_prefix: tag_prefix?,
            })
        }
        (Some(_), Some(repository), _) => {
            doc.error(
                repository.position,
                &repository.field,
                "layout: and repository: exclude each other; use layout: for one repository per image, or repository: with tagPrefix: for everything in one repository",
            );
            None
        }
        (None, None, Some(prefix)) | (Some(_), None, Some(prefix)) => {
            doc.error(
                prefix.position,
                &prefix.field,
                "tagPrefix: only applies with repository: (everything in one repository); add repository: or remove tagPrefix:",
            );
            None
        }
    };
    Some(MirrorTarget {
        registry: registry?,
        layout: layout?,
        position: map.get("registry").map_or(value.position, |v| v.position),
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Target {
    Repository,
    TagPrefix,
}

/// A layout template over `{namespace}` and `{name}` that must name both (or images of
/// different namespaces or aliases would share a repository or tags) and render to a valid
/// repository path or tag.
fn template(doc: &mut Doc<'_>, value: &Value<'_>, target: Target) -> Option<String> {
    let text = doc.string(value)?;
    let example = match target {
        Target::Repository => "\"{namespace}/{name}\" or \"mirror/{namespace}/{name}\"",
        Target::TagPrefix => "\"{namespace}-{name}\"",
    };
    let mut rest = text.as_str();
    let mut rendered = String::new();
    let (mut has_namespace, mut has_name) = (false, false);
    while let Some(open) = rest.find(['{', '}']) {
        rendered.push_str(&rest[..open]);
        let Some(close) = rest[open..]
            .find('}')
            .filter(|_| rest[open..].starts_with('{'))
        else {
            doc.error(
                value.position,
                &value.field,
                format!("unbalanced braces in {text:?}; expected a template like {example}"),
            );
            return None;
        };
        match &rest[open + 1..open + close] {
            "namespace" => {
                has_namespace = true;
                rendered.push_str("team-a");
            }
            "name" => {
                has_name = true;
                rendered.push_str("web");
            }
            other => {
                doc.error(
                    value.position,
                    &value.field,
                    format!(
                        "unknown placeholder {{{other}}} in {text:?}; only {{namespace}} and {{name}} are available"
                    ),
                );
                return None;
            }
        }
        rest = &rest[open + close + 1..];
    }
    rendered.push_str(rest);
    if !(has_namespace && has_name) {
        doc.error(
            value.position,
            &value.field,
            format!(
                "{text:?} must use both {{namespace}} and {{name}}, so that no two images share a {}; expected a template like {example}",
                match target {
                    Target::Repository => "repository",
                    Target::TagPrefix => "tag",
                }
            ),
        );
        return None;
    }
    let valid = match target {
        Target::Repository => ImageRepo::parse(&format!("registry.invalid/{rendered}")).is_ok(),
        Target::TagPrefix => is_valid_tag(&format!("{rendered}-1.0")),
    };
    if !valid {
        let rule = match target {
            Target::Repository => {
                "a repository path of lowercase letters, digits and . _ - separated by /"
            }
            Target::TagPrefix => "a tag prefix of letters, digits and _ . -",
        };
        doc.error(
            value.position,
            &value.field,
            format!("{text:?} does not give {rule}; expected a template like {example}"),
        );
        return None;
    }
    Some(text)
}

fn single_repository(doc: &mut Doc<'_>, value: &Value<'_>) -> Option<String> {
    let text = doc.string(value)?;
    if text.contains(['{', '}']) {
        doc.error(
            value.position,
            &value.field,
            "the single mirror repository takes no placeholders; they go into tagPrefix:",
        );
        return None;
    }
    if ImageRepo::parse(&format!("registry.invalid/{text}")).is_err() {
        doc.error(
            value.position,
            &value.field,
            format!(
                "invalid repository {text:?}: use lowercase letters, digits and . _ - separated by /, like all-images"
            ),
        );
        return None;
    }
    Some(text)
}

fn registries(doc: &mut Doc<'_>, value: &Value<'_>) -> Option<BTreeMap<String, RegistrySettings>> {
    let entries = doc.dict(value)?;
    let mut registries = BTreeMap::new();
    let mut first_seen: BTreeMap<String, String> = BTreeMap::new();
    for (host, key_position, settings) in entries {
        let host_value = Value {
            node: settings.node,
            field: value.field.clone(),
            position: key_position,
        };
        if !common::check_registry_host(doc, &host_value, &host) {
            continue;
        }
        // Image references name Docker Hub `docker.io`; settings must use the same key.
        let host = match host.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
            _ => host,
        };
        if let Some(first) = first_seen.get(&host) {
            doc.error(
                settings.position,
                &settings.field,
                format!("{host} is configured twice (also as {first})"),
            );
            continue;
        }
        first_seen.insert(host.clone(), settings.field.clone());
        if let Some(settings) = registry_settings(doc, &settings) {
            registries.insert(host, settings);
        }
    }
    Some(registries)
}

fn registry_settings(doc: &mut Doc<'_>, value: &Value<'_>) -> Option<RegistrySettings> {
    let map = doc.mapping(value, REGISTRY)?;
    let mut settings = RegistrySettings::default();
    if let Some(value) = map.get("rateLimit") {
        settings.rate_limit = doc
            .integer(value, 1, 100_000, "requests per second")
            .and_then(|n| u32::try_from(n).ok());
    }
    if let Some(value) = map.get("concurrency") {
        settings.concurrency = doc
            .integer(value, 1, 1024, "requests in flight")
            .and_then(|n| usize::try_from(n).ok());
    }
    // These used to be repo settings; a pull request could point a login at any host or
    // downgrade one to plain HTTP. They are the operator's now, and the key is an error that
    // says where the setting went.
    if let Some(value) = map.get("insecure") {
        doc.error(
            value.position,
            &value.field,
            "plain HTTP is not a repo setting any more: remove this key and ask the operator to list the host in insecureRegistries of the daemon configuration (--insecure-registry, IMAGELOCK_INSECURE_REGISTRIES, the chart's insecureRegistries)",
        );
    }
    if let Some(value) = map.get("credential") {
        doc.error(
            value.position,
            &value.field,
            "which login serves a registry is not a repo setting any more: remove this key and ask the operator to map the host in registryCredentials of the daemon configuration (--registry-credential HOST=ENTRY, IMAGELOCK_REGISTRY_CREDENTIALS, the chart's registryCredentials)",
        );
    }
    Some(settings)
}

fn defaults(doc: &mut Doc<'_>, value: &Value<'_>, has_mirror: bool) -> Option<Defaults> {
    let map = doc.mapping(value, DEFAULTS)?;
    let mut defaults = Defaults::default();
    if let Some(value) = map.get("schedule") {
        defaults.schedule = common::schedule(doc, value).unwrap_or(defaults.schedule);
    }
    if let Some(value) = map.get("keep") {
        defaults.keep = common::keep(doc, value).unwrap_or(defaults.keep);
    }
    if let Some(value) = map.get("mirror") {
        defaults.mirror = doc.boolean(value).unwrap_or_default();
        if defaults.mirror && !has_mirror {
            doc.error(
                value.position,
                &value.field,
                "is true but there is no mirror: target; add mirror: {registry: ...} or set it to false",
            );
        }
    }
    if let Some(value) = map.get("platforms") {
        defaults.platforms = common::platforms(doc, value).unwrap_or_default();
    }
    Some(defaults)
}

fn git(doc: &mut Doc<'_>, value: &Value<'_>) -> Option<GitSettings> {
    let map = doc.mapping(value, GIT)?;
    let mut git = GitSettings::default();
    if let Some(value) = map.get("authorName") {
        git.author_name = common::line(doc, value, "imagelock").unwrap_or_default();
    }
    if let Some(value) = map.get("authorEmail") {
        git.author_email = author_email(doc, value).unwrap_or_default();
    }
    if let Some(value) = map.get("message") {
        git.message =
            common::line(doc, value, "imagelock: update {count} image pin(s)").unwrap_or_default();
    }
    Some(git)
}

fn author_email(doc: &mut Doc<'_>, value: &Value<'_>) -> Option<String> {
    let email = common::line(doc, value, "imagelock@example.com")?;
    let valid = email
        .split_once('@')
        .is_some_and(|(user, host)| !user.is_empty() && !host.is_empty())
        && !email.contains(|c: char| c.is_whitespace() || c == '<' || c == '>');
    if !valid {
        doc.error(
            value.position,
            &value.field,
            format!("invalid email address {email:?}; expected one like imagelock@example.com"),
        );
        return None;
    }
    Some(email)
}

fn outputs(doc: &mut Doc<'_>, value: &Value<'_>) -> Option<Outputs> {
    let map = doc.mapping(value, OUTPUTS)?;
    let mut outputs = Outputs::default();
    if let Some(value) = map.get("kustomize") {
        outputs.kustomize = output_dir(doc, value, "outputs/kustomize");
    }
    if let Some(value) = map.get("helmValues") {
        outputs.helm_values = output_dir(doc, value, "outputs/helm");
    }
    if let (Some(kustomize), Some(helm)) = (&outputs.kustomize, &outputs.helm_values)
        && (kustomize.path.starts_with(&helm.path) || helm.path.starts_with(&kustomize.path))
    {
        doc.error(
            helm.position,
            &helm.field,
            format!(
                "{} overlaps kustomize.path {}; give each output a directory of its own, like outputs/helm and outputs/kustomize",
                helm.path.display(),
                kustomize.path.display()
            ),
        );
        outputs.helm_values = None;
    }
    if let Some(value) = map.get("setters") {
        outputs.setters = setters(doc, value).unwrap_or_default();
    }
    Some(outputs)
}

/// `{path: DIR}` for a generated directory: inside the repository, not its root, not in `images/`.
fn output_dir(doc: &mut Doc<'_>, value: &Value<'_>, example: &str) -> Option<OutputPath> {
    let map = doc.mapping(value, OUTPUT_DIR)?;
    let hint = format!("the directory to generate into, like {example}");
    let value = doc.required(&map, "path", &hint)?;
    let output = repo_path(doc, value, example)?;
    let message = if output.path.as_os_str().is_empty() {
        "is the repository root; generated files need a directory of their own"
    } else if output.path.starts_with(IMAGES_DIR) {
        "is inside images/, where every YAML file is read as a manifest; generate outside it"
    } else {
        return Some(output);
    };
    doc.error(
        value.position,
        &value.field,
        format!("{message}, like {example}"),
    );
    None
}

fn setters(doc: &mut Doc<'_>, value: &Value<'_>) -> Option<Vec<OutputPath>> {
    let map = doc.mapping(value, SETTERS)?;
    let value = doc.required(
        &map,
        "paths",
        "the files and directories whose marked lines imagelock rewrites, like [apps/]",
    )?;
    let items = doc.list(value)?;
    if items.is_empty() {
        doc.error(
            value.position,
            &value.field,
            "is empty; list the files and directories to rewrite, like [apps/], or remove setters:",
        );
        return None;
    }
    let mut paths: Vec<OutputPath> = Vec::new();
    for item in items {
        let Some(path) = repo_path(doc, &item, "apps/") else {
            continue;
        };
        if let Some(first) = paths.iter().find(|p| p.path == path.path) {
            doc.error(
                item.position,
                &item.field,
                format!("{:?} is listed twice (also {})", path.path, first.field),
            );
            continue;
        }
        paths.push(path);
    }
    Some(paths)
}

/// A repo-relative path, normalised (`./` and a trailing `/` dropped); `.` is the root.
fn repo_path(doc: &mut Doc<'_>, value: &Value<'_>, example: &str) -> Option<OutputPath> {
    let text = doc.string(value)?;
    let trimmed = match text.trim_end_matches('/') {
        "" => text.as_str(),
        trimmed => trimmed,
    };
    let normalised = if trimmed == "." {
        Ok(PathBuf::new())
    } else {
        crate::git::normalize_repo_path(Path::new(trimmed))
    };
    let path = match normalised {
        Ok(path) if !text.contains('\\') => path,
        Ok(_) => {
            doc.error(
                value.position,
                &value.field,
                format!(
                    "{text:?} contains a backslash; separate directories with /, like {example}"
                ),
            );
            return None;
        }
        Err(crate::git::GitError::InvalidPath { reason, .. }) => {
            doc.error(
                value.position,
                &value.field,
                format!("{text:?} {reason}; expected a path inside the repository, like {example}"),
            );
            return None;
        }
        Err(other) => {
            doc.error(value.position, &value.field, other.to_string());
            return None;
        }
    };
    Some(OutputPath {
        path,
        position: value.position,
        field: value.field.clone(),
    })
}

fn admission(doc: &mut Doc<'_>, value: &Value<'_>) -> Option<AdmissionSettings> {
    let map = doc.mapping(value, ADMISSION)?;
    let mut settings = AdmissionSettings::default();
    if let Some(value) = map.get("default") {
        settings.default = admission_mode(doc, value).unwrap_or_default();
    }
    if let Some(value) = map.get("namespaces") {
        for (namespace, key_position, mode) in doc.dict(value).unwrap_or_default() {
            if !common::is_dns_label(&namespace) {
                doc.error(
                    key_position,
                    &value.field,
                    format!(
                        "invalid namespace {namespace:?}: expected a Kubernetes namespace name (at most 63 lowercase letters, digits and -, like team-a)"
                    ),
                );
                continue;
            }
            if let Some(mode) = admission_mode(doc, &mode) {
                settings.namespaces.insert(namespace, mode);
            }
        }
    }
    Some(settings)
}

fn admission_mode(doc: &mut Doc<'_>, value: &Value<'_>) -> Option<AdmissionMode> {
    let text = doc.string(value)?;
    if let Ok(mode) = text.parse() {
        return Some(mode);
    }
    let hint = match suggest(&text, &AdmissionMode::ALL.map(AdmissionMode::as_str)) {
        Some(close) => format!("; did you mean {close:?}?"),
        None => String::new(),
    };
    doc.error(
        value.position,
        &value.field,
        format!("unknown admission mode {text:?}; expected rewrite, enforce, audit or off{hint}"),
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "imagelock.yaml";

    fn mk_config(body: &str) -> String {
        format!("apiVersion: imagelock.dev/v1alpha1\nkind: Config\n{body}")
    }

    fn parse(text: &str) -> RepoConfig {
        match parse_repo_config(Path::new(PATH), text) {
            Ok(config) => config,
            Err(diagnostics) => panic!("{diagnostics:#?}"),
        }
    }

    fn errors(text: &str) -> Vec<String> {
        match parse_repo_config(Path::new(PATH), text) {
            Ok(config) => panic!("expected errors, parsed {config:#?}"),
            Err(diagnostics) => diagnostics.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn full_example() {
        let config = parse(include_str!(
            "../../tests/fixtures/manifests/imagelock.yaml"
        ));
        assert_eq!(
            config.mirror,
            Some(MirrorTarget {
                registry: "registry.internal".into(),
                layout: MirrorLayout::PerImage {
                    template: "{namespace}/{name}".into()
                },
                position: crate::manifest::Position { line: 4, col: 13 },
            })
        );
        assert_eq!(
            config.registries["quay.io"],
            RegistrySettings {
                rate_limit: Some(10),
                concurrency: Some(4),
            }
        );
        assert_eq!(config.registries["localhost:5000"].rate_limit, Some(5));
        // Docker Hub's alias is stored under the name references use.
        assert_eq!(config.registries["docker.io"].concurrency, Some(2));
        assert_eq!(config.defaults.schedule.expression, "0 * * * *");
        assert_eq!(config.defaults.keep, 30);
        assert!(config.defaults.mirror);
        assert_eq!(config.defaults.platforms.len(), 1);
        assert_eq!(config.git.author_name, "imagelock-bot");
        assert_eq!(config.git.author_email, "imagelock@example.com");
        assert_eq!(config.git.message, "chore(images): pin {count} image(s)");
        let at = |line, col, field: &str, path: &str| OutputPath {
            path: PathBuf::from(path),
            position: crate::manifest::Position { line, col },
            field: field.into(),
        };
        assert_eq!(
            config.outputs,
            Outputs {
                kustomize: Some(at(25, 21, "outputs.kustomize.path", "outputs/kustomize")),
                helm_values: Some(at(27, 11, "outputs.helmValues.path", "outputs/helm")),
                setters: vec![
                    at(29, 13, "outputs.setters.paths[0]", "apps"),
                    at(
                        29,
                        20,
                        "outputs.setters.paths[1]",
                        "clusters/prod/values.yaml"
                    ),
                ],
            }
        );
        assert_eq!(config.admission.default, AdmissionMode::Rewrite);
        assert_eq!(
            config.admission.namespaces,
            BTreeMap::from([("team-a".to_owned(), AdmissionMode::Enforce)])
        );
        assert_eq!(config.admission.mode_for("team-a"), AdmissionMode::Enforce);
        assert_eq!(config.admission.mode_for("team-b"), AdmissionMode::Rewrite);
    }

    #[test]
    fn minimal_file_is_all_defaults() {
        assert_eq!(parse(&mk_config("")), RepoConfig::default());
    }

    #[test]
    fn mirror_layouts() {
        let config = parse(&mk_config("mirror: {registry: \"localhost:5000\"}\n"));
        assert_eq!(
            config.mirror.unwrap().layout,
            MirrorLayout::PerImage {
                template: DEFAULT_LAYOUT.into()
            }
        );
        let config = parse(&mk_config(
            "mirror:\n  registry: registry.internal\n  layout: \"mirror/{namespace}/{name}\"\n",
        ));
        assert_eq!(
            config.mirror.unwrap().layout,
            MirrorLayout::PerImage {
                template: "mirror/{namespace}/{name}".into()
            }
        );
        let config = parse(&mk_config(
            "mirror:\n  registry: registry.internal\n  repository: all-images\n",
        ));
        assert_eq!(
            config.mirror.unwrap().layout,
            MirrorLayout::Single {
                repository: "all-images".into(),
                tag_prefix: DEFAULT_TAG_PREFIX.into()
            }
        );
        let config = parse(&mk_config(
            "mirror:\n  registry: registry.internal\n  repository: mirror/all\n  tagPrefix: \"{name}_{namespace}\"\n",
        ));
        assert_eq!(
            config.mirror.unwrap().layout,
            MirrorLayout::Single {
                repository: "mirror/all".into(),
                tag_prefix: "{name}_{namespace}".into()
            }
        );
    }

    #[test]
    fn bad_mirror() {
        let cases = [
            (
                "mirror: {layout: \"{namespace}/{name}\"}\n",
                "imagelock.yaml:3:9: mirror: missing required field \"registry\"; the mirror's registry host, like registry.internal or localhost:5000",
            ),
            (
                "mirror: {registry: \"https://registry.internal\"}\n",
                "imagelock.yaml:3:20: mirror.registry: invalid registry host \"https://registry.internal\": expected host[:port] like registry.internal or localhost:5000; leave out the scheme (plain HTTP is the operator's setting, insecureRegistries)",
            ),
            (
                "mirror: {registry: registry.internal/mirror}\n",
                "imagelock.yaml:3:20: mirror.registry: invalid registry host \"registry.internal/mirror\": expected host[:port] like registry.internal or localhost:5000; leave out the path (a mirror's path goes into layout:, like \"mirror/{namespace}/{name}\")",
            ),
            (
                "mirror: {registry: r.io, layout: \"{team}/{name}\"}\n",
                "imagelock.yaml:3:34: mirror.layout: unknown placeholder {team} in \"{team}/{name}\"; only {namespace} and {name} are available",
            ),
            (
                "mirror: {registry: r.io, layout: \"{name}\"}\n",
                "imagelock.yaml:3:34: mirror.layout: \"{name}\" must use both {namespace} and {name}, so that no two images share a repository; expected a template like \"{namespace}/{name}\" or \"mirror/{namespace}/{name}\"",
            ),
            (
                "mirror: {registry: r.io, layout: \"{namespace}/{name\"}\n",
                "imagelock.yaml:3:34: mirror.layout: unbalanced braces in \"{namespace}/{name\"; expected a template like \"{namespace}/{name}\" or \"mirror/{namespace}/{name}\"",
            ),
            (
                "mirror: {registry: r.io, layout: \"Mirror/{namespace}/{name}\"}\n",
                "imagelock.yaml:3:34: mirror.layout: \"Mirror/{namespace}/{name}\" does not give a repository path of lowercase letters, digits and . _ - separated by /; expected a template like \"{namespace}/{name}\" or \"mirror/{namespace}/{name}\"",
            ),
            (
                "mirror: {registry: r.io, layout: \"{namespace}/{name}\", repository: all}\n",
                "imagelock.yaml:3:68: mirror.repository: layout: and repository: exclude each other; use layout: for one repository per image, or repository: with tagPrefix: for everything in one repository",
            ),
            (
                "mirror: {registry: r.io, tagPrefix: \"{namespace}-{name}\"}\n",
                "imagelock.yaml:3:37: mirror.tagPrefix: tagPrefix: only applies with repository: (everything in one repository); add repository: or remove tagPrefix:",
            ),
            (
                "mirror: {registry: r.io, repository: \"{namespace}\"}\n",
                "imagelock.yaml:3:38: mirror.repository: the single mirror repository takes no placeholders; they go into tagPrefix:",
            ),
            (
                "mirror: {registry: r.io, repository: all, tagPrefix: \"{namespace}/{name}\"}\n",
                "imagelock.yaml:3:54: mirror.tagPrefix: \"{namespace}/{name}\" does not give a tag prefix of letters, digits and _ . -; expected a template like \"{namespace}-{name}\"",
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(errors(&mk_config(body)), [expected], "{body}");
        }
    }

    #[test]
    fn bad_registries() {
        let text = mk_config(
            "registries:\n  quay.io:\n    rateLimit: 0\n    concurrency: many\n    insecure: \"yes\"\n    credentials: robot\n  Quay.IO: {}\n  docker.io: {}\n  index.docker.io: {}\n",
        );
        assert_eq!(
            errors(&text),
            [
                "imagelock.yaml:5:16: registries[\"quay.io\"].rateLimit: 0 is out of range; expected requests per second from 1 to 100000",
                "imagelock.yaml:6:18: registries[\"quay.io\"].concurrency: expected requests in flight from 1 to 1024, found the string \"many\"",
                "imagelock.yaml:7:15: registries[\"quay.io\"].insecure: plain HTTP is not a repo setting any more: remove this key and ask the operator to list the host in insecureRegistries of the daemon configuration (--insecure-registry, IMAGELOCK_INSECURE_REGISTRIES, the chart's insecureRegistries)",
                "imagelock.yaml:8:5: unknown field \"credentials\" in registries[\"quay.io\"]; did you mean \"credential\"?",
                "imagelock.yaml:9:3: registries: invalid registry host \"Quay.IO\": expected host[:port] like registry.internal or localhost:5000; use lowercase",
                "imagelock.yaml:11:20: registries[\"index.docker.io\"]: docker.io is configured twice (also as registries[\"docker.io\"])",
            ]
        );
    }

    #[test]
    fn repo_keys_that_granted_trust_are_errors_naming_the_operator_setting() {
        let text = mk_config(
            "registries:\n  \"attacker.example:8080\": {insecure: true, credential: quay.example.com}\n",
        );
        let errors = errors(&text);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with(
                "imagelock.yaml:4:39: registries[\"attacker.example:8080\"].insecure: "
            ) && errors[0].contains("insecureRegistries"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with(
                "imagelock.yaml:4:57: registries[\"attacker.example:8080\"].credential: "
            ) && errors[1].contains("registryCredentials"),
            "{errors:?}"
        );
        // Lowering limits stays a repo setting.
        let config = parse(&mk_config(
            "registries:\n  quay.io: {rateLimit: 2, concurrency: 1}\n",
        ));
        assert_eq!(config.registries["quay.io"].rate_limit, Some(2));
    }

    #[test]
    fn bad_defaults_and_git() {
        let text = mk_config(
            "defaults:\n  schedule: \"* * * * * *\"\n  keep: 5000\n  mirror: true\n  platforms: [linux]\ngit:\n  authorName: \"\"\n  authorEmail: imagelock\n  mesage: x\n",
        );
        assert_eq!(
            errors(&text),
            [
                "imagelock.yaml:4:13: defaults.schedule: invalid cron expression \"* * * * * *\": it has 6 field(s), not minute hour day-of-month month day-of-week (seconds and years are not supported); expected 5 fields like \"*/15 * * * *\"",
                "imagelock.yaml:5:9: defaults.keep: 5000 is out of range; expected a number of generations from 1 to 1000",
                "imagelock.yaml:6:11: defaults.mirror: is true but there is no mirror: target; add mirror: {registry: ...} or set it to false",
                "imagelock.yaml:7:15: defaults.platforms[0]: invalid platform \"linux\": expected os/arch or os/arch/variant, like linux/amd64 or linux/arm64/v8",
                "imagelock.yaml:9:15: git.authorName: expected one non-empty line, like \"imagelock\"",
                "imagelock.yaml:10:16: git.authorEmail: invalid email address \"imagelock\"; expected one like imagelock@example.com",
                "imagelock.yaml:11:3: unknown field \"mesage\" in git; did you mean \"message\"?",
            ]
        );
    }

    #[test]
    fn outputs_paths() {
        let config = parse(&mk_config(
            "outputs:\n  setters: {paths: [\".\", ./apps/, \"apps/web/deploy.yaml\"]}\n",
        ));
        let paths: Vec<_> = config
            .outputs
            .setters
            .iter()
            .map(|p| p.path.clone())
            .collect();
        assert_eq!(
            paths,
            [
                PathBuf::new(),
                PathBuf::from("apps"),
                PathBuf::from("apps/web/deploy.yaml")
            ]
        );
        assert!(config.outputs.kustomize.is_none() && config.outputs.helm_values.is_none());
        assert!(parse(&mk_config("outputs: {}\n")).outputs.is_empty());
    }

    #[test]
    fn bad_outputs() {
        let text = mk_config(
            "outputs:
  kustomize: {path: ../outside}
  helmValues: {path: images/helm}
  setters:
    paths: [/etc, apps, apps/, .git/hooks, \"a\\\\b\", true, \"\"]
  kustomise: {}
",
        );
        assert_eq!(
            errors(&text),
            [
                "imagelock.yaml:4:21: outputs.kustomize.path: \"../outside\" contains a `..` component; expected a path inside the repository, like outputs/kustomize",
                "imagelock.yaml:5:22: outputs.helmValues.path: is inside images/, where every YAML file is read as a manifest; generate outside it, like outputs/helm",
                "imagelock.yaml:7:13: outputs.setters.paths[0]: \"/etc\" is absolute; repo paths are relative; expected a path inside the repository, like apps/",
                "imagelock.yaml:7:25: outputs.setters.paths[2]: \"apps\" is listed twice (also outputs.setters.paths[1])",
                "imagelock.yaml:7:32: outputs.setters.paths[3]: \".git/hooks\" names the .git directory; expected a path inside the repository, like apps/",
                "imagelock.yaml:7:44: outputs.setters.paths[4]: \"a\\\\b\" contains a backslash; separate directories with /, like apps/",
                "imagelock.yaml:7:52: outputs.setters.paths[5]: expected a string, found the boolean true; quote it if you mean the text",
                "imagelock.yaml:7:58: outputs.setters.paths[6]: \"\" is empty; expected a path inside the repository, like apps/",
                "imagelock.yaml:8:3: unknown field \"kustomise\" in outputs; did you mean \"kustomize\"?",
            ]
        );
        let text = mk_config(
            "outputs:\n  kustomize: {path: out}\n  helmValues: {path: out/helm}\n  setters: {paths: []}\n",
        );
        assert_eq!(
            errors(&text),
            [
                "imagelock.yaml:5:22: outputs.helmValues.path: out/helm overlaps kustomize.path out; give each output a directory of its own, like outputs/helm and outputs/kustomize",
                "imagelock.yaml:6:20: outputs.setters.paths: is empty; list the files and directories to rewrite, like [apps/], or remove setters:",
            ]
        );
        assert_eq!(
            errors(&mk_config(
                "outputs:\n  kustomize: {path: .}\n  helmValues: {}\n"
            )),
            [
                "imagelock.yaml:4:21: outputs.kustomize.path: is the repository root; generated files need a directory of their own, like outputs/kustomize",
                "imagelock.yaml:5:15: outputs.helmValues: missing required field \"path\"; the directory to generate into, like outputs/helm",
            ]
        );
    }

    #[test]
    fn admission_modes() {
        let config = parse(&mk_config(
            "admission:\n  default: audit\n  namespaces:\n    team-a: enforce\n    sandbox: off\n    legacy: rewrite\n",
        ));
        let admission = config.admission;
        assert_eq!(admission.default, AdmissionMode::Audit);
        assert_eq!(admission.mode_for("team-a"), AdmissionMode::Enforce);
        // YAML 1.2: `off` is a string, not a boolean.
        assert_eq!(admission.mode_for("sandbox"), AdmissionMode::Off);
        assert_eq!(admission.mode_for("legacy"), AdmissionMode::Rewrite);
        assert_eq!(admission.mode_for("elsewhere"), AdmissionMode::Audit);
        assert_eq!(
            parse(&mk_config("admission: {}\n")).admission,
            AdmissionSettings::default()
        );
        for mode in AdmissionMode::ALL {
            assert_eq!(mode.as_str().parse(), Ok(mode));
            assert_eq!(mode.to_string(), mode.as_str());
        }
    }

    #[test]
    fn bad_admission() {
        let text = mk_config(
            "admission:\n  default: enforced\n  namespaces:\n    Team-A: enforce\n    team-b: deny\n    team-c: [audit]\n  namespace: {}\n",
        );
        assert_eq!(
            errors(&text),
            [
                "imagelock.yaml:4:12: admission.default: unknown admission mode \"enforced\"; expected rewrite, enforce, audit or off; did you mean \"enforce\"?",
                "imagelock.yaml:6:5: admission.namespaces: invalid namespace \"Team-A\": expected a Kubernetes namespace name (at most 63 lowercase letters, digits and -, like team-a)",
                "imagelock.yaml:7:13: admission.namespaces[\"team-b\"]: unknown admission mode \"deny\"; expected rewrite, enforce, audit or off",
                "imagelock.yaml:8:13: admission.namespaces[\"team-c\"]: expected a string, found a list",
                "imagelock.yaml:9:3: unknown field \"namespace\" in admission; did you mean \"namespaces\"?",
            ]
        );
        assert_eq!(
            errors(&mk_config("admission: enforce\n")),
            ["imagelock.yaml:3:12: admission: expected a mapping, found the string \"enforce\""]
        );
    }

    #[test]
    fn bad_header_and_raw_sections() {
        assert_eq!(
            errors("apiVersion: imagelock.dev/v1alpha1\nkind: ImageSet\nspec: {}\n"),
            ["imagelock.yaml:2:7: kind: expected \"Config\", found \"ImageSet\""]
        );
        assert_eq!(
            errors(&mk_config("outputs: [kustomize]\nadmision: {}\n")),
            [
                "imagelock.yaml:3:10: outputs: expected a mapping, found a list",
                "imagelock.yaml:4:1: unknown field \"admision\" at the top level; did you mean \"admission\"?",
            ]
        );
        assert_eq!(
            errors(""),
            ["imagelock.yaml:1:1: the file is empty; expected repo settings with kind: Config"]
        );
    }
}

//! Tenancy: which team may do what through the config repo. Operator configuration only (the
//! daemon's config file and the chart's values), never repo content.
//!
//! ```yaml
//! tenancy:
//!   namespaces:
//!     team-a:
//!       paths: ["images/team-a/**"]          # manifests that may declare namespace team-a
//!       sources: ["quay.io/company/"]        # source repositories its images may come from
//!       credentials: [quay.io]               # entries of the daemon's registry config it may use
//!       registryConfig: /etc/imagelock/tenants/team-a/.dockerconfigjson   # its own logins
//!   sharedSets: ["images/platform/**"]       # sets whose `source:tag` pins serve every namespace
//! ```
//!
//! Without `namespaces` the repo has one team: any manifest may declare any namespace, use any
//! source and every login of the daemon. `sharedSets` is empty by default either way, so a Pod
//! only ever gets the pins its own namespace declares unless the operator shares a set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::reference::ImageRepo;

/// The tenancy section of the daemon configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Tenancy {
    /// Per namespace: who may declare it and what it may use. When any is listed, a namespace
    /// that is not listed may not be declared at all.
    pub namespaces: BTreeMap<String, NamespacePolicy>,
    /// Globs over repo paths of ImageSets (`images/platform/**`) whose `source:tag` pins apply
    /// to Pods of every namespace. Aliases stay with their own namespace.
    pub shared_sets: Vec<String>,
}

/// What one namespace may do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct NamespacePolicy {
    /// Globs over repo paths (`images/team-a/**`) of the manifests that may declare this
    /// namespace. Empty: none may.
    pub paths: Vec<String>,
    /// Source repository prefixes (`quay.io/company/`, `docker.io/library/nginx`) its images
    /// may come from. Empty: any source.
    pub sources: Vec<String>,
    /// Names of entries of the daemon's registry config (Docker `auths` keys or registry hosts)
    /// that may be used for this namespace's sources. Empty: none of them.
    pub credentials: Vec<String>,
    /// The namespace's own Docker config (a mounted `kubernetes.io/dockerconfigjson` Secret),
    /// used for its sources before the daemon's entries it may use.
    pub registry_config: Option<PathBuf>,
}

/// Why tenancy refuses something; each names the operator setting that would allow it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenancyError {
    #[error(
        "namespace {namespace} is not listed in the operator's tenancy.namespaces; ask the operator to add it"
    )]
    UnknownNamespace { namespace: String },
    #[error(
        "{path} may not declare namespace {namespace}: not matched by tenancy.namespaces.{namespace}.paths of the operator's configuration"
    )]
    PathNotAllowed { namespace: String, path: String },
    #[error(
        "namespace {namespace} may not use source {repository}: not under tenancy.namespaces.{namespace}.sources of the operator's configuration"
    )]
    SourceNotAllowed {
        namespace: String,
        repository: String,
    },
    #[error("tenancy: invalid glob {glob:?}: {reason}")]
    InvalidGlob { glob: String, reason: &'static str },
}

impl TenancyError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            TenancyError::UnknownNamespace { .. } => "unknown_namespace",
            TenancyError::PathNotAllowed { .. } => "path_not_allowed",
            TenancyError::SourceNotAllowed { .. } => "source_not_allowed",
            TenancyError::InvalidGlob { .. } => "invalid_glob",
        }
    }
}

/// Which of the daemon's logins a namespace's pulls may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialScope<'t> {
    /// One team: every login of the daemon.
    All,
    /// Only these entries (plus the namespace's own registry config, if any).
    Only(&'t [String]),
}

impl Tenancy {
    /// True when the operator lists namespaces, i.e. the repo is shared by several teams.
    pub fn is_enforced(&self) -> bool {
        !self.namespaces.is_empty()
    }

    /// Checks every glob once, at start, so a typo fails the daemon's configuration instead
    /// of silently matching nothing.
    pub fn validate(&self) -> Result<(), TenancyError> {
        let globs = self
            .namespaces
            .values()
            .flat_map(|policy| policy.paths.iter())
            .chain(&self.shared_sets);
        for glob in globs {
            check_glob(glob)?;
        }
        Ok(())
    }

    /// May the manifest at repo-relative `path` declare `namespace`?
    pub fn may_declare(&self, namespace: &str, path: &Path) -> Result<(), TenancyError> {
        if !self.is_enforced() {
            return Ok(());
        }
        let policy = self.policy(namespace)?;
        let path = repo_path(path);
        if policy.paths.iter().any(|glob| glob_matches(glob, &path)) {
            Ok(())
        } else {
            Err(TenancyError::PathNotAllowed {
                namespace: namespace.to_owned(),
                path,
            })
        }
    }

    /// May `namespace` pull from `source`? Prefixes match whole path segments:
    /// `quay.io/company` allows `quay.io/company/web`, not `quay.io/company-evil/web`.
    pub fn may_pull(&self, namespace: &str, source: &ImageRepo) -> Result<(), TenancyError> {
        if !self.is_enforced() {
            return Ok(());
        }
        let policy = self.policy(namespace)?;
        let full = format!("{}/{}", source.registry, source.repository);
        if policy.sources.is_empty()
            || policy
                .sources
                .iter()
                .any(|prefix| source_prefix_matches(prefix, &full))
        {
            Ok(())
        } else {
            Err(TenancyError::SourceNotAllowed {
                namespace: namespace.to_owned(),
                repository: full,
            })
        }
    }

    /// The daemon's logins `namespace` may use. A namespace unknown to an enforced tenancy
    /// gets none (it cannot declare anything anyway).
    pub fn credentials_for(&self, namespace: &str) -> CredentialScope<'_> {
        if !self.is_enforced() {
            return CredentialScope::All;
        }
        match self.namespaces.get(namespace) {
            Some(policy) => CredentialScope::Only(&policy.credentials),
            None => CredentialScope::Only(&[]),
        }
    }

    /// The namespace's own Docker config file, if the operator gave it one.
    pub fn registry_config_for(&self, namespace: &str) -> Option<&Path> {
        self.namespaces
            .get(namespace)
            .and_then(|policy| policy.registry_config.as_deref())
    }

    /// Do the `source:tag` pins of the ImageSet at `path` serve Pods of every namespace?
    pub fn is_shared(&self, path: &Path) -> bool {
        let path = repo_path(path);
        self.shared_sets
            .iter()
            .any(|glob| glob_matches(glob, &path))
    }

    fn policy(&self, namespace: &str) -> Result<&NamespacePolicy, TenancyError> {
        self.namespaces
            .get(namespace)
            .ok_or_else(|| TenancyError::UnknownNamespace {
                namespace: namespace.to_owned(),
            })
    }
}

/// A repo-relative path with `/` separators, as globs are written.
fn repo_path(path: &Path) -> String {
    path.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

fn source_prefix_matches(prefix: &str, full: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    !prefix.is_empty()
        && full
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn check_glob(glob: &str) -> Result<(), TenancyError> {
    let invalid = |reason| TenancyError::InvalidGlob {
        glob: glob.to_owned(),
        reason,
    };
    if glob.is_empty() {
        return Err(invalid("empty"));
    }
    if glob.starts_with('/') {
        return Err(invalid(
            "globs are relative to the repo root, like images/team-a/**",
        ));
    }
    for segment in glob.split('/') {
        if segment == ".." || segment == "." {
            return Err(invalid("`.` and `..` segments match nothing"));
        }
        if segment.contains("**") && segment != "**" {
            return Err(invalid("`**` must be a whole path segment"));
        }
    }
    Ok(())
}

/// Matches `/`-separated globs: `*` and `?` within one segment, `**` any number of segments.
fn glob_matches(glob: &str, path: &str) -> bool {
    let pattern: Vec<&str> = glob.split('/').collect();
    let segments: Vec<&str> = path.split('/').collect();
    segments_match(&pattern, &segments)
}

fn segments_match(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|skip| segments_match(rest, &path[skip..])),
        Some((first, rest)) => path.split_first().is_some_and(|(segment, tail)| {
            segment_matches(first, segment) && segments_match(rest, tail)
        }),
    }
}

/// `*` any run of characters, `?` one character; iterative so a hostile path cannot make it
/// exponential.
fn segment_matches(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            backtrack = Some((pi, ti));
            pi += 1;
        } else if let Some((star, matched)) = backtrack {
            pi = star + 1;
            ti = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_tenancy() -> Tenancy {
        let mut namespaces = BTreeMap::new();
        namespaces.insert(
            "team-a".to_owned(),
            NamespacePolicy {
                paths: vec!["images/team-a/**".into()],
                sources: vec!["quay.io/company/".into()],
                credentials: vec!["quay.io".into()],
                registry_config: None,
            },
        );
        namespaces.insert(
            "team-b".to_owned(),
            NamespacePolicy {
                paths: vec!["images/team-b/*.yaml".into()],
                ..NamespacePolicy::default()
            },
        );
        Tenancy {
            namespaces,
            shared_sets: vec!["images/platform/**".into()],
        }
    }

    #[test]
    fn without_namespaces_everything_is_one_team_but_nothing_is_shared() {
        let tenancy = Tenancy::default();
        let source = ImageRepo::parse("quay.io/other/x").unwrap();
        assert!(
            tenancy
                .may_declare("any", Path::new("images/x.yaml"))
                .is_ok()
        );
        assert!(tenancy.may_pull("any", &source).is_ok());
        assert_eq!(tenancy.credentials_for("any"), CredentialScope::All);
        assert!(!tenancy.is_shared(Path::new("images/platform/base.yaml")));
    }

    #[test]
    fn paths_decide_who_may_declare_a_namespace() {
        let tenancy = mk_tenancy();
        assert!(
            tenancy
                .may_declare("team-a", Path::new("images/team-a/deep/web.yaml"))
                .is_ok()
        );
        assert!(matches!(
            tenancy.may_declare("team-a", Path::new("images/team-b/web.yaml")),
            Err(TenancyError::PathNotAllowed { .. })
        ));
        assert!(
            tenancy
                .may_declare("team-b", Path::new("images/team-b/app.yaml"))
                .is_ok()
        );
        // `*` stays within one segment.
        assert!(
            tenancy
                .may_declare("team-b", Path::new("images/team-b/sub/app.yaml"))
                .is_err()
        );
        assert!(matches!(
            tenancy.may_declare("team-evil", Path::new("images/team-a/x.yaml")),
            Err(TenancyError::UnknownNamespace { .. })
        ));
    }

    #[test]
    fn source_prefixes_match_whole_segments() {
        let tenancy = mk_tenancy();
        let ok = ImageRepo::parse("quay.io/company/web").unwrap();
        let lookalike = ImageRepo::parse("quay.io/company-evil/web").unwrap();
        let other = ImageRepo::parse("docker.io/library/nginx").unwrap();
        assert!(tenancy.may_pull("team-a", &ok).is_ok());
        assert!(tenancy.may_pull("team-a", &lookalike).is_err());
        assert!(tenancy.may_pull("team-a", &other).is_err());
        // No `sources`: any.
        assert!(tenancy.may_pull("team-b", &other).is_ok());
    }

    #[test]
    fn credentials_are_only_those_listed() {
        let tenancy = mk_tenancy();
        assert_eq!(
            tenancy.credentials_for("team-a"),
            CredentialScope::Only(&["quay.io".to_owned()])
        );
        assert_eq!(
            tenancy.credentials_for("team-b"),
            CredentialScope::Only(&[])
        );
        assert_eq!(
            tenancy.credentials_for("nobody"),
            CredentialScope::Only(&[])
        );
    }

    #[test]
    fn shared_sets_by_glob() {
        let tenancy = mk_tenancy();
        assert!(tenancy.is_shared(Path::new("images/platform/base.yaml")));
        assert!(!tenancy.is_shared(Path::new("images/team-a/web.yaml")));
    }

    #[test]
    fn globs() {
        assert!(glob_matches("images/**", "images/a/b/c.yaml"));
        assert!(glob_matches("images/**/web.yaml", "images/web.yaml"));
        assert!(glob_matches("images/*/web.y?ml", "images/a/web.yaml"));
        assert!(!glob_matches("images/*/web.yaml", "images/a/b/web.yaml"));
        assert!(segment_matches("a*b*c", "axxbyyc"));
        assert!(!segment_matches("a*b*c", "axxbyy"));
        // Linear even for a pathological pattern.
        let long = "a".repeat(10_000);
        assert!(!segment_matches("*a*a*a*a*a*a*a*b", &long));
        assert!(check_glob("images/**").is_ok());
        assert!(check_glob("/etc/**").is_err());
        assert!(check_glob("images/a**").is_err());
        assert!(check_glob("../x").is_err());
        assert!(Tenancy::default().validate().is_ok());
        assert!(mk_tenancy().validate().is_ok());
    }

    #[test]
    fn parses_from_the_daemon_config_yaml() {
        let yaml = "namespaces:\n  team-a:\n    paths: [\"images/team-a/**\"]\n    registryConfig: /etc/x.json\nsharedSets: [\"images/platform/**\"]\n";
        let tenancy: Tenancy = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(
            tenancy.registry_config_for("team-a"),
            Some(Path::new("/etc/x.json"))
        );
        assert!(serde_saphyr::from_str::<Tenancy>("namespacez: {}\n").is_err());
    }
}

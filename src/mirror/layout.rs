//! Where an image goes in the mirror: `imagelock.yaml` `mirror:` applied to an image entry.
//!
//! Two layouts, as Tagger had them: one repository per image (`{namespace}/{name}`), or
//! everything in one repository with the image named by a tag prefix (`{namespace}-{name}`).

use crate::manifest::{MirrorLayout, MirrorTarget};
use crate::reference::{ImageRepo, ReferenceError, is_valid_tag};

/// An image entry's place in the mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub repo: ImageRepo,
    /// In the single-repository layout, tags are `<prefix>-<tag>`.
    tag_prefix: Option<String>,
}

impl Placement {
    /// The mirror's name for a source tag.
    pub fn tag(&self, tag: &str) -> Result<String, ReferenceError> {
        let mirrored = match &self.tag_prefix {
            Some(prefix) => format!("{prefix}-{tag}"),
            None => tag.to_owned(),
        };
        if is_valid_tag(&mirrored) {
            Ok(mirrored)
        } else {
            Err(ReferenceError::Tag(mirrored))
        }
    }

    /// The repository as the lock's `mirror:` field shows it.
    pub fn lock_name(&self) -> String {
        self.repo.to_string()
    }
}

/// The placement of image `name` of namespace `namespace`.
pub fn place(
    target: &MirrorTarget,
    namespace: &str,
    name: &str,
) -> Result<Placement, ReferenceError> {
    let fill = |template: &str| {
        template
            .replace("{namespace}", namespace)
            .replace("{name}", name)
    };
    let (repository, tag_prefix) = match &target.layout {
        MirrorLayout::PerImage { template } => (fill(template), None),
        MirrorLayout::Single {
            repository,
            tag_prefix,
        } => (repository.clone(), Some(fill(tag_prefix))),
    };
    let repo = ImageRepo::parse(&format!("{}/{repository}", target.registry))?;
    Ok(Placement { repo, tag_prefix })
}

/// Whether the places `layout` gives tell namespaces apart, as tenancy needs: otherwise one
/// namespace's image could take another's mirror tag (`{namespace}-{name}` makes namespace
/// `payments` with alias `api-web` and namespace `payments-api` with alias `web` the same
/// `payments-api-web-1.0`). It does when the character after `{namespace}` (and after
/// `{name}`, when that comes first) is one neither can contain: `/`, `_` or `.` after a
/// namespace, `/` or `_` after an alias; the end of a repository template counts, the end of
/// a tag prefix does not (a `-` and the tag follow it).
pub fn check_separates_namespaces(layout: &MirrorLayout) -> Result<(), String> {
    let (template, end_separates) = match layout {
        MirrorLayout::PerImage { template } => (template, true),
        MirrorLayout::Single { tag_prefix, .. } => (tag_prefix, false),
    };
    let in_namespace = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    let in_alias = |c: char| in_namespace(c) || c == '.';
    let separated = |placeholder: &str, inside: &dyn Fn(char) -> bool| {
        let Some(at) = template.find(placeholder) else {
            return false;
        };
        match template[at + placeholder.len()..].chars().next() {
            None => end_separates,
            Some('{') => false,
            Some(c) => !inside(c),
        }
    };
    let name_first = match (template.find("{name}"), template.find("{namespace}")) {
        (Some(name), Some(namespace)) => name < namespace,
        _ => false,
    };
    if separated("{namespace}", &in_namespace) && (!name_first || separated("{name}", &in_alias)) {
        Ok(())
    } else {
        Err(format!(
            "mirror layout {template:?} does not keep namespaces apart, which the operator's tenancy needs: two namespaces could get the same mirror tag; put /, _ or . right after {{namespace}}, like \"{{namespace}}/{{name}}\" or tagPrefix: \"{{namespace}}_{{name}}\""
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_target(layout: MirrorLayout) -> MirrorTarget {
        MirrorTarget {
            registry: "registry.internal:5000".into(),
            layout,
            position: Default::default(),
        }
    }

    #[test]
    fn a_layout_for_many_teams_tells_namespaces_apart() {
        let per_image = |t: &str| MirrorLayout::PerImage { template: t.into() };
        let single = |p: &str| MirrorLayout::Single {
            repository: "all".into(),
            tag_prefix: p.into(),
        };
        for apart in [
            per_image("{namespace}/{name}"),
            per_image("mirror/{namespace}/{name}"),
            per_image("{name}/{namespace}"),
            per_image("m/{namespace}.{name}"),
            single("{namespace}_{name}"),
            single("{namespace}.{name}"),
            single("{name}_{namespace}_x"),
        ] {
            assert!(check_separates_namespaces(&apart).is_ok(), "{apart:?}");
        }
        for shared in [
            single("{namespace}-{name}"),
            single("{name}_{namespace}"),
            single("{name}.{namespace}_x"),
            per_image("mirror/{namespace}-{name}"),
            per_image("{namespace}{name}"),
        ] {
            let err = check_separates_namespaces(&shared).unwrap_err();
            assert!(err.contains("keep namespaces apart"), "{shared:?}: {err}");
        }
        // The collision the rule prevents.
        let target = |layout| MirrorTarget {
            registry: "registry.internal".into(),
            layout,
            position: Default::default(),
        };
        let shared = target(single("{namespace}-{name}"));
        let a = place(&shared, "payments", "api-web").unwrap();
        let b = place(&shared, "payments-api", "web").unwrap();
        assert_eq!(a.tag("1.0").unwrap(), b.tag("1.0").unwrap());
        let apart = target(single("{namespace}_{name}"));
        let a = place(&apart, "payments", "api-web").unwrap();
        let b = place(&apart, "payments-api", "web").unwrap();
        assert_ne!(a.tag("1.0").unwrap(), b.tag("1.0").unwrap());
    }

    #[test]
    fn one_repository_per_image() {
        let target = mk_target(MirrorLayout::PerImage {
            template: "mirror/{namespace}/{name}".into(),
        });
        let placement = place(&target, "team-a", "web").unwrap();
        assert_eq!(
            placement.lock_name(),
            "registry.internal:5000/mirror/team-a/web"
        );
        assert_eq!(placement.tag("1.4").unwrap(), "1.4");
    }

    #[test]
    fn one_repository_for_everything() {
        let target = mk_target(MirrorLayout::Single {
            repository: "all-images".into(),
            tag_prefix: "{namespace}-{name}".into(),
        });
        let placement = place(&target, "team-a", "web").unwrap();
        assert_eq!(placement.lock_name(), "registry.internal:5000/all-images");
        assert_eq!(placement.tag("latest").unwrap(), "team-a-web-latest");
        assert!(
            placement.tag(&"x".repeat(120)).is_err(),
            "tags are at most 128 characters"
        );
    }
}

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

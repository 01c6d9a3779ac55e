//! The pins every output is rendered from: per namespace and alias, where to pull from and
//! which digest each tag is held at, with one tag chosen as the alias's own.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::lock::LockFile;
use crate::manifest::{ImageSet, highest_version_first};
use crate::reference::{DOCKER_HUB, Digest, ImageRepo};

/// One pinned tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub tag: String,
    pub digest: Digest,
}

/// The pins of one alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasPins {
    pub alias: String,
    pub source: ImageRepo,
    /// Where the pinned images are pulled from: the mirror repository, or the source.
    pub repository: String,
    /// Pinned tags, the primary one first (see [`AliasPins::primary`]).
    pub pins: Vec<Pin>,
    /// Tags the manifest names (`tags:` and the tags of `digests:`), pinned or not, so that a
    /// marker naming one that failed to resolve is not reported as unknown.
    pub declared: BTreeSet<String>,
}

impl AliasPins {
    /// The alias's own pin, used where a reference names no tag (`image: web`, kustomize's
    /// alias entry, Helm values): the first tag of `tags:` that is pinned; otherwise (for
    /// `match:` and `digests:`) the highest version pinned; tags that are no versions come
    /// last, by name.
    pub fn primary(&self) -> Option<&Pin> {
        self.pins.first()
    }

    pub fn pin(&self, tag: &str) -> Option<&Pin> {
        self.pins.iter().find(|p| p.tag == tag)
    }

    /// `<repository>@<digest>`: what a pod pulls.
    pub fn reference(&self, pin: &Pin) -> String {
        format!("{}@{}", self.repository, pin.digest)
    }

    /// The names a workload may use for the source: the full name, and for Docker Hub also
    /// the short form (`nginx` for `docker.io/library/nginx`, `bitnami/redis`).
    pub fn source_names(&self) -> Vec<String> {
        let mut names = vec![self.source.to_string()];
        if self.source.registry == DOCKER_HUB {
            let short = self
                .source
                .repository
                .strip_prefix("library/")
                .unwrap_or(&self.source.repository);
            names.push(short.to_owned());
        }
        names
    }
}

/// The pins of one ImageSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetPins {
    /// The manifest, repo-relative.
    pub manifest: PathBuf,
    pub name: String,
    pub namespace: String,
    /// In manifest order.
    pub aliases: Vec<AliasPins>,
}

/// Every set's pins, sorted by manifest path (the order that breaks ties between sets).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pins {
    pub sets: Vec<SetPins>,
}

impl Pins {
    /// From each valid set and its lock as this pass leaves it.
    pub fn build(inputs: &[(&ImageSet, &LockFile)]) -> Pins {
        let mut sets: Vec<SetPins> = inputs
            .iter()
            .map(|(set, lock)| SetPins {
                manifest: set.path.clone(),
                name: set.name.clone(),
                namespace: set.namespace.clone(),
                aliases: set
                    .images
                    .iter()
                    .map(|spec| {
                        let locked = lock.images.get(&spec.name);
                        let mut rest: Vec<&String> = locked
                            .map(|l| l.tags.keys().filter(|t| !spec.tags.contains(t)).collect())
                            .unwrap_or_default();
                        rest.sort_by(|a, b| highest_version_first(a, b));
                        let pins = spec
                            .tags
                            .iter()
                            .chain(rest)
                            .filter_map(|tag| {
                                let pinned = locked?.tags.get(tag)?;
                                Some(Pin {
                                    tag: tag.clone(),
                                    digest: pinned.digest.clone(),
                                })
                            })
                            .collect();
                        AliasPins {
                            alias: spec.name.clone(),
                            source: spec.source.clone(),
                            repository: locked
                                .and_then(|l| l.mirror.clone())
                                .unwrap_or_else(|| spec.source.to_string()),
                            pins,
                            declared: spec
                                .tags
                                .iter()
                                .chain(spec.digests.values().flatten())
                                .cloned()
                                .collect(),
                        }
                    })
                    .collect(),
            })
            .collect();
        sets.sort_by(|a, b| a.manifest.cmp(&b.manifest));
        Pins { sets }
    }

    /// Namespaces with at least one set, sorted.
    pub fn namespaces(&self) -> BTreeSet<&str> {
        self.sets.iter().map(|s| s.namespace.as_str()).collect()
    }

    /// The sets of `namespace`, in manifest path order.
    pub fn in_namespace<'p>(
        &'p self,
        namespace: &'p str,
    ) -> impl Iterator<Item = &'p SetPins> + 'p {
        self.sets.iter().filter(move |s| s.namespace == namespace)
    }

    pub fn alias<'p>(&'p self, namespace: &'p str, alias: &str) -> Option<&'p AliasPins> {
        self.in_namespace(namespace)
            .flat_map(|s| &s.aliases)
            .find(|a| a.alias == alias)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;
    use crate::lock::{LockedImage, LockedTag};
    use crate::manifest::{RepoConfig, parse_image_set};

    pub(crate) fn mk_digest(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    /// A set parsed from `images` (the YAML of `spec.images`, indented by 4).
    pub(crate) fn mk_set(path: &str, namespace: &str, images: &str) -> ImageSet {
        let name = Path::new(path).file_stem().unwrap().to_string_lossy();
        let text = format!(
            "apiVersion: imagelock.dev/v1alpha1\nkind: ImageSet\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  images:\n{images}"
        );
        parse_image_set(Path::new(path), &text, &RepoConfig::default()).unwrap()
    }

    /// A lock of `set` with `pins` as (alias, tag, digest character), mirrored under
    /// `mirror/<namespace>/<alias>` when `mirror`.
    pub(crate) fn mk_lock(set: &ImageSet, pins: &[(&str, &str, char)], mirror: bool) -> LockFile {
        let mut images: BTreeMap<String, LockedImage> = BTreeMap::new();
        for (alias, tag, digest) in pins {
            let spec = set.images.iter().find(|s| s.name == *alias).unwrap();
            let image = images.entry((*alias).to_owned()).or_insert(LockedImage {
                source: spec.source.to_string(),
                mirror: mirror.then(|| format!("mirror.internal/{}/{alias}", set.namespace)),
                tags: BTreeMap::new(),
            });
            image.tags.insert(
                (*tag).to_owned(),
                LockedTag {
                    digest: mk_digest(*digest),
                    media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                    platforms: BTreeMap::new(),
                    generation: 1,
                    resolved_at: "2026-11-20T10:00:00Z".into(),
                    pinned: false,
                    history: Vec::new(),
                },
            );
        }
        LockFile {
            source: "x.yaml".into(),
            images,
        }
    }

    pub(crate) fn mk_pins(sets: &[(ImageSet, LockFile)]) -> Pins {
        let inputs: Vec<(&ImageSet, &LockFile)> = sets.iter().map(|(s, l)| (s, l)).collect();
        Pins::build(&inputs)
    }

    #[test]
    fn primary_tag_is_the_first_listed_then_the_highest_version() {
        let (a, b) = (mk_digest('a'), mk_digest('b'));
        let set = mk_set(
            "images/web.yaml",
            "team-a",
            &format!(
                "    - {{name: web, source: quay.io/company/web, tags: [stable, latest, \"1.4\"]}}
    - {{name: argocd, source: quay.io/argoproj/argocd, match: v2.13.x}}
    - name: nginx
      source: nginx
      digests: {{\"{a}\": [\"1.25\", stable], \"{b}\": [\"1.24\"]}}
"
            ),
        );
        let lock = mk_lock(
            &set,
            &[
                // `stable` failed to resolve: `latest` is the primary.
                ("web", "latest", 'a'),
                ("web", "1.4", 'b'),
                ("argocd", "v2.13.1", 'c'),
                ("argocd", "v2.13.10", 'd'),
                ("argocd", "v2.13.2", 'e'),
                ("nginx", "stable", 'a'),
                ("nginx", "1.24", 'b'),
                ("nginx", "1.25", 'a'),
            ],
            false,
        );
        let pins = mk_pins(&[(set, lock)]);
        let tags = |alias: &str| {
            pins.alias("team-a", alias)
                .unwrap()
                .pins
                .iter()
                .map(|p| p.tag.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(tags("web"), ["latest", "1.4"]);
        assert_eq!(tags("argocd"), ["v2.13.10", "v2.13.2", "v2.13.1"]);
        assert_eq!(tags("nginx"), ["1.25", "1.24", "stable"]);
        let web = pins.alias("team-a", "web").unwrap();
        assert!(web.declared.contains("stable"));
        assert_eq!(web.repository, "quay.io/company/web");
        assert_eq!(
            web.reference(web.primary().unwrap()),
            format!("quay.io/company/web@{}", mk_digest('a'))
        );
        assert_eq!(
            pins.alias("team-a", "nginx").unwrap().source_names(),
            ["docker.io/library/nginx", "nginx"]
        );
        assert!(pins.alias("team-b", "web").is_none());
    }

    #[test]
    fn mirrored_pins_pull_from_the_mirror() {
        let set = mk_set(
            "images/web.yaml",
            "team-a",
            "    - {name: web, source: quay.io/company/web, tags: [latest]}\n",
        );
        let lock = mk_lock(&set, &[("web", "latest", 'a')], true);
        let pins = mk_pins(&[(set, lock)]);
        assert_eq!(
            pins.alias("team-a", "web").unwrap().repository,
            "mirror.internal/team-a/web"
        );
    }
}

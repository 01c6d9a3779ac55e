//! Builders shared by the tests of the pins, the outputs and the webhook's index, and the
//! tests of the derivation itself: the alias tag rule, the tenancy rules, locks that
//! disagree with their manifest.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::lock::{LockedImage, LockedTag};
use crate::manifest::{MirrorLayout, RepoConfig, parse_image_set};
use crate::tenancy::NamespacePolicy;

pub(crate) fn mk_digest(c: char) -> Digest {
    format!("sha256:{}", c.to_string().repeat(64))
        .parse()
        .unwrap()
}

/// The mirror target of every test: `mirror.internal/<namespace>/<alias>`.
pub(crate) fn mk_target() -> MirrorTarget {
    MirrorTarget {
        registry: "mirror.internal".into(),
        layout: MirrorLayout::PerImage {
            template: "{namespace}/{name}".into(),
        },
        position: crate::manifest::Position { line: 1, col: 1 },
    }
}

/// A set parsed from `images` (the YAML of `spec.images`, indented by 4); entries are
/// mirrored by default when `mirror`.
pub(crate) fn mk_set_with(path: &str, namespace: &str, images: &str, mirror: bool) -> ImageSet {
    let name = Path::new(path).file_stem().unwrap().to_string_lossy();
    let text = format!(
        "apiVersion: imagelock.dev/v1alpha1\nkind: ImageSet\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  mirror: {mirror}\n  images:\n{images}"
    );
    let config = RepoConfig {
        mirror: Some(mk_target()),
        ..RepoConfig::default()
    };
    parse_image_set(Path::new(path), &text, &config).unwrap()
}

/// [`mk_set_with`], not mirrored.
pub(crate) fn mk_set(path: &str, namespace: &str, images: &str) -> ImageSet {
    mk_set_with(path, namespace, images, false)
}

/// The lock imagelock would write for `set` with `pins` as (alias, tag, digest character):
/// the manifest's source, and the mirror repository for mirrored entries.
pub(crate) fn mk_lock(set: &ImageSet, pins: &[(&str, &str, char)]) -> LockFile {
    let mut images: BTreeMap<String, LockedImage> = BTreeMap::new();
    for (alias, tag, digest) in pins {
        let spec = set.images.iter().find(|s| s.name == *alias).unwrap();
        let image = images.entry((*alias).to_owned()).or_insert(LockedImage {
            source: spec.source.to_string(),
            mirror: spec
                .mirror
                .then(|| format!("mirror.internal/{}/{alias}", set.namespace)),
            tags: BTreeMap::new(),
        });
        image
            .tags
            .insert((*tag).to_owned(), mk_locked_tag(mk_digest(*digest)));
    }
    LockFile {
        source: set.path.file_name().unwrap().to_string_lossy().into_owned(),
        images,
    }
}

pub(crate) fn mk_locked_tag(digest: Digest) -> LockedTag {
    LockedTag {
        digest,
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        platforms: BTreeMap::new(),
        generation: 1,
        resolved_at: "2026-11-20T10:00:00Z".into(),
        pinned: false,
        history: Vec::new(),
    }
}

pub(crate) fn mk_pins_with(sets: &[(ImageSet, LockFile)], tenancy: &Tenancy) -> Pins {
    let target = mk_target();
    Pins::build(
        sets.iter().map(|(s, l)| (s, l.clone())),
        Some(&target),
        tenancy,
    )
}

pub(crate) fn mk_pins(sets: &[(ImageSet, LockFile)]) -> Pins {
    mk_pins_with(sets, &Tenancy::default())
}

fn tags(pins: &Pins, namespace: &str, alias: &str) -> Vec<String> {
    pins.alias(namespace, alias)
        .unwrap()
        .pins
        .iter()
        .map(|p| p.tag.clone())
        .collect()
}

/// The digest `image: <alias>` gets in `namespace`.
fn alias_digest(pins: &Pins, namespace: &str, alias: &str) -> Digest {
    let alias = pins.alias(namespace, alias).unwrap();
    alias.alias_pin().unwrap().digest.clone()
}

fn alias_tag_of(pins: &Pins, namespace: &str, alias: &str) -> Option<String> {
    pins.alias(namespace, alias).unwrap().alias_tag.clone()
}

#[test]
fn the_alias_means_latest_when_followed_else_the_first_tag_else_the_highest_version() {
    let (a, b) = (mk_digest('a'), mk_digest('b'));
    let set = mk_set(
        "images/web.yaml",
        "team-a",
        &format!(
            "    - {{name: web, source: quay.io/company/web, tags: [stable, latest, \"1.4\"]}}
    - {{name: api, source: quay.io/company/api, tags: [\"2.0\", \"1.0\"]}}
    - {{name: argocd, source: quay.io/argoproj/argocd, match: v2.13.x}}
    - name: nginx
      source: nginx
      digests: {{\"{a}\": [\"1.25\"], \"{b}\": [\"1.24\"]}}
    - name: redis
      source: redis
      digests: {{\"{a}\": [\"7\", latest]}}
"
        ),
    );
    let lock = mk_lock(
        &set,
        &[
            ("web", "stable", 'a'),
            ("web", "latest", 'b'),
            ("web", "1.4", 'c'),
            ("api", "1.0", 'a'),
            ("api", "2.0", 'b'),
            ("argocd", "v2.13.1", 'c'),
            ("argocd", "v2.13.10", 'd'),
            ("argocd", "v2.13.2", 'e'),
            ("nginx", "1.24", 'b'),
            ("nginx", "1.25", 'a'),
            ("redis", "7", 'a'),
            ("redis", "latest", 'a'),
        ],
    );
    let pins = mk_pins(&[(set, lock)]);
    // `latest` wins over the order of `tags:` (kustomize used to take `stable` here).
    assert_eq!(
        alias_tag_of(&pins, "team-a", "web").as_deref(),
        Some("latest")
    );
    let web = pins.alias("team-a", "web").unwrap();
    assert_eq!(web.alias_pin().unwrap().digest, mk_digest('b'));
    assert_eq!(alias_tag_of(&pins, "team-a", "api").as_deref(), Some("2.0"));
    assert_eq!(
        alias_tag_of(&pins, "team-a", "argocd").as_deref(),
        Some("v2.13.10")
    );
    assert_eq!(
        alias_tag_of(&pins, "team-a", "nginx").as_deref(),
        Some("1.25")
    );
    assert_eq!(
        alias_tag_of(&pins, "team-a", "redis").as_deref(),
        Some("latest")
    );
    assert_eq!(tags(&pins, "team-a", "web"), ["1.4", "latest", "stable"]);
}

#[test]
fn an_alias_whose_tag_is_not_pinned_yet_means_nothing() {
    let set = mk_set(
        "images/web.yaml",
        "team-a",
        "    - {name: web, source: quay.io/company/web, tags: [latest, \"1.4\"]}\n",
    );
    // `latest` failed to resolve: `web` does not quietly become `web:1.4`.
    let lock = mk_lock(&set, &[("web", "1.4", 'a')]);
    let pins = mk_pins(&[(set, lock)]);
    let web = pins.alias("team-a", "web").unwrap();
    assert_eq!(web.alias_tag.as_deref(), Some("latest"));
    assert_eq!(web.alias_pin(), None);
    assert_eq!(web.pin("1.4").unwrap().digest, mk_digest('a'));
    assert!(web.declared.contains("latest"));
}

#[test]
fn where_pods_pull_from_comes_from_the_manifest_and_config_never_the_lock() {
    let set = mk_set_with(
        "images/team-a/web.yaml",
        "team-a",
        "    - {name: web, source: quay.io/company/web, tags: [latest]}\n    - {name: api, source: quay.io/company/api, tags: [latest]}\n",
        true,
    );
    let mut lock = mk_lock(&set, &[("web", "latest", 'a'), ("api", "latest", 'b')]);
    let pins = mk_pins(&[(set.clone(), lock.clone())]);
    let web = pins.alias("team-a", "web").unwrap();
    assert_eq!(web.repository, "mirror.internal/team-a/web");
    assert_eq!(
        web.reference(web.alias_pin().unwrap()),
        format!("mirror.internal/team-a/web@{}", mk_digest('a'))
    );

    // A hand-edited `mirror:` (another host) serves nothing and is named stale; the other
    // entry of the lock is untouched.
    lock.images.get_mut("web").unwrap().mirror = Some("evil.example/team-a/web".into());
    let pins = mk_pins(&[(set.clone(), lock.clone())]);
    assert!(pins.alias("team-a", "web").unwrap().pins.is_empty());
    assert_eq!(pins.alias("team-a", "api").unwrap().pins.len(), 1);
    let stale = stale_aliases(Some(&mk_target()), &set, &lock);
    assert_eq!(stale.len(), 1, "{stale:?}");
    assert_eq!(stale[0].0, "web");
    assert!(stale[0].1.contains("evil.example"), "{stale:?}");

    // A lock of another source (the manifest moved on), an undeclared tag, a lock written
    // for another manifest file: none is served.
    let mut moved = mk_lock(&set, &[("web", "latest", 'a')]);
    moved.images.get_mut("web").unwrap().source = "quay.io/other/web".into();
    assert!(
        stale_aliases(Some(&mk_target()), &set, &moved)[0]
            .1
            .contains("source")
    );
    let pins = mk_pins(&[(set.clone(), moved)]);
    assert!(pins.alias("team-a", "web").unwrap().pins.is_empty());

    let mut extra = mk_lock(&set, &[("web", "latest", 'a')]);
    let evil = mk_locked_tag(mk_digest('e'));
    extra
        .images
        .get_mut("web")
        .unwrap()
        .tags
        .insert("debug".into(), evil);
    assert!(
        mk_pins(&[(set.clone(), extra)])
            .alias("team-a", "web")
            .unwrap()
            .pins
            .is_empty()
    );

    let mut other_file = mk_lock(&set, &[("web", "latest", 'a')]);
    other_file.source = "web.yml".into();
    assert!(
        mk_pins(&[(set.clone(), other_file.clone())])
            .alias("team-a", "web")
            .unwrap()
            .pins
            .is_empty()
    );
    assert_eq!(
        stale_aliases(Some(&mk_target()), &set, &other_file).len(),
        1
    );
}

#[test]
fn digests_entries_serve_only_the_digest_the_manifest_fixes() {
    let (a, b) = (mk_digest('a'), mk_digest('b'));
    let set = mk_set(
        "images/nginx.yaml",
        "team-a",
        &format!(
            "    - name: nginx\n      source: nginx\n      digests: {{\"{a}\": [\"1.25\"]}}\n"
        ),
    );
    let good = mk_lock(&set, &[("nginx", "1.25", 'a')]);
    assert!(stale_aliases(Some(&mk_target()), &set, &good).is_empty());
    let mut forged = good.clone();
    forged
        .images
        .get_mut("nginx")
        .unwrap()
        .tags
        .get_mut("1.25")
        .unwrap()
        .digest = b;
    assert_eq!(stale_aliases(Some(&mk_target()), &set, &forged).len(), 1);
    assert!(
        mk_pins(&[(set, forged)])
            .alias("team-a", "nginx")
            .unwrap()
            .pins
            .is_empty()
    );
}

pub(crate) fn mk_tenancy() -> Tenancy {
    let policy = |glob: &str| NamespacePolicy {
        paths: vec![glob.into()],
        ..NamespacePolicy::default()
    };
    Tenancy {
        namespaces: [
            ("team-a".to_owned(), policy("images/team-a/**")),
            ("team-b".to_owned(), policy("images/team-b/**")),
            ("platform".to_owned(), policy("images/platform/**")),
            ("team-evil".to_owned(), policy("images/team-evil/**")),
        ]
        .into(),
        shared_sets: vec!["images/platform/**".into()],
    }
}

/// team-a, team-b and a shared platform set all pin `quay.io/company/web:latest`;
/// `busybox:1.36` only team-b and `nginx:1.25` only the platform.
pub(crate) fn three_teams() -> Vec<(ImageSet, LockFile)> {
    let web = "    - {name: web, source: quay.io/company/web, tags: [latest]}\n";
    let a = mk_set_with("images/team-a/web.yaml", "team-a", web, true);
    let b = mk_set_with(
        "images/team-b/web.yaml",
        "team-b",
        &format!("{web}    - {{name: busybox, source: busybox, tags: [\"1.36\"]}}\n"),
        true,
    );
    let platform = mk_set_with(
        "images/platform/base.yaml",
        "platform",
        &format!("{web}    - {{name: nginx, source: nginx, tags: [\"1.25\"]}}\n"),
        true,
    );
    let lock_a = mk_lock(&a, &[("web", "latest", 'a')]);
    let lock_b = mk_lock(&b, &[("web", "latest", 'b'), ("busybox", "1.36", 'c')]);
    let lock_p = mk_lock(&platform, &[("web", "latest", 'f'), ("nginx", "1.25", 'd')]);
    vec![(a, lock_a), (b, lock_b), (platform, lock_p)]
}

#[test]
fn a_namespace_gets_its_own_pins_then_shared_ones_never_another_namespaces() {
    let pins = mk_pins_with(&three_teams(), &mk_tenancy());
    let web = ImageRepo::parse("quay.io/company/web").unwrap();
    let busybox = ImageRepo::parse("busybox").unwrap();
    let nginx = ImageRepo::parse("nginx").unwrap();
    let got = |namespace: &str, source: &ImageRepo, tag: &str| {
        pins.source(namespace, source, tag)
            .map(|(alias, pin)| alias.reference(pin))
    };
    // Its own pin first, in its own mirror repository.
    assert_eq!(
        got("team-a", &web, "latest"),
        Some(format!("mirror.internal/team-a/web@{}", mk_digest('a')))
    );
    assert_eq!(
        got("team-b", &web, "latest"),
        Some(format!("mirror.internal/team-b/web@{}", mk_digest('b')))
    );
    // Without its own: the shared set's; never another team's.
    assert_eq!(
        got("team-c", &web, "latest"),
        Some(format!("mirror.internal/platform/web@{}", mk_digest('f')))
    );
    assert_eq!(
        got("team-a", &busybox, "1.36"),
        None,
        "team-b's pin stays team-b's"
    );
    assert_eq!(
        got("team-a", &nginx, "1.25"),
        Some(format!("mirror.internal/platform/nginx@{}", mk_digest('d')))
    );

    // Nothing shared (the default): only a namespace's own pins.
    let unshared = Tenancy {
        shared_sets: Vec::new(),
        ..mk_tenancy()
    };
    let pins = mk_pins_with(&three_teams(), &unshared);
    assert!(pins.source("team-c", &web, "latest").is_none());
    assert!(pins.source("team-a", &nginx, "1.25").is_none());
    assert!(
        mk_pins(&three_teams())
            .source("team-c", &web, "latest")
            .is_none()
    );
}

#[test]
fn aliases_never_cross_namespaces_not_even_from_shared_sets() {
    let pins = mk_pins_with(&three_teams(), &mk_tenancy());
    assert!(pins.alias("team-a", "nginx").is_none());
    assert!(pins.alias("team-a", "busybox").is_none());
    assert!(pins.alias("platform", "nginx").is_some());
    assert_eq!(alias_digest(&pins, "team-b", "web"), mk_digest('b'));
}

#[test]
fn a_manifest_that_may_not_declare_its_namespace_is_refused_and_serves_nothing() {
    let tenancy = mk_tenancy();
    let web = "    - {name: web, source: quay.io/company/web, tags: [latest]}\n";
    // team-evil's manifest claims team-b, from its own directory.
    let evil = mk_set("images/team-evil/web.yaml", "team-b", web);
    let mut sets = three_teams();
    let evil_lock = mk_lock(&evil, &[("web", "latest", 'e')]);
    sets.insert(0, (evil.clone(), evil_lock.clone()));
    let repo = LoadedRepo {
        config: Some(RepoConfig::default()),
        sets: sets.iter().map(|(s, _)| s.clone()).collect(),
        diagnostics: Vec::new(),
    };
    let admitted = admit(repo, &tenancy);
    assert_eq!(admitted.sets.len(), 3);
    assert_eq!(admitted.refused.len(), 1);
    let refusal = admitted.refused[0].to_string();
    assert!(
        refusal.starts_with("images/team-evil/web.yaml:1:1: metadata.namespace: "),
        "{refusal}"
    );
    assert!(
        refusal.contains("tenancy.namespaces.team-b.paths"),
        "{refusal}"
    );
    assert_eq!(admitted.all_diagnostics().len(), 1);

    // Even handed to the build, it contributes nothing: team-b keeps its own alias.
    let pins = mk_pins_with(&sets, &tenancy);
    assert!(pins.sets.iter().all(|s| s.manifest != evil.path));
    assert_eq!(alias_digest(&pins, "team-b", "web"), mk_digest('b'));
}

#[test]
fn a_refused_manifest_cannot_shadow_another_namespaces_alias() {
    // team-a's manifest claims team-b's alias from a path that sorts before team-b's: it is
    // refused, and team-b's own manifest stays, without a diagnostic.
    let dir = tempfile::tempdir().unwrap();
    let manifest = |namespace: &str| {
        format!(
            "apiVersion: imagelock.dev/v1alpha1\nkind: ImageSet\nmetadata: {{name: web, namespace: {namespace}}}\nspec:\n  images:\n    - {{name: web, source: quay.io/company/web, tags: [latest]}}\n"
        )
    };
    for (path, namespace) in [
        ("images/team-a/aaa.yaml", "team-b"),
        ("images/team-b/web.yaml", "team-b"),
    ] {
        let full = dir.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, manifest(namespace)).unwrap();
    }
    let admitted = load(dir.path(), &mk_tenancy()).unwrap();
    let kept: Vec<&Path> = admitted.sets.iter().map(|s| s.path.as_path()).collect();
    assert_eq!(kept, [Path::new("images/team-b/web.yaml")]);
    let diagnostics: Vec<String> = admitted
        .all_diagnostics()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
    assert!(
        diagnostics[0].starts_with("images/team-a/aaa.yaml:1:1: metadata.namespace: "),
        "{diagnostics:?}"
    );

    // Without tenancy, two manifests of one namespace still compete: the later one goes.
    let admitted = load(dir.path(), &Tenancy::default()).unwrap();
    let kept: Vec<&Path> = admitted.sets.iter().map(|s| s.path.as_path()).collect();
    assert_eq!(kept, [Path::new("images/team-a/aaa.yaml")]);
    assert!(admitted.diagnostics[0].message.contains("duplicate alias"));
}

#[test]
fn a_source_the_namespace_may_not_use_is_not_served() {
    let mut tenancy = mk_tenancy();
    if let Some(policy) = tenancy.namespaces.get_mut("team-a") {
        policy.sources = vec!["quay.io/company".into()];
    }
    let set = mk_set(
        "images/team-a/web.yaml",
        "team-a",
        "    - {name: web, source: quay.io/company/web, tags: [latest]}\n    - {name: other, source: quay.io/other/web, tags: [latest]}\n",
    );
    let lock = mk_lock(&set, &[("web", "latest", 'a'), ("other", "latest", 'b')]);
    let pins = mk_pins_with(&[(set, lock)], &tenancy);
    assert_eq!(alias_digest(&pins, "team-a", "web"), mk_digest('a'));
    assert!(pins.alias("team-a", "other").unwrap().pins.is_empty());
}

#[test]
fn two_manifests_of_one_lock_file_are_both_refused() {
    let web = "    - {name: web, source: quay.io/company/web, tags: [latest]}\n";
    let yaml = mk_set("images/team-b/app.yaml", "team-b", web);
    let yml = mk_set("images/team-b/app.yml", "team-b", web);
    let other = mk_set("images/team-b/other.yaml", "team-b", web);
    let repo = LoadedRepo {
        config: Some(RepoConfig::default()),
        sets: vec![yaml, yml, other],
        diagnostics: Vec::new(),
    };
    let admitted = admit(repo, &Tenancy::default());
    assert_eq!(admitted.sets.len(), 1);
    assert_eq!(admitted.sets[0].path, Path::new("images/team-b/other.yaml"));
    let messages: Vec<String> = admitted.refused.iter().map(ToString::to_string).collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(
        messages[0].contains("images/team-b/app.lock.yaml"),
        "{messages:?}"
    );

    // A refused neighbour does not take the other down: team-evil's `app.yml` in team-b's
    // directory may not declare team-evil there, and team-b's `app.yaml` stays.
    let evil = mk_set("images/team-b/app.yml", "team-evil", web);
    let repo = LoadedRepo {
        config: Some(RepoConfig::default()),
        sets: vec![mk_set("images/team-b/app.yaml", "team-b", web), evil],
        diagnostics: Vec::new(),
    };
    let admitted = admit(repo, &mk_tenancy());
    assert_eq!(admitted.sets.len(), 1);
    assert_eq!(admitted.sets[0].namespace, "team-b");
    assert_eq!(admitted.refused.len(), 1);
}

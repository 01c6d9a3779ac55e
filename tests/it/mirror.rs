//! `lock`, `mirror` and `copy` with a mirror registry: real registries, the real binary.

use std::path::Path;
use std::process::Output;

use imagelock::lock::{self, LockFile};
use imagelock::reference::Digest;

use crate::common::{
    ConfigRepo, Fault, FaultProxy, ImageSpec, Pusher, TestRegistry, image_set, operator_command,
    push_image, push_index, skopeo_digest,
};

/// The binary with `insecure` as the operator's plain-HTTP and mirror registries.
async fn imagelock(args: &[&str], insecure: &[&str]) -> Output {
    operator_command(args, insecure)
        .output()
        .await
        .expect("run imagelock")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn read_lock(dir: &Path, path: &str) -> LockFile {
    lock::read(&dir.join(path))
        .expect("readable lock")
        .unwrap_or_else(|| panic!("{path} was not written"))
}

fn mirrored_config(mirror: &str) -> String {
    format!(
        "apiVersion: imagelock.dev/v1alpha1\nkind: Config\nmirror:\n  registry: \"{mirror}\"\n  layout: \"{{namespace}}/{{name}}\"\ndefaults:\n  mirror: true\n"
    )
}

#[tokio::test]
async fn lock_mirrors_before_it_pins_and_mirror_reports_the_three_sets() {
    let source = TestRegistry::start();
    let mirror = TestRegistry::start();
    let (src, dst) = (source.host(), mirror.host());
    let index = push_index(
        &src,
        "company/web",
        "latest",
        &["linux/amd64", "linux/arm64"],
    )
    .await;
    let images =
        format!("    - name: web\n      source: {src}/company/web\n      tags: [latest]\n");
    let repo = ConfigRepo::new(&[
        ("imagelock.yaml", mirrored_config(&dst)),
        ("images/web.yaml", image_set("team-a", "web", &images)),
    ]);
    let dir = repo.work.to_str().expect("utf-8");

    // Before: the mirror lacks the image, the source has it.
    let dry = imagelock(&["mirror", "--dry-run", dir], &[&src, &dst]).await;
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    assert!(
        text(&dry.stdout).contains("already present (0)"),
        "{}",
        text(&dry.stdout)
    );

    let output = imagelock(&["lock", dir], &[&src, &dst]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let locked = read_lock(&repo.work, "images/web.lock.yaml");
    let web = &locked.images["web"];
    assert_eq!(
        web.mirror.as_deref(),
        Some(format!("{dst}/team-a/web").as_str())
    );
    assert_eq!(web.tags["latest"].digest, index.digest);
    // The mirror holds the same bytes under the same digest, tag included.
    assert_eq!(
        skopeo_digest(&dst, "team-a/web", "latest").await,
        index.digest
    );
    for child in index.children.values() {
        assert_eq!(
            skopeo_digest(&dst, "team-a/web", child.as_str()).await,
            *child
        );
    }

    let dry = imagelock(&["mirror", "--dry-run", dir], &[&src, &dst]).await;
    let plan = text(&dry.stdout);
    assert!(
        plan.contains("already present (1)") && plan.contains("to copy (0)"),
        "{plan}"
    );
    assert!(plan.contains("missing at source (0)"), "{plan}");
}

#[tokio::test]
async fn a_corrupt_source_keeps_the_pin_where_it_was() {
    let source = TestRegistry::start();
    let mirror = TestRegistry::start();
    let (src, dst) = (source.host(), mirror.host());
    let first = push_image(
        &src,
        "company/web",
        "latest",
        ImageSpec::small("linux/amd64"),
    )
    .await;
    let proxy = FaultProxy::start(&src).await;
    let proxied = proxy.host();
    let images =
        format!("    - name: web\n      source: {proxied}/company/web\n      tags: [latest]\n");
    let repo = ConfigRepo::new(&[
        ("imagelock.yaml", mirrored_config(&dst)),
        ("images/web.yaml", image_set("team-a", "web", &images)),
    ]);
    let dir = repo.work.to_str().expect("utf-8");
    let output = imagelock(&["lock", dir], &[&proxied, &dst]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));

    // The tag moves, but the new layer arrives corrupted: the lock must not move.
    let second = push_image(
        &src,
        "company/web",
        "latest",
        ImageSpec::small("linux/amd64"),
    )
    .await;
    let layer = second.layer_digests[0].hex().to_owned();
    proxy.add_rule(
        &format!("GET /v2/company/web/blobs/sha256:{layer}"),
        Fault::CorruptBody,
        None,
    );
    let output = imagelock(&["lock", dir], &[&proxied, &dst]).await;
    assert_eq!(output.status.code(), Some(1));
    let err = text(&output.stderr);
    assert!(
        err.contains("web:latest") && err.contains("mirror"),
        "{err}"
    );
    let tag = &read_lock(&repo.work, "images/web.lock.yaml").images["web"].tags["latest"];
    assert_eq!((tag.generation, &tag.digest), (1, &first.digest));
    assert_eq!(
        skopeo_digest(&dst, "team-a/web", "latest").await,
        first.digest
    );
}

#[tokio::test]
async fn a_second_mirror_run_uploads_nothing() {
    let source = TestRegistry::start();
    let mirror = TestRegistry::start();
    let src = source.host();
    let index = push_index(&src, "company/api", "v1", &["linux/amd64", "linux/arm64"]).await;
    let proxy = FaultProxy::start(&mirror.host()).await;
    let dst = proxy.host();
    let images = format!("    - name: api\n      source: {src}/company/api\n      tags: [v1]\n");
    let repo = ConfigRepo::new(&[
        ("imagelock.yaml", mirrored_config(&dst)),
        ("images/api.yaml", image_set("team-b", "api", &images)),
    ]);
    let dir = repo.work.to_str().expect("utf-8");
    let output = imagelock(&["mirror", dir], &[&src, &dst]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("to copy (0)"),
        "no lock yet: nothing wanted"
    );

    let output = imagelock(&["lock", dir], &[&src, &dst]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let uploads = proxy.count("POST /v2/.*/blobs/uploads/");
    let manifest_puts = proxy.count("PUT /v2/.*/manifests/");
    assert!(uploads > 0 && manifest_puts > 0);

    let output = imagelock(&["mirror", dir], &[&src, &dst]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("already present (1)"),
        "{}",
        text(&output.stdout)
    );
    assert_eq!(
        proxy.count("POST /v2/.*/blobs/uploads/"),
        uploads,
        "no new uploads"
    );
    assert_eq!(
        proxy.count("PUT /v2/.*/manifests/"),
        manifest_puts,
        "no manifest pushed"
    );
    assert_eq!(skopeo_digest(&dst, "team-b/api", "v1").await, index.digest);
}

#[tokio::test]
async fn mirror_brings_the_signatures_of_images_already_there() {
    let source = TestRegistry::start();
    let mirror = TestRegistry::start();
    let (src, dst) = (source.host(), mirror.host());
    let image = push_image(&src, "company/api", "v1", ImageSpec::small("linux/amd64")).await;
    let images = format!("    - name: api\n      source: {src}/company/api\n      tags: [v1]\n");
    let repo = ConfigRepo::new(&[
        ("imagelock.yaml", mirrored_config(&dst)),
        ("images/api.yaml", image_set("team-b", "api", &images)),
    ]);
    let dir = repo.work.to_str().expect("utf-8");
    let output = imagelock(&["lock", dir], &[&src, &dst]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));

    let (sig_tag, signature) = Pusher::new(&src)
        .push_cosign_signature("company/api", &image.digest)
        .await;
    let dry = imagelock(&["mirror", "--dry-run", dir], &[&src, &dst]).await;
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    assert!(
        !text(&dry.stdout).contains("referrers of"),
        "a dry run copies nothing: {}",
        text(&dry.stdout)
    );
    let output = imagelock(&["mirror", dir], &[&src, &dst]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("already present (1)")
            && stdout.contains(
                "checked the referrers of 1/1 present image(s): 1 referrer(s), 1 manifest(s) pushed"
            ),
        "{stdout}"
    );
    assert_eq!(
        skopeo_digest(&dst, "team-b/api", &sig_tag).await,
        Digest::sha256_of(&signature)
    );
}

#[tokio::test]
async fn a_cold_mirror_asks_the_source_for_each_manifest_once() {
    let source = TestRegistry::start();
    let mirror = TestRegistry::start();
    let proxy = FaultProxy::start(&source.host()).await;
    let src = proxy.host();
    let dst = mirror.host();
    let index = push_index(
        &source.host(),
        "company/api",
        "v1",
        &["linux/amd64", "linux/arm64"],
    )
    .await;
    let images = format!("    - name: api\n      source: {src}/company/api\n      tags: [v1]\n");
    let unmirrored = mirrored_config(&dst).replace("mirror: true", "mirror: false");
    let repo = ConfigRepo::new(&[
        ("imagelock.yaml", unmirrored),
        ("images/api.yaml", image_set("team-b", "api", &images)),
    ]);
    let dir = repo.work.to_str().expect("utf-8");
    let output = imagelock(&["lock", dir], &[&src, &dst]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    std::fs::write(repo.work.join("imagelock.yaml"), mirrored_config(&dst)).expect("config");
    let before = proxy.requests().len();

    let output = imagelock(&["mirror", dir], &[&src, &dst]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("to copy (1)"),
        "{}",
        text(&output.stdout)
    );
    let asked: Vec<String> = proxy.requests()[before..]
        .iter()
        .filter(|seen| seen.target.contains("/manifests/sha256:"))
        .map(|seen| format!("{} {}", seen.method, seen.target))
        .collect();
    let index_path = format!("/v2/company/api/manifests/{}", index.digest);
    assert_eq!(
        asked.iter().filter(|a| a.ends_with(&index_path)).count(),
        1,
        "the check's GET of the index serves the copy too: {asked:#?}"
    );
    assert!(
        asked.iter().all(|a| a.starts_with("GET ")),
        "no HEAD of a manifest at the source: {asked:#?}"
    );
    assert_eq!(asked.len(), 3, "the index and its two children: {asked:#?}");
    assert_eq!(skopeo_digest(&dst, "team-b/api", "v1").await, index.digest);
}

#[tokio::test]
async fn copy_preserves_the_digest() {
    let source = TestRegistry::start();
    let target = TestRegistry::start();
    let (src, dst) = (source.host(), target.host());
    let index = push_index(&src, "tools/cli", "2.0", &["linux/amd64", "linux/arm64"]).await;

    let all = imagelock(
        &[
            "copy",
            "--all",
            &format!("{src}/tools/cli:2.0"),
            &format!("{dst}/copied/cli:2.0"),
        ],
        &[&src, &dst],
    )
    .await;
    assert!(all.status.success(), "{}", text(&all.stderr));
    assert_eq!(skopeo_digest(&dst, "copied/cli", "2.0").await, index.digest);

    let one = imagelock(
        &[
            "copy",
            "--platform",
            "linux/arm64",
            &format!("{src}/tools/cli:2.0"),
            &format!("{dst}/arm/cli:2.0"),
        ],
        &[&src, &dst],
    )
    .await;
    assert!(one.status.success(), "{}", text(&one.stderr));
    assert_eq!(
        skopeo_digest(&dst, "arm/cli", "2.0").await,
        index.children["linux/arm64"]
    );

    let missing = imagelock(
        &[
            "copy",
            &format!("{src}/tools/cli:nope"),
            &format!("{dst}/x/y:z"),
        ],
        &[&src, &dst],
    )
    .await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing.stderr).contains("not found"),
        "{}",
        text(&missing.stderr)
    );
}

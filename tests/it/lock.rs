//! The `check`, `plan` and `lock` commands, run as the real binary against a real registry
//! and real Git.

use std::path::Path;
use std::process::Output;

use imagelock::lock::{self, LockFile};

use crate::common::{
    ConfigRepo, Fault, FaultProxy, ImageSpec, TestRegistry, free_port, git, image_set, imagelock,
    push_image, push_index, push_many_tags, repo_config, skopeo_digest, write,
};

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn read_lock(dir: &Path, path: &str) -> LockFile {
    lock::read(&dir.join(path))
        .expect("readable lock")
        .unwrap_or_else(|| panic!("{path} was not written"))
}

#[tokio::test]
async fn pins_are_the_digests_the_registry_and_skopeo_report() {
    let registry = TestRegistry::start();
    let host = registry.host();
    let index = push_index(
        &host,
        "company/web",
        "latest",
        &["linux/amd64", "linux/arm64"],
    )
    .await;
    let single = push_image(&host, "company/web", "1.0", ImageSpec::small("linux/amd64")).await;
    let repo = ConfigRepo::new(&[
        ("imagelock.yaml", repo_config()),
        (
            "images/team-a/web.yaml",
            image_set(
                "team-a",
                "web",
                &format!(
                    "    - name: web\n      source: {host}/company/web\n      tags: [latest, \"1.0\"]\n      platforms: [linux/arm64]\n    - name: web-amd64\n      source: {host}/company/web\n      tags: [\"1.0\"]\n"
                ),
            ),
        ),
    ]);

    // `platforms: [linux/arm64]` holds for the index but not for the amd64-only `1.0`: that
    // tag fails (exit 1), the rest locks.
    let output = imagelock(&repo.work, &["lock"], &[&host]).await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));

    let locked = read_lock(&repo.work, "images/team-a/web.lock.yaml");
    let web = &locked.images["web"];
    assert_eq!(web.source, format!("{host}/company/web"));
    let latest = &web.tags["latest"];
    assert_eq!(latest.digest, index.digest);
    assert_eq!(
        latest.digest,
        skopeo_digest(&host, "company/web", "latest").await
    );
    assert_eq!(latest.media_type, "application/vnd.oci.image.index.v1+json");
    assert_eq!(latest.platforms, index.children);
    assert_eq!(latest.generation, 1);
    assert!(!web.tags.contains_key("1.0"), "{web:?}");
    let err = stderr(&output);
    assert!(
        err.contains("web:1.0") && err.contains("linux/arm64"),
        "{err}"
    );

    let amd64 = &locked.images["web-amd64"].tags["1.0"];
    assert_eq!(amd64.digest, single.digest);
    assert_eq!(
        amd64.digest,
        skopeo_digest(&host, "company/web", "1.0").await
    );
    assert_eq!(
        amd64.platforms.keys().collect::<Vec<_>>(),
        vec!["linux/amd64"]
    );
}

#[tokio::test]
async fn patterns_select_from_more_than_a_thousand_tags() {
    let registry = TestRegistry::start();
    let host = registry.host();
    let mut tags: Vec<String> = Vec::new();
    for minor in 0..20 {
        for patch in 0..50 {
            tags.push(format!("v1.{minor}.{patch}"));
        }
        tags.push(format!("v1.{minor}.50-rc1"));
        tags.push(format!("v1.{minor}.3-debug"));
    }
    tags.push("latest".into());
    assert!(tags.len() > 1_000);
    push_many_tags(&host, "argoproj/argocd", &tags).await;
    // The client pages through the tag list; the proxy answers like a registry that honours
    // `n` and `Link`, which docker-registry 2.8 does not.
    let proxy = FaultProxy::start(&host).await;
    let proxied = proxy.host();
    proxy.add_rule(
        "GET /v2/argoproj/argocd/tags/list",
        Fault::PaginateTags { link: true },
        None,
    );

    let images = format!(
        "    - name: stable
      source: {proxied}/argoproj/argocd
      match: v1.13.x
      exclude: [\"-debug$\"]
    - name: with-rc
      source: {proxied}/argoproj/argocd
      match: \">=1.13, <1.14\"
      allowPrerelease: true
      exclude: [\"-debug$\"]
    - name: newest
      source: {proxied}/argoproj/argocd
      match: \">=1.0, <2\"
      select: latest
"
    );
    let repo = ConfigRepo::new(&[
        ("imagelock.yaml", repo_config()),
        ("images/argocd.yaml", image_set("team-b", "argocd", &images)),
    ]);
    let output = imagelock(&repo.work, &["lock"], &[&proxied]).await;
    assert!(output.status.success(), "{}", stderr(&output));

    let locked = read_lock(&repo.work, "images/argocd.lock.yaml");
    let tags_of = |alias: &str| {
        locked.images[alias]
            .tags
            .keys()
            .cloned()
            .collect::<Vec<_>>()
    };
    let mut expected: Vec<String> = (0..50).map(|p| format!("v1.13.{p}")).collect();
    expected.sort();
    assert_eq!(tags_of("stable"), expected);
    expected.push("v1.13.50-rc1".into());
    expected.sort();
    assert_eq!(tags_of("with-rc"), expected);
    assert_eq!(tags_of("newest"), vec!["v1.19.49".to_string()]);
    // 1,002 tags at most 1,000 a page: every entry listed them over two pages.
    let pages = proxy.requests_matching("GET /v2/argoproj/argocd/tags/list");
    assert_eq!(pages.len(), 6, "{pages:?}");
    assert!(
        pages.iter().any(|p| p.target.contains("last=")),
        "{pages:?}"
    );
}

#[tokio::test]
async fn registry_faults_fail_only_their_entry() {
    let registry = TestRegistry::start();
    let host = registry.host();
    let web = push_image(
        &host,
        "company/web",
        "latest",
        ImageSpec::small("linux/amd64"),
    )
    .await;
    let api = push_image(
        &host,
        "company/api",
        "latest",
        ImageSpec::small("linux/amd64"),
    )
    .await;
    let proxy = FaultProxy::start(&host).await;
    let proxied = proxy.host();
    proxy.fail_with("HEAD /v2/company/web/manifests/latest", 500, 2);
    proxy.too_many_requests("HEAD /v2/company/api/manifests/latest", "1", 1);
    let down = format!("127.0.0.1:{}", free_port());

    let images = format!(
        "    - name: web\n      source: {proxied}/company/web\n      tags: [latest]\n    - name: api\n      source: {proxied}/company/api\n      tags: [latest]\n    - name: gone\n      source: {down}/company/gone\n      tags: [latest]\n    - name: missing\n      source: {proxied}/company/web\n      tags: [no-such-tag]\n"
    );
    let repo = ConfigRepo::new(&[
        ("imagelock.yaml", repo_config()),
        ("images/apps.yaml", image_set("team-a", "apps", &images)),
    ]);
    let output = imagelock(&repo.work, &["lock"], &[&proxied, &down]).await;
    let err = stderr(&output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "failures make the exit code 1"
    );

    let locked = read_lock(&repo.work, "images/apps.lock.yaml");
    assert_eq!(locked.images["web"].tags["latest"].digest, web.digest);
    assert_eq!(locked.images["api"].tags["latest"].digest, api.digest);
    assert!(!locked.images.contains_key("gone"));
    assert!(
        locked
            .images
            .get("missing")
            .is_none_or(|m| m.tags.is_empty())
    );
    assert!(err.contains("gone:latest") && err.contains(&down), "{err}");
    assert!(
        err.contains("missing:no-such-tag") && err.contains("not found"),
        "{err}"
    );

    // The 500s and the 429 were retried: two failures then success, one 429 then success.
    let web_heads = proxy.statuses("HEAD /v2/company/web/manifests/latest");
    assert_eq!(web_heads, vec![500, 500, 200]);
    let api_heads = proxy.statuses("HEAD /v2/company/api/manifests/latest");
    assert_eq!(api_heads, vec![429, 200]);
}

#[tokio::test]
async fn a_bad_manifest_is_reported_with_its_position_and_the_rest_still_lock() {
    let registry = TestRegistry::start();
    let host = registry.host();
    let web = push_image(
        &host,
        "company/web",
        "latest",
        ImageSpec::small("linux/amd64"),
    )
    .await;
    let good = image_set(
        "team-a",
        "web",
        &format!("    - name: web\n      source: {host}/company/web\n      tags: [latest]\n"),
    );
    let bad = image_set(
        "team-b",
        "broken",
        &format!(
            "    - name: api\n      source: {host}/company/api\n      tag: [latest]\n      schedule: \"*/5 * *\"\n"
        ),
    );
    let repo = ConfigRepo::new(&[
        ("imagelock.yaml", repo_config()),
        ("images/team-a/web.yaml", good),
        ("images/team-b/broken.yaml", bad),
    ]);

    let check = imagelock(&repo.work, &["check"], &[]).await;
    assert_eq!(check.status.code(), Some(1));
    let err = stderr(&check);
    assert!(
        err.contains("images/team-b/broken.yaml:10:7:") && err.contains("\"tag\""),
        "unknown field with file:line:col and the field: {err}"
    );
    assert!(
        err.contains("images/team-b/broken.yaml:11:17:"),
        "bad cron position: {err}"
    );

    let output = imagelock(&repo.work, &["lock"], &[&host]).await;
    assert_eq!(output.status.code(), Some(1));
    let locked = read_lock(&repo.work, "images/team-a/web.lock.yaml");
    assert_eq!(locked.images["web"].tags["latest"].digest, web.digest);
    assert!(!repo.work.join("images/team-b/broken.lock.yaml").exists());

    // Fixed manifests pass `check`.
    std::fs::remove_file(repo.work.join("images/team-b/broken.yaml")).expect("remove");
    let check = imagelock(&repo.work, &["check"], &[]).await;
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(
        stdout(&check).contains("1 manifest(s), 1 image(s)"),
        "{}",
        stdout(&check)
    );
}

#[tokio::test]
async fn lock_commit_commits_once_per_change_with_generations() {
    let registry = TestRegistry::start();
    let host = registry.host();
    let first = push_image(
        &host,
        "company/web",
        "latest",
        ImageSpec::small("linux/amd64"),
    )
    .await;
    let repo = ConfigRepo::new(&[
        ("imagelock.yaml", repo_config()),
        (
            "images/web.yaml",
            image_set(
                "team-a",
                "web",
                &format!(
                    "    - name: web\n      source: {host}/company/web\n      tags: [latest]\n"
                ),
            ),
        ),
    ]);
    let commits = || {
        git(&repo.work, &["rev-list", "--count", "HEAD"])
            .trim()
            .to_owned()
    };

    let output = imagelock(&repo.work, &["lock", "--commit"], &[&host]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(commits(), "2");
    let author = git(&repo.work, &["log", "-1", "--format=%an <%ae>"]);
    assert_eq!(author.trim(), "imagelock-bot <bot@example.com>");

    // Nothing moved: nothing written, no commit.
    let output = imagelock(&repo.work, &["lock", "--commit"], &[&host]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("up to date"),
        "{}",
        stdout(&output)
    );
    assert_eq!(commits(), "2");

    // The tag moves: `plan` shows it and writes nothing; `lock --commit` makes one commit.
    let second = push_image(
        &host,
        "company/web",
        "latest",
        ImageSpec::small("linux/amd64"),
    )
    .await;
    assert_ne!(first.digest, second.digest);
    let plan = imagelock(&repo.work, &["plan", "--format", "json"], &[&host]).await;
    assert!(plan.status.success(), "{}", stderr(&plan));
    let report: serde_json::Value = serde_json::from_slice(&plan.stdout).expect("json plan");
    assert_eq!(report["changes"][0]["kind"], "changed");
    assert_eq!(report["changes"][0]["from"], first.digest.as_str());
    assert_eq!(report["changes"][0]["to"], second.digest.as_str());
    assert_eq!(git(&repo.work, &["status", "--porcelain"]), "");

    let output = imagelock(&repo.work, &["lock", "--commit"], &[&host]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(commits(), "3");
    let message = git(&repo.work, &["log", "-1", "--format=%B"]);
    let expected = format!(
        "web:latest {} -> {} (generation 2)",
        first.digest.short(),
        second.digest.short()
    );
    assert!(message.contains(&expected), "{message}");
    let tag = &read_lock(&repo.work, "images/web.lock.yaml").images["web"].tags["latest"];
    assert_eq!((tag.generation, &tag.digest), (2, &second.digest));
    assert_eq!(tag.history.len(), 1);
    assert_eq!(
        (tag.history[0].generation, &tag.history[0].digest),
        (1, &first.digest)
    );

    // Removing the manifest removes its lock, in one more commit.
    std::fs::remove_file(repo.work.join("images/web.yaml")).expect("remove manifest");
    git(&repo.work, &["commit", "-qam", "drop web"]);
    let output = imagelock(&repo.work, &["lock", "--commit"], &[&host]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(commits(), "5");
    assert!(!repo.work.join("images/web.lock.yaml").exists());
}

#[tokio::test]
async fn plan_formats_and_usage_errors() {
    let registry = TestRegistry::start();
    let host = registry.host();
    push_image(
        &host,
        "company/web",
        "latest",
        ImageSpec::small("linux/amd64"),
    )
    .await;
    let repo = ConfigRepo::new(&[
        ("imagelock.yaml", repo_config()),
        (
            "images/web.yaml",
            image_set(
                "team-a",
                "web",
                &format!(
                    "    - name: web\n      source: {host}/company/web\n      tags: [latest]\n"
                ),
            ),
        ),
    ]);
    let text = imagelock(&repo.work, &["plan"], &[&host]).await;
    assert!(text.status.success(), "{}", stderr(&text));
    assert!(
        stdout(&text).contains("images/web.lock.yaml\n  + web:latest none -> sha256:"),
        "{}",
        stdout(&text)
    );
    assert!(stdout(&text).contains("1 added, 0 changed, 0 removed, 0 error(s)"));

    let markdown = imagelock(&repo.work, &["plan", "--format", "markdown"], &[&host]).await;
    assert!(
        stdout(&markdown).contains(
            "| + | <code>images/web\\.lock\\.yaml</code> | <code>web</code> | <code>latest</code> |"
        ),
        "{}",
        stdout(&markdown)
    );
    assert!(
        !repo.work.join("images/web.lock.yaml").exists(),
        "plan writes nothing"
    );

    // Plain HTTP is never implied: without --insecure-registry the https attempt fails.
    let https = imagelock(&repo.work, &["plan"], &[]).await;
    assert_eq!(https.status.code(), Some(1));

    let usage = imagelock(&repo.work, &["plan", "--format", "yaml"], &[]).await;
    assert_eq!(usage.status.code(), Some(2));
    write(&repo.work, "images/web.yaml", "kind: [");
    let check = imagelock(&repo.work, &["check"], &[]).await;
    assert_eq!(check.status.code(), Some(1));
    assert!(
        stderr(&check).contains("images/web.yaml:2:1: invalid YAML"),
        "{}",
        stderr(&check)
    );
}

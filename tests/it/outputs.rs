//! GitOps outputs: committed with the locks by the real binary against a real registry, checked
//! with the real `kubectl kustomize`; setter rewrites against golden files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::TimeZone as _;
use imagelock::lock::{self, LockFile, LockedImage, LockedTag};
use imagelock::reconcile::{self, Mode, Observations};

use crate::common::{
    ConfigRepo, ImageSpec, TestRegistry, git, image_set, imagelock, push_image, write,
};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn read(dir: &Path, path: &str) -> String {
    std::fs::read_to_string(dir.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Files the last commit of `dir` changed.
fn last_commit_files(dir: &Path) -> Vec<String> {
    git(dir, &["show", "--name-only", "--format=", "HEAD"])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The images of every container of every Deployment `kubectl kustomize` renders from `overlay`.
fn kustomize_images(overlay: &Path) -> BTreeMap<String, String> {
    let output = Command::new("kubectl")
        .args(["kustomize"])
        .arg(overlay)
        .output()
        .expect("kubectl is needed for this test (it ships with the machine image)");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let rendered = text(&output.stdout);
    let deployment: serde_json::Value =
        serde_saphyr::from_str(&rendered).unwrap_or_else(|e| panic!("{e}\n{rendered}"));
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().expect("name").to_owned(),
                c["image"].as_str().expect("image").to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn outputs_are_committed_with_the_locks_and_only_when_they_change() {
    let source = TestRegistry::start();
    let mirror = TestRegistry::start();
    let (src, dst) = (source.host(), mirror.host());
    let latest = push_image(
        &src,
        "company/web",
        "latest",
        ImageSpec::small("linux/amd64"),
    )
    .await;
    let v14 = push_image(&src, "company/web", "1.4", ImageSpec::small("linux/amd64")).await;
    let config = format!(
        "apiVersion: imagelock.dev/v1alpha1
kind: Config
mirror: {{registry: \"{dst}\"}}
defaults: {{mirror: true}}
git: {{authorName: imagelock-bot, authorEmail: bot@example.com}}
outputs:
  kustomize: {{path: outputs/kustomize}}
  helmValues: {{path: outputs/helm}}
  setters: {{paths: [apps/]}}
"
    );
    let deployment = format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: team-a
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
        - name: by-alias
          image: web
        - name: by-source
          image: {src}/company/web:latest
        - name: by-tag
          image: {src}/company/web:1.4
"
    );
    let setter = "# Set by imagelock: the marker below keeps the image pinned.\nimage: web # {\"imagelock\": \"team-a:web:1.4\"}\n";
    let repo = ConfigRepo::new(&[
        ("imagelock.yaml", config),
        (
            "images/team-a/web.yaml",
            image_set(
                "team-a",
                "web",
                &format!(
                    "    - name: web\n      source: {src}/company/web\n      tags: [latest, \"1.4\"]\n"
                ),
            ),
        ),
        ("apps/team-a/values.yaml", setter.to_owned()),
        ("overlay/deployment.yaml", deployment),
        (
            "overlay/kustomization.yaml",
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [deployment.yaml]\ncomponents: [../outputs/kustomize/team-a]\n".to_owned(),
        ),
    ]);
    let dir = &repo.work;
    let commits = || git(dir, &["rev-list", "--count", "HEAD"]).trim().to_owned();
    let hosts = [src.as_str(), dst.as_str()];

    // `plan` names the outputs it would write, and writes nothing.
    let plan = imagelock(dir, &["plan", "--format", "json"], &hosts).await;
    assert!(plan.status.success(), "{}", text(&plan.stderr));
    let report: serde_json::Value = serde_json::from_slice(&plan.stdout).expect("json plan");
    let planned: Vec<&str> = report["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .map(|o| o["path"].as_str().expect("path"))
        .collect();
    assert_eq!(
        planned,
        [
            "apps/team-a/values.yaml",
            "outputs/helm/team-a/web.yaml",
            "outputs/kustomize/team-a/kustomization.yaml"
        ]
    );
    assert!(!dir.join("outputs").exists(), "plan writes nothing");

    // One commit holds the lock and every output.
    let output = imagelock(dir, &["lock", "--commit"], &hosts).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(commits(), "2");
    assert_eq!(
        last_commit_files(dir),
        [
            "apps/team-a/values.yaml",
            "images/team-a/web.lock.yaml",
            "outputs/helm/team-a/web.yaml",
            "outputs/kustomize/team-a/kustomization.yaml"
        ]
    );
    assert_eq!(git(dir, &["status", "--porcelain"]), "");

    // The Deployment comes out of kustomize with exactly the locked digests, from the mirror.
    let pulled = format!("{dst}/team-a/web");
    let expected = BTreeMap::from([
        ("by-alias".to_owned(), format!("{pulled}@{}", latest.digest)),
        (
            "by-source".to_owned(),
            format!("{pulled}@{}", latest.digest),
        ),
        ("by-tag".to_owned(), format!("{pulled}@{}", v14.digest)),
    ]);
    assert_eq!(kustomize_images(&dir.join("overlay")), expected);

    let values: serde_json::Value =
        serde_saphyr::from_str(&read(dir, "outputs/helm/team-a/web.yaml")).expect("values");
    assert_eq!(
        values,
        serde_json::json!({"web": {"image": {
            "repository": pulled,
            "digest": latest.digest.as_str(),
            "tag": "latest",
        }}})
    );
    assert_eq!(
        read(dir, "apps/team-a/values.yaml"),
        setter.replace("image: web", &format!("image: {pulled}@{}", v14.digest))
    );

    // Nothing moved: nothing is written, no commit.
    let output = imagelock(dir, &["lock", "--commit"], &hosts).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("up to date"),
        "{}",
        text(&output.stdout)
    );
    assert_eq!(commits(), "2");

    // `latest` moves: one commit with the lock and the outputs that follow it. The setter
    // pins `1.4`, which did not move: that file stays.
    let moved = push_image(
        &src,
        "company/web",
        "latest",
        ImageSpec::small("linux/amd64"),
    )
    .await;
    let output = imagelock(dir, &["lock", "--commit"], &hosts).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(commits(), "3");
    assert_eq!(
        last_commit_files(dir),
        [
            "images/team-a/web.lock.yaml",
            "outputs/helm/team-a/web.yaml",
            "outputs/kustomize/team-a/kustomization.yaml"
        ]
    );
    assert_eq!(
        kustomize_images(&dir.join("overlay"))["by-alias"],
        format!("{pulled}@{}", moved.digest)
    );

    // The manifest goes: its lock and generated outputs go in one commit. The setter line
    // stays as it is, and its marker, now naming nothing, is reported.
    std::fs::remove_file(dir.join("images/team-a/web.yaml")).expect("remove");
    git(dir, &["commit", "-qam", "drop web"]);
    let output = imagelock(dir, &["lock", "--commit"], &hosts).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr)
            .contains("apps/team-a/values.yaml:2:107: no ImageSet declares namespace \"team-a\""),
        "{}",
        text(&output.stderr)
    );
    assert_eq!(commits(), "5");
    assert_eq!(
        last_commit_files(dir),
        [
            "images/team-a/web.lock.yaml",
            "outputs/helm/team-a/web.yaml",
            "outputs/kustomize/team-a/kustomization.yaml"
        ]
    );
    assert_eq!(files_under(&dir.join("outputs")), Vec::<PathBuf>::new());
    assert!(dir.join("apps/team-a/values.yaml").exists());
}

#[tokio::test]
async fn a_broken_manifest_keeps_its_outputs_and_bad_markers_are_reported() {
    let registry = TestRegistry::start();
    let host = registry.host();
    push_image(
        &host,
        "company/web",
        "latest",
        ImageSpec::small("linux/amd64"),
    )
    .await;
    let images =
        format!("    - name: web\n      source: {host}/company/web\n      tags: [latest]\n");
    let repo = ConfigRepo::new(&[
        (
            "imagelock.yaml",
            "apiVersion: imagelock.dev/v1alpha1\nkind: Config\noutputs:\n  kustomize: {path: outputs/kustomize}\n  setters: {paths: [apps]}\n".to_owned(),
        ),
        ("images/team-a/web.yaml", image_set("team-a", "web", &images)),
        ("images/team-b/web.yaml", image_set("team-b", "web", &images)),
        (
            "apps/web.yaml",
            "a: x # {\"imagelock\": \"team-a:nope\"}\nb: x # {\"imagelock\": \"team-b:web\"}\n".to_owned(),
        ),
    ]);
    let dir = &repo.work;
    let output = imagelock(dir, &["lock"], &[&host]).await;
    assert_eq!(output.status.code(), Some(1), "a bad marker is an error");
    assert!(
        text(&output.stderr).contains(
            "apps/web.yaml:1:6: unknown alias \"nope\" in namespace \"team-a\" (known: web)"
        ),
        "{}",
        text(&output.stderr)
    );
    let component = read(dir, "outputs/kustomize/team-b/kustomization.yaml");
    let values = read(dir, "apps/web.yaml");
    assert!(values.starts_with("a: x #"), "{values}");
    assert!(
        values.contains(&format!("b: {host}/company/web@sha256:")),
        "{values}"
    );

    // team-b's manifest breaks: its lock and its Component stay as they were, team-a's go on.
    write(
        dir,
        "images/team-b/web.yaml",
        &image_set("team-b", "web", &images.replace("tags:", "tag:")),
    );
    let output = imagelock(dir, &["lock"], &[&host]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("images/team-b/web.yaml:"),
        "{}",
        text(&output.stderr)
    );
    assert_eq!(
        read(dir, "outputs/kustomize/team-b/kustomization.yaml"),
        component
    );
    assert!(
        dir.join("outputs/kustomize/team-a/kustomization.yaml")
            .exists()
    );
}

// --- setter golden files -------------------------------------------------------------------

const DIGEST_A: char = 'a';

fn mk_tag(c: char) -> LockedTag {
    LockedTag {
        digest: format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .expect("digest"),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        platforms: BTreeMap::new(),
        generation: 1,
        resolved_at: "2026-11-20T10:00:00Z".into(),
        pinned: false,
        history: Vec::new(),
    }
}

/// The repo every golden case runs in: team-a's `web` (latest, 1.4) and `nginx` (1.25),
/// mirrored to registry.internal:5000; team-b's `api` (v2.0.0), not mirrored. Locks are
/// written as imagelock writes them, so a pass without observations leaves them alone.
fn mk_golden_repo(root: &Path) {
    write(
        root,
        "imagelock.yaml",
        "apiVersion: imagelock.dev/v1alpha1\nkind: Config\nmirror: {registry: \"registry.internal:5000\"}\ndefaults: {mirror: true}\noutputs:\n  setters: {paths: [apps/]}\n",
    );
    write(
        root,
        "images/team-a/web.yaml",
        &image_set(
            "team-a",
            "web",
            "    - {name: web, source: quay.io/company/web, tags: [latest, \"1.4\"]}\n    - {name: nginx, source: nginx, tags: [\"1.25\"]}\n",
        ),
    );
    write(
        root,
        "images/team-b/api.yaml",
        &image_set(
            "team-b",
            "api",
            "    - {name: api, source: quay.io/company/api, tags: [v2.0.0], mirror: false}\n",
        ),
    );
    let image = |source: &str, mirror: Option<&str>, tags: &[(&str, char)]| LockedImage {
        source: source.into(),
        mirror: mirror.map(str::to_owned),
        tags: tags
            .iter()
            .map(|(t, c)| ((*t).to_owned(), mk_tag(*c)))
            .collect(),
    };
    let web = LockFile {
        source: "web.yaml".into(),
        images: BTreeMap::from([
            (
                "web".to_owned(),
                image(
                    "quay.io/company/web",
                    Some("registry.internal:5000/team-a/web"),
                    &[("latest", DIGEST_A), ("1.4", 'b')],
                ),
            ),
            (
                "nginx".to_owned(),
                image(
                    "docker.io/library/nginx",
                    Some("registry.internal:5000/team-a/nginx"),
                    &[("1.25", 'c')],
                ),
            ),
        ]),
    };
    let api = LockFile {
        source: "api.yaml".into(),
        images: BTreeMap::from([(
            "api".to_owned(),
            image("quay.io/company/api", None, &[("v2.0.0", 'd')]),
        )]),
    };
    write(root, "images/team-a/web.lock.yaml", &lock::render(&web));
    write(root, "images/team-b/api.lock.yaml", &lock::render(&api));
}

/// Relative paths of the files under `dir`, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path.strip_prefix(dir).expect("under dir").to_path_buf());
            }
        }
    }
    files.sort();
    files
}

/// Each `tests/testdata/setters/<case>/input/` is copied to `apps/` of the golden repo and one
/// pass runs; `apps/` must then equal `expected/` byte for byte, and the problems reported
/// must be the lines of `problems.txt` (none when it is missing). With
/// `IMAGELOCK_UPDATE_GOLDEN=1` the expected files are written instead.
#[test]
fn setter_golden_files() {
    let cases = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/setters");
    let update = std::env::var_os("IMAGELOCK_UPDATE_GOLDEN").is_some();
    let mut names: Vec<_> = std::fs::read_dir(&cases)
        .expect("testdata")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    names.sort();
    assert!(names.len() >= 8, "golden cases: {names:?}");
    let now = chrono::Utc
        .with_ymd_and_hms(2026, 11, 21, 12, 0, 0)
        .unwrap();
    for case in names {
        let name = case
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let repo = tempfile::tempdir().expect("tempdir");
        let root = repo.path();
        mk_golden_repo(root);
        let input = case.join("input");
        for file in files_under(&input) {
            let bytes = std::fs::read(input.join(&file)).expect("input");
            let target = root.join("apps").join(&file);
            std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
            std::fs::write(target, bytes).expect("write");
        }

        let outcome = reconcile::apply(
            root,
            &Default::default(),
            &Observations::default(),
            now,
            Mode::Write,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let problems: Vec<String> = outcome
            .diagnostics
            .iter()
            .map(ToString::to_string)
            .collect();
        let expected_dir = case.join("expected");
        let problems_file = case.join("problems.txt");
        if update {
            let _ = std::fs::remove_dir_all(&expected_dir);
            for file in files_under(&root.join("apps")) {
                let target = expected_dir.join(&file);
                std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
                std::fs::copy(root.join("apps").join(&file), target).expect("copy");
            }
            if problems.is_empty() {
                let _ = std::fs::remove_file(&problems_file);
            } else {
                std::fs::write(&problems_file, problems.join("\n") + "\n").expect("write");
            }
            continue;
        }

        let expected_problems: Vec<String> = std::fs::read_to_string(&problems_file)
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default();
        assert_eq!(problems, expected_problems, "{name}: problems");
        assert_eq!(
            files_under(&root.join("apps")),
            files_under(&expected_dir),
            "{name}: files"
        );
        let mut changed = Vec::new();
        for file in files_under(&expected_dir) {
            let got = std::fs::read(root.join("apps").join(&file)).expect("output");
            let want = std::fs::read(expected_dir.join(&file)).expect("expected");
            assert!(
                got == want,
                "{name}: apps/{} differs from the golden file:\n--- got\n{}\n--- expected\n{}",
                file.display(),
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want)
            );
            if want != std::fs::read(input.join(&file)).expect("input") {
                changed.push(Path::new("apps").join(&file));
            }
        }
        // Only the rewritten files are touched: the locks and unchanged files are not.
        assert_eq!(outcome.touched, changed, "{name}: touched");

        // A second pass changes nothing.
        let again = reconcile::apply(
            root,
            &Default::default(),
            &Observations::default(),
            now,
            Mode::Write,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(again.touched.is_empty(), "{name}: {:?}", again.touched);
    }
}

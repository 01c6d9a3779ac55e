//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz, libFuzzer), one per untrusted
//! input the daemon parses. Each takes raw bytes, runs the real code on them and panics when a
//! property that must hold for every input breaks (a lock that does not read back as itself, a
//! patch that does not apply to its Pod). A crash, a hang or an allocation past the fuzzer's
//! limit is a finding too.
//!
//! The unit test at the bottom feeds every committed corpus file (`fuzz/corpus/<target>/`)
//! through the same functions, so the corpus guards the code in `cargo test` without the
//! fuzzer. Not a stable API: only the fuzz crate and that test call it.

use std::path::Path;
use std::sync::LazyLock;

use crate::admission::{PinIndex, review_body};
use crate::daemon::hooks;
use crate::lock::{self, LockFile, LockedImage, LockedTag};
use crate::manifest::{self, ImageSet, RepoConfig};
use crate::outputs::setters::{self, Marker, Part, Resolution};
use crate::reference::{Digest, ImageRepo};
use crate::registry::{Challenge, parse_challenges};

/// A fuzz target: runs the code under test on one input and panics on a broken property.
pub type Target = fn(&[u8]);

/// Every target by name, as the fuzz crate's binaries and the corpus test know them.
pub const TARGETS: &[(&str, Target)] = &[
    ("manifest", manifest),
    ("lock", lock),
    ("admission", admission),
    ("setters", setters),
    ("hooks", hooks),
    ("www_authenticate", www_authenticate),
];

/// Repo settings with a mirror target, so that manifests are also checked against one.
const MIRRORED_CONFIG: &str = "apiVersion: imagelock.dev/v1alpha1\nkind: Config\nmirror: {registry: registry.internal, layout: \"{namespace}/{name}\"}\ndefaults: {mirror: true}\nadmission:\n  namespaces: {team-e: enforce, team-u: audit, team-o: off}\n";

static MIRRORED: LazyLock<RepoConfig> = LazyLock::new(|| {
    manifest::parse_repo_config(Path::new("imagelock.yaml"), MIRRORED_CONFIG)
        .unwrap_or_else(|d| panic!("the fuzz harness's own config is invalid: {d:?}"))
});

/// `imagelock.yaml` and ImageSet manifests: the same bytes as each, checked with and without
/// a mirror target, and the metadata peek used for broken manifests.
pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("images/team-a/fuzz.yaml");
    let diagnostics = [
        manifest::parse_repo_config(Path::new("imagelock.yaml"), text).err(),
        manifest::parse_image_set(path, text, &RepoConfig::default()).err(),
        manifest::parse_image_set(path, text, &MIRRORED).err(),
    ];
    for diagnostic in diagnostics.into_iter().flatten() {
        assert!(!diagnostic.is_empty(), "an error without a diagnostic");
        // Formatting must not panic either (it is what reaches logs and PR checks).
        for d in diagnostic {
            let _ = d.to_string();
        }
    }
    let _ = manifest::peek_metadata(text);
}

/// Lock files: whatever parses must render and read back as the same lock, and rendering is
/// a fixed point (the daemon rewrites a lock only when its bytes change).
pub fn lock(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("images/team-a/fuzz.lock.yaml");
    let Ok(parsed) = lock::parse(path, text) else {
        return;
    };
    let rendered = lock::render(&parsed);
    let reread = lock::parse(path, &rendered)
        .unwrap_or_else(|e| panic!("a rendered lock does not parse: {e}\n{rendered}"));
    assert_eq!(reread, parsed, "a rendered lock reads back differently");
    assert_eq!(lock::render(&reread), rendered, "rendering is not stable");
}

/// The pins the admission target reviews against: one set per admission mode, built from
/// files as the daemon builds its index.
static PINS: LazyLock<PinIndex> = LazyLock::new(|| {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("no temp dir: {e}"));
    let write = |path: &str, text: &str| {
        let path = dir.path().join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    };
    write("imagelock.yaml", MIRRORED_CONFIG);
    for namespace in ["team-a", "team-e", "team-u", "team-o"] {
        write(
            &format!("images/{namespace}/web.yaml"),
            &format!(
                "apiVersion: imagelock.dev/v1alpha1\nkind: ImageSet\nmetadata: {{name: web, namespace: {namespace}}}\nspec:\n  images:\n    - {{name: web, source: quay.io/company/web, tags: [latest, \"1.4\"]}}\n    - {{name: nginx, source: docker.io/library/nginx, tags: [\"1.25\"]}}\n"
            ),
        );
        let lock = LockFile {
            source: "web.yaml".into(),
            images: [
                ("web", "quay.io/company/web", &["latest", "1.4"][..]),
                ("nginx", "docker.io/library/nginx", &["1.25"][..]),
            ]
            .into_iter()
            .map(|(alias, source, tags)| {
                let image = LockedImage {
                    source: source.into(),
                    mirror: Some(format!("registry.internal/{namespace}/{alias}")),
                    tags: tags
                        .iter()
                        .map(|tag| ((*tag).to_owned(), locked_tag(&format!("{alias}:{tag}"))))
                        .collect(),
                };
                (alias.to_owned(), image)
            })
            .collect(),
        };
        write(
            &format!("images/{namespace}/web.lock.yaml"),
            &lock::render(&lock),
        );
    }
    let (index, problems) =
        PinIndex::load(dir.path()).unwrap_or_else(|e| panic!("the fuzz pins do not load: {e}"));
    assert!(
        problems.is_empty(),
        "the fuzz pins have problems: {problems:?}"
    );
    index
});

fn locked_tag(seed: &str) -> LockedTag {
    LockedTag {
        digest: Digest::sha256_of(seed.as_bytes()),
        media_type: "application/vnd.oci.image.index.v1+json".into(),
        platforms: Default::default(),
        generation: 1,
        resolved_at: "2026-11-20T10:00:00Z".into(),
        pinned: false,
        history: Vec::new(),
    }
}

/// AdmissionReview -> answer: the answer is an AdmissionReview for the same uid, its patch
/// applies to the Pod the request carried, and reviewing the patched Pod again (the API
/// server's reinvocation) rewrites nothing more.
pub fn admission(data: &[u8]) {
    let _ = review_checked(data);
}

/// [`admission`]'s checks; returns the patch of the first answer.
fn review_checked(data: &[u8]) -> Option<json_patch::Patch> {
    let index = &*PINS;
    let answer = review_body(index, data).ok()?;
    // serde skips unknown fields without checking their UTF-8, so a body that is not quite
    // JSON can be answered; the API server only sends JSON, and such a body is not a Pod.
    let request: serde_json::Value = serde_json::from_slice(data).ok()?;
    // The API server always sends the object's metadata (Go never omits ObjectMeta), which is
    // where the patch adds the annotation.
    if !request["request"]["object"]["metadata"].is_object() {
        return None;
    }
    let patch = patch_of(&response_of(&answer.json, &request))?;
    let mut pod = request["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch)
        .unwrap_or_else(|e| panic!("the patch does not apply to the Pod: {e}\n{patch:?}"));
    let mut again = request.clone();
    again["request"]["object"] = pod;
    let body = serde_json::to_vec(&again).unwrap_or_else(|e| panic!("{e}"));
    let second = review_body(index, &body)
        .unwrap_or_else(|e| panic!("the patched request is not answered: {e}"));
    if let Some(repatch) = patch_of(&response_of(&second.json, &again)) {
        let images: Vec<_> = repatch
            .0
            .iter()
            .filter(|op| op.path().to_string().ends_with("/image"))
            .collect();
        assert!(
            images.is_empty(),
            "a patched Pod is rewritten again: {images:?}"
        );
    }
    Some(patch)
}

/// The `response` of an encoded AdmissionReview answer, checked against the request.
fn response_of(answer: &[u8], request: &serde_json::Value) -> serde_json::Value {
    let review: serde_json::Value =
        serde_json::from_slice(answer).unwrap_or_else(|e| panic!("the answer is not JSON: {e}"));
    assert_eq!(review["kind"], "AdmissionReview");
    let response = review["response"].clone();
    assert_eq!(
        response["uid"], request["request"]["uid"],
        "the answer is for another request"
    );
    response
}

fn patch_of(response: &serde_json::Value) -> Option<json_patch::Patch> {
    let encoded = response.get("patch")?;
    let encoded = encoded
        .as_str()
        .unwrap_or_else(|| panic!("the patch is not a string: {encoded}"));
    let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded)
        .unwrap_or_else(|e| panic!("the patch is not base64: {e}"));
    Some(
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("the patch is not a JSON patch: {e}")),
    )
}

/// Setter rewrites: the rewriter's own check (the file reads back with only the marked values
/// changed) never fails, and a rewritten file is a fixed point.
pub fn setters(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = rewrite_checked(text);
}

/// [`setters`]'s checks; returns the rewritten text.
fn rewrite_checked(text: &str) -> Option<String> {
    let first = setters::rewrite(text, &resolve_marker);
    assert_no_self_check_failure(&first);
    let out = first.text?;
    let second = setters::rewrite(&out, &resolve_marker);
    assert_no_self_check_failure(&second);
    assert_eq!(second.text, None, "a rewritten file changes again");
    Some(out)
}

/// Answers any marker, with values built from the marker's own (fuzzed) text so that the
/// quoting of arbitrary values is exercised too.
fn resolve_marker(marker: &Marker) -> Resolution {
    match marker.alias.as_str() {
        "leave" => return Resolution::Leave,
        "problem" => return Resolution::Problem("no pin".into()),
        _ => {}
    }
    let digest = Digest::sha256_of(marker.alias.as_bytes()).to_string();
    let repository = format!("registry.internal/{}/{}", marker.namespace, marker.alias);
    Resolution::Value(match marker.part {
        Part::Image => format!("{repository}@{digest}"),
        Part::Repository => repository,
        Part::Digest => digest,
        Part::Tag => marker.tag.clone().unwrap_or_else(|| "latest".into()),
    })
}

fn assert_no_self_check_failure(rewrite: &setters::Rewrite) {
    for problem in &rewrite.problems {
        assert!(
            !problem.message.contains("please report this as a bug"),
            "the setter rewrite failed its own check: {problem:?}"
        );
    }
}

/// Image sets the hooks target matches pushes against: followed tags and a pattern.
static HOOK_SETS: LazyLock<ImageSet> = LazyLock::new(|| {
    let text = "apiVersion: imagelock.dev/v1alpha1\nkind: ImageSet\nmetadata: {name: web, namespace: team-a}\nspec:\n  images:\n    - {name: web, source: quay.io/company/web, tags: [latest]}\n    - {name: hub, source: library/nginx, tags: [\"1.25\"]}\n    - {name: argocd, source: quay.io/argoproj/argocd, match: v2.13.x, exclude: [\"-debug$\"]}\n";
    manifest::parse_image_set(
        Path::new("images/team-a/web.yaml"),
        text,
        &RepoConfig::default(),
    )
    .unwrap_or_else(|d| panic!("the fuzz harness's own manifest is invalid: {d:?}"))
});

/// Push hook payloads (Docker Hub, Quay): a parsed repository prints as a name that parses
/// back to itself, and matching it against image entries never fails.
pub fn hooks(data: &[u8]) {
    for event in [hooks::parse_dockerhub(data), hooks::parse_quay(data)]
        .into_iter()
        .flatten()
    {
        let hooks::HookEvent::ImagePushed { repo, tags } = event else {
            continue;
        };
        let printed = repo.to_string();
        assert_eq!(
            ImageRepo::parse(&printed).ok().as_ref(),
            Some(&repo),
            "{printed:?} does not parse back"
        );
        for spec in &HOOK_SETS.images {
            let _ = hooks::affects(spec, &repo, &tags);
        }
    }
}

/// `WWW-Authenticate` headers: every challenge has a lowercase scheme, and the challenges
/// written back as a header parse to themselves.
pub fn www_authenticate(data: &[u8]) {
    let header = String::from_utf8_lossy(data);
    let challenges = parse_challenges(&header);
    for challenge in &challenges {
        assert!(!challenge.scheme.is_empty(), "a challenge without a scheme");
        assert_eq!(challenge.scheme, challenge.scheme.to_ascii_lowercase());
    }
    let written = challenges
        .iter()
        .map(write_challenge)
        .collect::<Vec<_>>()
        .join(", ");
    assert_eq!(
        parse_challenges(&written),
        challenges,
        "{written:?} reads back differently"
    );
}

/// `scheme name="value", ...` with `"` and `\` escaped (RFC 9110 quoted-string).
fn write_challenge(challenge: &Challenge) -> String {
    let mut text = challenge.scheme.clone();
    for (i, (name, value)) in challenge.params.iter().enumerate() {
        let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
        let separator = if i == 0 { " " } else { ", " };
        text.push_str(&format!("{separator}{name}=\"{escaped}\""));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every committed corpus file through its target, without the fuzzer.
    #[test]
    fn the_committed_fuzz_corpus_passes() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        for (name, target) in TARGETS {
            let dir = corpus.join(name);
            let mut files: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|entry| entry.unwrap().path())
                .collect();
            files.sort();
            assert!(!files.is_empty(), "{} is empty", dir.display());
            for file in files {
                let data = std::fs::read(&file).unwrap();
                // A panic names the file, so the failing input is known.
                let run = std::panic::catch_unwind(|| target(&data));
                assert!(run.is_ok(), "{} fails its target", file.display());
            }
        }
    }

    fn seed(target: &str, name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target)
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn the_harness_fixtures_are_valid() {
        assert!(MIRRORED.mirror.is_some());
        assert_eq!(PINS.summary().pinned_tags, 12);
        assert_eq!(HOOK_SETS.images.len(), 3);
    }

    /// The seeds reach the checks after a rewrite, not only the early returns.
    #[test]
    fn the_seeds_reach_the_rewrites() {
        let patch = review_checked(&seed("admission", "create-rewrite.json")).unwrap();
        let replaced = patch
            .0
            .iter()
            .filter(|op| matches!(op, json_patch::PatchOperation::Replace(_)))
            .count();
        assert_eq!(replaced, 6, "{patch:?}");
        let text = String::from_utf8(seed("setters", "example-web-deployment.yaml")).unwrap();
        let out = rewrite_checked(&text).unwrap();
        assert!(
            out.contains("registry.internal/team-a/web@sha256:"),
            "{out}"
        );
    }
}

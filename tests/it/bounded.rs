//! Bounded work against hostile or broken registries: the real binary against a
//! [`HostileRegistry`] for some entries and a real `docker-registry` for the others. A
//! hostile answer fails only its own entry, with its reason; memory, time and transfer slots
//! stay bounded; the other entries are locked.
//!
//! [`HostileRegistry`]: crate::common::HostileRegistry

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use imagelock::lock::{self, LockFile};
use imagelock::mirror::progress::Silent;
use imagelock::mirror::{CopyRequest, EngineOptions, MirrorEngine};
use imagelock::reference::ImageRepo;
use imagelock::registry::{ClientConfig, RegistryClient, RegistryPolicy, TransferFloor};

use crate::common::{
    ConfigRepo, HostileRegistry, ImageSpec, TestRegistry, git, image_set, push_image,
    push_many_tags, repo_config,
};

/// The bound the issue sets for the whole process, whatever a registry answers.
const PEAK_RSS_LIMIT_KIB: i64 = 128 * 1024;

/// How a run of the binary ended.
struct Run {
    /// `None` when a signal ended it.
    code: Option<i32>,
    signal: Option<i32>,
    /// The process's peak resident memory (`ru_maxrss`), KiB.
    peak_rss_kib: i64,
    stderr: String,
}

/// Runs `imagelock ARGS DIR --insecure-registry HOST...` and reaps it with `wait4`, which
/// reports the child's own peak RSS (not that of other tests' children).
async fn run_measured(dir: &Path, args: &[&str], insecure: &[&str]) -> Run {
    let logs = tempfile::tempdir().expect("tempdir");
    let stderr_path = logs.path().join("stderr");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_imagelock"));
    command
        .args(args)
        .arg(dir)
        .env_remove("IMAGELOCK_INSECURE_REGISTRIES")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"));
    for host in insecure {
        command.args(["--insecure-registry", host]);
    }
    let started = Instant::now();
    let child = command.spawn().expect("run imagelock");
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // Reaped here, not by `Child::wait` (which would not give the rusage).
    std::mem::forget(child);
    let (status, usage) = tokio::task::spawn_blocking(move || {
        let mut status = 0;
        // SAFETY: plain out-parameters; `pid` is our child, waited for exactly once.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
        (status, usage)
    })
    .await
    .expect("wait4 thread");
    let elapsed = started.elapsed();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    eprintln!(
        "imagelock {args:?}: peak RSS {} KiB, {elapsed:?}\n{stderr}",
        usage.ru_maxrss
    );
    Run {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        peak_rss_kib: usage.ru_maxrss,
        stderr,
    }
}

fn read_lock(dir: &Path, path: &str) -> Option<LockFile> {
    lock::read(&dir.join(path)).expect("readable lock")
}

/// The line of `stderr` about `alias` of `manifest`.
fn problem<'s>(stderr: &'s str, manifest: &str, alias: &str) -> &'s str {
    stderr
        .lines()
        .find(|l| l.starts_with(&format!("{manifest}: {alias}:")))
        .unwrap_or_else(|| panic!("no problem reported for {alias} in:\n{stderr}"))
}

/// The good entries: a tag and a pattern on the real registry.
async fn good_entries(host: &str) -> String {
    push_image(host, "company/web", "1.0", ImageSpec::small("linux/amd64")).await;
    let tags: Vec<String> = ["v1.0.0", "v1.1.0", "v2.0.0"].map(str::to_owned).to_vec();
    push_many_tags(host, "company/api", &tags).await;
    image_set(
        "team-a",
        "good",
        &format!(
            "    - name: web\n      source: {host}/company/web\n      tags: [\"1.0\"]\n    - name: api\n      source: {host}/company/api\n      match: v1.x.x\n"
        ),
    )
}

#[tokio::test]
async fn endless_and_giant_registry_answers_fail_their_entries_within_128_mib() {
    let registry = TestRegistry::start();
    let host = registry.host();
    let hostile =
        HostileRegistry::start(Duration::from_secs(3600), Duration::from_secs(3600)).await;
    let bad = hostile.host();
    // Several giant answers at once: each is capped, and so is their sum.
    let mut images = String::new();
    let patterns = ["endless", "huge-error", "bearer", "giant"].map(str::to_owned);
    for name in patterns
        .into_iter()
        .chain((1..=6).map(|i| format!("giant{i}")))
    {
        images += &format!("    - name: {name}\n      source: {bad}/{name}\n      match: v1.x.x\n");
    }
    let manifests = ["huge-manifest".to_owned()];
    for name in manifests
        .into_iter()
        .chain((1..=6).map(|i| format!("huge-manifest{i}")))
    {
        images +=
            &format!("    - name: {name}\n      source: {bad}/{name}\n      tags: [v1.0.0]\n");
    }
    let repo = ConfigRepo::new(&[
        ("imagelock.yaml", repo_config()),
        ("images/team-a/good.yaml", good_entries(&host).await),
        (
            "images/team-b/hostile.yaml",
            image_set("team-b", "hostile", &images),
        ),
    ]);

    let run = run_measured(&repo.work, &["lock"], &[&host, &bad]).await;
    let stderr = &run.stderr;

    assert_eq!(run.signal, None, "ended by a signal:\n{stderr}");
    assert_eq!(
        run.code,
        Some(1),
        "the hostile entries are errors:\n{stderr}"
    );
    assert!(
        run.peak_rss_kib < PEAK_RSS_LIMIT_KIB,
        "peak RSS {} KiB:\n{stderr}",
        run.peak_rss_kib
    );
    let good = read_lock(&repo.work, "images/team-a/good.lock.yaml").expect("good lock written");
    assert!(good.images["web"].tags.contains_key("1.0"), "{good:?}");
    assert_eq!(
        good.images["api"].tags.keys().collect::<Vec<_>>(),
        ["v1.0.0", "v1.1.0"]
    );
    if let Some(hostile_lock) = read_lock(&repo.work, "images/team-b/hostile.lock.yaml") {
        assert!(
            hostile_lock.images.values().all(|i| i.tags.is_empty()),
            "{hostile_lock:?}"
        );
    }

    let manifest = "images/team-b/hostile.yaml";
    let endless = problem(stderr, manifest, "endless");
    assert!(
        endless.contains(&format!("tag list of {bad}/endless exceeds 100000 tags")),
        "{endless}"
    );
    // 100 pages of 1,000 tags: the bound was hit by counting, not by a timeout.
    assert!((100..=101).contains(&hostile.requests("endless")));
    let giant = problem(stderr, manifest, "giant");
    assert!(
        giant.contains(&format!(
            "tag list of {bad}/giant exceeds 4194304 bytes in one page"
        )),
        "{giant}"
    );
    let huge = problem(stderr, manifest, "huge-manifest");
    assert!(
        huge.contains("larger than the 4194304-byte limit"),
        "{huge}"
    );
    let bearer = problem(stderr, manifest, "bearer");
    assert!(
        bearer.contains("larger than the 1048576-byte limit"),
        "{bearer}"
    );
    // The error body is read up to a small cap and quoted shorter still.
    let error = problem(stderr, manifest, "huge-error");
    assert!(error.contains("HTTP 400"), "{error}");
    assert!(error.len() < 1000, "{} bytes: {error}", error.len());
}

#[tokio::test]
async fn a_slow_registry_delays_only_its_own_entries() {
    let registry = TestRegistry::start();
    let host = registry.host();
    // One tag page every 2 s, each linking to another: without a deadline, 1,000 pages.
    let hostile = HostileRegistry::start(Duration::from_secs(2), Duration::from_secs(3600)).await;
    let slow = hostile.host();
    // Many slow entries: twice the entries resolved at once, and more.
    let names: Vec<String> = ["slow".to_owned()]
        .into_iter()
        .chain((1..=16).map(|i| format!("slow{i}")))
        .collect();
    let slow_entries: String = names
        .iter()
        .map(|name| {
            format!("    - name: {name}\n      source: {slow}/{name}\n      match: v1.x.x\n")
        })
        .collect();
    let repo = ConfigRepo::new(&[
        ("imagelock.yaml", repo_config()),
        ("images/team-a/good.yaml", good_entries(&host).await),
        (
            "images/team-b/slow.yaml",
            image_set("team-b", "slow", &slow_entries),
        ),
    ]);
    let commits_before = git(&repo.work, &["rev-list", "--count", "HEAD"]);

    let run = run_measured(
        &repo.work,
        &["lock", "--commit", "--entry-timeout", "5s"],
        &[&host, &slow],
    )
    .await;
    let stderr = &run.stderr;

    assert_eq!(run.signal, None, "ended by a signal:\n{stderr}");
    assert_eq!(run.code, Some(1), "{stderr}");
    let reason = problem(stderr, "images/team-b/slow.yaml", "slow");
    assert!(
        reason.contains(&format!("timed out after 5s resolving {slow}/slow")),
        "{reason}"
    );
    // The pass ended at the slow entries' deadline: each asked for a few pages, not all.
    let pages = hostile.requests("slow");
    assert!((1..=4).contains(&pages), "{pages} pages");
    // Once entries of the registry ran into their deadline, its entries still waiting were
    // not tried: the pass took one deadline, not one per 8 slow entries.
    let skipped: Vec<&String> = names
        .iter()
        .filter(|name| hostile.requests(name) == 0)
        .collect();
    assert!(!skipped.is_empty(), "every slow entry was tried:\n{stderr}");
    for name in skipped {
        let reason = problem(stderr, "images/team-b/slow.yaml", name);
        assert!(
            reason.contains("not resolved in this pass: ")
                && reason.contains(&format!("entries of {slow} timed out after 5s")),
            "{reason}"
        );
    }
    // The other entries were locked and committed.
    let good = read_lock(&repo.work, "images/team-a/good.lock.yaml").expect("good lock written");
    assert!(good.images["web"].tags.contains_key("1.0"), "{good:?}");
    let commits_after = git(&repo.work, &["rev-list", "--count", "HEAD"]);
    assert_ne!(commits_before, commits_after, "a commit was made");
    let committed = git(&repo.work, &["show", "--name-only", "--format=", "HEAD"]);
    assert!(
        committed.contains("images/team-a/good.lock.yaml"),
        "{committed}"
    );
}

/// Copies the `trickle` image (one byte every 200 ms) and a good one, side by side into the
/// real registry, with `floor` and `options`; returns the two results and the layer GETs.
async fn copy_trickle_beside_a_good_image(
    floor: TransferFloor,
    options: EngineOptions,
) -> (Vec<Result<(), String>>, u64) {
    let registry = TestRegistry::start();
    let host = registry.host();
    let good = push_image(&host, "company/web", "1.0", ImageSpec::small("linux/amd64")).await;
    // Under every idle timeout, and 64 KiB take 3.6 hours at this pace.
    let hostile =
        HostileRegistry::start(Duration::from_secs(3600), Duration::from_millis(200)).await;
    let bad = hostile.host();
    let client = RegistryClient::new(ClientConfig {
        policy: RegistryPolicy::insecure([host.clone(), bad.clone()]),
        backoff_base: Duration::from_millis(10),
        transfer_floor: floor,
        ..ClientConfig::default()
    })
    .expect("client");
    let engine = MirrorEngine::new(client, options, Arc::new(Silent));
    let repo =
        |registry: &str, path: &str| ImageRepo::parse(&format!("{registry}/{path}")).expect("repo");
    let request = |source: ImageRepo, digest, to: &str| CopyRequest {
        source,
        digest,
        destination: repo(&host, to),
        tags: vec!["1.0".to_owned()],
        platforms: Vec::new(),
    };
    let copies = engine.copy_all(vec![
        request(
            repo(&bad, "trickle"),
            hostile.image().digest.clone(),
            "mirror/trickle",
        ),
        request(
            repo(&host, "company/web"),
            good.digest.clone(),
            "mirror/web",
        ),
    ]);
    // Only a copy that is never given up reaches this.
    let results = tokio::time::timeout(Duration::from_secs(120), copies)
        .await
        .expect("the trickling copy was given up");
    let results = results
        .into_iter()
        .map(|(_, result)| result.map(|_| ()).map_err(|e| e.to_string()))
        .collect();
    (results, hostile.layer_requests())
}

#[tokio::test]
async fn a_trickling_blob_source_fails_its_copy_while_other_images_mirror() {
    let floor = TransferFloor {
        bytes_per_second: 16 << 10,
        window: Duration::from_secs(2),
    };
    let (results, layer_requests) =
        copy_trickle_beside_a_good_image(floor, EngineOptions::default()).await;

    let error = results[0].as_ref().expect_err("the trickling copy fails");
    assert!(error.contains("transfer too slow"), "{error}");
    assert_eq!(results[1], Ok(()));
    // Given up in its first window, not resumed or retried at the same pace.
    assert_eq!(layer_requests, 1);
}

#[tokio::test]
async fn an_image_copy_past_its_deadline_fails_alone() {
    // No rate floor: only the copy's own deadline stops the trickle.
    let floor = TransferFloor {
        bytes_per_second: 0,
        window: Duration::from_secs(2),
    };
    let options = EngineOptions {
        image_timeout: Some(Duration::from_secs(3)),
        ..EngineOptions::default()
    };
    let (results, _) = copy_trickle_beside_a_good_image(floor, options).await;

    let error = results[0].as_ref().expect_err("the trickling copy fails");
    assert!(
        error.contains("timed out after 3s copying the image"),
        "{error}"
    );
    assert_eq!(results[1], Ok(()));
}

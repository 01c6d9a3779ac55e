//! Repo content as a hostile pull request writes it, against the real binary and real Git:
//! locks linked to secrets and to `/dev/zero`, YAML bombs, directory link chains, links back
//! into the repo, colliding manifests, names a commit cannot hold. Every run must end by
//! itself (never by a signal), quote nothing it should not, and stay in bounded memory.

use std::io::Read as _;
use std::os::unix::fs::symlink;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::common::{
    ConfigRepo, ImageSpec, TestRegistry, free_port, git, image_set, push_image, repo_config,
};

/// Peak memory any run may reach: the issue's bound for the whole process.
const MAX_RSS_KIB: i64 = 128 * 1024;
/// Only a hang reaches this.
const HANG: Duration = Duration::from_secs(120);

/// One finished run of the binary.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    /// The child's own peak resident set, in KiB (see [`run`]).
    peak_rss_kib: i64,
}

impl Run {
    fn output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// Ended by itself, not by a signal (a stack overflow aborts with SIGABRT/SIGSEGV), and
    /// within the memory bound.
    fn assert_sane(&self, what: &str) {
        assert_eq!(
            self.status.signal(),
            None,
            "{what} ended by a signal: {}",
            self.output()
        );
        assert!(
            self.peak_rss_kib < MAX_RSS_KIB,
            "{what} peaked at {} KiB",
            self.peak_rss_kib
        );
    }
}

/// Runs `imagelock ARGS DIR` to the end and measures its peak memory. Blocking; killed after
/// [`HANG`].
///
/// wait4's `ru_maxrss` alone is not the child's own peak: exec charges the child with the
/// high-water mark of the memory it was spawned from, this whole test process. When it is
/// above ours, it is the child's own; otherwise the child's own `VmHWM`, polled from /proc
/// while it runs (a high-water mark: a late poll still sees an earlier peak), is taken.
#[expect(
    clippy::zombie_processes,
    reason = "reaped by wait4, which also gives its rusage"
)]
fn run(dir: &Path, args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_imagelock"))
        .args(args)
        .arg(dir)
        .env_remove("IMAGELOCK_INSECURE_REGISTRIES")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start imagelock");
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
            text
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // The child stays unreaped (so its pid is not reused) until wait4 below returns.
    let (done, finished) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + HANG;
        let mut polled_kib = 0;
        loop {
            if let Some(kib) = vm_hwm_kib(pid) {
                polled_kib = polled_kib.max(kib);
            }
            match finished.recv_timeout(Duration::from_millis(2)) {
                Err(mpsc::RecvTimeoutError::Timeout) if std::time::Instant::now() < deadline => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // SAFETY: kill(2) on our own unreaped child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                _ => return polled_kib,
            }
        }
    });
    let mut raw_status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to locals; `pid` is our child.
    let waited = unsafe { libc::wait4(pid, &mut raw_status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
    let _ = done.send(());
    let polled_kib = watchdog.join().expect("watchdog");
    // SAFETY: as above.
    let mut own: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a local.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut own) };
    let peak_rss_kib = if usage.ru_maxrss > own.ru_maxrss {
        usage.ru_maxrss
    } else {
        polled_kib
    };
    Run {
        status: ExitStatus::from_raw(raw_status),
        stdout: stdout.join().expect("stdout"),
        stderr: stderr.join().expect("stderr"),
        peak_rss_kib,
    }
}

/// `VmHWM` of a running process, in KiB.
fn vm_hwm_kib(pid: libc::pid_t) -> Option<i64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn run_async(dir: &Path, args: &'static [&'static str]) -> Run {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || run(&dir, args))
        .await
        .expect("run")
}

fn web_manifest(host: &str) -> String {
    image_set(
        "team-a",
        "web",
        &format!("    - name: web\n      source: {host}/team-a/web\n      tags: [\"1.0\"]\n"),
    )
}

/// `images/team-a/web.yaml` on a registry that answers.
async fn registry_with_web() -> (TestRegistry, String) {
    let registry = TestRegistry::start();
    let host = registry.host();
    push_image(&host, "team-a/web", "1.0", ImageSpec::small("linux/amd64")).await;
    (registry, host)
}

/// Commits everything in the work tree (links as links) and pushes it.
fn commit_all(repo: &ConfigRepo, message: &str) {
    git(&repo.work, &["add", "-A"]);
    git(&repo.work, &["commit", "-q", "-m", message]);
    git(&repo.work, &["push", "-q", "origin", "main"]);
}

const SECRET: &str = "ghp_S3CR3Tt0k3nTHATmustNEVERshow";

/// Files outside the repo that hostile locks link to: one that is not YAML at all, one that
/// is a lock whose values are the secret (a type error would quote them).
fn secret_files() -> tempfile::TempDir {
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        outside.path().join("token"),
        format!("{SECRET}: [ not yaml\n"),
    )
    .expect("write");
    std::fs::write(
        outside.path().join("environ"),
        format!(
            "apiVersion: imagelock.dev/v1alpha1\nkind: ImageLock\nsource: web.yaml\nimages:\n  web:\n    source: {SECRET}\n    tags:\n      \"1.0\": {{digest: {SECRET}, mediaType: x, generation: 1, resolvedAt: x}}\n"
        ),
    )
    .expect("write");
    outside
}

/// A repo whose two locks link to the secret files.
fn repo_with_linked_locks(host: &str, outside: &Path) -> ConfigRepo {
    let repo = ConfigRepo::new(&[
        ("imagelock.yaml", repo_config()),
        ("images/team-a/web.yaml", web_manifest(host)),
        (
            "images/team-a/api.yaml",
            web_manifest(host).replace("name: web", "name: api"),
        ),
    ]);
    let team_a = repo.work.join("images/team-a");
    symlink(outside.join("token"), team_a.join("web.lock.yaml")).expect("symlink");
    symlink(outside.join("environ"), team_a.join("api.lock.yaml")).expect("symlink");
    commit_all(&repo, "hostile locks");
    repo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_linked_to_a_secret_never_shows_it() {
    let (_registry, host) = registry_with_web().await;
    let outside = secret_files();
    let repo = repo_with_linked_locks(&host, outside.path());
    let insecure: &'static str = Box::leak(host.clone().into_boxed_str());

    let check = run_async(&repo.work, &["check"]).await;
    check.assert_sane("check");
    assert_eq!(check.status.code(), Some(1), "{}", check.output());
    assert!(
        check
            .stderr
            .contains("images/team-a/web.lock.yaml:1:1: is a symlink")
    );

    for format in ["text", "json", "markdown"] {
        let args: &'static [&'static str] = Box::leak(
            vec!["plan", "--format", format, "--insecure-registry", insecure].into_boxed_slice(),
        );
        let plan = run_async(&repo.work, args).await;
        plan.assert_sane("plan");
        assert!(
            !plan.output().contains(SECRET),
            "plan {format}: {}",
            plan.output()
        );
    }

    let args: &'static [&'static str] =
        Box::leak(vec!["lock", "--commit", "--insecure-registry", insecure].into_boxed_slice());
    let lock = run_async(&repo.work, args).await;
    lock.assert_sane("lock");
    assert!(!lock.output().contains(SECRET), "{}", lock.output());
    assert!(lock.stdout.contains("committed"), "{}", lock.output());

    // The links were replaced by regenerated locks; what they pointed at is untouched.
    let tree = git(&repo.work, &["ls-tree", "-r", "HEAD", "images/team-a"]);
    for lock in ["web.lock.yaml", "api.lock.yaml"] {
        let line = tree
            .lines()
            .find(|l| l.ends_with(lock))
            .unwrap_or_else(|| panic!("{lock} in {tree}"));
        assert!(line.starts_with("100644 blob"), "{line}");
    }
    let committed = git(&repo.work, &["show", "HEAD"]);
    assert!(!committed.contains(SECRET), "{committed}");
    assert!(
        std::fs::read_to_string(outside.path().join("token"))
            .expect("token")
            .starts_with(SECRET)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_neither_logs_nor_serves_a_linked_secret() {
    let (_registry, host) = registry_with_web().await;
    let outside = secret_files();
    let repo = repo_with_linked_locks(&host, outside.path());
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = format!("127.0.0.1:{}", free_port());
    let webhook = format!("127.0.0.1:{}", free_port());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_imagelock"))
        .args(["--log-level", "debug", "serve", "--poll-interval", "1s"])
        .args(["--repo", &repo.url()])
        .arg("--workdir")
        .arg(dir.path().join("checkout"))
        .args(["--admin-listen", &admin, "--webhook-listen", &webhook])
        .arg("--tls-self-signed")
        .arg(dir.path().join("tls"))
        .args(["--insecure-registry", &host])
        .env_remove("IMAGELOCK_INSECURE_REGISTRIES")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start imagelock serve");
    let mut stderr = child.stderr.take().expect("stderr");
    let logs = tokio::spawn(async move {
        let mut bytes = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut bytes).await;
        String::from_utf8_lossy(&bytes).into_owned()
    });

    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        let answer = http.get(format!("http://{admin}/status")).send().await;
        if let Ok(answer) = answer {
            let text = answer.text().await.unwrap_or_default();
            let parsed: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if !parsed["lastCommit"].is_null() && !parsed["admission"].is_null() {
                break text;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no commit within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let pid = libc::pid_t::try_from(child.id().expect("running")).expect("pid");
    // SAFETY: kill(2) on the child this test started; SIGTERM is the daemon's stop signal.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let ended = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the daemon stops on SIGTERM")
        .expect("wait");
    let logs = logs.await.expect("logs");
    assert!(ended.success(), "{ended:?}: {logs}");
    assert!(!status.contains(SECRET), "{status}");
    assert!(!logs.contains(SECRET), "{logs}");
    assert!(logs.contains("symlink"), "the links are reported: {logs}");
    let lock = repo.show("images/team-a/web.lock.yaml").expect("lock");
    assert!(
        !lock.contains(SECRET) && lock.contains("kind: ImageLock"),
        "{lock}"
    );
}

#[test]
fn links_to_dev_zero_cost_bounded_memory() {
    let closed = format!("127.0.0.1:{}", free_port());
    let repo = ConfigRepo::new(&[
        ("imagelock.yaml", repo_config()),
        ("images/team-a/web.yaml", web_manifest(&closed)),
    ]);
    symlink("/dev/zero", repo.work.join("images/team-a/web.lock.yaml")).expect("symlink");
    symlink("/dev/zero", repo.work.join("images/team-a/zero.yaml")).expect("symlink");
    let plan = run(&repo.work, &["plan"]);
    plan.assert_sane("plan");
    assert!(
        plan.output()
            .contains("images/team-a/zero.yaml:1:1: is a symlink"),
        "{}",
        plan.output()
    );
    let lock = run(&repo.work, &["lock"]);
    lock.assert_sane("lock");

    let settings = tempfile::tempdir().expect("tempdir");
    symlink("/dev/zero", settings.path().join("imagelock.yaml")).expect("symlink");
    let check = run(settings.path(), &["check"]);
    check.assert_sane("check");
    assert_eq!(check.status.code(), Some(1));
    assert!(
        check.stderr.contains("imagelock.yaml:1:1: is a symlink"),
        "{}",
        check.output()
    );
    eprintln!(
        "peak RSS with /dev/zero links: plan {} KiB, lock {} KiB, check {} KiB",
        plan.peak_rss_kib, lock.peak_rss_kib, check.peak_rss_kib
    );
}

#[test]
fn yaml_bombs_get_a_diagnostic_not_a_crash() {
    let deep = format!("{}x\n", "- ".repeat(20_000));
    assert!(deep.len() > 40_000);
    // A 4 MiB scalar repeated through aliases.
    let aliased = format!(
        "big: &big \"{}\"\ncopies: [{}]\n",
        "x".repeat(4 << 20),
        vec!["*big"; 1_000].join(", ")
    );
    let laughs = "a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n";
    let flow = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let repo = ConfigRepo::new(&[
        ("imagelock.yaml", repo_config()),
        ("images/deep.yaml", deep.clone()),
        ("images/aliased.yaml", aliased),
        ("images/laughs.yaml", laughs.to_owned()),
        ("images/flow.yaml", flow),
        // The same in locks, which are parsed by another path.
        (
            "images/team-a/web.yaml",
            web_manifest(&format!("127.0.0.1:{}", free_port())),
        ),
        ("images/team-a/web.lock.yaml", deep),
    ]);
    let check = run(&repo.work, &["check"]);
    check.assert_sane("check");
    assert_eq!(check.status.code(), Some(1), "{}", check.output());
    let err = &check.stderr;
    assert!(
        err.contains("images/deep.yaml:1:129: nested more than 64 levels deep"),
        "{err}"
    );
    assert!(
        err.contains("images/flow.yaml:1:256: invalid YAML: recursion limit exceeded"),
        "{err}"
    );
    assert!(
        err.contains("images/aliased.yaml:1:6: YAML anchor \"&big\" is not allowed"),
        "{err}"
    );
    assert!(
        err.contains("images/laughs.yaml:1:4: YAML anchor \"&a\" is not allowed"),
        "{err}"
    );
    assert!(
        err.lines().all(|l| l.len() < 400),
        "bounded lines: {err:.2000}"
    );

    let plan = run(&repo.work, &["plan"]);
    plan.assert_sane("plan");
    assert!(
        plan.output()
            .contains("line 1, column 129: nested more than 64 levels deep"),
        "{}",
        plan.output()
    );

    let settings = ConfigRepo::new(&[("imagelock.yaml", format!("{}x\n", "- ".repeat(20_000)))]);
    let check = run(&settings.work, &["check"]);
    check.assert_sane("check");
    assert!(
        check
            .stderr
            .contains("imagelock.yaml:1:129: nested more than 64"),
        "{}",
        check.output()
    );
}

#[test]
fn a_chain_of_directory_links_finishes_at_once() {
    let repo = ConfigRepo::new(&[
        ("imagelock.yaml", repo_config()),
        ("images/d0/web.yaml", web_manifest("quay.io")),
    ]);
    let images = repo.work.join("images");
    // Two links per level: followed, 31 levels would take days.
    for level in 1..=31 {
        std::fs::create_dir(images.join(format!("d{level}"))).expect("mkdir");
        for link in ["a", "b"] {
            symlink(
                format!("../d{}", level - 1),
                images.join(format!("d{level}/{link}")),
            )
            .expect("symlink");
        }
    }
    commit_all(&repo, "link chain");
    let check = run(&repo.work, &["check"]);
    check.assert_sane("check");
    assert_eq!(check.status.code(), Some(1));
    assert_eq!(
        check.stderr.matches(": is a symlink").count(),
        62,
        "{}",
        check.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_collisions_and_bad_names_fail_only_their_own_manifests() {
    let (_registry, host) = registry_with_web().await;
    let evil = image_set(
        "team-evil",
        "app",
        &format!("    - name: app\n      source: {host}/team-a/web\n      tags: [\"1.0\"]\n"),
    );
    let team_b = evil.replace("team-evil", "team-b");
    let repo = ConfigRepo::new(&[
        ("imagelock.yaml", repo_config()),
        ("images/team-a/web.yaml", web_manifest(&host)),
        ("images/team-b/app.yaml", team_b.clone()),
        (
            "images/team-b/app.lock.yaml",
            "# team-b's last good lock\n".to_owned(),
        ),
        ("images/team-b/app.yml", evil.clone()),
        ("images/team-x/bad\nname.yaml", evil.replace("app", "bad")),
        (
            &format!("images/team-x/{}.yaml", "a".repeat(250)),
            evil.replace("app", "long"),
        ),
    ]);
    // A link back into the repo, and one out of it.
    symlink("../team-a", repo.work.join("images/team-b/link")).expect("symlink");
    symlink("/etc", repo.work.join("images/team-b/etc")).expect("symlink");
    commit_all(&repo, "hostile names and links");
    // Git itself refuses to add this name (core.protectNTFS); it can still be in a work tree.
    git_tilde_dir(&repo.work);

    let insecure: &'static str = Box::leak(host.clone().into_boxed_str());
    let args: &'static [&'static str] =
        Box::leak(vec!["lock", "--commit", "--insecure-registry", insecure].into_boxed_slice());
    let lock = run_async(&repo.work, args).await;
    lock.assert_sane("lock");
    let out = lock.output();
    assert!(out.contains("committed"), "{out}");
    assert!(out.contains("images/team-b/app.yaml:1:1: images/team-b/app.yaml and images/team-b/app.yml would share the lock"), "{out}");
    assert!(out.contains("images/team-b/app.yml:1:1:"), "{out}");
    assert!(
        out.contains("images/team-x/bad\\nname.yaml:1:1: the name contains a control character"),
        "{out}"
    );
    assert!(
        out.contains("has a name longer than 255 bytes, so it could not be committed"),
        "{out}"
    );
    assert!(
        out.contains("images/team-x/git~1:1:1: the name names the .git directory"),
        "{out}"
    );

    let changed = git(&repo.work, &["show", "--name-only", "--format=", "HEAD"]);
    assert_eq!(changed.trim(), "images/team-a/web.lock.yaml", "{out}");
    assert_eq!(
        std::fs::read_to_string(repo.work.join("images/team-b/app.lock.yaml")).expect("lock"),
        "# team-b's last good lock\n"
    );
}

fn git_tilde_dir(work: &Path) {
    let dir = work.join("images/team-x/git~1");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("x.yaml"), "kind: x\n").expect("write");
}

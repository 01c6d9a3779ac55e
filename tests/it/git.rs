//! The Git shell against real repositories: bare repos on disk reached through `file://`
//! URLs, with the `git` CLI playing the other writers and inspecting the results.

use std::error::Error;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imagelock::git::{
    Author, Checkout, GitAuth, GitError, GitTimeouts, PushResult, RemoteSpec, RetryError,
    commit_and_push_guarded, commit_and_push_with_retry,
};
use tempfile::TempDir;

type TestResult = Result<(), Box<dyn Error>>;

// ---- helpers -------------------------------------------------------------------------

/// Runs `git` isolated from the user's and system's configuration; returns trimmed stdout.
fn git(dir: &Path, args: &[&str]) -> Result<String, Box<dyn Error>> {
    let output = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args([
            "-c",
            "user.name=Other Writer",
            "-c",
            "user.email=other@example.com",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "git {args:?} in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

/// A bare repo on disk with a `main` branch holding `files`, as the config repo's remote.
struct Remote {
    dir: TempDir,
    bare: PathBuf,
    url: String,
}

impl Remote {
    fn new(files: &[(&str, &str)]) -> Result<Remote, Box<dyn Error>> {
        let dir = tempfile::tempdir()?;
        let bare = dir.path().join("config.git");
        git(dir.path(), &["init", "--bare", "-b", "main", "config.git"])?;
        let url = format!("file://{}", bare.display());
        let seed = dir.path().join("seed");
        git(dir.path(), &["init", "-b", "main", "seed"])?;
        for (path, content) in files {
            write(&seed, path, content)?;
        }
        git(&seed, &["add", "-A"])?;
        git(&seed, &["commit", "-m", "seed"])?;
        git(&seed, &["push", &url, "main"])?;
        Ok(Remote { dir, bare, url })
    }

    fn spec(&self) -> RemoteSpec {
        RemoteSpec {
            url: self.url.clone(),
            branch: "main".to_owned(),
            auth: GitAuth::None,
        }
    }

    /// `git` inside the bare repo.
    fn git(&self, args: &[&str]) -> Result<String, Box<dyn Error>> {
        git(&self.bare, args)
    }

    fn head(&self) -> Result<String, Box<dyn Error>> {
        self.git(&["rev-parse", "main"])
    }

    /// Commit subjects on `main`, newest first.
    fn subjects(&self) -> Result<Vec<String>, Box<dyn Error>> {
        Ok(self
            .git(&["log", "--format=%s", "main"])?
            .lines()
            .map(str::to_owned)
            .collect())
    }

    /// Another writer (the `git` CLI in its own clone) commits `path` and pushes.
    fn other_writer_push(
        &self,
        path: &str,
        content: &str,
        subject: &str,
    ) -> Result<String, Box<dyn Error>> {
        let clone = self
            .dir
            .path()
            .join(format!("other-{}", subject.replace(' ', "-")));
        git(
            self.dir.path(),
            &[
                "clone",
                "-q",
                "-b",
                "main",
                &self.url,
                &clone.to_string_lossy(),
            ],
        )?;
        write(&clone, path, content)?;
        git(&clone, &["add", path])?;
        git(&clone, &["commit", "-q", "-m", subject])?;
        git(&clone, &["push", "-q", "origin", "main"])?;
        git(&clone, &["rev-parse", "HEAD"])
    }
}

fn write(root: &Path, path: &str, content: &str) -> std::io::Result<()> {
    let full = root.join(path);
    if let Some(parent) = full.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(full, content)
}

fn author() -> Author {
    Author {
        name: "imagelock bot".to_owned(),
        email: "imagelock@example.com".to_owned(),
    }
}

/// The same for every test: libgit2's socket timeouts are process-wide and set by the first
/// checkout, so every test here sees a 5 s socket stall limit.
fn timeouts() -> GitTimeouts {
    GitTimeouts {
        connect: Duration::from_secs(5),
        operation: Duration::from_secs(5),
    }
}

/// `git daemon` serving the bare repos under `base` over `git://`, pushes enabled: a real
/// server, which (unlike libgit2's `file://` transport) runs the repo's hooks.
struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    fn start(base: &Path) -> Result<Daemon, Box<dyn Error>> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("git")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .arg("daemon")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .args(["--export-all", "--enable=receive-pack", "--reuseaddr"])
            .arg(base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let daemon = Daemon { child, port };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                return Err("git daemon did not start".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(daemon)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clone(remote: &Remote) -> Result<(TempDir, Checkout), Box<dyn Error>> {
    let work = tempfile::tempdir()?;
    let checkout = Checkout::open_or_clone(remote.spec(), &work.path().join("repo"), timeouts())?;
    Ok((work, checkout))
}

fn paths(list: &[&str]) -> Vec<PathBuf> {
    list.iter().map(PathBuf::from).collect()
}

const SEED: &[(&str, &str)] = &[
    ("imagelock.yaml", "registry: registry.internal\n"),
    ("images/web.yaml", "kind: ImageSet\n"),
    ("README.md", "config repo\n"),
];

// ---- clone, commit, push -------------------------------------------------------------

#[test]
fn clone_checks_out_the_branch() -> TestResult {
    let remote = Remote::new(SEED)?;
    let (_work, checkout) = clone(&remote)?;
    assert_eq!(checkout.head()?, remote.head()?);
    assert_eq!(
        std::fs::read_to_string(checkout.worktree().join("images/web.yaml"))?,
        "kind: ImageSet\n"
    );
    Ok(())
}

#[test]
fn commit_and_push_land_in_the_remote_with_the_author() -> TestResult {
    let remote = Remote::new(SEED)?;
    let (_work, mut checkout) = clone(&remote)?;
    let tree = checkout.worktree().to_path_buf();
    write(&tree, "images/web.lock.yaml", "kind: ImageLock\n")?;
    // Changes the commit must not pick up: an untracked file, an edit, a staged file.
    write(&tree, "junk.txt", "scratch\n")?;
    write(&tree, "README.md", "edited locally\n")?;
    write(&tree, "staged.txt", "staged\n")?;
    git(&tree, &["add", "staged.txt"])?;

    let commit = checkout
        .commit(&paths(&["images/web.lock.yaml"]), "lock: web", &author())?
        .ok_or("expected a commit")?;
    checkout.push()?;

    assert_eq!(remote.head()?, commit);
    assert_eq!(
        remote.git(&["log", "-1", "--format=%an <%ae>|%cn <%ce>|%s", "main"])?,
        "imagelock bot <imagelock@example.com>|imagelock bot <imagelock@example.com>|lock: web"
    );
    assert_eq!(
        remote.git(&["diff-tree", "--no-commit-id", "--name-status", "-r", "main"])?,
        "A\timages/web.lock.yaml"
    );
    assert_eq!(remote.git(&["show", "main:README.md"])?, "config repo");
    Ok(())
}

#[test]
fn nothing_to_commit_is_none_and_adds_no_commit() -> TestResult {
    let remote = Remote::new(SEED)?;
    let (_work, mut checkout) = clone(&remote)?;
    let before = checkout.head()?;
    // Rewritten with the same bytes; a named path that exists nowhere.
    write(checkout.worktree(), "images/web.yaml", "kind: ImageSet\n")?;
    let result = checkout.commit(
        &paths(&["images/web.yaml", "images/absent.lock.yaml"]),
        "lock: nothing",
        &author(),
    )?;
    assert_eq!(result, None);
    assert_eq!(checkout.head()?, before);
    checkout.push()?;
    assert_eq!(remote.head()?, before);
    assert_eq!(remote.subjects()?, ["seed"]);
    Ok(())
}

#[test]
fn deleted_paths_are_committed() -> TestResult {
    let remote = Remote::new(&[
        ("images/web.yaml", "kind: ImageSet\n"),
        ("images/web.lock.yaml", "kind: ImageLock\n"),
        ("outputs/a/kustomization.yaml", "a\n"),
        ("outputs/a/b.yaml", "b\n"),
        ("README.md", "x\n"),
    ])?;
    let (_work, mut checkout) = clone(&remote)?;
    std::fs::remove_file(checkout.worktree().join("images/web.lock.yaml"))?;
    std::fs::remove_dir_all(checkout.worktree().join("outputs"))?;
    // Deleted too, but not named: must stay in the commit's tree.
    std::fs::remove_file(checkout.worktree().join("README.md"))?;

    checkout
        .commit(
            &paths(&["images/web.lock.yaml", "outputs/a"]),
            "lock: remove web",
            &author(),
        )?
        .ok_or("expected a commit")?;
    checkout.push()?;
    assert_eq!(
        remote.git(&["ls-tree", "-r", "--name-only", "main"])?,
        "README.md\nimages/web.yaml"
    );
    Ok(())
}

#[test]
fn commit_refuses_paths_outside_the_worktree() -> TestResult {
    let remote = Remote::new(SEED)?;
    let (_work, mut checkout) = clone(&remote)?;
    std::os::unix::fs::symlink("/etc", checkout.worktree().join("evil"))?;
    for bad in [
        "/etc/passwd",
        "../outside",
        "images/../../x",
        ".git/config",
        "evil/passwd",
        "images",
    ] {
        let err = checkout
            .commit(&paths(&[bad]), "bad", &author())
            .err()
            .ok_or(format!("{bad} accepted"))?;
        assert!(matches!(err, GitError::InvalidPath { .. }), "{bad}: {err}");
    }
    assert_eq!(checkout.head()?, remote.head()?);
    Ok(())
}

// ---- sync ------------------------------------------------------------------------------

#[test]
fn sync_after_another_push_moves_and_discards_local_changes() -> TestResult {
    let remote = Remote::new(SEED)?;
    let (_work, mut checkout) = clone(&remote)?;
    let before = checkout.head()?;

    let unchanged = checkout.sync()?;
    assert_eq!(
        (unchanged.moved, unchanged.previous.as_deref()),
        (false, Some(before.as_str()))
    );

    let theirs = remote.other_writer_push("images/api.yaml", "kind: ImageSet\n", "add api")?;
    let tree = checkout.worktree().to_path_buf();
    write(&tree, "README.md", "local edit\n")?;
    write(&tree, "stray/file.txt", "untracked\n")?;

    let outcome = checkout.sync()?;
    assert!(outcome.moved);
    assert_eq!(outcome.head, theirs);
    assert_eq!(outcome.previous.as_deref(), Some(before.as_str()));
    assert_eq!(checkout.head()?, theirs);
    assert!(tree.join("images/api.yaml").is_file());
    assert_eq!(
        std::fs::read_to_string(tree.join("README.md"))?,
        "config repo\n"
    );
    assert!(!tree.join("stray").exists());
    assert_eq!(
        checkout.changed_paths(&before, &theirs)?,
        paths(&["images/api.yaml"])
    );
    Ok(())
}

// ---- the race with another writer -------------------------------------------------------

#[test]
fn push_after_another_writer_is_rejected_then_retry_lands_on_top() -> TestResult {
    let remote = Remote::new(SEED)?;
    let (_work, mut checkout) = clone(&remote)?;
    checkout.sync()?;
    write(checkout.worktree(), "images/web.lock.yaml", "ours v1\n")?;
    let ours = checkout
        .commit(&paths(&["images/web.lock.yaml"]), "lock: web", &author())?
        .ok_or("expected a commit")?;

    // The other writer wins the race between our sync and our push.
    let theirs = remote.other_writer_push("images/api.yaml", "kind: ImageSet\n", "add api")?;
    let err = checkout
        .push()
        .err()
        .ok_or("push over another writer succeeded")?;
    assert!(err.is_rejected(), "{err}");
    assert_eq!(err.metric_label(), "rejected");
    assert_eq!(remote.head()?, theirs, "their commit must stay");
    assert_ne!(remote.head()?, ours);

    let mut seen = Vec::new();
    let result = commit_and_push_with_retry(&mut checkout, &author(), 3, |tree| {
        // Rebuilt from the fresh head: sees the other writer's file.
        seen.push(tree.join("images/api.yaml").is_file());
        std::fs::write(tree.join("images/web.lock.yaml"), "ours v1\n")?;
        Ok::<_, std::io::Error>(Some((
            paths(&["images/web.lock.yaml"]),
            "lock: web".to_owned(),
        )))
    })?;
    let PushResult::Pushed { commit, attempts } = result else {
        return Err(format!("expected a push, got {result:?}").into());
    };
    assert_eq!((attempts, seen.as_slice()), (1, &[true][..]));
    assert_eq!(remote.head()?, commit);
    assert_eq!(remote.subjects()?, ["lock: web", "add api", "seed"]);
    remote.git(&["merge-base", "--is-ancestor", &theirs, "main"])?;
    Ok(())
}

#[test]
fn retry_loop_recovers_from_a_race_inside_the_loop() -> TestResult {
    let remote = Remote::new(SEED)?;
    let (_work, mut checkout) = clone(&remote)?;
    let mut calls = 0;
    let mut theirs = None;
    let result = commit_and_push_with_retry(&mut checkout, &author(), 3, |tree| {
        calls += 1;
        if calls == 1 {
            // Someone pushes after our sync, before our push.
            theirs =
                Some(remote.other_writer_push("images/api.lock.yaml", "theirs\n", "lock: api")?);
        }
        std::fs::write(tree.join("images/web.lock.yaml"), format!("ours {calls}\n"))?;
        Ok::<_, Box<dyn Error>>(Some((
            paths(&["images/web.lock.yaml"]),
            "lock: web".to_owned(),
        )))
    })
    .map_err(|e| e.to_string())?;
    assert!(
        matches!(result, PushResult::Pushed { attempts: 2, .. }),
        "{result:?}"
    );
    assert_eq!(remote.subjects()?, ["lock: web", "lock: api", "seed"]);
    let theirs = theirs.ok_or("other writer did not run")?;
    remote.git(&["merge-base", "--is-ancestor", &theirs, "main"])?;
    assert_eq!(
        remote.git(&["show", "main:images/web.lock.yaml"])?,
        "ours 2"
    );
    assert_eq!(
        remote.git(&["show", "main:images/api.lock.yaml"])?,
        "theirs"
    );
    Ok(())
}

#[test]
fn retry_loop_gives_up_after_max_attempts() -> TestResult {
    let remote = Remote::new(SEED)?;
    let (_work, mut checkout) = clone(&remote)?;
    let mut calls = 0;
    let result = commit_and_push_with_retry(&mut checkout, &author(), 2, |tree| {
        calls += 1;
        remote.other_writer_push("race.txt", &format!("{calls}\n"), &format!("race {calls}"))?;
        std::fs::write(tree.join("ours.txt"), "ours\n")?;
        Ok::<_, Box<dyn Error>>(Some((paths(&["ours.txt"]), "ours".to_owned())))
    });
    match result {
        Err(RetryError::Exhausted { attempts: 2, last }) => assert!(last.is_rejected()),
        other => return Err(format!("expected Exhausted, got {other:?}").into()),
    }
    assert_eq!(calls, 2);
    assert_eq!(remote.subjects()?, ["race 2", "race 1", "seed"]);
    Ok(())
}

#[test]
fn retry_loop_nothing_to_do() -> TestResult {
    let remote = Remote::new(SEED)?;
    let (_work, mut checkout) = clone(&remote)?;
    let none = commit_and_push_with_retry(&mut checkout, &author(), 3, |_| {
        Ok::<_, std::io::Error>(None)
    })?;
    assert_eq!(none, PushResult::NothingToCommit);
    let unchanged = commit_and_push_with_retry(&mut checkout, &author(), 3, |tree| {
        std::fs::write(tree.join("README.md"), "config repo\n")?;
        Ok::<_, std::io::Error>(Some((paths(&["README.md"]), "same".to_owned())))
    })?;
    assert_eq!(unchanged, PushResult::NothingToCommit);
    let failed = commit_and_push_with_retry(&mut checkout, &author(), 3, |_| {
        Err::<Option<(Vec<PathBuf>, String)>, _>("manifest broken")
    });
    assert!(matches!(failed, Err(RetryError::Apply("manifest broken"))));
    assert_eq!(remote.subjects()?, ["seed"]);
    Ok(())
}

/// The guard is asked after the commit, right before the push: a "no" leaves the remote as
/// it was, and the next round starts from the remote's head again.
#[test]
fn a_withheld_push_leaves_the_remote_alone() -> TestResult {
    let remote = Remote::new(SEED)?;
    let (_work, mut checkout) = clone(&remote)?;
    let asked = std::cell::Cell::new(0);
    let write = |tree: &Path| {
        std::fs::write(tree.join("lock.yaml"), "pinned\n")?;
        Ok::<_, std::io::Error>(Some((paths(&["lock.yaml"]), "pin".to_owned())))
    };
    let withheld = commit_and_push_guarded(&mut checkout, &author(), 3, write, || {
        asked.set(asked.get() + 1);
        false
    });
    assert!(
        matches!(withheld, Err(RetryError::PushWithheld)),
        "{withheld:?}"
    );
    assert_eq!(asked.get(), 1);
    assert_eq!(remote.subjects()?, ["seed"]);
    // What the daemon does then: the unpushed commit goes, without a fetch.
    let lock = checkout.worktree().join("lock.yaml");
    assert!(lock.exists(), "the withheld commit is still checked out");
    checkout.discard_local()?;
    assert!(!lock.exists(), "the work tree is the remote's again");
    assert_eq!(checkout.head()?, remote.head()?);
    let pushed = commit_and_push_guarded(&mut checkout, &author(), 3, write, || true)?;
    assert!(
        matches!(pushed, PushResult::Pushed { attempts: 1, .. }),
        "{pushed:?}"
    );
    assert_eq!(remote.subjects()?, ["pin", "seed"]);
    Ok(())
}

#[test]
fn a_ref_refused_by_the_server_is_rejected_with_its_reason() -> TestResult {
    let remote = Remote::new(SEED)?;
    let hook = remote.bare.join("hooks/pre-receive");
    std::fs::write(
        &hook,
        "#!/bin/sh\necho 'policy: lock files need review' >&2\nexit 1\n",
    )?;
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let daemon = Daemon::start(remote.dir.path())?;
    let spec = RemoteSpec {
        url: format!("git://127.0.0.1:{}/config.git", daemon.port),
        ..remote.spec()
    };
    let work = tempfile::tempdir()?;
    let mut checkout = Checkout::open_or_clone(spec, &work.path().join("repo"), timeouts())?;
    let before = remote.head()?;
    write(checkout.worktree(), "images/web.lock.yaml", "x\n")?;
    checkout.commit(&paths(&["images/web.lock.yaml"]), "lock: web", &author())?;

    // `Remote::push` itself returns Ok here; only the per-ref status tells.
    let err = checkout
        .push()
        .err()
        .ok_or("push past a refusing hook succeeded")?;
    let GitError::Rejected { reason, .. } = &err else {
        return Err(format!("expected Rejected, got {err:?}").into());
    };
    assert!(reason.contains("refs/heads/main"), "{reason}");
    assert!(
        reason.contains("policy: lock files need review"),
        "{reason}"
    );
    assert_eq!(remote.head()?, before);
    Ok(())
}

// ---- errors ----------------------------------------------------------------------------

#[test]
fn unreachable_remote_is_a_clean_error() -> TestResult {
    let work = tempfile::tempdir()?;
    let spec = RemoteSpec {
        url: "file:///nonexistent/config.git".to_owned(),
        branch: "main".to_owned(),
        auth: GitAuth::None,
    };
    let err = Checkout::open_or_clone(spec, &work.path().join("repo"), timeouts())
        .err()
        .ok_or("clone of a missing remote succeeded")?;
    let text = err.to_string();
    assert!(matches!(err, GitError::Remote { .. }), "{err:?}");
    assert!(
        text.starts_with("git clone file:///nonexistent/config.git: "),
        "{text}"
    );
    Ok(())
}

#[test]
fn missing_branch_is_named() -> TestResult {
    let remote = Remote::new(SEED)?;
    let work = tempfile::tempdir()?;
    let spec = RemoteSpec {
        branch: "production".to_owned(),
        ..remote.spec()
    };
    let err = Checkout::open_or_clone(spec, &work.path().join("repo"), timeouts())
        .err()
        .ok_or("clone of a missing branch succeeded")?;
    assert!(
        matches!(&err, GitError::BranchNotFound { branch, .. } if branch == "production"),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn userinfo_is_redacted_in_errors() -> TestResult {
    let work = tempfile::tempdir()?;
    let token = tempfile::NamedTempFile::new()?;
    std::fs::write(token.path(), "tok-from-file\n")?;
    // Port 1 on loopback: connection refused, no network needed.
    let spec = RemoteSpec {
        url: "https://bot:s3cr3t-token@127.0.0.1:1/org/config.git".to_owned(),
        branch: "main".to_owned(),
        auth: GitAuth::TokenFile(token.path().to_owned()),
    };
    assert!(!format!("{spec:?}").contains("s3cr3t"));
    let err = Checkout::open_or_clone(spec, &work.path().join("repo"), timeouts())
        .err()
        .ok_or("clone from a closed port succeeded")?;
    let text = format!("{err} / {err:?}");
    assert!(!text.contains("s3cr3t") && !text.contains("bot:"), "{text}");
    assert!(!text.contains("tok-from-file"), "{text}");
    assert!(
        text.contains("https://***@127.0.0.1:1/org/config.git"),
        "{text}"
    );
    Ok(())
}

#[test]
fn an_operation_past_its_deadline_times_out() -> TestResult {
    let remote = Remote::new(SEED)?;
    let work = tempfile::tempdir()?;
    let zero = GitTimeouts {
        operation: Duration::ZERO,
        ..timeouts()
    };
    let err = Checkout::open_or_clone(remote.spec(), &work.path().join("repo"), zero)
        .err()
        .ok_or("clone with a zero deadline succeeded")?;
    assert!(
        matches!(
            err,
            GitError::Timeout {
                operation: imagelock::git::Operation::Clone,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.metric_label(), "timeout");
    Ok(())
}

#[test]
fn a_silent_server_times_out() -> TestResult {
    // Accepts the connection, then never answers.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let server = std::thread::spawn(move || {
        let held = listener.accept();
        std::thread::sleep(Duration::from_secs(10));
        drop(held);
    });
    let work = tempfile::tempdir()?;
    let spec = RemoteSpec {
        url: format!("git://127.0.0.1:{port}/config.git"),
        branch: "main".to_owned(),
        auth: GitAuth::None,
    };
    let start = Instant::now();
    let err = Checkout::open_or_clone(spec, &work.path().join("repo"), timeouts())
        .err()
        .ok_or("clone from a silent server succeeded")?;
    assert!(matches!(err, GitError::Timeout { .. }), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(12),
        "{:?}",
        start.elapsed()
    );
    drop(server);
    Ok(())
}

// ---- the work dir ----------------------------------------------------------------------

#[test]
fn open_or_clone_refuses_a_non_empty_unrelated_dir() -> TestResult {
    let remote = Remote::new(SEED)?;
    let work = tempfile::tempdir()?;
    write(work.path(), "precious.txt", "keep me\n")?;
    let err = Checkout::open_or_clone(remote.spec(), work.path(), timeouts())
        .err()
        .ok_or("took over an unrelated dir")?;
    assert!(matches!(err, GitError::WorkdirNotOurs { .. }), "{err:?}");
    assert_eq!(err.metric_label(), "workdir_not_ours");
    assert_eq!(
        std::fs::read_to_string(work.path().join("precious.txt"))?,
        "keep me\n"
    );
    Ok(())
}

#[test]
fn open_or_clone_refuses_a_foreign_clone_of_another_remote() -> TestResult {
    let remote = Remote::new(SEED)?;
    let other = Remote::new(&[("x", "y")])?;
    let work = tempfile::tempdir()?;
    git(work.path(), &["clone", "-q", &other.url, "repo"])?;
    let err = Checkout::open_or_clone(remote.spec(), &work.path().join("repo"), timeouts())
        .err()
        .ok_or("took over someone else's clone")?;
    assert!(matches!(err, GitError::WorkdirNotOurs { .. }), "{err:?}");
    assert!(work.path().join("repo/x").is_file());
    Ok(())
}

#[test]
fn open_or_clone_reopens_and_replaces_its_own_clones() -> TestResult {
    let remote = Remote::new(SEED)?;
    let work = tempfile::tempdir()?;
    let dir = work.path().join("repo");
    let first = Checkout::open_or_clone(remote.spec(), &dir, timeouts())?;
    let head = first.head()?;
    drop(first);

    // Same remote: opened as is (no re-clone: the untracked file survives until sync).
    write(&dir, "leftover.txt", "x\n")?;
    let mut again = Checkout::open_or_clone(remote.spec(), &dir, timeouts())?;
    assert_eq!(again.head()?, head);
    assert!(dir.join("leftover.txt").exists());
    again.sync()?;
    assert!(!dir.join("leftover.txt").exists());
    drop(again);

    // Another remote: our old clone is replaced.
    let other = Remote::new(&[("other.yaml", "other\n")])?;
    let replaced = Checkout::open_or_clone(other.spec(), &dir, timeouts())?;
    assert_eq!(replaced.head()?, other.head()?);
    assert!(dir.join("other.yaml").is_file());
    assert!(!dir.join("README.md").exists());
    Ok(())
}

#[test]
fn open_or_clone_adopts_an_existing_clone_of_the_same_remote() -> TestResult {
    // E.g. made by an init container running `git clone`.
    let remote = Remote::new(SEED)?;
    let work = tempfile::tempdir()?;
    git(work.path(), &["clone", "-q", &remote.url, "repo"])?;
    let mut checkout =
        Checkout::open_or_clone(remote.spec(), &work.path().join("repo"), timeouts())?;
    let outcome = checkout.sync()?;
    assert_eq!(outcome.head, remote.head()?);
    Ok(())
}

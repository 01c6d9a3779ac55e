//! A config repo on disk: a working clone and a bare `file://` remote, made with the git CLI.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// Runs git in `dir`, panicking with its stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=test", "-c", "user.email=test@example.com"])
        .args(args)
        .output()
        .expect("run git");
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A working clone (`work`) pushed to a bare remote (`bare`), branch `main`.
pub struct ConfigRepo {
    _dir: TempDir,
    pub work: PathBuf,
    pub bare: PathBuf,
}

impl ConfigRepo {
    /// Creates the repo with `files` (repo-relative path, content) in its first commit.
    pub fn new(files: &[(&str, String)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let work = dir.path().join("work");
        let bare = dir.path().join("remote.git");
        std::fs::create_dir_all(&work).expect("mkdir");
        git(&work, &["init", "-q", "-b", "main"]);
        for (path, content) in files {
            write(&work, path, content);
        }
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "initial manifests"]);
        git(dir.path(), &["clone", "-q", "--bare", "work", "remote.git"]);
        git(
            &work,
            &[
                "remote",
                "add",
                "origin",
                bare.to_str().expect("utf-8 path"),
            ],
        );
        git(&work, &["fetch", "-q", "origin"]);
        git(&work, &["branch", "-q", "--set-upstream-to=origin/main"]);
        ConfigRepo {
            _dir: dir,
            work,
            bare,
        }
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    /// Commits on the remote's main.
    pub fn commit_count(&self) -> usize {
        git(&self.bare, &["rev-list", "--count", "main"])
            .trim()
            .parse()
            .expect("count")
    }

    /// A file as the remote's main has it.
    pub fn show(&self, path: &str) -> Option<String> {
        let output = Command::new("git")
            .current_dir(&self.bare)
            .args(["show", &format!("main:{path}")])
            .output()
            .expect("run git");
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Subject lines on the remote's main, newest first.
    pub fn subjects(&self) -> Vec<String> {
        git(&self.bare, &["log", "--format=%s", "main"])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Another writer: pull, change a file, commit and push from the working clone.
    pub fn push_change(&self, path: &str, content: &str, message: &str) {
        git(&self.work, &["pull", "-q", "--rebase", "origin", "main"]);
        write(&self.work, path, content);
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", message]);
        git(&self.work, &["push", "-q", "origin", "main"]);
    }
}

/// Writes a repo-relative file, creating its directories.
pub fn write(root: &Path, path: &str, content: &str) {
    let full = root.join(path);
    if let Some(parent) = full.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(full, content).expect("write");
}

/// A minimal valid `imagelock.yaml`.
pub fn repo_config() -> String {
    "apiVersion: imagelock.dev/v1alpha1\nkind: Config\ngit:\n  authorName: imagelock-bot\n  authorEmail: bot@example.com\n"
        .to_owned()
}

/// An ImageSet with `images` as the YAML of its `spec.images` list (indented by 4).
pub fn image_set(namespace: &str, name: &str, images: &str) -> String {
    format!(
        "apiVersion: imagelock.dev/v1alpha1\nkind: ImageSet\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  images:\n{images}"
    )
}

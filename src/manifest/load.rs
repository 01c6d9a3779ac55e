//! Reading a whole config repo checkout: `imagelock.yaml` and every manifest under `images/`.
//!
//! A bad file never stops the others: each problem becomes a [`Diagnostic`] and the valid sets
//! are still returned. Files are found and read by [`walk`](super::walk): no symlink is
//! followed, only regular files are read, each with a size cap.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::imageset;
use super::model::{ImageSet, Position, RepoConfig};
use super::walk::{self, FileRead, MAX_FILE_SIZE};
use super::yaml::FILE_START;
use super::{Diagnostic, ManifestError, parse_repo_config};

/// The repo's settings file, at its root.
pub const CONFIG_FILE: &str = "imagelock.yaml";
/// Where manifests and their locks live.
pub const IMAGES_DIR: &str = "images";

/// Everything `load_repo` found.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedRepo {
    /// The settings; defaults when there is no `imagelock.yaml`, `None` when it is invalid.
    pub config: Option<RepoConfig>,
    /// The valid ImageSets, sorted by path.
    pub sets: Vec<ImageSet>,
    /// Every problem found, sorted by path, line and column.
    pub diagnostics: Vec<Diagnostic>,
}

impl LoadedRepo {
    /// True when nothing at all was reported.
    pub fn is_valid(&self) -> bool {
        self.diagnostics.is_empty()
    }

    /// Drops, with a diagnostic, every set that defines an alias an earlier set (by path)
    /// already defines in the same namespace. Call it after taking out the sets that may
    /// not be read (tenancy): only those left compete for an alias.
    pub fn drop_duplicate_aliases(&mut self) {
        let sets = std::mem::take(&mut self.sets);
        let mut defined: HashMap<(String, String), (PathBuf, Position)> = HashMap::new();
        let mut kept = Vec::new();
        for set in sets {
            let mut clashes = Vec::new();
            for (index, image) in set.images.iter().enumerate() {
                let key = (set.namespace.clone(), image.name.clone());
                if let Some((path, position)) = defined.get(&key) {
                    clashes.push(Diagnostic {
                        path: set.path.clone(),
                        position: image.name_position,
                        message: format!(
                            "spec.images[{index}].name: duplicate alias {:?} in namespace {:?}; it is already defined at {}:{}:{}, and aliases must be unique per namespace (this file is ignored until one of them is renamed)",
                            image.name,
                            set.namespace,
                            path.display(),
                            position.line,
                            position.col
                        ),
                    });
                }
            }
            if clashes.is_empty() {
                for image in &set.images {
                    defined.insert(
                        (set.namespace.clone(), image.name.clone()),
                        (set.path.clone(), image.name_position),
                    );
                }
                kept.push(set);
            } else {
                self.diagnostics.extend(clashes);
            }
        }
        self.sets = kept;
        self.diagnostics
            .sort_by(|a, b| (&a.path, a.position).cmp(&(&b.path, b.position)));
    }
}

/// Reads `root/imagelock.yaml` (missing: defaults) and every `images/**/*.yaml` and `*.yml`
/// except `*.lock.yaml`, as [`walk::image_files`] finds them; hidden files and directories
/// are skipped. When `imagelock.yaml` is invalid the sets are still checked against the
/// defaults, so that one run reports everything. Aliases defined twice in one namespace are
/// left for [`LoadedRepo::drop_duplicate_aliases`], which runs once the operator's tenancy
/// has taken out the manifests that may not declare their namespace (else a refused
/// manifest could shadow another team's alias). Errors only when `root` itself cannot be
/// read.
pub fn load_repo(root: &Path) -> Result<LoadedRepo, ManifestError> {
    let io_error = |source| ManifestError::Io {
        path: root.to_path_buf(),
        source,
    };
    if !fs::metadata(root).map_err(io_error)?.is_dir() {
        return Err(ManifestError::NotADirectory {
            path: root.to_path_buf(),
        });
    }
    // The root is the operator's (the daemon's work dir, or the directory given to the CLI):
    // it may be a link. Nothing below it is followed.
    let real_root = fs::canonicalize(root).map_err(io_error)?;
    fs::read_dir(&real_root).map_err(io_error)?;
    let mut loader = Loader {
        root: real_root,
        diagnostics: Vec::new(),
    };

    let config = loader.config();
    let files = walk::image_files(&loader.root);
    loader.diagnostics.extend(files.diagnostics);
    let mut sets = Vec::new();
    for path in files.manifests {
        let Some(text) = loader.read(&path) else {
            continue;
        };
        match imageset::parse(&path, &text, config.as_ref()) {
            Ok(set) => sets.push(set),
            Err(diagnostics) => loader.diagnostics.extend(diagnostics),
        }
    }
    sets.sort_by(|a, b| a.path.cmp(&b.path));

    let mut diagnostics = loader.diagnostics;
    // Stable: messages at the same position keep the order they were found in.
    diagnostics.sort_by(|a, b| (&a.path, a.position).cmp(&(&b.path, b.position)));
    Ok(LoadedRepo {
        config,
        sets,
        diagnostics,
    })
}

struct Loader {
    /// The canonical root.
    root: PathBuf,
    diagnostics: Vec<Diagnostic>,
}

impl Loader {
    fn report(&mut self, path: &Path, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic {
            path: path.to_path_buf(),
            position: FILE_START,
            message: message.into(),
        });
    }

    /// The text of a repo-relative file, or `None` (reported unless it is missing).
    fn read_or_missing(&mut self, path: &Path) -> Result<Option<String>, ()> {
        match walk::read_repo_file(&self.root, path, MAX_FILE_SIZE) {
            Ok(FileRead::Text(text)) => Ok(Some(match text.strip_prefix('\u{feff}') {
                Some(without_bom) => without_bom.to_owned(),
                None => text,
            })),
            Ok(FileRead::Missing) => Ok(None),
            Ok(FileRead::Refused(why)) => {
                self.report(path, format!("{why}; not read"));
                Err(())
            }
            Err(error) => {
                self.report(path, format!("cannot read: {}", error.kind()));
                Err(())
            }
        }
    }

    /// The contents of a repo-relative file, or `None` after reporting why not.
    fn read(&mut self, path: &Path) -> Option<String> {
        match self.read_or_missing(path) {
            Ok(Some(text)) => Some(text),
            Ok(None) => {
                self.report(path, "disappeared while the repository was read");
                None
            }
            Err(()) => None,
        }
    }

    /// `imagelock.yaml`: defaults when missing, `None` when invalid or refused.
    fn config(&mut self) -> Option<RepoConfig> {
        let path = Path::new(CONFIG_FILE);
        let text = match self.read_or_missing(path) {
            Ok(Some(text)) => text,
            Err(()) => return None,
            Ok(None) => {
                let misnamed = Path::new("imagelock.yml");
                if fs::symlink_metadata(self.root.join(misnamed)).is_ok() {
                    self.report(
                        misnamed,
                        "ignored: the settings file must be named imagelock.yaml",
                    );
                }
                return Some(RepoConfig::default());
            }
        };
        match parse_repo_config(path, &text) {
            Ok(config) => Some(config),
            Err(diagnostics) => {
                self.diagnostics.extend(diagnostics);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn mk_set(namespace: &str, aliases: &[&str]) -> String {
        let mut text = format!(
            "apiVersion: imagelock.dev/v1alpha1\nkind: ImageSet\nmetadata: {{name: set, namespace: {namespace}}}\nspec:\n  images:\n"
        );
        for alias in aliases {
            text.push_str(&format!(
                "    - name: {alias}\n      source: quay.io/company/{alias}\n      tags: [latest]\n"
            ));
        }
        text
    }

    fn mk_repo(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let full = dir.path().join(path);
            fs::create_dir_all(full.parent().unwrap()).unwrap();
            fs::write(full, text).unwrap();
        }
        dir
    }

    fn messages(repo: &LoadedRepo) -> Vec<String> {
        repo.diagnostics.iter().map(ToString::to_string).collect()
    }

    fn paths(repo: &LoadedRepo) -> Vec<String> {
        repo.sets
            .iter()
            .map(|set| set.path.display().to_string())
            .collect()
    }

    #[test]
    fn finds_manifests_and_skips_the_rest() {
        let dir = mk_repo(&[
            ("images/team-b/web.yaml", &mk_set("team-b", &["web"])),
            ("images/team-a/web.yml", &mk_set("team-a", &["web"])),
            (
                "images/team-a/deep/er/api.yaml",
                &mk_set("team-a", &["api"]),
            ),
            ("images/team-a/web.lock.yaml", "not: [a manifest"),
            ("images/team-a/README.md", "# docs"),
            ("images/team-a/.draft.yaml", "not: [a manifest"),
            ("images/.hidden/x.yaml", "not: [a manifest"),
            ("other/x.yaml", "not: [a manifest"),
        ]);
        let repo = load_repo(dir.path()).unwrap();
        assert_eq!(messages(&repo), Vec::<String>::new());
        assert_eq!(repo.config, Some(RepoConfig::default()));
        assert_eq!(
            paths(&repo),
            [
                "images/team-a/deep/er/api.yaml",
                "images/team-a/web.yml",
                "images/team-b/web.yaml"
            ]
        );
        assert!(repo.is_valid());
    }

    #[test]
    fn no_images_directory_is_an_empty_repo() {
        let dir = mk_repo(&[]);
        let repo = load_repo(dir.path()).unwrap();
        assert!(repo.sets.is_empty() && repo.is_valid());
    }

    #[test]
    fn a_bad_file_never_stops_the_others() {
        let dir = mk_repo(&[
            ("images/a.yaml", &mk_set("team-a", &["a"])),
            ("images/b.yaml", "kind: [\n"),
            (
                "images/c.yaml",
                &mk_set("team-a", &["c"]).replace(
                    "tags: [latest]",
                    "tags: [latest]\n      keep: 0\n      shedule: x",
                ),
            ),
            ("images/d.yaml", &mk_set("team-a", &["d"])),
        ]);
        let repo = load_repo(dir.path()).unwrap();
        assert_eq!(paths(&repo), ["images/a.yaml", "images/d.yaml"]);
        assert_eq!(
            messages(&repo),
            [
                "images/b.yaml:2:1: invalid YAML: while parsing a node, did not find expected node content",
                "images/c.yaml:9:13: spec.images[0].keep: 0 is out of range; expected a number of generations from 1 to 1000",
                "images/c.yaml:10:7: unknown field \"shedule\" in spec.images[0]; did you mean \"schedule\"?",
            ]
        );
    }

    #[test]
    fn invalid_settings_still_check_the_sets() {
        let dir = mk_repo(&[
            (
                "imagelock.yaml",
                "apiVersion: imagelock.dev/v1alpha1\nkind: Config\ndefaults: {keep: 0}\n",
            ),
            (
                "images/a.yaml",
                &mk_set("team-a", &["a"])
                    .replace("tags: [latest]", "tags: [latest]\n      mirror: true"),
            ),
            ("images/b.yaml", &mk_set("team-a", &["Bad"])),
        ]);
        let repo = load_repo(dir.path()).unwrap();
        assert_eq!(repo.config, None);
        // Checked against the built-in defaults; `mirror: true` is not held against it, since
        // whether a mirror target exists is unknown.
        assert_eq!(paths(&repo), ["images/a.yaml"]);
        assert_eq!(repo.sets[0].images[0].keep, crate::manifest::DEFAULT_KEEP);
        assert_eq!(
            messages(&repo),
            [
                "imagelock.yaml:3:18: defaults.keep: 0 is out of range; expected a number of generations from 1 to 1000",
                "images/b.yaml:6:13: spec.images[0].name: invalid alias \"Bad\": use at most 63 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, like web or argocd-server",
                "images/b.yaml:7:15: spec.images[0].source: invalid repository name \"quay.io/company/Bad\": use lowercase letters, digits and . _ - / separators; expected a repository like quay.io/company/web",
            ]
        );
    }

    #[test]
    fn settings_apply_to_the_sets() {
        let dir = mk_repo(&[
            (
                "imagelock.yaml",
                "apiVersion: imagelock.dev/v1alpha1\nkind: Config\ndefaults: {keep: 3}\n",
            ),
            (
                "images/a.yaml",
                &mk_set("team-a", &["a"])
                    .replace("tags: [latest]", "tags: [latest]\n      mirror: true"),
            ),
        ]);
        let repo = load_repo(dir.path()).unwrap();
        assert_eq!(repo.config.as_ref().map(|c| c.defaults.keep), Some(3));
        assert!(repo.sets.is_empty());
        assert_eq!(
            messages(&repo),
            [
                "images/a.yaml:9:15: spec.images[0].mirror: is true but imagelock.yaml has no mirror: target; add mirror: {registry: ...} there or set this to false"
            ]
        );
    }

    #[test]
    fn duplicate_aliases_across_files() {
        let dir = mk_repo(&[
            (
                "images/team-a/1-first.yaml",
                &mk_set("team-a", &["web", "api"]),
            ),
            (
                "images/team-a/2-second.yaml",
                &mk_set("team-a", &["db", "web"]),
            ),
            ("images/team-a/3-third.yaml", &mk_set("team-a", &["db"])),
            ("images/team-b/web.yaml", &mk_set("team-b", &["web"])),
        ]);
        let mut repo = load_repo(dir.path()).unwrap();
        assert!(repo.is_valid(), "{:?}", messages(&repo));
        repo.drop_duplicate_aliases();
        // The second file is left out, so the third one's `db` is the first.
        assert_eq!(
            paths(&repo),
            [
                "images/team-a/1-first.yaml",
                "images/team-a/3-third.yaml",
                "images/team-b/web.yaml"
            ]
        );
        assert_eq!(
            messages(&repo),
            [
                "images/team-a/2-second.yaml:9:13: spec.images[1].name: duplicate alias \"web\" in namespace \"team-a\"; it is already defined at images/team-a/1-first.yaml:6:13, and aliases must be unique per namespace (this file is ignored until one of them is renamed)"
            ]
        );
    }

    #[test]
    fn no_symlink_is_followed() {
        let outside = mk_repo(&[
            ("secret.yaml", &mk_set("team-a", &["x"])),
            ("dir/y.yaml", &mk_set("team-a", &["y"])),
        ]);
        let dir = mk_repo(&[("images/real.yaml", &mk_set("team-a", &["web"]))]);
        let images = dir.path().join("images");
        symlink(
            outside.path().join("secret.yaml"),
            images.join("escape.yaml"),
        )
        .unwrap();
        symlink(outside.path().join("dir"), images.join("escape-dir")).unwrap();
        symlink("real.yaml", images.join("inside.yaml")).unwrap();
        symlink("missing.yaml", images.join("broken.yaml")).unwrap();
        symlink("../images", images.join("loop")).unwrap();
        symlink(
            outside.path().join("secret.yaml"),
            dir.path().join("imagelock.yaml"),
        )
        .unwrap();

        let repo = load_repo(dir.path()).unwrap();
        assert_eq!(repo.config, None);
        let link = "is a symlink or goes through one; links in the config repo are never followed";
        assert_eq!(
            messages(&repo),
            [
                format!("imagelock.yaml:1:1: {link}; not read"),
                format!("images/broken.yaml:1:1: {link}; it is skipped"),
                format!("images/escape-dir:1:1: {link}; it is skipped"),
                format!("images/escape.yaml:1:1: {link}; it is skipped"),
                format!("images/inside.yaml:1:1: {link}; it is skipped"),
                format!("images/loop:1:1: {link}; it is skipped"),
            ]
        );
        assert_eq!(paths(&repo), ["images/real.yaml"]);
    }

    #[test]
    fn colliding_locks_refuse_both_manifests() {
        let dir = mk_repo(&[
            ("images/team-b/app.yaml", &mk_set("team-b", &["app"])),
            ("images/team-b/app.yml", &mk_set("team-evil", &["app"])),
            ("images/team-a/web.yaml", &mk_set("team-a", &["web"])),
        ]);
        let repo = load_repo(dir.path()).unwrap();
        assert_eq!(paths(&repo), ["images/team-a/web.yaml"]);
        let shared = "images/team-b/app.yaml and images/team-b/app.yml would share the lock images/team-b/app.lock.yaml; neither is read until one is renamed";
        assert_eq!(
            messages(&repo),
            [
                format!("images/team-b/app.yaml:1:1: {shared}"),
                format!("images/team-b/app.yml:1:1: {shared}"),
            ]
        );
    }

    #[test]
    fn hostile_yaml_loads_on_a_small_stack() {
        // Tokio's blocking threads have 2 MiB; a quarter of that is plenty when nothing
        // recurses with the input's depth.
        let dir = mk_repo(&[
            ("imagelock.yaml", &format!("{}x\n", "- ".repeat(20_000))),
            ("images/deep.yaml", &format!("{}x\n", "- ".repeat(20_000))),
            ("images/flow.yaml", &"[".repeat(20_000)),
            (
                "images/keys.yaml",
                &(0..3_000)
                    .map(|i| format!("{}k:\n", " ".repeat(i)))
                    .collect::<String>(),
            ),
            ("images/a.yaml", &mk_set("team-a", &["a"])),
        ]);
        let root = dir.path().to_owned();
        let repo = std::thread::Builder::new()
            .stack_size(512 << 10)
            .spawn(move || load_repo(&root).unwrap())
            .unwrap()
            .join()
            .expect("no stack overflow");
        assert_eq!(paths(&repo), ["images/a.yaml"]);
        assert_eq!(repo.diagnostics.len(), 4, "{:?}", messages(&repo));
    }

    #[test]
    fn imagelock_yaml_must_be_a_small_regular_file() {
        let dir = mk_repo(&[("images/a.yaml", &mk_set("team-a", &["a"]))]);
        fs::create_dir(dir.path().join("imagelock.yaml")).unwrap();
        let repo = load_repo(dir.path()).unwrap();
        assert_eq!(repo.config, None);
        assert_eq!(
            messages(&repo),
            ["imagelock.yaml:1:1: is a directory, not a regular file; not read"]
        );
        let big = mk_repo(&[("imagelock.yaml", &"#".repeat(MAX_FILE_SIZE as usize + 1))]);
        let repo = load_repo(big.path()).unwrap();
        assert_eq!(
            messages(&repo),
            ["imagelock.yaml:1:1: is larger than the 8388608 bytes read; not read"]
        );
    }

    #[test]
    fn unreadable_root_is_an_error() {
        let dir = mk_repo(&[("file", "x")]);
        let missing = load_repo(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(missing, ManifestError::Io { .. }), "{missing:?}");
        assert_eq!(missing.metric_label(), "io");
        let file = load_repo(&dir.path().join("file")).unwrap_err();
        assert!(
            matches!(file, ManifestError::NotADirectory { .. }),
            "{file:?}"
        );
    }

    #[test]
    fn encodings_and_misnamed_settings() {
        let dir = mk_repo(&[
            (
                "imagelock.yml",
                "apiVersion: imagelock.dev/v1alpha1\nkind: Config\n",
            ),
            (
                "images/bom.yaml",
                &format!("\u{feff}{}", mk_set("team-a", &["web"])),
            ),
        ]);
        fs::write(dir.path().join("images/latin1.yaml"), b"kind: \xe9\n").unwrap();
        let repo = load_repo(dir.path()).unwrap();
        assert_eq!(paths(&repo), ["images/bom.yaml"]);
        assert_eq!(
            messages(&repo),
            [
                "imagelock.yml:1:1: ignored: the settings file must be named imagelock.yaml",
                "images/latin1.yaml:1:1: is not valid UTF-8; save the file as UTF-8; not read",
            ]
        );
    }
}

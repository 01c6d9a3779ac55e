//! Reading a whole config repo checkout: `imagelock.yaml` and every manifest under `images/`.
//!
//! A bad file never stops the others: each problem becomes a [`Diagnostic`] and the valid sets
//! are still returned. Paths from the repo are never trusted: anything that resolves outside
//! the root (a symlink to `/etc`, say) is refused.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::imageset;
use super::model::{ImageSet, Position, RepoConfig};
use super::yaml::FILE_START;
use super::{Diagnostic, ManifestError, parse_repo_config};

/// The repo's settings file, at its root.
pub const CONFIG_FILE: &str = "imagelock.yaml";
/// Where manifests and their locks live.
pub const IMAGES_DIR: &str = "images";
/// Manifests are hand-written; anything this large is a mistake (or an attack).
pub const MAX_FILE_SIZE: u64 = 8 << 20;
/// Deepest directory nesting under `images/` that is read.
pub const MAX_DEPTH: usize = 32;

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
}

/// Reads `root/imagelock.yaml` (missing: defaults) and every `images/**/*.yaml` and `*.yml`
/// except `*.lock.yaml`; hidden files and directories are skipped. When `imagelock.yaml` is
/// invalid the sets are still checked against the defaults, so that one run reports everything.
/// An alias defined twice in one namespace is reported in the later file (by path), which is
/// left out of `sets`. Errors only when `root` itself cannot be read.
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
    let real_root = fs::canonicalize(root).map_err(io_error)?;
    fs::read_dir(&real_root).map_err(io_error)?;
    let mut loader = Loader {
        root: real_root,
        diagnostics: Vec::new(),
    };

    let config = loader.config();
    let mut sets = Vec::new();
    for path in loader.manifests() {
        let Some(text) = loader.read(&path) else {
            continue;
        };
        match imageset::parse(&path, &text, config.as_ref()) {
            Ok(set) => sets.push(set),
            Err(diagnostics) => loader.diagnostics.extend(diagnostics),
        }
    }
    sets.sort_by(|a, b| a.path.cmp(&b.path));
    let sets = loader.unique_aliases(sets);

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
    /// The canonical root; everything read must resolve below it.
    root: PathBuf,
    diagnostics: Vec<Diagnostic>,
}

enum Resolved {
    Missing,
    Refused,
    Inside(PathBuf, fs::Metadata),
}

impl Loader {
    fn report(&mut self, path: &Path, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic {
            path: path.to_path_buf(),
            position: FILE_START,
            message: message.into(),
        });
    }

    /// The real location of the repo-relative `path`, if it exists and stays inside the repo.
    fn resolve(&mut self, path: &Path) -> Resolved {
        let full = self.root.join(path);
        let link = match fs::symlink_metadata(&full) {
            Ok(metadata) => metadata.file_type().is_symlink(),
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Resolved::Missing,
            Err(error) => {
                self.report(path, format!("cannot read: {error}"));
                return Resolved::Refused;
            }
        };
        let real = match fs::canonicalize(&full) {
            Ok(real) => real,
            Err(error) if link && error.kind() == io::ErrorKind::NotFound => {
                self.report(path, "broken symlink; its target does not exist");
                return Resolved::Refused;
            }
            Err(error) => {
                self.report(path, format!("cannot read: {error}"));
                return Resolved::Refused;
            }
        };
        if !real.starts_with(&self.root) {
            self.report(
                path,
                "symlink leads outside the repository; refused (only files inside the repository are read)",
            );
            return Resolved::Refused;
        }
        match fs::metadata(&real) {
            Ok(metadata) => Resolved::Inside(real, metadata),
            Err(error) => {
                self.report(path, format!("cannot read: {error}"));
                Resolved::Refused
            }
        }
    }

    /// The contents of a repo-relative file, or `None` after reporting why not.
    fn read(&mut self, path: &Path) -> Option<String> {
        match self.resolve(path) {
            Resolved::Inside(real, metadata) => self.read_resolved(path, &real, &metadata),
            Resolved::Missing | Resolved::Refused => None,
        }
    }

    fn read_resolved(
        &mut self,
        path: &Path,
        real: &Path,
        metadata: &fs::Metadata,
    ) -> Option<String> {
        if !metadata.is_file() {
            self.report(path, "is not a regular file");
            return None;
        }
        if metadata.len() > MAX_FILE_SIZE {
            self.report(
                path,
                format!(
                    "file is {} bytes, more than the {MAX_FILE_SIZE} allowed; split it into several ImageSets",
                    metadata.len()
                ),
            );
            return None;
        }
        let bytes = match fs::read(real) {
            Ok(bytes) => bytes,
            Err(error) => {
                self.report(path, format!("cannot read: {error}"));
                return None;
            }
        };
        match String::from_utf8(bytes) {
            Ok(text) => Some(match text.strip_prefix('\u{feff}') {
                Some(without_bom) => without_bom.to_owned(),
                None => text,
            }),
            Err(_) => {
                self.report(path, "not valid UTF-8; save the file as UTF-8");
                None
            }
        }
    }

    /// `imagelock.yaml`: defaults when missing, `None` when invalid.
    fn config(&mut self) -> Option<RepoConfig> {
        let path = Path::new(CONFIG_FILE);
        let text = match self.resolve(path) {
            Resolved::Inside(real, metadata) => self.read_resolved(path, &real, &metadata)?,
            Resolved::Refused => return None,
            Resolved::Missing => {
                if let Resolved::Inside(..) = self.resolve(Path::new("imagelock.yml")) {
                    self.report(
                        Path::new("imagelock.yml"),
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

    /// Repo-relative paths of every manifest under `images/`, sorted.
    fn manifests(&mut self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        self.walk(Path::new(IMAGES_DIR), &mut Vec::new(), &mut files);
        files.sort();
        files
    }

    /// `ancestors` holds the real directories above, so a symlink loop ends the descent.
    fn walk(&mut self, dir: &Path, ancestors: &mut Vec<PathBuf>, files: &mut Vec<PathBuf>) {
        let real = match self.resolve(dir) {
            Resolved::Inside(real, metadata) if metadata.is_dir() => real,
            Resolved::Inside(..) => {
                self.report(dir, "expected a directory of ImageSet manifests");
                return;
            }
            Resolved::Missing | Resolved::Refused => return,
        };
        if ancestors.contains(&real) {
            self.report(dir, "symlink loop; not followed");
            return;
        }
        if ancestors.len() >= MAX_DEPTH {
            self.report(
                dir,
                format!("nested more than {MAX_DEPTH} directories deep; not read"),
            );
            return;
        }
        let entries = match fs::read_dir(&real) {
            Ok(entries) => entries,
            Err(error) => {
                self.report(dir, format!("cannot read directory: {error}"));
                return;
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| !name.starts_with('.'))
            .collect();
        names.sort();
        ancestors.push(real);
        for name in names {
            let path = dir.join(&name);
            // Follows symlinks; where they lead is checked by `resolve` before anything is read.
            match fs::metadata(self.root.join(&path)) {
                Ok(metadata) if metadata.is_dir() => self.walk(&path, ancestors, files),
                _ if is_manifest_name(&name) => files.push(path),
                _ => {}
            }
        }
        ancestors.pop();
    }

    /// Drops, with a diagnostic, every set that defines an alias an earlier set (by path)
    /// already defines in the same namespace.
    fn unique_aliases(&mut self, sets: Vec<ImageSet>) -> Vec<ImageSet> {
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
        kept
    }
}

/// `*.yaml` and `*.yml`, but not the generated `*.lock.yaml` (`*.lock.yml`).
fn is_manifest_name(name: &str) -> bool {
    (name.ends_with(".yaml") || name.ends_with(".yml"))
        && !name.ends_with(".lock.yaml")
        && !name.ends_with(".lock.yml")
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
        let repo = load_repo(dir.path()).unwrap();
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
    fn symlinks_that_leave_the_repo_are_refused() {
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
        assert_eq!(
            messages(&repo),
            [
                "imagelock.yaml:1:1: symlink leads outside the repository; refused (only files inside the repository are read)",
                "images/broken.yaml:1:1: broken symlink; its target does not exist",
                "images/escape-dir:1:1: symlink leads outside the repository; refused (only files inside the repository are read)",
                "images/escape.yaml:1:1: symlink leads outside the repository; refused (only files inside the repository are read)",
                "images/loop:1:1: symlink loop; not followed",
                // A link inside the repo is read like any file; here it repeats real.yaml.
                "images/real.yaml:6:13: spec.images[0].name: duplicate alias \"web\" in namespace \"team-a\"; it is already defined at images/inside.yaml:6:13, and aliases must be unique per namespace (this file is ignored until one of them is renamed)",
            ]
        );
        assert_eq!(paths(&repo), ["images/inside.yaml"]);
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
                "images/latin1.yaml:1:1: not valid UTF-8; save the file as UTF-8",
            ]
        );
    }
}

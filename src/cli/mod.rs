//! The command line: one binary, one file per command.
//!
//! Exit codes: 0 success, 1 failure (including any manifest or resolution error), 2 usage.

mod check;
mod copy;
mod lock;
mod mirror;
mod plan;
mod serve;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::collections::BTreeMap;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use figment::Figment;
use figment::providers::{Format as _, Serialized};

use crate::daemon::DaemonConfig;
use crate::manifest::RepoConfig;
use crate::pins::Admitted;
use crate::reconcile::{self, Deadlines};
use crate::registry::{RegistryAccess, RegistryLimits};
use crate::telemetry::{self, LogFormat};

pub use serve::ServeArgs;

#[derive(Debug, Parser)]
#[command(
    name = "imagelock",
    version,
    about = "Pin container image tags to digests, GitOps style"
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log filter, RUST_LOG syntax (`info`, `imagelock=debug`).
    #[arg(long, global = true, env = "IMAGELOCK_LOG", default_value = "info")]
    pub log_level: String,
    /// Log format.
    #[arg(long, global = true, env = "IMAGELOCK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate imagelock.yaml and every manifest; errors as file:line:col.
    Check {
        /// The config repo checkout.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// The operator's settings (`--config`, flags) that the repo must keep to: tenancy,
        /// allowed mirror registries.
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Resolve against the registries and print what the locks would change; writes nothing.
    Plan {
        #[arg(default_value = ".")]
        dir: PathBuf,
        #[arg(long, value_enum, default_value_t = plan::Format::Text)]
        format: plan::Format,
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        entry_timeout: EntryTimeoutArgs,
    },
    /// Resolve and write lock files; with --commit, commit them in DIR's Git repository.
    Lock {
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Commit the changed lock files (nothing changed: no commit).
        #[arg(long)]
        commit: bool,
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        deadlines: DeadlineArgs,
    },
    /// Make the mirror hold everything the locks pin: prints the sets already present, to
    /// copy and missing at the source, then copies.
    Mirror {
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Print the three sets; copy nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        mirror_timeout: MirrorTimeoutArgs,
    },
    /// Copy one image between registries, digest preserved (`registry/repo:tag` or `@sha256:...`).
    Copy {
        source: String,
        destination: String,
        /// For a multi-arch image, copy the index and every platform (default: only this
        /// machine's platform, or --platform).
        #[arg(long)]
        all: bool,
        /// The platform to copy from a multi-arch image, `os/arch[/variant]`.
        #[arg(long, conflicts_with = "all")]
        platform: Option<crate::reference::Platform>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Run the daemon: watch the config repo, resolve on schedule, commit and push locks.
    Serve(Box<ServeArgs>),
}

/// The operator's registry settings, the same for `serve` and the commands that reach
/// registries (`plan`, `lock`, `mirror`, `copy`): a config file in the daemon's format (one
/// ConfigMap serves the daemon and a pull request check), then these flags and their
/// `IMAGELOCK_*` variables. Serialized (camelCase, unset fields skipped) so flags merge over
/// the file.
#[derive(Debug, Clone, Default, Args, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryArgs {
    /// YAML file with the daemon configuration (keys as the flags, in camelCase); the
    /// registry commands read its registry and tenancy settings.
    #[arg(long, env = "IMAGELOCK_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Docker config.json (or kubernetes.io/dockerconfigjson) file with registry credentials.
    #[arg(long, env = "IMAGELOCK_REGISTRY_CONFIG")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_config: Option<PathBuf>,
    /// Registry host reached over plain HTTP (repeatable). Never implied.
    #[arg(
        long = "insecure-registry",
        value_name = "HOST",
        env = "IMAGELOCK_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub insecure_registries: Vec<String>,
    /// Only these registry hosts (and the insecure and mirror ones) may be reached, for
    /// sources, token realms and redirects (repeatable; `*.example.com` for subdomains).
    /// Default: any public host.
    #[arg(
        long = "allowed-registry",
        value_name = "HOST",
        env = "IMAGELOCK_ALLOWED_REGISTRIES",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_registries: Vec<String>,
    /// A registry the repo's `mirror.registry` may name (repeatable). Default: none, so no
    /// mirroring.
    #[arg(
        long = "mirror-registry",
        value_name = "HOST",
        env = "IMAGELOCK_MIRROR_REGISTRIES",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirror_registries: Vec<String>,
    /// The registry config `auths` entry that serves a host, HOST=ENTRY (repeatable).
    /// Default: the entry named after the host.
    #[arg(
        long = "registry-credential",
        value_name = "HOST=ENTRY",
        env = "IMAGELOCK_REGISTRY_CREDENTIALS",
        value_delimiter = ',',
        value_parser = host_pair
    )]
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "serialize_pairs_as_map"
    )]
    pub registry_credentials: Vec<(String, String)>,
    /// A token realm host on another host that a registry's login may be sent to,
    /// HOST=REALM_HOST (repeatable).
    #[arg(
        long = "token-realm",
        value_name = "HOST=REALM_HOST",
        env = "IMAGELOCK_TOKEN_REALMS",
        value_delimiter = ',',
        value_parser = host_pair
    )]
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "serialize_pairs_as_lists"
    )]
    pub token_realms: Vec<(String, String)>,
    #[command(flatten)]
    #[serde(skip_serializing_if = "LimitArgs::is_empty")]
    pub registry_limits: LimitArgs,
}

/// The operator's per-registry ceilings; `imagelock.yaml` may only lower them. Serialized as
/// the config file's `registryLimits: {HOST: {rateLimit, concurrency}}`.
#[derive(Debug, Clone, Default, Args)]
pub struct LimitArgs {
    /// Requests per second at most for a registry, HOST=N (repeatable).
    #[arg(
        long = "registry-rate-limit",
        value_name = "HOST=N",
        env = "IMAGELOCK_REGISTRY_RATE_LIMITS",
        value_delimiter = ',',
        value_parser = host_number
    )]
    pub rate_limits: Vec<(String, u32)>,
    /// Requests in flight at most for a registry, HOST=N (repeatable) [default: 8].
    #[arg(
        long = "registry-concurrency",
        value_name = "HOST=N",
        env = "IMAGELOCK_REGISTRY_CONCURRENCY",
        value_delimiter = ',',
        value_parser = host_number
    )]
    pub concurrency: Vec<(String, u32)>,
}

impl LimitArgs {
    fn is_empty(&self) -> bool {
        self.rate_limits.is_empty() && self.concurrency.is_empty()
    }
}

impl serde::Serialize for LimitArgs {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut limits: BTreeMap<&str, RegistryLimits> = BTreeMap::new();
        for (host, n) in &self.rate_limits {
            limits.entry(host).or_default().rate_limit = Some(*n);
        }
        for (host, n) in &self.concurrency {
            limits.entry(host).or_default().concurrency = Some(*n as usize);
        }
        limits.serialize(serializer)
    }
}

/// `HOST=VALUE`, split at the first `=` (hosts have none).
fn host_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((host, value)) if !host.trim().is_empty() && !value.trim().is_empty() => {
            Ok((host.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("expected HOST=VALUE, got {text:?}")),
    }
}

fn host_number(text: &str) -> Result<(String, u32), String> {
    let (host, value) = host_pair(text)?;
    match value.parse::<u32>() {
        Ok(n) if n > 0 => Ok((host, n)),
        _ => Err(format!("expected HOST=N with N at least 1, got {text:?}")),
    }
}

fn serialize_pairs_as_map<S: serde::Serializer>(
    pairs: &[(String, String)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::Serialize as _;
    let map: BTreeMap<&str, &str> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    map.serialize(serializer)
}

fn serialize_pairs_as_lists<S: serde::Serializer>(
    pairs: &[(String, String)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::Serialize as _;
    let mut map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (key, value) in pairs {
        map.entry(key).or_default().push(value);
    }
    map.serialize(serializer)
}

impl RegistryArgs {
    /// Defaults, then the config file (`--config`), ready for flags to be merged over.
    pub fn figment(&self) -> anyhow::Result<Figment> {
        let mut figment = Figment::from(Serialized::defaults(DaemonConfig::default()));
        if let Some(file) = &self.config {
            anyhow::ensure!(
                file.is_file(),
                "config file {} does not exist",
                file.display()
            );
            figment = figment.merge(serde_saphyr::figment::Yaml::file_exact(file));
        }
        Ok(figment)
    }

    /// The daemon configuration these settings give: the file, then the flags. Only its
    /// registry and tenancy settings matter to the registry commands.
    pub fn settings(&self) -> anyhow::Result<DaemonConfig> {
        let config: DaemonConfig = self
            .figment()?
            .merge(Serialized::defaults(self))
            .extract()
            .context("invalid configuration")?;
        config
            .tenancy
            .validate()
            .context("invalid tenancy configuration")?;
        Ok(config)
    }

    /// The registry clients for a config repo's per-registry settings, under the operator's
    /// policy and tenancy.
    pub fn access(&self, config: &RepoConfig) -> anyhow::Result<RegistryAccess> {
        let settings = self.settings()?;
        settings
            .registry_access(&config.registries)
            .context("cannot create the registry client")
    }
}

/// The checkout at `dir` as the operator's settings admit it (a mirror registry they do not
/// allow makes `imagelock.yaml` invalid; a manifest that may not declare its namespace is
/// refused), with the registry clients for it.
fn load_admitted(
    dir: &Path,
    registry: &RegistryArgs,
) -> anyhow::Result<(Admitted, RegistryAccess)> {
    let settings = registry.settings()?;
    let policy = settings.registry_policy()?;
    let repo = reconcile::load(dir, &policy, &settings.tenancy)?;
    let repo_settings = repo.config.clone().unwrap_or_default().registries;
    let access = settings
        .registry_access(&repo_settings)
        .context("cannot create the registry client")?;
    Ok((repo, access))
}

/// [`load_admitted`], then every entry resolved from the checkout's locks, each within
/// `entry_timeout`: the first half of `plan` and `lock`.
async fn observe_admitted(
    dir: &Path,
    registry: &RegistryArgs,
    entry_timeout: std::time::Duration,
) -> anyhow::Result<(Admitted, RegistryAccess, reconcile::Observations)> {
    let (repo, access) = load_admitted(dir, registry)?;
    let observations = reconcile::observe(
        &access,
        dir,
        &repo,
        &crate::pins::CheckoutLocks,
        &|_, _| true,
        entry_timeout,
    )
    .await;
    Ok((repo, access, observations))
}

/// How long resolving one image entry may take in a pass. Serialized (camelCase, unset fields
/// skipped) so `serve` can merge it over its config file.
#[derive(Debug, Clone, Default, Args, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryTimeoutArgs {
    /// How long resolving one image entry may take, e.g. 90s, 2m; past it the entry fails
    /// alone and keeps its pins [default: 2m].
    #[arg(long, value_name = "DURATION", env = "IMAGELOCK_ENTRY_TIMEOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry_timeout: Option<String>,
}

/// How long copying one image into the mirror may take. Serialized like
/// [`EntryTimeoutArgs`].
#[derive(Debug, Clone, Default, Args, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MirrorTimeoutArgs {
    /// How long copying one image into the mirror may take [default: 30m].
    #[arg(long, value_name = "DURATION", env = "IMAGELOCK_MIRROR_TIMEOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror_timeout: Option<String>,
}

/// [`EntryTimeoutArgs`] and [`MirrorTimeoutArgs`].
#[derive(Debug, Clone, Default, Args, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadlineArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub entry: EntryTimeoutArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub mirror: MirrorTimeoutArgs,
}

impl RegistryArgs {
    /// The deadlines the daemon would use (`entryTimeout`, `mirrorTimeout` of the config
    /// file), with `flags` over them: a pull request check that runs `plan --config` with the
    /// daemon's file stops a slow entry when the daemon would.
    pub fn deadlines(&self, flags: &impl serde::Serialize) -> anyhow::Result<Deadlines> {
        let config: DaemonConfig = self
            .figment()?
            .merge(Serialized::defaults(flags))
            .extract()
            .context("invalid configuration")?;
        Ok(config.deadlines()?)
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Check { .. }) {
        // Before the runtime's threads start allocating. Not only the daemon: `plan` and
        // `lock` read what registries answer too (a PR check runs `plan`), and with glibc's
        // dynamic mmap threshold each freed multi-MiB body would stay in the heaps.
        crate::daemon::tune_allocator();
    }
    telemetry::init(&cli.log.log_level, cli.log.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command. Library entry point for tests.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        // One team until the operator's configuration reaches these commands: every manifest
        // may declare any namespace (see `crate::tenancy`).
        Command::Check { dir, registry } => check::run(&dir, &registry),
        Command::Plan {
            dir,
            format,
            registry,
            entry_timeout,
        } => {
            let entry = registry.deadlines(&entry_timeout)?.entry;
            plan::run(&dir, format, &registry, entry).await
        }
        Command::Lock {
            dir,
            commit,
            registry,
            deadlines,
        } => {
            let deadlines = registry.deadlines(&deadlines)?;
            lock::run(&dir, commit, &registry, deadlines).await
        }
        Command::Mirror {
            dir,
            dry_run,
            registry,
            mirror_timeout,
        } => {
            let image_timeout = registry.deadlines(&mirror_timeout)?.mirror;
            mirror::run(&dir, dry_run, &registry, image_timeout).await
        }
        Command::Copy {
            source,
            destination,
            all,
            platform,
            registry,
        } => copy::run(&source, &destination, all, platform.as_ref(), &registry).await,
        Command::Serve(args) => serve::run(*args).await,
    }
}

/// Exit code for a run that reported errors.
fn exit_code(failed: bool) -> ExitCode {
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_commands_read_the_daemons_config_file_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(
            &file,
            "repo: file:///srv/config\nmirrorRegistries: [registry.internal]\nregistryCredentials: {quay.io: quay-robot}\nregistryLimits: {quay.io: {concurrency: 4}}\ntenancy:\n  namespaces:\n    team-a: {paths: [\"images/team-a/**\"]}\n",
        )
        .unwrap();
        let args = RegistryArgs {
            config: Some(file),
            insecure_registries: vec!["127.0.0.1:5000".into()],
            registry_credentials: vec![("ghcr.io".into(), "gh-bot".into())],
            token_realms: vec![
                ("quay.io".into(), "auth.quay.io".into()),
                ("quay.io".into(), "auth2.quay.io".into()),
            ],
            registry_limits: LimitArgs {
                rate_limits: vec![("quay.io".into(), 10)],
                concurrency: Vec::new(),
            },
            ..RegistryArgs::default()
        };
        let settings = args.settings().unwrap();
        assert_eq!(settings.mirror_registries, ["registry.internal"]);
        assert_eq!(settings.insecure_registries, ["127.0.0.1:5000"]);
        // Maps merge key by key: the file's entry stays beside the flag's.
        assert_eq!(settings.registry_credentials.len(), 2);
        assert_eq!(
            settings.token_realms["quay.io"],
            ["auth.quay.io", "auth2.quay.io"]
        );
        assert_eq!(
            settings.registry_limits["quay.io"],
            RegistryLimits {
                rate_limit: Some(10),
                concurrency: Some(4)
            }
        );
        assert!(settings.tenancy.is_enforced());
        let policy = settings.registry_policy().unwrap();
        assert!(policy.check_mirror("registry.internal").is_ok());
    }

    #[test]
    fn the_registry_commands_take_the_daemons_deadlines_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, "entryTimeout: 45s\nmirrorTimeout: 10m\n").unwrap();
        let args = RegistryArgs {
            config: Some(file),
            ..RegistryArgs::default()
        };
        // `plan` and `lock` stop an entry, `mirror` an image copy, when the daemon would.
        let from_file = args.deadlines(&DeadlineArgs::default()).unwrap();
        assert_eq!(from_file.entry.as_secs(), 45);
        assert_eq!(from_file.mirror.as_secs(), 600);
        let flags = DeadlineArgs {
            entry: EntryTimeoutArgs {
                entry_timeout: Some("90s".into()),
            },
            mirror: MirrorTimeoutArgs {
                mirror_timeout: Some("1m".into()),
            },
        };
        let from_flags = args.deadlines(&flags).unwrap();
        assert_eq!(from_flags.entry.as_secs(), 90);
        assert_eq!(from_flags.mirror.as_secs(), 60);
        let mirror_only = args.deadlines(&flags.mirror).unwrap();
        assert_eq!(mirror_only.entry.as_secs(), 45);
        assert_eq!(mirror_only.mirror.as_secs(), 60);
        let bad = EntryTimeoutArgs {
            entry_timeout: Some("0s".into()),
        };
        let err = args.deadlines(&bad).unwrap_err().to_string();
        assert!(err.contains("entryTimeout"), "{err}");
        let parsed = Cli::try_parse_from(["imagelock", "mirror", "--mirror-timeout", "5m"]);
        assert!(parsed.is_ok(), "{parsed:?}");
        assert_eq!(
            RegistryArgs::default()
                .deadlines(&DeadlineArgs::default())
                .unwrap(),
            Deadlines::default()
        );
    }

    #[test]
    fn bad_settings_fail_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(
            &file,
            "tenancy:\n  namespaces:\n    team-a: {paths: [\"/etc/**\"]}\n",
        )
        .unwrap();
        let args = RegistryArgs {
            config: Some(file),
            ..RegistryArgs::default()
        };
        let err = format!("{:#}", args.settings().unwrap_err());
        assert!(err.contains("/etc/**"), "{err}");
        assert!(host_pair("quay.io").is_err());
        assert_eq!(host_number("quay.io=3").unwrap(), ("quay.io".to_owned(), 3));
        assert!(host_number("quay.io=0").is_err());
    }

    #[test]
    fn the_example_operator_config_is_valid() {
        let args = RegistryArgs {
            config: Some(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("examples/operator-config.yaml"),
            ),
            ..RegistryArgs::default()
        };
        let config = args.settings().unwrap();
        assert!(config.tenancy.is_enforced());
        assert!(
            config
                .registry_policy()
                .unwrap()
                .check_mirror("registry.internal:5000")
                .is_ok()
        );
    }
}

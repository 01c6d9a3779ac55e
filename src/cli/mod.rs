//! The command line: one binary, one file per command.
//!
//! Exit codes: 0 success, 1 failure (including any manifest or resolution error), 2 usage.

mod check;
mod copy;
mod lock;
mod mirror;
mod plan;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::manifest::RepoConfig;
use crate::reconcile::Deadlines;
use crate::registry::RegistryClient;
use crate::telemetry::{self, LogFormat};
use crate::tenancy::Tenancy;

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

/// How to reach registries: credentials and plain-HTTP hosts. Serialized (camelCase, unset
/// fields skipped) so `serve` can merge it over its config file.
#[derive(Debug, Clone, Default, Args, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryArgs {
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
}

impl RegistryArgs {
    /// A registry client for the repo's per-registry settings.
    pub fn client(&self, config: &RepoConfig) -> anyhow::Result<RegistryClient> {
        RegistryClient::with_settings(
            &config.registries,
            self.registry_config.as_deref(),
            &self.insecure_registries,
        )
        .context("cannot create the registry client")
    }
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

/// [`EntryTimeoutArgs`], and how long copying one image into the mirror may take.
#[derive(Debug, Clone, Default, Args, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadlineArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub entry: EntryTimeoutArgs,
    /// How long copying one image into the mirror may take [default: 30m].
    #[arg(long, value_name = "DURATION", env = "IMAGELOCK_MIRROR_TIMEOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror_timeout: Option<String>,
}

impl DeadlineArgs {
    /// The deadlines given, defaults for the rest.
    pub fn deadlines(&self) -> anyhow::Result<Deadlines> {
        let or_default = |value: &Option<String>, default| {
            value
                .clone()
                .unwrap_or_else(|| humantime::format_duration(default).to_string())
        };
        let defaults = Deadlines::default();
        let entry = or_default(&self.entry.entry_timeout, defaults.entry);
        let mirror = or_default(&self.mirror_timeout, defaults.mirror);
        Deadlines::parse(("--entry-timeout", &entry), ("--mirror-timeout", &mirror))
            .map_err(anyhow::Error::msg)
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
        Command::Check { dir } => check::run(&dir, &Tenancy::default()),
        Command::Plan {
            dir,
            format,
            registry,
            entry_timeout,
        } => {
            let deadlines = DeadlineArgs {
                entry: entry_timeout,
                ..DeadlineArgs::default()
            };
            plan::run(
                &dir,
                format,
                &registry,
                deadlines.deadlines()?.entry,
                &Tenancy::default(),
            )
            .await
        }
        Command::Lock {
            dir,
            commit,
            registry,
            deadlines,
        } => {
            lock::run(
                &dir,
                commit,
                &registry,
                deadlines.deadlines()?,
                &Tenancy::default(),
            )
            .await
        }
        Command::Mirror {
            dir,
            dry_run,
            registry,
        } => mirror::run(&dir, dry_run, &registry, &Tenancy::default()).await,
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

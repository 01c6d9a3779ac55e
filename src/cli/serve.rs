//! `imagelock serve`: build the daemon configuration and run it until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use figment::providers::Serialized;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{DeadlineArgs, RegistryArgs};
use crate::daemon::{self, DaemonConfig};

/// Flags of `serve`. Each overrides the same key of the config file; unset flags do not.
#[derive(Debug, Clone, Default, Args, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServeArgs {
    /// Config repo URL (file://, https://, ssh://).
    #[arg(long, env = "IMAGELOCK_REPO")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// Branch to watch and push to [default: main].
    #[arg(long, env = "IMAGELOCK_BRANCH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Directory for the daemon's clone [default: /var/lib/imagelock/checkout].
    #[arg(long, env = "IMAGELOCK_WORKDIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workdir: Option<PathBuf>,
    /// How often to fetch the repo, e.g. 30s, 5m [default: 60s].
    #[arg(long, env = "IMAGELOCK_POLL_INTERVAL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_interval: Option<String>,
    /// File holding an https token for the repo.
    #[arg(long, env = "IMAGELOCK_GIT_TOKEN_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_token_file: Option<PathBuf>,
    /// SSH private key file for the repo.
    #[arg(long, env = "IMAGELOCK_GIT_SSH_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_ssh_key: Option<PathBuf>,
    /// File holding the SSH key's passphrase.
    #[arg(long, env = "IMAGELOCK_GIT_SSH_PASSPHRASE_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_ssh_passphrase_file: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub registry: RegistryArgs,
    /// Address of the admin endpoints [default: 0.0.0.0:8081].
    #[arg(long, env = "IMAGELOCK_ADMIN_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<SocketAddr>,
    /// Push attempts per pass [default: 5].
    #[arg(long, env = "IMAGELOCK_PUSH_ATTEMPTS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_attempts: Option<u32>,
    #[command(flatten)]
    #[serde(flatten)]
    pub webhook: WebhookArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub leader: LeaderArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub deadlines: DeadlineArgs,
}

/// Leader election among replicas (a `coordination.k8s.io` Lease): off unless
/// `--leader-election` is set.
#[derive(Debug, Clone, Default, Args, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaderArgs {
    /// Elect one writer through a Lease: every replica serves, only the holder resolves,
    /// mirrors and pushes. Needs --pod-name.
    #[arg(
        long,
        value_name = "BOOL",
        env = "IMAGELOCK_LEADER_ELECTION",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_election: Option<bool>,
    /// The Lease's name [default: imagelock].
    #[arg(long, value_name = "NAME", env = "IMAGELOCK_LEASE_NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_name: Option<String>,
    /// The Lease's namespace [default: the service account's].
    #[arg(long, value_name = "NAMESPACE", env = "IMAGELOCK_LEASE_NAMESPACE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_namespace: Option<String>,
    /// This replica's identity in the Lease: its Pod name, from the downward API.
    #[arg(long, value_name = "NAME", env = "IMAGELOCK_POD_NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
}

/// The admission webhook (HTTPS, `POST /mutate`): off unless `--webhook-listen` is set.
#[derive(Debug, Clone, Default, Args, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookArgs {
    /// Address of the admission webhook (HTTPS), e.g. 0.0.0.0:8443. Needs --tls-cert and
    /// --tls-key, or --tls-self-signed.
    #[arg(long, value_name = "ADDR", env = "IMAGELOCK_WEBHOOK_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_listen: Option<SocketAddr>,
    /// The webhook's certificate chain (PEM), e.g. a mounted Secret's tls.crt; reloaded when
    /// it changes.
    #[arg(long, value_name = "FILE", env = "IMAGELOCK_TLS_CERT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", env = "IMAGELOCK_TLS_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Generate a CA and a serving certificate for <service>.<namespace>.svc in DIR instead;
    /// DIR/ca.crt is the caBundle of the MutatingWebhookConfiguration.
    #[arg(long, value_name = "DIR", env = "IMAGELOCK_TLS_SELF_SIGNED")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_self_signed: Option<PathBuf>,
    /// The webhook's Service name, for --tls-self-signed [default: imagelock].
    #[arg(long, value_name = "NAME", env = "IMAGELOCK_WEBHOOK_SERVICE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_service: Option<String>,
    /// The webhook Service's namespace, for --tls-self-signed [default: imagelock].
    #[arg(long, value_name = "NAMESPACE", env = "IMAGELOCK_WEBHOOK_NAMESPACE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_namespace: Option<String>,
    /// Address of the push hooks (plain HTTP; needs --hook-secret-file).
    #[arg(long, value_name = "ADDR", env = "IMAGELOCK_HOOKS_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hooks_listen: Option<SocketAddr>,
    /// File holding the shared secret that authenticates push hooks.
    #[arg(long, value_name = "FILE", env = "IMAGELOCK_HOOK_SECRET_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook_secret_file: Option<PathBuf>,
}

impl ServeArgs {
    /// Defaults, then the config file, then flags and their environment variables.
    pub fn config(&self) -> anyhow::Result<DaemonConfig> {
        self.registry
            .figment()?
            .merge(Serialized::defaults(self))
            .extract()
            .context("invalid daemon configuration")
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = args.config()?;
    let shutdown = CancellationToken::new();
    daemon::cancel_on_signals(shutdown.clone());
    daemon::run(config, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config file holding `yaml`, in a directory that lives as long as the guard.
    fn config_file(yaml: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, yaml).unwrap();
        (dir, file)
    }

    #[test]
    fn flags_override_the_file_and_unset_flags_do_not() {
        let (_dir, file) = config_file(
            "repo: file:///srv/config\nbranch: prod\npollInterval: 5m\ninsecureRegistries: [reg.local]\n",
        );
        let args = ServeArgs {
            registry: RegistryArgs {
                config: Some(file),
                ..RegistryArgs::default()
            },
            branch: Some("staging".into()),
            ..ServeArgs::default()
        };
        let config = args.config().unwrap();
        assert_eq!(config.repo, "file:///srv/config");
        assert_eq!(config.branch, "staging");
        assert_eq!(config.poll_interval().unwrap().as_secs(), 300);
        assert_eq!(config.insecure_registries, vec!["reg.local".to_string()]);
        assert_eq!(config.push_attempts, 5);
    }

    #[test]
    fn webhook_settings_from_file_and_flags() {
        let (_dir, file) = config_file(
            "repo: file:///srv/config\nwebhookListen: 0.0.0.0:8443\ntlsCert: /tls/tls.crt\ntlsKey: /tls/tls.key\n",
        );
        let args = ServeArgs {
            registry: RegistryArgs {
                config: Some(file),
                ..RegistryArgs::default()
            },
            webhook: WebhookArgs {
                webhook_listen: Some("127.0.0.1:9443".parse().unwrap()),
                ..WebhookArgs::default()
            },
            ..ServeArgs::default()
        };
        let config = args.config().unwrap();
        assert_eq!(
            config.webhook_listen,
            Some("127.0.0.1:9443".parse().unwrap())
        );
        assert_eq!(config.tls_cert, Some(PathBuf::from("/tls/tls.crt")));
        assert_eq!(config.webhook_service, "imagelock");
    }

    #[test]
    fn leader_election_from_file_and_flags() {
        let (_dir, file) = config_file(
            "repo: file:///srv/config\nleaderElection: true\nleaseName: imagelock-prod\nleaseNamespace: infra\nleaseDuration: 30s\n",
        );
        let args = ServeArgs {
            registry: RegistryArgs {
                config: Some(file),
                ..RegistryArgs::default()
            },
            leader: LeaderArgs {
                pod_name: Some("imagelock-7d9f-abcde".into()),
                ..LeaderArgs::default()
            },
            ..ServeArgs::default()
        };
        let config = args.config().unwrap();
        assert!(config.leader_election);
        assert_eq!(config.lease_namespace.as_deref(), Some("infra"));
        let settings = config.lease_settings().unwrap().expect("election on");
        assert_eq!(settings.name, "imagelock-prod");
        assert_eq!(settings.identity, "imagelock-7d9f-abcde");
        assert_eq!(settings.lease_duration.as_secs(), 30);
        assert_eq!(settings.renew_deadline.as_secs(), 10);
        assert_eq!(settings.retry_period.as_secs(), 2);
    }

    #[test]
    fn connection_limits_from_the_file() {
        let (_dir, file) = config_file(
            "repo: file:///srv/config\nwebhookMaxConnections: 2048\nwebhookMaxConnectionsPerPeer: 32\nadminMaxConnections: 8\nhooksMaxConnections: 9\nmaxConnectionsPerPeer: 4\nfdReserve: 512\n",
        );
        let args = ServeArgs {
            registry: RegistryArgs {
                config: Some(file),
                ..RegistryArgs::default()
            },
            ..ServeArgs::default()
        };
        let config = args.config().unwrap();
        assert_eq!(
            (
                config.webhook_max_connections,
                config.webhook_max_connections_per_peer,
                config.admin_max_connections,
                config.hooks_max_connections,
                config.max_connections_per_peer,
                config.fd_reserve,
            ),
            (2048, 32, 8, 9, 4, Some(512))
        );
        let defaults = ServeArgs::default();
        let (_dir, file) = config_file("repo: file:///srv/config\n");
        let config = ServeArgs {
            registry: RegistryArgs {
                config: Some(file),
                ..RegistryArgs::default()
            },
            ..defaults
        }
        .config()
        .unwrap();
        assert_eq!(config.fd_reserve, None, "by default: from the limit");
        assert_eq!(config.max_connections_per_peer, 16);
    }

    #[test]
    fn unknown_keys_in_the_file_are_errors() {
        let (_dir, file) = config_file("repo: x\npollIntervall: 5m\n");
        let args = ServeArgs {
            registry: RegistryArgs {
                config: Some(file),
                ..RegistryArgs::default()
            },
            ..ServeArgs::default()
        };
        let err = format!("{:#}", args.config().unwrap_err());
        assert!(err.contains("pollIntervall"), "{err}");
    }

    #[test]
    fn entry_and_mirror_timeouts_from_file_and_flags() {
        use crate::cli::EntryTimeoutArgs;

        let (_dir, file) = config_file("repo: x\nentryTimeout: 45s\nmirrorTimeout: 10m\n");
        let args = |entry: Option<&str>| ServeArgs {
            registry: RegistryArgs {
                config: Some(file.clone()),
                ..RegistryArgs::default()
            },
            deadlines: DeadlineArgs {
                entry: EntryTimeoutArgs {
                    entry_timeout: entry.map(str::to_owned),
                },
                ..DeadlineArgs::default()
            },
            ..ServeArgs::default()
        };
        let deadlines = args(None).config().unwrap().deadlines().unwrap();
        assert_eq!(deadlines.entry.as_secs(), 45);
        assert_eq!(deadlines.mirror.as_secs(), 600);
        let deadlines = args(Some("90s")).config().unwrap().deadlines().unwrap();
        assert_eq!(deadlines.entry.as_secs(), 90);
        for bad in ["0s", "soon"] {
            let err = args(Some(bad)).config().unwrap().deadlines().unwrap_err();
            assert!(err.to_string().contains("entryTimeout"), "{err}");
        }
        let defaults = DaemonConfig::default().deadlines().unwrap();
        assert_eq!(defaults, crate::reconcile::Deadlines::default());
    }
}

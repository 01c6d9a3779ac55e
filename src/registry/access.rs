//! Which client serves which namespace: the registry side of tenancy.
//!
//! Without `tenancy.namespaces` the repo is one team and every entry uses the operator's
//! client (every login of the daemon). With them, each namespace gets its own credential
//! scope over the same connections and limits: only the daemon's logins its
//! `tenancy.namespaces.<ns>.credentials` names, after its own `registryConfig` file; and its
//! own token cache, so a token one namespace's login obtained never serves another's request.
//! Mirror copies log in to the mirror registries with the operator's login (only the daemon
//! writes there) and to the sources with the namespace's.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::credentials::{CredentialStore, Logins};
use super::{RegistryClient, RegistryError};
use crate::reference::ImageRepo;
use crate::tenancy::{CredentialScope, Tenancy, TenancyError};

/// The clients of one namespace.
#[derive(Debug, Clone)]
pub struct NamespaceClients {
    /// Resolves the namespace's sources with its logins only.
    pub pull: RegistryClient,
    /// Copies its images into the mirror: its logins at the sources, the operator's at the
    /// mirror registries.
    pub mirror: RegistryClient,
}

/// When a namespace's own registry config file last changed (a rotated Secret), as far as
/// its metadata tells.
type FileStamp = Option<(std::time::SystemTime, u64)>;

fn stamp(path: &std::path::Path) -> FileStamp {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// The operator's client and the per-namespace scopes made from it, kept across passes so
/// their tokens are reused (until the namespace's own registry config changes).
pub struct RegistryAccess {
    operator: RegistryClient,
    daemon_logins: Arc<CredentialStore>,
    tenancy: Tenancy,
    namespaces: Mutex<BTreeMap<String, (FileStamp, NamespaceClients)>>,
}

impl std::fmt::Debug for RegistryAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAccess")
            .field("tenancy", &self.tenancy.is_enforced())
            .finish_non_exhaustive()
    }
}

impl RegistryAccess {
    /// `operator` must have been built with `daemon_logins` (its Docker config).
    pub fn new(
        operator: RegistryClient,
        daemon_logins: Arc<CredentialStore>,
        tenancy: Tenancy,
    ) -> Self {
        RegistryAccess {
            operator,
            daemon_logins,
            tenancy,
            namespaces: Mutex::new(BTreeMap::new()),
        }
    }

    /// The operator's client: every login of the daemon. For the operator's own commands
    /// (`copy`) and for what no namespace owns.
    pub fn operator(&self) -> &RegistryClient {
        &self.operator
    }

    pub fn tenancy(&self) -> &Tenancy {
        &self.tenancy
    }

    /// May `namespace` pull `source`? The error names the operator setting that would allow it.
    pub fn may_pull(&self, namespace: &str, source: &ImageRepo) -> Result<(), TenancyError> {
        self.tenancy.may_pull(namespace, source)
    }

    /// The clients of `namespace`; made on first use (reading its own registry config, if
    /// the operator gave it one).
    pub fn for_namespace(&self, namespace: &str) -> Result<NamespaceClients, RegistryError> {
        let permitted = match self.tenancy.credentials_for(namespace) {
            CredentialScope::All => {
                return Ok(NamespaceClients {
                    pull: self.operator.clone(),
                    mirror: self.operator.clone(),
                });
            }
            CredentialScope::Only(permitted) => permitted,
        };
        let own_file = self.tenancy.registry_config_for(namespace);
        let current = own_file.and_then(stamp);
        let mut namespaces = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, clients)) = namespaces.get(namespace)
            && *seen == current
        {
            return Ok(clients.clone());
        }
        let own = match own_file {
            Some(path) => Some(Arc::new(CredentialStore::from_docker_config_file(path)?)),
            None => None,
        };
        let logins = Logins::restricted(self.daemon_logins.clone(), permitted, own);
        let mirror_hosts = self.operator.policy().mirrors.iter().cloned();
        let clients = NamespaceClients {
            pull: self.operator.with_logins(logins.clone()),
            mirror: self
                .operator
                .with_logins(logins.with_operator_hosts(mirror_hosts)),
        };
        namespaces.insert(namespace.to_owned(), (current, clients.clone()));
        Ok(clients)
    }

    /// Why `namespace` may not mirror from `source`, if it may not: under tenancy, a source on
    /// a mirror registry would be read with the operator's login there, which can read every
    /// namespace's mirrored images.
    pub fn mirror_source_refusal(&self, namespace: &str, source: &ImageRepo) -> Option<String> {
        (self.tenancy.is_enforced() && self.operator.policy().mirrors.contains(&source.registry))
            .then(|| {
                format!(
                    "namespace {namespace} may not mirror {source}: it is on the mirror registry {}, which only the operator's login reads; use the image's original source",
                    source.registry
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{ClientConfig, RegistryPolicy};
    use crate::tenancy::NamespacePolicy;
    use base64::Engine as _;

    fn docker_config(entries: &[(&str, &str)]) -> String {
        let auths: Vec<String> = entries
            .iter()
            .map(|(host, user)| {
                let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:pw"));
                format!("\"{host}\":{{\"auth\":\"{auth}\"}}")
            })
            .collect();
        format!("{{\"auths\":{{{}}}}}", auths.join(","))
    }

    fn mk_access(team_b_file: &std::path::Path) -> RegistryAccess {
        let daemon = CredentialStore::from_docker_config_json(
            docker_config(&[
                ("quay.io", "quay-robot"),
                ("registry.internal", "mirror-robot"),
            ])
            .as_bytes(),
            std::path::Path::new("<memory>"),
        )
        .unwrap();
        let operator = RegistryClient::new(ClientConfig {
            policy: RegistryPolicy {
                mirrors: ["registry.internal".to_owned()].into(),
                ..RegistryPolicy::default()
            },
            credentials: daemon.clone(),
            ..ClientConfig::default()
        })
        .unwrap();
        let tenancy = Tenancy {
            namespaces: [
                (
                    "team-a".to_owned(),
                    NamespacePolicy {
                        credentials: vec!["quay.io".into()],
                        ..NamespacePolicy::default()
                    },
                ),
                (
                    "team-b".to_owned(),
                    NamespacePolicy {
                        registry_config: Some(team_b_file.to_owned()),
                        ..NamespacePolicy::default()
                    },
                ),
            ]
            .into(),
            shared_sets: Vec::new(),
        };
        RegistryAccess::new(operator, Arc::new(daemon), tenancy)
    }

    #[test]
    fn each_namespace_logs_in_with_its_own_logins_and_the_mirror_with_the_operators() {
        let dir = tempfile::tempdir().unwrap();
        let team_b_file = dir.path().join("team-b.json");
        std::fs::write(&team_b_file, docker_config(&[("ghcr.io", "team-b-bot")])).unwrap();
        let access = mk_access(&team_b_file);
        let user =
            |client: &RegistryClient, host: &str| client.engine.login_user(host).map(str::to_owned);
        let team_a = access.for_namespace("team-a").unwrap();
        assert_eq!(user(&team_a.pull, "quay.io").as_deref(), Some("quay-robot"));
        assert_eq!(user(&team_a.pull, "registry.internal"), None);
        assert_eq!(
            user(&team_a.mirror, "registry.internal").as_deref(),
            Some("mirror-robot")
        );
        let team_b = access.for_namespace("team-b").unwrap();
        assert_eq!(user(&team_b.pull, "quay.io"), None);
        assert_eq!(user(&team_b.pull, "ghcr.io").as_deref(), Some("team-b-bot"));
        // An unknown namespace gets no login at all.
        let nobody = access.for_namespace("team-evil").unwrap();
        assert_eq!(user(&nobody.pull, "quay.io"), None);
        // Under tenancy a namespace does not mirror from the mirror registry.
        let on_mirror = ImageRepo::parse("registry.internal/team-a/web").unwrap();
        assert!(access.mirror_source_refusal("team-b", &on_mirror).is_some());

        // A rotated Secret takes effect without a restart.
        std::fs::write(
            &team_b_file,
            docker_config(&[("ghcr.io", "team-b-rotated-bot")]),
        )
        .unwrap();
        let team_b = access.for_namespace("team-b").unwrap();
        assert_eq!(
            user(&team_b.pull, "ghcr.io").as_deref(),
            Some("team-b-rotated-bot")
        );
    }

    #[test]
    fn a_mapped_entry_must_exist() {
        let err = RegistryClient::new(ClientConfig {
            policy: RegistryPolicy {
                credential_names: [("quay.io".to_owned(), "quay-robot".to_owned())].into(),
                ..RegistryPolicy::default()
            },
            ..ClientConfig::default()
        })
        .unwrap_err();
        assert!(
            err.to_string().contains(
                "registryCredentials.quay.io: the registry config has no auths entry \"quay-robot\""
            ),
            "{err}"
        );
    }

    #[test]
    fn one_team_uses_the_operators_client_for_everything() {
        let operator = RegistryClient::new(ClientConfig::default()).unwrap();
        let access = RegistryAccess::new(
            operator,
            Arc::new(CredentialStore::empty()),
            Tenancy::default(),
        );
        let clients = access.for_namespace("any").unwrap();
        assert!(Arc::ptr_eq(&clients.pull.engine, &access.operator.engine));
        let on_mirror = ImageRepo::parse("registry.internal/team-a/web").unwrap();
        assert!(access.mirror_source_refusal("any", &on_mirror).is_none());
    }
}

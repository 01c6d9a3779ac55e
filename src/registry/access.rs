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

/// The operator's client and the per-namespace scopes made from it, kept across passes so
/// their tokens are reused.
pub struct RegistryAccess {
    operator: RegistryClient,
    daemon_logins: Arc<CredentialStore>,
    tenancy: Tenancy,
    namespaces: Mutex<BTreeMap<String, NamespaceClients>>,
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
        let mut namespaces = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(clients) = namespaces.get(namespace) {
            return Ok(clients.clone());
        }
        let own = match self.tenancy.registry_config_for(namespace) {
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
        namespaces.insert(namespace.to_owned(), clients.clone());
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

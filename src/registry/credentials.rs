//! Registry credentials from Docker `config.json` / `kubernetes.io/dockerconfigjson` content.
//!
//! Every password and token lives in a [`Secret`], whose `Debug` and `Display` print
//! `<redacted>`, so a stray `{:?}` in a log line or an error cannot leak it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;

use super::RegistryError;
use super::policy::RegistryPolicy;
use crate::reference::DOCKER_HUB;

/// A password, token or other credential. Prints as `<redacted>`; read it with
/// [`Secret::expose`] only where it goes on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value itself: only for building an `Authorization` header or a token request.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One registry login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// User name and password (or personal access token), sent as HTTP Basic or to a token realm.
    Basic { username: String, password: Secret },
    /// An OAuth2 refresh token (`identitytoken` in Docker's config), exchanged at the Bearer realm.
    IdentityToken { username: String, token: Secret },
}

/// Logins keyed by registry, as read from a Docker config.
#[derive(Debug, Clone, Default)]
pub struct CredentialStore {
    /// Keys exactly as written in the file (`https://index.docker.io/v1/`, `quay.io`), so that
    /// `RegistrySettings.credential` can name an entry verbatim.
    by_key: BTreeMap<String, Credential>,
    /// Keys normalised to a registry host (`docker.io`, `quay.io`, `localhost:5000`).
    by_host: BTreeMap<String, Credential>,
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: Option<BTreeMap<String, AuthEntry>>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

impl CredentialStore {
    /// No credentials: every registry is accessed anonymously.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Reads a Docker `config.json` or the `.dockerconfigjson` key of a Kubernetes secret
    /// (the same JSON). Credential helpers (`credsStore`, `credHelpers`) are not run.
    pub fn from_docker_config_file(path: impl AsRef<Path>) -> Result<Self, RegistryError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| RegistryError::Credentials {
            path: path.to_owned(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::from_docker_config_json(&bytes, path)
    }

    /// Parses Docker config JSON; `origin` names the source in errors.
    pub fn from_docker_config_json(json: &[u8], origin: &Path) -> Result<Self, RegistryError> {
        let err = |reason: String| RegistryError::Credentials {
            path: origin.to_owned(),
            reason,
        };
        // serde_json's message carries line and column but never the input text, so no
        // secret can end up in it.
        let config: DockerConfig = serde_json::from_slice(json)
            .map_err(|e| err(format!("not a Docker config JSON: {e}")))?;
        if config.creds_store.is_some() || config.cred_helpers.is_some() {
            tracing::warn!(
                path = %origin.display(),
                "credential helpers (credsStore/credHelpers) are not supported; only `auths` entries are used"
            );
        }
        let mut store = CredentialStore::empty();
        for (key, entry) in config.auths.unwrap_or_default() {
            let credential =
                parse_entry(&entry).map_err(|reason| err(format!("auths.{key:?}: {reason}")))?;
            if let Some(credential) = credential {
                store.insert(&key, credential);
            }
        }
        Ok(store)
    }

    /// Adds or replaces the login for `key` (a registry host or a Docker config key).
    pub fn insert(&mut self, key: &str, credential: Credential) {
        self.by_host
            .insert(normalize_registry_key(key), credential.clone());
        self.by_key.insert(key.to_owned(), credential);
    }

    /// The login for a registry host as written in image references (`docker.io`, `quay.io`).
    pub fn for_registry(&self, registry: &str) -> Option<&Credential> {
        self.by_host.get(&normalize_registry_key(registry))
    }

    /// The login an explicit credential name refers to: a key of `auths` exactly as written,
    /// or else anything that normalises to the same host.
    pub fn by_name(&self, name: &str) -> Option<&Credential> {
        self.by_key.get(name).or_else(|| self.for_registry(name))
    }

    /// The entry whose key names `registry` (normalised), with that key as written.
    pub fn entry_for_host(&self, registry: &str) -> Option<(&str, &Credential)> {
        let host = normalize_registry_key(registry);
        // An exact key first, so two spellings of one host pick the same entry every time.
        if let Some((key, credential)) = self.by_key.get_key_value(registry) {
            return Some((key.as_str(), credential));
        }
        self.by_key
            .iter()
            .find(|(key, _)| normalize_registry_key(key) == host)
            .map(|(key, credential)| (key.as_str(), credential))
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Normalised registry hosts that have a login (no secrets).
    pub fn registries(&self) -> impl Iterator<Item = &str> {
        self.by_host.keys().map(String::as_str)
    }
}

/// The logins one scope of a client may use (the daemon's, or one namespace's), and the rule
/// that picks the login for a registry host. A login is only ever picked for the host it
/// belongs to: the `auths` entry the operator mapped to that host (`registryCredentials`), or
/// else the entry named after the host, unless the operator mapped that entry elsewhere.
#[derive(Debug, Clone, Default)]
pub struct Logins {
    daemon: Arc<CredentialStore>,
    /// `None`: every entry of `daemon`. `Some`: only these entry names (tenancy).
    permitted: Option<Vec<String>>,
    /// A namespace's own Docker config, used first for the hosts it has entries for.
    own: Option<Arc<CredentialStore>>,
    /// Hosts where the daemon's own login is used whatever `permitted` says: the mirror
    /// registries, which only the operator's login may write to.
    operator_hosts: BTreeSet<String>,
}

impl Logins {
    /// Every login of the daemon's registry config.
    pub fn all(daemon: Arc<CredentialStore>) -> Self {
        Logins {
            daemon,
            ..Logins::default()
        }
    }

    /// Only the daemon's entries named in `permitted`, after the namespace's `own` logins.
    pub fn restricted(
        daemon: Arc<CredentialStore>,
        permitted: &[String],
        own: Option<Arc<CredentialStore>>,
    ) -> Self {
        Logins {
            daemon,
            permitted: Some(permitted.to_vec()),
            own,
            operator_hosts: BTreeSet::new(),
        }
    }

    /// The same logins, except on `hosts`, where the daemon's own login is used.
    pub fn with_operator_hosts(mut self, hosts: impl IntoIterator<Item = String>) -> Self {
        self.operator_hosts.extend(hosts);
        self
    }

    /// The login to send to `registry` (a host as image references write it), if any.
    pub fn for_registry(&self, registry: &str, policy: &RegistryPolicy) -> Option<&Credential> {
        let operator_host = self.operator_hosts.contains(registry);
        if !operator_host
            && let Some(credential) = self.own.as_ref().and_then(|own| own.for_registry(registry))
        {
            return Some(credential);
        }
        let (name, credential) = match policy.credential_name(registry) {
            Some(name) => (name, self.daemon.by_name(name)?),
            None => {
                let (key, credential) = self.daemon.entry_for_host(registry)?;
                // An entry the operator mapped to some host serves only the hosts it is
                // mapped to.
                if policy.mapped_entries().any(|mapped| mapped == key) {
                    return None;
                }
                (key, credential)
            }
        };
        // Tenancy names an entry (`quay-robot`) or a host (`quay.io`: whichever login serves it).
        let permitted = operator_host
            || self.permitted.as_ref().is_none_or(|permitted| {
                permitted.iter().any(|p| {
                    let p_host = normalize_registry_key(p);
                    p == name
                        || p_host == normalize_registry_key(name)
                        || p_host == normalize_registry_key(registry)
                })
            });
        permitted.then_some(credential)
    }
}

fn parse_entry(entry: &AuthEntry) -> Result<Option<Credential>, String> {
    let from_auth = match entry.auth.as_deref().map(str::trim) {
        Some(auth) if !auth.is_empty() => Some(decode_auth(auth)?),
        _ => None,
    };
    if let Some(token) = entry.identitytoken.as_deref().filter(|t| !t.is_empty()) {
        // Docker stores the user name beside an identity token (or in `auth`); registries
        // ignore it for the refresh-token grant, but some (ACR) expect a fixed one.
        let username = entry
            .username
            .clone()
            .or_else(|| from_auth.as_ref().map(|(user, _)| user.clone()))
            .unwrap_or_default();
        return Ok(Some(Credential::IdentityToken {
            username,
            token: Secret::new(token),
        }));
    }
    if let Some((username, password)) = from_auth {
        return Ok(Some(Credential::Basic {
            username,
            password: Secret::new(password),
        }));
    }
    match (&entry.username, &entry.password) {
        (Some(username), Some(password)) => Ok(Some(Credential::Basic {
            username: username.clone(),
            password: Secret::new(password.clone()),
        })),
        (Some(_), None) => Err("has `username` but no `password` or `auth`".into()),
        // An empty entry (`"quay.io": {}`) is what `docker login` leaves when a helper holds
        // the secret: nothing to use, not an error.
        _ => Ok(None),
    }
}

/// Decodes `auth`: base64 of `user:password`. Never quotes the input in its error.
fn decode_auth(auth: &str) -> Result<(String, String), String> {
    let compact: String = auth.chars().filter(|c| !c.is_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&compact))
        .map_err(|_| "`auth` is not valid base64".to_owned())?;
    let text = String::from_utf8(bytes).map_err(|_| "`auth` is not UTF-8 text".to_owned())?;
    match text.split_once(':') {
        Some((user, password)) if !user.is_empty() => Ok((user.to_owned(), password.to_owned())),
        _ => Err("`auth` must decode to `username:password`".into()),
    }
}

/// Turns a Docker config key into a registry host: drops the scheme and any path, lowercases,
/// and folds Docker Hub's many names (`https://index.docker.io/v1/`) into `docker.io`.
pub fn normalize_registry_key(key: &str) -> String {
    let key = key.trim();
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = without_scheme
        .split('/')
        .next()
        .unwrap_or(without_scheme)
        .to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" | "docker.io" => {
            DOCKER_HUB.to_owned()
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn in_memory_origin() -> PathBuf {
        PathBuf::from("<memory>")
    }

    fn mk_store(json: &str) -> CredentialStore {
        CredentialStore::from_docker_config_json(json.as_bytes(), &in_memory_origin()).unwrap()
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn base64_auth_is_decoded() {
        let store = mk_store(&format!(
            r#"{{"auths":{{"quay.io":{{"auth":"{}"}}}}}}"#,
            b64("robot:s3cr:et")
        ));
        match store.for_registry("quay.io") {
            Some(Credential::Basic { username, password }) => {
                assert_eq!(username, "robot");
                // Passwords may contain ':'; only the first one separates.
                assert_eq!(password.expose(), "s3cr:et");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn username_password_and_identity_token() {
        let store = mk_store(
            r#"{"auths":{
                "ghcr.io":{"username":"me","password":"pat"},
                "myacr.azurecr.io":{"username":"00000000-0000-0000-0000-000000000000","identitytoken":"refresh"},
                "empty.example":{}
            }}"#,
        );
        assert!(matches!(
            store.for_registry("ghcr.io"),
            Some(Credential::Basic { username, .. }) if username == "me"
        ));
        assert!(matches!(
            store.for_registry("myacr.azurecr.io"),
            Some(Credential::IdentityToken { token, .. }) if token.expose() == "refresh"
        ));
        assert!(store.for_registry("empty.example").is_none());
        assert!(store.for_registry("other.example").is_none());
    }

    #[test]
    fn docker_hub_keys_map_to_docker_io() {
        for key in [
            "https://index.docker.io/v1/",
            "index.docker.io",
            "registry-1.docker.io",
            "docker.io",
        ] {
            let store = mk_store(&format!(
                r#"{{"auths":{{"{key}":{{"auth":"{}"}}}}}}"#,
                b64("u:p")
            ));
            assert!(store.for_registry("docker.io").is_some(), "{key}");
            assert!(store.by_name(key).is_some(), "{key}");
        }
        assert_eq!(normalize_registry_key("https://Quay.io/v2/"), "quay.io");
        assert_eq!(normalize_registry_key("localhost:5000"), "localhost:5000");
    }

    #[test]
    fn explicit_credential_name() {
        let store = mk_store(&format!(
            r#"{{"auths":{{"mirror-robot":{{"auth":"{}"}}}}}}"#,
            b64("robot:x")
        ));
        assert!(store.by_name("mirror-robot").is_some());
        assert!(store.for_registry("quay.io").is_none());
    }

    #[test]
    fn kubernetes_dockerconfigjson_is_the_same_format() {
        // The decoded `.dockerconfigjson` of a `kubernetes.io/dockerconfigjson` secret.
        let store = mk_store(&format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"username":"u","password":"p","auth":"{}"}}}}}}"#,
            b64("u:p")
        ));
        assert!(store.for_registry("docker.io").is_some());
    }

    fn mk_logins_store() -> Arc<CredentialStore> {
        Arc::new(mk_store(&format!(
            r#"{{"auths":{{
                "quay.io":{{"auth":"{}"}},
                "quay-robot":{{"auth":"{}"}},
                "ghcr.io":{{"auth":"{}"}},
                "registry.internal":{{"auth":"{}"}}
            }}}}"#,
            b64("quay-user:a"),
            b64("robot:b"),
            b64("gh:c"),
            b64("mirror:d")
        )))
    }

    fn user(credential: Option<&Credential>) -> Option<&str> {
        match credential? {
            Credential::Basic { username, .. } | Credential::IdentityToken { username, .. } => {
                Some(username.as_str())
            }
        }
    }

    #[test]
    fn a_login_serves_only_its_own_host() {
        let daemon = mk_logins_store();
        let none = RegistryPolicy::default();
        let all = Logins::all(daemon.clone());
        assert_eq!(user(all.for_registry("quay.io", &none)), Some("quay-user"));
        assert_eq!(user(all.for_registry("attacker.example", &none)), None);
        // The operator maps quay.io to the robot: the entry named quay.io then serves nothing,
        // and the robot serves only quay.io.
        let mapped = RegistryPolicy {
            credential_names: [("quay.io".to_owned(), "quay-robot".to_owned())].into(),
            ..RegistryPolicy::default()
        };
        assert_eq!(user(all.for_registry("quay.io", &mapped)), Some("robot"));
        assert_eq!(user(all.for_registry("quay-robot", &mapped)), None);
        let elsewhere = RegistryPolicy {
            credential_names: [("mirror.example".to_owned(), "quay.io".to_owned())].into(),
            ..RegistryPolicy::default()
        };
        assert_eq!(user(all.for_registry("quay.io", &elsewhere)), None);
        assert_eq!(
            user(all.for_registry("mirror.example", &elsewhere)),
            Some("quay-user")
        );
    }

    #[test]
    fn a_namespace_gets_only_its_permitted_logins_and_its_own() {
        let daemon = mk_logins_store();
        let policy = RegistryPolicy {
            credential_names: [("quay.io".to_owned(), "quay-robot".to_owned())].into(),
            mirrors: ["registry.internal".to_owned()].into(),
            ..RegistryPolicy::default()
        };
        let team_a = Logins::restricted(daemon.clone(), &["quay-robot".to_owned()], None);
        assert_eq!(user(team_a.for_registry("quay.io", &policy)), Some("robot"));
        assert_eq!(user(team_a.for_registry("ghcr.io", &policy)), None);
        assert_eq!(
            user(team_a.for_registry("registry.internal", &policy)),
            None
        );
        // Permitting a host permits whichever login serves that host, and no other.
        let by_host = Logins::restricted(daemon.clone(), &["quay.io".to_owned()], None);
        assert_eq!(
            user(by_host.for_registry("quay.io", &policy)),
            Some("robot")
        );
        assert_eq!(user(by_host.for_registry("ghcr.io", &policy)), None);
        // Nothing permitted: anonymous everywhere, except the operator's login at the mirror
        // for the mirror client.
        let team_b = Logins::restricted(daemon.clone(), &[], None);
        assert_eq!(user(team_b.for_registry("quay.io", &policy)), None);
        let team_b_mirror = team_b.with_operator_hosts(policy.mirrors.iter().cloned());
        assert_eq!(
            user(team_b_mirror.for_registry("registry.internal", &policy)),
            Some("mirror")
        );
        assert_eq!(user(team_b_mirror.for_registry("quay.io", &policy)), None);
        // A namespace's own Docker config comes first, for its own hosts.
        let own = Arc::new(mk_store(&format!(
            r#"{{"auths":{{"ghcr.io":{{"auth":"{}"}}}}}}"#,
            b64("team-b-bot:e")
        )));
        let with_own = Logins::restricted(daemon, &[], Some(own));
        assert_eq!(
            user(with_own.for_registry("ghcr.io", &policy)),
            Some("team-b-bot")
        );
        assert_eq!(user(with_own.for_registry("quay.io", &policy)), None);
    }

    #[test]
    fn secrets_are_redacted() {
        let store = mk_store(&format!(
            r#"{{"auths":{{"quay.io":{{"auth":"{}"}},"x.io":{{"identitytoken":"tok-value"}}}}}}"#,
            b64("user:hunter2")
        ));
        let debug = format!("{store:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains("tok-value"), "{debug}");
        assert!(debug.contains("<redacted>"));
        assert_eq!(Secret::new("x").to_string(), "<redacted>");
    }

    #[test]
    fn bad_entries_name_the_key_not_the_secret() {
        let err = CredentialStore::from_docker_config_json(
            br#"{"auths":{"quay.io":{"auth":"!!notbase64-hunter2"}}}"#,
            Path::new("/etc/imagelock/config.json"),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/etc/imagelock/config.json"), "{text}");
        assert!(text.contains("quay.io"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");

        let err = CredentialStore::from_docker_config_json(b"{not json", Path::new("c.json"))
            .unwrap_err();
        assert!(matches!(err, RegistryError::Credentials { .. }));
        let missing = CredentialStore::from_docker_config_file("/nonexistent/config.json");
        assert!(matches!(missing, Err(RegistryError::Credentials { .. })));
    }
}

//! The operator's registry trust settings and the rules that apply them to every request.
//!
//! Only the operator's configuration (the daemon's config file, `IMAGELOCK_*` variables, flags,
//! the chart's values) sets these; the config repo may only lower limits. The rules:
//!
//! - Plain HTTP only for `insecureRegistries`.
//! - With `allowedRegistries` set, sources, mirrors, token realms and redirect hops must be on
//!   a listed host (`*.example.com` lists every subdomain).
//! - Loopback, link-local, private and cluster-internal addresses (literal IPs, names like
//!   `localhost`, `*.svc`, `*.cluster.local`, and names that resolve to such addresses) are
//!   refused unless the host is listed in `allowedRegistries`, `insecureRegistries` or
//!   `mirrorRegistries`. The resolver ([`GuardedResolver`]) applies this to every address a
//!   name resolves to, so a name that turns internal later (DNS rebinding) is refused too.
//! - A login goes only to the host it belongs to (`registryCredentials` maps a host to a Docker
//!   config `auths` entry; by default the entry named after the host), and to a token realm
//!   only on that host or one `tokenRealms` allows for it.
//! - `mirrorRegistries` lists where the repo's `mirror.registry` may point.
//! - `registryLimits` caps each host's rate and concurrency; the repo's settings may only lower
//!   them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use serde::{Deserialize, Serialize};

use super::credentials::normalize_registry_key;
use crate::manifest::RegistrySettings;
use crate::reference::DOCKER_HUB;

/// Requests in flight per registry when neither the operator nor the repo says.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// Where Docker Hub's registry API lives (`docker.io` is only the name used in references).
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// Docker Hub's token realm: the one realm on another host allowed without configuration.
const DOCKER_HUB_REALM: &str = "auth.docker.io";

/// The operator's ceiling for one registry host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistryLimits {
    /// Requests per second at most.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
    /// Requests in flight at most.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
}

/// The operator's registry settings, as written in the daemon configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryPolicy {
    /// Hosts reached over plain HTTP.
    pub insecure: BTreeSet<String>,
    /// When not empty, the only hosts requests may go to (plus `insecure` and `mirrors`).
    pub allowed: BTreeSet<String>,
    /// Where the repo's `mirror.registry` may point.
    pub mirrors: BTreeSet<String>,
    /// Registry host -> the `auths` entry that serves it, when not the entry named after it.
    pub credential_names: BTreeMap<String, String>,
    /// Registry host -> token realm hosts on other hosts its login may be sent to.
    pub token_realms: BTreeMap<String, BTreeSet<String>>,
    /// Registry host -> the operator's ceilings.
    pub limits: BTreeMap<String, RegistryLimits>,
}

impl RegistryPolicy {
    /// A policy that only marks `hosts` as plain HTTP (and so listed): what tests and
    /// single-registry setups need.
    pub fn insecure<I, S>(hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RegistryPolicy {
            insecure: hosts.into_iter().map(Into::into).collect(),
            ..RegistryPolicy::default()
        }
    }

    /// Normalises every host (lowercase, Docker Hub's aliases folded into `docker.io`) and
    /// refuses what is not `host[:port]`. Errors name the setting.
    pub fn validated(mut self) -> Result<Self, String> {
        fn hosts(
            setting: &str,
            set: BTreeSet<String>,
            wildcard: bool,
        ) -> Result<BTreeSet<String>, String> {
            set.into_iter()
                .map(|host| check_host_setting(setting, &host, wildcard))
                .collect()
        }
        self.insecure = hosts("insecureRegistries", self.insecure, false)?;
        self.allowed = hosts("allowedRegistries", self.allowed, true)?;
        self.mirrors = hosts("mirrorRegistries", self.mirrors, false)?;
        self.credential_names = self
            .credential_names
            .into_iter()
            .map(|(host, entry)| {
                let host = check_host_setting("registryCredentials", &host, false)?;
                if entry.trim().is_empty() {
                    return Err(format!(
                        "registryCredentials.{host}: empty entry name; name a key of the registry config's auths"
                    ));
                }
                Ok((host, entry))
            })
            .collect::<Result<_, String>>()?;
        self.token_realms = self
            .token_realms
            .into_iter()
            .map(|(host, realms)| {
                let host = check_host_setting("tokenRealms", &host, false)?;
                let realms = hosts(&format!("tokenRealms.{host}"), realms, false)?;
                Ok((host, realms))
            })
            .collect::<Result<_, String>>()?;
        self.limits = self
            .limits
            .into_iter()
            .map(|(host, limits)| {
                let host = check_host_setting("registryLimits", &host, false)?;
                if limits.rate_limit == Some(0) || limits.concurrency == Some(0) {
                    return Err(format!(
                        "registryLimits.{host}: rateLimit and concurrency must be at least 1"
                    ));
                }
                Ok((host, limits))
            })
            .collect::<Result<_, String>>()?;
        Ok(self)
    }

    pub fn is_insecure(&self, host: &str) -> bool {
        self.insecure.contains(host)
    }

    /// True when `host` (`host[:port]`) is named in allowedRegistries, insecureRegistries or
    /// mirrorRegistries. Docker Hub's API host counts as listed when `docker.io` is.
    pub fn is_listed(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let reference_name = if host == DOCKER_HUB_API {
            DOCKER_HUB
        } else {
            host.as_str()
        };
        [host.as_str(), reference_name].into_iter().any(|h| {
            self.insecure.contains(h)
                || self.mirrors.contains(h)
                || self.allowed.iter().any(|a| host_matches(a, h))
        })
    }

    /// Whether the name (no port) of any listed host is `name`: the resolver does not see
    /// ports, so a listed `registry.internal:5000` lets `registry.internal` resolve inside.
    fn is_listed_name(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let names = self
            .insecure
            .iter()
            .chain(&self.mirrors)
            .chain(&self.allowed);
        names
            .map(|h| host_name(h))
            .chain(self.token_realms.values().flatten().map(|h| host_name(h)))
            .any(|listed| host_matches(listed, &name))
            || (name == DOCKER_HUB_API && self.is_listed(DOCKER_HUB))
    }

    /// May requests go to `host` (`host[:port]` of a source, mirror, realm or redirect)?
    /// The error says why and which setting would allow it.
    pub fn check_host(&self, host: &str) -> Result<(), String> {
        if self.is_listed(host) {
            return Ok(());
        }
        if !self.allowed.is_empty() {
            return Err(format!(
                "{host} is not in the operator's allowedRegistries; ask the operator to add it"
            ));
        }
        if self.is_listed_name(host_name(host)) {
            // The resolver lets a listed name resolve inside without seeing the port: another
            // port of it would reach whatever listens there (as `127.0.0.1:5001` would).
            return Err(format!(
                "{host}: the operator lists {} only with another port; it must list {host} itself in allowedRegistries, insecureRegistries or mirrorRegistries",
                host_name(host)
            ));
        }
        if is_internal_host(host) {
            return Err(format!(
                "{host} is a loopback, link-local, private or cluster-internal address; the operator must list it in allowedRegistries, insecureRegistries or mirrorRegistries"
            ));
        }
        Ok(())
    }

    /// May the token realm at `realm_host` be asked for a token for `registry` (whose API is
    /// at `api_host`), sending its login when `with_login`? A login goes to the registry's own
    /// host or to a realm `tokenRealms` allows for it (Docker Hub's `auth.docker.io` is
    /// allowed for `docker.io` unless the operator lists others).
    pub fn check_realm(
        &self,
        registry: &str,
        api_host: &str,
        realm_host: &str,
        with_login: bool,
    ) -> Result<(), String> {
        let realm_host = realm_host.to_ascii_lowercase();
        let configured = self
            .token_realms
            .get(registry)
            .is_some_and(|realms| realms.contains(&realm_host));
        let docker_hub_default = !self.token_realms.contains_key(registry)
            && registry == DOCKER_HUB
            && realm_host == DOCKER_HUB_REALM;
        if with_login && realm_host != api_host && !configured && !docker_hub_default {
            return Err(format!(
                "the token realm {realm_host} is not on {registry}: its login is not sent there; the operator can allow it with tokenRealms: {{{registry}: [{realm_host}]}}"
            ));
        }
        if configured {
            // Named by the operator for this registry: as good as listed.
            return Ok(());
        }
        self.check_host(&realm_host)
    }

    /// May the repo's `mirror.registry` point at `registry`?
    pub fn check_mirror(&self, registry: &str) -> Result<(), String> {
        if self.mirrors.contains(registry) {
            Ok(())
        } else if self.mirrors.is_empty() {
            Err(format!(
                "mirror.registry {registry}: the operator allows no mirror registry; mirroring needs mirrorRegistries in the daemon configuration (--mirror-registry, IMAGELOCK_MIRROR_REGISTRIES)"
            ))
        } else {
            Err(format!(
                "mirror.registry {registry} is not among the operator's mirrorRegistries ({})",
                self.mirrors.iter().cloned().collect::<Vec<_>>().join(", ")
            ))
        }
    }

    /// The `auths` entry that serves `registry`, when the operator mapped one.
    pub fn credential_name(&self, registry: &str) -> Option<&str> {
        self.credential_names.get(registry).map(String::as_str)
    }

    /// Entries the operator mapped to some host: they serve only the hosts they are mapped to.
    pub fn mapped_entries(&self) -> impl Iterator<Item = &str> {
        self.credential_names.values().map(String::as_str)
    }

    /// Concurrency and rate limit for `registry`: the repo's setting where it is lower than
    /// the operator's ceiling, the ceiling otherwise.
    pub fn limits_for(&self, registry: &str, repo: Option<&RegistrySettings>) -> RegistryLimits {
        let ceiling = self.limits.get(registry).copied().unwrap_or_default();
        let concurrency_ceiling = ceiling.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        let concurrency = match repo.and_then(|r| r.concurrency) {
            Some(wanted) if wanted > concurrency_ceiling => {
                tracing::warn!(
                    registry,
                    wanted,
                    ceiling = concurrency_ceiling,
                    "registries.{registry}.concurrency in imagelock.yaml is above the operator's ceiling; the ceiling applies"
                );
                concurrency_ceiling
            }
            Some(wanted) => wanted,
            None => concurrency_ceiling,
        };
        let rate_limit = match (ceiling.rate_limit, repo.and_then(|r| r.rate_limit)) {
            (Some(ceiling), Some(wanted)) if wanted > ceiling => {
                tracing::warn!(
                    registry,
                    wanted,
                    ceiling,
                    "registries.{registry}.rateLimit in imagelock.yaml is above the operator's ceiling; the ceiling applies"
                );
                Some(ceiling)
            }
            (ceiling, wanted) => wanted.or(ceiling),
        };
        RegistryLimits {
            rate_limit,
            concurrency: Some(concurrency.max(1)),
        }
    }

    /// Checks a redirect hop: its host must pass [`RegistryPolicy::check_host`], and plain
    /// HTTP only to an `insecureRegistries` host.
    pub fn check_redirect(&self, url: &Url) -> Result<(), String> {
        let host = url_host(url).ok_or_else(|| "redirect to a URL without a host".to_owned())?;
        self.check_host(&host)
            .and_then(|()| self.check_scheme(url))
            .map_err(|reason| format!("redirect refused: {reason}"))
    }

    /// A URL a registry named (a redirect, a token realm) may be plain HTTP only on a host
    /// the operator lists in `insecureRegistries`: otherwise a registry could make the daemon
    /// speak plain HTTP to any host, where anyone on the path reads and answers it.
    pub fn check_scheme(&self, url: &Url) -> Result<(), String> {
        match (url.scheme(), url_host(url)) {
            ("https", _) => Ok(()),
            ("http", Some(host)) if self.is_insecure(&host) => Ok(()),
            ("http", Some(host)) => Err(format!(
                "{host} over plain http; the operator can list it in insecureRegistries"
            )),
            (scheme, _) => Err(format!("{scheme}: URL is not http(s)")),
        }
    }
}

/// Checks one host of the operator's settings: `host[:port]`, lowercase, no scheme or path;
/// `*.domain` where `wildcard`. Docker Hub's aliases become `docker.io`.
fn check_host_setting(setting: &str, host: &str, wildcard: bool) -> Result<String, String> {
    let trimmed = host.trim();
    let bare = if wildcard {
        trimmed.strip_prefix("*.").unwrap_or(trimmed)
    } else {
        trimmed
    };
    let valid = !bare.is_empty()
        && !bare.contains("://")
        && !bare.contains('/')
        && !bare.contains('*')
        && Url::parse(&format!("https://{bare}/"))
            .ok()
            .is_some_and(|u| u.host().is_some() && u.path() == "/");
    if !valid {
        return Err(format!(
            "{setting}: {host:?} is not a registry host; expected host[:port] like quay.io or registry.internal:5000{}",
            if wildcard { " (or *.example.com)" } else { "" }
        ));
    }
    if trimmed.starts_with("*.") {
        return Ok(trimmed.to_ascii_lowercase());
    }
    Ok(normalize_registry_key(trimmed))
}

/// `pattern` is a host or `*.domain` (any subdomain, not the domain itself).
fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(domain) => host
            .strip_suffix(domain)
            .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
        None => pattern == host,
    }
}

/// The host without its port (`[::1]:5000` -> `::1`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

/// `host[:port]` of a URL as image references write it (no port when it is the default).
pub fn url_host(url: &Url) -> Option<String> {
    let host = url.host_str()?;
    Some(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
}

/// Names that always mean something inside the cluster or the machine: one label (resolved
/// through the search domains, like `kubernetes` or `imagelock`), `localhost`, and the
/// suffixes of Kubernetes services, mDNS and cloud metadata servers.
pub fn is_internal_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    const SUFFIXES: &[&str] = &[
        ".localhost",
        ".local",
        ".svc",
        ".cluster.local",
        ".internal",
    ];
    !name.contains('.') || SUFFIXES.iter().any(|suffix| name.ends_with(suffix))
}

/// A literal IP or a name that is internal by its form ([`is_internal_name`],
/// [`is_internal_ip`]). `host` may carry a port.
pub fn is_internal_host(host: &str) -> bool {
    let name = host_name(host);
    match name.parse::<IpAddr>() {
        Ok(ip) => is_internal_ip(ip),
        Err(_) => is_internal_name(name),
    }
}

/// Loopback, unspecified, link-local, private (RFC 1918, where pod and service CIDRs live),
/// CGNAT, multicast and reserved addresses; IPv4 inside IPv6 (mapped, NAT64) by its IPv4.
pub fn is_internal_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => is_internal_v6(v6),
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        // CGNAT 100.64.0.0/10: some clusters put pods or services there.
        || (a == 100 && (64..128).contains(&b))
        // Reserved 240.0.0.0/4.
        || a >= 240
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_internal_v4(v4);
    }
    let segments = ip.segments();
    // NAT64 64:ff9b::/96 carries an IPv4 address in its last 32 bits.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., hi, lo] = segments;
        return is_internal_v4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    }
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // Link-local fe80::/10.
        || (segments[0] & 0xffc0) == 0xfe80
        // Unique local fc00::/7.
        || (segments[0] & 0xfe00) == 0xfc00
}

/// Keeps the addresses a request to `name` may connect to: all of them when the operator
/// listed the name, otherwise only public ones.
pub fn allowed_addresses(
    policy: &RegistryPolicy,
    name: &str,
    addresses: impl IntoIterator<Item = SocketAddr>,
) -> Vec<SocketAddr> {
    let listed = policy.is_listed_name(name);
    addresses
        .into_iter()
        .filter(|address| listed || !is_internal_ip(address.ip()))
        .collect()
}

/// The client's DNS resolver: the system's, with internal addresses dropped for names the
/// operator did not list. Every connection (first request, redirect hop, token realm) resolves
/// here, so a name cannot point inside the cluster by resolving differently later. The
/// operator's HTTP proxy (`HTTPS_PROXY` and the like), often on an internal address, is
/// resolved as it is.
pub(crate) struct GuardedResolver {
    policy: Arc<RegistryPolicy>,
    proxies: BTreeSet<String>,
}

impl GuardedResolver {
    pub fn new(policy: Arc<RegistryPolicy>) -> Self {
        let proxies = [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
        ]
        .iter()
        .filter_map(|variable| std::env::var(variable).ok())
        .filter_map(|value| {
            let value = value.trim();
            let with_scheme = if value.contains("://") {
                value.to_owned()
            } else {
                format!("http://{value}")
            };
            Url::parse(&with_scheme)
                .ok()?
                .host_str()
                .map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase())
        })
        .collect();
        GuardedResolver { policy, proxies }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let name = name.as_str().to_owned();
        let proxy = self.proxies.contains(&name.to_ascii_lowercase());
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            if proxy {
                return Ok(Box::new(resolved.into_iter()) as Addrs);
            }
            let kept = allowed_addresses(&policy, &name, resolved.iter().copied());
            if kept.is_empty() && !resolved.is_empty() {
                return Err(format!(
                    "{name} resolves only to loopback, link-local, private or cluster-internal addresses; the operator must list it in allowedRegistries, insecureRegistries or mirrorRegistries"
                )
                .into());
            }
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_policy() -> RegistryPolicy {
        RegistryPolicy {
            insecure: ["127.0.0.1:5000".to_owned()].into(),
            allowed: BTreeSet::new(),
            mirrors: ["registry.internal".to_owned()].into(),
            credential_names: [("quay.io".to_owned(), "quay-robot".to_owned())].into(),
            token_realms: [(
                "quay.io".to_owned(),
                ["auth.quay.io".to_owned()].into_iter().collect(),
            )]
            .into(),
            limits: [(
                "quay.io".to_owned(),
                RegistryLimits {
                    rate_limit: Some(10),
                    concurrency: Some(4),
                },
            )]
            .into(),
        }
        .validated()
        .unwrap()
    }

    #[test]
    fn internal_addresses() {
        for internal in [
            "127.0.0.1",
            "127.5.5.5",
            "::1",
            "0.0.0.0",
            "::",
            "10.96.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert!(is_internal_ip(internal.parse().unwrap()), "{internal}");
        }
        for public in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_internal_ip(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn internal_names() {
        for internal in [
            "localhost",
            "localhost:5000",
            "kubernetes",
            "registry.default.svc",
            "registry.default.svc.cluster.local",
            "metadata.google.internal",
            "printer.local",
            "x.localhost",
            "127.0.0.1:5000",
            "[::1]:5000",
        ] {
            assert!(is_internal_host(internal), "{internal}");
        }
        for public in ["quay.io", "ghcr.io:443", "registry-1.docker.io"] {
            assert!(!is_internal_host(public), "{public}");
        }
    }

    #[test]
    fn internal_hosts_need_listing_and_listing_is_exact() {
        let policy = mk_policy();
        assert!(policy.check_host("127.0.0.1:5000").is_ok());
        assert!(policy.check_host("registry.internal").is_ok());
        // Another port, or another name for the same address, is not listed.
        assert!(policy.check_host("127.0.0.1:5001").is_err());
        let err = policy.check_host("localhost:5000").unwrap_err();
        assert!(err.contains("allowedRegistries"), "{err}");
        assert!(policy.check_host("169.254.169.254").is_err());
        assert!(policy.check_host("quay.io").is_ok());
        // A listed name resolves inside on any port the resolver is asked for: only its listed
        // port may be used, like a literal address.
        let named = RegistryPolicy {
            mirrors: ["mirror.corp.example:5000".to_owned()].into(),
            ..RegistryPolicy::default()
        };
        assert!(named.check_host("mirror.corp.example:5000").is_ok());
        let err = named.check_host("mirror.corp.example:10250").unwrap_err();
        assert!(err.contains("only with another port"), "{err}");
        assert!(named.check_host("mirror.corp.example").is_err());
        assert!(named.check_host("other.corp.example").is_ok());
    }

    #[test]
    fn an_allowlist_refuses_everything_else() {
        let policy = RegistryPolicy {
            allowed: ["quay.io".to_owned(), "*.cdn.example".to_owned()].into(),
            ..mk_policy()
        };
        assert!(policy.check_host("quay.io").is_ok());
        assert!(policy.check_host("eu.cdn.example").is_ok());
        assert!(policy.check_host("cdn.example").is_err());
        assert!(policy.check_host("evilcdn.example").is_err());
        assert!(policy.check_host("ghcr.io").is_err());
        // Insecure and mirror hosts count as listed.
        assert!(policy.check_host("127.0.0.1:5000").is_ok());
        assert!(policy.check_host("registry.internal").is_ok());
        let redirect = Url::parse("https://attacker.example/blob").unwrap();
        assert!(policy.check_redirect(&redirect).is_err());
        let docker = RegistryPolicy {
            allowed: ["docker.io".to_owned()].into(),
            ..RegistryPolicy::default()
        };
        assert!(docker.check_host(DOCKER_HUB_API).is_ok());
    }

    #[test]
    fn logins_go_only_to_their_own_realms() {
        let policy = mk_policy();
        assert!(
            policy
                .check_realm("quay.io", "quay.io", "quay.io", true)
                .is_ok()
        );
        assert!(
            policy
                .check_realm("quay.io", "quay.io", "auth.quay.io", true)
                .is_ok()
        );
        let err = policy
            .check_realm("quay.io", "quay.io", "attacker.example", true)
            .unwrap_err();
        assert!(err.contains("tokenRealms"), "{err}");
        // Anonymous: any public realm.
        assert!(
            policy
                .check_realm("quay.io", "quay.io", "attacker.example", false)
                .is_ok()
        );
        // Never an internal one unless listed.
        assert!(
            policy
                .check_realm("quay.io", "quay.io", "10.0.0.1", false)
                .is_err()
        );
        assert!(
            policy
                .check_realm("docker.io", DOCKER_HUB_API, "auth.docker.io", true)
                .is_ok()
        );
        // Another registry's allowed realm is not this one's.
        assert!(
            policy
                .check_realm("ghcr.io", "ghcr.io", "auth.quay.io", true)
                .is_err()
        );
    }

    #[test]
    fn plain_http_only_to_insecure_hosts() {
        let policy = mk_policy();
        let url = |u: &str| Url::parse(u).unwrap();
        assert!(policy.check_scheme(&url("https://quay.io/token")).is_ok());
        assert!(policy.check_scheme(&url("http://127.0.0.1:5000/t")).is_ok());
        let err = policy
            .check_scheme(&url("http://quay.io/token"))
            .unwrap_err();
        assert!(err.contains("insecureRegistries"), "{err}");
        // Another port of an insecure host is another host.
        assert!(
            policy
                .check_scheme(&url("http://127.0.0.1:5001/t"))
                .is_err()
        );
        assert!(policy.check_scheme(&url("ftp://quay.io/t")).is_err());
        // A public host passes the host rules, but not over plain http.
        let redirect = url("http://cdn.example/blob");
        assert!(
            policy
                .check_redirect(&url("https://cdn.example/blob"))
                .is_ok()
        );
        assert!(policy.check_redirect(&redirect).is_err());
    }

    #[test]
    fn mirrors_must_be_listed() {
        let policy = mk_policy();
        assert!(policy.check_mirror("registry.internal").is_ok());
        assert!(policy.check_mirror("attacker.example").is_err());
        let none = RegistryPolicy::default();
        assert!(
            none.check_mirror("registry.internal")
                .unwrap_err()
                .contains("mirrorRegistries")
        );
    }

    #[test]
    fn the_repo_may_only_lower_limits() {
        let policy = mk_policy();
        let repo = |rate_limit, concurrency| RegistrySettings {
            rate_limit,
            concurrency,
        };
        assert_eq!(
            policy.limits_for("quay.io", Some(&repo(Some(100), Some(64)))),
            RegistryLimits {
                rate_limit: Some(10),
                concurrency: Some(4)
            }
        );
        assert_eq!(
            policy.limits_for("quay.io", Some(&repo(Some(2), Some(1)))),
            RegistryLimits {
                rate_limit: Some(2),
                concurrency: Some(1)
            }
        );
        assert_eq!(
            policy.limits_for("ghcr.io", Some(&repo(Some(50), Some(100)))),
            RegistryLimits {
                rate_limit: Some(50),
                concurrency: Some(DEFAULT_CONCURRENCY)
            }
        );
        assert_eq!(
            policy.limits_for("ghcr.io", None),
            RegistryLimits {
                rate_limit: None,
                concurrency: Some(DEFAULT_CONCURRENCY)
            }
        );
    }

    #[test]
    fn resolved_addresses_are_filtered_for_unlisted_names() {
        let policy = mk_policy();
        let addresses: Vec<SocketAddr> = vec![
            "127.0.0.1:0".parse().unwrap(),
            "10.0.0.7:0".parse().unwrap(),
            "93.184.216.34:0".parse().unwrap(),
        ];
        assert_eq!(
            allowed_addresses(&policy, "rebinding.example", addresses.clone()),
            vec!["93.184.216.34:0".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            allowed_addresses(&policy, "registry.internal", addresses.clone()).len(),
            3
        );
        assert_eq!(
            allowed_addresses(&policy, "127.0.0.1", addresses.clone()).len(),
            3
        );
        assert!(allowed_addresses(&policy, "localhost", addresses[..2].to_vec()).is_empty());
    }

    #[test]
    fn settings_are_checked_and_normalised() {
        let bad = RegistryPolicy {
            insecure: ["https://reg.example".to_owned()].into(),
            ..RegistryPolicy::default()
        };
        assert!(bad.validated().unwrap_err().contains("insecureRegistries"));
        let wildcard = RegistryPolicy {
            mirrors: ["*.example".to_owned()].into(),
            ..RegistryPolicy::default()
        };
        assert!(wildcard.validated().is_err());
        let hub = RegistryPolicy {
            allowed: ["Index.Docker.io".to_owned()].into(),
            ..RegistryPolicy::default()
        }
        .validated()
        .unwrap();
        assert!(hub.allowed.contains("docker.io"));
        let zero = RegistryPolicy {
            limits: [(
                "quay.io".to_owned(),
                RegistryLimits {
                    rate_limit: Some(0),
                    concurrency: None,
                },
            )]
            .into(),
            ..RegistryPolicy::default()
        };
        assert!(zero.validated().unwrap_err().contains("registryLimits"));
    }
}

//! Registry authentication: `WWW-Authenticate` challenges, Bearer tokens and their cache.
//!
//! The flow is Docker's token protocol (distribution `docs/spec/auth/token.md`): a request
//! answered 401 names a realm; we fetch a token there for the challenge's `service` and
//! `scope`, retry once, and reuse the token for later requests until shortly before it expires.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;

use super::credentials::{Credential, Secret};

/// A token without `expires_in` is valid for 60 s (token spec).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Longest a token is reused, whatever its `expires_in` says: registries hand out tokens of
/// minutes, and a realm answering `u64::MAX` seconds must not overflow the clock.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercased: `basic`, `bearer`.
    pub scheme: String,
    /// Parameter names lowercased, values unquoted.
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// Parses one `WWW-Authenticate` header value, which may hold several challenges
/// (`Basic realm="a", Bearer realm="b",service="c"`). Quoted values may contain commas,
/// spaces and backslash escapes (RFC 9110 §11.6.1). Unparseable tails are dropped.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut parser = Parser {
        s: header.as_bytes(),
        i: 0,
    };
    let mut challenges = Vec::new();
    loop {
        parser.skip_separators();
        let Some(scheme) = parser.token() else { break };
        let mut challenge = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: BTreeMap::new(),
        };
        loop {
            parser.skip_separators();
            let save = parser.i;
            let Some(name) = parser.token() else { break };
            parser.skip_spaces();
            if !parser.eat(b'=') {
                // A token not followed by '=' starts the next challenge (or is token68 data,
                // which registries do not use).
                parser.i = save;
                break;
            }
            parser.skip_spaces();
            let value = if parser.peek() == Some(b'"') {
                parser.quoted()
            } else {
                parser.token().unwrap_or_default()
            };
            challenge.params.insert(name.to_ascii_lowercase(), value);
        }
        challenges.push(challenge);
    }
    challenges
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn skip_spaces(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn skip_separators(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }

    /// An RFC 9110 token (plus `/` so unquoted URLs and scopes survive).
    fn token(&mut self) -> Option<String> {
        let start = self.i;
        while let Some(b) = self.peek() {
            if b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&b) {
                self.i += 1;
            } else {
                break;
            }
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn quoted(&mut self) -> String {
        let mut out = Vec::new();
        self.i += 1; // opening quote
        while let Some(b) = self.peek() {
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    if let Some(escaped) = self.peek() {
                        out.push(escaped);
                        self.i += 1;
                    }
                }
                _ => out.push(b),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Picks the challenge to answer: Bearer when offered, else Basic.
pub fn preferred_challenge(challenges: &[Challenge]) -> Option<&Challenge> {
    challenges
        .iter()
        .find(|c| c.scheme == "bearer")
        .or_else(|| challenges.iter().find(|c| c.scheme == "basic"))
}

/// The `Authorization` value for HTTP Basic.
pub fn basic_header(username: &str, password: &Secret) -> Secret {
    let raw = format!("{username}:{}", password.expose());
    Secret::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    ))
}

/// The Basic header for a credential, when it has a password (identity tokens only work with a
/// Bearer realm).
pub fn basic_for(credential: &Credential) -> Option<Secret> {
    match credential {
        Credential::Basic { username, password } => Some(basic_header(username, password)),
        Credential::IdentityToken { .. } => None,
    }
}

/// A token realm's answer. `token` and `access_token` are synonyms (token spec).
#[derive(Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenResponse {
    /// The token and how long it lives; `None` when the answer holds no token.
    pub fn into_token(self) -> Option<(Secret, Duration)> {
        let token = self
            .token
            .filter(|t| !t.is_empty())
            .or(self.access_token.filter(|t| !t.is_empty()))?;
        let lifetime = self
            .expires_in
            .filter(|s| *s > 0)
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        Some((Secret::new(token), lifetime))
    }
}

/// How a registry wants to be authenticated, remembered so later requests are sent
/// pre-authorized instead of collecting a 401 each time.
#[derive(Clone)]
enum Cached {
    Bearer {
        header: Secret,
        valid_until: Instant,
    },
    Basic {
        header: Secret,
    },
}

/// Authorization headers per (registry, scope).
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<(String, String), Cached>>,
}

impl TokenCache {
    /// The `Authorization` value to send up front, if a usable one is cached.
    pub fn get(&self, registry: &str, scope: &str) -> Option<Secret> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(&(registry.to_owned(), scope.to_owned()))? {
            Cached::Bearer {
                header,
                valid_until,
            } if Instant::now() < *valid_until => Some(header.clone()),
            Cached::Basic { header } => Some(header.clone()),
            Cached::Bearer { .. } => None,
        }
    }

    /// Whether a Bearer token was cached for this scope and has run out: requests would go
    /// out without one.
    pub fn expired(&self, registry: &str, scope: &str) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        matches!(
            entries.get(&(registry.to_owned(), scope.to_owned())),
            Some(Cached::Bearer { valid_until, .. }) if Instant::now() >= *valid_until
        )
    }

    /// Remembers a Bearer token, to be dropped shortly before `lifetime` ends so that a request
    /// never carries a token that expires in flight.
    pub fn put_bearer(&self, registry: &str, scope: &str, token: &Secret, lifetime: Duration) {
        let lifetime = lifetime.min(MAX_TOKEN_LIFETIME);
        let margin = (lifetime / 10).clamp(Duration::from_secs(1), Duration::from_secs(30));
        let valid_until = Instant::now() + lifetime.saturating_sub(margin);
        self.put(
            registry,
            scope,
            Cached::Bearer {
                header: Secret::new(format!("Bearer {}", token.expose())),
                valid_until,
            },
        );
    }

    pub fn put_basic(&self, registry: &str, scope: &str, header: Secret) {
        self.put(registry, scope, Cached::Basic { header });
    }

    fn put(&self, registry: &str, scope: &str, value: Cached) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.insert((registry.to_owned(), scope.to_owned()), value);
    }
}

/// The pull scope of a repository, as registries name it in challenges.
pub fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

/// The token scope for writes to `repository` (pushing needs pull too).
pub fn push_scope(repository: &str) -> String {
    format!("repository:{repository}:pull,push")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn bearer_challenge_with_quoted_commas() {
        let challenges = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull,push""#,
        );
        assert_eq!(challenges.len(), 1);
        assert_eq!(challenges[0].scheme, "bearer");
        assert_eq!(
            challenges[0].params,
            mk_params(&[
                ("realm", "https://auth.docker.io/token"),
                ("service", "registry.docker.io"),
                ("scope", "repository:library/nginx:pull,push"),
            ])
        );
    }

    #[test]
    fn basic_challenge_and_case() {
        let challenges = parse_challenges(r#"BASIC Realm="Registry Realm""#);
        assert_eq!(challenges[0].scheme, "basic");
        assert_eq!(challenges[0].param("realm"), Some("Registry Realm"));
    }

    #[test]
    fn several_challenges_spaces_and_escapes() {
        let challenges = parse_challenges(
            r#"Basic realm="a, b" , Bearer  realm = "https://r/t" , service=unquoted.example, error="insufficient_scope", error_description="say \"hi\"""#,
        );
        assert_eq!(challenges.len(), 2);
        assert_eq!(challenges[0].scheme, "basic");
        assert_eq!(challenges[0].param("realm"), Some("a, b"));
        assert_eq!(challenges[1].param("realm"), Some("https://r/t"));
        assert_eq!(challenges[1].param("service"), Some("unquoted.example"));
        assert_eq!(challenges[1].param("error"), Some("insufficient_scope"));
        assert_eq!(
            challenges[1].param("error_description"),
            Some(r#"say "hi""#)
        );
        assert_eq!(
            preferred_challenge(&challenges).map(|c| c.scheme.as_str()),
            Some("bearer")
        );
    }

    #[test]
    fn junk_does_not_panic() {
        for junk in [
            "",
            ",,,",
            "=",
            "Bearer realm=\"unterminated",
            "Bearer =x",
            "\u{1F600}",
        ] {
            let _ = parse_challenges(junk);
        }
        assert_eq!(parse_challenges("Bearer")[0].params.len(), 0);
        assert!(preferred_challenge(&parse_challenges("Negotiate abc")).is_none());
    }

    #[test]
    fn token_response_variants() {
        let parse = |json: &str| {
            serde_json::from_str::<TokenResponse>(json)
                .unwrap()
                .into_token()
                .map(|(t, d)| (t.expose().to_owned(), d))
        };
        assert_eq!(
            parse(r#"{"token":"a","expires_in":300}"#),
            Some(("a".into(), Duration::from_secs(300)))
        );
        assert_eq!(
            parse(r#"{"access_token":"b"}"#),
            Some(("b".into(), DEFAULT_TOKEN_LIFETIME))
        );
        assert_eq!(parse(r#"{"token":"","access_token":"c"}"#).unwrap().0, "c");
        assert_eq!(parse(r#"{}"#), None);
    }

    #[test]
    fn an_endless_token_lifetime_is_capped_not_a_panic() {
        let answer = format!(r#"{{"token":"t","expires_in":{}}}"#, u64::MAX);
        let (token, lifetime) = serde_json::from_str::<TokenResponse>(&answer)
            .unwrap()
            .into_token()
            .unwrap();
        let cache = TokenCache::default();
        let scope = pull_scope("team/web");
        cache.put_bearer("r.example", &scope, &token, lifetime);
        assert_eq!(cache.get("r.example", &scope).unwrap().expose(), "Bearer t");
        assert!(!cache.expired("r.example", &scope));
    }

    #[test]
    fn cache_expires_and_redacts() {
        let cache = TokenCache::default();
        let scope = pull_scope("team/web");
        cache.put_bearer(
            "r.example",
            &scope,
            &Secret::new("tok"),
            Duration::from_secs(60),
        );
        let header = cache.get("r.example", &scope).unwrap();
        assert!(!cache.expired("r.example", &scope));
        assert_eq!(header.expose(), "Bearer tok");
        assert_eq!(format!("{header:?}"), "<redacted>");
        assert!(cache.get("r.example", &pull_scope("other")).is_none());
        // A token whose lifetime is within the safety margin is not reused.
        cache.put_bearer(
            "r.example",
            &scope,
            &Secret::new("tok"),
            Duration::from_secs(1),
        );
        assert!(cache.get("r.example", &scope).is_none());
        assert!(cache.expired("r.example", &scope));
        assert!(!cache.expired("r.example", &pull_scope("never-asked")));
        cache.put_basic("b.example", &scope, basic_header("u", &Secret::new("p")));
        assert!(!cache.expired("b.example", &scope));
        assert_eq!(
            cache.get("b.example", &scope).unwrap().expose(),
            "Basic dTpw"
        );
    }
}

//! `CredentialTrap`: a small server on 127.0.0.1 that plays a malicious registry or token
//! realm. It records every request with its `Authorization` header, and answers each with what
//! its script says: a 401 challenge asking for Basic credentials, a Bearer challenge whose
//! realm is on another host, a redirect to another host, or a plain answer.
//!
//! One request per connection (`Connection: close`), as in [`super::FaultProxy`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the server answers to every request.
#[derive(Debug, Clone)]
pub enum Script {
    /// 401 with `WWW-Authenticate: Basic realm="registry"`: asks for the login itself.
    BasicChallenge,
    /// 401 with a Bearer challenge whose realm is this URL.
    BearerRealm(String),
    /// 307 to `base` + the request's path and query.
    RedirectTo(String),
    /// 200 with `{"token": "..."}`: a token realm.
    Token(String),
}

/// One request the server saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub target: String,
    /// The `Authorization` header as sent, if any.
    pub authorization: Option<String>,
}

/// The server; stops when dropped.
pub struct CredentialTrap {
    port: u16,
    script: Arc<Mutex<Script>>,
    seen: Arc<Mutex<Vec<Recorded>>>,
    task: JoinHandle<()>,
}

impl CredentialTrap {
    pub async fn start(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind hostile registry");
        let port = listener.local_addr().expect("address").port();
        let script = Arc::new(Mutex::new(script));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (script, seen) = (script.clone(), seen.clone());
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (script, seen) = (script.clone(), seen.clone());
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(10),
                            serve(stream, &script, &seen),
                        )
                        .await;
                    });
                }
            }
        });
        CredentialTrap {
            port,
            script,
            seen,
            task,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Changes what it answers from now on.
    pub fn set_script(&self, script: Script) {
        *self.script.lock().unwrap_or_else(|e| e.into_inner()) = script;
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The requests that carried an `Authorization` header.
    pub fn authorized(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.authorization.is_some())
            .collect()
    }
}

impl Drop for CredentialTrap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut stream: TcpStream,
    script: &Mutex<Script>,
    seen: &Mutex<Vec<Recorded>>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 64 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or_default().to_owned();
    let authorization = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, value)| value.trim().to_owned());
    seen.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Recorded {
            method: method.clone(),
            target: target.clone(),
            authorization,
        });
    let script = script.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let (status, header, body) = match script {
        Script::BasicChallenge => (
            "401 Unauthorized",
            "WWW-Authenticate: Basic realm=\"registry\"".to_owned(),
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"login"}]}"#.to_owned(),
        ),
        Script::BearerRealm(realm) => (
            "401 Unauthorized",
            format!("WWW-Authenticate: Bearer realm=\"{realm}\",service=\"registry\""),
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"login"}]}"#.to_owned(),
        ),
        Script::RedirectTo(base) => (
            "307 Temporary Redirect",
            format!("Location: {base}{target}"),
            String::new(),
        ),
        Script::Token(token) => (
            "200 OK",
            "Content-Type: application/json".to_owned(),
            format!(r#"{{"token":"{token}","expires_in":300}}"#),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\n{header}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        if method == "HEAD" { "" } else { body.as_str() }
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

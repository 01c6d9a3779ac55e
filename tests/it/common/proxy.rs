//! `FaultProxy`: a scripted HTTP/1.1 proxy on 127.0.0.1 in front of a [`TestRegistry`], for
//! the faults a real registry cannot be made to produce.
//!
//! Each connection carries one request (`Connection: close` both ways), so the proxy never
//! parses keep-alive streams. Upstream responses are read whole (de-chunked) before they are
//! forwarded, which is what lets a rule corrupt, truncate or rewrite them.
//!
//! Rules match `"METHOD /path?query"` with a regex, first match wins, each for a number of
//! requests or forever. Every request is logged in arrival order with the status returned.
//!
//! [`TestRegistry`]: super::TestRegistry

use std::sync::{Arc, Mutex};

use regex::Regex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What a matching rule does to a request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status, headers and body; the registry never sees the request.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Forward, then replace (or add) a response header.
    ReplaceHeader { name: String, value: String },
    /// Forward, then flip the last byte of the response body.
    CorruptBody,
    /// Forward, then send the headers and half the body and close the connection.
    DropMidBody,
    /// Forward, then send the headers and half the body and go silent, the connection open.
    StallMidBody,
    /// Forward (the registry acts on the request), then close the connection unanswered.
    LoseAnswer,
    /// Serve `GET /v2/<repo>/tags/list` in pages as newer registries do (sorted, `n` and
    /// `last` honoured), from the registry's full list. With `link`, pages that have more after
    /// them carry `Link: <...>; rel="next"`; without, clients must use `last` themselves.
    PaginateTags { link: bool },
    /// Hold the request this long before forwarding it. While held it counts as in flight,
    /// see [`FaultProxy::max_in_flight`].
    Delay(std::time::Duration),
    /// Demand `Authorization: Bearer <token>`: answer 401 with a Bearer challenge whose realm
    /// is this proxy's `/token`, which hands out `token` (with `expires_in`).
    RequireBearer { token: String, expires_in: u64 },
}

#[derive(Debug)]
struct Rule {
    pattern: Regex,
    fault: Fault,
    /// `None`: forever.
    remaining: Option<usize>,
}

/// One request the proxy saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    /// Path and query as sent.
    pub target: String,
    /// The status returned to the client (0 when the connection was dropped before one).
    pub status: u16,
    /// Whether a rule acted on it.
    pub faulted: bool,
    /// Whether the request carried an `Authorization` header.
    pub authorized: bool,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    seen: Vec<Seen>,
    /// Requests inside a `Delay` now, and the most there ever were at once.
    in_flight: usize,
    max_in_flight: usize,
}

/// The proxy; stops when dropped.
pub struct FaultProxy {
    port: u16,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream` (`127.0.0.1:PORT`).
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let state = Arc::new(Mutex::new(State::default()));
        let upstream = upstream.to_owned();
        let task_state = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = task_state.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let _ = handle(stream, &upstream, port, &state).await;
                });
            }
        });
        FaultProxy { port, state, task }
    }

    /// `127.0.0.1:PORT` of the proxy, to use as the registry host.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Adds a rule for requests matching `pattern` (a regex over `"METHOD /path?query"`),
    /// applied `times` times (`None`: forever).
    pub fn add_rule(&self, pattern: &str, fault: Fault, times: Option<usize>) {
        let pattern = Regex::new(pattern).expect("rule pattern");
        self.lock().rules.push(Rule {
            pattern,
            fault,
            remaining: times,
        });
    }

    /// Answers `status` (with a registry-style error body) `times` times, then passes through.
    pub fn fail_with(&self, pattern: &str, status: u16, times: usize) {
        let body = format!(
            r#"{{"errors":[{{"code":"UNAVAILABLE","message":"injected {status} by FaultProxy"}}]}}"#
        );
        self.add_rule(
            pattern,
            Fault::Respond {
                status,
                headers: vec![("Content-Type".into(), "application/json".into())],
                body,
            },
            Some(times),
        );
    }

    /// Answers 429 with `Retry-After: retry_after` `times` times, then passes through.
    pub fn too_many_requests(&self, pattern: &str, retry_after: &str, times: usize) {
        self.add_rule(
            pattern,
            Fault::Respond {
                status: 429,
                headers: vec![
                    ("Retry-After".into(), retry_after.into()),
                    // As Docker Hub sends it.
                    ("ratelimit-remaining".into(), "0;w=21600".into()),
                    ("Content-Type".into(), "application/json".into()),
                ],
                body: r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#.into(),
            },
            Some(times),
        );
    }

    /// Every request seen so far, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// Requests whose `"METHOD /path?query"` matches `pattern`.
    pub fn requests_matching(&self, pattern: &str) -> Vec<Seen> {
        let pattern = Regex::new(pattern).expect("pattern");
        self.requests()
            .into_iter()
            .filter(|s| pattern.is_match(&format!("{} {}", s.method, s.target)))
            .collect()
    }

    /// The statuses the proxy gave the requests matching `pattern`, in order (0: none).
    pub fn statuses(&self, pattern: &str) -> Vec<u16> {
        self.requests_matching(pattern)
            .iter()
            .map(|seen| seen.status)
            .collect()
    }

    /// The most requests held by a `Delay` rule at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.lock().max_in_flight
    }

    pub fn count(&self, pattern: &str) -> usize {
        self.requests_matching(pattern).len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct ParsedRequest {
    method: String,
    target: String,
    /// Header lines without the request line, `Connection` and `Host` removed.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl ParsedRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct ParsedResponse {
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl ParsedResponse {
    fn set_header(&mut self, name: &str, value: &str) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_owned(), value.to_owned()));
    }
}

async fn handle(
    mut client: TcpStream,
    upstream: &str,
    port: u16,
    state: &Mutex<State>,
) -> std::io::Result<()> {
    let Some(request) = read_request(&mut client).await? else {
        return Ok(());
    };
    let line = format!("{} {}", request.method, request.target);
    let fault = {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        let rule = state
            .rules
            .iter_mut()
            .find(|r| r.remaining != Some(0) && r.pattern.is_match(&line));
        rule.map(|rule| {
            if let Some(n) = rule.remaining.as_mut() {
                *n -= 1;
            }
            rule.fault.clone()
        })
    };
    let authorized = request.header("authorization").is_some();
    let faulted = fault.is_some();
    let (status, dropped) = match fault {
        None => {
            let response = forward(&request, upstream).await?;
            (
                write_response(&mut client, &request, &response, BodyEnd::Whole).await?,
                false,
            )
        }
        Some(Fault::Respond {
            status,
            headers,
            body,
        }) => {
            let response = ParsedResponse {
                status,
                reason: "Injected".into(),
                headers,
                body: body.into_bytes(),
            };
            (
                write_response(&mut client, &request, &response, BodyEnd::Whole).await?,
                false,
            )
        }
        Some(Fault::ReplaceHeader { name, value }) => {
            let mut response = forward(&request, upstream).await?;
            response.set_header(&name, &value);
            (
                write_response(&mut client, &request, &response, BodyEnd::Whole).await?,
                false,
            )
        }
        Some(Fault::CorruptBody) => {
            let mut response = forward(&request, upstream).await?;
            if let Some(last) = response.body.last_mut() {
                *last ^= 0xff;
            }
            (
                write_response(&mut client, &request, &response, BodyEnd::Whole).await?,
                false,
            )
        }
        Some(Fault::DropMidBody) => {
            let response = forward(&request, upstream).await?;
            (
                write_response(&mut client, &request, &response, BodyEnd::Dropped).await?,
                true,
            )
        }
        Some(Fault::LoseAnswer) => {
            forward(&request, upstream).await?;
            client.shutdown().await?;
            (0, true)
        }
        Some(Fault::StallMidBody) => {
            let response = forward(&request, upstream).await?;
            (
                write_response(&mut client, &request, &response, BodyEnd::Stalled).await?,
                true,
            )
        }
        Some(Fault::PaginateTags { link }) => {
            let response = paginate_tags(&request, upstream, link).await?;
            (
                write_response(&mut client, &request, &response, BodyEnd::Whole).await?,
                false,
            )
        }
        Some(Fault::Delay(delay)) => {
            {
                let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                state.in_flight += 1;
                state.max_in_flight = state.max_in_flight.max(state.in_flight);
            }
            tokio::time::sleep(delay).await;
            // Leave before answering, so the client cannot start its next request while this
            // one still counts.
            state.lock().unwrap_or_else(|e| e.into_inner()).in_flight -= 1;
            let response = forward(&request, upstream).await?;
            (
                write_response(&mut client, &request, &response, BodyEnd::Whole).await?,
                false,
            )
        }
        Some(Fault::RequireBearer { token, expires_in }) => {
            let response = require_bearer(&request, upstream, port, &token, expires_in).await?;
            (
                write_response(&mut client, &request, &response, BodyEnd::Whole).await?,
                false,
            )
        }
    };
    state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .seen
        .push(Seen {
            method: request.method.clone(),
            target: request.target.clone(),
            status: if dropped { 0 } else { status },
            faulted,
            authorized,
        });
    Ok(())
}

/// Reads one request head and its `Content-Length` body. `None` on a connection closed
/// before a request.
async fn read_request(stream: &mut TcpStream) -> std::io::Result<Option<ParsedRequest>> {
    let mut buffer = Vec::new();
    let head_end = loop {
        if let Some(end) = find_head_end(&buffer) {
            break end;
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .filter(|(n, _)| !n.eq_ignore_ascii_case("connection"))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = vec![0u8; length - body.len()];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Some(ParsedRequest {
        method,
        target,
        headers,
        body,
    }))
}

fn find_head_end(buffer: &[u8]) -> Option<usize> {
    buffer.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Sends `request` to the registry with `Connection: close` and reads the whole response.
/// The `Host` header is kept (the proxy's), so the registry's `Location` and `Link` headers
/// point back through the proxy.
async fn forward(request: &ParsedRequest, upstream: &str) -> std::io::Result<ParsedResponse> {
    forward_to(request, &request.target, upstream).await
}

async fn forward_to(
    request: &ParsedRequest,
    target: &str,
    upstream: &str,
) -> std::io::Result<ParsedResponse> {
    let mut stream = TcpStream::connect(upstream).await?;
    let mut head = format!("{} {} HTTP/1.1\r\n", request.method, target);
    for (name, value) in &request.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&request.body).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    parse_response(&raw, request.method == "HEAD")
}

fn parse_response(raw: &[u8], head_only: bool) -> std::io::Result<ParsedResponse> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let head_end = find_head_end(raw).ok_or_else(|| invalid("no response head"))?;
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let _version = parts.next();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("bad status line"))?;
    let reason = parts.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let raw_body = &raw[head_end + 4..];
    let body = if head_only {
        Vec::new()
    } else if chunked {
        dechunk(raw_body).ok_or_else(|| invalid("bad chunked body"))?
    } else {
        raw_body.to_vec()
    };
    Ok(ParsedResponse {
        status,
        reason,
        headers,
        body,
    })
}

fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

/// How much of a response body the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyEnd {
    Whole,
    /// Half of it, then the connection closes.
    Dropped,
    /// Half of it, then nothing for a minute while the connection stays open.
    Stalled,
}

/// Writes `response` with `Connection: close`; for non-HEAD requests `Content-Length` is set
/// from the (possibly altered) body, of which `end` says how much goes out. Returns the status
/// written.
async fn write_response(
    client: &mut TcpStream,
    request: &ParsedRequest,
    response: &ParsedResponse,
    end: BodyEnd,
) -> std::io::Result<u16> {
    let head_only = request.method == "HEAD";
    let mut head = format!("HTTP/1.1 {} {}\r\n", response.status, response.reason);
    for (name, value) in &response.headers {
        let hop_by_hop = name.eq_ignore_ascii_case("connection")
            || name.eq_ignore_ascii_case("transfer-encoding");
        let length = name.eq_ignore_ascii_case("content-length");
        if hop_by_hop || (length && !head_only) {
            continue;
        }
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !head_only {
        head.push_str(&format!("Content-Length: {}\r\n", response.body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    client.write_all(head.as_bytes()).await?;
    if !head_only {
        let body = match end {
            BodyEnd::Whole => &response.body[..],
            BodyEnd::Dropped | BodyEnd::Stalled => &response.body[..response.body.len() / 2],
        };
        client.write_all(body).await?;
    }
    client.flush().await?;
    if end == BodyEnd::Stalled {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    }
    client.shutdown().await?;
    Ok(response.status)
}

fn json_response(status: u16, headers: Vec<(String, String)>, body: Vec<u8>) -> ParsedResponse {
    let mut response = ParsedResponse {
        status,
        reason: "OK".into(),
        headers,
        body,
    };
    response.set_header("Content-Type", "application/json");
    response
}

async fn paginate_tags(
    request: &ParsedRequest,
    upstream: &str,
    link: bool,
) -> std::io::Result<ParsedResponse> {
    let (path, query) = request
        .target
        .split_once('?')
        .unwrap_or((request.target.as_str(), ""));
    let mut full = forward_to(request, path, upstream).await?;
    if full.status != 200 {
        return Ok(full);
    }
    let parsed: serde_json::Value = serde_json::from_slice(&full.body)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut tags: Vec<String> = parsed["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    tags.sort();
    let params: Vec<(String, String)> = reqwest::Url::parse(&format!("http://x/?{query}"))
        .map(|u| u.query_pairs().into_owned().collect())
        .unwrap_or_default();
    let param = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let n: usize = param("n").and_then(|n| n.parse().ok()).unwrap_or(100);
    let last = param("last");
    let after: Vec<String> = tags
        .into_iter()
        .filter(|t| last.as_ref().is_none_or(|l| t > l))
        .collect();
    let page: Vec<String> = after.iter().take(n).cloned().collect();
    let mut headers = Vec::new();
    if link
        && after.len() > page.len()
        && let Some(last) = page.last()
    {
        // Relative, as distribution v3 writes it.
        headers.push((
            "Link".to_owned(),
            format!("<{path}?last={last}&n={n}>; rel=\"next\""),
        ));
    }
    let body = serde_json::to_vec(&serde_json::json!({"name": parsed["name"], "tags": page}))
        .unwrap_or_default();
    full = json_response(200, headers, body);
    Ok(full)
}

async fn require_bearer(
    request: &ParsedRequest,
    upstream: &str,
    port: u16,
    token: &str,
    expires_in: u64,
) -> std::io::Result<ParsedResponse> {
    if request.target.starts_with("/token") {
        let body =
            serde_json::to_vec(&serde_json::json!({"token": token, "expires_in": expires_in}))
                .unwrap_or_default();
        return Ok(json_response(200, Vec::new(), body));
    }
    if request.header("authorization") == Some(&format!("Bearer {token}")) {
        return forward(request, upstream).await;
    }
    let repository = request
        .target
        .strip_prefix("/v2/")
        .and_then(|rest| {
            ["/manifests/", "/blobs/", "/tags/"]
                .iter()
                .find_map(|marker| rest.find(marker).map(|i| &rest[..i]))
        })
        .unwrap_or("");
    let challenge = format!(
        "Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"fault-proxy\",scope=\"repository:{repository}:pull\""
    );
    Ok(json_response(
        401,
        vec![("WWW-Authenticate".to_owned(), challenge)],
        br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#.to_vec(),
    ))
}

//! `HostileRegistry`: a hand-written registry on 127.0.0.1 that answers as a hostile or
//! broken one would, for what a real `docker-registry` cannot be made to do. Each repository
//! name picks a behaviour:
//!
//! - `endless`: tag pages of 1,000 tags, each with a `Link` to one more page, forever;
//! - `giant`: one tag page that never ends (no `Content-Length`, streamed until the client
//!   hangs up or [`GIANT_BYTES`] were sent);
//! - `slow`: a tag page of 10 tags every [`HostileRegistry::page_delay`], each with a `Link`
//!   to the next, forever;
//! - `huge-manifest`: a tag list of `v1.0.0`, whose manifest is [`GIANT_BYTES`] long;
//! - `huge-error`: a 400 whose error body is [`GIANT_BYTES`] long;
//! - `bearer`: a 401 whose Bearer challenge names this registry's `/token` as the realm,
//!   which answers with a token document without end;
//! - `trickle`: a valid single-layer image (`v1.0.0`) whose layer comes one byte every
//!   [`HostileRegistry::trickle_every`].
//!
//! A name with a number at its end behaves as the name without (`giant3` as `giant`), for many
//! entries of one kind at once. One request per connection (`Connection: close`), anonymous.
//! Every request is counted by repository (as named), and the bytes written in all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use imagelock::reference::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the endless answers send at most, so a test that fails to stop reading ends anyway.
pub const GIANT_BYTES: u64 = 512 << 20;

/// The `trickle` image: its manifest, config and layer.
pub struct TrickleImage {
    pub manifest: Vec<u8>,
    pub digest: Digest,
    pub config: Vec<u8>,
    pub config_digest: Digest,
    pub layer: Vec<u8>,
    pub layer_digest: Digest,
}

impl TrickleImage {
    fn new() -> Self {
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
                .to_vec();
        let layer: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let (config_digest, layer_digest) = (Digest::sha256_of(&config), Digest::sha256_of(&layer));
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest.as_str(),
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer_digest.as_str(),
                "size": layer.len(),
            }],
        }))
        .expect("manifest JSON");
        TrickleImage {
            digest: Digest::sha256_of(&manifest),
            manifest,
            config,
            config_digest,
            layer,
            layer_digest,
        }
    }
}

struct Shared {
    port: u16,
    page_delay: Duration,
    trickle_every: Duration,
    image: TrickleImage,
    requests: Mutex<HashMap<String, usize>>,
    layer_requests: AtomicU64,
    bytes_sent: AtomicU64,
}

/// The hostile registry; stops when dropped.
pub struct HostileRegistry {
    port: u16,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl HostileRegistry {
    /// Listens on a free port of 127.0.0.1. `page_delay`: the pause before each `slow` page;
    /// `trickle_every`: the pause between two bytes of the `trickle` layer.
    pub async fn start(page_delay: Duration, trickle_every: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind hostile registry");
        let port = listener.local_addr().expect("address").port();
        let shared = Arc::new(Shared {
            port,
            page_delay,
            trickle_every,
            image: TrickleImage::new(),
            requests: Mutex::new(HashMap::new()),
            layer_requests: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
        });
        let task_shared = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = task_shared.clone();
                tokio::spawn(async move {
                    let _ = handle(stream, &shared).await;
                });
            }
        });
        HostileRegistry { port, shared, task }
    }

    /// `127.0.0.1:PORT`, to use as the registry host.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The `trickle` image.
    pub fn image(&self) -> &TrickleImage {
        &self.shared.image
    }

    /// Requests seen for `repo` (any method, any path under it).
    pub fn requests(&self, repo: &str) -> usize {
        let requests = self
            .shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        requests.get(repo).copied().unwrap_or(0)
    }

    /// `GET`s of the `trickle` layer.
    pub fn layer_requests(&self) -> u64 {
        self.shared.layer_requests.load(Ordering::Relaxed)
    }

    /// Bytes written to clients, headers included.
    pub fn bytes_sent(&self) -> u64 {
        self.shared.bytes_sent.load(Ordering::Relaxed)
    }
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads the request head; `(method, path with query)`.
async fn read_head(stream: &mut TcpStream) -> Option<(String, String)> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 || head.len() > 64 * 1024 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut line = text.lines().next()?.split_whitespace();
    Some((line.next()?.to_owned(), line.next()?.to_owned()))
}

struct Writer<'a> {
    stream: &'a mut TcpStream,
    shared: &'a Shared,
}

impl Writer<'_> {
    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.shared
            .bytes_sent
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// A whole response; `length: false` leaves out `Content-Length` (the body then ends when
    /// the connection closes).
    async fn respond(
        &mut self,
        status: &str,
        headers: &[(&str, String)],
        body: &[u8],
        head_only: bool,
    ) -> std::io::Result<()> {
        let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        self.send(head.as_bytes()).await?;
        if !head_only {
            self.send(body).await?;
        }
        Ok(())
    }

    /// Headers without a length, then `prefix` and `filler` repeated until [`GIANT_BYTES`] or
    /// until the client hangs up.
    async fn endless(
        &mut self,
        status: &str,
        content_type: &str,
        prefix: &[u8],
        filler: &[u8],
    ) -> std::io::Result<()> {
        let head = format!(
            "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: {content_type}\r\n\r\n"
        );
        self.send(head.as_bytes()).await?;
        self.send(prefix).await?;
        let chunk = filler.repeat((64 * 1024) / filler.len().max(1));
        let mut sent = 0u64;
        while sent < GIANT_BYTES {
            self.send(&chunk).await?;
            sent += chunk.len() as u64;
        }
        Ok(())
    }
}

/// `page=N` from a query, 0 without.
fn page_of(query: &str) -> usize {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("page="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn tag_page(tags: impl Iterator<Item = String>) -> Vec<u8> {
    let tags: Vec<String> = tags.collect();
    serde_json::to_vec(&serde_json::json!({ "tags": tags })).expect("tag page JSON")
}

async fn handle(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let Some((method, target)) = read_head(&mut stream).await else {
        return Ok(());
    };
    let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
    let head_only = method == "HEAD";
    if path == "/token" {
        let mut out = Writer {
            stream: &mut stream,
            shared,
        };
        return out
            .endless("200 OK", "application/json", br#"{"token":""#, b"abcdefgh")
            .await;
    }
    let rest = path.strip_prefix("/v2/").unwrap_or_default();
    let (name, tail) = rest.split_once('/').unwrap_or((rest, ""));
    // `giant3` behaves as `giant`: many entries of one kind at once.
    let repo = name.trim_end_matches(|c: char| c.is_ascii_digit());
    {
        let mut requests = shared.requests.lock().unwrap_or_else(|e| e.into_inner());
        *requests.entry(name.to_owned()).or_default() += 1;
    }
    let mut out = Writer {
        stream: &mut stream,
        shared,
    };
    let json = ("Content-Type", "application/json".to_owned());
    let next_link = |page: usize| {
        (
            "Link",
            format!("</v2/{name}/tags/list?page={}>; rel=\"next\"", page + 1),
        )
    };
    let image = &shared.image;
    match (repo, tail) {
        ("", "") => out.respond("200 OK", &[json], b"{}", head_only).await,
        ("endless", "tags/list") => {
            let page = page_of(query);
            let body = tag_page((0..1000).map(|i| format!("build-{page}-{i}")));
            out.respond("200 OK", &[json, next_link(page)], &body, head_only)
                .await
        }
        ("slow", "tags/list") => {
            let page = page_of(query);
            tokio::time::sleep(shared.page_delay).await;
            let body = tag_page((0..10).map(|i| format!("v1.{page}.{i}")));
            out.respond("200 OK", &[json, next_link(page)], &body, head_only)
                .await
        }
        ("giant", "tags/list") => {
            out.endless(
                "200 OK",
                "application/json",
                br#"{"tags":["#,
                br#""v1.0.0","#,
            )
            .await
        }
        ("huge-manifest", "tags/list") => {
            let body = tag_page(["v1.0.0".to_owned()].into_iter());
            out.respond("200 OK", &[json], &body, head_only).await
        }
        ("huge-manifest", tail) if tail.starts_with("manifests/") => {
            if head_only {
                // No digest: the client has to GET the manifest to learn it.
                let headers = [(
                    "Content-Type",
                    "application/vnd.oci.image.manifest.v1+json".to_owned(),
                )];
                return out.respond("200 OK", &headers, b"", true).await;
            }
            out.endless(
                "200 OK",
                "application/vnd.oci.image.manifest.v1+json",
                br#"{"schemaVersion":2,"layers":["#,
                b"                ",
            )
            .await
        }
        ("huge-error", _) => {
            out.endless(
                "400 Bad Request",
                "application/json",
                br#"{"errors":[{"code":"DENIED","message":""#,
                b"secret-looking-filler ",
            )
            .await
        }
        ("bearer", _) => {
            let challenge = (
                "WWW-Authenticate",
                format!(
                    "Bearer realm=\"http://127.0.0.1:{}/token\",service=\"hostile\"",
                    shared.port
                ),
            );
            let body =
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
            out.respond("401 Unauthorized", &[json, challenge], body, head_only)
                .await
        }
        ("trickle", "tags/list") => {
            let body = tag_page(["v1.0.0".to_owned()].into_iter());
            out.respond("200 OK", &[json], &body, head_only).await
        }
        ("trickle", tail)
            if tail == "manifests/v1.0.0" || tail == format!("manifests/{}", image.digest) =>
        {
            let headers = [
                (
                    "Content-Type",
                    "application/vnd.oci.image.manifest.v1+json".to_owned(),
                ),
                ("Docker-Content-Digest", image.digest.to_string()),
            ];
            out.respond("200 OK", &headers, &image.manifest, head_only)
                .await
        }
        ("trickle", tail) if tail == format!("blobs/{}", image.config_digest) => {
            let headers = [("Docker-Content-Digest", image.config_digest.to_string())];
            out.respond("200 OK", &headers, &image.config, head_only)
                .await
        }
        ("trickle", tail) if tail == format!("blobs/{}", image.layer_digest) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\nDocker-Content-Digest: {}\r\n\r\n",
                image.layer.len(),
                image.layer_digest
            );
            out.send(head.as_bytes()).await?;
            if head_only {
                return Ok(());
            }
            shared.layer_requests.fetch_add(1, Ordering::Relaxed);
            for byte in &image.layer {
                out.send(std::slice::from_ref(byte)).await?;
                tokio::time::sleep(shared.trickle_every).await;
            }
            Ok(())
        }
        _ => {
            let body = br#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#;
            out.respond("404 Not Found", &[json], body, head_only).await
        }
    }
}

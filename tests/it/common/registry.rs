//! A real `docker-registry` (CNCF distribution 2.8) per test, on a free port of 127.0.0.1.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

/// How long a registry may take to answer `GET /v2/` after spawning.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
const BINARY: &str = "docker-registry";

/// A running `docker-registry serve`, storing into a temporary directory; killed on drop.
///
/// `start()` is synchronous (it blocks for the ~100 ms the registry takes to come up), so it
/// works from plain and `#[tokio::test]` tests alike.
pub struct TestRegistry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    basic_auth: Option<(String, String)>,
}

impl TestRegistry {
    /// An anonymous registry with deletes enabled.
    pub fn start() -> Self {
        Self::spawn(None)
    }

    /// A registry that requires HTTP Basic auth (htpasswd with a bcrypt hash).
    pub fn start_with_basic_auth(user: &str, password: &str) -> Self {
        Self::spawn(Some((user.to_owned(), password.to_owned())))
    }

    /// `127.0.0.1:PORT`, as used in image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's storage root, for tests that inspect or damage it.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The Basic credentials this registry requires, if any.
    pub fn basic_auth(&self) -> Option<(&str, &str)> {
        self.basic_auth
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// A Docker `config.json` in the registry's temp dir with its credentials (or `user`/`password`
    /// overrides), keyed by host; returns its path.
    pub fn write_docker_config(&self, user: &str, password: &str) -> PathBuf {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let json = serde_json::json!({ "auths": { self.host(): { "auth": auth } } });
        let path = self.dir.path().join("docker-config.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
        path
    }

    fn spawn(basic_auth: Option<(String, String)>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // The port is free when chosen, but another process may take it before the registry
        // binds: try again with a new one when the registry does not come up.
        let mut last_error = String::new();
        for _ in 0..3 {
            let port = free_port();
            let config = write_config(dir.path(), port, basic_auth.as_ref());
            let log_path = dir.path().join("registry.log");
            let log = std::fs::File::create(&log_path).expect("log file");
            let mut child = Command::new(BINARY)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {BINARY} (is it installed?): {e}"));
            match wait_ready(&mut child, port, &log_path) {
                Ok(()) => {
                    return TestRegistry {
                        child,
                        port,
                        dir,
                        basic_auth,
                    };
                }
                Err(e) => {
                    last_error = e;
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        panic!("docker-registry did not start: {last_error}");
    }
}

/// Polls `GET /v2/` until it answers 200 (or 401 with auth), bounded by [`READY_TIMEOUT`].
fn wait_ready(child: &mut Child, port: u16, log_path: &Path) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            let log = std::fs::read_to_string(log_path).unwrap_or_default();
            return Err(format!("exited with {status}: {log}"));
        }
        if let Some(status) = probe_v2(port)
            && (status == 200 || status == 401)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("no answer on port {port} within {READY_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The status of `GET /v2/`, or `None` when nothing answers yet.
fn probe_v2(port: u16) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().ok()?,
        Duration::from_millis(200),
    )
    .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream
        .write_all(format!("GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes())
        .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

fn write_config(dir: &Path, port: u16, basic_auth: Option<&(String, String)>) -> PathBuf {
    let auth = match basic_auth {
        Some((user, password)) => {
            let hash = bcrypt::hash_with_result(password, 4)
                .expect("bcrypt")
                .format_for_version(bcrypt::Version::TwoY);
            let htpasswd = dir.join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).expect("htpasswd");
            format!(
                "auth:\n  htpasswd:\n    realm: imagelock-test\n    path: {}\n",
                htpasswd.display()
            )
        }
        None => String::new(),
    };
    let config = format!(
        "version: 0.1\n\
         log:\n  level: error\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n\
         http:\n  addr: 127.0.0.1:{port}\n\
         {auth}",
        root = dir.join("data").display(),
    );
    let path = dir.join("config.yml");
    std::fs::write(&path, config).expect("registry config");
    path
}

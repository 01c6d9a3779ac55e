//! The webhook's serving certificate: read from files and reloaded when they change, or
//! generated with a CA of its own.
//!
//! Kubernetes mounts a Secret as `tls.crt -> ..data/tls.crt` with `..data` a symlink to a
//! timestamped directory, and updates it by swapping `..data` in one rename. So the
//! directories holding the files are watched, not the files (a watch on a file follows the
//! old inode), and a periodic check backs the watch up. A new certificate applies to new
//! connections; a pair that does not load (or a key that does not match the certificate, as
//! between two writes of a non-atomic update) is refused and the current one stays.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use chrono::{Datelike, Utc};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::AdmissionError;

/// How long a burst of file events is left to settle before the files are read.
const SETTLE: Duration = Duration::from_millis(100);

/// The crypto provider of every TLS endpoint of the daemon: aws-lc-rs, as reqwest's.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The serving certificate, reloaded from its files. Resolves every handshake to the current
/// one.
pub struct CertReloader {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    /// SHA-256 of the bytes of the pair in use, to tell a real change from a touch.
    loaded: Mutex<[u8; 32]>,
}

impl fmt::Debug for CertReloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertReloader")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertReloader {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl CertReloader {
    /// Loads the pair; fails when it does not load, so a bad setup stops the daemon at start.
    pub fn load(
        files: TlsFiles,
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<Self>, AdmissionError> {
        let (key, fingerprint) = read_pair(&files, &provider)?;
        Ok(Arc::new(CertReloader {
            files,
            provider,
            current: ArcSwap::from_pointee(key),
            loaded: Mutex::new(fingerprint),
        }))
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The certificate chain new connections get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// Reads the files again. `Ok(true)` when a different pair was loaded; on error the
    /// current pair stays.
    pub fn reload(&self) -> Result<bool, AdmissionError> {
        let (cert_bytes, key_bytes) = read_files(&self.files)?;
        let fingerprint = fingerprint(&cert_bytes, &key_bytes);
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *loaded == fingerprint {
            return Ok(false);
        }
        let key = certified_key(&self.files, &cert_bytes, &key_bytes, &self.provider)?;
        self.current.store(Arc::new(key));
        *loaded = fingerprint;
        Ok(true)
    }

    /// Reloads on every change in the directories of the files, and every `poll` in case a
    /// change event is missed, until `shutdown`. Failures are logged; the current pair stays.
    pub async fn watch(self: Arc<Self>, poll: Duration, shutdown: CancellationToken) {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let _watcher = match self.watcher(tx) {
            Ok(watcher) => Some(watcher),
            Err(e) => {
                tracing::warn!(error = %e, poll = ?poll, "certificate files are only polled");
                None
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                Some(()) = rx.recv() => {
                    // Let a burst of events (several files, a rename) end before reading.
                    tokio::time::sleep(SETTLE).await;
                    while rx.try_recv().is_ok() {}
                }
                _ = tokio::time::sleep(poll) => {}
            }
            match self.reload() {
                Ok(true) => tracing::info!(
                    cert = %self.files.cert.display(),
                    "webhook serving certificate reloaded"
                ),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "certificate not reloaded; the current one stays")
                }
            }
        }
    }

    fn watcher(&self, tx: mpsc::Sender<()>) -> Result<notify::RecommendedWatcher, AdmissionError> {
        use notify::Watcher as _;
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // The reload reads the files it watches: those reads are not changes.
                if event.is_ok_and(|e| crate::daemon::watch::is_change(&e.kind)) {
                    // A full channel already holds a wake-up.
                    let _ = tx.try_send(());
                }
            })
            .map_err(|e| AdmissionError::Watch {
                path: self.files.cert.clone(),
                message: e.to_string(),
            })?;
        let mut dirs: Vec<&Path> = [&self.files.cert, &self.files.key]
            .into_iter()
            .map(|file| match file.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => Path::new("."),
            })
            .collect();
        dirs.dedup();
        for dir in dirs {
            watcher
                .watch(dir, notify::RecursiveMode::NonRecursive)
                .map_err(|e| AdmissionError::Watch {
                    path: dir.to_path_buf(),
                    message: e.to_string(),
                })?;
        }
        Ok(watcher)
    }
}

fn read_files(files: &TlsFiles) -> Result<(Vec<u8>, Vec<u8>), AdmissionError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| AdmissionError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    Ok((read(&files.cert)?, read(&files.key)?))
}

fn fingerprint(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update((cert.len() as u64).to_be_bytes());
    hash.update(cert);
    hash.update(key);
    hash.finalize().into()
}

fn read_pair(
    files: &TlsFiles,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, [u8; 32]), AdmissionError> {
    let (cert_bytes, key_bytes) = read_files(files)?;
    let key = certified_key(files, &cert_bytes, &key_bytes, provider)?;
    Ok((key, fingerprint(&cert_bytes, &key_bytes)))
}

fn certified_key(
    files: &TlsFiles,
    cert_bytes: &[u8],
    key_bytes: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, AdmissionError> {
    let chain = CertificateDer::pem_slice_iter(cert_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| AdmissionError::InvalidPem {
            path: files.cert.clone(),
            message: format!("not a PEM certificate chain: {e}"),
        })?;
    if chain.is_empty() {
        return Err(AdmissionError::InvalidPem {
            path: files.cert.clone(),
            message: "no CERTIFICATE block".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_bytes).map_err(|e| AdmissionError::InvalidPem {
        path: files.key.clone(),
        message: format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| AdmissionError::KeyMismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
        message: e.to_string(),
    })
}

/// The TLS settings of the webhook: TLS 1.2 and 1.3, HTTP/2 and HTTP/1.1, the certificate
/// from `certs`.
pub fn server_config(
    certs: Arc<CertReloader>,
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ServerConfig, AdmissionError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| AdmissionError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A CA and a serving certificate generated by the daemon, for clusters without
/// cert-manager: `DIR/ca.crt` is the bundle for the MutatingWebhookConfiguration.
///
/// The CA (`ca.crt`, `ca.key`) is made once and reused while its files are there, so the
/// bundle survives restarts when `DIR` is persistent; the serving certificate (`tls.crt`,
/// `tls.key`) is issued anew at every start for the current service name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfSigned {
    pub dir: PathBuf,
    pub service: String,
    pub namespace: String,
}

/// Validity of the generated certificates: nothing rotates them but a restart (the serving
/// certificate) or deleting the files (the CA).
const CA_YEARS: i32 = 10;
const SERVING_YEARS: i32 = 5;

impl SelfSigned {
    pub const CA_CERT: &'static str = "ca.crt";
    pub const CA_KEY: &'static str = "ca.key";
    pub const CERT: &'static str = "tls.crt";
    pub const KEY: &'static str = "tls.key";

    /// The names the serving certificate is valid for: the Service, as the API server calls it
    /// (`<service>.<namespace>.svc`) and its shorter and longer forms.
    pub fn dns_names(&self) -> Vec<String> {
        let (service, namespace) = (&self.service, &self.namespace);
        vec![
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
            format!("{service}.{namespace}"),
            service.clone(),
        ]
    }

    /// Makes sure `DIR` holds a CA and a serving certificate for the service; returns the
    /// serving pair.
    pub fn ensure(&self) -> Result<TlsFiles, AdmissionError> {
        let generate = |e: rcgen::Error| AdmissionError::Generate(e.to_string());
        std::fs::create_dir_all(&self.dir).map_err(|source| AdmissionError::Write {
            path: self.dir.clone(),
            source,
        })?;
        let ca_key_path = self.dir.join(Self::CA_KEY);
        let ca_cert_path = self.dir.join(Self::CA_CERT);
        let ca_key = match std::fs::read_to_string(&ca_key_path) {
            Ok(pem) if ca_cert_path.is_file() => {
                let key =
                    rcgen::KeyPair::from_pem(&pem).map_err(|e| AdmissionError::InvalidPem {
                        path: ca_key_path.clone(),
                        message: format!(
                            "not a usable CA key ({e}); delete ca.crt and ca.key to get a new CA"
                        ),
                    })?;
                tracing::info!(dir = %self.dir.display(), "reusing the webhook CA");
                key
            }
            // A CA key that is there but unreadable is not replaced: the webhook
            // configuration's caBundle names that CA.
            Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                return Err(AdmissionError::Read {
                    path: ca_key_path,
                    source,
                });
            }
            _ => {
                let key = rcgen::KeyPair::generate().map_err(generate)?;
                let cert = ca_params(Utc::now()).self_signed(&key).map_err(generate)?;
                write_file(&ca_key_path, &key.serialize_pem(), true)?;
                write_file(&ca_cert_path, &cert.pem(), false)?;
                tracing::info!(ca = %ca_cert_path.display(), "generated a webhook CA");
                key
            }
        };
        let issuer = rcgen::Issuer::new(ca_params(Utc::now()), ca_key);

        let mut params = rcgen::CertificateParams::new(self.dns_names()).map_err(generate)?;
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("{}.{}.svc", self.service, self.namespace),
        );
        set_validity(&mut params, Utc::now(), SERVING_YEARS);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate().map_err(generate)?;
        let cert = params.signed_by(&key, &issuer).map_err(generate)?;
        let files = TlsFiles {
            cert: self.dir.join(Self::CERT),
            key: self.dir.join(Self::KEY),
        };
        // Key first: a watcher that sees the new certificate finds its key already there.
        write_file(&files.key, &key.serialize_pem(), true)?;
        write_file(&files.cert, &cert.pem(), false)?;
        tracing::info!(
            cert = %files.cert.display(),
            names = ?self.dns_names(),
            "generated the webhook serving certificate"
        );
        Ok(files)
    }
}

/// The CA's parameters. Always the same subject, so a serving certificate issued after a
/// restart (from the kept CA key) chains to the CA certificate made before it.
fn ca_params(now: chrono::DateTime<Utc>) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "imagelock admission webhook CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, now, CA_YEARS);
    params
}

/// Valid from yesterday (clocks differ) for `years` years.
fn set_validity(params: &mut rcgen::CertificateParams, now: chrono::DateTime<Utc>, years: i32) {
    let start = (now - chrono::Duration::days(1)).date_naive();
    // Day 28 at most: every month has it, so the end date always exists.
    let ymd = |year: i32| {
        rcgen::date_time_ymd(
            year,
            u8::try_from(start.month()).unwrap_or(1),
            u8::try_from(start.day().min(28)).unwrap_or(1),
        )
    };
    params.not_before = ymd(start.year());
    params.not_after = ymd(start.year() + years);
}

/// Writes `path` through a temporary file and a rename; `secret` files are readable by the
/// owner only.
fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), AdmissionError> {
    let error = |source| AdmissionError::Write {
        path: path.to_path_buf(),
        source,
    };
    use std::os::unix::fs::PermissionsExt as _;
    let mode = if secret { 0o600 } else { 0o644 };
    let permissions = std::fs::Permissions::from_mode(mode);
    crate::atomic_file::write(path, text.as_bytes(), Some(permissions)).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(dir: &Path) -> SelfSigned {
        SelfSigned {
            dir: dir.to_path_buf(),
            service: "imagelock".into(),
            namespace: "imagelock-system".into(),
        }
    }

    #[test]
    fn self_signed_pair_loads_and_the_ca_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let generated = self_signed(dir.path());
        let files = generated.ensure().unwrap();
        let reloader = CertReloader::load(files.clone(), provider()).unwrap();
        let ca = std::fs::read(dir.path().join("ca.crt")).unwrap();
        let first = reloader.current().cert[0].clone();

        // A restart reuses the CA and issues a new serving certificate.
        generated.ensure().unwrap();
        assert_eq!(std::fs::read(dir.path().join("ca.crt")).unwrap(), ca);
        assert!(reloader.reload().unwrap());
        assert_ne!(reloader.current().cert[0], first);
        assert!(
            !reloader.reload().unwrap(),
            "unchanged files are not reloaded"
        );

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&files.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(generated.dns_names()[0], "imagelock.imagelock-system.svc");
    }

    #[test]
    fn bad_pairs_are_refused_and_the_current_one_stays() {
        let one = tempfile::tempdir().unwrap();
        let two = tempfile::tempdir().unwrap();
        let files = self_signed(one.path()).ensure().unwrap();
        let other = self_signed(two.path()).ensure().unwrap();
        let reloader = CertReloader::load(files.clone(), provider()).unwrap();
        let before = reloader.current().cert[0].clone();

        std::fs::copy(&other.key, &files.key).unwrap();
        assert!(matches!(
            reloader.reload(),
            Err(AdmissionError::KeyMismatch { .. })
        ));
        std::fs::write(&files.cert, "not pem").unwrap();
        let err = reloader.reload().unwrap_err();
        assert!(matches!(err, AdmissionError::InvalidPem { .. }), "{err}");
        std::fs::remove_file(&files.cert).unwrap();
        assert!(matches!(
            reloader.reload(),
            Err(AdmissionError::Read { .. })
        ));
        assert_eq!(reloader.current().cert[0], before);
        assert!(CertReloader::load(files, provider()).is_err());
    }
}

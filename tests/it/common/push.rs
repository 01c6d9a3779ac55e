//! Pushes test images through the registry API with plain reqwest: independent of the client
//! under test, so a bug there cannot hide in the fixtures.

use std::collections::BTreeMap;

use base64::Engine as _;
use futures_util::StreamExt as _;
use imagelock::reference::{Digest, Platform};
use serde_json::json;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// What to push as one single-platform image.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub platform: Platform,
    pub layers: usize,
    pub layer_size: usize,
}

impl ImageSpec {
    /// One small layer for `platform` (`linux/amd64`).
    pub fn small(platform: &str) -> Self {
        ImageSpec {
            platform: platform.parse().expect("platform"),
            layers: 1,
            layer_size: 1024,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PushedImage {
    pub digest: Digest,
    pub bytes: Vec<u8>,
    pub config_digest: Digest,
    pub layer_digests: Vec<Digest>,
}

#[derive(Debug, Clone)]
pub struct PushedIndex {
    pub digest: Digest,
    pub bytes: Vec<u8>,
    /// Child manifest digest per platform (`linux/arm64/v8`).
    pub children: BTreeMap<String, Digest>,
}

/// A registry to push to, anonymously or with Basic credentials.
#[derive(Clone)]
pub struct Pusher {
    http: reqwest::Client,
    base: String,
    auth: Option<String>,
}

impl Pusher {
    pub fn new(host: &str) -> Self {
        Pusher {
            http: reqwest::Client::new(),
            base: format!("http://{host}"),
            auth: None,
        }
    }

    pub fn with_basic_auth(host: &str, user: &str, password: &str) -> Self {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Pusher {
            auth: Some(format!("Basic {token}")),
            ..Self::new(host)
        }
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, url);
        match &self.auth {
            Some(auth) => builder.header("Authorization", auth),
            None => builder,
        }
    }

    /// Uploads `bytes` as a blob (POST then monolithic PUT) unless already there.
    pub async fn push_blob(&self, repo: &str, bytes: &[u8]) -> Digest {
        let digest = Digest::sha256_of(bytes);
        let exists = self
            .request(
                reqwest::Method::HEAD,
                &format!("{}/v2/{repo}/blobs/{digest}", self.base),
            )
            .send()
            .await
            .expect("HEAD blob");
        if exists.status().is_success() {
            return digest;
        }
        let started = self
            .request(
                reqwest::Method::POST,
                &format!("{}/v2/{repo}/blobs/uploads/", self.base),
            )
            .send()
            .await
            .expect("start upload");
        assert_eq!(started.status().as_u16(), 202, "start upload");
        let location = started
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .expect("upload location")
            .to_owned();
        let mut url = reqwest::Url::parse(&self.base)
            .and_then(|base| base.join(&location))
            .expect("upload URL");
        url.query_pairs_mut().append_pair("digest", digest.as_str());
        let done = self
            .request(reqwest::Method::PUT, url.as_str())
            .header("Content-Type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .expect("PUT blob");
        assert_eq!(done.status().as_u16(), 201, "PUT blob {digest}");
        digest
    }

    /// PUTs manifest bytes under `reference` (a tag or digest).
    pub async fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) {
        let response = self
            .request(
                reqwest::Method::PUT,
                &format!("{}/v2/{repo}/manifests/{reference}", self.base),
            )
            .header("Content-Type", media_type)
            .body(bytes.to_vec())
            .send()
            .await
            .expect("PUT manifest");
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(
            status.as_u16(),
            201,
            "PUT manifest {repo}:{reference}: {body}"
        );
    }

    /// Pushes an image of random (incompressible) layers and a config naming its platform.
    pub async fn push_image(&self, repo: &str, tag: &str, spec: &ImageSpec) -> PushedImage {
        let mut layer_digests = Vec::new();
        let mut layers = Vec::new();
        for _ in 0..spec.layers {
            let bytes: Vec<u8> = std::iter::repeat_with(|| fastrand::u8(..))
                .take(spec.layer_size)
                .collect();
            let digest = self.push_blob(repo, &bytes).await;
            layers.push(
                json!({"mediaType": OCI_LAYER, "digest": digest.as_str(), "size": bytes.len()}),
            );
            layer_digests.push(digest);
        }
        let mut config = json!({
            "architecture": spec.platform.architecture,
            "os": spec.platform.os,
            "rootfs": {"type": "layers", "diff_ids": layer_digests.iter().map(Digest::as_str).collect::<Vec<_>>()},
            "config": {},
        });
        if let Some(variant) = &spec.platform.variant {
            config["variant"] = json!(variant);
        }
        let config_bytes = serde_json::to_vec(&config).expect("config JSON");
        let config_digest = self.push_blob(repo, &config_bytes).await;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest.as_str(), "size": config_bytes.len()},
            "layers": layers,
        });
        let bytes = serde_json::to_vec(&manifest).expect("manifest JSON");
        self.put_manifest(repo, tag, OCI_MANIFEST, &bytes).await;
        PushedImage {
            digest: Digest::sha256_of(&bytes),
            bytes,
            config_digest,
            layer_digests,
        }
    }

    /// Pushes one small image per platform (by digest) and an OCI index of them under `tag`.
    pub async fn push_index(&self, repo: &str, tag: &str, platforms: &[&str]) -> PushedIndex {
        let mut children = BTreeMap::new();
        let mut descriptors = Vec::new();
        for platform in platforms {
            let spec = ImageSpec::small(platform);
            let image = self
                .push_image(
                    repo,
                    &format!("child-{}", platform.replace('/', "-")),
                    &spec,
                )
                .await;
            let mut platform_json =
                json!({"os": spec.platform.os, "architecture": spec.platform.architecture});
            if let Some(variant) = &spec.platform.variant {
                platform_json["variant"] = json!(variant);
            }
            descriptors.push(json!({
                "mediaType": OCI_MANIFEST,
                "digest": image.digest.as_str(),
                "size": image.bytes.len(),
                "platform": platform_json,
            }));
            children.insert((*platform).to_owned(), image.digest);
        }
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors});
        let bytes = serde_json::to_vec(&index).expect("index JSON");
        self.put_manifest(repo, tag, OCI_INDEX, &bytes).await;
        PushedIndex {
            digest: Digest::sha256_of(&bytes),
            bytes,
            children,
        }
    }

    /// One image tagged many times: a single upload, then a manifest PUT per tag, 16 at a time.
    pub async fn push_many_tags(&self, repo: &str, tags: &[String]) -> PushedImage {
        let Some((first, rest)) = tags.split_first() else {
            panic!("push_many_tags needs at least one tag");
        };
        let image = self
            .push_image(repo, first, &ImageSpec::small("linux/amd64"))
            .await;
        futures_util::stream::iter(rest)
            .map(|tag| self.put_manifest(repo, tag, OCI_MANIFEST, &image.bytes))
            .buffer_unordered(16)
            .collect::<Vec<()>>()
            .await;
        image
    }

    /// A cosign-style signature of `signed`: an image manifest (a simplesigning payload and
    /// an empty config) under `sha256-<hex>.sig`. Returns the tag and the manifest's bytes.
    pub async fn push_cosign_signature(&self, repo: &str, signed: &Digest) -> (String, Vec<u8>) {
        let payload = serde_json::to_vec(
            &json!({"critical": {"image": {"docker-manifest-digest": signed.as_str()}}}),
        )
        .expect("payload");
        let payload_digest = self.push_blob(repo, &payload).await;
        let config = b"{}".to_vec();
        let config_digest = self.push_blob(repo, &config).await;
        let signature = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.as_str(), "size": config.len()},
            "layers": [{
                "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                "digest": payload_digest.as_str(), "size": payload.len(),
                "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQ..."},
            }],
        }))
        .expect("signature");
        let tag = format!("sha256-{}.sig", signed.hex());
        self.put_manifest(repo, &tag, OCI_MANIFEST, &signature)
            .await;
        (tag, signature)
    }
}

/// [`Pusher::push_blob`] on an anonymous registry.
pub async fn push_blob(host: &str, repo: &str, bytes: &[u8]) -> Digest {
    Pusher::new(host).push_blob(repo, bytes).await
}

/// [`Pusher::push_image`] on an anonymous registry.
pub async fn push_image(host: &str, repo: &str, tag: &str, spec: ImageSpec) -> PushedImage {
    Pusher::new(host).push_image(repo, tag, &spec).await
}

/// [`Pusher::push_index`] on an anonymous registry.
pub async fn push_index(host: &str, repo: &str, tag: &str, platforms: &[&str]) -> PushedIndex {
    Pusher::new(host).push_index(repo, tag, platforms).await
}

/// [`Pusher::push_many_tags`] on an anonymous registry.
pub async fn push_many_tags(host: &str, repo: &str, tags: &[String]) -> PushedImage {
    Pusher::new(host).push_many_tags(repo, tags).await
}

/// The manifest digest skopeo sees for `docker://HOST/REPO:TAG` (plain HTTP).
pub async fn skopeo_digest(host: &str, repo: &str, reference: &str) -> Digest {
    let separator = if reference.contains(':') { '@' } else { ':' };
    let output = tokio::process::Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--raw"])
        .arg(format!("docker://{host}/{repo}{separator}{reference}"))
        .output()
        .await
        .expect("run skopeo");
    assert!(
        output.status.success(),
        "skopeo failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Digest::sha256_of(&output.stdout)
}

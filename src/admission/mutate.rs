//! The pure core of the webhook: an `AdmissionReview` and a [`PinIndex`] in, the answer out.
//!
//! What happens to a Pod depends on its namespace's mode (`imagelock.yaml`, `admission:`):
//! - `rewrite`: every image a lock pins becomes `<mirror or source>@<digest>` (JSONPatch), and
//!   the Pod gets the [`REWRITTEN_ANNOTATION`]; anything else is left alone.
//! - `enforce`: the same, and a Pod with an image that is neither pinned nor given by digest
//!   is denied, the message naming each such container and image.
//! - `audit`: nothing changes; warnings say what would be rewritten or denied.
//! - `off`: nothing at all.
//!
//! Pods are judged on CREATE (every container) and on UPDATE (the containers whose image the
//! update changes, in `containers`, `initContainers` and `ephemeralContainers`: a new image on
//! a running Pod, an ephemeral container added by `kubectl debug`), each as on CREATE. An
//! UPDATE that changes no image is allowed untouched. Nothing here does I/O.

use std::collections::{BTreeMap, BTreeSet};

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use kube::core::DynamicObject;
use kube::core::admission::{
    AdmissionRequest, AdmissionResponse, AdmissionReview, META_API_VERSION_V1, META_KIND, Operation,
};
use serde_json::Value;

use super::index::{DEFAULT_TAG, Lookup, PinIndex};
use crate::manifest::AdmissionMode;
use crate::reference::ImageRef;

/// Pod annotation recording what was rewritten: a JSON object from container name to
/// `"<image before> -> <image after>"`, merged with what an earlier invocation recorded.
pub const REWRITTEN_ANNOTATION: &str = "imagelock.dev/rewritten";

/// Why a request body got no `AdmissionReview` answer (HTTP 400): without a request and its
/// `uid` there is nothing to answer to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    #[error("the body is not an AdmissionReview: {0}")]
    Invalid(String),
    #[error(
        "expected apiVersion {META_API_VERSION_V1} kind {META_KIND}, found apiVersion {api_version:?} kind {kind:?}"
    )]
    WrongType { api_version: String, kind: String },
    #[error("the AdmissionReview has no request")]
    NoRequest,
    #[error("the AdmissionReview request has no uid")]
    NoUid,
    #[error("cannot encode the response: {0}")]
    Encode(String),
}

impl ReviewError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            ReviewError::Invalid(_) => "invalid",
            ReviewError::WrongType { .. } => "wrong_type",
            ReviewError::NoRequest => "no_request",
            ReviewError::NoUid => "no_uid",
            ReviewError::Encode(_) => "encode",
        }
    }
}

/// The answer to a `POST /mutate` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The encoded `AdmissionReview` response.
    pub json: Vec<u8>,
    /// The admission mode of the request's namespace: what the answer was decided by.
    pub mode: AdmissionMode,
}

/// Answers the JSON body of a `POST /mutate`: the encoded `AdmissionReview` response and the
/// mode it was decided by, or why the body cannot be answered.
pub fn review_body(index: &PinIndex, body: &[u8]) -> Result<Answer, ReviewError> {
    let incoming: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(|e| ReviewError::Invalid(e.to_string()))?;
    if incoming.types.api_version != META_API_VERSION_V1 || incoming.types.kind != META_KIND {
        return Err(ReviewError::WrongType {
            api_version: incoming.types.api_version,
            kind: incoming.types.kind,
        });
    }
    let request: AdmissionRequest<DynamicObject> =
        incoming.try_into().map_err(|_| ReviewError::NoRequest)?;
    if request.uid.is_empty() {
        return Err(ReviewError::NoUid);
    }
    let mode = index.mode_for(namespace_of(&request));
    let mut response = review_in_mode(index, &request, mode);
    // kube serializes the patch bytes as a JSON array of numbers (kube-rs#1781); the API
    // documents `patch` as base64, like every `[]byte` in JSON. Write it that way.
    let patch = response.patch.take();
    let mut encoded = serde_json::to_value(response.into_review())
        .map_err(|e| ReviewError::Encode(e.to_string()))?;
    if let (Some(patch), Some(fields)) = (patch, encoded["response"].as_object_mut()) {
        let base64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, patch);
        fields.insert("patch".into(), serde_json::Value::String(base64));
    }
    let json = serde_json::to_vec(&encoded).map_err(|e| ReviewError::Encode(e.to_string()))?;
    Ok(Answer { json, mode })
}

/// The namespace of the request: the API server's field, else the object's own.
fn namespace_of(request: &AdmissionRequest<DynamicObject>) -> &str {
    request
        .namespace
        .as_deref()
        .or_else(|| {
            let object = request.object.as_ref()?;
            object.metadata.namespace.as_deref()
        })
        .unwrap_or_default()
}

/// The answer to one admission request.
pub fn review(index: &PinIndex, request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    review_in_mode(index, request, index.mode_for(namespace_of(request)))
}

/// [`review`] with the namespace's mode already looked up.
fn review_in_mode(
    index: &PinIndex,
    request: &AdmissionRequest<DynamicObject>,
    mode: AdmissionMode,
) -> AdmissionResponse {
    let allowed = AdmissionResponse::from(request);
    if !request.kind.group.is_empty() || request.kind.kind != "Pod" {
        return warn(
            allowed,
            vec![format!(
                "imagelock: only Pods are handled; this {} passed unchanged",
                gvk_text(request)
            )],
        );
    }
    let object = request.object.as_ref();
    let namespace = namespace_of(request);
    if mode == AdmissionMode::Off {
        return allowed;
    }
    let creating = match request.operation {
        Operation::Create => true,
        Operation::Update => false,
        Operation::Delete | Operation::Connect => return allowed,
    };
    let Some(object) = object else {
        return malformed(allowed, mode, "the request has no object");
    };
    let containers = if creating {
        pod_containers(&object.data, None)
    } else {
        // Without the old Pod every image counts as changed.
        let old = request.old_object.as_ref().map(|old| &old.data);
        pod_containers(&object.data, Some(old.unwrap_or(&Value::Null)))
    };
    // The ephemeralcontainers subresource keeps only ephemeral container changes: an
    // annotation written there would be dropped.
    let annotate = creating || request.sub_resource.as_deref().is_none_or(str::is_empty);
    let containers = match containers {
        Ok(containers) => containers,
        Err(why) => return malformed(allowed, mode, &why),
    };
    let decisions: Vec<(Container<'_>, Verdict<'_>)> = containers
        .into_iter()
        .map(|c| {
            let verdict = resolve(index, namespace, c.image);
            (c, verdict)
        })
        .collect();
    answer(allowed, mode, namespace, annotate, object, &decisions)
}

/// One container of a Pod, with where it sits in the Pod.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Container<'a> {
    /// `containers`, `initContainers` or `ephemeralContainers`.
    list: &'static str,
    position: usize,
    name: &'a str,
    image: &'a str,
}

/// `container "web"`, `initContainer "init"`: how messages name a container.
impl std::fmt::Display for Container<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = self.list.strip_suffix('s').unwrap_or(self.list);
        write!(f, "{kind} {:?}", self.name)
    }
}

const LISTS: [&str; 3] = ["containers", "initContainers", "ephemeralContainers"];

/// The containers to look at: all of them, or (with the Pod before an UPDATE) those whose
/// image the update changes or that it adds. Containers without an image are skipped: the
/// API server rejects those itself.
fn pod_containers<'a>(
    pod: &'a Value,
    old: Option<&'a Value>,
) -> Result<Vec<Container<'a>>, String> {
    let Some(spec) = pod.get("spec").filter(|s| s.is_object()) else {
        return Err("the Pod has no spec".into());
    };
    // (list, name, image) of every container of the Pod before the update.
    let unchanged: BTreeSet<(&str, &str, &str)> = old
        .into_iter()
        .flat_map(|old| {
            LISTS.iter().flat_map(move |&list| {
                old.pointer(&format!("/spec/{list}"))
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(move |c| {
                        let name = c.get("name")?.as_str()?;
                        let image = c.get("image")?.as_str()?;
                        Some((list, name, image))
                    })
            })
        })
        .collect();
    let mut containers = Vec::new();
    for &list in &LISTS {
        let items = match spec.get(list) {
            None | Some(Value::Null) => continue,
            Some(Value::Array(items)) => items,
            Some(_) => return Err(format!("spec.{list} is not a list")),
        };
        for (position, item) in items.iter().enumerate() {
            let name = match item.get("name") {
                Some(Value::String(name)) => name.as_str(),
                _ => return Err(format!("spec.{list}[{position}] has no name")),
            };
            match item.get("image") {
                None | Some(Value::Null) => {}
                Some(Value::String(image)) if unchanged.contains(&(list, name, image.as_str())) => {
                }
                Some(Value::String(image)) => containers.push(Container {
                    list,
                    position,
                    name,
                    image,
                }),
                Some(_) => return Err(format!("spec.{list}[{position}].image is not a string")),
            }
        }
    }
    Ok(containers)
}

/// What to do with one image.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict<'i> {
    /// A lock pins it: run this instead.
    Rewrite(&'i str),
    /// Already what it should be: pinned, or given by digest.
    Keep,
    /// No lock pins it.
    Unpinned,
    /// It names an alias that cannot be resolved, or it is not a valid reference.
    Problem(String),
}

/// Resolves the image of a container of a Pod in `namespace`. An alias of the namespace
/// comes first (`web`, `web:1.4`), then the source and tag (`quay.io/company/web:latest`, also
/// with `@sha256:`; `nginx` is `docker.io/library/nginx:latest`).
fn resolve<'i>(index: &'i PinIndex, namespace: &str, image: &str) -> Verdict<'i> {
    if let Some(verdict) = resolve_alias(index, namespace, image) {
        return verdict;
    }
    let reference = match ImageRef::parse(image) {
        Ok(reference) => reference,
        Err(e) => return Verdict::Problem(e.to_string()),
    };
    let tag = match (&reference.tag, &reference.digest) {
        (Some(tag), _) => tag.as_str(),
        // By digest only: already pinned.
        (None, Some(_)) => return Verdict::Keep,
        (None, None) => DEFAULT_TAG,
    };
    match index.source(namespace, &reference.repo, tag) {
        Lookup::Pinned(target) if target == image => Verdict::Keep,
        Lookup::Pinned(target) => Verdict::Rewrite(target),
        _ if reference.digest.is_some() => Verdict::Keep,
        _ => Verdict::Unpinned,
    }
}

/// `name[:tag][@digest]` without a `/`, where `name` is an alias of `namespace`. A digest next
/// to an alias is ignored: the lock decides.
fn resolve_alias<'i>(index: &'i PinIndex, namespace: &str, image: &str) -> Option<Verdict<'i>> {
    if image.contains('/') {
        return None;
    }
    let without_digest = image.split_once('@').map_or(image, |(rest, _)| rest);
    let (alias, tag) = match without_digest.split_once(':') {
        Some((alias, tag)) => (alias, Some(tag)),
        None => (without_digest, None),
    };
    Some(match index.alias(namespace, alias, tag)? {
        Lookup::Pinned(target) => Verdict::Rewrite(target),
        Lookup::UnpinnedAliasTag { alias_tag, tags } => Verdict::Problem(format!(
            "alias {alias} has no pinned tag {}; pinned: {}",
            tag.or(alias_tag).unwrap_or("yet"),
            if tags.is_empty() {
                "none yet".to_owned()
            } else {
                tags.join(", ")
            }
        )),
        Lookup::Unpinned => Verdict::Unpinned,
    })
}

/// Turns the verdicts into the response the namespace's mode calls for.
fn answer(
    allowed: AdmissionResponse,
    mode: AdmissionMode,
    namespace: &str,
    annotate: bool,
    object: &DynamicObject,
    decisions: &[(Container<'_>, Verdict<'_>)],
) -> AdmissionResponse {
    let mut warnings = Vec::new();
    let mut refused = Vec::new();
    for (container, verdict) in decisions {
        // Formatted only when a message is written.
        let who = container;
        let image = container.image;
        match (verdict, mode) {
            (Verdict::Rewrite(target), AdmissionMode::Audit) => warnings.push(format!(
                "imagelock audit: {who} image {image:?} would be rewritten to {target:?}"
            )),
            (Verdict::Unpinned, AdmissionMode::Audit) => warnings.push(format!(
                "imagelock audit: {who} image {image:?} is not pinned by a lock; enforce mode would deny this Pod"
            )),
            (Verdict::Problem(why), AdmissionMode::Audit) => warnings.push(format!(
                "imagelock audit: {who} image {image:?}: {why}; enforce mode would deny this Pod"
            )),
            (Verdict::Unpinned, AdmissionMode::Enforce) => {
                refused.push(format!("{who} image {image:?} is not pinned by a lock"));
            }
            (Verdict::Problem(why), AdmissionMode::Enforce) => {
                refused.push(format!("{who} image {image:?}: {why}"));
            }
            (Verdict::Problem(why), _) => warnings.push(format!(
                "imagelock: {who} image {image:?} left unchanged: {why}"
            )),
            _ => {}
        }
    }
    if !refused.is_empty() {
        return deny(
            allowed,
            format!(
                "imagelock: namespace {namespace:?} admits only images pinned by a lock or given by digest (enforce mode): {}",
                refused.join("; ")
            ),
        );
    }
    let rewrites: Vec<(&Container<'_>, &str)> = decisions
        .iter()
        .filter_map(|(container, verdict)| match verdict {
            Verdict::Rewrite(target) if mode != AdmissionMode::Audit => Some((container, *target)),
            _ => None,
        })
        .collect();
    let response = warn(allowed, warnings);
    if rewrites.is_empty() {
        return response;
    }
    let mut operations: Vec<PatchOperation> = rewrites
        .iter()
        .map(|(container, target)| {
            PatchOperation::Replace(ReplaceOperation {
                path: PointerBuf::from_tokens([
                    "spec",
                    container.list,
                    &container.position.to_string(),
                    "image",
                ]),
                value: Value::String((*target).to_owned()),
            })
        })
        .collect();
    if annotate {
        operations.push(annotation(object, &rewrites));
    }
    match response.clone().with_patch(Patch(operations)) {
        Ok(patched) => patched,
        Err(e) => warn(
            response,
            vec![format!("imagelock: images left unchanged: {e}")],
        ),
    }
}

/// The operation that sets [`REWRITTEN_ANNOTATION`], keeping what an earlier invocation of
/// the webhook (reinvocation) recorded for other containers.
fn annotation(object: &DynamicObject, rewrites: &[(&Container<'_>, &str)]) -> PatchOperation {
    let annotations = object.metadata.annotations.as_ref();
    let mut recorded: BTreeMap<String, String> = annotations
        .and_then(|a| a.get(REWRITTEN_ANNOTATION))
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    for (container, target) in rewrites {
        recorded.insert(
            container.name.to_owned(),
            format!("{} -> {target}", container.image),
        );
    }
    let text = Value::String(
        serde_json::Value::from_iter(recorded.into_iter().map(|(k, v)| (k, Value::String(v))))
            .to_string(),
    );
    if annotations.is_some() {
        PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["metadata", "annotations", REWRITTEN_ANNOTATION]),
            value: text,
        })
    } else {
        PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["metadata", "annotations"]),
            value: Value::Object(serde_json::Map::from_iter([(
                REWRITTEN_ANNOTATION.to_owned(),
                text,
            )])),
        })
    }
}

/// A Pod whose images cannot be read: denied in enforce mode (nothing can be checked),
/// admitted with a warning otherwise.
fn malformed(allowed: AdmissionResponse, mode: AdmissionMode, why: &str) -> AdmissionResponse {
    match mode {
        AdmissionMode::Enforce => deny(
            allowed,
            format!("imagelock: cannot check the Pod's images (enforce mode): {why}"),
        ),
        _ => warn(
            allowed,
            vec![format!("imagelock: Pod passed unchanged: {why}")],
        ),
    }
}

fn deny(response: AdmissionResponse, message: String) -> AdmissionResponse {
    let mut denied = response.deny(message);
    denied.result.code = 403;
    denied.result.reason = "Forbidden".into();
    denied
}

fn warn(mut response: AdmissionResponse, warnings: Vec<String>) -> AdmissionResponse {
    if !warnings.is_empty() {
        response
            .warnings
            .get_or_insert_with(Vec::new)
            .extend(warnings);
    }
    response
}

fn gvk_text(request: &AdmissionRequest<DynamicObject>) -> String {
    let kind = &request.kind;
    if kind.group.is_empty() {
        format!("{}/{}", kind.version, kind.kind)
    } else {
        format!("{}/{} {}", kind.group, kind.version, kind.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::index::tests::{mk_digest, mk_index, mk_lock};
    use crate::manifest::AdmissionSettings;
    use serde_json::json;

    fn mk_settings(
        default: AdmissionMode,
        namespaces: &[(&str, AdmissionMode)],
    ) -> AdmissionSettings {
        AdmissionSettings {
            default,
            namespaces: namespaces
                .iter()
                .map(|(ns, mode)| ((*ns).to_owned(), *mode))
                .collect(),
        }
    }

    fn mk_pins(settings: AdmissionSettings) -> PinIndex {
        mk_index(
            settings,
            &[(
                "images/team-a/web.yaml",
                "team-a",
                mk_lock(&[
                    (
                        "web",
                        "quay.io/company/web",
                        Some("registry.internal/team-a/web"),
                        &[("latest", "web-latest"), ("1.4", "web-1.4")],
                    ),
                    (
                        "nginx",
                        "docker.io/library/nginx",
                        None,
                        &[("1.25", "nginx-1.25")],
                    ),
                    // Follows `latest`, which is not pinned yet: `api` alone means nothing.
                    (
                        "api",
                        "quay.io/company/api",
                        None,
                        &[("latest", ""), ("v1", "v1"), ("v2", "v2")],
                    ),
                ]),
            )],
        )
    }

    fn web(seed: &str) -> String {
        format!("registry.internal/team-a/web@{}", mk_digest(seed))
    }

    fn nginx() -> String {
        format!("docker.io/library/nginx@{}", mk_digest("nginx-1.25"))
    }

    fn mk_pod(namespace: &str, spec: Value) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "namespace": namespace},
            "spec": spec,
        })
    }

    fn mk_request(operation: &str, namespace: &str, object: Value, old: Option<Value>) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "0c9a8d74-9cb7-44dd-b98e-09fd62def2f4",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": namespace,
                "operation": operation,
                "userInfo": {"username": "someone"},
                "object": object,
                "oldObject": old,
            }
        })
    }

    /// The response part of the answer, and the Pod with the patch applied.
    fn run(index: &PinIndex, request: &Value) -> (Value, Value) {
        let answer = review_body(index, request.to_string().as_bytes()).unwrap();
        let namespace = request["request"]["namespace"].as_str().unwrap_or_default();
        assert_eq!(answer.mode, index.mode_for(namespace));
        let review: Value = serde_json::from_slice(&answer.json).unwrap();
        assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(review["kind"], "AdmissionReview");
        let response = review["response"].clone();
        assert_eq!(response["uid"], request["request"]["uid"]);
        let mut pod = request["request"]["object"].clone();
        if let Some(patch) = response.get("patch") {
            assert_eq!(response["patchType"], "JSONPatch");
            let bytes = base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                patch.as_str().expect("the patch is a base64 string"),
            )
            .unwrap();
            let patch: Patch = serde_json::from_slice(&bytes).unwrap();
            json_patch::patch(&mut pod, &patch).unwrap();
        }
        (response, pod)
    }

    fn rewritten(pod: &Value) -> Value {
        serde_json::from_str(
            pod["metadata"]["annotations"][REWRITTEN_ANNOTATION]
                .as_str()
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn rewrites_aliases_and_pinned_sources() {
        let index = mk_pins(AdmissionSettings::default());
        let pod = mk_pod(
            "team-a",
            json!({
                "initContainers": [{"name": "init", "image": "web:1.4"}],
                "containers": [
                    {"name": "web", "image": "web"},
                    {"name": "by-source", "image": "quay.io/company/web:latest"},
                    {"name": "with-digest", "image": format!("quay.io/company/web:1.4@{}", mk_digest("old"))},
                    {"name": "hub", "image": "nginx:1.25"},
                    {"name": "other", "image": "busybox"},
                    {"name": "digest", "image": format!("busybox@{}", mk_digest("bb"))},
                ],
                "ephemeralContainers": [{"name": "debug", "image": "quay.io/company/web"}],
            }),
        );
        let (response, pod) = run(&index, &mk_request("CREATE", "team-a", pod, None));
        assert_eq!(response["allowed"], true);
        assert!(response.get("warnings").is_none(), "{response}");
        let images: Vec<&str> = pod["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["image"].as_str().unwrap())
            .collect();
        // `nginx` is an alias of team-a; `nginx:1.25` has a `/`-less name too but its tag
        // is pinned for the alias, so both routes agree.
        assert_eq!(
            images,
            [
                web("web-latest").as_str(),
                web("web-latest").as_str(),
                web("web-1.4").as_str(),
                nginx().as_str(),
                "busybox",
                format!("busybox@{}", mk_digest("bb")).as_str(),
            ]
        );
        assert_eq!(pod["spec"]["initContainers"][0]["image"], web("web-1.4"));
        assert_eq!(
            pod["spec"]["ephemeralContainers"][0]["image"],
            web("web-latest")
        );
        let recorded = rewritten(&pod);
        assert_eq!(recorded["web"], format!("web -> {}", web("web-latest")));
        assert_eq!(recorded["init"], format!("web:1.4 -> {}", web("web-1.4")));
        assert_eq!(recorded.as_object().unwrap().len(), 6, "{recorded}");
    }

    #[test]
    fn a_second_invocation_changes_nothing_and_keeps_the_record() {
        let index = mk_pins(AdmissionSettings::default());
        let pod = mk_pod(
            "team-a",
            json!({"containers": [{"name": "web", "image": "web"}]}),
        );
        let (_, once) = run(&index, &mk_request("CREATE", "team-a", pod, None));
        let (response, twice) = run(&index, &mk_request("CREATE", "team-a", once.clone(), None));
        assert!(response.get("patch").is_none(), "{response}");
        assert_eq!(once, twice);

        // A sidecar added by another webhook between the two invocations: recorded beside.
        let mut with_sidecar = once.clone();
        with_sidecar["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "proxy", "image": "nginx"}));
        let (_, patched) = run(&index, &mk_request("CREATE", "team-a", with_sidecar, None));
        let recorded = rewritten(&patched);
        assert_eq!(recorded.as_object().unwrap().len(), 2, "{recorded}");
        assert_eq!(recorded["proxy"], format!("nginx -> {}", nginx()));
    }

    #[test]
    fn existing_annotations_are_kept() {
        let index = mk_pins(AdmissionSettings::default());
        let mut pod = mk_pod(
            "team-a",
            json!({"containers": [{"name": "web", "image": "web"}]}),
        );
        pod["metadata"]["annotations"] = json!({"owner": "team-a"});
        let (_, pod) = run(&index, &mk_request("CREATE", "team-a", pod, None));
        assert_eq!(pod["metadata"]["annotations"]["owner"], "team-a");
        assert!(rewritten(&pod)["web"].is_string());
    }

    #[test]
    fn aliases_belong_to_their_namespace() {
        let index = mk_pins(AdmissionSettings::default());
        let pod = mk_pod(
            "team-b",
            json!({"containers": [
                {"name": "web", "image": "web"},
                {"name": "src", "image": "quay.io/company/web:1.4"},
            ]}),
        );
        let (response, pod) = run(&index, &mk_request("CREATE", "team-b", pod, None));
        assert_eq!(response["allowed"], true);
        // `web` in team-b is Docker Hub's library/web, which no lock pins.
        assert_eq!(pod["spec"]["containers"][0]["image"], "web");
        // team-a's pin of the source and tag is team-a's: team-b declares none and nothing
        // is shared, so the image is left as it is.
        assert_eq!(
            pod["spec"]["containers"][1]["image"],
            "quay.io/company/web:1.4"
        );
    }

    #[test]
    fn another_namespaces_pin_is_denied_in_enforce() {
        let index = mk_pins(mk_settings(AdmissionMode::Enforce, &[]));
        let pod = mk_pod(
            "team-b",
            json!({"containers": [{"name": "src", "image": "quay.io/company/web:1.4"}]}),
        );
        let (response, _) = run(&index, &mk_request("CREATE", "team-b", pod, None));
        assert_eq!(response["allowed"], false);
        let message = response["status"]["message"].as_str().unwrap();
        assert!(
            message.contains("image \"quay.io/company/web:1.4\" is not pinned by a lock"),
            "{message}"
        );
    }

    #[test]
    fn enforce_denies_unpinned_images_and_names_each() {
        let index = mk_pins(mk_settings(
            AdmissionMode::Rewrite,
            &[("team-a", AdmissionMode::Enforce)],
        ));
        let pod = mk_pod(
            "team-a",
            json!({
                "initContainers": [{"name": "init", "image": "busybox:1.36"}],
                "containers": [
                    {"name": "web", "image": "web"},
                    {"name": "api", "image": "api"},
                    {"name": "ok", "image": format!("alpine@{}", mk_digest("alpine"))},
                    {"name": "bad", "image": "Not A Ref"},
                ],
            }),
        );
        let (response, pod_after) = run(&index, &mk_request("CREATE", "team-a", pod.clone(), None));
        assert_eq!(response["allowed"], false);
        assert_eq!(response["status"]["code"], 403);
        let message = response["status"]["message"].as_str().unwrap();
        assert!(message.contains("namespace \"team-a\""), "{message}");
        assert!(
            message
                .contains("initContainer \"init\" image \"busybox:1.36\" is not pinned by a lock"),
            "{message}"
        );
        assert!(
            message.contains("container \"api\" image \"api\": alias api has no pinned tag latest; pinned: v1, v2"),
            "{message}"
        );
        assert!(
            message.contains("container \"bad\" image \"Not A Ref\""),
            "{message}"
        );
        assert!(!message.contains("\"web\""), "{message}");
        assert!(!message.contains("\"ok\""), "{message}");
        assert_eq!(pod_after, pod, "a denied Pod is not patched");

        // Pinned or by digest only: admitted, and rewritten.
        let pod = mk_pod(
            "team-a",
            json!({"containers": [
                {"name": "web", "image": "web"},
                {"name": "ok", "image": format!("alpine@{}", mk_digest("alpine"))},
            ]}),
        );
        let (response, pod) = run(&index, &mk_request("CREATE", "team-a", pod, None));
        assert_eq!(response["allowed"], true);
        assert_eq!(pod["spec"]["containers"][0]["image"], web("web-latest"));
    }

    #[test]
    fn audit_only_warns() {
        let index = mk_pins(mk_settings(AdmissionMode::Audit, &[]));
        let pod = mk_pod(
            "team-a",
            json!({"containers": [
                {"name": "web", "image": "web"},
                {"name": "other", "image": "busybox"},
                {"name": "api", "image": "api:v3"},
            ]}),
        );
        let (response, after) = run(&index, &mk_request("CREATE", "team-a", pod.clone(), None));
        assert_eq!(response["allowed"], true);
        assert!(response.get("patch").is_none());
        assert_eq!(after, pod);
        let warnings: Vec<&str> = response["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap())
            .collect();
        assert_eq!(
            warnings,
            [
                format!(
                    "imagelock audit: container \"web\" image \"web\" would be rewritten to {:?}",
                    web("web-latest")
                )
                .as_str(),
                "imagelock audit: container \"other\" image \"busybox\" is not pinned by a lock; enforce mode would deny this Pod",
                "imagelock audit: container \"api\" image \"api:v3\": alias api has no pinned tag v3; pinned: v1, v2; enforce mode would deny this Pod",
            ]
        );
    }

    #[test]
    fn rewrite_mode_warns_about_aliases_it_cannot_resolve() {
        let index = mk_pins(AdmissionSettings::default());
        let pod = mk_pod(
            "team-a",
            json!({"containers": [{"name": "api", "image": "api"}]}),
        );
        let (response, after) = run(&index, &mk_request("CREATE", "team-a", pod.clone(), None));
        assert_eq!(response["allowed"], true);
        assert_eq!(after, pod);
        assert_eq!(
            response["warnings"][0],
            "imagelock: container \"api\" image \"api\" left unchanged: alias api has no pinned tag latest; pinned: v1, v2"
        );
    }

    #[test]
    fn off_does_nothing() {
        let index = mk_pins(mk_settings(AdmissionMode::Off, &[]));
        let pod = mk_pod(
            "team-a",
            json!({"containers": [{"name": "web", "image": "web"}]}),
        );
        let (response, after) = run(&index, &mk_request("CREATE", "team-a", pod.clone(), None));
        assert_eq!(response["allowed"], true);
        assert!(response.get("warnings").is_none());
        assert_eq!(after, pod);
    }

    #[test]
    fn update_rewrites_only_added_ephemeral_containers() {
        let index = mk_pins(AdmissionSettings::default());
        let old = mk_pod(
            "team-a",
            json!({
                "containers": [{"name": "web", "image": "web"}],
                "ephemeralContainers": [{"name": "debug-1", "image": "nginx"}],
            }),
        );
        let new = mk_pod(
            "team-a",
            json!({
                "containers": [{"name": "web", "image": "web"}],
                "ephemeralContainers": [
                    {"name": "debug-1", "image": "nginx"},
                    {"name": "debug-2", "image": "nginx:1.25"},
                ],
            }),
        );
        let mut request = mk_request("UPDATE", "team-a", new, Some(old));
        request["request"]["subResource"] = json!("ephemeralcontainers");
        let (response, after) = run(&index, &request);
        assert_eq!(response["allowed"], true);
        assert_eq!(after["spec"]["containers"][0]["image"], "web");
        assert_eq!(after["spec"]["ephemeralContainers"][0]["image"], "nginx");
        assert_eq!(after["spec"]["ephemeralContainers"][1]["image"], nginx());
        assert!(after["metadata"].get("annotations").is_none());

        // In enforce mode an unpinned debug image is refused; existing containers are not
        // looked at again.
        let index = mk_pins(mk_settings(AdmissionMode::Enforce, &[]));
        let old = mk_pod(
            "team-a",
            json!({"containers": [{"name": "app", "image": "busybox"}]}),
        );
        let mut new = old.clone();
        new["spec"]["ephemeralContainers"] = json!([{"name": "dbg", "image": "busybox"}]);
        let (response, _) = run(
            &index,
            &mk_request("UPDATE", "team-a", new, Some(old.clone())),
        );
        assert_eq!(response["allowed"], false);
        let message = response["status"]["message"].as_str().unwrap();
        assert!(message.contains("ephemeralContainer \"dbg\""), "{message}");
        assert!(!message.contains("\"app\""), "{message}");
        let (response, _) = run(
            &index,
            &mk_request("UPDATE", "team-a", old.clone(), Some(old)),
        );
        assert_eq!(response["allowed"], true);
    }

    #[test]
    fn update_judges_changed_images_as_create_does() {
        let index = mk_pins(AdmissionSettings::default());
        let old = |ns: &str| {
            mk_pod(
                ns,
                json!({
                    "initContainers": [{"name": "init", "image": "busybox"}],
                    "containers": [
                        {"name": "web", "image": web("web-latest")},
                        {"name": "legacy", "image": "busybox:1.36"},
                    ],
                }),
            )
        };
        // rewrite: the changed image is pinned and recorded; the others stay as they are.
        let mut new = old("team-a");
        new["spec"]["containers"][0]["image"] = json!("web:1.4");
        let (response, after) = run(
            &index,
            &mk_request("UPDATE", "team-a", new, Some(old("team-a"))),
        );
        assert_eq!(response["allowed"], true);
        assert!(response.get("warnings").is_none(), "{response}");
        assert_eq!(after["spec"]["containers"][0]["image"], web("web-1.4"));
        assert_eq!(after["spec"]["containers"][1]["image"], "busybox:1.36");
        assert_eq!(after["spec"]["initContainers"][0]["image"], "busybox");
        assert_eq!(
            rewritten(&after)["web"],
            format!("web:1.4 -> {}", web("web-1.4"))
        );

        // enforce: an unpinned new image is denied, naming only that container. (team-a's own
        // pins: another namespace's are never used.)
        let index = mk_pins(mk_settings(AdmissionMode::Enforce, &[]));
        for (list, position, image) in [
            ("containers", 0, "busybox:latest"),
            ("containers", 1, "busybox:1.37"),
            ("initContainers", 0, "alpine"),
        ] {
            let mut new = old("team-a");
            new["spec"][list][position]["image"] = json!(image);
            let (response, after) = run(
                &index,
                &mk_request("UPDATE", "team-a", new.clone(), Some(old("team-a"))),
            );
            assert_eq!(response["allowed"], false, "{list}: {response}");
            let message = response["status"]["message"].as_str().unwrap();
            assert!(message.contains(&format!("{image:?}")), "{message}");
            assert!(
                !message.contains("\"legacy\" image \"busybox:1.36\""),
                "{message}"
            );
            assert_eq!(after, new, "a denied update is not patched");
        }
        // enforce: a pinned new image is rewritten; a digest is kept.
        let mut new = old("team-a");
        new["spec"]["containers"][1]["image"] = json!("nginx:1.25");
        new["spec"]["initContainers"][0]["image"] = json!(format!("busybox@{}", mk_digest("bb")));
        let (response, after) = run(
            &index,
            &mk_request("UPDATE", "team-a", new, Some(old("team-a"))),
        );
        assert_eq!(response["allowed"], true, "{response}");
        assert_eq!(after["spec"]["containers"][1]["image"], nginx());

        // An update that changes no image passes untouched, even with unpinned images in it.
        let mut relabelled = old("team-a");
        relabelled["metadata"]["labels"] = json!({"tier": "web"});
        let (response, after) = run(
            &index,
            &mk_request("UPDATE", "team-a", relabelled.clone(), Some(old("team-a"))),
        );
        assert_eq!(response["allowed"], true);
        assert!(response.get("patch").is_none() && response.get("warnings").is_none());
        assert_eq!(after, relabelled);

        // Without the old Pod, every image counts as changed.
        let (response, _) = run(&index, &mk_request("UPDATE", "team-a", old("team-a"), None));
        assert_eq!(response["allowed"], false);
    }

    #[test]
    fn other_kinds_and_operations_pass_with_a_warning() {
        let index = mk_pins(mk_settings(AdmissionMode::Enforce, &[]));
        let mut request = mk_request(
            "CREATE",
            "team-a",
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {}}),
            None,
        );
        request["request"]["kind"] =
            json!({"group": "apps", "version": "v1", "kind": "Deployment"});
        let (response, _) = run(&index, &request);
        assert_eq!(response["allowed"], true);
        assert_eq!(
            response["warnings"][0],
            "imagelock: only Pods are handled; this apps/v1 Deployment passed unchanged"
        );
        let pod = mk_pod(
            "team-a",
            json!({"containers": [{"name": "x", "image": "busybox"}]}),
        );
        let (response, _) = run(
            &index,
            &mk_request("DELETE", "team-a", Value::Null, Some(pod)),
        );
        assert_eq!(response["allowed"], true);
    }

    #[test]
    fn malformed_pods_follow_the_mode() {
        let cases = [
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}),
            mk_pod("team-a", json!({"containers": {"name": "x"}})),
            mk_pod("team-a", json!({"containers": [{"image": "busybox"}]})),
            mk_pod("team-a", json!({"containers": [{"name": "x", "image": 7}]})),
        ];
        for pod in cases {
            let enforce = mk_pins(mk_settings(AdmissionMode::Enforce, &[]));
            let (response, _) = run(&enforce, &mk_request("CREATE", "team-a", pod.clone(), None));
            assert_eq!(response["allowed"], false, "{pod}");
            let rewrite = mk_pins(AdmissionSettings::default());
            let (response, _) = run(&rewrite, &mk_request("CREATE", "team-a", pod.clone(), None));
            assert_eq!(response["allowed"], true, "{pod}");
            assert!(
                response["warnings"][0]
                    .as_str()
                    .unwrap()
                    .starts_with("imagelock: Pod passed unchanged: "),
                "{response}"
            );
        }
        let enforce = mk_pins(mk_settings(AdmissionMode::Enforce, &[]));
        let (response, _) = run(&enforce, &mk_request("CREATE", "team-a", Value::Null, None));
        assert_eq!(response["allowed"], false);
    }

    #[test]
    fn the_answer_names_the_mode_of_the_requests_namespace() {
        let index = mk_pins(mk_settings(
            AdmissionMode::Rewrite,
            &[
                ("team-a", AdmissionMode::Audit),
                ("team-b", AdmissionMode::Off),
            ],
        ));
        let mode = |request: &Value| {
            review_body(&index, request.to_string().as_bytes())
                .unwrap()
                .mode
        };
        let pod = |ns: &str| mk_pod(ns, json!({"containers": []}));
        assert_eq!(
            mode(&mk_request("CREATE", "team-a", pod("team-a"), None)),
            AdmissionMode::Audit
        );
        assert_eq!(
            mode(&mk_request("CREATE", "team-b", pod("team-b"), None)),
            AdmissionMode::Off
        );
        assert_eq!(
            mode(&mk_request("CREATE", "team-c", pod("team-c"), None)),
            AdmissionMode::Rewrite
        );
        // Without the API server's field, the object's own namespace.
        let mut request = mk_request("CREATE", "team-a", pod("team-a"), None);
        request["request"]
            .as_object_mut()
            .unwrap()
            .remove("namespace");
        assert_eq!(mode(&request), AdmissionMode::Audit);
    }

    #[test]
    fn bodies_that_cannot_be_answered() {
        let index = mk_pins(AdmissionSettings::default());
        let err = |body: &str| review_body(&index, body.as_bytes()).unwrap_err();
        assert!(matches!(err("not json"), ReviewError::Invalid(_)));
        assert!(matches!(err("{\"apiVersion\": "), ReviewError::Invalid(_)));
        assert!(matches!(err("[]"), ReviewError::Invalid(_)));
        let pod = mk_pod("team-a", json!({"containers": []}));
        let mut request = mk_request("CREATE", "team-a", pod, None);
        request["apiVersion"] = json!("admission.k8s.io/v1beta1");
        assert_eq!(
            err(&request.to_string()),
            ReviewError::WrongType {
                api_version: "admission.k8s.io/v1beta1".into(),
                kind: "AdmissionReview".into()
            }
        );
        request["apiVersion"] = json!("admission.k8s.io/v1");
        request["request"]["uid"] = json!("");
        assert_eq!(err(&request.to_string()), ReviewError::NoUid);
        assert_eq!(
            err(r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#),
            ReviewError::NoRequest
        );
        assert_eq!(ReviewError::NoUid.metric_label(), "no_uid");
    }
}

//! `FakeApiServer`: an in-memory Kubernetes API server for Leases, reached through
//! `kube::Client::new(service, ns)` rather than a socket.
//!
//! It answers as a real one does where leader election depends on it: every write gets a new
//! `resourceVersion`; GET of a missing Lease is 404; a second create is 409 AlreadyExists; a
//! replace carrying a stale `resourceVersion` is 409 Conflict. Each client can be given a
//! [`Link`] whose faults (errors, silence, delays) the test changes while it runs.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::{Method, Request, Response};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/";

/// What a [`Link`] does to the requests through it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinkFault {
    #[default]
    Healthy,
    /// Answer 500 without reaching the server.
    Fail,
    /// Never answer, never reach the server.
    Silent,
    /// Reach the server after this long, then answer. The request lands even if the client
    /// gave up on it meanwhile, as one already on the wire does.
    Delay(Duration),
}

/// One client's way to the server.
#[derive(Debug, Clone, Default)]
pub struct Link(Arc<Mutex<LinkFault>>);

impl Link {
    pub fn set(&self, fault: LinkFault) {
        *self.0.lock().expect("link") = fault;
    }

    fn get(&self) -> LinkFault {
        *self.0.lock().expect("link")
    }
}

#[derive(Debug, Default)]
struct State {
    /// By namespace and name.
    leases: BTreeMap<(String, String), Lease>,
    last_version: u64,
}

/// The server; clones share it.
#[derive(Debug, Clone)]
pub struct FakeApiServer {
    state: Arc<Mutex<State>>,
    /// Bumped on every successful write.
    writes: watch::Sender<u64>,
}

impl Default for FakeApiServer {
    fn default() -> Self {
        FakeApiServer {
            state: Arc::default(),
            writes: watch::channel(0).0,
        }
    }
}

impl FakeApiServer {
    /// A client over a healthy link, default namespace `default`.
    pub fn client(&self) -> kube::Client {
        self.client_through(Link::default())
    }

    /// A client whose requests go through `link`.
    pub fn client_through(&self, link: Link) -> kube::Client {
        let server = self.clone();
        let service = tower::service_fn(move |request: Request<Body>| {
            let server = server.clone();
            let link = link.clone();
            async move { Ok::<_, Infallible>(server.through(link.get(), request).await) }
        });
        kube::Client::new(service, "default")
    }

    /// The Lease `name` in `default`, as stored.
    pub fn lease(&self, name: &str) -> Option<Lease> {
        let state = self.state.lock().expect("state");
        state
            .leases
            .get(&("default".to_owned(), name.to_owned()))
            .cloned()
    }

    pub fn holder(&self, name: &str) -> Option<String> {
        self.lease(name)?.spec?.holder_identity
    }

    /// Writes the Lease `name` in `default` as `holder` renewing now, whatever is stored: how
    /// a test plays a replica that holds the Lease (or takes it by force).
    pub fn hold_as(&self, name: &str, holder: &str, duration_seconds: i32) {
        let now = MicroTime(Timestamp::now());
        let mut state = self.state.lock().expect("state");
        let key = ("default".to_owned(), name.to_owned());
        let previous = state.leases.get(&key).and_then(|l| l.spec.clone());
        let keeps = previous
            .as_ref()
            .is_some_and(|p| p.holder_identity.as_deref() == Some(holder));
        let spec = LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            lease_duration_seconds: Some(duration_seconds),
            acquire_time: previous
                .as_ref()
                .filter(|_| keeps)
                .and_then(|p| p.acquire_time.clone())
                .or_else(|| Some(now.clone())),
            renew_time: Some(now),
            lease_transitions: previous.as_ref().and_then(|p| p.lease_transitions),
            ..LeaseSpec::default()
        };
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
        };
        Self::store(&mut state, key, lease);
        drop(state);
        self.writes.send_modify(|n| *n += 1);
    }

    /// A receiver that changes on every write.
    pub fn writes(&self) -> watch::Receiver<u64> {
        self.writes.subscribe()
    }

    async fn through(&self, fault: LinkFault, request: Request<Body>) -> Response<Body> {
        match fault {
            LinkFault::Healthy => self.answer(request).await,
            LinkFault::Fail => status(500, "InternalError", "the link failed"),
            LinkFault::Silent => std::future::pending().await,
            LinkFault::Delay(delay) => {
                let (sender, receiver) = oneshot::channel();
                let server = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = sender.send(server.answer(request).await);
                });
                receiver
                    .await
                    .unwrap_or_else(|_| status(500, "InternalError", "delayed answer lost"))
            }
        }
    }

    async fn answer(&self, request: Request<Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let Some(rest) = parts.uri.path().strip_prefix(LEASES) else {
            return status(404, "NotFound", "only Leases are served here");
        };
        let (namespace, name) = match rest.split('/').collect::<Vec<_>>()[..] {
            [namespace, "leases"] => (namespace.to_owned(), None),
            [namespace, "leases", name] => (namespace.to_owned(), Some(name.to_owned())),
            _ => return status(404, "NotFound", "no such path"),
        };
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => return status(400, "BadRequest", &e.to_string()),
        };
        let sent = || serde_json::from_slice::<Lease>(&body);
        let mut state = self.state.lock().expect("state");
        match (&parts.method, name) {
            (&Method::GET, Some(name)) => match state.leases.get(&(namespace, name)) {
                Some(lease) => ok(lease),
                None => status(404, "NotFound", "leases not found"),
            },
            (&Method::POST, None) => {
                let Ok(lease) = sent() else {
                    return status(400, "BadRequest", "not a Lease");
                };
                let Some(name) = lease.metadata.name.clone() else {
                    return status(422, "Invalid", "metadata.name is required");
                };
                let key = (namespace, name);
                if state.leases.contains_key(&key) {
                    return status(409, "AlreadyExists", "leases already exists");
                }
                let stored = Self::store(&mut state, key, lease);
                self.writes.send_modify(|n| *n += 1);
                ok(&stored)
            }
            (&Method::PUT, Some(name)) => {
                let Ok(lease) = sent() else {
                    return status(400, "BadRequest", "not a Lease");
                };
                let key = (namespace, name);
                let Some(current) = state.leases.get(&key) else {
                    return status(404, "NotFound", "leases not found");
                };
                let based_on = lease.metadata.resource_version.as_deref();
                if based_on.is_some() && based_on != current.metadata.resource_version.as_deref() {
                    return status(
                        409,
                        "Conflict",
                        "the object has been modified; please apply your changes to the latest version and try again",
                    );
                }
                let stored = Self::store(&mut state, key, lease);
                self.writes.send_modify(|n| *n += 1);
                ok(&stored)
            }
            _ => status(405, "MethodNotAllowed", "not served here"),
        }
    }

    fn store(state: &mut State, (namespace, name): (String, String), mut lease: Lease) -> Lease {
        state.last_version += 1;
        lease.metadata.namespace = Some(namespace.clone());
        lease.metadata.name = Some(name.clone());
        lease.metadata.resource_version = Some(state.last_version.to_string());
        state.leases.insert((namespace, name), lease.clone());
        lease
    }
}

fn ok(lease: &Lease) -> Response<Body> {
    let mut value = serde_json::to_value(lease).expect("a Lease serializes");
    value["apiVersion"] = json!("coordination.k8s.io/v1");
    value["kind"] = json!("Lease");
    respond(200, &value)
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    respond(
        code,
        &json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": reason, "message": message, "code": code}),
    )
}

fn respond(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).expect("JSON")))
        .expect("a response")
}

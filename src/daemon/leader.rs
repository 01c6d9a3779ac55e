//! Leader election over a `coordination.k8s.io/v1` Lease, after client-go's `leaderelection`.
//!
//! Every replica serves admission; only the Lease holder resolves, mirrors and pushes. The
//! [`LeaseElector`] task keeps the Lease and publishes the outcome through a [`Leadership`]
//! handle that the writers consult.
//!
//! The safety argument, as in client-go:
//! - Others judge our Lease on their own clock: it expires `leaseDurationSeconds` after they
//!   last saw the record change, whatever `renewTime` says, so clock skew between nodes does
//!   not matter (only clock rates do).
//! - We call ourselves leader only until `renewDeadline` after *sending* the last write that
//!   succeeded. The write reached the API server after we sent it, and others saw it later
//!   still, so with `renewDeadline < leaseDuration` we have stopped before anyone may take
//!   over. The deadline is a timer of its own: a hanging API call cannot stretch it.
//! - Every write carries the `resourceVersion` it was based on: of two replicas racing for an
//!   expired Lease, the API server lets one win and answers the other 409 Conflict.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::status::LeaseStatus;

/// How the elector keeps its Lease. The defaults are client-go's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// The Lease object's name.
    pub name: String,
    /// This replica's `holderIdentity` (its Pod name).
    pub identity: String,
    /// How long others wait after the record last changed before they take over. Written to
    /// the Lease in whole seconds.
    pub lease_duration: Duration,
    /// How long the leader may go without a successful renewal before it stops writing.
    /// Shorter than `lease_duration`: the difference is the safety margin.
    pub renew_deadline: Duration,
    /// The pause between attempts, both to renew and to acquire.
    pub retry_period: Duration,
}

impl LeaseSettings {
    /// Settings with client-go's timings: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(name: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaseSettings {
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Checks the relations the safety argument needs.
    pub fn validate(&self) -> Result<(), String> {
        if self.identity.is_empty() {
            return Err("the holder identity (podName) is empty".into());
        }
        if self.lease_duration.subsec_nanos() != 0 || self.lease_duration.is_zero() {
            return Err(format!(
                "leaseDuration {:?} must be a whole number of seconds, at least 1s",
                self.lease_duration
            ));
        }
        if i32::try_from(self.lease_duration.as_secs()).is_err() {
            return Err(format!(
                "leaseDuration {:?} is too long",
                self.lease_duration
            ));
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return Err(format!(
                "leaseRetryPeriod ({:?}) must be more than 0s and less than leaseRenewDeadline ({:?})",
                self.retry_period, self.renew_deadline
            ));
        }
        if self.renew_deadline >= self.lease_duration {
            return Err(format!(
                "leaseRenewDeadline ({:?}) must be less than leaseDuration ({:?}): the leader must stop before others may take over",
                self.renew_deadline, self.lease_duration
            ));
        }
        Ok(())
    }

    /// The limit of one API call: two fit in the renew deadline.
    fn call_timeout(&self) -> Duration {
        self.renew_deadline / 2
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("Lease {lease}: {operation} got no answer within {after:?}")]
    Timeout {
        lease: String,
        operation: &'static str,
        after: Duration,
    },
    /// Someone wrote the Lease since we read it: they won.
    #[error(
        "Lease {lease}: {operation} lost a race (409 Conflict): another replica wrote it first"
    )]
    Conflict {
        lease: String,
        operation: &'static str,
    },
    #[error("Lease {lease}: {operation}: the Lease was deleted")]
    Deleted {
        lease: String,
        operation: &'static str,
    },
    #[error("Lease {lease}: {operation} failed: {source}")]
    Api {
        lease: String,
        operation: &'static str,
        #[source]
        source: kube::Error,
    },
}

impl LeaderError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            LeaderError::Timeout { .. } => "timeout",
            LeaderError::Conflict { .. } => "conflict",
            LeaderError::Deleted { .. } => "deleted",
            LeaderError::Api { .. } => "api",
        }
    }

    /// Whether a failed renewal means someone else changed the Lease. Other failures (a slow
    /// or failing API server) are retried until the renew deadline.
    fn is_lost(&self) -> bool {
        matches!(
            self,
            LeaderError::Conflict { .. } | LeaderError::Deleted { .. }
        )
    }
}

/// Who holds the Lease, as this replica last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderState {
    /// This replica holds the Lease and may write.
    pub leader: bool,
    /// The holder last seen; this replica's own identity while it leads.
    pub holder: Option<String>,
}

/// The Lease a replica competes for.
#[derive(Debug)]
struct Election {
    lease: String,
    namespace: String,
    identity: String,
}

/// What the writers consult: whether this replica may write now. Cheap to clone; every clone
/// sees the elector's latest word.
#[derive(Debug, Clone)]
pub struct Leadership {
    state: watch::Receiver<LeaderState>,
    /// `None` without election.
    election: Option<Arc<Election>>,
    /// Without election, keeps the channel open so [`Leadership::lost`] never resolves.
    _always: Option<Arc<watch::Sender<LeaderState>>>,
}

impl Leadership {
    /// No election: the only replica, always the leader.
    pub fn always() -> Self {
        let (sender, state) = watch::channel(LeaderState {
            leader: true,
            holder: None,
        });
        Leadership {
            state,
            election: None,
            _always: Some(Arc::new(sender)),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.state.borrow().leader
    }

    pub fn state(&self) -> LeaderState {
        self.state.borrow().clone()
    }

    /// Resolves at the next change of leadership or of the holder seen.
    pub async fn changed(&mut self) {
        if self.state.changed().await.is_err() {
            // Nothing changes any more.
            std::future::pending::<()>().await;
        }
    }

    /// Resolves once this replica is not (or no longer) the leader; at once if it is not now.
    pub async fn lost(&self) {
        self.wait_until(false).await;
    }

    /// Resolves once this replica is the leader; at once if it is now.
    pub async fn acquired(&self) {
        self.wait_until(true).await;
    }

    async fn wait_until(&self, leader: bool) {
        let mut state = self.state.clone();
        if state.wait_for(|s| s.leader == leader).await.is_err() {
            // The elector is gone, and with it its guard published "not leader" last.
            if leader {
                std::future::pending::<()>().await;
            }
        }
    }

    /// The election as `/status` shows it; `None` without election.
    pub fn lease_status(&self) -> Option<LeaseStatus> {
        let election = self.election.as_ref()?;
        Some(LeaseStatus {
            name: election.lease.clone(),
            namespace: election.namespace.clone(),
            identity: election.identity.clone(),
            holder: self.state.borrow().holder.clone(),
        })
    }
}

/// Publishes leadership and logs its changes. Dropped (the elector ended or panicked), it
/// publishes "not leader": a dead elector can never leave a writer running.
struct Publisher(watch::Sender<LeaderState>);

impl Publisher {
    fn publish(&self, next: LeaderState) {
        let previous = self.0.send_replace(next.clone());
        match (previous.leader, next.leader) {
            (false, true) => {
                tracing::info!("leadership acquired: this replica resolves, mirrors and pushes")
            }
            (true, false) => tracing::info!(
                holder = next.holder.as_deref().unwrap_or("-"),
                "leadership lost: this replica stops writing and only serves"
            ),
            (false, false) if previous.holder != next.holder => {
                if let Some(holder) = &next.holder {
                    tracing::info!(%holder, "the Lease is held by another replica; standing by");
                }
            }
            _ => {}
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.0.send_replace(LeaderState::default());
    }
}

/// The Lease record as last seen, and when it was first seen in that form (our clock).
#[derive(Debug)]
struct Observed {
    spec: LeaseSpec,
    at: Instant,
}

/// Competes for the Lease, keeps it while it can, releases it on stop.
pub struct LeaseElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    publisher: Publisher,
    observed: Option<Observed>,
    /// The Lease as we last wrote it while leading: the base of the next renewal, its
    /// `resourceVersion` the proof that nobody wrote since.
    held: Option<Lease>,
}

impl LeaseElector {
    /// An elector for `api`'s Lease `settings.name`, and the handle that follows it. Nothing
    /// happens before [`LeaseElector::run`].
    pub fn new(api: Api<Lease>, namespace: &str, settings: LeaseSettings) -> (Self, Leadership) {
        let (sender, state) = watch::channel(LeaderState::default());
        let leadership = Leadership {
            state,
            election: Some(Arc::new(Election {
                lease: settings.name.clone(),
                namespace: namespace.to_owned(),
                identity: settings.identity.clone(),
            })),
            _always: None,
        };
        let elector = LeaseElector {
            api,
            settings,
            publisher: Publisher(sender),
            observed: None,
            held: None,
        };
        (elector, leadership)
    }

    /// Acquires, renews, and after a loss competes again, until `stop`; then releases the
    /// Lease if it holds it. Stop this only after the writers stopped: until then a write in
    /// flight is still covered by the Lease.
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            let Some(acquired_at) = self.acquire(&stop).await else {
                return;
            };
            self.publisher.publish(LeaderState {
                leader: true,
                holder: Some(self.settings.identity.clone()),
            });
            let lost = self.keep(acquired_at, &stop).await;
            let Some(reason) = lost else {
                self.release().await;
                self.publisher.publish(LeaderState::default());
                return;
            };
            tracing::warn!(%reason, "leadership lost");
            self.held = None;
            let holder = self
                .observed
                .as_ref()
                .and_then(|o| o.spec.holder_identity.clone());
            self.publisher.publish(LeaderState {
                leader: false,
                holder: holder.filter(|h| *h != self.settings.identity),
            });
        }
    }

    /// Tries every retry period (with jitter, so replicas started together spread out) until
    /// the Lease is ours. Returns when the winning write was sent, or `None` on stop.
    async fn acquire(&mut self, stop: &CancellationToken) -> Option<Instant> {
        loop {
            let attempt = tokio::select! {
                _ = stop.cancelled() => return None,
                attempt = self.try_acquire() => attempt,
            };
            match attempt {
                Ok(Some(sent_at)) => return Some(sent_at),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot acquire the Lease; trying again"),
            }
            let pause = self
                .settings
                .retry_period
                .mul_f64(1.0 + fastrand::f64() * 0.2);
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Renews every retry period until stop (`None`) or a loss (its reason). A loss is
    /// immediate when someone else wrote the Lease, else when the renew deadline passes.
    async fn keep(&mut self, acquired_at: Instant, stop: &CancellationToken) -> Option<String> {
        let deadline = self.settings.renew_deadline;
        let retry = self.settings.retry_period;
        let mut valid_until = acquired_at + deadline;
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep_until(valid_until) => {
                    return Some(format!("no renewal succeeded within {deadline:?}"));
                }
                renewed = async {
                    tokio::time::sleep(retry).await;
                    self.renew().await
                } => match renewed {
                    Ok(sent_at) => valid_until = sent_at + deadline,
                    Err(e) if e.is_lost() => return Some(e.to_string()),
                    Err(e) => tracing::warn!(error = %e, "cannot renew the Lease; trying again until the renew deadline"),
                },
            }
        }
    }

    /// One attempt as a candidate: read the Lease and take it if it is free, expired or ours.
    /// `Some(sent_at)` when it is ours now.
    async fn try_acquire(&mut self) -> Result<Option<Instant>, LeaderError> {
        let name = self.settings.name.clone();
        let current = self.call("get", self.api.get_opt(&name)).await?;
        let Some(current) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name),
                    ..ObjectMeta::default()
                },
                spec: Some(claim(None, &self.settings, Timestamp::now())),
            };
            let sent_at = Instant::now();
            return match self
                .call("create", self.api.create(&PostParams::default(), &lease))
                .await
            {
                Ok(created) => Ok(Some(self.hold(created, sent_at))),
                // 409 AlreadyExists: another replica created it first.
                Err(LeaderError::Conflict { .. }) => Ok(None),
                Err(e) => Err(e),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let now = Instant::now();
        self.observe(&spec, now);
        if let Some(holder) = self.fresh_other_holder(now) {
            self.publisher.publish(LeaderState {
                leader: false,
                holder: Some(holder),
            });
            return Ok(None);
        }
        // Keeps the resourceVersion of what we read: a write since makes this a 409.
        let taken = Lease {
            spec: Some(claim(Some(&spec), &self.settings, Timestamp::now())),
            ..current
        };
        let sent_at = Instant::now();
        match self
            .call(
                "take over",
                self.api.replace(&name, &PostParams::default(), &taken),
            )
            .await
        {
            Ok(replaced) => Ok(Some(self.hold(replaced, sent_at))),
            Err(LeaderError::Conflict { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes a new `renewTime` on the Lease as we last wrote it. Returns when it was sent.
    async fn renew(&mut self) -> Result<Instant, LeaderError> {
        let Some(held) = self.held.clone() else {
            return Err(LeaderError::Deleted {
                lease: self.settings.name.clone(),
                operation: "renew",
            });
        };
        let mut spec = held.spec.clone().unwrap_or_default();
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        let renewed = Lease {
            spec: Some(spec),
            ..held
        };
        let sent_at = Instant::now();
        let name = self.settings.name.clone();
        let written = self
            .call(
                "renew",
                self.api.replace(&name, &PostParams::default(), &renewed),
            )
            .await?;
        Ok(self.hold(written, sent_at))
    }

    /// Hands the Lease over on shutdown: no holder and a 1 s duration, so a peer takes over
    /// at its next try instead of after a whole lease duration. A failure only delays that.
    async fn release(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        let now = MicroTime(Timestamp::now());
        let spec = held.spec.clone().unwrap_or_default();
        let released = Lease {
            spec: Some(LeaseSpec {
                holder_identity: None,
                lease_duration_seconds: Some(1),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                ..spec
            }),
            ..held
        };
        let name = self.settings.name.clone();
        match self
            .call(
                "release",
                self.api.replace(&name, &PostParams::default(), &released),
            )
            .await
        {
            Ok(_) => tracing::info!(lease = %name, "Lease released"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot release the Lease; peers take over when it expires")
            }
        }
    }

    /// Records our own successful write.
    fn hold(&mut self, lease: Lease, sent_at: Instant) -> Instant {
        self.observed = Some(Observed {
            spec: lease.spec.clone().unwrap_or_default(),
            at: sent_at,
        });
        self.held = Some(lease);
        sent_at
    }

    /// Restarts the expiry clock whenever the record changed since we last looked.
    fn observe(&mut self, spec: &LeaseSpec, now: Instant) {
        if self.observed.as_ref().is_some_and(|o| o.spec == *spec) {
            return;
        }
        self.observed = Some(Observed {
            spec: spec.clone(),
            at: now,
        });
    }

    /// The holder, when it is someone else whose Lease has not expired on our clock.
    fn fresh_other_holder(&self, now: Instant) -> Option<String> {
        let observed = self.observed.as_ref()?;
        let holder = observed.spec.holder_identity.as_deref()?;
        if holder.is_empty() || holder == self.settings.identity {
            return None;
        }
        let duration = observed
            .spec
            .lease_duration_seconds
            .map_or(self.settings.lease_duration, |s| {
                Duration::from_secs(u64::try_from(s).unwrap_or(0))
            });
        (observed.at + duration > now).then(|| holder.to_owned())
    }

    /// Runs one API call with the call timeout, sorting out the answers that decide.
    async fn call<T>(
        &self,
        operation: &'static str,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, LeaderError> {
        let lease = self.settings.name.clone();
        let after = self.settings.call_timeout();
        match tokio::time::timeout(after, request).await {
            Err(_) => Err(LeaderError::Timeout {
                lease,
                operation,
                after,
            }),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(kube::Error::Api(status))) if status.code == 409 => {
                Err(LeaderError::Conflict { lease, operation })
            }
            Ok(Err(kube::Error::Api(status))) if status.code == 404 => {
                Err(LeaderError::Deleted { lease, operation })
            }
            Ok(Err(source)) => Err(LeaderError::Api {
                lease,
                operation,
                source,
            }),
        }
    }
}

/// The record a candidate writes to take the Lease (or a new one): it as holder, renewed now.
/// Taking it from someone else (or from nobody) is a transition; taking back our own is not.
fn claim(current: Option<&LeaseSpec>, settings: &LeaseSettings, now: Timestamp) -> LeaseSpec {
    let now = MicroTime(now);
    let ours = current.is_some_and(|c| c.holder_identity.as_deref() == Some(&settings.identity));
    let (acquire_time, transitions) = match current {
        None => (now.clone(), 0),
        Some(c) if ours => (
            c.acquire_time.clone().unwrap_or_else(|| now.clone()),
            c.lease_transitions.unwrap_or(0),
        ),
        Some(c) => (
            now.clone(),
            c.lease_transitions.unwrap_or(0).saturating_add(1),
        ),
    };
    LeaseSpec {
        holder_identity: Some(settings.identity.clone()),
        lease_duration_seconds: Some(settings.duration_seconds()),
        acquire_time: Some(acquire_time),
        renew_time: Some(now),
        lease_transitions: Some(transitions),
        ..current.cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    //! The elector against a scripted API server (`tower-test`): each test answers the
    //! requests one by one and checks what the elector sent. Time is paused, so waits of
    //! seconds take none and the instants asserted are exact.

    use http_body_util::BodyExt as _;
    use hyper::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};
    use tokio::task::JoinHandle;
    use tower_test::mock::SendResponse;

    use super::*;

    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases";
    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases/imagelock";
    const LEASE_DURATION: Duration = Duration::from_secs(15);
    const RENEW_DEADLINE: Duration = Duration::from_secs(10);
    const RETRY: Duration = Duration::from_secs(2);

    /// Elector "replica-a" with client-go's timings, running until `stop`.
    struct Replica {
        leadership: Leadership,
        api: tower_test::mock::Handle<Request<Body>, Response<Body>>,
        stop: CancellationToken,
        task: JoinHandle<()>,
    }

    /// One request the elector sent, not answered yet.
    struct Sent {
        method: Method,
        path: String,
        /// `Null` when it had no body.
        body: Value,
        respond: SendResponse<Response<Body>>,
    }

    impl Sent {
        fn answer(self, status: u16, body: &Value) {
            self.respond.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(body).expect("JSON")))
                    .expect("response"),
            );
        }

        /// Answers a create or replace as the API server does: the object written, with a
        /// new resourceVersion.
        fn accept(self, resource_version: u64) -> Value {
            let mut written = self.body.clone();
            written["metadata"]["resourceVersion"] = json!(resource_version.to_string());
            self.answer(200, &written);
            written
        }
    }

    impl Replica {
        fn start() -> Self {
            let (service, api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let client = kube::Client::new(service, "default");
            let (elector, leadership) = LeaseElector::new(
                Api::namespaced(client, "default"),
                "default",
                LeaseSettings::new("imagelock", "replica-a"),
            );
            let stop = CancellationToken::new();
            let task = tokio::spawn(elector.run(stop.clone()));
            Replica {
                leadership,
                api,
                stop,
                task,
            }
        }

        /// The next request the elector sent.
        async fn next(&mut self) -> Sent {
            let (request, respond) = self.api.next_request().await.expect("a request");
            let (parts, body) = request.into_parts();
            let bytes = body.collect().await.expect("request body").to_bytes();
            Sent {
                method: parts.method,
                path: parts.uri.path().to_owned(),
                body: if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).expect("a JSON body")
                },
                respond,
            }
        }

        /// The next request, which must be `method` on `path`.
        async fn expect(&mut self, method: Method, path: &str) -> Sent {
            let sent = self.next().await;
            assert_eq!((&sent.method, sent.path.as_str()), (&method, path));
            sent
        }

        /// Answers GET with 404 and accepts the create that follows; returns when the create
        /// arrived and what it carried.
        async fn grant_by_create(&mut self) -> (Instant, Value) {
            self.expect(Method::GET, LEASE)
                .await
                .answer(404, &mk_failure(404, "NotFound"));
            let create = self.expect(Method::POST, LEASES).await;
            let at = Instant::now();
            let sent = create.body.clone();
            create.accept(1);
            self.leadership.acquired().await;
            (at, sent)
        }

        fn holder(&self) -> Option<String> {
            self.leadership.state().holder
        }

        /// Stops the elector and waits for it.
        async fn stop(self) -> tower_test::mock::Handle<Request<Body>, Response<Body>> {
            self.stop.cancel();
            self.task.await.expect("the elector ends cleanly");
            self.api
        }
    }

    /// A Lease as the API server returns it.
    fn mk_lease(holder: Option<&str>, resource_version: &str, renewed: &str) -> Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "imagelock", "namespace": "default", "resourceVersion": resource_version},
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": 15,
                "acquireTime": "2026-01-01T00:00:00.000000Z",
                "renewTime": renewed,
                "leaseTransitions": 3,
            },
        })
    }

    /// The API server's `Status` for a failed request.
    fn mk_failure(code: u16, reason: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": reason, "code": code, "message": reason})
    }

    #[tokio::test(start_paused = true)]
    async fn acquires_an_absent_lease_by_creating_it() {
        let mut replica = Replica::start();
        let (_, created) = replica.grant_by_create().await;
        let spec = &created["spec"];
        assert_eq!(created["metadata"]["name"], "imagelock");
        assert_eq!(spec["holderIdentity"], "replica-a");
        assert_eq!(spec["leaseDurationSeconds"], 15);
        assert_eq!(spec["leaseTransitions"], 0);
        assert!(
            spec["acquireTime"].is_string() && spec["renewTime"].is_string(),
            "{created:#}"
        );
        assert!(replica.leadership.is_leader());
        assert_eq!(replica.holder().as_deref(), Some("replica-a"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_create_race_is_not_leadership() {
        let mut replica = Replica::start();
        replica
            .expect(Method::GET, LEASE)
            .await
            .answer(404, &mk_failure(404, "NotFound"));
        replica
            .expect(Method::POST, LEASES)
            .await
            .answer(409, &mk_failure(409, "AlreadyExists"));
        assert!(!replica.leadership.is_leader());
        // The next try reads the winner's Lease and stands by.
        let winner = mk_lease(Some("replica-b"), "1", "2026-01-01T00:00:00Z");
        replica
            .expect(Method::GET, LEASE)
            .await
            .answer(200, &winner);
        replica
            .expect(Method::GET, LEASE)
            .await
            .answer(200, &winner);
        assert!(!replica.leadership.is_leader());
        assert_eq!(replica.holder().as_deref(), Some("replica-b"));
    }

    /// The holder's `renewTime` is an hour old on our clock (its clock is behind, say): what
    /// counts is when we saw the record change. Only after a whole lease duration without a
    /// change do we take it, with the resourceVersion we read.
    #[tokio::test(start_paused = true)]
    async fn takes_over_an_expired_lease_judged_by_its_own_clock() {
        let mut replica = Replica::start();
        let stale = mk_lease(Some("replica-b"), "7", "2025-12-31T23:00:00.000000Z");
        let first_seen = Instant::now();
        let take_over = loop {
            let sent = replica.next().await;
            match sent.method {
                Method::GET => sent.answer(200, &stale),
                Method::PUT => break sent,
                other => panic!("unexpected {other} before the take-over"),
            }
            assert!(!replica.leadership.is_leader());
        };
        let waited = Instant::now() - first_seen;
        assert!(
            waited >= LEASE_DURATION && waited < LEASE_DURATION + 2 * RETRY,
            "took over {waited:?} after first seeing the Lease"
        );
        assert_eq!(take_over.path, LEASE);
        let body = &take_over.body;
        assert_eq!(body["metadata"]["resourceVersion"], "7", "{body:#}");
        assert_eq!(body["spec"]["holderIdentity"], "replica-a");
        assert_eq!(body["spec"]["leaseTransitions"], 4);
        assert_ne!(body["spec"]["acquireTime"], stale["spec"]["acquireTime"]);
        take_over.accept(8);
        replica.leadership.acquired().await;
    }

    #[tokio::test(start_paused = true)]
    async fn waits_while_the_holder_keeps_renewing() {
        let mut replica = Replica::start();
        let start = Instant::now();
        let mut version = 10;
        while Instant::now() - start < 4 * LEASE_DURATION {
            // Each read shows a newer renewal; its renewTime's value does not matter.
            let sent = replica.expect(Method::GET, LEASE).await;
            version += 1;
            let renewed = format!(
                "2026-01-01T00:{:02}:{:02}Z",
                version / 60 % 60,
                version % 60
            );
            sent.answer(
                200,
                &mk_lease(Some("replica-b"), &version.to_string(), &renewed),
            );
            assert!(!replica.leadership.is_leader());
        }
        assert_eq!(
            replica.leadership.lease_status().and_then(|s| s.holder),
            Some("replica-b".to_owned())
        );
        // Never the leader, so nothing to release: stopping sends nothing more.
        let leadership = replica.leadership.clone();
        let mut api = replica.stop().await;
        assert!(api.next_request().await.is_none());
        assert!(!leadership.is_leader());
    }

    #[tokio::test(start_paused = true)]
    async fn renews_every_retry_period_on_the_version_it_wrote() {
        let mut replica = Replica::start();
        let (mut last, _) = replica.grant_by_create().await;
        let mut renewed_at = Vec::new();
        for version in 2..8 {
            let renewal = replica.expect(Method::PUT, LEASE).await;
            assert_eq!(Instant::now() - last, RETRY);
            last = Instant::now();
            let body = &renewal.body;
            assert_eq!(
                body["metadata"]["resourceVersion"],
                (version - 1).to_string(),
                "{body:#}"
            );
            assert_eq!(body["spec"]["holderIdentity"], "replica-a");
            assert_eq!(body["spec"]["leaseTransitions"], 0);
            renewed_at.push(body["spec"]["renewTime"].clone());
            renewal.accept(version);
            assert!(replica.leadership.is_leader());
        }
        assert!(renewed_at.iter().all(Value::is_string), "{renewed_at:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn loses_at_once_when_another_replica_wrote_the_lease() {
        let mut replica = Replica::start();
        replica.grant_by_create().await;
        let renewal = replica.expect(Method::PUT, LEASE).await;
        let refused = Instant::now();
        renewal.answer(409, &mk_failure(409, "Conflict"));
        replica.leadership.lost().await;
        assert_eq!(Instant::now(), refused, "leadership outlived the 409");
        // Back to candidate: the new holder's Lease is fresh, so it stands by.
        replica.expect(Method::GET, LEASE).await.answer(
            200,
            &mk_lease(Some("replica-b"), "3", "2026-01-01T00:00:00Z"),
        );
        let sent = replica.expect(Method::GET, LEASE).await;
        assert!(!replica.leadership.is_leader());
        assert_eq!(replica.holder().as_deref(), Some("replica-b"));
        sent.answer(
            200,
            &mk_lease(Some("replica-b"), "3", "2026-01-01T00:00:00Z"),
        );
    }

    #[tokio::test(start_paused = true)]
    async fn loses_when_the_api_stops_answering_past_the_renew_deadline() {
        let mut replica = Replica::start();
        let (created, _) = replica.grant_by_create().await;
        replica
            .expect(Method::PUT, LEASE)
            .await
            .answer(500, &mk_failure(500, "InternalError"));
        // From now on nothing answers: every request hangs until the elector gives up on it.
        let mut api = replica.api;
        let hung = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(request) = api.next_request().await {
                held.push(request);
            }
            held.len()
        });
        let leadership = replica.leadership.clone();
        tokio::time::sleep_until(created + RENEW_DEADLINE - Duration::from_millis(2)).await;
        assert!(leadership.is_leader(), "lost before the renew deadline");
        leadership.lost().await;
        let held = Instant::now() - created;
        assert!(
            held >= RENEW_DEADLINE && held < RENEW_DEADLINE + Duration::from_millis(5),
            "lost {held:?} after the last successful write"
        );
        replica.stop.cancel();
        replica.task.await.expect("the elector ends");
        assert!(hung.await.expect("collector") >= 1);
    }

    #[tokio::test(start_paused = true)]
    async fn releases_the_lease_on_stop() {
        let mut replica = Replica::start();
        replica.grant_by_create().await;
        replica.stop.cancel();
        let release = replica.expect(Method::PUT, LEASE).await;
        let body = &release.body;
        assert_eq!(body["metadata"]["resourceVersion"], "1", "{body:#}");
        assert!(body["spec"]["holderIdentity"].is_null(), "{body:#}");
        assert_eq!(body["spec"]["leaseDurationSeconds"], 1);
        assert_eq!(body["spec"]["leaseTransitions"], 0);
        release.accept(2);
        replica.task.await.expect("the elector ends");
        assert!(!replica.leadership.is_leader());
    }

    /// However the elector ends (here: aborted), no writer is left believing it leads.
    #[tokio::test(start_paused = true)]
    async fn a_dead_elector_leaves_no_leader() {
        let mut replica = Replica::start();
        replica.grant_by_create().await;
        replica.task.abort();
        let _ = replica.task.await;
        assert!(!replica.leadership.is_leader());
        replica.leadership.lost().await;
    }

    #[tokio::test(start_paused = true)]
    async fn without_election_a_replica_always_leads() {
        let always = Leadership::always();
        assert!(always.is_leader());
        assert!(always.lease_status().is_none());
        always.acquired().await;
        let lost = tokio::time::timeout(Duration::from_secs(3600), always.lost()).await;
        assert!(lost.is_err(), "an unelected replica lost its leadership");
    }

    #[test]
    fn a_claim_counts_transitions_only_from_someone_else() {
        let settings = LeaseSettings::new("imagelock", "replica-a");
        let then: Timestamp = "2026-01-01T00:00:00Z".parse().expect("timestamp");
        let now: Timestamp = "2026-01-01T01:00:00Z".parse().expect("timestamp");
        let fresh = claim(None, &settings, now);
        assert_eq!(fresh.lease_transitions, Some(0));
        assert_eq!(fresh.acquire_time, Some(MicroTime(now)));
        let held_by = |holder: &str| LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            acquire_time: Some(MicroTime(then)),
            renew_time: Some(MicroTime(then)),
            lease_transitions: Some(3),
            lease_duration_seconds: Some(60),
            ..LeaseSpec::default()
        };
        let ours = claim(Some(&held_by("replica-a")), &settings, now);
        assert_eq!(
            (ours.acquire_time, ours.lease_transitions),
            (Some(MicroTime(then)), Some(3))
        );
        assert_eq!(ours.renew_time, Some(MicroTime(now)));
        assert_eq!(ours.lease_duration_seconds, Some(15));
        let theirs = claim(Some(&held_by("replica-b")), &settings, now);
        assert_eq!(theirs.holder_identity.as_deref(), Some("replica-a"));
        assert_eq!(
            (theirs.acquire_time, theirs.lease_transitions),
            (Some(MicroTime(now)), Some(4))
        );
    }

    #[test]
    fn settings_keep_the_leader_inside_the_lease() {
        let ok = LeaseSettings::new("imagelock", "replica-a");
        assert_eq!(ok.validate(), Ok(()));
        let with = |change: fn(&mut LeaseSettings)| {
            let mut settings = ok.clone();
            change(&mut settings);
            settings.validate().expect_err("invalid settings pass")
        };
        assert!(with(|s| s.renew_deadline = s.lease_duration).contains("leaseRenewDeadline"));
        assert!(with(|s| s.retry_period = s.renew_deadline).contains("leaseRetryPeriod"));
        assert!(with(|s| s.retry_period = Duration::ZERO).contains("leaseRetryPeriod"));
        assert!(
            with(|s| s.lease_duration = Duration::from_millis(15_500)).contains("whole number")
        );
        assert!(with(|s| s.identity.clear()).contains("podName"));
    }
}

//! Leader election end to end over the in-memory API server: two electors compete for one
//! Lease while their links to the API server fail, fall silent and lag, and at every change
//! of either replica's leadership and every write to the Lease, at most one of them leads and
//! the one that leads is the holder the API server has.
//!
//! Time is paused: minutes of renewals take milliseconds, and the order of events is that of
//! the timers, as on a real clock.

use std::collections::BTreeSet;
use std::time::Duration;

use imagelock::daemon::leader::{Leadership, LeaseElector, LeaseSettings};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::common::{FakeApiServer, Link, LinkFault};

const LEASE: &str = "imagelock";

struct Replica {
    identity: &'static str,
    leadership: Leadership,
    link: Link,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Replica {
    fn start(server: &FakeApiServer, identity: &'static str) -> Self {
        let link = Link::default();
        let api = kube::Api::namespaced(server.client_through(link.clone()), "default");
        let (elector, leadership) =
            LeaseElector::new(api, "default", LeaseSettings::new(LEASE, identity));
        let stop = CancellationToken::new();
        let task = tokio::spawn(elector.run(stop.clone()));
        Replica {
            identity,
            leadership,
            link,
            stop,
            task,
        }
    }
}

/// Changes `link`'s fault every 1 to 10 s for `length`: half the time healthy, else failing,
/// silent, or lagging up to 12 s (past the elector's call timeout and its renew deadline).
async fn chaos(link: Link, seed: u64, length: Duration) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let end = Instant::now() + length;
    while Instant::now() < end {
        link.set(match rng.u32(0..100) {
            0..50 => LinkFault::Healthy,
            50..65 => LinkFault::Fail,
            65..80 => LinkFault::Silent,
            _ => LinkFault::Delay(Duration::from_millis(rng.u64(0..12_000))),
        });
        tokio::time::sleep(Duration::from_millis(rng.u64(1_000..10_000))).await;
    }
    link.set(LinkFault::Healthy);
}

/// Who led, in order of taking over (repeats removed).
struct Run {
    leaders: Vec<&'static str>,
}

/// Two replicas under faults for `length`; panics at the first moment the safety rule breaks.
async fn run_under_faults(seed: u64, length: Duration) -> Run {
    let server = FakeApiServer::default();
    let replicas = [
        Replica::start(&server, "replica-a"),
        Replica::start(&server, "replica-b"),
    ];
    let faults: Vec<_> = replicas
        .iter()
        .enumerate()
        .map(|(i, r)| tokio::spawn(chaos(r.link.clone(), seed * 2 + i as u64, length)))
        .collect();

    let mut a = replicas[0].leadership.clone();
    let mut b = replicas[1].leadership.clone();
    let mut writes = server.writes();
    let started = Instant::now();
    let end = started + length;
    let mut run = Run {
        leaders: Vec::new(),
    };
    loop {
        let leading: Vec<_> = replicas
            .iter()
            .filter(|r| r.leadership.is_leader())
            .map(|r| r.identity)
            .collect();
        let at = Instant::now() - started;
        assert!(
            leading.len() <= 1,
            "seed {seed}, {at:?}: both replicas lead"
        );
        if let Some(&leader) = leading.first() {
            let holder = server.holder(LEASE);
            assert_eq!(
                holder.as_deref(),
                Some(leader),
                "seed {seed}, {at:?}: {leader} leads but the Lease is {holder:?}'s"
            );
            if run.leaders.last() != Some(&leader) {
                run.leaders.push(leader);
            }
        }
        tokio::select! {
            _ = a.changed() => {}
            _ = b.changed() => {}
            _ = writes.changed() => {}
            _ = tokio::time::sleep_until(end) => break,
        }
    }
    for fault in faults {
        fault.await.expect("fault task");
    }
    for replica in replicas {
        replica.stop.cancel();
        replica.task.await.expect("the elector ends");
        assert!(!replica.leadership.is_leader());
    }
    run
}

#[tokio::test(start_paused = true)]
async fn two_replicas_never_both_lead_through_faults() {
    let mut handovers = 0;
    let mut ever_led = BTreeSet::new();
    for seed in 1..=8 {
        let run = run_under_faults(seed, Duration::from_secs(900)).await;
        handovers += run.leaders.len().saturating_sub(1);
        ever_led.extend(run.leaders);
    }
    // Not a vacuous pass: the faults did move the Lease between the replicas.
    assert_eq!(ever_led.len(), 2, "only {ever_led:?} ever led");
    assert!(handovers >= 8, "only {handovers} handovers in all runs");
}

#[tokio::test(start_paused = true)]
async fn a_stopped_leader_hands_over_at_once() {
    let server = FakeApiServer::default();
    let first = Replica::start(&server, "replica-a");
    first.leadership.acquired().await;
    let second = Replica::start(&server, "replica-b");
    // Started after the Lease was taken: it stands by while the first renews.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!second.leadership.is_leader());
    assert_eq!(
        second
            .leadership
            .lease_status()
            .and_then(|s| s.holder)
            .as_deref(),
        Some("replica-a")
    );

    first.stop.cancel();
    first.task.await.expect("the elector ends");
    let released = Instant::now();
    second.leadership.acquired().await;
    // Released: taken at the next try, not a lease duration later.
    assert!(
        Instant::now() - released < Duration::from_secs(3),
        "took {:?} to take over a released Lease",
        Instant::now() - released
    );
    assert_eq!(server.holder(LEASE).as_deref(), Some("replica-b"));
    second.stop.cancel();
    second.task.await.expect("the elector ends");
}

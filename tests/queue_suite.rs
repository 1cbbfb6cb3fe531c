//! One behavioural suite run against both queue backends: whatever the engine and the HTTP
//! layer rely on must hold for `embedded` and `redis` alike.

mod queue_common;

use std::collections::HashSet;
use std::time::Duration;

use queue_common::*;
use volley::queue::{
    Completion, DeliveryId, EventKind, JobState, LateOutcome, LateReport, Leased, NewRecipient,
    Queue, RecipientState, Resolution, RetentionConfig, SubmitOutcome, Suppression,
    SuppressionScope,
};

/// Short, so that lease expiry can be shown with a real sleep (Redis measures idle time on
/// its own clock).
const LEASE: Duration = Duration::from_millis(400);

/// Opens queues on fresh storage; `another` opens a second handle (a second worker process
/// for Redis, a clone for the single-process embedded store) on the same storage.
trait Harness {
    type Q: Queue + Clone + Send + Sync + 'static;
    async fn fresh(&mut self) -> Self::Q;
    async fn another(&mut self, q: &Self::Q) -> Self::Q;
}

struct Embedded(Vec<tempfile::TempDir>);

impl Harness for Embedded {
    type Q = volley::queue::EmbeddedQueue;
    async fn fresh(&mut self) -> Self::Q {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = open_embedded(dir.path(), LEASE).await;
        self.0.push(dir);
        q
    }
    async fn another(&mut self, q: &Self::Q) -> Self::Q {
        q.clone()
    }
}

struct Redis(Vec<String>);

impl Harness for Redis {
    type Q = volley::queue::RedisQueue;
    async fn fresh(&mut self) -> Self::Q {
        let p = unique_prefix();
        let q = open_redis(&p, LEASE).await;
        self.0.push(p);
        q
    }
    async fn another(&mut self, q: &Self::Q) -> Self::Q {
        let prefix = self.0.last().cloned().expect("fresh first");
        let other = open_redis(&prefix, LEASE).await;
        assert_ne!(other.consumer(), q.consumer());
        other
    }
}

impl Redis {
    async fn cleanup(&self) {
        for p in &self.0 {
            redis_cleanup(p).await;
        }
    }
}

/// One test per scenario and backend, so a failure names both. Each scenario runs on
/// fresh storage.
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let mut h = Embedded(Vec::new());
                    let q = h.fresh().await;
                    super::$name(q).await;
                }
            )*
        }
        mod redis {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if !redis_available().await {
                        return;
                    }
                    let mut h = Redis(Vec::new());
                    let q = h.fresh().await;
                    super::$name(q).await;
                    h.cleanup().await;
                }
            )*
        }
    };
}

scenarios!(
    submit_lease_complete,
    retry_is_not_leased_early,
    lease_expiry_and_release,
    idempotency,
    recipients_paging,
    suppression,
    a_hard_bounce_suppresses_in_the_same_write,
    stale_leases_cannot_complete_renew_or_release,
    a_release_can_postpone,
    retention_removes_old_events_and_finished_jobs,
    submit_is_atomic,
    depth,
    recent_jobs_newest_first,
    a_batch_answers_each_submission,
    late_reports_are_events_and_may_suppress,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_two_consumers_never_share() {
    let mut h = Embedded(Vec::new());
    let q = h.fresh().await;
    let other = h.another(&q).await;
    two_consumers_never_share(q, other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_two_consumers_never_share() {
    if !redis_available().await {
        return;
    }
    let mut h = Redis(Vec::new());
    let q = h.fresh().await;
    let other = h.another(&q).await;
    two_consumers_never_share(q, other).await;
    h.cleanup().await;
}

/// A completion of `lease` with `resolution`, under the lease's token.
fn done(lease: &Leased, resolution: Resolution) -> Completion {
    Completion {
        id: lease.id,
        token: lease.token,
        resolution,
        via: None,
    }
}

fn delivered() -> Resolution {
    Resolution::Delivered {
        reply: "250 ok".into(),
    }
}

fn created(o: SubmitOutcome) -> volley::queue::JobId {
    match o {
        SubmitOutcome::Created { id, .. } => id,
        other => panic!("expected Created, got {other:?}"),
    }
}

async fn submit_lease_complete<Q: Queue>(q: Q) {
    let t = t0();
    let job = job(t);
    let payload = job.payload.clone();
    let out = q.submit(job, recipients(3), t).await.expect("submit");
    let SubmitOutcome::Created { id, recipients: 3 } = out else {
        panic!("{out:?}");
    };
    let st = q.job(&id).await.expect("job").expect("exists");
    assert_eq!(
        (st.state, st.counts.total, st.counts.queued),
        (JobState::Queued, 3, 3)
    );
    assert_eq!(
        q.job_payloads(vec![id]).await.expect("payload"),
        vec![Some(payload)]
    );

    let mut got = q.lease(10, t).await.expect("lease");
    got.sort_by_key(|l| l.id.index);
    assert_eq!(got.len(), 3);
    assert_eq!(got[1].to, "user1@example.com");
    assert_eq!(got[1].vars, br#"{"i":1}"#);
    assert_eq!(
        (got[1].attempts, got[1].created, got[1].queued_at),
        (0, t, t)
    );
    assert!(
        q.lease(10, t).await.expect("lease").is_empty(),
        "leased twice"
    );

    let later = t + Duration::from_secs(1);
    let stale = q
        .complete(
            vec![
                Completion {
                    via: Some(std::sync::Arc::from(
                        r#"{"pool":"tx","source":"192.0.2.7"}"#,
                    )),
                    ..done(&got[0], delivered())
                },
                done(
                    &got[1],
                    Resolution::Bounced {
                        reply: "550 no such user".into(),
                        suppress: false,
                    },
                ),
                done(&got[2], Resolution::Suppressed),
            ],
            later,
        )
        .await
        .expect("complete");
    assert_eq!(stale, 0);
    // A repeated outcome is refused and counted, never recorded twice.
    let again = done(
        &got[0],
        Resolution::Delivered {
            reply: "250 again".into(),
        },
    );
    assert_eq!(q.complete(vec![again], later).await.expect("complete"), 1);
    let st = q.job(&id).await.expect("job").expect("exists");
    assert_eq!(st.state, JobState::Done);
    let c = st.counts;
    assert_eq!(
        (c.delivered, c.bounced, c.suppressed, c.queued),
        (1, 1, 1, 0)
    );

    let ev = q.events(0, 100).await.expect("events");
    let kinds: Vec<_> = ev.iter().map(|e| (e.index, e.kind)).collect();
    assert_eq!(
        kinds,
        [
            (0, EventKind::Delivered),
            (1, EventKind::Bounced),
            (2, EventKind::Suppressed)
        ]
    );
    assert!(ev.windows(2).all(|w| w[0].cursor < w[1].cursor));
    assert_eq!(ev[1].reply.as_deref(), Some("550 no such user"));
    assert_eq!(ev[2].reply, None);
    // How the attempt left is kept with its event, and shown as the JSON it is.
    assert_eq!(
        ev[0].via.as_deref(),
        Some(r#"{"pool":"tx","source":"192.0.2.7"}"#)
    );
    assert_eq!(ev[1].via, None);
    let shown = serde_json::to_value(&ev[0]).unwrap();
    assert_eq!(shown["via"]["pool"], "tx", "{shown}");
    assert!(serde_json::to_value(&ev[1]).unwrap().get("via").is_none());
    assert_eq!(
        (ev[0].at, ev[0].to.as_str(), ev[0].job),
        (later, "user0@example.com", id)
    );
    let page = q.events(ev[0].cursor, 1).await.expect("events page");
    assert_eq!(page, ev[1..2]);
    assert!(
        q.events(ev[2].cursor, 10)
            .await
            .expect("events end")
            .is_empty()
    );
}

async fn retry_is_not_leased_early<Q: Queue>(q: Q) {
    let t = t0();
    let id = created(q.submit(job(t), recipients(1), t).await.expect("submit"));
    let l = q.lease(1, t).await.expect("lease");
    let at = t + Duration::from_secs(60);
    let reply = "451 4.7.1 try later".to_string();
    q.complete(vec![done(&l[0], Resolution::Retry { at, reply })], t)
        .await
        .expect("complete");
    let st = q.job(&id).await.expect("job").expect("exists");
    assert_eq!((st.state, st.counts.deferred), (JobState::Sending, 1));
    for early in [t, at - Duration::from_millis(1)] {
        assert!(
            q.lease(5, early).await.expect("lease").is_empty(),
            "leased before T"
        );
    }
    let again = q.lease(5, at).await.expect("lease");
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].attempts, again[0].queued_at), (1, at));
    assert_eq!(
        again[0].first_attempt,
        Some(t),
        "the first attempt's time is kept"
    );
    assert!(again[0].token > l[0].token, "every lease gets a new token");
    let r = q.recipients(&id, None, 10).await.expect("recipients");
    assert_eq!((r[0].state, r[0].attempts), (RecipientState::Leased, 1));
    assert_eq!(r[0].last_reply.as_deref(), Some("451 4.7.1 try later"));
    q.complete(
        vec![done(
            &again[0],
            Resolution::Expired {
                reply: "gave up".into(),
            },
        )],
        at,
    )
    .await
    .expect("complete");
    let st = q.job(&id).await.expect("job").expect("exists");
    assert_eq!(
        (st.state, st.counts.expired, st.counts.deferred),
        (JobState::Done, 1, 0)
    );
    let kinds: Vec<_> = q
        .events(0, 10)
        .await
        .expect("events")
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, [EventKind::Deferred, EventKind::Expired]);
}

async fn lease_expiry_and_release<Q: Queue>(q: Q) {
    let t = t0();
    created(q.submit(job(t), recipients(2), t).await.expect("submit"));
    let first = q.lease(1, t).await.expect("lease");
    assert_eq!(first.len(), 1);
    // Still held: only the other one is handed out.
    let second = q.lease(5, t).await.expect("lease");
    assert_eq!(second.len(), 1);
    assert_ne!(first[0].id, second[0].id);
    q.release(vec![(second[0].id, second[0].token)], None, t)
        .await
        .expect("release");
    let back = q.lease(5, t).await.expect("lease");
    assert_eq!(
        back.iter().map(|l| l.id).collect::<Vec<_>>(),
        [second[0].id]
    );
    assert_eq!(back[0].attempts, 0);

    tokio::time::sleep(LEASE + Duration::from_millis(300)).await;
    let expired = q
        .lease(5, t + LEASE + Duration::from_millis(300))
        .await
        .expect("lease");
    let mut ids: Vec<DeliveryId> = expired.iter().map(|l| l.id).collect();
    ids.sort();
    let mut want = vec![first[0].id, second[0].id];
    want.sort();
    assert_eq!(ids, want, "expired leases must come back");
}

async fn idempotency<Q: Queue>(q: Q) {
    let t = t0();
    let mut a = job(t);
    a.idempotency = Some(("key-1".into(), [7; 32]));
    let id = created(q.submit(a.clone(), recipients(2), t).await.expect("submit"));
    let mut same = job(t);
    same.idempotency = a.idempotency.clone();
    let again = q
        .submit(same.clone(), recipients(2), t + Duration::from_secs(60))
        .await;
    assert_eq!(
        again.expect("submit"),
        SubmitOutcome::Existing { id, recipients: 2 }
    );
    assert!(q.job(&same.id).await.expect("job").is_none());
    let mut other = job(t);
    other.idempotency = Some(("key-1".into(), [8; 32]));
    let conflict = q
        .submit(other.clone(), recipients(2), t)
        .await
        .expect("submit");
    assert_eq!(conflict, SubmitOutcome::IdempotencyConflict);
    assert!(q.job(&other.id).await.expect("job").is_none());
    assert_eq!(
        q.lease(10, t).await.expect("lease").len(),
        2,
        "only the first job's"
    );
}

async fn recipients_paging<Q: Queue>(q: Q) {
    let t = t0();
    let id = created(q.submit(job(t), recipients(10), t).await.expect("submit"));
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = q.recipients(&id, after, 4).await.expect("recipients");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 4);
        after = page.last().map(|r| r.index);
        seen.extend(page);
    }
    assert_eq!(
        seen.iter().map(|r| r.index).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    assert_eq!(seen[9].to, "user9@example.com");
    assert!(
        seen.iter()
            .all(|r| r.state == RecipientState::Queued && r.attempts == 0)
    );
    let unknown = volley::queue::JobId::new(t);
    assert!(
        q.recipients(&unknown, None, 4)
            .await
            .expect("recipients")
            .is_empty()
    );
    assert!(q.job(&unknown).await.expect("job").is_none());
}

fn entry(address: &str, scope: SuppressionScope) -> Suppression {
    Suppression {
        address: address.into(),
        scope,
        reason: "test".into(),
        at: t0(),
    }
}

async fn suppression<Q: Queue>(q: Q) {
    let news = || SuppressionScope::List("news".into());
    q.suppress(entry("Bob@Example.COM", SuppressionScope::All))
        .await
        .expect("suppress");
    q.suppress(entry("Ann@Bücher.example", news()))
        .await
        .expect("suppress");
    // One normalisation: however the address arrives, it matches.
    let among = |a: &str, list: Option<&str>| (a.to_owned(), list.map(str::to_owned));
    let flags = q
        .suppressed_among(vec![
            among("bob@example.com", None),
            among(" BOB@EXAMPLE.com ", Some("news")),
            among("x@example.com", None),
            among("ann@xn--bcher-kva.example", Some("news")),
            among("ann@bücher.example", Some("other")),
            among("ann@bücher.example", None),
        ])
        .await
        .expect("batch check");
    assert_eq!(
        flags,
        [true, true, false, true, false, false],
        "all-mail entries stop everything; a list's entries only that list"
    );
    assert!(
        q.suppressed_among(Vec::new())
            .await
            .expect("empty batch")
            .is_empty()
    );
    let of_ann = q.suppressions_of("ANN@bücher.example").await.expect("of");
    assert_eq!(of_ann.len(), 1);
    assert_eq!(
        (of_ann[0].address.as_str(), &of_ann[0].scope),
        ("ann@xn--bcher-kva.example", &news())
    );
    q.suppress(entry("bob@example.com", news()))
        .await
        .expect("suppress");
    let all = q.suppressions(None, 10).await.expect("list");
    let listed: Vec<_> = all
        .iter()
        .map(|e| (e.address.as_str(), e.scope.as_text()))
        .collect();
    assert_eq!(
        listed,
        [
            ("ann@xn--bcher-kva.example", "list:news".to_owned()),
            ("bob@example.com", "all".to_owned()),
            ("bob@example.com", "list:news".to_owned()),
        ],
        "in address order"
    );
    let after = q
        .suppressions(Some("ann@bücher.example".into()), 10)
        .await
        .expect("page");
    assert_eq!(after.len(), 2, "paged after an address: {after:?}");
    assert_eq!(q.suppressions(None, 1).await.expect("page").len(), 1);
    assert_eq!(
        q.unsuppress("BOB@example.com", Some(SuppressionScope::All))
            .await
            .expect("unsuppress"),
        1
    );
    assert_eq!(
        q.suppressed_among(vec![among("bob@example.com", None)])
            .await
            .expect("check"),
        [false]
    );
    assert_eq!(
        q.unsuppress("bob@example.com", None)
            .await
            .expect("all scopes"),
        1
    );
    assert_eq!(
        q.unsuppress("bob@example.com", None)
            .await
            .expect("none left"),
        0
    );
}

async fn a_hard_bounce_suppresses_in_the_same_write<Q: Queue>(q: Q) {
    let t = t0();
    let rs = ["Permfail@BÜCHER.example", "kept@example.com"].map(|to| NewRecipient {
        to: to.into(),
        vars: Vec::new(),
    });
    created(q.submit(job(t), rs.into_iter(), t).await.expect("submit"));
    let mut got = q.lease(2, t).await.expect("lease");
    got.sort_by_key(|l| l.id.index);
    let bounce = |suppress| Resolution::Bounced {
        reply: "550 5.1.1 no such user".into(),
        suppress,
    };
    q.complete(
        vec![done(&got[0], bounce(true)), done(&got[1], bounce(false))],
        t,
    )
    .await
    .expect("complete");
    let flags = q
        .suppressed_among(vec![
            ("permfail@bücher.example".into(), None),
            ("kept@example.com".into(), None),
        ])
        .await
        .expect("check");
    assert_eq!(flags, [true, false]);
    let e = q
        .suppressions_of("permfail@xn--bcher-kva.example")
        .await
        .expect("of");
    assert_eq!(
        (e[0].scope.clone(), e[0].reason.as_str()),
        (SuppressionScope::All, "550 5.1.1 no such user")
    );
}

async fn stale_leases_cannot_complete_renew_or_release<Q: Queue>(q: Q) {
    let t = t0();
    let id = created(q.submit(job(t), recipients(2), t).await.expect("submit"));
    let mut first = q.lease(2, t).await.expect("lease");
    first.sort_by_key(|l| l.id.index);
    // Renewal keeps a held lease: past the old end, nobody else may take it.
    let lost = q
        .renew(first.iter().map(|l| (l.id, l.token)).collect(), t)
        .await
        .expect("renew");
    assert!(lost.is_empty());
    // Released and leased again: the old token is stale from now on.
    q.release(vec![(first[0].id, first[0].token)], None, t)
        .await
        .expect("release");
    let second = q.lease(1, t).await.expect("lease").remove(0);
    assert_eq!(second.id, first[0].id);
    assert!(second.token > first[0].token);
    let lost = q
        .renew(
            vec![(first[0].id, first[0].token), (first[1].id, first[1].token)],
            t,
        )
        .await
        .expect("renew");
    assert_eq!(lost, [first[0].id], "the stale lease is reported lost");
    assert_eq!(
        q.complete(vec![done(&first[0], delivered())], t)
            .await
            .expect("complete"),
        1,
        "a completion under a stale token is refused"
    );
    q.release(vec![(first[0].id, first[0].token)], None, t)
        .await
        .expect("stale release");
    let st = q.recipients(&id, None, 10).await.expect("recipients");
    assert_eq!(
        st[0].state,
        RecipientState::Leased,
        "the stale release did nothing"
    );
    assert_eq!(
        q.complete(vec![done(&second, delivered())], t)
            .await
            .expect("complete"),
        0
    );
    let st = q.job(&id).await.expect("job").expect("exists");
    assert_eq!((st.counts.delivered, st.counts.queued), (1, 1));
}

async fn a_release_can_postpone<Q: Queue>(q: Q) {
    let t = t0();
    let id = created(q.submit(job(t), recipients(1), t).await.expect("submit"));
    let l = q.lease(1, t).await.expect("lease").remove(0);
    let later = t + Duration::from_secs(30);
    q.release(vec![(l.id, l.token)], Some(later), t)
        .await
        .expect("release");
    let d = q.depth(t).await.expect("depth");
    assert_eq!((d.ready, d.scheduled, d.leased), (0, 1, 0));
    assert!(
        q.lease(1, later - Duration::from_millis(1))
            .await
            .expect("lease")
            .is_empty()
    );
    let back = q.lease(1, later).await.expect("lease");
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].attempts, 0, "a postponement is no attempt");
    assert!(
        q.events(0, 10).await.expect("events").is_empty(),
        "and no event"
    );
    let st = q.job(&id).await.expect("job").expect("exists");
    assert_eq!(st.counts.queued, 1);
}

async fn retention_removes_old_events_and_finished_jobs<Q: Queue>(q: Q) {
    let t = t0();
    let old = created(q.submit(job(t), recipients(2), t).await.expect("submit"));
    let got = q.lease(2, t).await.expect("lease");
    q.complete(got.iter().map(|l| done(l, delivered())).collect(), t)
        .await
        .expect("complete");
    let day = Duration::from_secs(86_400);
    let later = t + 40 * day;
    let new = created(
        q.submit(job(later), recipients(1), later)
            .await
            .expect("submit"),
    );
    let fresh = q.lease(1, later).await.expect("lease");
    q.complete(vec![done(&fresh[0], delivered())], later)
        .await
        .expect("complete");
    q.suppress(entry("kept@example.com", SuppressionScope::All))
        .await
        .expect("suppress");
    let retention = RetentionConfig {
        events: 30 * day,
        jobs: 30 * day,
    };
    let mut pruned = volley::queue::Pruned::default();
    loop {
        let p = q.prune(later, retention).await.expect("prune");
        if p.events + p.jobs == 0 {
            break;
        }
        pruned.events += p.events;
        pruned.jobs += p.jobs;
    }
    assert_eq!((pruned.events, pruned.jobs), (2, 1), "{pruned:?}");
    assert!(
        q.job(&old).await.expect("job").is_none(),
        "the old job is gone"
    );
    assert_eq!(
        q.job_payloads(vec![old]).await.expect("payload"),
        vec![None]
    );
    assert!(
        q.recipients(&old, None, 10)
            .await
            .expect("recipients")
            .is_empty()
    );
    assert!(
        q.job(&new).await.expect("job").is_some(),
        "the recent job stays"
    );
    let events = q.events(0, 10).await.expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].job, new);
    assert_eq!(
        q.suppressions_of("kept@example.com")
            .await
            .expect("of")
            .len(),
        1,
        "suppressions are kept until deleted"
    );
}

async fn submit_is_atomic<Q: Queue>(q: Q) {
    let t = t0();
    let empty = q.submit(job(t), std::iter::empty(), t).await;
    assert!(empty.is_err_and(|e| e.is_invalid()));
    // An invalid entry after several chunks have been written: nothing may remain.
    for bad_at in [5u32, 20_000] {
        let j = job(t);
        let id = j.id;
        let rs = recipients(30_000).map(move |mut r| {
            if r.to == format!("user{bad_at}@example.com") {
                r.to = "evil@example.com\r\nRCPT TO:<x@y>".into();
            }
            r
        });
        let err = q.submit(j, rs, t).await.expect_err("invalid recipient");
        assert!(err.is_invalid(), "{err}");
        assert!(
            err.to_string().contains(&format!("recipients[{bad_at}]")),
            "{err}"
        );
        assert!(q.job(&id).await.expect("job").is_none());
        assert!(
            q.recipients(&id, None, 5)
                .await
                .expect("recipients")
                .is_empty()
        );
    }
    assert!(
        q.lease(100, t).await.expect("lease").is_empty(),
        "half a job leaked"
    );
    let d = q.depth(t).await.expect("depth");
    assert_eq!((d.ready, d.scheduled, d.leased), (0, 0, 0));
    // The queue still works afterwards.
    created(q.submit(job(t), recipients(1), t).await.expect("submit"));
    assert_eq!(q.lease(100, t).await.expect("lease").len(), 1);
}

async fn depth<Q: Queue>(q: Q) {
    let t = t0();
    created(q.submit(job(t), recipients(5), t).await.expect("submit"));
    let mut later = job(t);
    later.send_at = Some(t + Duration::from_secs(3600));
    created(q.submit(later, recipients(3), t).await.expect("submit"));
    let d = q.depth(t).await.expect("depth");
    assert_eq!((d.ready, d.scheduled, d.leased), (5, 3, 0));
    assert_eq!(q.lease(2, t).await.expect("lease").len(), 2);
    let d = q.depth(t).await.expect("depth");
    assert_eq!((d.ready, d.scheduled, d.leased), (3, 3, 2));
}

async fn recent_jobs_newest_first<Q: Queue>(q: Q) {
    let t = t0();
    assert!(q.recent_jobs(10).await.expect("recent").is_empty());
    let mut ids = Vec::new();
    for i in 0..4u64 {
        let at = t + Duration::from_millis(i * 10);
        ids.push(created(
            q.submit(job(at), recipients(2), at).await.expect("submit"),
        ));
    }
    let first = q.lease(1, t).await.expect("lease").remove(0);
    q.complete(vec![done(&first, delivered())], t)
        .await
        .expect("complete");
    let recent = q.recent_jobs(3).await.expect("recent");
    let got: Vec<_> = recent.iter().map(|j| j.id).collect();
    assert_eq!(
        got,
        [ids[3], ids[2], ids[1]],
        "newest first, at most the limit"
    );
    assert_eq!(recent[0].counts.total, 2);
    assert_eq!(recent[2].created, t + Duration::from_millis(10));
    let all = q.recent_jobs(100).await.expect("recent");
    assert_eq!(all.len(), 4);
    assert_eq!(all[3].id, ids[0]);
    assert_eq!(all[3].counts.delivered, 1, "counts are current");
    assert_eq!(all[3].state, JobState::Sending);
    assert!(q.recent_jobs(0).await.expect("recent").is_empty());
}

async fn two_consumers_never_share<Q: Queue + Clone + 'static>(a: Q, b: Q) {
    let t = t0();
    let n = 600u32;
    let rs = (0..n).map(|i| NewRecipient {
        to: format!("r{i}@example.org"),
        vars: Vec::new(),
    });
    created(a.submit(job(t), rs, t).await.expect("submit"));
    let worker = |q: Q| {
        tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = q.lease(16, t).await.expect("lease");
                if got.is_empty() {
                    return mine;
                }
                let batch = got.iter().map(|l| done(l, delivered())).collect();
                mine.extend(got.iter().map(|l| l.id));
                q.complete(batch, t).await.expect("complete");
            }
        })
    };
    let (x, y) = (worker(a.clone()), worker(b));
    let (x, y) = (x.await.expect("worker a"), y.await.expect("worker b"));
    let all: HashSet<DeliveryId> = x.iter().chain(&y).copied().collect();
    assert_eq!(x.len() + y.len(), n as usize, "a delivery was leased twice");
    assert_eq!(all.len(), n as usize);
    let ev = a.events(0, 10_000).await.expect("events");
    assert_eq!(ev.len(), n as usize);
}

/// Redis: the idempotency key is a pending marker until the commit; a retry meanwhile is
/// told to wait (not handed an id for a job that does not exist), and a marker whose
/// submission failed is cleared, so the key works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_idempotency_markers_never_answer_for_a_missing_job() {
    if !redis_available().await {
        return;
    }
    let prefix = unique_prefix();
    let q = open_redis(&prefix, LEASE).await;
    let t = t0();
    let client = ::redis::Client::open(REDIS_URL).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{{{prefix}}}:idem:order-1");
    let hash = [9u8; 32];
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    // Another process is still storing a submission with this key.
    let _: () = ::redis::cmd("SET")
        .arg(&key)
        .arg(format!("pending|{hex}|01M8N4F38VYN2K69KYA5220C9B"))
        .query_async(&mut c)
        .await
        .unwrap();
    let mut retry = job(t);
    retry.idempotency = Some(("order-1".into(), hash));
    assert_eq!(
        q.submit(retry.clone(), recipients(1), t)
            .await
            .expect("submit"),
        SubmitOutcome::IdempotencyInProgress
    );
    let mut other = job(t);
    other.idempotency = Some(("order-1".into(), [1; 32]));
    assert_eq!(
        q.submit(other, recipients(1), t).await.expect("submit"),
        SubmitOutcome::IdempotencyConflict
    );
    // That process died: its marker expires (here: removed), and the key works again.
    let _: () = ::redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    let id = created(
        q.submit(retry.clone(), recipients(1), t)
            .await
            .expect("submit"),
    );
    let mut again = job(t);
    again.idempotency = Some(("order-1".into(), hash));
    assert_eq!(
        q.submit(again, recipients(1), t).await.expect("submit"),
        SubmitOutcome::Existing { id, recipients: 1 }
    );
    let ttl: i64 = ::redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ttl > 86_000, "the final answer is kept a day: {ttl}");
    // A submission that fails clears its own marker.
    let mut bad = job(t);
    bad.idempotency = Some(("order-2".into(), hash));
    let rs = [NewRecipient {
        to: "evil@example.com\r\nRCPT TO:<x@y>".into(),
        vars: Vec::new(),
    }];
    assert!(q.submit(bad, rs.into_iter(), t).await.is_err());
    let left: Option<String> = ::redis::cmd("GET")
        .arg(format!("{{{prefix}}}:idem:order-2"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(left, None);
    redis_cleanup(&prefix).await;
}

async fn a_batch_answers_each_submission<Q: Queue>(q: Q) {
    let t = t0();
    let mut later = job(t);
    later.send_at = Some(t + Duration::from_secs(3600));
    later.payload = br#"{"template":"later"}"#.to_vec();
    let later_id = later.id;
    let first = job(t);
    let first_id = first.id;
    let answers = q
        .submit_batch(
            vec![
                (first, recipients(2).collect()),
                (job(t), Vec::new()),
                (later, recipients(3).collect()),
            ],
            t,
        )
        .await
        .expect("batch");
    assert_eq!(answers.len(), 3);
    let mut answers = answers.into_iter();
    assert_eq!(created(answers.next().unwrap().expect("first")), first_id);
    let refused = answers.next().unwrap().expect_err("no recipients");
    assert!(refused.is_invalid(), "{refused}");
    created(answers.next().unwrap().expect("third"));
    let d = q.depth(t).await.expect("depth");
    assert_eq!(
        (d.ready, d.scheduled),
        (2, 3),
        "the refused one stored nothing"
    );
    let leased = q.lease(10, t).await.expect("lease");
    assert_eq!(leased.len(), 2);
    assert!(leased.iter().all(|l| l.id.job == first_id));
    // Their payloads in one read, in the order asked; an unknown job has none.
    let unknown = job(t).id;
    let payloads = q
        .job_payloads(vec![later_id, unknown, first_id])
        .await
        .expect("payloads");
    assert_eq!(
        payloads,
        vec![
            Some(br#"{"template":"later"}"#.to_vec()),
            None,
            Some(br#"{"template":"welcome"}"#.to_vec()),
        ]
    );
}

async fn late_reports_are_events_and_may_suppress<Q: Queue>(q: Q) {
    let t = t0();
    let id = created(q.submit(job(t), recipients(2), t).await.expect("submit"));
    let leased = q.lease(10, t).await.expect("lease");
    let batch = leased.iter().map(|l| done(l, delivered())).collect();
    q.complete(batch, t).await.expect("complete");
    let report = |index, kind, suppress: Option<&str>| LateReport {
        id: DeliveryId { job: id, index },
        kind,
        reply: format!("{kind} later"),
        suppress: suppress.map(str::to_owned),
    };
    let bounced = report(0, EventKind::Bounced, Some("bounced later: 5.1.1"));
    assert_eq!(
        q.record_late(bounced, t).await.expect("late"),
        LateOutcome::Recorded {
            to: "user0@example.com".into()
        }
    );
    let delayed = report(1, EventKind::Deferred, None);
    assert!(matches!(
        q.record_late(delayed, t).await.expect("late"),
        LateOutcome::Recorded { .. }
    ));
    let unknown = report(7, EventKind::Complained, Some("complaint"));
    assert_eq!(
        q.record_late(unknown, t).await.expect("late"),
        LateOutcome::UnknownDelivery
    );
    let events = q.events(0, 100).await.expect("events");
    let late: Vec<_> = events
        .iter()
        .filter(|e| e.late)
        .map(|e| (e.index, e.kind))
        .collect();
    assert_eq!(late, [(0, EventKind::Bounced), (1, EventKind::Deferred)]);
    assert_eq!(
        events.iter().filter(|e| !e.late).count(),
        2,
        "the deliveries"
    );
    let addresses = vec![
        ("USER0@example.com".to_owned(), None),
        ("user1@example.com".to_owned(), None),
    ];
    let suppressed = q.suppressed_among(addresses).await.expect("lookup");
    assert_eq!(
        suppressed,
        [true, false],
        "a hard bounce suppresses, a delay does not"
    );
    let status = q.job(&id).await.expect("job").expect("exists");
    assert_eq!(status.counts.delivered, 2, "the handoff counts stay");
}

//! Group commit and per-key locks (issue #17), against the real Postgres:
//! several invocations in one transaction each get their own answer, the
//! exact counter stays exact, a redelivery applies nothing twice, disjoint
//! keys of one script are locked at once, and the subscriptions a manager
//! caches follow changes made through another store handle; commits that
//! cannot conflict (no kv read) go together, blind writes included; a commit's
//! rows wait for its committer before a relay takes them, and a batch of
//! async submissions queues only the jobs it could not publish.

use std::time::Duration;

use picloud_core::effects::{Emit, ListRead};
use picloud_core::{Commit, CommitReply, Effects, InvocationRecord, InvocationStatus, Trigger};
use picloud_manager::commits::commit_batch;
use picloud_manager::stats::Rollup;
use picloud_store::{Applying, OutboxKind, Store, SubscriptionCache};
use picloud_testkit::TestEnv;
use serde_json::json;
use uuid::Uuid;

async fn store(env: &TestEnv) -> Store {
    Store::connect(env.config.database_url().expect("test database url"))
        .await
        .expect("store")
}

fn commit(script: &str, effects: Effects) -> Commit {
    Commit {
        record: InvocationRecord {
            id: Uuid::new_v4(),
            script: script.into(),
            version: 1,
            trigger: Trigger::Event,
            status: InvocationStatus::Ok,
            http_status: None,
            started_at: chrono::Utc::now(),
            duration_us: 1,
            log: String::new(),
            error: None,
            executor: "test".into(),
            trace_id: Uuid::new_v4(),
            attempt: 1,
            parent_id: None,
            response: None,
            public: false,
        },
        effects,
        chain: Default::default(),
        version: None,
    }
}

fn set(key: &str, value: serde_json::Value) -> Effects {
    let mut e = Effects::default();
    e.writes.insert(key.into(), Some(value));
    e
}

/// Read `key` at `seen`, write `value`.
fn read_set(key: &str, seen: i64, value: serde_json::Value) -> Effects {
    let mut e = set(key, value);
    e.reads.insert(key.into(), seen);
    e
}

fn emit(topic: &str) -> Effects {
    let mut e = Effects::default();
    e.emits.push(Emit {
        topic: topic.into(),
        payload: json!({"n": 1}),
    });
    e
}

async fn batch(store: &Store, cache: &SubscriptionCache, commits: &[&Commit]) -> Vec<CommitReply> {
    commit_batch(store, cache, &Rollup::default(), commits, 1_000)
        .await
        .0
}

/// Job rows in the outbox, by target script (no relay runs here).
async fn queued_jobs(store: &Store) -> Vec<String> {
    let claim = store.claim_outbox(10_000).await.expect("claim");
    let mut jobs: Vec<String> = claim
        .rows
        .iter()
        .filter(|r| r.kind == OutboxKind::Job)
        .map(|r| r.target.clone())
        .collect();
    jobs.sort();
    claim.release().await.expect("release");
    jobs
}

async fn status(store: &Store, id: Uuid) -> Option<InvocationStatus> {
    store
        .get_invocation(id)
        .await
        .expect("read record")
        .map(|r| r.status)
}

#[tokio::test]
async fn each_member_of_a_batch_gets_its_own_answer() {
    let env = TestEnv::new().await;
    let store = store(&env).await;
    let cache = SubscriptionCache::default();
    store.create_subscription("sub", "t.>", 3).await.unwrap();

    let ok = commit("s", set("a", json!(1)));
    // Read "gone" as present at version 5: it is absent, so the read is stale.
    let stale = commit("s", read_set("gone", 5, json!(2)));
    // Postgres text holds no NUL: the database refuses this key.
    let refused = commit("s", set("bad\0key", json!(3)));
    let emits = commit("s", emit("t.x"));
    let redelivered = ok.clone();
    // Two increments of one counter from the same read: the second one
    // validates against the first one's write and conflicts.
    let (inc1, inc2) = (
        commit("s", read_set("n", 0, json!(1))),
        commit("s", read_set("n", 0, json!(1))),
    );
    let all = [&ok, &stale, &refused, &emits, &redelivered, &inc1, &inc2];
    let replies = batch(&store, &cache, &all).await;

    assert_eq!(replies[0], CommitReply::Committed);
    assert_eq!(replies[1], CommitReply::Conflict);
    assert!(
        matches!(&replies[2], CommitReply::Refused { .. }),
        "{:?}",
        replies[2]
    );
    assert_eq!(replies[3], CommitReply::Committed);
    assert_eq!(replies[4], CommitReply::AlreadyCommitted);
    // Applied in invocation id order: the smaller id wins the counter.
    let (first, second) = if inc1.record.id < inc2.record.id {
        (5, 6)
    } else {
        (6, 5)
    };
    assert_eq!(replies[first], CommitReply::Committed);
    assert_eq!(replies[second], CommitReply::Conflict);

    assert_eq!(
        store.kv_dump("s").await.unwrap(),
        vec![("a".into(), json!(1)), ("n".into(), json!(1))]
    );
    assert_eq!(
        status(&store, ok.record.id).await,
        Some(InvocationStatus::Ok)
    );
    assert_eq!(
        status(&store, emits.record.id).await,
        Some(InvocationStatus::Ok)
    );
    // Nothing of the failed members was kept, their records included.
    for failed in [&stale, &refused] {
        assert_eq!(status(&store, failed.record.id).await, None);
    }
    assert_eq!(queued_jobs(&store).await, vec!["sub".to_string()]);

    // The same batch delivered again applies nothing twice.
    let again = batch(&store, &cache, &all).await;
    assert_eq!(again[0], CommitReply::AlreadyCommitted);
    assert_eq!(again[3], CommitReply::AlreadyCommitted);
    assert_eq!(again[first], CommitReply::AlreadyCommitted);
    assert_eq!(queued_jobs(&store).await, vec!["sub".to_string()]);
    assert_eq!(store.kv_dump("s").await.unwrap().len(), 2);
    store.close().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_counter_incremented_by_concurrent_batches_stays_exact() {
    let env = TestEnv::new().await;
    let store = store(&env).await;
    let cache = SubscriptionCache::default();
    let (tasks, per_task) = (6, 15);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (store, cache) = (store.clone(), cache.clone());
        handles.push(tokio::spawn(async move {
            let mut done = 0;
            while done < per_task {
                let (value, seen) = match store.kv_get("s", "n").await.unwrap() {
                    Some(e) => (e.value.as_i64().unwrap(), e.version),
                    None => (0, 0),
                };
                let inc = commit("s", read_set("n", seen, json!(value + 1)));
                // A neighbour on a key of its own shares each transaction.
                let other = commit("s", set(&format!("k{t}-{done}"), json!(t)));
                let replies = batch(&store, &cache, &[&inc, &other]).await;
                assert_eq!(replies[1], CommitReply::Committed);
                match &replies[0] {
                    CommitReply::Committed => done += 1,
                    CommitReply::Conflict => {}
                    other => panic!("unexpected reply {other:?}"),
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let n = store.kv_get("s", "n").await.unwrap().unwrap().value;
    assert_eq!(n, json!(tasks * per_task));
    store.close().await;
    env.cleanup().await;
}

#[tokio::test]
async fn disjoint_keys_of_one_script_are_locked_at_once() {
    let env = TestEnv::new().await;
    let store = store(&env).await;
    let (a, b) = (set("a", json!(1)), set("b", json!(1)));
    let holds_a = store.begin_commits(&[("s", &a)]).await.unwrap();
    // A per-script lock would make this wait for `holds_a`.
    let holds_b = tokio::time::timeout(Duration::from_secs(5), store.begin_commits(&[("s", &b)]))
        .await
        .expect("a commit of another key is not held up")
        .unwrap();

    // A commit reading "a" waits for the one writing it.
    let mut reads_a = Effects::default();
    reads_a.reads.insert("a".into(), 0);
    let waiting = tokio::time::timeout(
        Duration::from_millis(500),
        store.begin_commits(&[("s", &reads_a)]),
    )
    .await;
    assert!(
        waiting.is_err(),
        "a reader of a key being written must wait"
    );

    // A list of the script waits for every writer of the script.
    let mut lists = Effects::default();
    lists.lists.push(ListRead {
        prefix: String::new(),
        entries: Vec::new(),
    });
    let store2 = store.clone();
    let list = tokio::spawn(async move {
        let batch = store2.begin_commits(&[("s", &lists)]).await.unwrap();
        batch.finish().await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !list.is_finished(),
        "a prefix list must wait for the writers"
    );
    holds_a.finish().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !list.is_finished(),
        "the list still waits for the writer of b"
    );
    holds_b.finish().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), list)
        .await
        .expect("the list goes once the writers are done")
        .unwrap();
    store.close().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_subscription_made_elsewhere_gets_the_next_event() {
    let env = TestEnv::new().await;
    // Two handles, as two managers: A serves the API, B commits.
    let (a, b) = (store(&env).await, store(&env).await);
    let cache = SubscriptionCache::default();
    let first = commit("src", emit("orders.new"));
    assert_eq!(
        batch(&b, &cache, &[&first]).await,
        vec![CommitReply::Committed]
    );
    assert!(queued_jobs(&b).await.is_empty());

    let sub = a.create_subscription("dst", "orders.*", 3).await.unwrap();
    let second = commit("src", emit("orders.new"));
    assert_eq!(
        batch(&b, &cache, &[&second]).await,
        vec![CommitReply::Committed]
    );
    assert_eq!(queued_jobs(&b).await, vec!["dst".to_string()]);

    assert!(a.delete_subscription(sub.id).await.unwrap());
    let third = commit("src", emit("orders.new"));
    assert_eq!(
        batch(&b, &cache, &[&third]).await,
        vec![CommitReply::Committed]
    );
    assert_eq!(queued_jobs(&b).await, vec!["dst".to_string()], "no new job");
    a.close().await;
    b.close().await;
    env.cleanup().await;
}

/// A committed batch hands back exactly the outbox rows of the invocations
/// it applied, for its manager to publish; the relays leave those rows to
/// it for `PUBLISHER_GRACE` and take what is still there after that (the
/// manager died or could not publish).
#[tokio::test]
async fn the_committer_publishes_its_own_rows_and_the_relay_takes_the_rest_later() {
    let env = TestEnv::new().await;
    let store = store(&env).await;
    let cache = SubscriptionCache::default();
    store.create_subscription("sub", "t.>", 3).await.unwrap();
    let emits = commit("s", emit("t.x"));
    // A stale read that also emits: neither its event nor its job exists.
    let mut stale_effects = read_set("gone", 5, json!(1));
    stale_effects.emits = emit("t.y").emits;
    let stale = commit("s", stale_effects);
    let (replies, rows) =
        commit_batch(&store, &cache, &Rollup::default(), &[&emits, &stale], 1_000).await;
    assert_eq!(replies, vec![CommitReply::Committed, CommitReply::Conflict]);
    let mut kinds: Vec<(OutboxKind, String)> =
        rows.iter().map(|r| (r.kind, r.target.clone())).collect();
    kinds.sort_by_key(|(k, _)| *k == OutboxKind::Job);
    assert_eq!(
        kinds,
        vec![
            (OutboxKind::Event, "t.x".into()),
            (OutboxKind::Job, "sub".into())
        ]
    );

    // Not due for a relay yet; due within the grace.
    let claim = store.claim_due_outbox(100).await.unwrap();
    assert!(
        claim.rows.is_empty(),
        "a relay took a committer's row at once"
    );
    claim.release().await.unwrap();
    let due = store.next_outbox_due().await.unwrap().expect("rows wait");
    assert!(due <= picloud_store::outbox::PUBLISHER_GRACE, "{due:?}");

    // The committer published the event, not the job (say it died): the
    // deleted row is gone, and a relay takes the job once it is due.
    let event = rows.iter().find(|r| r.kind == OutboxKind::Event).unwrap();
    store.settle_outbox(&[], &[event.id]).await.unwrap();
    let job = rows.iter().find(|r| r.kind == OutboxKind::Job).unwrap();
    let taken = picloud_testkit::eventually(Duration::from_secs(20), || async {
        let claim = store.claim_due_outbox(100).await.ok()?;
        let ids: Vec<Uuid> = claim.rows.iter().map(|r| r.id).collect();
        claim.finish(&ids).await.ok()?;
        (!ids.is_empty()).then_some(ids)
    })
    .await;
    assert_eq!(taken, Some(vec![job.id]));
    assert_eq!(store.next_outbox_due().await.unwrap(), None);
    store.close().await;
    env.cleanup().await;
}

/// Async calls without a key are accepted together: all their queued
/// records in one transaction, and exactly the jobs whose publish failed
/// kept in the outbox (due at once, for the relays).
#[tokio::test]
async fn a_batch_of_submissions_queues_only_its_unpublished_jobs() {
    let env = TestEnv::new().await;
    let store = store(&env).await;
    let jobs: Vec<picloud_core::Job> = (0..3).map(|_| picloud_testkit::manual_job("s")).collect();
    let records: Vec<InvocationRecord> = jobs
        .iter()
        .map(|j| {
            let mut r = commit("s", Effects::default()).record;
            r.id = j.id;
            r.status = InvocationStatus::Queued;
            r
        })
        .collect();
    let job_refs: Vec<&picloud_core::Job> = jobs.iter().collect();
    let record_refs: Vec<&InvocationRecord> = records.iter().collect();
    store
        .submit_async_many(&record_refs, &job_refs, async || vec![true, false, true])
        .await
        .expect("accepted");
    for j in &jobs {
        assert_eq!(status(&store, j.id).await, Some(InvocationStatus::Queued));
    }
    let claim = store.claim_due_outbox(100).await.unwrap();
    let ids: Vec<Uuid> = claim.rows.iter().map(|r| r.id).collect();
    assert_eq!(claim.rows[0].message_id(), format!("{}.1", jobs[1].id));
    claim.finish(&[]).await.unwrap();
    assert_eq!(ids, vec![jobs[1].id], "only the unpublished job is queued");
    // A relay's failed try counts too: the next goes under a new id again.
    let claim = store.claim_due_outbox(100).await.unwrap();
    assert_eq!(claim.rows[0].message_id(), format!("{}.2", jobs[1].id));
    claim.finish(&[]).await.unwrap();
    store.close().await;
    env.cleanup().await;
}

/// Commits that touch no kv (a record, maybe emits) go into a batch's
/// transaction together, with one statement for their records and one for
/// their outbox rows; each still gets its own answer: one committed before
/// is `AlreadyCommitted`, a copy of one in the same batch applies once, a
/// kv commit beside them takes its own way, and one whose data the
/// database refuses is found by applying them one at a time, the others
/// committed.
#[tokio::test]
async fn commits_without_kv_go_together_and_each_gets_its_own_answer() {
    let env = TestEnv::new().await;
    let store = store(&env).await;
    let cache = SubscriptionCache::default();
    store.create_subscription("sub", "t.>", 3).await.unwrap();
    let earlier = commit("s", emit("t.a"));
    assert_eq!(
        batch(&store, &cache, &[&earlier]).await,
        vec![CommitReply::Committed]
    );

    let plain = commit("s", Effects::default());
    let (e1, e2) = (commit("s", emit("t.b")), commit("s", emit("t.c")));
    let kv = commit("s", set("a", json!(1)));
    let all = [&plain, &e1, &earlier, &e2, &kv, &e2];
    let replies = batch(&store, &cache, &all).await;
    assert_eq!(replies[0], CommitReply::Committed);
    assert_eq!(replies[1], CommitReply::Committed);
    assert_eq!(replies[2], CommitReply::AlreadyCommitted);
    assert_eq!(replies[4], CommitReply::Committed);
    let mut copies = vec![replies[3].clone(), replies[5].clone()];
    copies.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(
        copies,
        vec![CommitReply::AlreadyCommitted, CommitReply::Committed],
        "one copy of a commit applies"
    );
    for c in [&plain, &e1, &e2, &kv] {
        assert_eq!(
            status(&store, c.record.id).await,
            Some(InvocationStatus::Ok)
        );
    }
    // One job per emit applied: the earlier one, e1 and e2 once each.
    assert_eq!(queued_jobs(&store).await, vec!["sub".to_string(); 3]);
    assert_eq!(
        store.kv_dump("s").await.unwrap(),
        vec![("a".into(), json!(1))]
    );

    // Postgres text holds no NUL: the event row of this topic is refused,
    // which fails the statement of the whole group.
    let refused = commit("s", emit("t.bad\0"));
    let (p2, e3) = (commit("s", Effects::default()), commit("s", emit("t.d")));
    let replies = batch(&store, &cache, &[&p2, &refused, &e3, &e1]).await;
    assert_eq!(replies[0], CommitReply::Committed);
    assert!(
        matches!(&replies[1], CommitReply::Refused { .. }),
        "{:?}",
        replies[1]
    );
    assert_eq!(replies[2], CommitReply::Committed);
    assert_eq!(replies[3], CommitReply::AlreadyCommitted);
    assert_eq!(
        status(&store, p2.record.id).await,
        Some(InvocationStatus::Ok)
    );
    assert_eq!(
        status(&store, e3.record.id).await,
        Some(InvocationStatus::Ok)
    );
    assert_eq!(status(&store, refused.record.id).await, None);
    assert_eq!(queued_jobs(&store).await, vec!["sub".to_string(); 4]);
    store.close().await;
    env.cleanup().await;
}

/// Blind kv writes (no read) cannot conflict, so they go together with the
/// records: each key ends with the value of the last writer in id order,
/// scripts keep their own keys, a delete deletes, a commit that read a key
/// one of them writes conflicts, and a redelivery writes nothing again.
#[tokio::test]
async fn blind_writes_go_together_and_end_as_applied_one_by_one() {
    let env = TestEnv::new().await;
    let store = store(&env).await;
    let cache = SubscriptionCache::default();
    let seed = commit("s", set("x", json!(0)));
    assert_eq!(
        batch(&store, &cache, &[&seed]).await,
        [CommitReply::Committed]
    );
    let x = store.kv_get("s", "x").await.unwrap().expect("x").version;

    let (a, b) = (
        commit("s", set("a", json!(1))),
        commit("s", set("b", json!(2))),
    );
    let (c3, c4) = (
        commit("s", set("c", json!(3))),
        commit("s", set("c", json!(4))),
    );
    let mut delete_x = Effects::default();
    delete_x.writes.insert("x".into(), None);
    let delete_x = commit("s", delete_x);
    // Read x where it stands now: the delete in the same batch goes first.
    let reads_x = commit("s", read_set("x", x, json!(9)));
    let other = commit("t", set("a", json!(5)));
    let again = a.clone();
    let all = [&a, &b, &c3, &c4, &delete_x, &reads_x, &other, &again];
    let replies = batch(&store, &cache, &all).await;
    use CommitReply::{AlreadyCommitted, Committed, Conflict};
    assert_eq!(
        replies,
        [
            Committed,
            Committed,
            Committed,
            Committed,
            Committed,
            Conflict,
            Committed,
            AlreadyCommitted
        ]
    );
    let last_c = if c3.record.id < c4.record.id { 4 } else { 3 };
    assert_eq!(
        store.kv_dump("s").await.unwrap(),
        vec![
            ("a".into(), json!(1)),
            ("b".into(), json!(2)),
            ("c".into(), json!(last_c)),
        ]
    );
    assert_eq!(
        store.kv_dump("t").await.unwrap(),
        vec![("a".into(), json!(5))]
    );
    let version = store.kv_get("s", "a").await.unwrap().expect("a").version;
    assert!(
        version > x,
        "a new version for every write: {version} after {x}"
    );

    // Delivered again: nothing is written twice (a's version stays).
    let replies = batch(&store, &cache, &all).await;
    assert!(
        replies[..5].iter().all(|r| *r == AlreadyCommitted),
        "{replies:?}"
    );
    assert_eq!(
        store.kv_get("s", "a").await.unwrap().expect("a").version,
        version
    );
    store.close().await;
    env.cleanup().await;
}

/// The store's bulk apply on its own: outcomes in the caller's order, and
/// a refused group leaves the batch usable for applying one at a time.
#[tokio::test]
async fn a_refused_bulk_apply_leaves_the_batch_usable() {
    let env = TestEnv::new().await;
    let store = store(&env).await;
    let none = Effects::default();
    let (a, b) = (commit("s", none.clone()), commit("s", none.clone()));
    let bad = commit("s", none.clone());
    // Postgres text holds no NUL: the database refuses this row.
    let bad_rows = [picloud_store::OutboxRow {
        id: Uuid::new_v4(),
        kind: OutboxKind::Event,
        target: "t.bad\0".into(),
        payload: json!({}),
        tries: 0,
    }];

    let mut tx = store
        .begin_commits(&[("s", &none), ("s", &none), ("s", &none)])
        .await
        .unwrap();
    let refused = tx
        .apply_together(&[
            Applying::new(&a.record, &none, &[]),
            Applying::new(&bad.record, &none, &bad_rows),
            Applying::new(&b.record, &none, &[]),
        ])
        .await
        .unwrap();
    assert_eq!(refused, None, "NUL is refused: nothing decided together");
    assert_eq!(
        tx.apply(Applying::new(&b.record, &none, &[]))
            .await
            .unwrap(),
        picloud_store::Committed::Applied
    );
    assert_eq!(
        tx.apply_together(&[
            Applying::new(&b.record, &none, &[]),
            Applying::new(&a.record, &none, &[])
        ])
        .await
        .unwrap(),
        Some(vec![
            picloud_store::Committed::AlreadyApplied,
            picloud_store::Committed::Applied
        ])
    );
    tx.finish().await.unwrap();
    assert_eq!(
        status(&store, a.record.id).await,
        Some(InvocationStatus::Ok)
    );
    assert_eq!(
        status(&store, b.record.id).await,
        Some(InvocationStatus::Ok)
    );
    assert_eq!(status(&store, bad.record.id).await, None);
    store.close().await;
    env.cleanup().await;
}

/// A job whose publish failed goes to the outbox, and the relay publishes
/// it under a message id of its own: a nats-server before 2.11 may keep
/// the id of a publish it lost in a leader change in its dedup window and
/// drop a retry under the same id as a duplicate. Here the id is put in
/// the window by a decoy message, as such a lost publish would leave it.
#[tokio::test]
async fn a_job_whose_publish_failed_is_relayed_past_its_first_id_in_the_dedup_window() {
    let mut env = TestEnv::new().await;
    let _front = env.start_front().await;
    let store = store(&env).await;
    let names = picloud_bus::Names::new(&env.config.prefix);
    let js = env.jetstream().await;
    let job = picloud_testkit::manual_job("s");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", job.id.to_string().as_str());
    js.publish_with_headers(names.job_subject("decoy"), headers, "lost".into())
        .await
        .expect("publish")
        .await
        .expect("stored");

    let mut queued = commit("s", Effects::default()).record;
    queued.id = job.id;
    queued.status = InvocationStatus::Queued;
    store
        .submit_async_many(&[&queued], &[&job], async || vec![false])
        .await
        .expect("accepted");
    let stream = js.get_stream(names.jobs_stream()).await.expect("stream");
    let subject = names.job_subject("s");
    let relayed = picloud_testkit::eventually(Duration::from_secs(20), || async {
        let found = stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .ok()?;
        let id = found.headers.get("Nats-Msg-Id")?.as_str().to_owned();
        (store.outbox_len().await.ok()? == 0).then_some(id)
    })
    .await;
    assert_eq!(
        relayed,
        Some(format!("{}.1", job.id)),
        "the job reached the stream"
    );
    store.close().await;
    env.cleanup().await;
}

/// A run of `key`'s read-modify-write chain as one executor pipelines it:
/// read at `seen` (the previous run's own version), write `value` under
/// `version`.
fn pipelined(key: &str, seen: i64, value: i64, version: i64) -> Commit {
    let mut c = commit("s", read_set(key, seen, json!(value)));
    c.version = Some(version);
    c
}

/// Runs `from..to` of one counter's pipelined increments, each reading the
/// one before under that one's version.
fn chain(from: i64, to: i64) -> Vec<Commit> {
    let v = |i: i64| (1 << 62) + 1_000 + i;
    (from..to)
        .map(|i| pipelined("n", if i == 0 { 0 } else { v(i - 1) }, i + 1, v(i)))
        .collect()
}

#[tokio::test]
async fn a_pipelined_chain_of_increments_commits_whole_in_any_order() {
    let env = TestEnv::new().await;
    let store = store(&env).await;
    let cache = SubscriptionCache::default();
    let runs = chain(0, 10);
    // Two batches; inside each, the later runs arrive first.
    let first: Vec<&Commit> = runs[..6].iter().rev().collect();
    let second: Vec<&Commit> = runs[6..].iter().rev().collect();
    for part in [first, second] {
        let replies = batch(&store, &cache, &part).await;
        assert!(
            replies.iter().all(|r| *r == CommitReply::Committed),
            "{replies:?}"
        );
    }
    let n = store.kv_get("s", "n").await.unwrap().unwrap();
    assert_eq!((n.value, n.version), (json!(10), runs[9].version.unwrap()));
    store.close().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_broken_link_of_a_chain_fails_every_run_after_it_and_nothing_of_them_applies() {
    let env = TestEnv::new().await;
    let store = store(&env).await;
    let cache = SubscriptionCache::default();
    let mut runs = chain(0, 5);
    // Another writer moved the key on before the third run's commit: the
    // second run's write, which the third read, never happens.
    runs[1].effects.reads.insert("n".into(), 777);
    let blind = commit("s", set("other", json!(1)));
    let mut all: Vec<&Commit> = runs.iter().collect();
    all.push(&blind);
    let replies = batch(&store, &cache, &all).await;
    use CommitReply::{Committed, Conflict};
    assert_eq!(
        replies,
        vec![Committed, Conflict, Conflict, Conflict, Conflict, Committed]
    );
    let n = store.kv_get("s", "n").await.unwrap().unwrap();
    assert_eq!((n.value, n.version), (json!(1), runs[0].version.unwrap()));
    for r in &runs[1..] {
        assert_eq!(status(&store, r.record.id).await, None, "no record stored");
    }
    store.close().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_redelivered_link_applied_before_is_decided_one_at_a_time() {
    let env = TestEnv::new().await;
    let store = store(&env).await;
    let cache = SubscriptionCache::default();
    let runs = chain(0, 2);
    // The first run was committed by an earlier delivery under another
    // version; its new run's write never happens, so the second run, which
    // read it, conflicts (and the bulk path hands them to the one-at-a-time
    // path to find that out).
    let mut earlier = runs[0].clone();
    earlier.version = Some(5);
    assert_eq!(
        batch(&store, &cache, &[&earlier]).await,
        vec![CommitReply::Committed]
    );
    let mut again = runs[0].clone();
    again.effects.reads.insert("n".into(), 5);
    let replies = batch(&store, &cache, &[&runs[1], &again]).await;
    assert_eq!(
        replies,
        vec![CommitReply::Conflict, CommitReply::AlreadyCommitted]
    );
    let n = store.kv_get("s", "n").await.unwrap().unwrap();
    assert_eq!((n.value, n.version), (json!(1), 5));
    store.close().await;
    env.cleanup().await;
}

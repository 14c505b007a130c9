//! Cron schedules: the admin API, and the firing transaction against a real
//! Postgres with simulated clocks (several schedulers on one database,
//! catch-up, overlap, disabled and deleted schedules).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use picloud_core::job::cron_event_id;
use picloud_core::schedule::{CatchUp, Overlap, PlanReason};
use picloud_core::{InvocationRecord, Job, Limits, Uuid};
use picloud_store::schedules::{Action, ScheduleChange, Update};
use picloud_store::{ScheduleRow, ScheduleSpec, Store};
use picloud_testkit::{Client, TestEnv};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

// ---------------------------------------------------------------- the API

async fn send(c: &Client, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let resp = c.api(method, path, body).await;
    let status = resp.status();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

fn times(v: &Value) -> Vec<DateTime<Utc>> {
    v["next_runs"]
        .as_array()
        .unwrap_or_else(|| panic!("no next_runs in {v}"))
        .iter()
        .map(|t| {
            DateTime::parse_from_rfc3339(t.as_str().unwrap())
                .unwrap()
                .with_timezone(&Utc)
        })
        .collect()
}

#[tokio::test]
async fn the_api_validates_and_shows_the_next_runs() {
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    let c = Client::new(&front.base, &env.token);
    assert!(c.deploy("nightly", r#""ok""#).await.status().is_success());
    assert!(c.deploy("other", r#""ok""#).await.status().is_success());

    let bad = StatusCode::BAD_REQUEST;
    let n = |cron: &str| json!({"script": "nightly", "cron": cron});
    let with = |extra: Value| {
        let mut body = n("0 3 * * *");
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    // (body, status, code, what the message must say)
    let cases = [
        (
            n("* * * *"),
            bad,
            "invalid_cron",
            "invalid cron expression \"* * * *\": it has 4 fields",
        ),
        (
            n("99 * * * *"),
            bad,
            "invalid_cron",
            "invalid cron expression \"99 * * * *\"",
        ),
        (n("0 0 31 2 *"), bad, "invalid_cron", "never fires"),
        (
            with(json!({"timezone": "Europe/Atlantis"})),
            bad,
            "invalid_timezone",
            "invalid time zone \"Europe/Atlantis\"",
        ),
        (
            json!({"script": "ghost", "cron": "0 3 * * *"}),
            StatusCode::NOT_FOUND,
            "not_found",
            "no script named \"ghost\"",
        ),
        (
            with(json!({"catch_up": "burst"})),
            bad,
            "bad_request",
            "burst",
        ),
        (
            with(json!({"max_attempts": 0})),
            bad,
            "bad_request",
            "max_attempts",
        ),
        (with(json!({"every": "day"})), bad, "bad_request", "every"),
    ];
    for (body, status, code, needle) in cases {
        let (s, v) = send(&c, Method::POST, "/schedules", Some(body.clone())).await;
        assert_eq!(s, status, "{body} → {v}");
        assert_eq!(v["error"]["code"], code, "{body} → {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body} → {message}");
    }
    assert_eq!(c.get_json("/schedules").await, json!([]));

    // Defaults: UTC, fire_once, allow, enabled, the configured attempts.
    let resp = c
        .api(
            Method::POST,
            "/schedules",
            Some(json!({"script": "nightly", "cron": "30 2 * * *", "timezone": "Europe/Berlin"})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = resp.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/v1/schedules/{id}"));
    assert_eq!(created["catch_up"], "fire_once");
    assert_eq!(created["overlap"], "allow");
    assert_eq!(created["enabled"], true);
    assert_eq!(created["max_attempts"], env.config.max_attempts);
    assert_eq!(created["last_fired_at"], Value::Null);
    let runs = times(&created);
    assert_eq!(runs.len(), 5);
    assert!(runs[0] > Utc::now());
    for pair in runs.windows(2) {
        // 02:30 in Berlin: a day apart, give or take a DST change.
        let gap = pair[1] - pair[0];
        assert!(
            gap >= TimeDelta::hours(23) && gap <= TimeDelta::hours(25),
            "{runs:?}"
        );
    }

    let (s, got) = send(&c, Method::GET, &format!("/schedules/{id}"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["cron"], "30 2 * * *");
    assert_eq!(c.get_json("/schedules?script=nightly").await[0]["id"], id);
    assert_eq!(c.get_json("/schedules?script=other").await, json!([]));

    // PATCH: a refused change changes nothing.
    let path = format!("/schedules/{id}");
    let (s, v) = send(&c, Method::PATCH, &path, Some(json!({"cron": "nope"}))).await;
    assert_eq!(s, bad, "{v}");
    assert_eq!(v["error"]["code"], "invalid_cron");
    let (s, v) = send(&c, Method::PATCH, &path, Some(json!({"timezone": "UTC+1"}))).await;
    assert_eq!(s, bad, "{v}");
    assert_eq!(v["error"]["code"], "invalid_timezone");
    let (s, v) = send(&c, Method::PATCH, &path, Some(json!({"script": "ghost"}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(c.get_json(&path).await["cron"], "30 2 * * *");

    let (s, v) = send(
        &c,
        Method::PATCH,
        &path,
        Some(
            json!({"cron": "0 */6 * * *", "timezone": "UTC", "overlap": "skip", "script": "other"}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["overlap"], "skip");
    assert_eq!(v["script"], "other");
    assert_eq!(v["catch_up"], "fire_once");
    let runs = times(&v);
    assert!(
        runs.iter().all(|t| t.timestamp() % (6 * 3600) == 0),
        "{runs:?}"
    );

    let (s, v) = send(&c, Method::PATCH, &path, Some(json!({"enabled": false}))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["enabled"], false);
    assert_eq!(
        v["next_runs"],
        json!([]),
        "a disabled schedule has no next runs"
    );
    let (_, v) = send(&c, Method::PATCH, &path, Some(json!({"enabled": true}))).await;
    assert_eq!(times(&v).len(), 5);

    let (s, _) = send(&c, Method::GET, "/schedules/not-a-uuid", None).await;
    assert_eq!(s, bad);
    let (s, _) = send(&c, Method::DELETE, &path, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = send(&c, Method::GET, &path, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "not_found");
    let (s, _) = send(&c, Method::DELETE, &path, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = send(&c, Method::PATCH, &path, Some(json!({"enabled": true}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    env.cleanup().await;
}

// ------------------------------------------- the firing, on a simulated clock

/// A fixed starting instant, well clear of the real clock.
fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn secs(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

async fn store(env: &TestEnv) -> Store {
    Store::connect(env.config.database_url().unwrap())
        .await
        .expect("test database")
}

async fn deploy(store: &Store, script: &str) {
    store
        .create_version(
            script,
            r#""ok""#,
            "0",
            &Limits::default(),
            &BTreeMap::new(),
            false,
        )
        .await
        .expect("deploy");
}

fn spec(script: &str, cron: &str) -> ScheduleSpec {
    ScheduleSpec {
        script: script.into(),
        cron: cron.into(),
        timezone: "UTC".into(),
        catch_up: CatchUp::FireOnce,
        overlap: Overlap::Allow,
        enabled: true,
        max_attempts: 3,
    }
}

/// A schedule whose first unhandled instant is `next`.
async fn schedule_at(store: &Store, spec: ScheduleSpec, next: DateTime<Utc>) -> ScheduleRow {
    store
        .create_schedule(&spec, Some(next))
        .await
        .expect("create")
}

/// The jobs waiting in the outbox (read in a transaction that is dropped).
async fn outbox_jobs(store: &Store) -> Vec<Job> {
    let claim = store.claim_outbox(100_000).await.expect("outbox");
    claim
        .rows
        .iter()
        .map(|r| serde_json::from_value(r.payload.clone()).expect("a job"))
        .collect()
}

/// Instants fired per schedule, from the outbox.
async fn fired(store: &Store) -> BTreeMap<Uuid, Vec<DateTime<Utc>>> {
    let mut by = BTreeMap::<Uuid, Vec<DateTime<Utc>>>::new();
    for job in outbox_jobs(store).await {
        let schedule = job.schedule_id.expect("a cron job names its schedule");
        let at = job.event.scheduled_at.expect("a cron job has scheduled_at");
        assert_eq!(job.id, cron_event_id(schedule, at));
        assert_eq!(job.event.id, job.id);
        assert_eq!(job.event.kind.as_str(), "cron");
        by.entry(schedule).or_default().push(at);
    }
    for list in by.values_mut() {
        list.sort();
    }
    by
}

/// Fires everything due at `now` (claiming until nothing is left).
async fn fire_all(store: &Store, now: DateTime<Utc>) -> Vec<Action> {
    let mut actions = Vec::new();
    loop {
        let sweep = store.fire_due_schedules(now, 7).await.expect("claim");
        actions.extend(sweep.handled.into_iter().map(|h| h.action));
        if !sweep.again {
            return actions;
        }
    }
}

#[tokio::test]
async fn several_schedulers_on_one_database_fire_each_instant_once() {
    let env = TestEnv::new().await;
    // Three pools, like three managers.
    let mut schedulers = Vec::new();
    for _ in 0..3 {
        schedulers.push(store(&env).await);
    }
    deploy(&schedulers[0], "tick").await;
    let mut ids = Vec::new();
    for i in 0..12 {
        // Every second, and every second second: instants the schedulers
        // reach in different orders.
        let cron = if i % 2 == 0 {
            "* * * * * *"
        } else {
            "*/2 * * * * *"
        };
        ids.push(
            schedule_at(&schedulers[0], spec("tick", cron), t0())
                .await
                .id,
        );
    }
    // 20 simulated seconds; at each, all schedulers claim at once.
    let steps = 20;
    let claimed = Arc::new(std::sync::Mutex::new(Vec::new()));
    for step in 0..steps {
        let now = t0() + secs(step) + TimeDelta::milliseconds(3);
        let mut tasks = Vec::new();
        for s in &schedulers {
            let (s, claimed) = (s.clone(), claimed.clone());
            tasks.push(tokio::spawn(async move {
                for action in fire_all(&s, now).await {
                    claimed.lock().unwrap().push(action);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
    let claimed = claimed.lock().unwrap().clone();
    let mut instants = Vec::new();
    for action in &claimed {
        match action {
            Action::Fired {
                instant, reason, ..
            } => {
                assert_eq!(*reason, PlanReason::Due);
                instants.push(*instant);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Each claim fired a distinct (schedule, instant), and the outbox holds
    // exactly those: every instant of every schedule, once.
    let by = fired(&schedulers[1]).await;
    assert_eq!(by.len(), ids.len());
    let mut total = 0;
    for (i, id) in ids.iter().enumerate() {
        let every = if i % 2 == 0 { 1 } else { 2 };
        let want: Vec<_> = (0..steps)
            .filter(|s| s % every == 0)
            .map(|s| t0() + secs(s))
            .collect();
        assert_eq!(by[id], want, "schedule {i}");
        total += want.len();
    }
    assert_eq!(claimed.len(), total, "no instant claimed twice");
    env.cleanup().await;
}

#[tokio::test]
async fn catch_up_after_every_scheduler_was_down() {
    let env = TestEnv::new().await;
    let s = store(&env).await;
    deploy(&s, "report").await;
    let once = schedule_at(&s, spec("report", "* * * * *"), t0()).await;
    let skip = schedule_at(
        &s,
        ScheduleSpec {
            catch_up: CatchUp::Skip,
            ..spec("report", "* * * * *")
        },
        t0(),
    )
    .await;
    // One late instant fires normally, whatever the policy.
    let late = fire_all(&s, t0() + secs(42)).await;
    assert_eq!(late.len(), 2);
    assert!(late.iter().all(|a| matches!(
        a,
        Action::Fired { instant, reason: PlanReason::Due, .. } if *instant == t0()
    )));

    // Down from 00:01 to 03:27:30: 207 instants missed.
    let back = t0() + TimeDelta::minutes(207) + secs(30);
    let actions = fire_all(&s, back).await;
    assert_eq!(actions.len(), 2);
    let by = fired(&s).await;
    assert_eq!(
        by[&once.id],
        vec![t0(), t0() + TimeDelta::minutes(207)],
        "fire_once: one firing, for the latest missed instant"
    );
    assert_eq!(by[&skip.id], vec![t0()], "skip: none");
    for id in [once.id, skip.id] {
        let row = s.get_schedule(id).await.unwrap().unwrap();
        assert_eq!(row.next_fire_at, Some(t0() + TimeDelta::minutes(208)));
    }
    // Nothing more until the next instant.
    assert!(fire_all(&s, back + secs(20)).await.is_empty());
    env.cleanup().await;
}

#[tokio::test]
async fn disabled_deleted_and_scriptless_schedules_never_fire() {
    let env = TestEnv::new().await;
    let s = store(&env).await;
    deploy(&s, "job").await;
    deploy(&s, "doomed").await;
    let disabled = schedule_at(
        &s,
        ScheduleSpec {
            enabled: false,
            ..spec("job", "* * * * * *")
        },
        t0(),
    )
    .await;
    let deleted = schedule_at(&s, spec("job", "* * * * * *"), t0()).await;
    assert!(s.delete_schedule(deleted.id).await.unwrap());
    let orphan = schedule_at(&s, spec("doomed", "* * * * * *"), t0()).await;
    s.delete_script("doomed").await.unwrap();

    let actions = fire_all(&s, t0() + secs(1)).await;
    assert_eq!(
        actions,
        vec![
            Action::ScriptMissing { instant: t0() },
            Action::ScriptMissing {
                instant: t0() + secs(1)
            }
        ],
        "only the orphan is claimed, and it writes no job"
    );
    assert!(outbox_jobs(&s).await.is_empty());
    let orphan = s.get_schedule(orphan.id).await.unwrap().unwrap();
    assert_eq!(orphan.next_fire_at, Some(t0() + secs(2)));
    assert_eq!(orphan.last_invocation_id, None);

    // Disabling a due schedule stops it before the next claim.
    let live = schedule_at(&s, spec("job", "* * * * * *"), t0() + secs(2)).await;
    let update = s
        .update_schedule(live.id, |row| {
            Ok::<_, ()>(ScheduleChange {
                spec: ScheduleSpec {
                    enabled: false,
                    ..row.spec.clone()
                },
                next_fire_at: row.next_fire_at,
            })
        })
        .await
        .unwrap();
    assert!(matches!(update, Update::Updated(ref r) if !r.spec.enabled));
    let refused = s
        .update_schedule(disabled.id, |_| Err::<ScheduleChange, _>("no"))
        .await
        .unwrap();
    assert!(matches!(refused, Update::Refused("no")));
    assert!(matches!(
        s.update_schedule(deleted.id, |_| Err::<ScheduleChange, _>(()))
            .await
            .unwrap(),
        Update::Missing
    ));
    let later = fire_all(&s, t0() + secs(5)).await;
    assert!(
        later
            .iter()
            .all(|a| matches!(a, Action::ScriptMissing { .. })),
        "{later:?}"
    );
    assert!(outbox_jobs(&s).await.is_empty());
    env.cleanup().await;
}

fn record(id: Uuid, status: &str) -> InvocationRecord {
    serde_json::from_value(json!({
        "id": id, "script": "slow", "version": 1, "trigger": "cron", "status": status,
        "http_status": null, "started_at": t0(), "duration_us": 1, "log": "",
        "error": null, "executor": "test", "trace_id": id,
    }))
    .expect("a record")
}

#[tokio::test]
async fn overlap_skip_waits_for_the_previous_firing_but_not_forever() {
    let env = TestEnv::new().await;
    let s = store(&env).await;
    deploy(&s, "slow").await;
    let sched = schedule_at(
        &s,
        ScheduleSpec {
            overlap: Overlap::Skip,
            ..spec("slow", "* * * * * *")
        },
        t0(),
    )
    .await;
    let fired_at = |actions: &[Action]| -> Vec<DateTime<Utc>> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Fired { instant, .. } => Some(*instant),
                _ => None,
            })
            .collect()
    };
    let first = fire_all(&s, t0()).await;
    assert_eq!(fired_at(&first), vec![t0()]);
    let first_id = cron_event_id(sched.id, t0());

    // No record yet: still running, the next instant passes.
    let second = fire_all(&s, t0() + secs(1)).await;
    assert_eq!(
        second,
        vec![Action::Passed {
            reason: PlanReason::Overlapping
        }]
    );
    // A queued record is still running too.
    s.insert_invocations(&[record(first_id, "queued")])
        .await
        .unwrap();
    assert!(fired_at(&fire_all(&s, t0() + secs(2)).await).is_empty());

    // A final record (a failed attempt is final too) ends it: the next
    // instant fires.
    s.insert_invocations(&[record(first_id, "error")])
        .await
        .unwrap();
    assert_eq!(
        fired_at(&fire_all(&s, t0() + secs(3)).await),
        vec![t0() + secs(3)]
    );

    // The next firing never reports (a dead executor): past its script's
    // wall time plus the grace it no longer blocks the schedule.
    let row = s.get_schedule(sched.id).await.unwrap().unwrap();
    let busy_until = row.busy_until.unwrap();
    assert_eq!(
        busy_until,
        t0() + secs(3)
            + TimeDelta::milliseconds(Limits::default().wall_time_ms as i64)
            + picloud_core::schedule::RUNNING_GRACE
    );
    assert!(fired_at(&fire_all(&s, t0() + secs(4)).await).is_empty());
    let after = busy_until + secs(1);
    let actions = fire_all(&s, after).await;
    // More than the grace behind by then: one catch-up firing.
    assert_eq!(actions.len(), 1);
    assert!(matches!(
        actions[0],
        Action::Fired { reason: PlanReason::CaughtUp, instant, .. } if instant == after
    ));
    env.cleanup().await;
}

//! The store's API without sqlx: notifications through its own type, and
//! stored values no domain type can hold reported as corrupt, naming the
//! column, rather than wrapped into something plausible.

use std::time::Duration;

use picloud_core::{InvocationRecord, InvocationStatus, Trigger};
use picloud_store::{Notice, Notifications, Store, StoreError};
use picloud_testkit::TestEnv;
use uuid::Uuid;

async fn store(env: &TestEnv) -> (Store, sqlx::PgPool) {
    let url = env.config.database_url().expect("test database url");
    let store = Store::connect(url).await.expect("test database");
    // The test's own hands on the database, for what no API may do.
    let raw = sqlx::PgPool::connect(url).await.expect("test database");
    (store, raw)
}

async fn next(n: &mut Notifications) -> Notice {
    tokio::time::timeout(Duration::from_secs(10), n.recv())
        .await
        .expect("a notice within 10 s")
        .expect("the listener reconnects")
}

/// A notification wakes the listener; a dropped connection is reported
/// once (so the relay and the schedulers sweep), and the next `recv`
/// listens again by itself.
#[tokio::test]
async fn notifications_report_a_lost_connection_then_listen_again() {
    let env = TestEnv::new().await;
    let (store, raw) = store(&env).await;
    for channel in ["picloud_outbox", "picloud_schedules"] {
        let mut n = match channel {
            "picloud_outbox" => store.outbox_notifications().await.unwrap(),
            _ => store.schedule_notifications().await.unwrap(),
        };
        let notify = || {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(channel)
                .execute(&raw)
        };
        notify().await.unwrap();
        assert_eq!(next(&mut n).await, Notice::Notified, "{channel}");

        // Whoever holds the listening connection loses it.
        let ended: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND query LIKE 'LISTEN%' || $1 || '%'",
        )
        .bind(channel)
        .fetch_all(&raw)
        .await
        .unwrap();
        assert_eq!(ended, [true], "{channel}: one listening connection");
        assert_eq!(next(&mut n).await, Notice::Lost, "{channel}");

        // Listening again: the next notification arrives.
        let woke = tokio::spawn(async move { next(&mut n).await });
        // The reconnect races the notify: send until it lands.
        for _ in 0..100 {
            if woke.is_finished() {
                break;
            }
            notify().await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(woke.await.unwrap(), Notice::Notified, "{channel}");
    }
    raw.close().await;
    store.close().await;
    env.cleanup().await;
}

/// A negative number where the domain holds an unsigned one, or a status
/// no version knows, is `Corrupt` with the column's name: before, a
/// negative duration read back as 18 trillion years of microseconds.
#[tokio::test]
async fn values_no_domain_type_holds_are_corrupt_and_name_their_column() {
    let env = TestEnv::new().await;
    let (store, raw) = store(&env).await;
    let record = InvocationRecord {
        id: Uuid::now_v7(),
        script: "rows".into(),
        version: 1,
        trigger: Trigger::Http,
        status: InvocationStatus::Ok,
        http_status: Some(200),
        started_at: chrono::Utc::now(),
        duration_us: 42,
        log: String::new(),
        error: None,
        executor: "e1".into(),
        trace_id: Uuid::new_v4(),
        attempt: 1,
        parent_id: None,
        response: None,
        public: false,
    };
    store
        .insert_invocations(std::slice::from_ref(&record))
        .await
        .unwrap();
    let stored = store.get_invocation(record.id).await.unwrap().unwrap();
    assert_eq!(stored.duration_us, 42);

    for (set, column) in [
        ("duration_us = -5", "duration_us"),
        ("http_status = 70000", "http_status"),
        ("version = -1", "version"),
        ("status = 'melted'", "status"),
    ] {
        sqlx::query(
            "UPDATE invocations SET duration_us = 42, http_status = 200, version = 1,
                                    status = 'ok' WHERE id = $1",
        )
        .bind(record.id)
        .execute(&raw)
        .await
        .unwrap();
        sqlx::query(&format!("UPDATE invocations SET {set} WHERE id = $1"))
            .bind(record.id)
            .execute(&raw)
            .await
            .unwrap();
        match store.get_invocation(record.id).await {
            Err(e @ StoreError::Corrupt(_)) => {
                let text = e.to_string();
                assert!(text.contains(column), "{set}: {text}");
                assert!(e.is_permanent(), "{set}");
            }
            other => panic!("{set}: {other:?}"),
        }
    }
    raw.close().await;
    store.close().await;
    env.cleanup().await;
}

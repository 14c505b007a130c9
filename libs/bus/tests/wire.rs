//! Messages as wire version 1 wrote them (byte fixtures committed in
//! `fixtures/wire-v1/`, some from releases before optional fields were
//! added) still decode; and a live bus serves a request without the
//! version header (an older sender) but drops one from a newer release.

use std::time::Duration;

use picloud_bus::Bus;
use picloud_bus::wire::{
    AsyncAnswer, CommitReply, EventMessage, InvocationRequest, Job, KvAnswer, KvEntry, KvGet,
    KvGetCall, Rpc, SecretAsk, VERSION_HEADER, WIRE_VERSION,
};
use picloud_core::{Chain, Trigger};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn fixture<T: DeserializeOwned>(name: &str) -> (T, serde_json::Value) {
    let path = format!(
        "{}/tests/fixtures/wire-v1/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    (
        value,
        serde_json::from_slice(&bytes).expect("fixtures are JSON"),
    )
}

/// Decodes `name` and checks that encoding it again gives the same JSON:
/// a field renamed or a representation changed fails here.
fn round_trip<T: DeserializeOwned + Serialize>(name: &str) -> T {
    let (value, json): (T, _) = fixture(name);
    assert_eq!(
        serde_json::to_value(&value).unwrap(),
        json,
        "{name} no longer encodes as version 1 did"
    );
    value
}

#[test]
fn version_one_messages_still_decode() {
    let job: Job = round_trip("job.json");
    assert_eq!(job.script, "hello");
    assert!(job.public);
    assert_eq!(job.request.as_ref().map(|r| r.body.as_str()), Some("hi"));

    // A job from before `public` and `chain`: their defaults.
    let (old, _): (Job, _) = fixture("job-before-chain.json");
    assert_eq!(old.trigger(), Trigger::Event);
    assert_eq!((old.public, old.chain), (false, Chain::default()));
    assert_eq!(old.max_attempts, 5);
    assert!(old.parent_id.is_some() && old.subscription_id.is_some());

    let (event, _): (EventMessage, _) = fixture("event-before-hop.json");
    assert_eq!((event.topic.as_str(), event.hop), ("orders.created", 0));

    let req: InvocationRequest = round_trip("invocation-request.json");
    assert_eq!((req.script.as_str(), req.version), ("hello", 4));

    let reply: CommitReply = round_trip("commit-reply.json");
    assert_eq!(
        reply,
        CommitReply::Failed {
            message: "database unavailable".into()
        }
    );
    let get: KvGet = round_trip("kv-get.json");
    assert_eq!((get.script.as_str(), get.key.as_str()), ("counter", "hits"));
    let answer: KvAnswer<Option<KvEntry>> = round_trip("kv-answer.json");
    assert!(matches!(
        answer,
        KvAnswer::Ok(Some(KvEntry { version: 7, .. }))
    ));
    let accepted: AsyncAnswer = round_trip("async-answer.json");
    assert!(matches!(
        accepted,
        AsyncAnswer::Accepted {
            existing: false,
            ..
        }
    ));
    let ask: SecretAsk = round_trip("secret-ask.json");
    assert_eq!(ask.name, "api_key");
}

/// A server built with [`Bus::serve_rpc`] answers a header-less request (a
/// sender before the version header) and never sees one marked with a
/// newer version; the request after it is answered, so the drop is seen
/// by order, not by waiting.
#[tokio::test]
async fn requests_without_version_are_served_and_newer_ones_dropped() {
    use futures::StreamExt;
    let url = std::env::var("PICLOUD_TEST_NATS_URL").unwrap_or("nats://127.0.0.1:4222".into());
    let prefix = format!("w{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let bus = Bus::connect(&url, &prefix, "test").await.unwrap();
    let mut served = Box::pin(bus.serve_rpc::<KvGetCall>().await.unwrap());
    let server = bus.clone();
    let seen = tokio::spawn(async move {
        let mut keys = Vec::new();
        while let Some(mut req) = served.next().await {
            let key = req.take_body().key;
            let done = key == "last";
            keys.push(key);
            server
                .answer::<KvGetCall>(&req, &KvAnswer::Ok(None))
                .await
                .unwrap();
            if done {
                return keys;
            }
        }
        keys
    });
    let client = async_nats::connect(&url).await.unwrap();
    let subject = KvGetCall::subject(
        bus.names(),
        &KvGet {
            script: "s".into(),
            key: String::new(),
        },
    );
    let (old, _): (KvGet, _) = fixture("kv-get.json");
    let reply = client
        .request(subject.clone(), serde_json::to_vec(&old).unwrap().into())
        .await
        .expect("a header-less (version 1) request is answered");
    let reply: KvAnswer<Option<KvEntry>> = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply, KvAnswer::Ok(None));

    let mut newer = async_nats::HeaderMap::new();
    newer.insert(VERSION_HEADER, (WIRE_VERSION + 1).to_string().as_str());
    let future = KvGet {
        script: "s".into(),
        key: "from-the-future".into(),
    };
    client
        .publish_with_headers(
            subject.clone(),
            newer,
            serde_json::to_vec(&future).unwrap().into(),
        )
        .await
        .unwrap();
    let last = KvGet {
        script: "s".into(),
        key: "last".into(),
    };
    // From the same connection, so it reaches the server after the newer
    // one.
    let reply = client
        .request(subject.clone(), serde_json::to_vec(&last).unwrap().into())
        .await
        .unwrap();
    let reply: KvAnswer<Option<KvEntry>> = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply, KvAnswer::Ok(None));

    let keys = tokio::time::timeout(Duration::from_secs(5), seen)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(keys, ["hits", "last"]);

    let js = async_nats::jetstream::new(client);
    for stream in bus.names().all_streams() {
        let _ = js.delete_stream(stream).await;
    }
}

/// The one version gate: no header or an older version reads, a newer or
/// unreadable version is refused with the subject and the version it saw.
#[test]
fn the_version_gate_refuses_newer_messages() {
    use picloud_bus::BusError;
    use picloud_bus::wire::{check, read};
    let with = |v: &str| {
        let mut h = async_nats::HeaderMap::new();
        h.insert(VERSION_HEADER, v);
        h
    };
    assert!(check("s", None).is_ok());
    assert!(check("s", Some(&with("1"))).is_ok());
    let newer = (WIRE_VERSION + 1).to_string();
    match check("a.subject", Some(&with(&newer))) {
        Err(BusError::Newer { subject, version }) => {
            assert_eq!(
                (subject.as_str(), version),
                ("a.subject", Some(WIRE_VERSION + 1))
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        check("s", Some(&with("two"))),
        Err(BusError::Newer { version: None, .. })
    ));
    let ask: SecretAsk = read("s", None, br#"{"name":"k"}"#).unwrap();
    assert_eq!(ask.name, "k");
    // A newer message is refused before its payload is looked at.
    assert!(matches!(
        read::<SecretAsk>("s", Some(&with(&newer)), br#"{"name":"k"}"#),
        Err(BusError::Newer { .. })
    ));
    assert!(matches!(
        read::<SecretAsk>("s", None, b"not json"),
        Err(BusError::Decode { .. })
    ));
}

fn nats_url() -> String {
    std::env::var("PICLOUD_TEST_NATS_URL").unwrap_or("nats://127.0.0.1:4222".into())
}

async fn test_bus() -> (Bus, async_nats::Client) {
    let prefix = format!("w{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let bus = Bus::connect(&nats_url(), &prefix, "test").await.unwrap();
    (bus, async_nats::connect(&nats_url()).await.unwrap())
}

async fn drop_streams(bus: &Bus, client: async_nats::Client) {
    let js = async_nats::jetstream::new(client);
    for stream in bus.names().all_streams() {
        let _ = js.delete_stream(stream).await;
    }
}

fn newer_headers() -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert(VERSION_HEADER, (WIRE_VERSION + 1).to_string().as_str());
    h
}

/// A reply from a newer release is an error for the caller, not misread.
#[tokio::test]
async fn a_reply_of_a_newer_version_is_an_error() {
    use futures::StreamExt;
    use picloud_bus::{BusError, CallError};
    let (bus, client) = test_bus().await;
    let subject = KvGetCall::serve_subject(bus.names());
    let mut requests = client.subscribe(subject).await.unwrap();
    let responder = client.clone();
    let serve = tokio::spawn(async move {
        let mut n = 0;
        while let Some(req) = requests.next().await {
            let body = serde_json::to_vec(&KvAnswer::<Option<KvEntry>>::Ok(None)).unwrap();
            let reply = req.reply.unwrap();
            // The first reply is current, the second from the future.
            let headers = if n == 0 {
                picloud_bus::wire::headers()
            } else {
                newer_headers()
            };
            responder
                .publish_with_headers(reply, headers, body.into())
                .await
                .unwrap();
            responder.flush().await.unwrap();
            n += 1;
        }
    });
    let ask = KvGet {
        script: "s".into(),
        key: "k".into(),
    };
    let timeout = Duration::from_secs(5);
    // The subscription lives on another connection: a flush there does not
    // mean the server has registered it for the bus's connection yet, so
    // ask until someone answers (a request nobody heard is not counted).
    let deadline = tokio::time::Instant::now() + timeout;
    let answer = loop {
        match bus.request::<KvGetCall>(&ask, timeout).await {
            Err(CallError::NoResponders) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => break other.unwrap(),
        }
    };
    assert_eq!(answer, KvAnswer::Ok(None));
    match bus.request::<KvGetCall>(&ask, timeout).await {
        Err(CallError::Bus(BusError::Newer { version, .. })) => {
            assert_eq!(version, Some(WIRE_VERSION + 1));
        }
        other => panic!("{other:?}"),
    }
    serve.abort();
    drop_streams(&bus, client).await;
}

/// A live-log message of a newer version reaches a follower as no events
/// (its position still counts), and the next message is read.
#[tokio::test]
async fn a_live_log_message_of_a_newer_version_is_skipped() {
    use futures::StreamExt;
    let (bus, client) = test_bus().await;
    let js = async_nats::jetstream::new(client.clone());
    let subject = bus.names().logs_subject("s");
    let mut follow = Box::pin(
        bus.follow_logs(
            "s",
            Some(picloud_bus::LogCursor {
                seq: 0,
                index: None,
            }),
        )
        .await
        .unwrap(),
    );
    let line = |text: &str| {
        serde_json::json!([{"type": "line", "invocation": uuid::Uuid::nil(), "attempt": 1,
            "at": "2026-12-02T10:00:00Z", "level": "info", "line": text}])
        .to_string()
    };
    js.publish_with_headers(subject.clone(), newer_headers(), line("future").into())
        .await
        .unwrap()
        .await
        .unwrap();
    js.publish_with_headers(subject, picloud_bus::wire::headers(), line("now").into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut batches = Vec::new();
    while batches.len() < 2 {
        let batch = tokio::time::timeout(Duration::from_secs(10), follow.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        batches.push(batch);
    }
    let (first, second) = (&batches[0], &batches[1]);
    assert!(first.is_empty(), "{first:?}");
    assert_eq!(second.seq, first.seq + 1);
    assert_eq!(second.len(), 1);
    assert!(format!("{:?}", second.event(0).unwrap()).contains("\"now\""));
    drop(follow);
    drop_streams(&bus, client).await;
}

/// A record batch of a newer version is neither stored nor acked: it is
/// left for a manager of that release.
#[tokio::test]
async fn a_record_batch_of_a_newer_version_is_left_unacked() {
    let (bus, client) = test_bus().await;
    let js = async_nats::jetstream::new(client.clone());
    let subject = bus.names().records_subject();
    let record = |n: u64| {
        serde_json::json!([{"i": uuid::Uuid::now_v7(), "s": "s", "v": 1, "k": "http",
            "st": "ok", "t": 1_790_000_000_000_000i64, "d": n, "x": "e", "a": 1}])
        .to_string()
    };
    js.publish_with_headers(subject.clone(), newer_headers(), record(1).into())
        .await
        .unwrap()
        .await
        .unwrap();
    js.publish_with_headers(subject, picloud_bus::wire::headers(), record(2).into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut consumer = bus.record_consumer().await.unwrap();
    let mut seen = Vec::new();
    while seen.is_empty() {
        let batch = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.extend(batch.records.iter().map(|r| r.duration_us));
        batch.ack().await.unwrap();
    }
    assert_eq!(seen, [2]);
    let mut stream = js.get_stream(bus.names().records_stream()).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    // The current batch is acked away (work queue); the newer one stays.
    assert_eq!(state.messages, 1, "{state:?}");
    drop(consumer);
    drop_streams(&bus, client).await;
}

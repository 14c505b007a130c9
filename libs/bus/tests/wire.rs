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

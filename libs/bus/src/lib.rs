//! The bus: PiCloud's use of NATS.
//!
//! This crate is the only one that names subjects, streams and buckets
//! ([`names::Names`]), and the only one that speaks `async-nats`. The roles
//! talk through [`Bus`]:
//!
//! - **Routes** (`{P}_ROUTES` KV bucket): script name → active version, its
//!   wall-time limit and its custom HTTP routes. The manager writes;
//!   gateways watch and cache.
//! - **Versions** (`{P}_VERSIONS` KV bucket): (name, version) → source,
//!   resolved limits and pinned modules; also every shared-module version. Immutable once written. Executors read on a cache miss;
//!   no role but the manager ever touches Postgres.
//! - **Sync invocations**: core NATS request/reply on `{p}.invoke.{name}`
//!   with the executors' queue group, so a missing executor is an instant
//!   "no responders" instead of a timeout (see docs/PERFORMANCE.md for why not
//!   JetStream on this path).
//! - **Invocation records** (`{P}_RECORDS` work-queue stream): executors
//!   publish batches; managers consume with one shared durable consumer.
//! - **Live logs** (`{P}_LOGS`, limits retention, `{p}.logs.{script}`):
//!   executors publish batches of log events; followers read with ordered
//!   consumers (see [`LogCursor`]).
//! - **Jobs and events** (`{P}_JOBS`, `{P}_EVENTS`) and the request/reply
//!   calls to managers (kv, commits, dead letters, async submissions): see
//!   [`jobs`].
//! - **Nodes** (`{p}.nodes.ping`, `{p}.nodes.announce`): who is running,
//!   asked on demand; see [`nodes`].
//!
//! Every message and its subject, payload and reply types, with the wire
//! version: [`wire`].

#![forbid(unsafe_code)]

mod connect;
mod jobs;
mod logs;
pub mod names;
pub mod nodes;
pub mod permissions;
mod queued;
mod records;
mod retry;
pub mod wire;

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use picloud_core::config::NatsSettings;
use picloud_core::{InvocationReply, InvocationRequest, Limits};
use serde::{Deserialize, Serialize};

pub use jobs::{CallError, Incoming, IncomingJob, JobConsumer};
pub use logs::{LogBatch, LogCursor};
pub use names::Names;
pub use nodes::{NodeAnnouncement, NodeInfo, NodeSpec, WorkerCounts};
pub use queued::QueuedJob;
pub use records::{RecordBatch, RecordBatchBuf, RecordConsumer};
pub use retry::pause_or_stop;
pub use wire::{Rpc, SecretAnswer, SecretAsk};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("PICLOUD_NATS_URL is required for the {0} role")]
    NoUrl(String),
    #[error("cannot connect to NATS at {url}: {source}{}", connect::hint(source))]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("NATS settings: {0}")]
    Settings(String),
    #[error("NATS JetStream {what}: {source}")]
    JetStream {
        what: &'static str,
        source: async_nats::Error,
    },
    #[error("NATS {what}: {source}")]
    Nats {
        what: &'static str,
        source: async_nats::Error,
    },
    #[error("malformed message on {subject}: {source}")]
    Decode {
        subject: String,
        source: serde_json::Error,
    },
    /// Written by a newer release (`version`: its wire version, `None` when
    /// the header is unreadable); see [`wire::read`].
    #[error(
        "message on {subject} is of wire version {}, newer than this build reads ({}): upgrade this node",
        version.map_or_else(|| "?".to_owned(), |v| v.to_string()),
        wire::WIRE_VERSION
    )]
    Newer {
        subject: String,
        version: Option<u32>,
    },
    /// Not tried: an earlier publish of the same batch could not be sent
    /// (its error).
    #[error("not sent, as an earlier publish of its batch could not be: {0}")]
    Unsent(String),
}

impl BusError {
    fn js(what: &'static str) -> impl FnOnce(async_nats::Error) -> Self {
        move |source| BusError::JetStream { what, source }
    }
}

/// Why a sync invocation got no reply.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("no executor is listening")]
    NoExecutor,
    #[error("no reply before the deadline")]
    TimedOut,
    #[error("the invocation is larger than the bus accepts ({0} bytes)")]
    TooLarge(usize),
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// What the gateway knows about a script: enough to route and to set the
/// caller's deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub script: String,
    pub version: u32,
    pub wall_time_ms: u64,
    /// Async jobs keep the caller's credential headers (see
    /// `picloud_core::CREDENTIAL_HEADERS`); absent in older routes: false.
    #[serde(default)]
    pub keep_credentials: bool,
    /// The version's custom HTTP routes (`GET /users/:id`), as stored;
    /// every gateway builds its route matcher from these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_routes: Vec<String>,
}

/// One immutable script version, as executors need it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionDoc {
    pub script: String,
    pub version: u32,
    pub source: String,
    pub limits: Limits,
    /// Pinned module versions (the whole import closure).
    #[serde(default)]
    pub modules: BTreeMap<String, u32>,
}

/// One immutable shared-module version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleDoc {
    pub module: String,
    pub version: u32,
    pub source: String,
}

/// A change to the route table, as a watcher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteChange {
    Put(Route),
    Deleted(String),
}

/// An invocation an executor has received, with where to reply.
pub struct IncomingInvocation {
    pub request: InvocationRequest,
    reply_to: Option<async_nats::Subject>,
}

#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
    names: Names,
    routes: kv::Store,
    versions: kv::Store,
}

impl Bus {
    /// Connects and makes sure every stream and bucket exists (idempotent, so
    /// any role may start first). `role` names the connection in NATS
    /// monitoring.
    pub async fn connect(url: &str, prefix: &str, role: &str) -> Result<Self, BusError> {
        Self::connect_with(url, prefix, role, &NatsSettings::default()).await
    }

    /// [`connect`](Self::connect) as the user, with the TLS files and the
    /// stream replicas of `settings`. Replies come to an inbox of the
    /// role's own (`_INBOX.{prefix}.{role}.…`), so NATS permissions can keep
    /// one role from reading another's answers (a secret's value, say).
    pub async fn connect_with(
        url: &str,
        prefix: &str,
        role: &str,
        settings: &NatsSettings,
    ) -> Result<Self, BusError> {
        let (address, options) = connect::options(url, prefix, role, settings)?;
        // A cluster is a comma-separated list of its nodes' URLs: the client
        // connects to any one that answers and reconnects to the others
        // (and to those the servers announce).
        let nodes: Vec<String> = address.split(',').map(str::to_owned).collect();
        let client =
            options
                .connect(nodes.as_slice())
                .await
                .map_err(|source| BusError::Connect {
                    url: address.clone(),
                    source,
                })?;
        let replicas = connect::replicas(settings.replicas, &client.server_info());
        let js = jetstream::new(client.clone());
        let names = Names::new(prefix);
        let routes = ensure_bucket(&js, names.routes_bucket(), replicas).await?;
        let versions = ensure_bucket(&js, names.versions_bucket(), replicas).await?;
        records::ensure_stream(&js, &names, replicas).await?;
        logs::ensure_stream(&js, &names, replicas).await?;
        jobs::ensure_streams(&js, &names, replicas).await?;
        Ok(Self {
            client,
            js,
            names,
            routes,
            versions,
        })
    }

    /// Connects as `role` to the configured NATS (`PICLOUD_NATS_URL`) with
    /// the configured prefix.
    pub async fn for_role(config: &picloud_core::Config, role: &str) -> Result<Self, BusError> {
        let url = config
            .nats_url()
            .ok_or_else(|| BusError::NoUrl(role.to_owned()))?;
        Self::connect_with(url, &config.prefix, role, &config.nats).await
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// True while the connection to NATS is up.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Largest message the server accepts.
    pub fn max_payload(&self) -> usize {
        // An atomic read; `server_info()` would clone the whole info.
        self.client.max_payload()
    }

    // ---- routes -------------------------------------------------------

    pub async fn put_route(&self, route: &Route) -> Result<(), BusError> {
        kv_put(
            &self.routes,
            Names::route_key(&route.script),
            route,
            "route put",
        )
        .await
    }

    pub async fn delete_route(&self, script: &str) -> Result<(), BusError> {
        self.routes
            .delete(Names::route_key(script))
            .await
            .map_err(|e| BusError::js("route delete")(e.into()))
    }

    /// The authoritative current route (a direct read, not the cache).
    pub async fn get_route(&self, script: &str) -> Result<Option<Route>, BusError> {
        kv_get(&self.routes, Names::route_key(script), "route get").await
    }

    /// The scripts that currently have a route.
    pub async fn route_names(&self) -> Result<Vec<String>, BusError> {
        let keys = self.keys(&self.routes, "route keys").await?;
        Ok(keys
            .iter()
            .map(|k| Names::script_of_route_key(k).to_owned())
            .collect())
    }

    /// Every (script, version) in the version bucket.
    pub async fn version_keys(&self) -> Result<Vec<(String, u32)>, BusError> {
        let keys = self.keys(&self.versions, "version keys").await?;
        Ok(keys
            .iter()
            .filter_map(|k| Names::parse_version_key(k))
            .collect())
    }

    async fn keys(&self, store: &kv::Store, what: &'static str) -> Result<Vec<String>, BusError> {
        let mut keys = store
            .keys()
            .await
            .map_err(|e| BusError::js(what)(e.into()))?;
        let mut out = Vec::new();
        while let Some(k) = keys.next().await {
            out.push(k.map_err(|e| BusError::js(what)(e.into()))?);
        }
        Ok(out)
    }

    /// Every current route, then every change, for as long as the stream is
    /// polled. Reconnects are handled by the ordered consumer underneath.
    pub async fn watch_routes(
        &self,
    ) -> Result<impl Stream<Item = Result<RouteChange, BusError>> + use<>, BusError> {
        let watch = self
            .routes
            .watch_with_history(">")
            .await
            .map_err(|e| BusError::js("route watch")(e.into()))?;
        Ok(watch.map(|entry| {
            let entry = entry.map_err(|e| BusError::js("route watch")(e.into()))?;
            match entry.operation {
                kv::Operation::Put => decode(&entry.key, &entry.value).map(RouteChange::Put),
                kv::Operation::Delete | kv::Operation::Purge => Ok(RouteChange::Deleted(
                    Names::script_of_route_key(&entry.key).to_owned(),
                )),
            }
        }))
    }

    // ---- versions -----------------------------------------------------

    pub async fn put_version(&self, doc: &VersionDoc) -> Result<(), BusError> {
        kv_put(
            &self.versions,
            Names::version_key(&doc.script, doc.version),
            doc,
            "version put",
        )
        .await
    }

    pub async fn get_version(
        &self,
        script: &str,
        version: u32,
    ) -> Result<Option<VersionDoc>, BusError> {
        kv_get(
            &self.versions,
            Names::version_key(script, version),
            "version get",
        )
        .await
    }

    pub async fn put_module(&self, doc: &ModuleDoc) -> Result<(), BusError> {
        kv_put(
            &self.versions,
            Names::module_key(&doc.module, doc.version),
            doc,
            "module put",
        )
        .await
    }

    pub async fn get_module(
        &self,
        module: &str,
        version: u32,
    ) -> Result<Option<ModuleDoc>, BusError> {
        kv_get(
            &self.versions,
            Names::module_key(module, version),
            "module get",
        )
        .await
    }

    /// Forgets every version of a deleted script.
    pub async fn purge_versions(&self, script: &str, versions: &[u32]) -> Result<(), BusError> {
        for v in versions {
            self.versions
                .purge(Names::version_key(script, *v))
                .await
                .map_err(|e| BusError::js("version purge")(e.into()))?;
        }
        Ok(())
    }

    // ---- sync invocations ---------------------------------------------

    /// Sends `req` to one executor and waits up to `timeout` for its reply.
    pub async fn invoke(
        &self,
        req: &InvocationRequest,
        timeout: Duration,
    ) -> Result<InvocationReply, InvokeError> {
        self.request::<wire::InvokeCall>(req, timeout)
            .await
            .map_err(|e| match e {
                CallError::NoResponders => InvokeError::NoExecutor,
                CallError::TimedOut => InvokeError::TimedOut,
                CallError::TooLarge(n) => InvokeError::TooLarge(n),
                CallError::Bus(e) => InvokeError::Bus(e),
            })
    }

    /// Joins the executors' queue group: each invocation reaches exactly one
    /// member. Malformed messages are logged and skipped.
    pub async fn serve_invocations(
        &self,
    ) -> Result<impl Stream<Item = IncomingInvocation> + use<>, BusError> {
        let invocations = self.queue_decoded::<wire::InvokeCall>().await?;
        Ok(invocations.map(|(request, reply_to)| IncomingInvocation { request, reply_to }))
    }

    /// Answers an invocation. A reply larger than the server accepts is
    /// replaced by an error reply, so the caller is never left waiting.
    pub async fn reply(
        &self,
        incoming: &IncomingInvocation,
        reply: &InvocationReply,
    ) -> Result<(), BusError> {
        let mut payload = encode(reply);
        if payload.len() > self.max_payload() {
            payload = encode(&InvocationReply {
                id: reply.id,
                outcome: picloud_core::Outcome::LimitExceeded {
                    message: "response too large for the message bus".into(),
                },
            });
        }
        self.reply_to(incoming.reply_to.as_ref(), payload).await
    }

    /// Publishes `payload` to a request's reply subject, if it has one.
    pub(crate) async fn reply_to(
        &self,
        to: Option<&async_nats::Subject>,
        payload: Bytes,
    ) -> Result<(), BusError> {
        let Some(to) = to else { return Ok(()) };
        self.client
            .publish_with_headers(to.clone(), wire::headers(), payload)
            .await
            .map_err(|e| BusError::Nats {
                what: "reply",
                source: e.into(),
            })
    }

    // ---- secrets ------------------------------------------------------------

    /// Asks a manager for a secret's value. `Ok(None)`: no such secret.
    pub async fn get_secret(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<String>, String> {
        let ask = SecretAsk {
            name: name.to_owned(),
        };
        let answer = self
            .request::<wire::SecretCall>(&ask, timeout)
            .await
            .map_err(|e| match e {
                CallError::NoResponders => "no manager is available to serve secrets".to_string(),
                CallError::TimedOut => "timed out fetching the secret".into(),
                CallError::Bus(BusError::Decode { .. }) => "malformed secret answer".into(),
                CallError::Bus(BusError::Newer { .. }) => {
                    "the secret's answer is from a newer release".into()
                }
                _ => "the message bus is unavailable".into(),
            })?;
        match answer.error {
            Some(e) => Err(e),
            None => Ok(answer.value),
        }
    }

    // ---- records --------------------------------------------------------

    /// Publishes a batch of invocation records (a JSON array, as
    /// [`RecordBatchBuf`] builds it) and waits for JetStream's ack.
    pub async fn publish_records(&self, batch: Bytes) -> Result<(), BusError> {
        records::publish(&self.js, &self.names, batch).await
    }

    /// The managers' shared consumer of invocation records.
    pub async fn record_consumer(&self) -> Result<RecordConsumer, BusError> {
        RecordConsumer::open(&self.js, &self.names).await
    }

    // ---- live logs ------------------------------------------------------

    /// Sends a batch of `script`'s log events (a JSON array of
    /// [`picloud_core::LogEvent`]); the returned future waits for
    /// JetStream's ack, so several batches can be in flight at once.
    pub async fn publish_logs(
        &self,
        script: &str,
        batch: Bytes,
    ) -> Result<impl Future<Output = Result<(), BusError>> + Send + use<>, BusError> {
        logs::publish(&self.js, &self.names, script, batch).await
    }

    /// Every message of `script`'s live log after `after` (`None`: from
    /// now on), in order, until the stream is dropped.
    pub async fn follow_logs(
        &self,
        script: &str,
        after: Option<LogCursor>,
    ) -> Result<impl Stream<Item = Result<LogBatch, BusError>> + use<>, BusError> {
        logs::follow(&self.js, &self.names, script, after).await
    }

    /// The stream sequence of `script`'s newest live-log message (0: none).
    pub async fn last_log_seq(&self, script: &str) -> Result<u64, BusError> {
        logs::last_seq(&self.js, &self.names, script).await
    }

    /// The last `limit` events of `script`'s live log, oldest first, and the
    /// position a follower continues from.
    pub async fn recent_logs(
        &self,
        script: &str,
        limit: usize,
    ) -> Result<(Vec<(LogCursor, picloud_core::LogEvent)>, LogCursor), BusError> {
        logs::recent(&self.js, &self.names, script, limit.max(1)).await
    }

    /// Flushes buffered outgoing messages, waiting at most 2 s (a flush on
    /// a lost connection would otherwise wait for the reconnect, forever if
    /// the server is gone).
    pub async fn flush(&self) -> Result<(), BusError> {
        let flushed = tokio::time::timeout(Duration::from_secs(2), self.client.flush())
            .await
            .map_err(|_| BusError::Nats {
                what: "flush",
                source: "timed out".into(),
            })?;
        flushed.map_err(|e| BusError::Nats {
            what: "flush",
            source: e.into(),
        })
    }
}

/// Puts a JSON document under `key`.
async fn kv_put<T: Serialize>(
    store: &kv::Store,
    key: String,
    doc: &T,
    what: &'static str,
) -> Result<(), BusError> {
    store
        .put(key, encode(doc))
        .await
        .map_err(|e| BusError::js(what)(e.into()))?;
    Ok(())
}

/// Reads the JSON document under `key`, `None` when there is none.
async fn kv_get<T: for<'de> Deserialize<'de>>(
    store: &kv::Store,
    key: String,
    what: &'static str,
) -> Result<Option<T>, BusError> {
    match store.get(key.clone()).await {
        Ok(Some(bytes)) => decode(&key, &bytes).map(Some),
        Ok(None) => Ok(None),
        Err(e) => Err(BusError::js(what)(e.into())),
    }
}

/// `url` without its user and password, and those apart.
pub(crate) fn split_credentials(url: &str) -> (String, Option<(String, String)>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), None);
    };
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return (url.to_owned(), None);
    };
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let address = if path.is_empty() {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}/{path}")
    };
    (address, Some((user.to_owned(), password.to_owned())))
}

/// Opens a KV bucket, creating it if needed.
///
/// `get_or_create_stream`, for a stream other nodes may be making at the
/// same moment (managers starting together): the server can refuse the
/// second create while the first is under way (nats-server 2.9 answers
/// "subjects overlap with an existing stream", the one being made), so a
/// refused create looks the stream up again, a few times, before its
/// error counts. A real conflict (another stream owns the subjects) still
/// fails: no stream of this name appears.
pub(crate) async fn stream_made(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, async_nats::Error> {
    let name = config.name.clone();
    let refused = match js.get_or_create_stream(config).await {
        Ok(stream) => return Ok(stream),
        Err(e) => e,
    };
    for pause_ms in [20, 50, 100, 200, 400] {
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        if let Ok(stream) = js.get_stream(&name).await {
            return Ok(stream);
        }
    }
    Err(refused.into())
}

/// `create_key_value` first asks for account info, which async-nats cannot
/// parse from a 2.9 server (it expects fields 2.10 added); so the bucket's
/// stream is created here by hand, with the KV conventions (`KV_` name,
/// `$KV.<bucket>.>` subjects, rollups, direct get, one value per key).
async fn ensure_bucket(
    js: &jetstream::Context,
    bucket: String,
    replicas: usize,
) -> Result<kv::Store, BusError> {
    if let Ok(store) = js.get_key_value(&bucket).await {
        return Ok(store);
    }
    stream_made(
        js,
        stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            num_replicas: replicas,
            ..Default::default()
        },
    )
    .await
    .map_err(BusError::js("create bucket"))?;
    js.get_key_value(&bucket)
        .await
        .map_err(|e| BusError::js("open bucket")(e.into()))
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Bytes {
    // Serialising our own plain data types cannot fail.
    Bytes::from(serde_json::to_vec(value).expect("bus messages serialise"))
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(
    subject: &str,
    bytes: &[u8],
) -> Result<T, BusError> {
    serde_json::from_slice(bytes).map_err(|source| BusError::Decode {
        subject: subject.to_owned(),
        source,
    })
}

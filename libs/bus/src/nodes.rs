//! Who is running: every role instance answers `{p}.nodes.ping` with a
//! [`NodeInfo`], and announces itself on `{p}.nodes.announce` when it
//! starts and when it stops. Nothing is sent while nobody asks: a ping is a
//! core NATS request whose replies are gathered for a short window
//! ([`Bus::gather_nodes`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use picloud_core::Shutdown;
use serde::{Deserialize, Serialize};

use crate::{BusError, encode};

/// One running role instance, as it describes itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `{host}-{pid}-{nonce}`: unique per role instance.
    pub id: String,
    /// `manager`, `gateway` or `executor`.
    pub role: String,
    pub version: String,
    /// Where its HTTP listener is (as configured).
    pub address: String,
    /// Seconds since the epoch when its process started.
    pub started_at_unix: i64,
    pub uptime_seconds: u64,
    /// Executors: worker threads, and how many run a script now.
    #[serde(default)]
    pub workers: Option<u64>,
    #[serde(default)]
    pub workers_busy: Option<u64>,
    /// The host's one-minute load average.
    #[serde(default)]
    pub load1: Option<f64>,
    /// The process's resident memory.
    #[serde(default)]
    pub rss_bytes: Option<u64>,
}

/// What a node says on `{p}.nodes.announce`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeAnnouncement {
    /// `up` or `down`.
    pub event: String,
    pub node: NodeInfo,
}

/// An executor's workers and how many are busy, read on each ping.
pub type WorkerCounts = Arc<dyn Fn() -> (u64, u64) + Send + Sync>;

/// What a role says about itself (the rest is read at each ping).
pub struct NodeSpec {
    /// `manager`, `gateway` or `executor`.
    pub role: &'static str,
    /// Its id, or `None` for a fresh [`instance_id`].
    pub id: Option<String>,
    /// Its HTTP listener, as configured.
    pub address: String,
    pub workers: Option<WorkerCounts>,
}

impl NodeSpec {
    /// The node as it is now.
    fn info(&self, id: &str) -> NodeInfo {
        let started = picloud_metrics::global().started_unix();
        let (workers, workers_busy) = self.workers.as_ref().map_or((None, None), |w| {
            let (n, busy) = w();
            (Some(n), Some(busy))
        });
        NodeInfo {
            id: id.to_owned(),
            role: self.role.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            address: self.address.clone(),
            started_at_unix: started,
            uptime_seconds: (picloud_metrics::process::now_unix() - started).max(0) as u64,
            workers,
            workers_busy,
            load1: picloud_metrics::process::load1(),
            rss_bytes: picloud_metrics::process::ProcessFigures::read().resident_bytes,
        }
    }
}

/// `{host}-{pid}-{nonce}`: names one role instance.
pub fn instance_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    // Random enough to tell instances apart: std's per-map random keys.
    let mut nonce = std::collections::hash_map::RandomState::new().build_hasher();
    nonce.write_u32(std::process::id());
    format!(
        "{host}-{}-{:06x}",
        std::process::id(),
        nonce.finish() & 0xff_ffff
    )
}

impl crate::Bus {
    /// Announces the node, then answers pings until `shutdown`, then
    /// announces its end. Returns its id and, once subscribed, the future
    /// that does the answering.
    pub async fn serve_node(
        &self,
        spec: NodeSpec,
        shutdown: Shutdown,
    ) -> Result<(String, impl Future<Output = ()> + Send + use<>), BusError> {
        let id = spec.id.clone().unwrap_or_else(instance_id);
        let node_id = id.clone();
        let info = move || spec.info(&node_id);
        let mut pings = self
            .client
            .subscribe(self.names.nodes_ping_subject())
            .await
            .map_err(|e| BusError::Nats {
                what: "subscribe",
                source: e.into(),
            })?;
        let bus = self.clone();
        bus.announce("up", info()).await;
        Ok((id, async move {
            loop {
                let ping = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    p = pings.next() => p,
                };
                let Some(ping) = ping else { break };
                if let Some(reply) = ping.reply {
                    let _ = bus
                        .client
                        .publish_with_headers(reply, crate::wire::headers(), encode(&info()))
                        .await;
                }
            }
            bus.announce("down", info()).await;
            let _ = bus.flush().await;
        }))
    }

    async fn announce(&self, event: &str, node: NodeInfo) {
        let a = NodeAnnouncement {
            event: event.to_owned(),
            node,
        };
        let _ = self
            .client
            .publish_with_headers(
                self.names.nodes_announce_subject(),
                crate::wire::headers(),
                encode(&a),
            )
            .await;
    }

    /// Every node that answers a ping within `window`, by role then id.
    pub async fn gather_nodes(&self, window: Duration) -> Result<Vec<NodeInfo>, BusError> {
        let nats = |what| move |e: async_nats::Error| BusError::Nats { what, source: e };
        let inbox = self.client.new_inbox();
        let mut replies = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| nats("subscribe")(e.into()))?;
        self.client
            .publish_with_reply_and_headers(
                self.names.nodes_ping_subject(),
                inbox,
                crate::wire::headers(),
                Default::default(),
            )
            .await
            .map_err(|e| nats("publish")(e.into()))?;
        let mut nodes = BTreeMap::new();
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, replies.next()).await {
            match crate::wire::read::<NodeInfo>(&msg.subject, msg.headers.as_ref(), &msg.payload) {
                Ok(n) => {
                    nodes.insert((n.role.clone(), n.id.clone()), n);
                }
                Err(BusError::Newer { .. }) => {}
                Err(e) => tracing::warn!(error = %e, "ignoring a malformed node reply"),
            }
        }
        let _ = replies.unsubscribe().await;
        Ok(nodes.into_values().collect())
    }

    /// Every node announcement, as it comes (operators' tools, tests).
    pub async fn node_announcements(
        &self,
    ) -> Result<impl futures::Stream<Item = NodeAnnouncement> + use<>, BusError> {
        let sub = self
            .client
            .subscribe(self.names.nodes_announce_subject())
            .await
            .map_err(|e| BusError::Nats {
                what: "subscribe",
                source: e.into(),
            })?;
        Ok(sub.filter_map(|m| async move {
            crate::wire::read(&m.subject, m.headers.as_ref(), &m.payload).ok()
        }))
    }
}

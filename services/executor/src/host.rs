//! What the executor lends scripts: [`picloud_sandbox::Host`] over the bus
//! (secrets) and the SSRF-checked egress client (outbound HTTP).
//!
//! Host functions are called on a worker thread (not a tokio thread), so
//! they block on the runtime's handle, each bounded by the invocation's
//! deadline and a per-call ceiling.

use std::sync::Arc;
use std::time::{Duration, Instant};

use picloud_bus::Bus;
use picloud_bus::wire::{KvGetCall, KvListCall, Rpc};
use picloud_core::Limits;
use picloud_core::effects::{KvAnswer, KvEntry, KvGet, KvList, KvVersion};
use picloud_egress::{CallLimits, Egress, OutboundRequest};
use picloud_sandbox::{Host, HostError, HttpBody, HttpCall, HttpReply};
use tokio::runtime::Handle;

use crate::overlay::Overlay;

/// The longest one secret lookup may take, whatever the deadline.
const SECRET_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest one kv read may take, whatever the deadline.
const KV_TIMEOUT: Duration = Duration::from_secs(5);

pub struct BusHost {
    pub bus: Bus,
    pub egress: Egress,
    pub runtime: Handle,
    /// Writes of this executor's runs on their way to a manager: a key
    /// one of them writes reads as that write (see [`crate::overlay`]).
    pub overlay: Arc<Overlay>,
}

impl BusHost {
    /// Asks a manager a kv question, by `deadline`.
    fn kv_call<T, R: Rpc<Reply = KvAnswer<T>>>(
        &self,
        question: &R::Request,
        deadline: Instant,
    ) -> Result<T, HostError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HostError::Failed(
                "the invocation's deadline has passed".into(),
            ));
        }
        let answer = self
            .runtime
            .block_on(self.bus.request::<R>(question, left.min(KV_TIMEOUT)));
        match answer {
            Ok(KvAnswer::Ok(v)) => Ok(v),
            Ok(KvAnswer::Err(e)) => Err(HostError::Failed(e)),
            Err(e) => Err(HostError::Failed(format!("kv is unavailable: {e}"))),
        }
    }
}

impl Host for BusHost {
    fn kv_get(
        &self,
        script: &str,
        key: &str,
        deadline: Instant,
    ) -> Result<Option<KvEntry>, HostError> {
        if let Some(in_flight) = self.overlay.get(script, key) {
            return Ok(in_flight);
        }
        let q = KvGet {
            script: script.to_owned(),
            key: key.to_owned(),
        };
        self.kv_call::<_, KvGetCall>(&q, deadline)
    }

    fn kv_list(
        &self,
        script: &str,
        prefix: &str,
        deadline: Instant,
    ) -> Result<Vec<(String, KvVersion)>, HostError> {
        let q = KvList {
            script: script.to_owned(),
            prefix: prefix.to_owned(),
        };
        self.kv_call::<_, KvListCall>(&q, deadline)
    }

    fn secret(&self, name: &str, deadline: Instant) -> Result<Option<String>, HostError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HostError::Failed(
                "the invocation's deadline has passed".into(),
            ));
        }
        self.runtime
            .block_on(self.bus.get_secret(name, left.min(SECRET_TIMEOUT)))
            .map_err(HostError::Failed)
    }

    fn http(
        &self,
        call: HttpCall,
        limits: &Limits,
        deadline: Instant,
    ) -> Result<HttpReply, HostError> {
        let ceiling = Duration::from_millis(limits.http_timeout_ms);
        let call_limits = CallLimits {
            timeout: call.timeout.map_or(ceiling, |t| t.min(ceiling)),
            max_response_bytes: limits.max_http_response_bytes,
            ..CallLimits::default()
        }
        .within(deadline);
        if call_limits.timeout.is_zero() {
            return Err(HostError::Failed(
                "the invocation's deadline has passed".into(),
            ));
        }
        let mut req = OutboundRequest::new(call.method, call.url);
        req.headers = call.headers;
        req.query = call.query;
        let req = match call.body {
            None => req,
            Some(HttpBody::Text(t)) => req.body(t),
            Some(HttpBody::Json(j)) => req.json(&j),
        };
        match self.runtime.block_on(self.egress.send(req, &call_limits)) {
            Ok(resp) => Ok(HttpReply {
                status: resp.status,
                headers: resp.headers,
                body: resp.body,
                truncated: resp.truncated,
            }),
            Err(e) if e.is_limit() => Err(HostError::Limit(e.to_string())),
            // The egress client's texts never carry resolved addresses.
            Err(e) => Err(HostError::Failed(e.to_string())),
        }
    }
}

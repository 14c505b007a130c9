//! What the executor lends scripts: [`picloud_sandbox::Host`] over the bus.
//!
//! Host functions are called on a worker thread (not a tokio thread), so
//! they block on the runtime's handle, each bounded by the invocation's
//! deadline and a per-call ceiling.

use std::time::{Duration, Instant};

use picloud_bus::Bus;
use picloud_sandbox::Host;
use tokio::runtime::Handle;

/// The longest one secret lookup may take, whatever the deadline.
const SECRET_TIMEOUT: Duration = Duration::from_secs(2);

pub struct BusHost {
    pub bus: Bus,
    pub runtime: Handle,
}

impl Host for BusHost {
    fn secret(&self, name: &str, deadline: Instant) -> Result<Option<String>, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("the invocation's deadline has passed".into());
        }
        self.runtime
            .block_on(self.bus.get_secret(name, left.min(SECRET_TIMEOUT)))
    }
}

//! Postgres notifications (`LISTEN`), as the relay and the schedulers wait
//! for them, without handing sqlx's listener to other crates.
//!
//! A [`Notifications`] holds one connection of its own. When that
//! connection drops, [`Notifications::recv`] says so once
//! ([`Notice::Lost`]): whatever was sent meanwhile is gone, so the caller
//! sweeps. The next call connects and listens again by itself; an error
//! means it could not, and the caller starts over with a new listener.

use sqlx::postgres::{PgListener, PgPool};

use crate::StoreError;

/// What woke a [`Notifications::recv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// A notification arrived on the channel.
    Notified,
    /// The connection dropped; notifications sent since may be lost. The
    /// next [`Notifications::recv`] reconnects and listens again.
    Lost,
}

/// A connection listening on one channel.
pub struct Notifications {
    listener: PgListener,
}

impl Notifications {
    /// Connects and listens on `channel`.
    pub(crate) async fn listen(pool: &PgPool, channel: &str) -> Result<Self, StoreError> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(channel).await?;
        Ok(Self { listener })
    }

    /// Waits for the next notification, or for the connection to drop.
    pub async fn recv(&mut self) -> Result<Notice, StoreError> {
        // `try_recv` (not `recv`) so a lost connection is reported rather
        // than silently reconnected: the caller must sweep after it.
        match self.listener.try_recv().await? {
            Some(_) => Ok(Notice::Notified),
            None => Ok(Notice::Lost),
        }
    }
}

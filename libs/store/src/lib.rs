//! The store: PiCloud's Postgres.
//!
//! Only this crate writes SQL, and only the manager role (and `picloud
//! up`'s bootstrap, through [`Store::ensure_database`]) links it. Migrations
//! live in the workspace's `migrations/` folder and are embedded at build
//! time; [`Store::connect`] applies them (under sqlx's advisory lock, so
//! several managers may start at once).
//!
//! - [`scripts`]: scripts and their immutable versions.
//! - [`modules`]: shared modules and their versions.
//! - [`secrets`]: encrypted secrets (ciphertext only).
//! - [`invocations`]: the invocation log.
//! - [`kv`]: per-script state.
//! - [`commit`]: invocations' effects applied in batches (group commit),
//!   under per-key locks.
//! - [`jobs`]: subscriptions, dead letters, async HTTP submissions.
//! - [`outbox`]: messages a committed transaction owes NATS.
//! - [`schedules`]: cron schedules, and the claim that fires them exactly
//!   once across managers.
//! - [`stats`]: per-minute and per-hour roll-ups, and event flows.
//! - [`notify`]: `LISTEN` for the outbox relay and the schedulers.
//!
//! No sqlx type crosses this crate's API: rows come back as the public
//! `*Row` types (read through private `sqlx::FromRow` records, see `rows`),
//! notifications as [`Notifications`], errors as [`StoreError`] (whose
//! database causes are opaque: callers ask [`StoreError::is_permanent`]).
//! Every statement is a string literal, column lists shared through
//! `concat!` of literal macros, so it can be read, and grepped, as SQL; the
//! one exception is `CREATE DATABASE`, whose name cannot be bound.

#![forbid(unsafe_code)]

pub mod commit;
pub mod invocations;
pub mod jobs;
mod json_bytes;
pub mod kv;
pub mod modules;
pub mod notify;
pub mod outbox;
mod rows;
pub mod schedules;
pub mod scripts;
pub mod secrets;
pub mod stats;
mod together;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

pub use commit::{CommitBatch, Committed, SubscriptionCache};
pub use invocations::{AttemptRow, InvocationFilter};
pub use jobs::{DeadLetterRow, Submitted, SubscriptionRow};
pub use modules::{ModuleRow, ModuleVersionRow};
pub use notify::{Notice, Notifications};
pub use outbox::{OutboxKind, OutboxRow};
pub use schedules::{ScheduleChange, ScheduleRow, ScheduleSpec};
pub use scripts::{NewVersion, ScriptRow, VersionRow};
pub use secrets::{SealedSecret, SecretRow};
pub use stats::{FlowRow, StatRow};
pub use together::{Applying, order as commit_order};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(DbError),
    #[error("migration failed: {0}")]
    Migrate(MigrateError),
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
    /// A route of the version overlaps one another script holds.
    #[error(transparent)]
    RouteConflict(picloud_core::routes::RouteConflict),
}

/// What the database (or the driver) said, opaque so that no sqlx type
/// crosses the store's API; it displays as the driver's message.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct DbError(sqlx::Error);

/// Why the embedded migrations could not be applied.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct MigrateError(sqlx::migrate::MigrateError);

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Db(DbError(e))
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(MigrateError(e))
    }
}

impl StoreError {
    /// True when the same statement would fail the same way again: the
    /// database refused the data itself (a data exception such as a value
    /// it cannot hold, a constraint, a size limit) or a stored value cannot
    /// be read. False when the database was unavailable or busy (connection
    /// lost, pool exhausted, shutdown, serialization failure): trying again
    /// later may succeed. Callers retry only what is not permanent.
    pub fn is_permanent(&self) -> bool {
        match self {
            StoreError::Corrupt(_) | StoreError::RouteConflict(_) => true,
            StoreError::Migrate(_) => false,
            StoreError::Db(DbError(e)) => match e {
                sqlx::Error::Database(db) => {
                    // SQLSTATE classes: 22 data exception, 23 integrity
                    // constraint, 42 syntax or access rule, 54 program
                    // limit exceeded. Everything else (08 connection, 40
                    // rollback, 53 resources, 57 operator intervention,
                    // ...) may pass.
                    let code = db.code();
                    let class = code.as_deref().map(|c| c.get(..2).unwrap_or(c));
                    matches!(class, Some("22" | "23" | "42" | "54"))
                }
                sqlx::Error::Encode(_)
                | sqlx::Error::Decode(_)
                | sqlx::Error::ColumnDecode { .. }
                | sqlx::Error::TypeNotFound { .. }
                | sqlx::Error::ColumnNotFound(_) => true,
                _ => false,
            },
        }
    }
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connects and migrates.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        // No JIT: every statement here is short, and the JIT compiled the
        // generic plan of one of them (estimated from unanalyzed tables)
        // on every commit with emits, 5–50 ms each time.
        let options = url.parse::<PgConnectOptions>()?.options([("jit", "off")]);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        sqlx::migrate!("../../migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    /// True when the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Creates database `name` on the server at `admin_url` unless it
    /// exists, waiting up to `wait` for the server to accept connections.
    /// Used by `picloud up` for its private cluster.
    pub async fn ensure_database(
        admin_url: &str,
        name: &str,
        wait: Duration,
    ) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let pool = loop {
            match sqlx::PgPool::connect(admin_url).await {
                Ok(p) => break p,
                Err(e) if started.elapsed() > wait => return Err(e.into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(name)
                .fetch_one(&pool)
                .await?;
        if !exists {
            // Identifiers cannot be bound; `name` is quoted as one. The only
            // SQL of this crate built with `format!`.
            let quoted = format!("\"{}\"", name.replace('"', "\"\""));
            sqlx::query(&format!("CREATE DATABASE {quoted}"))
                .execute(&pool)
                .await?;
        }
        pool.close().await;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

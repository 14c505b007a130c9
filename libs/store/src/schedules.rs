//! Cron schedules and their firing.
//!
//! [`Store::fire_due_schedules`] is the whole of "exactly once across any
//! number of managers": it claims due rows with `FOR UPDATE SKIP LOCKED`
//! (concurrent schedulers take disjoint rows; a row another one has just
//! moved on is re-checked against the new `next_fire_at` and dropped),
//! writes each firing's job into the outbox and moves `next_fire_at` on, all
//! in one transaction. What to fire is decided by
//! [`CronSchedule::plan`](picloud_core::schedule::CronSchedule::plan).
//!
//! Changes that may make a schedule fire earlier than the schedulers sleep
//! for send `NOTIFY picloud_schedules` (a trigger, see the migration).

use chrono::{DateTime, TimeDelta, Utc};
use picloud_core::schedule::{
    CatchUp, CronSchedule, Overlap, Plan, PlanReason, RUNNING_GRACE, ScheduleError, firing_job,
};
use picloud_core::{InvocationStatus, Limits};
use uuid::Uuid;

use crate::outbox::{self, OutboxRow};
use crate::{Notifications, Store, StoreError, rows};

/// The channel schedulers `LISTEN` on.
pub const CHANNEL: &str = "picloud_schedules";

/// What a schedule is: everything an operator sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleSpec {
    pub script: String,
    pub cron: String,
    pub timezone: String,
    pub catch_up: CatchUp,
    pub overlap: Overlap,
    pub enabled: bool,
    pub max_attempts: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleRow {
    pub id: Uuid,
    pub spec: ScheduleSpec,
    /// The first instant not yet handled (`None`: no instant left).
    pub next_fire_at: Option<DateTime<Utc>>,
    /// The scheduled instant of the last firing.
    pub last_fired_at: Option<DateTime<Utc>>,
    pub last_invocation_id: Option<Uuid>,
    /// Until when the last firing counts as running (`overlap: skip`).
    pub busy_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A schedule's new settings and `next_fire_at`, as decided by the caller
/// of [`Store::update_schedule`].
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleChange {
    pub spec: ScheduleSpec,
    pub next_fire_at: Option<DateTime<Utc>>,
}

/// The result of [`Store::update_schedule`].
#[derive(Debug)]
pub enum Update<E> {
    Updated(ScheduleRow),
    /// No schedule has that id.
    Missing,
    /// The caller's check refused the change; nothing was written.
    Refused(E),
}

/// One claimed schedule and what became of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Handled {
    pub schedule_id: Uuid,
    pub script: String,
    pub action: Action,
    pub next_fire_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// The job for `instant` went into the outbox.
    Fired {
        instant: DateTime<Utc>,
        invocation_id: Uuid,
        reason: PlanReason,
    },
    /// Nothing fired: missed instants skipped, or the previous firing runs.
    Passed { reason: PlanReason },
    /// The script is deleted: the instant passes without a job, and the
    /// schedule goes on (a redeploy brings it back).
    ScriptMissing { instant: DateTime<Utc> },
    /// The stored expression no longer parses (a newer parser refuses it):
    /// the schedule stops (`next_fire_at` = NULL) until it is edited.
    Broken { error: ScheduleError },
}

/// The result of one claim.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    pub handled: Vec<Handled>,
    /// Claim again at once: the batch was full, or a schedule that was
    /// behind has its next instant due already.
    pub again: bool,
    /// The earliest `next_fire_at` of an enabled schedule after this claim
    /// (still due when another scheduler holds that row right now).
    pub next_due: Option<DateTime<Utc>>,
}

/// A `schedules` row.
#[derive(sqlx::FromRow)]
struct ScheduleRecord {
    id: Uuid,
    script: String,
    cron: String,
    timezone: String,
    catch_up: String,
    overlap: String,
    enabled: bool,
    max_attempts: i32,
    next_fire_at: Option<DateTime<Utc>>,
    last_fired_at: Option<DateTime<Utc>>,
    last_invocation_id: Option<Uuid>,
    busy_until: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<ScheduleRecord> for ScheduleRow {
    type Error = StoreError;

    fn try_from(r: ScheduleRecord) -> Result<Self, StoreError> {
        Ok(ScheduleRow {
            id: r.id,
            spec: ScheduleSpec {
                script: r.script,
                cron: r.cron,
                timezone: r.timezone,
                catch_up: rows::named(&r.catch_up, CatchUp::parse, "schedule catch_up")?,
                overlap: rows::named(&r.overlap, Overlap::parse, "schedule overlap")?,
                enabled: r.enabled,
                // The column's CHECK keeps it at 1 or more.
                max_attempts: rows::int(r.max_attempts, "schedule max_attempts")?,
            },
            next_fire_at: r.next_fire_at,
            last_fired_at: r.last_fired_at,
            last_invocation_id: r.last_invocation_id,
            busy_until: r.busy_until,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// A due schedule as [`Store::fire_due_schedules`] claims it: its row and
/// what the joins add.
#[derive(sqlx::FromRow)]
struct Claimed {
    #[sqlx(flatten)]
    schedule: ScheduleRecord,
    /// The script exists and is not deleted.
    script_live: bool,
    /// The script's active version's limits (NULL without one).
    limits: Option<serde_json::Value>,
    /// The status of the last firing's invocation (NULL without a record).
    last_status: Option<String>,
}

/// The columns of a [`ScheduleRecord`].
macro_rules! schedule_cols {
    () => {
        "id, script, cron, timezone, catch_up, overlap, enabled, max_attempts, \
         next_fire_at, last_fired_at, last_invocation_id, busy_until, created_at, updated_at"
    };
}

fn attempts(spec: &ScheduleSpec) -> i32 {
    i32::try_from(spec.max_attempts.max(1)).unwrap_or(i32::MAX)
}

impl Store {
    pub async fn create_schedule(
        &self,
        spec: &ScheduleSpec,
        next_fire_at: Option<DateTime<Utc>>,
    ) -> Result<ScheduleRow, StoreError> {
        let row: ScheduleRecord = sqlx::query_as(concat!(
            "INSERT INTO schedules (id, script, cron, timezone, catch_up, overlap, enabled,
                                    max_attempts, next_fire_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING ",
            schedule_cols!()
        ))
        .bind(Uuid::now_v7())
        .bind(&spec.script)
        .bind(&spec.cron)
        .bind(&spec.timezone)
        .bind(spec.catch_up.as_str())
        .bind(spec.overlap.as_str())
        .bind(spec.enabled)
        .bind(attempts(spec))
        .bind(next_fire_at)
        .fetch_one(&self.pool)
        .await?;
        row.try_into()
    }

    /// Oldest first; only `script`'s when given.
    pub async fn list_schedules(
        &self,
        script: Option<&str>,
    ) -> Result<Vec<ScheduleRow>, StoreError> {
        sqlx::query_as::<_, ScheduleRecord>(concat!(
            "SELECT ",
            schedule_cols!(),
            " FROM schedules WHERE $1::text IS NULL OR script = $1
             ORDER BY created_at, id"
        ))
        .bind(script)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(ScheduleRow::try_from)
        .collect()
    }

    pub async fn get_schedule(&self, id: Uuid) -> Result<Option<ScheduleRow>, StoreError> {
        sqlx::query_as::<_, ScheduleRecord>(concat!(
            "SELECT ",
            schedule_cols!(),
            " FROM schedules WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .map(ScheduleRow::try_from)
        .transpose()
    }

    /// Changes schedule `id` to what `change` makes of its current row.
    /// The row is locked while `change` decides, so concurrent updates (and
    /// firings) apply one after the other.
    pub async fn update_schedule<E>(
        &self,
        id: Uuid,
        change: impl FnOnce(&ScheduleRow) -> Result<ScheduleChange, E>,
    ) -> Result<Update<E>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let Some(current) = sqlx::query_as::<_, ScheduleRecord>(concat!(
            "SELECT ",
            schedule_cols!(),
            " FROM schedules WHERE id = $1 FOR UPDATE"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(Update::Missing);
        };
        let new = match change(&current.try_into()?) {
            Ok(new) => new,
            Err(e) => return Ok(Update::Refused(e)),
        };
        let row: ScheduleRecord = sqlx::query_as(concat!(
            "UPDATE schedules SET script = $2, cron = $3, timezone = $4, catch_up = $5,
                    overlap = $6, enabled = $7, max_attempts = $8, next_fire_at = $9,
                    updated_at = now()
             WHERE id = $1 RETURNING ",
            schedule_cols!()
        ))
        .bind(id)
        .bind(&new.spec.script)
        .bind(&new.spec.cron)
        .bind(&new.spec.timezone)
        .bind(new.spec.catch_up.as_str())
        .bind(new.spec.overlap.as_str())
        .bind(new.spec.enabled)
        .bind(attempts(&new.spec))
        .bind(new.next_fire_at)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Update::Updated(row.try_into()?))
    }

    /// True when the schedule existed. A firing that holds the row commits
    /// first; after this returns, the schedule never fires again.
    pub async fn delete_schedule(&self, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM schedules WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Claims up to `limit` schedules due at `now` and handles each as its
    /// plan says, in one transaction (see the module documentation).
    pub async fn fire_due_schedules(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Sweep, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Locks only the schedule rows (OF s); the joins read the script's
        // active version for its wall-time limit, and the last firing's
        // status for overlap checks.
        let claimed = sqlx::query_as::<_, Claimed>(
            "SELECT s.id, s.script, s.cron, s.timezone, s.catch_up, s.overlap, s.enabled,
                    s.max_attempts, s.next_fire_at, s.last_fired_at, s.last_invocation_id,
                    s.busy_until, s.created_at, s.updated_at,
                    NOT COALESCE(sc.deleted, true) AS script_live, v.limits,
                    (SELECT i.status FROM invocations i WHERE i.id = s.last_invocation_id)
                        AS last_status
             FROM schedules s
             LEFT JOIN scripts sc ON sc.name = s.script
             LEFT JOIN script_versions v
                    ON v.script = sc.name AND v.version = sc.active_version
             WHERE s.enabled AND s.next_fire_at <= $1
             ORDER BY s.next_fire_at
             LIMIT $2
             FOR UPDATE OF s SKIP LOCKED",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;

        let claimed_count = claimed.len();
        let mut handled = Vec::with_capacity(claimed_count);
        let mut jobs = Vec::new();
        let mut updates = Updates::default();
        for r in claimed {
            let row = ScheduleRow::try_from(r.schedule)?;
            let (action, next, fired) =
                match CronSchedule::parse(&row.spec.cron, &row.spec.timezone) {
                    Err(error) => (Action::Broken { error }, None, None),
                    Ok(schedule) => {
                        let plan = plan(&schedule, &row, r.last_status.as_deref(), now)?;
                        match plan.fire {
                            None => (
                                Action::Passed {
                                    reason: plan.reason,
                                },
                                plan.next,
                                None,
                            ),
                            Some(instant) if !r.script_live => {
                                (Action::ScriptMissing { instant }, plan.next, None)
                            }
                            Some(instant) => {
                                let job = firing_job(
                                    row.id,
                                    &row.spec.script,
                                    instant,
                                    row.spec.max_attempts,
                                );
                                jobs.push(OutboxRow::job(&job));
                                let busy_until = now + wall_time(r.limits) + RUNNING_GRACE;
                                let action = Action::Fired {
                                    instant,
                                    invocation_id: job.id,
                                    reason: plan.reason,
                                };
                                (action, plan.next, Some((instant, job.id, busy_until)))
                            }
                        }
                    }
                };
            updates.push(&row, next, fired);
            handled.push(Handled {
                schedule_id: row.id,
                script: row.spec.script,
                action,
                next_fire_at: next,
            });
        }

        outbox::insert(&mut tx, &jobs).await?;
        updates.apply(&mut tx).await?;
        let next_due: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT min(next_fire_at) FROM schedules WHERE enabled")
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;

        let again = claimed_count as u64 >= u64::from(limit)
            || handled
                .iter()
                .any(|h| h.next_fire_at.is_some_and(|n| n <= now));
        Ok(Sweep {
            handled,
            again,
            next_due,
        })
    }

    /// Notifications of schedule changes, already listening.
    pub async fn schedule_notifications(&self) -> Result<Notifications, StoreError> {
        Notifications::listen(&self.pool, CHANNEL).await
    }
}

/// The plan for a claimed row; `last_status` is the last firing's status.
fn plan(
    schedule: &CronSchedule,
    row: &ScheduleRow,
    last_status: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Plan, StoreError> {
    let pending = row
        .next_fire_at
        .ok_or_else(|| StoreError::Corrupt("due schedule without next_fire_at".into()))?;
    // Still running: no final record yet, and not past its deadline.
    let running = row.spec.overlap == Overlap::Skip
        && row.last_invocation_id.is_some()
        && row.busy_until.is_some_and(|b| now < b)
        && last_status.is_none_or(|s| s == InvocationStatus::Queued.as_str());
    Ok(schedule.plan(pending, now, row.spec.catch_up, running))
}

/// The wall-time limit of the script's active version (the default when
/// it has none, or limits this version cannot read).
fn wall_time(limits: Option<serde_json::Value>) -> TimeDelta {
    let ms = limits
        .and_then(|l| serde_json::from_value::<Limits>(l).ok())
        .unwrap_or_default()
        .wall_time_ms;
    // Stored limits are clamped far below a day; the cap keeps the sum sane.
    TimeDelta::milliseconds(ms.min(86_400_000) as i64)
}

/// The claimed rows' new bookkeeping, written with one statement.
#[derive(Default)]
struct Updates {
    ids: Vec<Uuid>,
    next: Vec<Option<DateTime<Utc>>>,
    last_fired: Vec<Option<DateTime<Utc>>>,
    last_invocation: Vec<Option<Uuid>>,
    busy_until: Vec<Option<DateTime<Utc>>>,
}

impl Updates {
    /// `fired`: the instant, invocation id and busy-until of a firing;
    /// without one the row keeps its last firing.
    fn push(
        &mut self,
        row: &ScheduleRow,
        next: Option<DateTime<Utc>>,
        fired: Option<(DateTime<Utc>, Uuid, DateTime<Utc>)>,
    ) {
        self.ids.push(row.id);
        self.next.push(next);
        match fired {
            Some((instant, invocation, busy)) => {
                self.last_fired.push(Some(instant));
                self.last_invocation.push(Some(invocation));
                self.busy_until.push(Some(busy));
            }
            None => {
                self.last_fired.push(row.last_fired_at);
                self.last_invocation.push(row.last_invocation_id);
                self.busy_until.push(row.busy_until);
            }
        }
    }

    async fn apply(self, conn: &mut sqlx::PgConnection) -> Result<(), StoreError> {
        if self.ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE schedules s
             SET next_fire_at = u.next, last_fired_at = u.last_fired,
                 last_invocation_id = u.last_invocation, busy_until = u.busy_until
             FROM UNNEST($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::uuid[],
                         $5::timestamptz[])
                  AS u(id, next, last_fired, last_invocation, busy_until)
             WHERE s.id = u.id",
        )
        .bind(self.ids)
        .bind(self.next)
        .bind(self.last_fired)
        .bind(self.last_invocation)
        .bind(self.busy_until)
        .execute(conn)
        .await?;
        Ok(())
    }
}

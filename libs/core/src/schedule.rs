//! Cron schedules: when a schedule fires, and what a scheduler does with the
//! instants it finds due. Pure computation; the store persists schedules and
//! the manager's scheduler acts on [`CronSchedule::plan`].
//!
//! Expressions have 5 fields (minute hour day-of-month month day-of-week,
//! standard crontab) or 6 (a seconds field first), and are evaluated in an
//! IANA time zone (UTC by default) with the `croner` crate, which also takes
//! `@hourly`-style nicknames, names (`MON`, `JAN`), `L`, `W` and `#`.
//!
//! # Daylight saving time
//!
//! Instants are computed in the zone's wall-clock time and stored in UTC.
//! An expression whose second, minute and hour are single fixed values
//! (`30 2 * * *`) is a *fixed-time* schedule; any other (`*/15 * * * *`,
//! `0 * * * *`) is an *interval* schedule.
//! - **Spring forward** (a wall-clock hour is skipped): a fixed-time
//!   schedule whose time falls in the gap fires once, at the first instant
//!   after the gap (02:30 → 03:00 new time); an interval schedule has no
//!   instants in the gap and goes on at its next instant after it.
//! - **Fall back** (a wall-clock hour is repeated): a fixed-time schedule
//!   fires once, in the first pass (summer time); an interval schedule fires
//!   in both passes, so an hourly schedule still fires every real hour.
//!
//! # Due instants and catch-up
//!
//! A schedule keeps `next_fire_at`, its first instant not yet handled. When a
//! scheduler finds it due, [`CronSchedule::plan`] decides:
//! - Exactly one instant due: it fires, however late.
//! - Several due, the oldest within [`MISFIRE_GRACE`] of now: the scheduler
//!   only fell behind (a slow database, a busy machine), so the oldest fires
//!   and the next sweep takes the following one. While a scheduler runs,
//!   every instant fires.
//! - Several due, the oldest older than that: every scheduler was down.
//!   [`CatchUp::FireOnce`] fires the latest due instant only,
//!   [`CatchUp::Skip`] fires none. Either way the schedule resumes at its
//!   first instant after now. Never a burst.
//! - With [`Overlap::Skip`] and the previous firing still running, every due
//!   instant is passed over.

use std::str::FromStr;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::invocation::{EventInput, Trigger};
use crate::job::{Job, cron_event_id};
use crate::quote;

/// How far behind its oldest due instant a scheduler may be and still fire
/// every instant in order. Beyond it, the instants count as missed (every
/// scheduler was down) and the catch-up policy applies.
pub const MISFIRE_GRACE: TimeDelta = TimeDelta::seconds(10);

/// How long past its script's wall-time limit a firing counts as running
/// (for `overlap: skip`) while no final invocation record has come back:
/// time for the relay, a wait in the job queue and the record's way back.
/// After that the firing is presumed lost (a dead executor), so it cannot
/// block the schedule.
pub const RUNNING_GRACE: TimeDelta = TimeDelta::seconds(30);

/// Longest accepted expression or zone name.
const MAX_TEXT_LEN: usize = 200;

/// What to do with instants missed while every scheduler was down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Fire once, for the latest missed instant.
    #[default]
    FireOnce,
    /// Fire none of them.
    Skip,
}

/// Whether a firing may start while the previous one still runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    #[default]
    Allow,
    /// Pass over instants that come while the previous firing runs.
    Skip,
}

macro_rules! text_enum {
    ($t:ty { $($v:ident = $s:literal),+ $(,)? }) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),+ }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some(Self::$v),)+ _ => None }
            }
        }
    };
}
text_enum!(CatchUp { FireOnce = "fire_once", Skip = "skip" });
text_enum!(Overlap { Allow = "allow", Skip = "skip" });

/// Why a schedule was refused; the message names the part that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("invalid cron expression {}: {reason}", quote(expr))]
    Expression { expr: String, reason: String },
    #[error(
        "invalid time zone {}: use an IANA name such as \"UTC\" or \"Europe/Berlin\"",
        quote(zone)
    )]
    TimeZone { zone: String },
    #[error("cron expression {} never fires", quote(expr))]
    NeverFires { expr: String },
}

/// A parsed expression in its time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
    zone: Tz,
}

/// What a scheduler does with a due schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The instant to fire, if any.
    pub fire: Option<DateTime<Utc>>,
    /// The schedule's new `next_fire_at` (`None`: it never fires again).
    pub next: Option<DateTime<Utc>>,
    pub reason: PlanReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanReason {
    /// The only due instant (on time or late).
    Due,
    /// The oldest of several due instants, within the misfire grace.
    Behind,
    /// Instants were missed; the latest fires (`fire_once`).
    CaughtUp,
    /// Instants were missed; none fires (`skip`).
    MissedSkipped,
    /// The previous firing still runs (`overlap: skip`).
    Overlapping,
    /// Nothing is due yet.
    NotDue,
}

impl CronSchedule {
    /// Parses `expr` (5 or 6 fields) in IANA zone `zone`, and checks that
    /// it fires at least once.
    pub fn parse(expr: &str, zone: &str) -> Result<Self, ScheduleError> {
        let expression = |reason: String| ScheduleError::Expression {
            expr: truncate(expr),
            reason,
        };
        if expr.len() > MAX_TEXT_LEN {
            return Err(expression(format!("longer than {MAX_TEXT_LEN} bytes")));
        }
        let trimmed = expr.trim();
        let fields = trimmed.split_whitespace().count();
        if !trimmed.starts_with('@') && !(5..=6).contains(&fields) {
            return Err(expression(format!(
                "it has {fields} fields; use 5 (minute hour day-of-month month day-of-week) \
                 or 6 (second first)"
            )));
        }
        let cron =
            parse_cron(trimmed).map_err(|e| expression(wrong_field(trimmed).unwrap_or(e)))?;
        let zone = parse_zone(zone)?;
        let schedule = Self { cron, zone };
        // Feb 30 and the like parse but never match.
        if schedule.next_after(Utc::now()).is_none() {
            return Err(ScheduleError::NeverFires {
                expr: truncate(expr),
            });
        }
        Ok(schedule)
    }

    /// The first instant strictly after `t`; `None` when there is none
    /// (before croner's search limit, the year 5000).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.zone), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The last instant at or before `t`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&t.with_timezone(&self.zone), true)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The next `n` instants strictly after `t`.
    pub fn upcoming(&self, t: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        std::iter::successors(self.next_after(t), |&prev| self.next_after(prev))
            .take(n)
            .collect()
    }

    /// Decides what to do with a schedule whose first unhandled instant is
    /// `pending`, at `now` (see the module documentation). `running`: the
    /// schedule skips overlaps and its previous firing has not finished.
    pub fn plan(
        &self,
        pending: DateTime<Utc>,
        now: DateTime<Utc>,
        catch_up: CatchUp,
        running: bool,
    ) -> Plan {
        if pending > now {
            return Plan {
                fire: None,
                next: Some(pending),
                reason: PlanReason::NotDue,
            };
        }
        let after_pending = self.next_after(pending);
        let several = after_pending.is_some_and(|t| t <= now);
        let resume = || self.next_after(now);
        let (fire, next, reason) = if running {
            (None, resume(), PlanReason::Overlapping)
        } else if !several {
            (Some(pending), after_pending, PlanReason::Due)
        } else if pending >= now - MISFIRE_GRACE {
            (Some(pending), after_pending, PlanReason::Behind)
        } else {
            match catch_up {
                CatchUp::FireOnce => {
                    // At least `after_pending` is due, so there is a latest.
                    let latest = self.latest_at_or_before(now).or(after_pending);
                    (latest, resume(), PlanReason::CaughtUp)
                }
                CatchUp::Skip => (None, resume(), PlanReason::MissedSkipped),
            }
        };
        Plan { fire, next, reason }
    }
}

/// The job of `schedule` firing for `instant`. Its id (the invocation id),
/// its event id and its trace id are all [`cron_event_id`], so an instant
/// written twice is one job. `event.payload` is `{"schedule_id": ...}`.
pub fn firing_job(schedule: Uuid, script: &str, instant: DateTime<Utc>, max_attempts: u32) -> Job {
    let id = cron_event_id(schedule, instant);
    Job {
        id,
        script: script.to_owned(),
        event: EventInput {
            id,
            kind: Trigger::Cron,
            topic: None,
            payload: serde_json::json!({ "schedule_id": schedule }),
            scheduled_at: Some(instant),
            attempt: 1,
            trace_id: id,
        },
        request: None,
        parent_id: None,
        subscription_id: None,
        schedule_id: Some(schedule),
        max_attempts: max_attempts.max(1),
        public: false,
        chain: Default::default(),
    }
}

/// An IANA zone name (`UTC` included).
pub fn parse_zone(zone: &str) -> Result<Tz, ScheduleError> {
    Tz::from_str(zone).map_err(|_| ScheduleError::TimeZone {
        zone: truncate(zone),
    })
}

fn parse_cron(expr: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| e.to_string())
}

/// Which field of a 5- or 6-field expression is wrong, named with its
/// value: `the minute field "61" is not valid (…)`. Each field is tried
/// alone, every other field `*`; `None` when no single field is to blame.
fn wrong_field(expr: &str) -> Option<String> {
    const FIVE: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];
    const SIX: [&str; 6] = [
        "second",
        "minute",
        "hour",
        "day-of-month",
        "month",
        "day-of-week",
    ];
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let names: &[&str] = match fields.len() {
        5 => &FIVE,
        6 => &SIX,
        _ => return None,
    };
    fields.iter().enumerate().find_map(|(i, value)| {
        let alone: Vec<&str> = (0..fields.len())
            .map(|j| if j == i { *value } else { "*" })
            .collect();
        parse_cron(&alone.join(" ")).err().map(|why| {
            format!(
                "the {} field {} is not valid ({why})",
                names[i],
                quote(value)
            )
        })
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(MAX_TEXT_LEN).collect()
}

#[cfg(test)]
mod tests;

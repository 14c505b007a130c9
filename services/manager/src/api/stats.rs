//! `GET /api/v1/stats` and `GET /api/v1/topology`: what the dashboard
//! draws, read from the roll-ups (`crate::stats`), never the raw records.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, DurationRound, Utc};
use picloud_core::job::topic_matches;
use picloud_http::{ApiError, ErrorBody, JsonQuery};
use picloud_store::StatRow;
use picloud_store::stats::{HOUR_ROWS_KEPT, MINUTE_ROWS_KEPT};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{Shared, internal, script_name};
use crate::stats::{BUCKETS, quantile};

/// Most points one answer holds.
const MAX_POINTS: i64 = 1_500;
/// Per-script summaries read minute rows up to this window, hour rows past it.
const SUMMARY_MINUTE_WINDOW: chrono::Duration = chrono::Duration::hours(6);

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// One script; absent: every script together.
    #[param(pattern = r"^[a-z0-9][a-z0-9_-]*$", min_length = 1, max_length = 63)]
    script: Option<String>,
    /// How far back: a duration (`24h`, `90m`, `7d`) or an RFC 3339 time
    /// (default 24h).
    since: Option<String>,
    /// Whole minutes or hours: `1m`, `5m`, `1h`, `1d` (default: at most
    /// 300 points).
    step: Option<String>,
}

/// One step of the series, or a summary over the whole window.
#[derive(Serialize, ToSchema)]
pub struct Point {
    #[serde(skip_serializing_if = "Option::is_none")]
    t: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    script: Option<String>,
    requests: i64,
    errors: i64,
    /// Requests per second over the step (or the window).
    rate_per_s: f64,
    /// errors / requests (0 when there were none).
    error_rate: f64,
    mean_ms: Option<f64>,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    p99_ms: Option<f64>,
}

impl Point {
    fn of(row: &StatRow, seconds: i64) -> Self {
        let ms = |us: Option<f64>| us.map(|v| (v / 1_000.0 * 1_000.0).round() / 1_000.0);
        Self {
            t: None,
            script: None,
            requests: row.requests,
            errors: row.errors,
            rate_per_s: row.requests as f64 / seconds.max(1) as f64,
            error_rate: if row.requests > 0 {
                row.errors as f64 / row.requests as f64
            } else {
                0.0
            },
            mean_ms: ms(
                (row.requests > 0).then(|| row.duration_us_sum as f64 / row.requests as f64)
            ),
            p50_ms: ms(quantile(&row.hist, 0.50)),
            p95_ms: ms(quantile(&row.hist, 0.95)),
            p99_ms: ms(quantile(&row.hist, 0.99)),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct StatsView {
    /// The script asked for; absent: every script together.
    #[serde(skip_serializing_if = "Option::is_none")]
    script: Option<String>,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    step_seconds: i64,
    series: Vec<Point>,
    total: Point,
    /// Each script over the window, most requests first.
    scripts: Vec<Point>,
}

/// `GET /api/v1/stats`: rates, errors and duration percentiles per step.
#[utoipa::path(get, path = "/api/v1/stats", tag = "observability",
    params(StatsQuery),
    responses(
        (status = 200, description = "the series, the total and each script's summary", body = StatsView),
        (status = 400, description = "bad query (names what is wrong)", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
    ))]
pub async fn stats(
    State(state): State<Shared>,
    JsonQuery(q): JsonQuery<StatsQuery>,
) -> Result<Json<StatsView>, ApiError> {
    let script = q.script.as_deref().map(script_name).transpose()?;
    let now = Utc::now();
    let since = match q.since.as_deref() {
        None => now - chrono::Duration::hours(24),
        Some(raw) => parse_since(raw, now)?,
    };
    if since >= now {
        return Err(ApiError::bad_request(format!(
            "invalid since {:?}: it must be in the past",
            q.since.unwrap_or_default()
        )));
    }
    let range = now - since;
    let step = match q.step.as_deref() {
        Some(raw) => parse_duration(raw).ok_or_else(|| bad_step(raw))?,
        None => auto_step(range),
    };
    let step_s = step.num_seconds();
    if step_s < 60 || step_s % 60 != 0 {
        return Err(bad_step(q.step.as_deref().unwrap_or_default()));
    }
    let table = if step_s % 3600 == 0 { 3600 } else { 60 };
    let kept = if table == 60 {
        MINUTE_ROWS_KEPT
    } else {
        HOUR_ROWS_KEPT
    };
    if range > kept {
        return Err(ApiError::bad_request(format!(
            "since reaches back {} hours; stats at a {}-second step are kept for {} hours \
             (use a step of whole hours to see up to {} days)",
            range.num_hours(),
            step_s,
            kept.num_hours(),
            HOUR_ROWS_KEPT.num_days()
        )));
    }
    let from = since
        .duration_trunc(step)
        .map_err(|e| ApiError::bad_request(format!("invalid step: {e}")))?;
    let points = (now - from).num_seconds() / step_s + 1;
    if points > MAX_POINTS {
        return Err(ApiError::bad_request(format!(
            "since and step ask for {points} points; at most {MAX_POINTS}: use a larger step"
        )));
    }
    let until = from + chrono::Duration::seconds(points * step_s);
    let name = script.as_ref().map_or("", |s| s.as_str());
    let rows = state
        .store
        .stats_rows(table, name, from, until)
        .await
        .map_err(internal)?;

    // Each point sums the rows of its step.
    let mut series = Vec::with_capacity(points as usize);
    let mut total = empty_row(from);
    let mut rows = rows.into_iter().peekable();
    for i in 0..points {
        let t = from + chrono::Duration::seconds(i * step_s);
        let end = t + step;
        let mut acc = empty_row(t);
        while let Some(r) = rows.next_if(|r| r.bucket < end) {
            acc.merge(&r);
        }
        total.merge(&acc);
        let mut p = Point::of(&acc, step_s);
        p.t = Some(t);
        series.push(p);
    }

    // Per-script summaries: minute rows for short windows, else hour rows
    // (the window then starts on the hour before `from`).
    let (summary_step, summary_from) = if until - from <= SUMMARY_MINUTE_WINDOW {
        (60, from)
    } else {
        (
            3600,
            from.duration_trunc(chrono::Duration::hours(1))
                .map_err(internal)?,
        )
    };
    let mut scripts: Vec<Point> = state
        .store
        .stats_by_script(summary_step, summary_from, until)
        .await
        .map_err(internal)?
        .into_iter()
        .filter(|r| script.as_ref().is_none_or(|s| s.as_str() == r.script))
        .map(|r| {
            let mut p = Point::of(&r, (until - summary_from).num_seconds());
            p.script = Some(r.script);
            p
        })
        .collect();
    scripts.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.script.cmp(&b.script)));

    Ok(Json(StatsView {
        script: script.map(|s| s.as_str().to_owned()),
        since: from,
        until,
        step_seconds: step_s,
        total: Point::of(&total, (until - from).num_seconds()),
        series,
        scripts,
    }))
}

fn empty_row(t: DateTime<Utc>) -> StatRow {
    StatRow {
        step_s: 0,
        bucket: t,
        script: String::new(),
        requests: 0,
        errors: 0,
        duration_us_sum: 0,
        hist: vec![0; BUCKETS],
    }
}

/// The smallest of the usual steps giving at most 300 points.
fn auto_step(range: chrono::Duration) -> chrono::Duration {
    [60, 300, 900, 3600, 6 * 3600, 24 * 3600]
        .into_iter()
        .map(chrono::Duration::seconds)
        .find(|s| range.num_seconds() / s.num_seconds() <= 300)
        .unwrap_or(chrono::Duration::days(1))
}

fn bad_step(raw: &str) -> ApiError {
    ApiError::bad_request(format!(
        "invalid step {raw:?}: use whole minutes like 1m, 5m, 1h or 1d"
    ))
}

/// `24h`, `90m`, `7d`, `30s`.
fn parse_duration(raw: &str) -> Option<chrono::Duration> {
    // The unit is the last character, whatever its width (a caller may send
    // any text: never split inside a character).
    let unit = raw.chars().next_back()?;
    let n = &raw[..raw.len() - unit.len_utf8()];
    let n: i64 = n.parse().ok().filter(|n| *n > 0 && *n <= 100_000)?;
    match unit {
        's' => Some(chrono::Duration::seconds(n)),
        'm' => Some(chrono::Duration::minutes(n)),
        'h' => Some(chrono::Duration::hours(n)),
        'd' => Some(chrono::Duration::days(n)),
        _ => None,
    }
}

/// A duration back from now, or an RFC 3339 time.
fn parse_since(raw: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    if let Some(d) = parse_duration(raw) {
        return Ok(now - d);
    }
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::bad_request(format!(
                "invalid since {raw:?}: use a duration like 24h or 30m, or an RFC 3339 time"
            ))
        })
}

/// One topic: who emitted to it, who it made jobs for.
#[derive(Serialize, ToSchema)]
pub struct TopicView {
    topic: String,
    emitters: Vec<FlowView>,
    subscribers: Vec<FlowView>,
}

#[derive(Serialize, ToSchema)]
pub struct FlowView {
    script: String,
    /// Events emitted (emitters) or jobs made (subscribers) so far.
    count: i64,
    last_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
pub struct SubscriptionNode {
    id: picloud_core::Uuid,
    script: String,
    /// The subscription's pattern (NATS wildcards).
    topic: String,
}

#[derive(Serialize, ToSchema)]
pub struct Topology {
    topics: Vec<TopicView>,
    subscriptions: Vec<SubscriptionNode>,
}

/// `GET /api/v1/topology`: the event-flow graph. Topics are those events
/// were seen on (from committed emits) and the subscriptions' patterns;
/// each names the scripts that emitted to it and those subscribed to it,
/// with counts. Scripts deleted since are left out.
#[utoipa::path(get, path = "/api/v1/topology", tag = "observability",
    responses(
        (status = 200, description = "topics with their emitters and subscribers", body = Topology),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
    ))]
pub async fn topology(State(state): State<Shared>) -> Result<Json<Topology>, ApiError> {
    let flows = state.store.flows().await.map_err(internal)?;
    let subs = state
        .store
        .list_subscriptions(None)
        .await
        .map_err(internal)?;
    let live: std::collections::HashSet<String> = state
        .store
        .list_scripts()
        .await
        .map_err(internal)?
        .into_iter()
        .map(|s| s.name)
        .collect();
    let mut topics: BTreeMap<String, TopicView> = BTreeMap::new();
    let entry = |topics: &mut BTreeMap<String, TopicView>, topic: &str| {
        topics.entry(topic.to_owned()).or_insert_with(|| TopicView {
            topic: topic.to_owned(),
            emitters: Vec::new(),
            subscribers: Vec::new(),
        });
    };
    for f in flows.iter().filter(|f| live.contains(&f.script)) {
        entry(&mut topics, &f.topic);
        let t = topics.get_mut(&f.topic).expect("just made");
        let list = if f.direction == "emit" {
            &mut t.emitters
        } else {
            &mut t.subscribers
        };
        list.push(FlowView {
            script: f.script.clone(),
            count: f.count,
            last_at: Some(f.last_at),
        });
    }
    // A subscription with no traffic yet still shows: under its pattern,
    // and under every seen topic it matches.
    for s in &subs {
        entry(&mut topics, &s.topic);
    }
    for t in topics.values_mut() {
        for s in subs.iter().filter(|s| topic_matches(&s.topic, &t.topic)) {
            if !t.subscribers.iter().any(|f| f.script == s.script) {
                t.subscribers.push(FlowView {
                    script: s.script.clone(),
                    count: 0,
                    last_at: None,
                });
            }
        }
    }
    Ok(Json(Topology {
        topics: topics.into_values().collect(),
        subscriptions: subs
            .into_iter()
            .map(|s| SubscriptionNode {
                id: s.id,
                script: s.script,
                topic: s.topic,
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_steps_parse() {
        assert_eq!(parse_duration("24h"), Some(chrono::Duration::hours(24)));
        assert_eq!(parse_duration("5m"), Some(chrono::Duration::minutes(5)));
        for bad in [
            "",
            "h",
            "0m",
            "-1h",
            "5x",
            "1.5h",
            "99999999999d",
            "m\u{FFFF}",
            "5é",
            "\u{0}",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(
            auto_step(chrono::Duration::hours(24)),
            chrono::Duration::minutes(5)
        );
        assert_eq!(
            auto_step(chrono::Duration::hours(1)),
            chrono::Duration::minutes(1)
        );
    }
}

//! Roll-ups of invocations (counts, errors, duration histograms per minute
//! and per hour) and of event flows, written by the managers' aggregators
//! and read by `GET /api/v1/stats` and `GET /api/v1/topology`.

use chrono::{DateTime, Utc};

use crate::{Store, StoreError};

/// Minute rows are kept this long; hour rows [`HOUR_ROWS_KEPT`].
pub const MINUTE_ROWS_KEPT: chrono::Duration = chrono::Duration::hours(48);
pub const HOUR_ROWS_KEPT: chrono::Duration = chrono::Duration::days(30);

/// One roll-up row: `step_s` seconds of one script ('' = all) from `bucket`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StatRow {
    pub step_s: i32,
    pub bucket: DateTime<Utc>,
    pub script: String,
    pub requests: i64,
    pub errors: i64,
    pub duration_us_sum: i64,
    pub hist: Vec<i64>,
}

/// Events that flowed between a script and a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRow {
    pub topic: String,
    /// `emit` (the script emitted to the topic) or `deliver` (the topic's
    /// events made jobs for the script).
    pub direction: &'static str,
    pub script: String,
    pub count: i64,
    pub last_at: DateTime<Utc>,
}

impl Store {
    /// Adds `rows` to the stored roll-ups (histograms add element-wise).
    ///
    /// Rows are written in key order: managers flush at the same time and
    /// share rows (every manager writes the all-scripts row of the current
    /// minute), and two upserts that lock shared rows in different orders
    /// deadlock.
    pub async fn add_stats(&self, rows: &[StatRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut rows: Vec<&StatRow> = rows.iter().collect();
        rows.sort_unstable_by(|a, b| {
            (a.step_s, &a.script, a.bucket).cmp(&(b.step_s, &b.script, b.bucket))
        });
        let width = rows[0].hist.len();
        // Arrays of arrays must be rectangular: pass the histograms flat.
        let flat: Vec<i64> = rows
            .iter()
            .flat_map(|r| {
                let mut h = r.hist.clone();
                h.resize(width, 0);
                h
            })
            .collect();
        sqlx::query(
            "WITH input AS (
                 SELECT * FROM UNNEST($1::int[], $2::timestamptz[], $3::text[], $4::bigint[],
                                      $5::bigint[], $6::bigint[])
                     WITH ORDINALITY AS t(step_s, bucket, script, requests, errors, dsum, n)
             )
             INSERT INTO invocation_stats AS s
                 (step_s, bucket, script, requests, errors, duration_us_sum, hist)
             SELECT step_s, bucket, script, requests, errors, dsum,
                    ($7::bigint[])[((n - 1) * $8 + 1):(n * $8)]
             FROM input
             ORDER BY n
             ON CONFLICT (step_s, script, bucket) DO UPDATE SET
                 requests = s.requests + EXCLUDED.requests,
                 errors = s.errors + EXCLUDED.errors,
                 duration_us_sum = s.duration_us_sum + EXCLUDED.duration_us_sum,
                 hist = ARRAY(SELECT coalesce(a, 0) + coalesce(b, 0)
                              FROM unnest(s.hist, EXCLUDED.hist) WITH ORDINALITY AS u(a, b, i)
                              ORDER BY i)",
        )
        .bind(rows.iter().map(|r| r.step_s).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.bucket).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.script.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.requests).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.errors).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.duration_us_sum).collect::<Vec<_>>())
        .bind(flat)
        .bind(width as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The rows of `script` ('' = all) at `step_s` in `[from, to)`, oldest
    /// first.
    pub async fn stats_rows(
        &self,
        step_s: i32,
        script: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<StatRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT step_s, bucket, script, requests, errors, duration_us_sum, hist
             FROM invocation_stats
             WHERE step_s = $1 AND script = $2 AND bucket >= $3 AND bucket < $4
             ORDER BY bucket",
        )
        .bind(step_s)
        .bind(script)
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every script's rows ('' excluded) at `step_s` in `[from, to)`, each
    /// script's summed into one (its `bucket` is `from`).
    pub async fn stats_by_script(
        &self,
        step_s: i32,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<StatRow>, StoreError> {
        let rows: Vec<StatRow> = sqlx::query_as(
            "SELECT step_s, bucket, script, requests, errors, duration_us_sum, hist
             FROM invocation_stats
             WHERE step_s = $1 AND script <> '' AND bucket >= $2 AND bucket < $3
             ORDER BY script",
        )
        .bind(step_s)
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<StatRow> = Vec::new();
        for row in rows {
            match out.last_mut() {
                Some(last) if last.script == row.script => last.merge(&row),
                _ => out.push(StatRow {
                    bucket: from,
                    ..row
                }),
            }
        }
        Ok(out)
    }

    /// Adds `flows` to the stored counts, in key order (as [`Self::add_stats`]).
    pub async fn add_flows(&self, flows: &[FlowRow]) -> Result<(), StoreError> {
        if flows.is_empty() {
            return Ok(());
        }
        let mut flows: Vec<&FlowRow> = flows.iter().collect();
        flows.sort_unstable_by(|a, b| {
            (&a.topic, a.direction, &a.script).cmp(&(&b.topic, b.direction, &b.script))
        });
        sqlx::query(
            "INSERT INTO topic_flows AS f (topic, direction, script, count, last_at)
             SELECT topic, direction, script, count, last_at
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::timestamptz[])
                 WITH ORDINALITY AS t(topic, direction, script, count, last_at, n)
             ORDER BY n
             ON CONFLICT (topic, direction, script) DO UPDATE SET
                 count = f.count + EXCLUDED.count,
                 last_at = greatest(f.last_at, EXCLUDED.last_at)",
        )
        .bind(flows.iter().map(|f| f.topic.clone()).collect::<Vec<_>>())
        .bind(flows.iter().map(|f| f.direction).collect::<Vec<_>>())
        .bind(flows.iter().map(|f| f.script.clone()).collect::<Vec<_>>())
        .bind(flows.iter().map(|f| f.count).collect::<Vec<_>>())
        .bind(flows.iter().map(|f| f.last_at).collect::<Vec<_>>())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every flow, by topic (at most 10,000).
    pub async fn flows(&self) -> Result<Vec<FlowRow>, StoreError> {
        Ok(sqlx::query_as::<_, FlowRecord>(
            "SELECT topic, direction, script, count, last_at FROM topic_flows
             ORDER BY topic, direction, script LIMIT 10000",
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(FlowRow::from)
        .collect())
    }

    /// Deletes roll-ups past their keep time.
    pub async fn prune_stats(&self) -> Result<u64, StoreError> {
        let now = Utc::now();
        let done = sqlx::query(
            "DELETE FROM invocation_stats
             WHERE (step_s = 60 AND bucket < $1) OR (step_s = 3600 AND bucket < $2)",
        )
        .bind(now - MINUTE_ROWS_KEPT)
        .bind(now - HOUR_ROWS_KEPT)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

impl StatRow {
    /// Adds `other`'s counts and histogram to this one.
    pub fn merge(&mut self, other: &StatRow) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.duration_us_sum += other.duration_us_sum;
        if self.hist.len() < other.hist.len() {
            self.hist.resize(other.hist.len(), 0);
        }
        for (a, b) in self.hist.iter_mut().zip(&other.hist) {
            *a += b;
        }
    }
}

/// A `topic_flows` row.
#[derive(sqlx::FromRow)]
struct FlowRecord {
    topic: String,
    direction: String,
    script: String,
    count: i64,
    last_at: DateTime<Utc>,
}

impl From<FlowRecord> for FlowRow {
    fn from(r: FlowRecord) -> Self {
        FlowRow {
            topic: r.topic,
            // A CHECK constraint allows only these two.
            direction: if r.direction == "emit" {
                "emit"
            } else {
                "deliver"
            },
            script: r.script,
            count: r.count,
            last_at: r.last_at,
        }
    }
}

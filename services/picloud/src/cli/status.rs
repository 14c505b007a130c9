//! `picloud status`: the running nodes (role, address, version, uptime,
//! workers, load) and the cluster's queue figures (jobs pending, outbox
//! lag), from `GET /api/v1/nodes`.

use serde_json::{Value, json};

use super::client::{CliError, Client};
use super::output::{Out, outln, text};

pub async fn status(client: &Client, out: Out) -> Result<(), CliError> {
    let v = client.get("/nodes").await?;
    if out.json {
        out.json(&v);
        return Ok(());
    }
    let rows: Vec<Value> = v["nodes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|n| {
            let workers = match (n["workers_busy"].as_u64(), n["workers"].as_u64()) {
                (Some(busy), Some(all)) => format!("{busy}/{all}"),
                _ => "-".into(),
            };
            json!({
                "role": n["role"],
                "id": n["id"],
                "address": n["address"],
                "version": n["version"],
                "uptime": n["uptime_seconds"].as_u64().map(uptime),
                "workers": workers,
                "load1": n["load1"].as_f64().map(|l| format!("{l:.2}")),
            })
        })
        .collect();
    out.table(
        &Value::Array(rows),
        &[
            ("role", "role"),
            ("id", "id"),
            ("address", "address"),
            ("version", "version"),
            ("uptime", "uptime"),
            ("workers", "busy/workers"),
            ("load1", "load"),
        ],
    );
    let q = &v["queue"];
    let or_unknown = |v: &Value| {
        if v.is_null() {
            "unknown".to_owned()
        } else {
            text(v)
        }
    };
    outln!("");
    outln!("jobs pending:  {}", or_unknown(&q["jobs_pending"]));
    let age = q["outbox_oldest_row_age_seconds"]
        .as_f64()
        .map_or_else(|| "unknown".to_owned(), |a| format!("{a:.1}s"));
    outln!(
        "outbox:        {} rows, oldest {age}",
        or_unknown(&q["outbox_pending_rows"])
    );
    Ok(())
}

/// `3d 4h`, `2h 5m`, `4m 10s`, `9s`.
fn uptime(s: u64) -> String {
    let (d, h, m) = (s / 86_400, s / 3_600 % 24, s / 60 % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {}s", s % 60),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn uptime_reads_like_a_person_writes_it() {
        assert_eq!(super::uptime(9), "9s");
        assert_eq!(super::uptime(250), "4m 10s");
        assert_eq!(super::uptime(7_500), "2h 5m");
        assert_eq!(super::uptime(3 * 86_400 + 4 * 3_600), "3d 4h");
    }
}

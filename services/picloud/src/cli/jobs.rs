//! `picloud jobs`: the jobs still queued (waiting, retrying or running),
//! to find what is stuck and replay or discard it.

use clap::Subcommand;
use reqwest::Method;

use super::client::{CliError, Client, seg};
use super::commands::with_query;
use super::output::Out;

#[derive(Subcommand)]
pub enum JobsCommand {
    /// Jobs not yet done, oldest first.
    Ls {
        #[arg(long)]
        script: Option<String>,
        /// Only jobs after this id (the last id of the previous page).
        #[arg(long)]
        after: Option<u64>,
        #[arg(long)]
        limit: Option<u32>,
    },
    Show {
        id: String,
    },
    /// Run the job again now, its attempts counted from 1.
    Replay {
        id: String,
    },
    /// Remove the job from the queue: it will not run again.
    Discard {
        id: String,
    },
}

const FIELDS: &[&str] = &[
    "seq",
    "script",
    "invocation_id",
    "trigger",
    "topic",
    "state",
    "attempts",
    "max_attempts",
    "last_error",
    "last_attempt_at",
    "queued_at",
    "unreadable",
];

pub async fn jobs(client: &Client, out: Out, c: JobsCommand) -> Result<(), CliError> {
    match c {
        JobsCommand::Ls {
            script,
            after,
            limit,
        } => {
            let path = with_query(
                "/jobs",
                &[
                    ("script", script),
                    ("after", after.map(|a| a.to_string())),
                    ("limit", limit.map(|l| l.to_string())),
                ],
            );
            let v = client.get(&path).await?;
            out.table(
                &v,
                &[
                    ("seq", "id"),
                    ("script", "script"),
                    ("trigger", "trigger"),
                    ("state", "state"),
                    ("attempts", "attempts"),
                    ("last_error", "last error"),
                    ("queued_at", "queued"),
                ],
            );
        }
        JobsCommand::Show { id } => {
            let v = client.get(&format!("/jobs/{}", seg(&id))).await?;
            out.fields(&v, FIELDS);
        }
        JobsCommand::Replay { id } => settle(client, out, "jobs", "job", &id, true).await?,
        JobsCommand::Discard { id } => settle(client, out, "jobs", "job", &id, false).await?,
    }
    Ok(())
}

/// Replays (`replay`) or discards the queued thing `id` under `/{path}`
/// (a job, a dead letter), saying so on stderr.
pub(super) async fn settle(
    client: &Client,
    out: Out,
    path: &str,
    noun: &str,
    id: &str,
    replay: bool,
) -> Result<(), CliError> {
    if replay {
        let v = client
            .api(Method::POST, &format!("/{path}/{}/replay", seg(id)), None)
            .await?;
        if out.json {
            out.json(&v);
        } else {
            eprintln!("replayed {noun} {id}");
        }
    } else {
        client
            .api(Method::DELETE, &format!("/{path}/{}", seg(id)), None)
            .await?;
        eprintln!("discarded {noun} {id}");
    }
    Ok(())
}

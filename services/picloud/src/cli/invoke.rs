//! `picloud invoke` and `picloud invocations`: call a script the way a
//! client would, and read what its invocations did.

use std::time::Duration;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::Value;

use super::client::{CliError, Client, api_error, seg};
use super::commands::with_query;
use super::output::{Out, escape_controls, text};
use super::output::{outln, write_stdout};

#[derive(Args)]
pub struct InvokeArgs {
    /// The script's name.
    pub name: String,
    /// Path after /fn/NAME, e.g. /users/7?x=1.
    #[arg(default_value = "")]
    pub path: String,
    #[arg(long, short = 'X', default_value = "GET")]
    pub method: String,
    /// The request body: JSON text, @FILE, or @- for standard input.
    #[arg(long, short = 'd')]
    pub data: Option<String>,
    /// A request header, NAME:VALUE (repeatable).
    #[arg(long = "header", short = 'H', value_name = "NAME:VALUE")]
    pub headers: Vec<String>,
    /// Queue the call (202) instead of waiting for the script.
    #[arg(long = "async")]
    pub is_async: bool,
    /// With --async: wait until the invocation has ended, and print its
    /// response.
    #[arg(long, requires = "is_async")]
    pub wait: bool,
    /// Print the status line and headers to stderr.
    #[arg(long, short)]
    pub verbose: bool,
}

#[derive(Subcommand)]
pub enum InvocationsCommand {
    /// Recent invocations, newest first.
    Ls {
        #[arg(long)]
        script: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One invocation and the tree of the events it caused.
    Show { id: String },
}

pub async fn invoke(client: &Client, args: InvokeArgs) -> Result<(), CliError> {
    let method = Method::from_bytes(args.method.to_uppercase().as_bytes())
        .map_err(|_| CliError::local(format!("{:?} is not an HTTP method", args.method)))?;
    let rest = if args.path.is_empty() || args.path.starts_with('/') || args.path.starts_with('?') {
        args.path.clone()
    } else {
        format!("/{}", args.path)
    };
    let mut req = client.raw(method, &format!("/fn/{}{rest}", seg(&args.name)));
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| CliError::local(format!("--header {h:?}: write it as NAME:VALUE")))?;
        req = req.header(k.trim(), v.trim());
    }
    if let Some(data) = &args.data {
        let body = match data.strip_prefix('@') {
            Some("-") => {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
                    .map_err(|e| CliError::local(format!("cannot read standard input: {e}")))?;
                b
            }
            Some(file) => std::fs::read(file)
                .map_err(|e| CliError::local(format!("cannot read {file}: {e}")))?,
            None => data.clone().into_bytes(),
        };
        // JSON unless the caller said otherwise with -H.
        let typed = args.headers.iter().any(|h| {
            h.split_once(':')
                .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("content-type"))
        });
        if !typed && serde_json::from_slice::<Value>(&body).is_ok() {
            req = req.header("content-type", "application/json");
        }
        req = req.body(body);
    }
    if args.is_async {
        req = req.header("prefer", "respond-async");
    }
    let resp = req.send().await.map_err(|e| client.unreachable(e))?;
    let status = resp.status();
    if args.verbose {
        eprintln!("{status}");
        for (k, v) in resp.headers() {
            eprintln!("{k}: {}", String::from_utf8_lossy(v.as_bytes()));
        }
    }
    let body = resp.bytes().await.map_err(|e| client.unreachable(e))?;
    if args.is_async && status == reqwest::StatusCode::ACCEPTED {
        let accepted: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !args.wait {
            outln!(
                "{}",
                serde_json::to_string_pretty(&accepted).unwrap_or_default()
            );
            return Ok(());
        }
        let url = accepted["status_url"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        return wait_for(client, &args.name, &url).await;
    }
    write_stdout(&body);
    if status.is_success() {
        return Ok(());
    }
    match api_error(status, &String::from_utf8_lossy(&body)) {
        // The script's own answer (already on stdout), not a PiCloud error.
        CliError::Api { code, .. } if code == status.as_u16().to_string() => {
            Err(CliError::local(format!("{} answered {status}", args.name)))
        }
        e => Err(e),
    }
}

/// Polls an async call's status URL with a spinner until it is done, then
/// prints the script's response body.
async fn wait_for(client: &Client, name: &str, status_url: &str) -> Result<(), CliError> {
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message("waiting for the invocation");
    spinner.enable_steady_tick(Duration::from_millis(100));
    let path = status_url
        .strip_prefix(client.base())
        .unwrap_or(status_url)
        .to_owned();
    let mut pause = picloud_core::Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        let resp = client
            .raw(Method::GET, &path)
            .send()
            .await
            .map_err(|e| client.unreachable(e))?;
        let status = resp.status();
        let answer = resp.text().await.map_err(|e| client.unreachable(e))?;
        if !status.is_success() {
            spinner.finish_and_clear();
            return Err(api_error(status, &answer));
        }
        let v: Value = serde_json::from_str(&answer).unwrap_or(Value::Null);
        if v["done"].as_bool() == Some(true) {
            spinner.finish_and_clear();
            let ok = v["status"].as_str() == Some("ok");
            if let Some(body) = v["response"]["body"].as_str() {
                // As the synchronous call prints it: the body as it is.
                write_stdout(body.as_bytes());
            }
            let answered = v["response"]["status"]
                .as_u64()
                .and_then(|s| u16::try_from(s).ok())
                .and_then(|s| reqwest::StatusCode::from_u16(s).ok())
                .filter(|s| !s.is_success());
            return if let (true, Some(status)) = (ok, answered) {
                Err(CliError::local(format!("{name} answered {status}")))
            } else if ok {
                Ok(())
            } else {
                Err(CliError::local(format!(
                    "the invocation ended {} (see `picloud invocations show {}`)",
                    text(&v["status"]),
                    text(&v["invocation_id"])
                )))
            };
        }
        spinner.set_message(format!("invocation {}", text(&v["status"])));
        tokio::time::sleep(pause.next_pause()).await;
    }
}

pub async fn invocations(client: &Client, out: Out, c: InvocationsCommand) -> Result<(), CliError> {
    match c {
        InvocationsCommand::Ls {
            script,
            status,
            limit,
        } => {
            let path = with_query(
                "/invocations",
                &[
                    ("script", script),
                    ("status", status),
                    ("limit", Some(limit.to_string())),
                ],
            );
            let v = client.get(&path).await?;
            out.table(
                &v,
                &[
                    ("id", "id"),
                    ("script", "script"),
                    ("trigger", "trigger"),
                    ("status", "status"),
                    ("http_status", "http"),
                    ("attempt", "attempt"),
                    ("duration_us", "duration_us"),
                    ("started_at", "started"),
                ],
            );
        }
        InvocationsCommand::Show { id } => {
            let v = client.get(&format!("/invocations/{}", seg(&id))).await?;
            if out.json {
                out.json(&v);
            } else {
                print_tree(&out, &v, "", true, true);
                if let Some(log) = v["log"].as_str().filter(|l| !l.is_empty()) {
                    outln!("\nlog:\n{}", escape_controls(log, true));
                }
                if let Some(err) = v["error"].as_str() {
                    outln!("\nerror: {}", escape_controls(err, true));
                }
            }
        }
    }
    Ok(())
}

/// One line per invocation of an event chain, children indented.
fn print_tree(out: &Out, node: &Value, prefix: &str, last: bool, root: bool) {
    let branch = if root {
        ""
    } else if last {
        "└─ "
    } else {
        "├─ "
    };
    let status = text(&node["status"]);
    outln!(
        "{prefix}{branch}{} {} v{} {} {} attempt {} {}µs",
        text(&node["id"]),
        text(&node["script"]),
        text(&node["version"]),
        text(&node["trigger"]),
        out.paint(&status, status == "ok"),
        text(&node["attempt"]),
        text(&node["duration_us"]),
    );
    let children = node["children"].as_array().cloned().unwrap_or_default();
    let next = if root {
        String::new()
    } else {
        format!("{prefix}{}", if last { "   " } else { "│  " })
    };
    for (i, c) in children.iter().enumerate() {
        print_tree(out, c, &next, i + 1 == children.len(), false);
    }
}

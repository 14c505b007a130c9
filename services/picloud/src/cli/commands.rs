//! The client commands, each a call or two to the admin API.

use std::io::{IsTerminal, Read};

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use super::client::{CliError, Client, seg};
use super::deploy::{DeployArgs, deploy, route_urls};
use super::invoke::{invocations, invoke};
use super::output::outln;
use super::output::{Out, text};
use super::profile::{Profile, Profiles};
use super::{ClientCommand, Target};

#[derive(Subcommand)]
pub enum ScheduleCommand {
    /// Run SCRIPT on a cron expression (5 or 6 fields).
    Add {
        script: String,
        cron: String,
        /// IANA time zone, e.g. Europe/Berlin (default UTC).
        #[arg(long)]
        timezone: Option<String>,
        /// After downtime: fire_once (default) or skip.
        #[arg(long, value_parser = ["fire_once", "skip"])]
        catch_up: Option<String>,
        /// While the previous firing still runs: skip or allow.
        #[arg(long, value_parser = ["skip", "allow"])]
        overlap: Option<String>,
        #[arg(long)]
        max_attempts: Option<u32>,
    },
    Ls {
        #[arg(long)]
        script: Option<String>,
    },
    Show {
        id: String,
    },
    Rm {
        id: String,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum SubscriptionsCommand {
    Ls {
        #[arg(long)]
        script: Option<String>,
    },
    Rm {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum SecretCommand {
    /// Set a secret: VALUE, or standard input when VALUE is left out.
    Set {
        name: String,
        value: Option<String>,
    },
    Ls,
    Rm {
        name: String,
    },
}

#[derive(Subcommand)]
pub enum ModuleCommand {
    /// Deploy a module (its name: --name or the file's name).
    Deploy {
        file: std::path::PathBuf,
        #[arg(long)]
        name: Option<String>,
    },
    Ls,
}

#[derive(Subcommand)]
pub enum DeadLettersCommand {
    Ls {
        #[arg(long)]
        script: Option<String>,
    },
    Show {
        id: String,
    },
    /// Run the job again (a fresh attempt count).
    Replay {
        id: String,
    },
    /// Delete the dead letter for good.
    Discard {
        id: String,
    },
}

pub async fn dispatch(command: ClientCommand, target: Target) -> Result<(), CliError> {
    let out = Out::new(target.json);
    if let ClientCommand::Login {
        url,
        token_stdin,
        local,
    } = command
    {
        return login(&target, url, token_stdin, local).await;
    }
    let client = connect(&target)?;
    match command {
        ClientCommand::Login { .. } | ClientCommand::Completions { .. } => Ok(()),
        ClientCommand::Deploy {
            path,
            name,
            limits,
            routes,
            keep_credentials,
        } => {
            let args = DeployArgs {
                path,
                name,
                limits,
                routes,
                keep_credentials,
                module: false,
            };
            deploy(&client, out, args).await
        }
        ClientCommand::Ls => {
            let v = client.get("/scripts").await?;
            out.table(
                &v,
                &[
                    ("name", "name"),
                    ("active_version", "active"),
                    ("latest_version", "latest"),
                    ("routes", "routes"),
                    ("updated_at", "updated"),
                ],
            );
            Ok(())
        }
        ClientCommand::Show { name } => {
            let v = client.get(&format!("/scripts/{}", seg(&name))).await?;
            if out.json {
                out.json(&v);
            } else {
                show_script(&out, client.base(), &name, &v);
            }
            Ok(())
        }
        ClientCommand::Rm { name, yes } => {
            if !yes {
                confirm(&format!(
                    "delete script {name} with its versions, schedules, subscriptions and kv?"
                ))?;
            }
            client
                .api(Method::DELETE, &format!("/scripts/{}", seg(&name)), None)
                .await?;
            eprintln!("deleted script {name}");
            Ok(())
        }
        ClientCommand::Versions { name } => {
            let v = client
                .get(&format!("/scripts/{}/versions", seg(&name)))
                .await?;
            out.table(
                &v,
                &[
                    ("version", "version"),
                    ("sha256", "sha256"),
                    ("routes", "routes"),
                    ("created_at", "created"),
                ],
            );
            Ok(())
        }
        ClientCommand::Rollback { name, version } => {
            let v = client
                .api(
                    Method::POST,
                    &format!("/scripts/{}/rollback", seg(&name)),
                    Some(&json!({ "version": version })),
                )
                .await?;
            if out.json {
                out.json(&v);
            } else {
                eprintln!("{name} now serves version {version}");
            }
            Ok(())
        }
        ClientCommand::Invoke(args) => invoke(&client, args).await,
        ClientCommand::Logs(args) => super::logs::logs(&client, out, args).await,
        ClientCommand::Invocations(c) => invocations(&client, out, c).await,
        ClientCommand::Schedule(c) => schedule(&client, out, c).await,
        ClientCommand::Subscribe {
            script,
            topic,
            max_attempts,
        } => {
            let mut body = json!({ "script": script, "topic": topic });
            if let Some(n) = max_attempts {
                body["max_attempts"] = json!(n);
            }
            let v = client
                .api(Method::POST, "/subscriptions", Some(&body))
                .await?;
            if out.json {
                out.json(&v);
            } else {
                outln!("{}", text(&v["id"]));
            }
            Ok(())
        }
        ClientCommand::Subscriptions(SubscriptionsCommand::Ls { script }) => {
            let v = client
                .get(&with_query("/subscriptions", &[("script", script)]))
                .await?;
            out.table(
                &v,
                &[
                    ("id", "id"),
                    ("script", "script"),
                    ("topic", "topic"),
                    ("max_attempts", "attempts"),
                ],
            );
            Ok(())
        }
        ClientCommand::Subscriptions(SubscriptionsCommand::Rm { id }) => {
            client
                .api(
                    Method::DELETE,
                    &format!("/subscriptions/{}", seg(&id)),
                    None,
                )
                .await?;
            eprintln!("deleted subscription {id}");
            Ok(())
        }
        ClientCommand::Secret(c) => secret(&client, out, c).await,
        ClientCommand::Module(ModuleCommand::Deploy { file, name }) => {
            let args = DeployArgs {
                path: file,
                name,
                limits: Vec::new(),
                routes: Vec::new(),
                keep_credentials: false,
                module: true,
            };
            deploy(&client, out, args).await
        }
        ClientCommand::Module(ModuleCommand::Ls) => {
            let v = client.get("/modules").await?;
            out.table(
                &v,
                &[
                    ("name", "name"),
                    ("latest_version", "latest"),
                    ("updated_at", "updated"),
                ],
            );
            Ok(())
        }
        ClientCommand::DeadLetters(c) => dead_letters(&client, out, c).await,
        ClientCommand::Jobs(c) => super::jobs::jobs(&client, out, c).await,
        ClientCommand::Status => super::status::status(&client, out).await,
    }
}

/// A script as `key: value` lines, then its limits one a line.
fn show_script(out: &Out, base: &str, name: &str, v: &Value) {
    let active = &v["active"];
    let modules: Vec<String> = active["modules"]
        .as_object()
        .map(|m| m.iter().map(|(k, n)| format!("{k} v{n}")).collect())
        .unwrap_or_default();
    let summary = json!({
        "name": v["name"],
        "url": format!("{base}/fn/{name}"),
        "active_version": v["active_version"],
        "latest_version": v["latest_version"],
        "sha256": active["sha256"],
        "modules": if modules.is_empty() { "-".to_owned() } else { modules.join(", ") },
        "keep_credentials": active["keep_credentials"],
        "routes": route_urls(base, &v["routes"]),
        "created_at": v["created_at"],
        "updated_at": v["updated_at"],
    });
    out.fields(
        &summary,
        &[
            "name",
            "url",
            "active_version",
            "latest_version",
            "sha256",
            "modules",
            "keep_credentials",
            "routes",
            "created_at",
            "updated_at",
        ],
    );
    if let Some(limits) = active["limits"].as_object() {
        outln!("limits:");
        let width = limits.keys().map(String::len).max().unwrap_or(0);
        for (k, n) in limits {
            outln!("  {k:width$}  {}", text(n));
        }
    }
}

/// The client for `target`: flags and environment first, then the profile.
fn connect(target: &Target) -> Result<Client, CliError> {
    let profiles = Profiles::load()?;
    let name = profiles.chosen(target.profile.as_deref());
    let stored = profiles.profiles.get(&name);
    if target.profile.is_some() && stored.is_none() {
        return Err(CliError::local(format!(
            "no profile {name:?}\nhelp: create it with `picloud login URL --profile {name}`"
        )));
    }
    let url = target.url.clone().or_else(|| stored.map(|p| p.url.clone()));
    // A profile's token goes only to the profile's own URL: `--url` or
    // PICLOUD_URL naming another server needs its own token.
    let same = |p: &Profile, url: &str| p.url.trim_end_matches('/') == url.trim_end_matches('/');
    let token = target.token.clone().or_else(|| {
        stored
            .filter(|p| url.as_deref().is_none_or(|u| same(p, u)))
            .map(|p| p.token.clone())
    });
    match (url, token) {
        (Some(url), Some(token)) => Client::new(&url, &token),
        (Some(url), None) if stored.is_some() => Err(CliError::local(format!(
            "no token for {url} (profile {name:?} is for another URL)\nhelp: pass --token or \
             PICLOUD_TOKEN, or run `picloud login {url} --profile NAME`"
        ))),
        _ => Err(CliError::local(
            "not logged in\nhelp: run `picloud login URL` (or set PICLOUD_URL and PICLOUD_TOKEN)",
        )),
    }
}

async fn login(
    target: &Target,
    url: Option<String>,
    token_stdin: bool,
    local: bool,
) -> Result<(), CliError> {
    let (url, local_token) = if local {
        let (u, t) = local_instance()?;
        (url.unwrap_or(u), Some(t))
    } else {
        (url.unwrap_or_default(), None)
    };
    let token = if let Some(t) = local_token {
        t
    } else if token_stdin {
        read_stdin()?
    } else if let Some(t) = &target.token {
        t.clone()
    } else if !std::io::stdin().is_terminal() {
        read_stdin()?
    } else {
        read_hidden("admin token")?
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        return Err(CliError::local("the token is empty"));
    }
    let url = url.trim_end_matches('/').to_owned();
    // Check both before storing them.
    let client = Client::new(&url, &token)?;
    client.get("/scripts").await?;
    let mut profiles = Profiles::load()?;
    let name = profiles.chosen(target.profile.as_deref());
    profiles.profiles.insert(
        name.clone(),
        Profile {
            url: url.clone(),
            token,
        },
    );
    if profiles.default.is_none() {
        profiles.default = Some(name.clone());
    }
    let path = profiles.save()?;
    eprintln!(
        "logged in to {url} as profile {name:?} (saved in {})",
        path.display()
    );
    Ok(())
}

/// The URL and admin token of the `picloud up` on this machine, found the
/// way `up` finds them (PICLOUD_CONFIG, PICLOUD_LISTEN, PICLOUD_DATA_DIR).
fn local_instance() -> Result<(String, String), CliError> {
    let config = picloud_core::Config::from_env()
        .map_err(|e| CliError::local(format!("cannot read the local configuration: {e}")))?;
    let path = config.data_dir.join("admin-token");
    let token = std::fs::read_to_string(&path).map_err(|e| {
        CliError::local(format!(
            "cannot read the local admin token at {} ({e}); is `picloud up` running \
             here as this user? (set PICLOUD_DATA_DIR to its data directory)",
            path.display()
        ))
    })?;
    let ip = config.listen.ip();
    let host = if ip.is_unspecified() {
        "127.0.0.1".to_owned()
    } else if ip.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    Ok((format!("http://{host}:{}", config.listen.port()), token))
}

/// Asks for a credential on the terminal without echoing it.
fn read_hidden(what: &str) -> Result<String, CliError> {
    let term = console::Term::stderr();
    let fail = |e: std::io::Error| CliError::local(format!("cannot read the {what}: {e}"));
    term.write_str(&format!("{what}: ")).map_err(fail)?;
    term.read_secure_line().map_err(fail)
}

fn read_stdin() -> Result<String, CliError> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .map_err(|e| CliError::local(format!("cannot read standard input: {e}")))?;
    Ok(s)
}

/// `path?k=v&…` for the parameters that are set.
pub(super) fn with_query(path: &str, params: &[(&str, Option<String>)]) -> String {
    let set: Vec<String> = params
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", seg(v))))
        .collect();
    if set.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", set.join("&"))
    }
}

const SCHEDULE_COLUMNS: &[(&str, &str)] = &[
    ("id", "id"),
    ("script", "script"),
    ("cron", "cron"),
    ("timezone", "timezone"),
    ("enabled", "enabled"),
    ("next_runs", "next"),
];

async fn schedule(client: &Client, out: Out, c: ScheduleCommand) -> Result<(), CliError> {
    match c {
        ScheduleCommand::Add {
            script,
            cron,
            timezone,
            catch_up,
            overlap,
            max_attempts,
        } => {
            let mut body = json!({ "script": script, "cron": cron });
            for (k, v) in [
                ("timezone", timezone),
                ("catch_up", catch_up),
                ("overlap", overlap),
            ] {
                if let Some(v) = v {
                    body[k] = json!(v);
                }
            }
            if let Some(n) = max_attempts {
                body["max_attempts"] = json!(n);
            }
            let v = client.api(Method::POST, "/schedules", Some(&body)).await?;
            show_schedule(&out, &v);
        }
        ScheduleCommand::Ls { script } => {
            let v = client
                .get(&with_query("/schedules", &[("script", script)]))
                .await?;
            let rows: Vec<Value> = v
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|s| {
                    let mut s = s.clone();
                    s["next_runs"] = s["next_runs"][0].clone();
                    s
                })
                .collect();
            if out.json {
                out.json(&v);
            } else {
                out.table(&Value::Array(rows), SCHEDULE_COLUMNS);
            }
        }
        ScheduleCommand::Show { id } => {
            let v = client.get(&format!("/schedules/{}", seg(&id))).await?;
            show_schedule(&out, &v);
        }
        ScheduleCommand::Rm { id } => {
            client
                .api(Method::DELETE, &format!("/schedules/{}", seg(&id)), None)
                .await?;
            eprintln!("deleted schedule {id}");
        }
        ScheduleCommand::Pause { id } => {
            let v = set_enabled(client, &id, false).await?;
            show_schedule(&out, &v);
        }
        ScheduleCommand::Resume { id } => {
            let v = set_enabled(client, &id, true).await?;
            show_schedule(&out, &v);
        }
    }
    Ok(())
}

async fn set_enabled(client: &Client, id: &str, enabled: bool) -> Result<Value, CliError> {
    client
        .api(
            Method::PATCH,
            &format!("/schedules/{}", seg(id)),
            Some(&json!({ "enabled": enabled })),
        )
        .await
}

fn show_schedule(out: &Out, v: &Value) {
    if out.json {
        return out.json(v);
    }
    out.fields(
        v,
        &[
            "id",
            "script",
            "cron",
            "timezone",
            "enabled",
            "catch_up",
            "overlap",
            "max_attempts",
            "last_fired_at",
        ],
    );
    if let Some(runs) = v["next_runs"].as_array().filter(|r| !r.is_empty()) {
        outln!("next runs:");
        for r in runs {
            outln!("  {}", text(r));
        }
    }
}

async fn secret(client: &Client, out: Out, c: SecretCommand) -> Result<(), CliError> {
    match c {
        SecretCommand::Set { name, value } => {
            let value = match value {
                Some(v) => v,
                None if std::io::stdin().is_terminal() => {
                    read_hidden(&format!("value of secret {name}"))?
                }
                None => {
                    let v = read_stdin()?;
                    // A trailing newline from `echo` or a heredoc is not part of it.
                    v.strip_suffix('\n')
                        .map(|s| s.strip_suffix('\r').unwrap_or(s))
                        .unwrap_or(&v)
                        .to_owned()
                }
            };
            client
                .api(
                    Method::PUT,
                    &format!("/secrets/{}", seg(&name)),
                    Some(&json!({ "value": value })),
                )
                .await?;
            eprintln!("secret {name} set");
        }
        SecretCommand::Ls => {
            let v = client.get("/secrets").await?;
            out.table(&v, &[("name", "name"), ("updated_at", "updated")]);
        }
        SecretCommand::Rm { name } => {
            client
                .api(Method::DELETE, &format!("/secrets/{}", seg(&name)), None)
                .await?;
            eprintln!("deleted secret {name}");
        }
    }
    Ok(())
}

async fn dead_letters(client: &Client, out: Out, c: DeadLettersCommand) -> Result<(), CliError> {
    match c {
        DeadLettersCommand::Ls { script } => {
            let v = client
                .get(&with_query("/dead-letters", &[("script", script)]))
                .await?;
            out.table(
                &v,
                &[
                    ("id", "id"),
                    ("script", "script"),
                    ("topic", "topic"),
                    ("attempts", "attempts"),
                    ("error", "error"),
                    ("created_at", "created"),
                    ("replayed_at", "replayed"),
                ],
            );
        }
        DeadLettersCommand::Show { id } => {
            let v = client.get(&format!("/dead-letters/{}", seg(&id))).await?;
            out.fields(
                &v,
                &[
                    "id",
                    "invocation_id",
                    "script",
                    "topic",
                    "subscription_id",
                    "attempts",
                    "error",
                    "created_at",
                    "replayed_at",
                ],
            );
        }
        DeadLettersCommand::Replay { id } => {
            super::jobs::settle(client, out, "dead-letters", "dead letter", &id, true).await?
        }
        DeadLettersCommand::Discard { id } => {
            super::jobs::settle(client, out, "dead-letters", "dead letter", &id, false).await?
        }
    }
    Ok(())
}

/// Asks `question` on a terminal; without one, refuses (the caller must say
/// `--yes`). Anything but y/yes is a no.
fn confirm(question: &str) -> Result<(), CliError> {
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Usage(format!(
            "{question} Not asking without a terminal: pass --yes"
        )));
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| CliError::local(format!("cannot read the answer: {e}")))?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(CliError::local("not deleted"))
    }
}

//! The NATS permissions of each role (DESIGN.md §6: NATS is a trust
//! boundary), derived from the same [`Names`] the code uses, so they cannot
//! drift from the subjects the roles really use.
//!
//! - A **gateway** routes (reads single routes and watches the route
//!   bucket with an ordered consumer), sends sync invocations and async
//!   submissions, and answers node pings. It cannot ask for secrets, commit
//!   effects, write scripts or serve anything, nor take durable consumers or
//!   acknowledge anything on the routes.
//! - An **executor** serves invocations, takes jobs, reads single routes,
//!   script versions and modules, asks managers for kv, secrets and
//!   commits, and publishes records and live logs. It cannot write the
//!   route or version buckets (change scripts), watch or list them, publish
//!   jobs or events, or answer the control plane.
//! - A **manager** uses every stream and bucket of the prefix (reads,
//!   consumers, KV writes, deleting a queued job) and answers the control
//!   plane (commits, kv, secrets, dead letters, async submissions). It
//!   cannot delete, purge or reconfigure a stream: that is an operator's
//!   job, with an account of its own.
//!
//! Every role may look up and create (if missing) the prefix's streams,
//! since any role may start first. Replies reach each role on its own inbox
//! (`_INBOX.{prefix}.{role}.>`, see [`crate::Bus::connect_with`]); answering
//! a request is allowed by `allow_responses`, never by a publish right on
//! `_INBOX`, so no role can forge or read another's replies.

use crate::Names;

/// The roles that connect to NATS with a user of their own.
pub const ROLES: [&str; 3] = ["gateway", "executor", "manager"];

/// One role's rights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

/// How much of a stream's JetStream API a role may use.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Use {
    /// Look it up and create it if missing (at connect).
    Ensure,
    /// ... and get single messages (a KV `get`).
    Get,
    /// ... and watch it with an ordered push consumer (a KV `watch`: no
    /// durable consumer, no pull, no acks).
    Watch,
    /// ... and read it with any consumer: durable ones, pulls, acks.
    Read,
    /// ... and delete single messages (a queued job). Never delete, purge
    /// or update the stream itself.
    Own,
}

fn js_api(stream: &str, how: Use) -> Vec<String> {
    let mut out = vec![
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.STREAM.CREATE.{stream}"),
        // At connect, a role checks the jobs stream for a legacy consumer.
        format!("$JS.API.CONSUMER.INFO.{stream}.>"),
    ];
    if how == Use::Ensure {
        return out;
    }
    out.extend([
        format!("$JS.API.DIRECT.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}.>"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
    ]);
    if how == Use::Get {
        return out;
    }
    // An ordered consumer is created (again after a gap), deleted when
    // dropped, and answers the server's flow control.
    out.extend([
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.DELETE.{stream}.>"),
        format!("$JS.FC.{stream}.>"),
    ]);
    if how == Use::Watch {
        return out;
    }
    out.extend([
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.>"),
        format!("$JS.ACK.{stream}.>"),
    ]);
    if how == Use::Own {
        out.push(format!("$JS.API.STREAM.MSG.DELETE.{stream}"));
    }
    out
}

/// The JetStream streams of a prefix, KV buckets included.
struct Streams {
    routes: String,
    versions: String,
    records: String,
    logs: String,
    jobs: String,
    events: String,
}

impl Streams {
    fn of(names: &Names) -> Self {
        Self {
            routes: format!("KV_{}", names.routes_bucket()),
            versions: format!("KV_{}", names.versions_bucket()),
            records: names.records_stream(),
            logs: names.logs_stream(),
            jobs: names.jobs_stream(),
            events: names.events_stream(),
        }
    }

    fn all(&self) -> [&str; 6] {
        [
            &self.routes,
            &self.versions,
            &self.records,
            &self.logs,
            &self.jobs,
            &self.events,
        ]
    }

    /// Every stream's API: those in `uses` as given, the rest only ensured.
    fn api(&self, uses: &[(&str, Use)]) -> Vec<String> {
        self.all()
            .iter()
            .flat_map(|s| {
                let how = uses
                    .iter()
                    .find(|(name, _)| name == s)
                    .map_or(Use::Ensure, |(_, how)| *how);
                js_api(s, how)
            })
            .collect()
    }
}

/// The rights of `role` (one of [`ROLES`]) under `names`' prefix.
pub fn for_role(names: &Names, prefix: &str, role: &str) -> Option<Permissions> {
    let s = Streams::of(names);
    let inbox = format!("{}.>", crate::connect::inbox_prefix(prefix, role));
    let kv = |bucket: String| format!("$KV.{bucket}.>");
    let mut publish = vec!["$JS.API.INFO".to_owned(), names.nodes_announce_subject()];
    let mut subscribe = vec![inbox, names.nodes_ping_subject()];
    match role {
        "gateway" => {
            publish.extend([names.invoke_wildcard(), names.async_submit_subject()]);
            publish.extend(s.api(&[(&s.routes, Use::Watch)]));
        }
        "executor" => {
            publish.extend([
                names.secrets_subject(),
                names.commit_subject(),
                names.kv_get_subject(),
                names.kv_list_subject(),
                names.dead_letter_subject(),
                names.records_subject(),
                names.logs_wildcard(),
            ]);
            publish.extend(s.api(&[
                (&s.routes, Use::Get),
                (&s.versions, Use::Get),
                (&s.jobs, Use::Read),
            ]));
            subscribe.extend([names.invoke_wildcard(), names.jobs_ready_wildcard()]);
        }
        "manager" => {
            publish.extend([
                names.jobs_wildcard(),
                names.jobs_ready_wildcard(),
                names.events_wildcard(),
                names.nodes_ping_subject(),
                kv(names.routes_bucket()),
                kv(names.versions_bucket()),
            ]);
            let own: Vec<(&str, Use)> = s.all().into_iter().map(|n| (n, Use::Own)).collect();
            publish.extend(s.api(&own));
            subscribe.extend([
                names.commit_subject(),
                names.kv_get_subject(),
                names.kv_list_subject(),
                names.dead_letter_subject(),
                names.async_submit_subject(),
                names.secrets_subject(),
                names.nodes_announce_subject(),
            ]);
        }
        _ => return None,
    }
    Some(Permissions { publish, subscribe })
}

/// A nats-server `authorization` block with one user per role, named
/// `{prefix}-{role}`, whose password the server reads from the environment
/// variable `{password_var}` with `ROLE` replaced by the upper-cased role
/// (e.g. `PICLOUD_NATS_GATEWAY_PASSWORD`). Paste it into the server's
/// config; see docs/operations.md.
pub fn authorization_block(prefix: &str, password_var: &str) -> String {
    let names = Names::new(prefix);
    let quoted = |list: &[String]| {
        list.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = format!(
        "# PiCloud roles for prefix \"{prefix}\" (printed by `picloud nats-config`).\nauthorization {{\n  users = [\n"
    );
    for role in ROLES {
        let Some(p) = for_role(&names, prefix, role) else {
            continue;
        };
        let var = password_var.replace("ROLE", &role.to_ascii_uppercase());
        out.push_str(&format!(
            "    {{\n      user: \"{prefix}-{role}\"\n      password: ${var}\n      permissions: {{\n        publish: {{ allow: [{}] }}\n        subscribe: {{ allow: [{}] }}\n        allow_responses: true\n      }}\n    }}\n",
            quoted(&p.publish),
            quoted(&p.subscribe),
        ));
    }
    out.push_str("  ]\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_executors_ask_for_secrets_and_only_managers_answer() {
        let names = Names::new("p");
        let role = |r| for_role(&names, "p", r).unwrap();
        let secrets = names.secrets_subject();
        assert!(role("executor").publish.contains(&secrets));
        assert!(!role("gateway").publish.contains(&secrets));
        assert!(!role("manager").publish.contains(&secrets));
        assert!(role("manager").subscribe.contains(&secrets));
        for r in ["gateway", "executor"] {
            assert!(!role(r).subscribe.contains(&secrets), "{r}");
            assert!(!role(r).subscribe.contains(&names.commit_subject()), "{r}");
            assert!(
                !role(r).publish.iter().any(|s| s.starts_with("$KV.")),
                "{r} may not write scripts"
            );
        }
        assert!(!role("gateway").publish.contains(&names.commit_subject()));
        assert!(for_role(&names, "p", "up").is_none());

        // The least JetStream API each use needs.
        let routes = format!("KV_{}", names.routes_bucket());
        let versions = format!("KV_{}", names.versions_bucket());
        let has = |r: &'static str, s: String| role(r).publish.contains(&s);
        assert!(has("executor", format!("$JS.API.DIRECT.GET.{versions}.>")));
        assert!(!has(
            "executor",
            format!("$JS.API.CONSUMER.CREATE.{routes}")
        ));
        assert!(!has(
            "executor",
            format!("$JS.API.CONSUMER.CREATE.{versions}.>")
        ));
        assert!(has(
            "gateway",
            format!("$JS.API.CONSUMER.CREATE.{routes}.>")
        ));
        assert!(!has("gateway", format!("$JS.ACK.{routes}.>")));
        assert!(has(
            "executor",
            format!("$JS.ACK.{}.>", names.jobs_stream())
        ));
        assert!(has(
            "manager",
            format!("$JS.API.STREAM.MSG.DELETE.{}", names.jobs_stream())
        ));
        assert!(
            !role("manager")
                .publish
                .iter()
                .any(|s| ["*", "DELETE.", "PURGE.", "UPDATE."]
                    .iter()
                    .any(|verb| s.starts_with(&format!("$JS.API.STREAM.{verb}")))),
            "a manager may not delete or purge a stream"
        );
        let block = authorization_block("p", "PICLOUD_NATS_ROLE_PASSWORD");
        assert!(
            block.contains("password: $PICLOUD_NATS_GATEWAY_PASSWORD"),
            "{block}"
        );
        assert!(block.contains("user: \"p-manager\""), "{block}");
    }
}

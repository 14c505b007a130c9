//! Every NATS name PiCloud uses, derived from one prefix so that several
//! installations (or parallel tests) can share a server without meeting.
//!
//! Subjects use the prefix as given (`picloud.invoke.hello`); streams and
//! buckets, which may not contain dots, use it upper-cased
//! (`PICLOUD_RECORDS`). The mapping is one-to-one over the prefixes the
//! configuration accepts (lower-case letters, digits, `-`, `_`): `-` stays
//! `-` (allowed in stream and bucket names) and `_` stays `_`, so `a-b` and
//! `a_b` never share a stream (`A-B_RECORDS`, `A_B_RECORDS`).

#[derive(Debug, Clone)]
pub struct Names {
    subject: String,
    stream: String,
}

impl Names {
    /// The names under `prefix`, which the configuration has checked
    /// ([`picloud_core::Config::validate`]): 1-32 lower-case ASCII letters,
    /// digits, `-` or `_`.
    pub fn new(prefix: &str) -> Self {
        Self {
            subject: prefix.to_owned(),
            stream: prefix.to_ascii_uppercase(),
        }
    }

    /// Every JetStream stream of this prefix, key-value buckets included
    /// (as their `KV_` streams): what a test or a bench deletes when done.
    pub fn all_streams(&self) -> Vec<String> {
        vec![
            self.records_stream(),
            self.jobs_stream(),
            self.events_stream(),
            self.logs_stream(),
            format!("KV_{}", self.routes_bucket()),
            format!("KV_{}", self.versions_bucket()),
        ]
    }

    pub fn invoke_subject(&self, script: &str) -> String {
        format!("{}.invoke.{script}", self.subject)
    }

    pub fn invoke_wildcard(&self) -> String {
        format!("{}.invoke.*", self.subject)
    }

    pub fn executor_group(&self) -> String {
        format!("{}.executors", self.subject)
    }

    /// Executors ask managers for a secret's value here (request/reply,
    /// never a stream: the value is not stored on the bus). Kept apart from
    /// every other subject so NATS permissions can give `pub` on it to the
    /// executor role only and `sub` to the manager role only.
    pub fn secrets_subject(&self) -> String {
        format!("{}.secrets.get", self.subject)
    }

    pub fn manager_group(&self) -> String {
        format!("{}.managers", self.subject)
    }

    /// The live logs (limits retention), one subject per script.
    pub fn logs_stream(&self) -> String {
        format!("{}_LOGS", self.stream)
    }

    pub fn logs_subject(&self, script: &str) -> String {
        format!("{}.logs.{script}", self.subject)
    }

    pub fn logs_wildcard(&self) -> String {
        format!("{}.logs.*", self.subject)
    }

    pub fn records_subject(&self) -> String {
        format!("{}.records", self.subject)
    }

    pub fn records_stream(&self) -> String {
        format!("{}_RECORDS", self.stream)
    }

    /// Async jobs (work queue, one subject and one durable consumer per
    /// script, each consumer shared by the executors).
    pub fn jobs_stream(&self) -> String {
        format!("{}_JOBS", self.stream)
    }

    pub fn job_subject(&self, script: &str) -> String {
        format!("{}.jobs.{script}", self.subject)
    }

    pub fn jobs_wildcard(&self) -> String {
        format!("{}.jobs.>", self.subject)
    }

    pub fn script_of_job_subject<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.subject.as_str())?
            .strip_prefix(".jobs.")
    }

    /// A job's publisher rings here once it is stored (the executors'
    /// doorbell, core NATS, not stored).
    pub fn job_ready_subject(&self, script: &str) -> String {
        format!("{}.jobready.{script}", self.subject)
    }

    pub fn jobs_ready_wildcard(&self) -> String {
        format!("{}.jobready.>", self.subject)
    }

    pub fn script_of_job_ready_subject<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.subject.as_str())?
            .strip_prefix(".jobready.")
    }

    /// A script's durable job consumer (script names are letters, digits,
    /// `-` and `_`, all allowed in consumer names).
    pub fn job_consumer(script: &str) -> String {
        format!("jobs_{script}")
    }

    /// The event log (limits retention); the topic is the subject suffix.
    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.stream)
    }

    pub fn event_subject(&self, topic: &str) -> String {
        format!("{}.events.{topic}", self.subject)
    }

    pub fn events_wildcard(&self) -> String {
        format!("{}.events.>", self.subject)
    }

    /// Executors → managers (request/reply): kv reads, commits, dead letters.
    pub fn kv_get_subject(&self) -> String {
        format!("{}.kv.get", self.subject)
    }

    pub fn kv_list_subject(&self) -> String {
        format!("{}.kv.list", self.subject)
    }

    pub fn commit_subject(&self) -> String {
        format!("{}.commit", self.subject)
    }

    pub fn dead_letter_subject(&self) -> String {
        format!("{}.deadletter", self.subject)
    }

    /// Gateways → managers (request/reply): accept an async HTTP call.
    pub fn async_submit_subject(&self) -> String {
        format!("{}.async.submit", self.subject)
    }

    /// Every role instance answers pings here with its `NodeInfo`.
    pub fn nodes_ping_subject(&self) -> String {
        format!("{}.nodes.ping", self.subject)
    }

    /// Role instances announce their start and stop here.
    pub fn nodes_announce_subject(&self) -> String {
        format!("{}.nodes.announce", self.subject)
    }

    pub fn routes_bucket(&self) -> String {
        format!("{}_ROUTES", self.stream)
    }

    pub fn versions_bucket(&self) -> String {
        format!("{}_VERSIONS", self.stream)
    }

    pub fn route_key(script: &str) -> String {
        format!("route.{script}")
    }

    pub fn script_of_route_key(key: &str) -> &str {
        key.strip_prefix("route.").unwrap_or(key)
    }

    pub fn version_key(script: &str, version: u32) -> String {
        format!("source.{script}.{version}")
    }

    pub fn module_key(module: &str, version: u32) -> String {
        format!("module.{module}.{version}")
    }

    pub fn parse_version_key(key: &str) -> Option<(String, u32)> {
        let rest = key.strip_prefix("source.")?;
        let (script, version) = rest.rsplit_once('.')?;
        Some((script.to_owned(), version.parse().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_url() {
        assert_eq!(
            crate::split_credentials("nats://u:p@127.0.0.1:4222"),
            (
                "nats://127.0.0.1:4222".into(),
                Some(("u".into(), "p".into()))
            )
        );
        assert_eq!(
            crate::split_credentials("nats://127.0.0.1:4222"),
            ("nats://127.0.0.1:4222".into(), None)
        );
    }

    #[test]
    fn names_are_prefixed() {
        let n = Names::new("t-1a");
        assert_eq!(n.invoke_subject("hello"), "t-1a.invoke.hello");
        assert_eq!(n.records_stream(), "T-1A_RECORDS");
        assert_eq!(n.routes_bucket(), "T-1A_ROUTES");
        assert!(n.all_streams().contains(&"KV_T-1A_VERSIONS".to_owned()));
        assert_eq!(Names::script_of_route_key(&Names::route_key("x")), "x");
        assert_eq!(
            Names::parse_version_key(&Names::version_key("a-b", 12)),
            Some(("a-b".into(), 12))
        );
        assert_eq!(Names::parse_version_key("source.x"), None);
        assert_eq!(n.script_of_job_subject(&n.job_subject("a_b")), Some("a_b"));
        assert_eq!(
            n.script_of_job_ready_subject("t-1a.jobready.a-b"),
            Some("a-b")
        );
        assert_eq!(n.script_of_job_subject("t-1b.jobs.x"), None);
    }

    /// Issue #18: `a-b` and `a_b` used to share every stream and bucket.
    #[test]
    fn prefixes_differing_in_dash_or_underscore_share_no_stream() {
        let (dash, under) = (Names::new("a-b"), Names::new("a_b"));
        for (d, u) in dash.all_streams().iter().zip(under.all_streams().iter()) {
            assert_ne!(d, u);
        }
        assert_ne!(dash.records_stream(), under.records_stream());
        assert_ne!(dash.jobs_stream(), under.jobs_stream());
    }
}

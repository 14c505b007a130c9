//! Per-invocation state the engine's callbacks need: the captured log, the
//! deadline, the host's capabilities and the secret values handed out (which
//! are masked as `***` wherever the log or an error would show them). The engine is built once per thread, its callbacks are
//! `'static`, so they share this through an `Arc` and the sandbox resets it
//! at the start of every run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use std::collections::BTreeMap;

use crate::Host;
use crate::hostcall::{HostError, HttpCall, HttpReply};
use picloud_core::effects::{Effects, Emit, KvVersion, ListRead};
use picloud_core::{Limits, LogLevel};

pub(crate) const MASK: &str = "***";

/// Distinct secrets one invocation may fetch (each is fetched once).
const MAX_SECRETS_PER_INVOCATION: usize = 32;

const MODULE_INIT: &str = "{} is not available in a module's top-level code (it runs once for every importer); call it from a function";

const TRUNCATED: &str = "\n[log truncated]";

#[derive(Default)]
pub(crate) struct Capture {
    state: Mutex<State>,
    /// Set once the invocation must end; read on every operation, so kept
    /// outside the lock.
    stopping: AtomicBool,
}

/// One captured line: where it ends in the invocation's log (past its
/// newline), which function wrote it and when (Unix microseconds). The log
/// stays one string (the record keeps it so); these marks let the live log
/// send it line by line with levels and times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLine {
    pub end: usize,
    pub level: LogLevel,
    pub at_us: i64,
}

/// Each line of `log` with its mark, without its newline.
pub fn log_lines<'a>(
    log: &'a str,
    marks: &'a [LogLine],
) -> impl Iterator<Item = (&'a LogLine, &'a str)> {
    let mut start = 0;
    marks.iter().filter_map(move |m| {
        let text = log.get(start..m.end.min(log.len()))?;
        start = m.end;
        Some((m, text.strip_suffix('\n').unwrap_or(text)))
    })
}

#[derive(Default)]
struct State {
    log: String,
    marks: Vec<LogLine>,
    max_bytes: usize,
    truncated: bool,
    deadline: Option<Instant>,
    host: Option<Arc<dyn Host>>,
    secrets: Vec<String>,
    /// Secrets fetched in this invocation, by name (asked once each).
    fetched: Vec<(String, Option<String>)>,
    limits: Limits,
    http_calls: u32,
    /// Why the progress callback ended the invocation (see [`Capture::stop`]).
    stopped: Option<String>,
    /// Non-zero while a module's top-level code runs: its results are
    /// cached for every importer, so it may not fetch secrets or call out.
    module_init: usize,
    /// Whose kv this invocation sees.
    script: String,
    /// Reads, buffered writes and emits (see `picloud_core::effects`).
    effects: Effects,
    /// Values read from the store, by key (a key is fetched once).
    read_values: BTreeMap<String, Option<serde_json::Value>>,
    kv_ops: u32,
}

/// `text` with every secret value replaced by [`MASK`], longest first (so a
/// secret containing another is masked whole).
pub(crate) fn mask(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for s in secrets {
        if !s.is_empty() && out.contains(s.as_str()) {
            out = out.replace(s.as_str(), MASK);
        }
    }
    out
}

impl Capture {
    pub(crate) fn begin(
        &self,
        script: &str,
        deadline: Instant,
        limits: &Limits,
        host: Arc<dyn Host>,
    ) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.script.clear();
        s.script.push_str(script);
        s.effects = Effects::default();
        s.read_values.clear();
        s.kv_ops = 0;
        s.log.clear();
        s.marks.clear();
        s.max_bytes = limits.max_log_bytes;
        s.limits = limits.clone();
        s.http_calls = 0;
        s.module_init = 0;
        crate::memory::arm(limits.max_memory_bytes);
        s.stopped = None;
        self.stopping.store(false, Ordering::Relaxed);
        s.truncated = false;
        s.deadline = Some(deadline);
        s.host = Some(host);
        s.secrets.clear();
        s.fetched.clear();
    }

    /// Ends the invocation: the (masked) log and the secret values handed
    /// out, for masking anything else the invocation produced.
    pub(crate) fn finish(&self) -> (String, Vec<LogLine>, Vec<String>, Effects) {
        crate::memory::disarm();
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.deadline = None;
        s.host = None;
        s.read_values.clear();
        let effects = std::mem::take(&mut s.effects);
        let secrets = std::mem::take(&mut s.secrets);
        let mut marks = std::mem::take(&mut s.marks);
        let raw = std::mem::take(&mut s.log);
        let mut log = if secrets.is_empty() {
            raw
        } else {
            // Line by line, so each mark still ends its own line.
            let mut masked = String::with_capacity(raw.len());
            let mut start = 0;
            for m in &mut marks {
                masked.push_str(&mask(&raw[start..m.end], &secrets));
                start = m.end;
                m.end = masked.len();
            }
            masked
        };
        if s.truncated {
            log.push_str(TRUNCATED);
            if let Some(last) = marks.last_mut() {
                last.end = log.len();
            }
        }
        (log, marks, secrets, effects)
    }

    /// Counts one kv call; refuses in a module's top-level code.
    fn kv_begin(&self, s: &mut State, what: &str) -> Result<(), HostError> {
        if s.module_init > 0 {
            return Err(HostError::Failed(MODULE_INIT.replace("{}", what)));
        }
        if s.kv_ops >= s.limits.max_kv_ops {
            return Err(HostError::Limit(format!(
                "kv operation limit of {} exceeded",
                s.limits.max_kv_ops
            )));
        }
        s.kv_ops += 1;
        Ok(())
    }

    /// The value of `key`: this invocation's own write if any, else the
    /// store's (fetched once, its version remembered for the commit).
    pub(crate) fn kv_get(&self, key: &str) -> Result<Option<serde_json::Value>, HostError> {
        let (host, deadline, script) = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            self.kv_begin(&mut s, "kv::")?;
            if let Some(written) = s.effects.writes.get(key) {
                return Ok(written.clone());
            }
            if let Some(read) = s.read_values.get(key) {
                return Ok(read.clone());
            }
            (s.host.clone(), s.deadline, s.script.clone())
        };
        let (Some(host), Some(deadline)) = (host, deadline) else {
            return Err(HostError::Failed("kv is not available here".into()));
        };
        let entry = host.kv_get(&script, key, deadline)?;
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (value, version) = match entry {
            Some(e) => (Some(e.value), e.version),
            None => (None, 0),
        };
        s.effects.reads.insert(key.to_owned(), version);
        s.read_values.insert(key.to_owned(), value.clone());
        Ok(value)
    }

    /// Buffers a write (`None` deletes); it commits with the invocation.
    pub(crate) fn kv_put(
        &self,
        key: &str,
        value: Option<serde_json::Value>,
    ) -> Result<(), HostError> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.kv_begin(&mut s, "kv::")?;
        s.effects.writes.insert(key.to_owned(), value);
        Ok(())
    }

    /// Keys starting with `prefix` as this invocation sees them (the store's,
    /// with its own writes applied), sorted.
    pub(crate) fn kv_list(&self, prefix: &str) -> Result<Vec<String>, HostError> {
        let (host, deadline, script) = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            self.kv_begin(&mut s, "kv::")?;
            (s.host.clone(), s.deadline, s.script.clone())
        };
        let (Some(host), Some(deadline)) = (host, deadline) else {
            return Err(HostError::Failed("kv is not available here".into()));
        };
        let entries: Vec<(String, KvVersion)> = host.kv_list(&script, prefix, deadline)?;
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut keys: std::collections::BTreeSet<String> =
            entries.iter().map(|(k, _)| k.clone()).collect();
        for (k, v) in &s.effects.writes {
            if k.starts_with(prefix) {
                match v {
                    Some(_) => keys.insert(k.clone()),
                    None => keys.remove(k),
                };
            }
        }
        if !s.effects.lists.iter().any(|l| l.prefix == prefix) {
            s.effects.lists.push(ListRead {
                prefix: prefix.to_owned(),
                entries,
            });
        }
        Ok(keys.into_iter().collect())
    }

    /// Buffers an event; it is published when the invocation commits.
    pub(crate) fn emit(&self, topic: String, payload: serde_json::Value) -> Result<(), HostError> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.module_init > 0 {
            return Err(HostError::Failed(MODULE_INIT.replace("{}", "emit()")));
        }
        if s.effects.emits.len() as u64 >= u64::from(s.limits.max_emits) {
            return Err(HostError::Limit(format!(
                "emit limit of {} exceeded",
                s.limits.max_emits
            )));
        }
        s.effects.emits.push(Emit { topic, payload });
        Ok(())
    }

    pub(crate) fn limits(&self) -> Limits {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .limits
            .clone()
    }

    /// Brackets a module's top-level code (see `module_init`).
    pub(crate) fn enter_module(&self, entering: bool) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if entering {
            s.module_init += 1;
        } else {
            s.module_init = s.module_init.saturating_sub(1);
        }
    }

    /// Counts the call against `max_http_calls` and hands it to the host
    /// (outside the lock).
    pub(crate) fn http(&self, call: HttpCall) -> Result<HttpReply, HostError> {
        let (host, deadline, limits) = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if s.module_init > 0 {
                return Err(HostError::Failed(MODULE_INIT.replace("{}", "http::")));
            }
            if s.http_calls >= s.limits.max_http_calls {
                return Err(HostError::Limit(format!(
                    "http call limit of {} exceeded",
                    s.limits.max_http_calls
                )));
            }
            s.http_calls += 1;
            (s.host.clone(), s.deadline, s.limits.clone())
        };
        let (Some(host), Some(deadline)) = (host, deadline) else {
            return Err(HostError::Failed(
                "outbound HTTP is not available here".into(),
            ));
        };
        host.http(call, &limits, deadline)
    }

    /// Asks the host for a secret (outside the lock: it may wait on the
    /// network) and remembers its value for masking.
    pub(crate) fn secret(&self, name: &str) -> Result<Option<String>, String> {
        let (host, deadline) = {
            let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if s.module_init > 0 {
                return Err(MODULE_INIT.replace("{}", "secret()"));
            }
            if let Some((_, v)) = s.fetched.iter().find(|(n, _)| n == name) {
                return Ok(v.clone());
            }
            if s.fetched.len() >= MAX_SECRETS_PER_INVOCATION {
                return Err(format!(
                    "at most {MAX_SECRETS_PER_INVOCATION} different secrets per invocation"
                ));
            }
            (s.host.clone(), s.deadline)
        };
        let (Some(host), Some(deadline)) = (host, deadline) else {
            return Err("secrets are not available here".into());
        };
        let value = host.secret(name, deadline).map_err(|e| e.to_string())?;
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.fetched.push((name.to_owned(), value.clone()));
        if let Some(v) = &value
            && !s.secrets.contains(v)
        {
            s.secrets.push(v.clone());
            s.secrets.sort_by_key(|v| std::cmp::Reverse(v.len()));
        }
        Ok(value)
    }

    /// Appends one line (secrets masked), keeping at most `max_bytes` (cut
    /// on a char boundary).
    pub(crate) fn line(&self, level: LogLevel, text: &str) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let masked = mask(text, &s.secrets);
        let text = masked.as_str();
        if s.truncated {
            return;
        }
        let room = s.max_bytes.saturating_sub(s.log.len());
        let needed = text.len() + 1;
        if needed <= room {
            s.log.push_str(text);
            s.log.push('\n');
        } else {
            let mut cut = room.min(text.len());
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            s.log.push_str(&text[..cut]);
            s.truncated = true;
        }
        let mark = LogLine {
            end: s.log.len(),
            level,
            at_us: chrono::Utc::now().timestamp_micros(),
        };
        s.marks.push(mark);
    }

    /// The invocation's memory limit, once an allocation on this thread
    /// has passed it (see [`crate::memory`]).
    pub(crate) fn memory_exceeded(&self) -> Option<usize> {
        if !crate::memory::over_limit() {
            return None;
        }
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Some(s.limits.max_memory_bytes)
    }

    /// Records that the invocation must end with `token`, and returns it.
    /// Termination is sticky: a built-in that swallows the error a callback
    /// raised and carries on still meets the same token on its very next
    /// operation, instead of at the next periodic check.
    pub(crate) fn stop(&self, token: String) -> String {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.stopping.store(true, Ordering::Relaxed);
        s.stopped.get_or_insert(token).clone()
    }

    /// The token of an earlier [`Capture::stop`] in this invocation.
    pub(crate) fn stopped(&self) -> Option<String> {
        if !self.stopping.load(Ordering::Relaxed) {
            return None;
        }
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.stopped.clone()
    }

    pub(crate) fn deadline_passed(&self) -> bool {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

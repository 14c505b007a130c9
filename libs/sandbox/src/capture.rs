//! Per-invocation state the engine's callbacks need: the captured log, the
//! deadline, the host's capabilities and the secret values handed out (which
//! are masked as `***` wherever the log or an error would show them). The engine is built once per thread, its callbacks are
//! `'static`, so they share this through an `Arc` and the sandbox resets it
//! at the start of every run.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::Host;
use crate::http::{HostError, HttpCall, HttpReply};
use picloud_core::Limits;

pub(crate) const MASK: &str = "***";

/// Distinct secrets one invocation may fetch (each is fetched once).
const MAX_SECRETS_PER_INVOCATION: usize = 32;

const MODULE_INIT: &str = "{} is not available in a module's top-level code (it runs once for every importer); call it from a function";

const TRUNCATED: &str = "\n[log truncated]";

#[derive(Default)]
pub(crate) struct Capture {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    log: String,
    max_bytes: usize,
    truncated: bool,
    deadline: Option<Instant>,
    host: Option<Arc<dyn Host>>,
    secrets: Vec<String>,
    /// Secrets fetched in this invocation, by name (asked once each).
    fetched: Vec<(String, Option<String>)>,
    limits: Limits,
    http_calls: u32,
    /// This thread's live bytes when the invocation began.
    memory_base: isize,
    /// Non-zero while a module's top-level code runs: its results are
    /// cached for every importer, so it may not fetch secrets or call out.
    module_init: usize,
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
    pub(crate) fn begin(&self, deadline: Instant, limits: &Limits, host: Arc<dyn Host>) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.log.clear();
        s.max_bytes = limits.max_log_bytes;
        s.limits = limits.clone();
        s.http_calls = 0;
        s.module_init = 0;
        s.memory_base = crate::memory::thread_live_bytes();
        s.truncated = false;
        s.deadline = Some(deadline);
        s.host = Some(host);
        s.secrets.clear();
        s.fetched.clear();
    }

    /// Ends the invocation: the (masked) log and the secret values handed
    /// out, for masking anything else the invocation produced.
    pub(crate) fn finish(&self) -> (String, Vec<String>) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.deadline = None;
        s.host = None;
        let secrets = std::mem::take(&mut s.secrets);
        let mut log = mask(&std::mem::take(&mut s.log), &secrets);
        if s.truncated {
            log.push_str(TRUNCATED);
        }
        (log, secrets)
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
        let value = host.secret(name, deadline)?;
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
    pub(crate) fn line(&self, text: &str) {
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
            return;
        }
        let mut cut = room.min(text.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        s.log.push_str(&text[..cut]);
        s.truncated = true;
    }

    /// The limit, when this thread holds more than it allows beyond what it
    /// held at the start of the invocation.
    pub(crate) fn memory_exceeded(&self) -> Option<usize> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let used = crate::memory::thread_live_bytes().saturating_sub(s.memory_base);
        (used > s.limits.max_memory_bytes as isize).then_some(s.limits.max_memory_bytes)
    }

    pub(crate) fn deadline_passed(&self) -> bool {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

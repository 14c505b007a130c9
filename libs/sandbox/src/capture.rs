//! Per-invocation state the engine's callbacks need: the captured log and the
//! deadline. The engine is built once per thread, its callbacks are
//! `'static`, so they share this through an `Arc` and the sandbox resets it
//! at the start of every run.

use std::sync::Mutex;
use std::time::Instant;

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
}

impl Capture {
    pub(crate) fn begin(&self, deadline: Instant, max_bytes: usize) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.log.clear();
        s.max_bytes = max_bytes;
        s.truncated = false;
        s.deadline = Some(deadline);
    }

    pub(crate) fn finish(&self) -> String {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.deadline = None;
        let mut log = std::mem::take(&mut s.log);
        if s.truncated {
            log.push_str(TRUNCATED);
        }
        log
    }

    /// Appends one line, keeping at most `max_bytes` (cut on a char boundary).
    pub(crate) fn line(&self, text: &str) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
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

    pub(crate) fn deadline_passed(&self) -> bool {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

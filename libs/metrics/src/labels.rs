//! Bounded label values: a label may only take a bounded set of values, or
//! every new value is a new time series in every Prometheus that scrapes us.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// Distinct script names with a label of their own, unless configured
/// (`PICLOUD_METRICS_MAX_SCRIPTS`).
pub const DEFAULT_MAX_SCRIPTS: usize = 200;

/// The `script` label of every script past the bound.
pub const OTHER_SCRIPTS: &str = "_other";

/// The first `max` script names seen keep their own label; later ones share
/// [`OTHER_SCRIPTS`]. (First come, for the process's life: a label never
/// changes meaning between scrapes.)
pub struct ScriptFold {
    max: AtomicUsize,
    /// Name → its label (the map is keyed by `String` so a lookup by `&str`
    /// allocates nothing).
    known: RwLock<HashMap<String, Arc<String>>>,
    other: Arc<String>,
}

impl ScriptFold {
    pub fn new(max: usize) -> Self {
        Self {
            max: AtomicUsize::new(max),
            known: RwLock::default(),
            other: Arc::new(OTHER_SCRIPTS.to_owned()),
        }
    }

    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// The label value for `script`.
    pub fn label(&self, script: &str) -> Arc<String> {
        let read = self.known.read().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = read.get(script) {
            return known.clone();
        }
        drop(read);
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = known.get(script) {
            return k.clone();
        }
        // A script may not take the fold's own name.
        if known.len() >= self.max.load(Ordering::Relaxed) || script == OTHER_SCRIPTS {
            return self.other.clone();
        }
        let label = Arc::new(script.to_owned());
        known.insert(script.to_owned(), label.clone());
        label
    }
}

/// The `limit` label for a sandbox limit's message (the public message of
/// an `Outcome::LimitExceeded`, which names the limit in words).
pub fn limit_label(message: &str) -> &'static str {
    let m = message.to_ascii_lowercase();
    // Most specific first: "kv operation" before "operation".
    const TABLE: &[(&str, &str)] = &[
        ("kv operation", "kv_operations"),
        ("operation", "operations"),
        ("wall time", "wall_time"),
        ("call depth", "call_depth"),
        ("memory", "memory"),
        ("data size", "data_size"),
        ("variable", "variables"),
        ("module", "modules"),
        ("emit", "emits"),
        ("http call", "http_calls"),
        ("response size", "response_bytes"),
        ("request body", "request_bytes"),
        ("commit size", "commit_bytes"),
        ("chain", "chain"),
        ("trace", "chain"),
    ];
    TABLE
        .iter()
        .find(|(needle, _)| m.contains(needle))
        .map_or("other", |(_, label)| label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_map_to_a_fixed_set() {
        assert_eq!(limit_label("operation limit exceeded"), "operations");
        assert_eq!(
            limit_label("kv operation limit of 10 exceeded"),
            "kv_operations"
        );
        assert_eq!(limit_label("wall time limit of 2s exceeded"), "wall_time");
        assert_eq!(
            limit_label("outbound HTTP call limit exceeded: at most 3 calls per invocation"),
            "http_calls"
        );
        assert_eq!(limit_label("anything a script chose"), "other");
    }

    #[test]
    fn the_fold_keeps_first_comers_and_refuses_its_own_name() {
        let f = ScriptFold::new(1);
        assert_eq!(*f.label("a"), "a");
        assert_eq!(*f.label("b"), OTHER_SCRIPTS);
        assert_eq!(*f.label("a"), "a");
        let g = ScriptFold::new(5);
        assert_eq!(*g.label(OTHER_SCRIPTS), OTHER_SCRIPTS);
    }
}

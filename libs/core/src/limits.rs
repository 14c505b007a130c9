//! Per-invocation sandbox limits.
//!
//! The operator configures two sets: `limits` (the defaults every script gets)
//! and `max_limits` (the ceiling no script may raise a limit above). A deploy
//! may carry [`LimitOverrides`]; the manager resolves them once, at deploy time,
//! into a full [`Limits`] that is stored with the script version. Executors use
//! the stored value as is, so a version behaves the same on every node and
//! forever.

use serde::{Deserialize, Serialize};

macro_rules! limits {
    ($( $(#[$doc:meta])* $field:ident : $ty:ty = $default:expr, max $max:expr; )*) => {
        /// The resolved limits of one script version. Unknown fields are
        /// ignored when reading, so executors of an older release can run
        /// versions stored by a newer one.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(default)]
        pub struct Limits {
            $( $(#[$doc])* pub $field: $ty, )*
        }

        /// Limits a deploy may ask for; absent fields keep the operator's default.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(deny_unknown_fields)]
        pub struct LimitOverrides {
            $(
                #[serde(
                    default,
                    skip_serializing_if = "Option::is_none",
                    deserialize_with = "crate::whole::saturating_opt"
                )]
                #[schema(minimum = 0)]
                pub $field: Option<$ty>,
            )*
        }

        impl Default for Limits {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        impl Limits {
            /// The default ceiling for every limit.
            pub fn default_maxima() -> Self {
                Self { $( $field: $max, )* }
            }

            /// `self` (the defaults) with `overrides` applied, each clamped
            /// to `maxima`. A zero override is raised to 1: a limit of zero
            /// would make every invocation fail.
            pub fn resolve(&self, overrides: &LimitOverrides, maxima: &Limits) -> Limits {
                Limits {
                    $( $field: overrides.$field.unwrap_or(self.$field).clamp(1, maxima.$field.max(1)), )*
                }
            }
        }
    };
}

limits! {
    /// Rhai operations (roughly: expression evaluations) per invocation.
    max_operations: u64 = 10_000_000, max 1_000_000_000;
    /// Wall-clock time per invocation, in milliseconds.
    wall_time_ms: u64 = 5_000, max 60_000;
    /// Nesting of script function calls.
    max_call_depth: usize = 64, max 128;
    /// Nesting of expressions at global level (parse and run time).
    max_expr_depth: usize = 64, max 128;
    /// Nesting of expressions inside functions.
    max_function_expr_depth: usize = 32, max 64;
    /// Bytes in one string.
    max_string_bytes: usize = 1 << 20, max 16 << 20;
    /// Elements in one array.
    max_array_len: usize = 100_000, max 1_000_000;
    /// Entries in one object map.
    max_map_len: usize = 100_000, max 1_000_000;
    /// Variables alive at once.
    max_variables: usize = 1_000, max 10_000;
    /// Functions a script may define.
    max_functions: usize = 256, max 4_096;
    /// Bytes of captured `log`/`print` output kept per invocation.
    max_log_bytes: usize = 64 << 10, max 1 << 20;
    /// Bytes of response body.
    max_response_bytes: usize = 512 << 10, max 4 << 20;
    /// Bytes the invocation's thread may hold beyond what it held at start
    /// (enforced where the binary installs the counting allocator).
    max_memory_bytes: usize = 64 << 20, max 512 << 20;
    /// Outbound HTTP calls per invocation.
    max_http_calls: u32 = 16, max 256;
    /// Bytes of one outbound response body kept (the rest is cut).
    max_http_response_bytes: usize = 1 << 20, max 8 << 20;
    /// Longest one outbound call may take, in milliseconds (also bounded by
    /// the invocation's deadline).
    http_timeout_ms: u64 = 10_000, max 60_000;
    /// `kv::get`/`set`/`delete`/`list` calls per invocation.
    max_kv_ops: u32 = 1_000, max 100_000;
    /// Bytes of one kv value (as JSON).
    max_kv_value_bytes: usize = 64 << 10, max 512 << 10;
    /// `emit` calls per invocation.
    max_emits: u32 = 100, max 10_000;
    /// Bytes of one emitted payload (as JSON).
    max_emit_bytes: usize = 64 << 10, max 512 << 10;
    /// Bytes of everything one invocation commits (kv values written,
    /// emitted payloads, the stored record and response), as sent to the
    /// manager. Checked before anything is sent. The default leaves room
    /// under NATS' default 1 MiB message limit.
    max_commit_bytes: usize = 768 << 10, max 8 << 20;
}

/// Bytes of script source accepted by a deploy (operator-wide, not per script).
pub const DEFAULT_MAX_SOURCE_BYTES: usize = 256 << 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_and_clamp() {
        let defaults = Limits::default();
        let maxima = Limits::default_maxima();
        let o = LimitOverrides {
            wall_time_ms: Some(1_000),
            max_operations: Some(u64::MAX),
            max_call_depth: Some(0),
            ..Default::default()
        };
        let r = defaults.resolve(&o, &maxima);
        assert_eq!(r.wall_time_ms, 1_000);
        assert_eq!(r.max_operations, maxima.max_operations);
        assert_eq!(r.max_call_depth, 1);
        assert_eq!(r.max_log_bytes, defaults.max_log_bytes);
    }

    #[test]
    fn unknown_override_is_an_error() {
        let err = serde_json::from_str::<LimitOverrides>(r#"{"wall_time": 3}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `wall_time`"),
            "{err}"
        );
    }
}

//! Timestamps in API output, records and scripts: RFC 3339, UTC, with `Z`
//! (`2026-11-27T14:55:00.123456Z`), never `+00:00`.
//!
//! Every timestamp is a `DateTime<Utc>`: serde writes those in exactly this
//! form (chrono's serializer uses `Z` for UTC; the test below holds it to
//! that), and [`rfc3339`] is the one formatter for text built by hand (the
//! `event` values scripts see, log fields). `chrono`'s `to_rfc3339()` is
//! not used: it writes `+00:00`.

use chrono::{DateTime, SecondsFormat, Utc};

/// `t` as RFC 3339 in UTC with `Z`, with as many fractional digits as
/// needed (0, 3, 6 or 9).
pub fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_with_z() {
        let t: DateTime<Utc> = "2026-11-27T15:55:00.123+01:00".parse().unwrap();
        assert_eq!(rfc3339(&t), "2026-11-27T14:55:00.123Z");
        let whole: DateTime<Utc> = "2026-11-27T14:55:00Z".parse().unwrap();
        assert_eq!(rfc3339(&whole), "2026-11-27T14:55:00Z");
        // serde (every API field) writes the same text.
        for t in [t, whole, Utc::now()] {
            assert_eq!(serde_json::to_value(t).unwrap(), rfc3339(&t));
        }
    }
}

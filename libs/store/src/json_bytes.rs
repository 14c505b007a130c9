//! Values kept as their JSON bytes (`BYTEA`) rather than `jsonb`: Postgres
//! `jsonb` and `text` cannot hold U+0000, and a kv value, an emitted payload
//! or a dead letter's job may contain it. Bytes round-trip anything
//! `serde_json` writes, exactly.

use serde::{Serialize, de::DeserializeOwned};

use crate::StoreError;

/// The JSON bytes of `value`.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Why this cannot fail: every stored type is plain data whose maps
    // have string keys (serde_json fails only on non-string keys or a
    // failing `Serialize` impl).
    serde_json::to_vec(value).expect("stored values serialise to JSON")
}

/// Decodes bytes written by [`encode`]; `what` names the column in errors.
pub(crate) fn decode<T: DeserializeOwned>(bytes: Vec<u8>, what: &str) -> Result<T, StoreError> {
    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

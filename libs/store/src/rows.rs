//! Conversions from what a row holds to what the domain means by it.
//!
//! Rows are read into private `#[derive(sqlx::FromRow)]` records of the
//! column types Postgres has (`i32`, `text`, `jsonb`), and each record
//! becomes its public row type through `TryFrom`: a value no domain type
//! can hold (a negative version, an unknown status, a JSON column that
//! does not parse) is [`StoreError::Corrupt`], naming the column.

use serde::de::DeserializeOwned;

use crate::StoreError;

/// An integer column as the unsigned (or narrower) type it stands for.
pub(crate) fn int<T, S>(value: S, column: &str) -> Result<T, StoreError>
where
    T: TryFrom<S>,
    S: Copy + std::fmt::Display,
{
    T::try_from(value).map_err(|_| StoreError::Corrupt(format!("{column} {value} out of range")))
}

/// A `jsonb` column as the type it was written from.
pub(crate) fn json<T: DeserializeOwned>(
    value: serde_json::Value,
    column: &str,
) -> Result<T, StoreError> {
    serde_json::from_value(value).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

/// A text column as the enum it names (`parse` is the enum's own).
pub(crate) fn named<T>(
    value: &str,
    parse: fn(&str) -> Option<T>,
    column: &str,
) -> Result<T, StoreError> {
    parse(value).ok_or_else(|| StoreError::Corrupt(format!("unknown {column} {value:?}")))
}

/// The JSON of `value` for a `jsonb` column.
pub(crate) fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> serde_json::Value {
    // Why this cannot fail: as `json_bytes::encode`, every stored type is
    // plain data whose maps have string keys.
    serde_json::to_value(value).expect("stored values serialise to JSON")
}

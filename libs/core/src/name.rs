//! Script (and later module) names.
//!
//! A name appears in URLs (`/fn/{name}`), NATS subjects and KV keys, so it is
//! restricted to a conservative alphabet: lower-case ASCII letters, digits,
//! `-` and `_`, starting with a letter or digit, at most 63 characters. No dot
//! (a subject separator), no wildcard, nothing that needs escaping.

use std::fmt;

use serde::{Deserialize, Serialize};

pub const MAX_NAME_LEN: usize = 63;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ScriptName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name must not be empty")]
    Empty,
    #[error("name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("name must start with a lower-case letter or a digit")]
    BadStart,
    #[error("name may contain only lower-case letters, digits, '-' and '_' (found {})", crate::quote(&.0.to_string()))]
    BadChar(char),
}

impl ScriptName {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let first = raw.chars().next().ok_or(NameError::Empty)?;
        if raw.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return Err(NameError::BadStart);
        }
        if let Some(bad) = raw
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
        {
            return Err(NameError::BadChar(bad));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ScriptName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ScriptName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        ScriptName::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for ok in ["hello", "a", "0day", "my-func_2", &"x".repeat(63)] {
            assert_eq!(ScriptName::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(ScriptName::parse(""), Err(NameError::Empty));
        assert_eq!(ScriptName::parse(&"x".repeat(64)), Err(NameError::TooLong));
        assert_eq!(ScriptName::parse("-x"), Err(NameError::BadStart));
        assert_eq!(ScriptName::parse("Hello"), Err(NameError::BadStart));
        assert_eq!(ScriptName::parse("a.b"), Err(NameError::BadChar('.')));
        assert_eq!(ScriptName::parse("a*"), Err(NameError::BadChar('*')));
        assert_eq!(ScriptName::parse("a>"), Err(NameError::BadChar('>')));
        assert_eq!(ScriptName::parse("a b"), Err(NameError::BadChar(' ')));
        assert_eq!(ScriptName::parse("é"), Err(NameError::BadStart));
    }
}

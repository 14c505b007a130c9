//! Whole numbers in JSON request bodies, read as JSON Schema reads them: an
//! integer is any number without a fraction, so `5.0` is `5` (serde alone
//! refuses it). Negative, fractional and out-of-range values are refused
//! with a message naming the value.
//!
//! - `#[serde(deserialize_with = "picloud_core::whole::strict")]`
//! - `#[serde(default, deserialize_with = "picloud_core::whole::strict_opt")]`
//! - [`saturating_opt`]: values above the type's range become its maximum
//!   (for limits, which are clamped to the operator's ceiling anyway).
//! - [`object`]: a nested struct that must be an object, not an array.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Error, Visitor};
use serde::{Deserialize, Deserializer};

/// An unsigned integer type a body field may hold.
pub trait Whole: TryFrom<u64> + Copy {
    const MAX: Self;
    const NAME: &'static str;
}

macro_rules! whole {
    ($($t:ty),*) => {$(
        impl Whole for $t {
            const MAX: Self = <$t>::MAX;
            const NAME: &'static str = stringify!($t);
        }
    )*};
}
whole!(u16, u32, u64, usize);

struct WholeVisitor<T> {
    saturate: bool,
    _t: PhantomData<T>,
}

impl<T: Whole> WholeVisitor<T> {
    fn fit<E: Error>(&self, v: u64, shown: &dyn fmt::Display) -> Result<T, E> {
        match T::try_from(v) {
            Ok(t) => Ok(t),
            Err(_) if self.saturate => Ok(T::MAX),
            Err(_) => Err(E::custom(format!("{shown} is too large"))),
        }
    }
}

impl<'de, T: Whole> Visitor<'de> for WholeVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a whole number from 0")
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<T, E> {
        self.fit(v, &v)
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<T, E> {
        match u64::try_from(v) {
            Ok(u) => self.fit(u, &v),
            Err(_) => Err(E::custom(format!("{v} is negative"))),
        }
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<T, E> {
        if v.fract() != 0.0 || !v.is_finite() {
            return Err(E::custom(format!("{v} is not a whole number")));
        }
        if v < 0.0 {
            return Err(E::custom(format!("{v} is negative")));
        }
        // 2^64 and above (JSON integers past u64 arrive as floats).
        if v >= 18_446_744_073_709_551_616.0 {
            return if self.saturate {
                Ok(T::MAX)
            } else {
                Err(E::custom(format!("{v} is too large")))
            };
        }
        self.fit(v as u64, &v)
    }
}

struct OptVisitor<T>(WholeVisitor<T>);

impl<'de, T: Whole> Visitor<'de> for OptVisitor<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a whole number from 0, or null")
    }

    fn visit_none<E: Error>(self) -> Result<Option<T>, E> {
        Ok(None)
    }

    fn visit_unit<E: Error>(self) -> Result<Option<T>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
        d.deserialize_any(self.0).map(Some)
    }
}

fn visitor<T>(saturate: bool) -> WholeVisitor<T> {
    WholeVisitor {
        saturate,
        _t: PhantomData,
    }
}

pub fn strict<'de, D: Deserializer<'de>, T: Whole>(d: D) -> Result<T, D::Error> {
    d.deserialize_any(visitor(false))
}

pub fn strict_opt<'de, D: Deserializer<'de>, T: Whole>(d: D) -> Result<Option<T>, D::Error> {
    d.deserialize_option(OptVisitor(visitor(false)))
}

pub fn saturating_opt<'de, D: Deserializer<'de>, T: Whole>(d: D) -> Result<Option<T>, D::Error> {
    d.deserialize_option(OptVisitor(visitor(true)))
}

/// A nested struct that must be a JSON object (serde would also fill it
/// from an array, positionally).
pub fn object<'de, D: Deserializer<'de>, T: serde::de::DeserializeOwned>(
    d: D,
) -> Result<T, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    if !value.is_object() {
        return Err(D::Error::custom("expected an object"));
    }
    T::deserialize(value).map_err(D::Error::custom)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize, Debug, PartialEq)]
    struct S {
        #[serde(default, deserialize_with = "super::strict_opt")]
        a: Option<u32>,
        #[serde(default, deserialize_with = "super::saturating_opt")]
        b: Option<u64>,
    }

    fn parse(json: &str) -> Result<S, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn whole_numbers_as_json_schema_reads_them() {
        assert_eq!(parse(r#"{"a": 5.0}"#).unwrap().a, Some(5));
        assert_eq!(parse(r#"{"a": null}"#).unwrap().a, None);
        assert_eq!(parse(r#"{}"#).unwrap().a, None);
        assert!(
            parse(r#"{"a": 5.5}"#)
                .unwrap_err()
                .contains("5.5 is not a whole number")
        );
        assert!(
            parse(r#"{"a": -1}"#)
                .unwrap_err()
                .contains("-1 is negative")
        );
        assert!(
            parse(r#"{"a": 4294967296}"#)
                .unwrap_err()
                .contains("too large")
        );
        assert!(parse(r#"{"a": "5"}"#).is_err());
        assert_eq!(
            parse(r#"{"b": 99999999999999999999999}"#).unwrap().b,
            Some(u64::MAX)
        );
        assert_eq!(
            parse(r#"{"b": 9223372036854775808}"#).unwrap().b,
            Some(9223372036854775808)
        );
    }
}

//! How a setting is declared once and read from four places.
//!
//! [`settings!`] takes a table of fields, each with its doc, type, default
//! and kind, and writes the struct (serde reads it from the TOML file), its
//! `Default`, and the clap arguments that read the flag and the variable:
//!
//! - `arg(VAR, "flag", "VALUE")`: `--flag VALUE` or `VAR`. The argument's
//!   clap default is the struct's own default, shown in `--help`; a value
//!   whose source is that default is skipped, so a value from the file is
//!   never overridden by it. Empty (or blank) is the same as unset, unless
//!   the kind ends in `keep_empty` (an empty list that clears the file's).
//! - `secret(VAR)`: the variable or the file only, never a flag (a flag is
//!   visible to every user in `ps`); listed in `--help` without its value.
//! - `nested`: a table of its own (`[nats]`), declared with this macro too.
//! - `file`: the file only (`[limits]`, `[max_limits]`).
//!
//! Values are taken as text and parsed here ([`SettingValue`]), so that an
//! error names the variable (or the flag) it came from.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches};

use super::ConfigError;

/// A setting's value: parsed from a flag's or a variable's text, and shown
/// as the default in `--help`.
pub trait SettingValue: Sized {
    fn parse_setting(text: &str) -> Result<Self, String>;
    /// The default as `--help` shows it; `None` shows none.
    fn show_default(&self) -> Option<String>;
}

macro_rules! from_str_value {
    ($($t:ty),*) => {$(
        impl SettingValue for $t {
            fn parse_setting(text: &str) -> Result<Self, String> {
                text.trim().parse().map_err(|e: <$t as std::str::FromStr>::Err| e.to_string())
            }
            fn show_default(&self) -> Option<String> {
                Some(self.to_string())
            }
        }
    )*};
}

from_str_value!(SocketAddr, u32, u64, usize);

impl SettingValue for String {
    fn parse_setting(text: &str) -> Result<Self, String> {
        Ok(text.to_owned())
    }
    fn show_default(&self) -> Option<String> {
        (!self.is_empty()).then(|| self.clone())
    }
}

impl SettingValue for PathBuf {
    fn parse_setting(text: &str) -> Result<Self, String> {
        Ok(PathBuf::from(text))
    }
    fn show_default(&self) -> Option<String> {
        Some(self.display().to_string())
    }
}

impl SettingValue for bool {
    fn parse_setting(text: &str) -> Result<Self, String> {
        match text.trim() {
            "1" | "true" | "yes" => Ok(true),
            "0" | "false" | "no" => Ok(false),
            _ => Err("use true or false".into()),
        }
    }
    fn show_default(&self) -> Option<String> {
        Some(self.to_string())
    }
}

impl<T: SettingValue> SettingValue for Option<T> {
    fn parse_setting(text: &str) -> Result<Self, String> {
        T::parse_setting(text).map(Some)
    }
    fn show_default(&self) -> Option<String> {
        self.as_ref().and_then(T::show_default)
    }
}

/// The doc comment as help: its first paragraph, and all of it.
fn help_text(doc: &[&str]) -> (String, String) {
    let mut paragraphs = vec![String::new()];
    for line in doc.iter().map(|l| l.trim()) {
        if line.is_empty() {
            paragraphs.push(String::new());
            continue;
        }
        let last = paragraphs.last_mut().expect("one paragraph at least");
        if !last.is_empty() {
            last.push(' ');
        }
        last.push_str(line);
    }
    paragraphs.retain(|p| !p.is_empty());
    let short = paragraphs.first().cloned().unwrap_or_default();
    (short, paragraphs.join("\n\n"))
}

/// The clap argument of an `arg(...)` setting. Its id is the variable.
pub(crate) fn arg(
    heading: &'static str,
    var: &'static str,
    flag: &'static str,
    value_name: &'static str,
    doc: &[&str],
    default: Option<String>,
) -> Arg {
    let (short, long) = help_text(doc);
    let mut arg = Arg::new(var)
        .long(flag)
        .env(var)
        .value_name(value_name)
        .action(ArgAction::Set)
        .help(short)
        .long_help(long)
        .help_heading(heading);
    if let Some(default) = default {
        arg = arg.default_value(default);
    }
    if value_name == "BOOL" {
        // `--single-node` alone means true.
        arg = arg.num_args(0..=1).default_missing_value("true");
    }
    arg
}

/// Sets `slot` from the flag or the variable, if either was given.
pub(crate) fn apply<T: SettingValue>(
    slot: &mut T,
    m: &ArgMatches,
    var: &'static str,
    flag: &'static str,
    keep_empty: bool,
) -> Result<(), ConfigError> {
    let source = match m.value_source(var) {
        Some(s @ (ValueSource::CommandLine | ValueSource::EnvVariable)) => s,
        // Clap's default: the file's value (or the default) stays.
        _ => return Ok(()),
    };
    let Some(text) = m.get_one::<String>(var) else {
        return Ok(());
    };
    if text.trim().is_empty() && !keep_empty {
        return Ok(());
    }
    let named = if source == ValueSource::EnvVariable {
        var
    } else {
        flag
    };
    *slot = T::parse_setting(text).map_err(|reason| ConfigError::Env { var: named, reason })?;
    Ok(())
}

/// Sets a secret from its variable when that is set and not blank.
pub(crate) fn apply_secret(
    slot: &mut Option<crate::Secret>,
    get: &dyn Fn(&str) -> Option<String>,
    var: &'static str,
) {
    if let Some(v) = get(var).filter(|v| !v.trim().is_empty()) {
        *slot = Some(v.into());
    }
}

/// One line of the `--help` list of secrets.
pub(crate) fn secret_line(var: &'static str, doc: &[&str]) -> (&'static str, String) {
    (var, help_text(doc).0)
}

/// Declares a configuration table once; see the module's doc.
macro_rules! settings {
    (
        heading = $heading:literal;
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $field:ident : $ty:ty = $default:expr => $kind:ident $(($($karg:tt)*))? ;
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $(
                $(#[doc = $doc])*
                pub $field: $ty,
            )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $($field: $default,)* }
            }
        }

        impl $name {
            /// The flags (with their variables) of this table and the
            /// tables nested in it.
            pub(crate) fn add_args(cmd: clap::Command) -> clap::Command {
                let defaults = Self::default();
                let mut cmd = cmd;
                $(
                    cmd = settings!(@arg cmd, $heading, defaults.$field, $ty, [$($doc)*],
                        $kind $(($($karg)*))?);
                )*
                let _ = defaults;
                cmd
            }

            /// Takes what the command line and the environment give
            /// (flags and variables win over the file).
            pub(crate) fn apply_matches(
                &mut self,
                m: &clap::ArgMatches,
            ) -> Result<(), $crate::config::ConfigError> {
                $( settings!(@apply self.$field, m, $kind $(($($karg)*))?); )*
                Ok(())
            }

            /// Takes the secrets from the environment (`get`, injectable
            /// for tests); they win over the file.
            pub(crate) fn apply_secrets(&mut self, get: &dyn Fn(&str) -> Option<String>) {
                $( settings!(@secret self.$field, get, $kind $(($($karg)*))?); )*
            }

            /// The secrets' variables and their help.
            pub(crate) fn secret_help(out: &mut Vec<(&'static str, String)>) {
                $( settings!(@secret_help out, $ty, [$($doc)*], $kind $(($($karg)*))?); )*
            }
        }
    };

    (@arg $cmd:ident, $heading:literal, $value:expr, $ty:ty, [$($doc:literal)*],
        arg($var:literal, $flag:literal, $value_name:literal $(, $keep:ident)?)) => {
        $cmd.arg($crate::config::settings::arg(
            $heading,
            $var,
            $flag,
            $value_name,
            &[$($doc),*],
            $crate::config::settings::SettingValue::show_default(&$value),
        ))
    };
    (@arg $cmd:ident, $heading:literal, $value:expr, $ty:ty, $doc:tt, nested) => {
        <$ty>::add_args($cmd)
    };
    (@arg $cmd:ident, $heading:literal, $value:expr, $ty:ty, $doc:tt, $other:ident $($rest:tt)*) => {
        $cmd
    };

    (@apply $slot:expr, $m:ident, arg($var:literal, $flag:literal, $value_name:literal)) => {
        $crate::config::settings::apply(&mut $slot, $m, $var, concat!("--", $flag), false)?
    };
    (@apply $slot:expr, $m:ident,
        arg($var:literal, $flag:literal, $value_name:literal, keep_empty)) => {
        $crate::config::settings::apply(&mut $slot, $m, $var, concat!("--", $flag), true)?
    };
    (@apply $slot:expr, $m:ident, nested) => {
        $slot.apply_matches($m)?
    };
    (@apply $slot:expr, $m:ident, $other:ident $($rest:tt)*) => {
        ()
    };

    (@secret $slot:expr, $get:ident, secret($var:literal)) => {
        $crate::config::settings::apply_secret(&mut $slot, $get, $var)
    };
    (@secret $slot:expr, $get:ident, nested) => {
        $slot.apply_secrets($get)
    };
    (@secret $slot:expr, $get:ident, $other:ident $($rest:tt)*) => {
        ()
    };

    (@secret_help $out:ident, $ty:ty, [$($doc:literal)*], secret($var:literal)) => {
        $out.push($crate::config::settings::secret_line($var, &[$($doc),*]))
    };
    (@secret_help $out:ident, $ty:ty, $doc:tt, nested) => {
        <$ty>::secret_help($out)
    };
    (@secret_help $out:ident, $ty:ty, $doc:tt, $other:ident $($rest:tt)*) => {
        ()
    };
}

pub(crate) use settings;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_is_the_first_paragraph_and_long_help_all() {
        let (short, long) = help_text(&[" One", " line.", "", " More."]);
        assert_eq!(short, "One line.");
        assert_eq!(long, "One line.\n\nMore.");
    }

    #[test]
    fn booleans_read_like_before() {
        for (text, want) in [("true", true), (" 1 ", true), ("no", false)] {
            assert_eq!(bool::parse_setting(text), Ok(want));
        }
        assert!(bool::parse_setting("maybe").is_err());
    }
}

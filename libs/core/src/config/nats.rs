//! How a role connects to NATS: its own user (DESIGN.md §6: NATS is a trust
//! boundary), TLS, and how many replicas the streams it creates get.
//!
//! The `[nats]` table of the TOML file, or the `PICLOUD_NATS_*` variables
//! (which win). Credentials come from here or from files named here, never
//! from the command line. Passwords and tokens never appear in `Debug`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsSettings {
    /// The role's NATS user (`PICLOUD_NATS_USER`), with `password`
    /// (`PICLOUD_NATS_PASSWORD`) or `password_file`
    /// (`PICLOUD_NATS_PASSWORD_FILE`: the first line of that file).
    pub user: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    /// A token instead of a user (`PICLOUD_NATS_TOKEN`,
    /// `PICLOUD_NATS_TOKEN_FILE`).
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    /// PEM file of the CA that signed the server's certificate
    /// (`PICLOUD_NATS_CA`); setting it turns TLS on.
    pub ca_file: Option<PathBuf>,
    /// The client's certificate and key, PEM (`PICLOUD_NATS_CERT`,
    /// `PICLOUD_NATS_KEY`), for servers that verify clients.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Refuse a connection that is not TLS (`PICLOUD_NATS_TLS=true`);
    /// implied by `ca_file` or `cert_file`.
    pub tls: bool,
    /// Replicas of every stream and bucket PiCloud creates
    /// (`PICLOUD_STREAM_REPLICAS`). Absent: 3 when the server reports a
    /// cluster of 3 or more nodes, else 1.
    pub replicas: Option<usize>,
}

/// What the role presents to the server.
#[derive(Clone, PartialEq, Eq)]
pub enum NatsCredentials {
    None,
    UserPassword { user: String, password: String },
    Token(String),
}

impl std::fmt::Debug for NatsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::UserPassword { user, .. } => write!(f, "UserPassword({user:?}, <redacted>)"),
            Self::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

impl std::fmt::Debug for NatsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("NatsSettings")
            .field("user", &self.user)
            .field("password", &redacted(&self.password))
            .field("password_file", &self.password_file)
            .field("token", &redacted(&self.token))
            .field("token_file", &self.token_file)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("tls", &self.tls)
            .field("replicas", &self.replicas)
            .finish()
    }
}

impl NatsSettings {
    /// Applies the `PICLOUD_NATS_*` and `PICLOUD_STREAM_REPLICAS` variables.
    pub(super) fn apply_env(
        &mut self,
        get: &impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let non_empty = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let path = |k: &str| non_empty(k).map(PathBuf::from);
        if let Some(v) = non_empty("PICLOUD_NATS_USER") {
            self.user = Some(v);
        }
        if let Some(v) = non_empty("PICLOUD_NATS_PASSWORD") {
            self.password = Some(v);
        }
        if let Some(v) = path("PICLOUD_NATS_PASSWORD_FILE") {
            self.password_file = Some(v);
        }
        if let Some(v) = non_empty("PICLOUD_NATS_TOKEN") {
            self.token = Some(v);
        }
        if let Some(v) = path("PICLOUD_NATS_TOKEN_FILE") {
            self.token_file = Some(v);
        }
        if let Some(v) = path("PICLOUD_NATS_CA") {
            self.ca_file = Some(v);
        }
        if let Some(v) = path("PICLOUD_NATS_CERT") {
            self.cert_file = Some(v);
        }
        if let Some(v) = path("PICLOUD_NATS_KEY") {
            self.key_file = Some(v);
        }
        if let Some(v) = non_empty("PICLOUD_NATS_TLS") {
            self.tls = match v.trim() {
                "1" | "true" | "yes" => true,
                "0" | "false" | "no" => false,
                _ => {
                    return Err(ConfigError::Env {
                        var: "PICLOUD_NATS_TLS",
                        reason: "use true or false".into(),
                    });
                }
            };
        }
        if let Some(v) = non_empty("PICLOUD_STREAM_REPLICAS") {
            self.replicas =
                Some(
                    v.trim()
                        .parse()
                        .map_err(|e: std::num::ParseIntError| ConfigError::Env {
                            var: "PICLOUD_STREAM_REPLICAS",
                            reason: e.to_string(),
                        })?,
                );
        }
        self.validate()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let err = |var, reason: &str| {
            Err(ConfigError::Env {
                var,
                reason: reason.into(),
            })
        };
        if self.password.is_some() && self.password_file.is_some() {
            return err(
                "PICLOUD_NATS_PASSWORD",
                "give the password or a password file, not both",
            );
        }
        if self.token.is_some() && self.token_file.is_some() {
            return err(
                "PICLOUD_NATS_TOKEN",
                "give the token or a token file, not both",
            );
        }
        let has_password = self.password.is_some() || self.password_file.is_some();
        let has_token = self.token.is_some() || self.token_file.is_some();
        if has_token && (self.user.is_some() || has_password) {
            return err(
                "PICLOUD_NATS_TOKEN",
                "a token replaces the user and password: give one or the other",
            );
        }
        if has_password && self.user.is_none() {
            return err("PICLOUD_NATS_USER", "a NATS password needs a user");
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return err(
                "PICLOUD_NATS_CERT / PICLOUD_NATS_KEY",
                "a client certificate needs its key, and the other way round",
            );
        }
        if let Some(n) = self.replicas
            && !(1..=5).contains(&n)
        {
            return err(
                "PICLOUD_STREAM_REPLICAS",
                "JetStream allows 1 to 5 replicas",
            );
        }
        Ok(())
    }

    /// The credentials to present, reading the password or token file now
    /// (so a rotated file is read at the next start).
    pub fn credentials(&self) -> Result<NatsCredentials, ConfigError> {
        if let Some(token) = secret(&self.token, &self.token_file, "PICLOUD_NATS_TOKEN_FILE")? {
            return Ok(NatsCredentials::Token(token));
        }
        match &self.user {
            Some(user) => Ok(NatsCredentials::UserPassword {
                user: user.clone(),
                password: secret(
                    &self.password,
                    &self.password_file,
                    "PICLOUD_NATS_PASSWORD_FILE",
                )?
                .unwrap_or_default(),
            }),
            None => Ok(NatsCredentials::None),
        }
    }

    /// True when the connection must be TLS.
    pub fn tls_required(&self) -> bool {
        self.tls || self.ca_file.is_some() || self.cert_file.is_some()
    }
}

/// The inline value, or the first line of the file.
fn secret(
    inline: &Option<String>,
    file: &Option<PathBuf>,
    var: &'static str,
) -> Result<Option<String>, ConfigError> {
    if let Some(v) = inline {
        return Ok(Some(v.clone()));
    }
    let Some(path) = file else { return Ok(None) };
    read_first_line(path)
        .map(Some)
        .map_err(|e| ConfigError::Env {
            var,
            reason: format!("cannot read {}: {e}", path.display()),
        })
}

fn read_first_line(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.lines().next().unwrap_or_default().trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_env(vars: &[(&str, &str)]) -> Result<NatsSettings, ConfigError> {
        let mut s = NatsSettings::default();
        s.apply_env(&|k: &str| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        })?;
        Ok(s)
    }

    #[test]
    fn password_file_is_read_and_never_shown() {
        let file = std::env::temp_dir().join(format!("picloud-pw-{}", std::process::id()));
        std::fs::write(&file, "s3cret\n").unwrap();
        let s = from_env(&[
            ("PICLOUD_NATS_USER", "gateway"),
            ("PICLOUD_NATS_PASSWORD_FILE", file.to_str().unwrap()),
        ])
        .unwrap();
        assert_eq!(
            s.credentials().unwrap(),
            NatsCredentials::UserPassword {
                user: "gateway".into(),
                password: "s3cret".into()
            }
        );
        let inline = from_env(&[
            ("PICLOUD_NATS_USER", "gateway"),
            ("PICLOUD_NATS_PASSWORD", "s3cret"),
        ])
        .unwrap();
        for shown in [
            format!("{inline:?}"),
            format!("{:?}", inline.credentials().unwrap()),
        ] {
            assert!(!shown.contains("s3cret"), "{shown}");
        }
    }

    #[test]
    fn contradictions_are_refused() {
        for vars in [
            &[("PICLOUD_NATS_PASSWORD", "x")][..],
            &[("PICLOUD_NATS_USER", "u"), ("PICLOUD_NATS_TOKEN", "t")],
            &[("PICLOUD_NATS_CERT", "/c.pem")],
            &[("PICLOUD_STREAM_REPLICAS", "7")],
            &[("PICLOUD_NATS_TLS", "maybe")],
        ] {
            assert!(from_env(vars).is_err(), "{vars:?}");
        }
        let s = from_env(&[("PICLOUD_NATS_CA", "/ca.pem")]).unwrap();
        assert!(s.tls_required());
    }
}

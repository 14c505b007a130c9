//! How a role connects to NATS: its own user (DESIGN.md §6: NATS is a trust
//! boundary), TLS, and how many replicas the streams it creates get.
//!
//! The `[nats]` table of the TOML file, or the `PICLOUD_NATS_*` variables
//! and flags (which win). The password and the token come from the file or
//! a variable (or a file they name), never from the command line, and are
//! [`Secret`]s: `Debug` never shows them.

use std::path::{Path, PathBuf};

use super::ConfigError;
use super::settings::settings;
use crate::Secret;

settings! {
    heading = "NATS (flag > variable > file's [nats] > default)";
    /// How the role connects to NATS: the `[nats]` table of the file, or
    /// the `PICLOUD_NATS_*` variables and flags (which win).
    pub struct NatsSettings {
        /// The role's NATS user (with a password or a password file).
        user: Option<String> = None => arg("PICLOUD_NATS_USER", "nats-user", "USER");
        /// The NATS user's password.
        password: Option<Secret> = None => secret("PICLOUD_NATS_PASSWORD");
        /// A file whose first line is the NATS user's password (read at
        /// start).
        password_file: Option<PathBuf> = None
            => arg("PICLOUD_NATS_PASSWORD_FILE", "nats-password-file", "FILE");
        /// A NATS token instead of a user.
        token: Option<Secret> = None => secret("PICLOUD_NATS_TOKEN");
        /// A file whose first line is the NATS token (read at start).
        token_file: Option<PathBuf> = None
            => arg("PICLOUD_NATS_TOKEN_FILE", "nats-token-file", "FILE");
        /// PEM file of the CA that signed the NATS server's certificate;
        /// setting it turns TLS on.
        ca_file: Option<PathBuf> = None => arg("PICLOUD_NATS_CA", "nats-ca", "FILE");
        /// The client's certificate, PEM, for NATS servers that verify
        /// clients (with its key).
        cert_file: Option<PathBuf> = None => arg("PICLOUD_NATS_CERT", "nats-cert", "FILE");
        /// The client certificate's key, PEM.
        key_file: Option<PathBuf> = None => arg("PICLOUD_NATS_KEY", "nats-key", "FILE");
        /// Refuse a NATS connection that is not TLS (implied by a CA or a
        /// client certificate).
        tls: bool = false => arg("PICLOUD_NATS_TLS", "nats-tls", "BOOL");
        /// Replicas of every stream and bucket PiCloud creates, 1-5.
        /// [default: 3 when the server reports a cluster of 3 or more
        /// nodes, else 1]
        replicas: Option<usize> = None
            => arg("PICLOUD_STREAM_REPLICAS", "stream-replicas", "N");
    }
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

impl NatsSettings {
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
    inline: &Option<Secret>,
    file: &Option<PathBuf>,
    var: &'static str,
) -> Result<Option<String>, ConfigError> {
    if let Some(v) = inline {
        return Ok(Some(v.expose().to_owned()));
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

    /// `flags` on the command line; `secrets`, the secrets' variables.
    fn load(flags: &[&str], secrets: &[(&str, &str)]) -> Result<NatsSettings, ConfigError> {
        crate::config::tests::load(flags, secrets).map(|c| c.nats)
    }

    #[test]
    fn password_file_is_read_and_never_shown() {
        let file = std::env::temp_dir().join(format!("picloud-pw-{}", std::process::id()));
        std::fs::write(&file, "s3cret\n").unwrap();
        let s = load(
            &[
                "--nats-user",
                "gateway",
                "--nats-password-file",
                file.to_str().unwrap(),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(
            s.credentials().unwrap(),
            NatsCredentials::UserPassword {
                user: "gateway".into(),
                password: "s3cret".into()
            }
        );
        let inline = load(
            &["--nats-user", "gateway"],
            &[("PICLOUD_NATS_PASSWORD", "s3cret")],
        )
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
        for (flags, secrets) in [
            (&[][..], &[("PICLOUD_NATS_PASSWORD", "x")][..]),
            (&["--nats-user", "u"], &[("PICLOUD_NATS_TOKEN", "t")]),
            (&["--nats-cert", "/c.pem"], &[]),
            (&["--stream-replicas", "7"], &[]),
            (&["--nats-tls", "maybe"], &[]),
        ] {
            assert!(load(flags, secrets).is_err(), "{flags:?} {secrets:?}");
        }
        let s = load(&["--nats-ca", "/ca.pem"], &[]).unwrap();
        assert!(s.tls_required());
        assert!(load(&["--nats-tls"], &[]).unwrap().tls_required());
    }

    /// The password and the token are not flags: they would show in `ps`.
    #[test]
    fn secrets_are_not_flags() {
        for flag in ["--nats-password", "--nats-token"] {
            let err = load(&[flag, "x"], &[]).unwrap_err();
            assert!(err.to_string().contains("unexpected argument"), "{err}");
        }
    }
}

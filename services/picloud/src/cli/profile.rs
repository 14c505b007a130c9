//! Named profiles (endpoint + token) in the user's config directory, like
//! `gh` and `aws`: `$XDG_CONFIG_HOME/picloud/profiles.toml` (usually
//! `~/.config/picloud/profiles.toml`), written with mode 0600 in a 0700
//! directory, because the token is a credential.
//!
//! Precedence: `--url`/`--token` flags, then `PICLOUD_URL`/`PICLOUD_TOKEN`,
//! then the profile (`--profile`, `PICLOUD_PROFILE`, the file's default).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::client::CliError;

pub const DEFAULT_PROFILE: &str = "default";

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Profiles {
    /// The profile used when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct Profile {
    pub url: String,
    pub token: String,
}

// Never print the token, not even in a debug log.
impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("url", &self.url)
            .field("token", &"***")
            .finish()
    }
}

/// Where the profiles live.
pub fn path() -> Result<PathBuf, CliError> {
    directories::ProjectDirs::from("", "", "picloud")
        .map(|d| d.config_dir().join("profiles.toml"))
        .ok_or_else(|| {
            CliError::local("cannot find your config directory (set HOME or XDG_CONFIG_HOME)")
        })
}

impl Profiles {
    pub fn load() -> Result<Self, CliError> {
        let path = path()?;
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| {
                CliError::local(format!(
                    "{} is not a valid profile file: {e}",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(CliError::local(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    /// Writes the file afresh, readable by its owner only.
    pub fn save(&self) -> Result<PathBuf, CliError> {
        let path = path()?;
        let fail =
            |e: std::io::Error| CliError::local(format!("cannot write {}: {e}", path.display()));
        let dir = path.parent().unwrap_or(&path);
        std::fs::create_dir_all(dir).map_err(fail)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(fail)?;
        let text = toml::to_string(self).map_err(|e| CliError::local(e.to_string()))?;
        // A new file each time: created 0600, never readable by others even
        // for a moment, then moved over the old one.
        let tmp = path.with_extension("toml.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(fail)?;
        f.write_all(text.as_bytes()).map_err(fail)?;
        f.sync_all().map_err(fail)?;
        std::fs::rename(&tmp, &path).map_err(fail)?;
        Ok(path)
    }

    /// The name of the profile to use.
    pub fn chosen(&self, flag: Option<&str>) -> String {
        flag.map(str::to_owned)
            .or_else(|| self.default.clone())
            .unwrap_or_else(|| DEFAULT_PROFILE.to_owned())
    }
}

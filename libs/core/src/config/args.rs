//! The role subcommands' configuration arguments (`picloud up`, `manager`,
//! `gateway`, `executor`): `--config`, `--check-config` and a flag per
//! setting, each with its variable; and the resolution of flag, variable,
//! file and default into a [`Config`].

use std::ffi::OsString;
use std::path::Path;

use super::*;

const CONFIG: &str = "PICLOUD_CONFIG";
const CHECK: &str = "check-config";

/// Variables read outside [`Config`], by the one part that needs each;
/// `--help` lists them with the settings.
pub const OTHER_VARIABLES: &[(&str, &str)] = &[
    (
        "PICLOUD_LOG_FORMAT",
        "Server logs on stderr: text or json lines [default: text]",
    ),
    (
        "PICLOUD_NATS_SERVER",
        "The nats-server binary `picloud up` starts [default: found on PATH]",
    ),
    (
        "PICLOUD_PG_BINDIR",
        "The folder of the Postgres binaries `picloud up` starts [default: found on the system]",
    ),
    (
        "PICLOUD_DASHBOARD_DIR",
        "A built dashboard the manager serves instead of its embedded one",
    ),
];

/// What the command line and the environment say; [`ConfigArgs::load`]
/// adds the file and the defaults.
#[derive(Clone)]
pub struct ConfigArgs {
    matches: ArgMatches,
}

impl ConfigArgs {
    /// Flags, then variables, then the file, then the defaults; validated.
    pub fn load(&self) -> Result<Config, ConfigError> {
        resolve(&self.matches, &|k| std::env::var(k).ok())
    }

    /// `--check-config`: print the configuration and exit.
    pub fn check_only(&self) -> bool {
        self.matches.get_flag(CHECK)
    }
}

impl clap::Args for ConfigArgs {
    fn augment_args(cmd: Command) -> Command {
        let cmd = cmd
            .arg(
                Arg::new(CONFIG)
                    .long("config")
                    .env(CONFIG)
                    .value_name("FILE")
                    .value_parser(clap::value_parser!(OsString))
                    .help(
                        "A TOML file of settings (the names below in snake case, \
                         [nats], [limits], [max_limits]); flags and variables win over it",
                    ),
            )
            .arg(
                Arg::new(CHECK)
                    .long("check-config")
                    .action(ArgAction::SetTrue)
                    .help(
                        "Print the configuration this would run with (secrets redacted), then exit",
                    ),
            );
        Config::add_args(cmd).after_help(env_only_help())
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for ConfigArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self {
            matches: matches.clone(),
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.matches = matches.clone();
        Ok(())
    }
}

impl Config {
    /// The file and the environment (no flags), for the commands that are
    /// not a role: `picloud login --local`, `picloud nats-config`.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_args(["picloud"], &|k| std::env::var(k).ok())
    }

    /// `argv` and the environment; `secret_env` reads the secrets'
    /// variables (the others are read by clap).
    pub fn from_args<I, T>(
        argv: I,
        secret_env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let cmd = <ConfigArgs as clap::Args>::augment_args(Command::new("picloud"));
        let matches = cmd
            .try_get_matches_from(argv)
            .map_err(|e| ConfigError::Args(e.to_string()))?;
        resolve(&matches, secret_env)
    }
}

fn resolve(
    m: &ArgMatches,
    secret_env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let file = m.get_one::<OsString>(CONFIG).filter(|p| !p.is_empty());
    let mut config = match file {
        Some(path) => Config::from_file(Path::new(path))?,
        None => Config::default(),
    };
    config.apply_matches(m)?;
    config.apply_secrets(secret_env);
    config.validate()?;
    Ok(config)
}

/// The `--help` lines of the variables that are not flags.
fn env_only_help() -> String {
    let mut secrets = Vec::new();
    Config::secret_help(&mut secrets);
    let width = secrets
        .iter()
        .map(|(var, _)| var.len())
        .chain(OTHER_VARIABLES.iter().map(|(var, _)| var.len()))
        .max()
        .unwrap_or(0);
    let lines = |rows: &mut dyn Iterator<Item = (&str, &str)>| {
        rows.map(|(var, help)| format!("  {var:width$}  {help}\n"))
            .collect::<String>()
    };
    format!(
        "Secrets: a variable or the file, never a flag (a flag shows in `ps`); values never shown:\n\
         {}\n\
         Also read from the environment:\n\
         {}",
        lines(&mut secrets.iter().map(|(v, h)| (*v, h.as_str()))),
        lines(&mut OTHER_VARIABLES.iter().copied()),
    )
}

//! Secrets: encrypted at rest with AES-256-GCM, decrypted only to answer an
//! executor's request over NATS (request/reply: the value is never written
//! to a stream or bucket, or to Postgres, or to a log).
//!
//! The key comes from `PICLOUD_SECRETS_KEY` (32 bytes, base64), or, for a
//! single node, is generated once into `data_dir/secrets.key` (mode 0600).
//! The secret's name is the associated data, so a ciphertext copied to
//! another name does not decrypt.

use std::path::Path;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use picloud_bus::{Bus, SecretAnswer};
use picloud_core::{Config, Shutdown};
use picloud_store::{SealedSecret, Store};

pub struct SecretBox {
    cipher: Aes256Gcm,
}

/// A manager run as a role of its own (`picloud manager`) is one of a
/// cluster, whose managers must all encrypt with the same key: a key each
/// generated into its own data directory would make one manager's secrets
/// unreadable to the others. So the key must be configured, unless the
/// operator says this installation is one node.
pub fn require_shared_key(config: &Config) -> anyhow::Result<()> {
    if config.secrets_key.is_some() || config.single_node {
        return Ok(());
    }
    bail!(
        "PICLOUD_SECRETS_KEY is required when the manager runs as a role of its own: every manager of a cluster must encrypt secrets with the same key\n\
         help: make one with `head -c 32 /dev/urandom | base64` and give it to every manager; \
         on a single node, set PICLOUD_SINGLE_NODE=true to keep a generated key in {}",
        config.data_dir.join("secrets.key").display()
    )
}

impl SecretBox {
    pub fn load(config: &Config) -> anyhow::Result<Self> {
        let key = match config.secrets_key() {
            Some(k) => decode_key(k).context("invalid PICLOUD_SECRETS_KEY")?,
            None => key_file(&config.data_dir.join("secrets.key"))?,
        };
        Ok(Self {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key)),
        })
    }

    pub fn seal(&self, name: &str, value: &str) -> anyhow::Result<SealedSecret> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: value.as_bytes(),
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| anyhow::anyhow!("encryption failed"))?;
        Ok(SealedSecret {
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    pub fn open(&self, name: &str, sealed: &SealedSecret) -> anyhow::Result<String> {
        if sealed.nonce.len() != 12 {
            bail!("stored nonce has the wrong length");
        }
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| anyhow::anyhow!("cannot decrypt (wrong key, or tampered data)"))?;
        String::from_utf8(plain).context("secret is not UTF-8")
    }
}

fn decode_key(text: &str) -> anyhow::Result<Vec<u8>> {
    let key = B64.decode(text.trim()).context("not base64")?;
    if key.len() != 32 {
        bail!("the key must be 32 bytes (it is {})", key.len());
    }
    Ok(key)
}

fn key_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    if let Ok(text) = std::fs::read_to_string(path) {
        return decode_key(&text).with_context(|| format!("invalid key in {}", path.display()));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // Written whole to a private temporary file, then linked into place:
    // a concurrent starter either wins the link or reads the winner's key.
    let key = Aes256Gcm::generate_key(&mut OsRng);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(B64.encode(key).as_bytes())?;
        f.sync_all()?;
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), "generated the secrets key");
            Ok(key.to_vec())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(path)?;
            decode_key(&text).with_context(|| format!("invalid key in {}", path.display()))
        }
        Err(e) => {
            Err(e).with_context(|| format!("cannot create the secrets key {}", path.display()))
        }
    }
}

/// Answers executors' secret requests until shutdown (concurrently but
/// boundedly: one slow lookup does not hold up every other script's secret).
pub async fn serve(store: Store, bus: Bus, secrets: std::sync::Arc<SecretBox>, shutdown: Shutdown) {
    crate::effects::serve_kind::<picloud_bus::wire::SecretCall, _, _>(bus, shutdown, move |ask| {
        let (store, secrets) = (store.clone(), secrets.clone());
        async move {
            match answer(&store, &secrets, &ask.name).await {
                Ok(value) => SecretAnswer { value, error: None },
                Err(e) => SecretAnswer {
                    value: None,
                    error: Some(e),
                },
            }
        }
    })
    .await;
}

async fn answer(store: &Store, secrets: &SecretBox, name: &str) -> Result<Option<String>, String> {
    match store.get_secret(name).await {
        Ok(None) => Ok(None),
        Ok(Some(sealed)) => secrets.open(name, &sealed).map(Some).map_err(|e| {
            tracing::error!(secret = %name, error = %e, "cannot open a secret");
            "the secret could not be read".to_string()
        }),
        Err(e) => {
            tracing::warn!(error = %e, "cannot load a secret");
            Err("secrets are unavailable right now".to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sbox() -> SecretBox {
        let config = Config {
            secrets_key: Some(B64.encode([7u8; 32]).into()),
            ..Config::default()
        };
        SecretBox::load(&config).unwrap()
    }

    #[test]
    fn seal_and_open_round_trip_bound_to_the_name() {
        let b = sbox();
        let sealed = b.seal("api_key", "hunter2").unwrap();
        assert!(!sealed.ciphertext.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(b.open("api_key", &sealed).unwrap(), "hunter2");
        assert!(b.open("other", &sealed).is_err());
    }

    #[test]
    fn bad_keys_are_refused() {
        let config = Config {
            secrets_key: Some(B64.encode([1u8; 16]).into()),
            ..Config::default()
        };
        assert!(SecretBox::load(&config).is_err());
    }

    #[test]
    fn a_generated_key_is_kept_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        let sealed = SecretBox::load(&config).unwrap().seal("n", "v").unwrap();
        let mode = std::fs::metadata(dir.path().join("secrets.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            SecretBox::load(&config)
                .unwrap()
                .open("n", &sealed)
                .unwrap(),
            "v"
        );
    }
}

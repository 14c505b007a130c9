//! `picloud dev-certs DIR`: a development CA and the certificates a local
//! cluster needs for NATS TLS (client and route connections):
//!
//! - `ca.pem` / `ca-key.pem`: the CA (give `ca.pem` to every server and
//!   client; keep `ca-key.pem` away from them);
//! - `server.pem` / `server-key.pem`: for every NATS node, valid for
//!   `localhost`, `127.0.0.1`, `n1`, `n2`, `n3` and `nats1`, `nats2`,
//!   `nats3` (compose.yaml's host names) (server and client auth, so routes
//!   between nodes can verify each other with it too);
//! - `{gateway,executor,manager}.pem` / `-key.pem`: client certificates,
//!   one per role, for servers that verify clients.
//!
//! For development only: the keys are written unencrypted (mode 0600).

use std::path::Path;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

const SERVER_NAMES: [&str; 8] = [
    "localhost",
    "127.0.0.1",
    "n1",
    "n2",
    "n3",
    "nats1",
    "nats2",
    "nats3",
];

pub fn write(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "PiCloud development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    save(dir, "ca", &ca.pem(), &ca.key().serialize_pem())?;

    let leaf = |name: &str, sans: Vec<String>, usages: Vec<ExtendedKeyUsagePurpose>| {
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = usages;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        save(dir, name, &cert.pem(), &key.serialize_pem())
    };
    leaf(
        "server",
        SERVER_NAMES.iter().map(|s| (*s).to_owned()).collect(),
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )?;
    for role in picloud_bus::permissions::ROLES {
        leaf(
            role,
            vec![format!("picloud-{role}")],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        )?;
    }
    eprintln!(
        "wrote a development CA, a server certificate ({}) and client certificates for {} into {}",
        SERVER_NAMES.join(", "),
        picloud_bus::permissions::ROLES.join(", "),
        dir.display()
    );
    Ok(())
}

fn save(dir: &Path, name: &str, cert: &str, key: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let cert_path = dir.join(format!("{name}.pem"));
    std::fs::write(&cert_path, cert)
        .with_context(|| format!("cannot write {}", cert_path.display()))?;
    let key_path = dir.join(format!("{name}-key.pem"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key_path)
        .with_context(|| format!("cannot write {}", key_path.display()))?;
    file.write_all(key.as_bytes())
        .with_context(|| format!("cannot write {}", key_path.display()))
}

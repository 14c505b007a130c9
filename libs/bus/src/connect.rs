//! Connection options from configuration: the role's credentials (from the
//! URL or [`NatsSettings`]), TLS, its own inbox, and how many replicas the
//! streams get.

use std::time::Duration;

use async_nats::{ConnectError, ConnectErrorKind, ConnectOptions, ServerInfo};
use picloud_core::config::{NatsCredentials, NatsSettings};

use crate::BusError;

/// The addresses to dial (comma-separated, credentials removed) and the
/// options for `role`.
pub(crate) fn options(
    url: &str,
    prefix: &str,
    role: &str,
    settings: &NatsSettings,
) -> Result<(String, ConnectOptions), BusError> {
    // Credentials in the URL (`nats://user:password@host:port`) are
    // passed as such, and never shown in an error; configured ones win. A
    // cluster is a comma-separated list of URLs (the first credentials count).
    let mut nodes = Vec::new();
    let mut in_url = None;
    for one in url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let (node, credentials) = crate::split_credentials(one);
        nodes.push(node);
        in_url = in_url.or(credentials);
    }
    let address = nodes.join(",");
    let mut options = ConnectOptions::new()
        .name(format!("picloud-{role}"))
        .custom_inbox_prefix(inbox_prefix(prefix, role))
        .connection_timeout(Duration::from_secs(5));
    let credentials = settings
        .credentials()
        .map_err(|e| BusError::Settings(e.to_string()))?;
    options = match (credentials, in_url) {
        (NatsCredentials::UserPassword { user, password }, _) => {
            options.user_and_password(user, password)
        }
        (NatsCredentials::Token(token), _) => options.token(token),
        (NatsCredentials::None, Some((user, password))) => {
            options.user_and_password(user, password)
        }
        (NatsCredentials::None, None) => options,
    };
    if let Some(ca) = &settings.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&settings.cert_file, &settings.key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if settings.tls_required() {
        options = options.require_tls(true);
    }
    Ok((address, options))
}

/// Where `role`'s replies arrive: `_INBOX.{prefix}.{role}` (a role name
/// reduced to a subject token).
pub fn inbox_prefix(prefix: &str, role: &str) -> String {
    let role: String = role
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("_INBOX.{prefix}.{role}")
}

/// What to tell an operator after a failed connection. A certificate the
/// client does not trust is reported by async-nats as an I/O error, so the
/// message is looked at too.
pub(crate) fn hint(error: &ConnectError) -> &'static str {
    let text = error.to_string();
    let tls = text.contains("certificate") || text.contains("tls") || text.contains("TLS");
    match error.kind() {
        ConnectErrorKind::Tls | ConnectErrorKind::Io if tls => {
            "; the TLS handshake failed (help: set PICLOUD_NATS_CA to the CA that signed the server's certificate, and PICLOUD_NATS_CERT/PICLOUD_NATS_KEY if the server verifies clients; see docs/operations.md)"
        }
        ConnectErrorKind::AuthorizationViolation => {
            " (help: check PICLOUD_NATS_USER and its password or token against the server's authorization block; `picloud nats-config` prints one)"
        }
        _ => "",
    }
}

/// Replicas for the streams this connection creates: the configured
/// number, else 3 on a cluster of 3 or more servers, else 1.
pub(crate) fn replicas(configured: Option<usize>, info: &ServerInfo) -> usize {
    configured.unwrap_or_else(|| default_replicas(cluster_size(info)))
}

/// The servers of the cluster this server belongs to: a clustered server
/// names its cluster and lists every member's client URL (its own among
/// them) in `connect_urls`; a lone server does neither.
pub fn cluster_size(info: &ServerInfo) -> usize {
    match &info.cluster {
        Some(name) if !name.is_empty() => info.connect_urls.len().max(1),
        _ => 1,
    }
}

/// JetStream replicates to an odd quorum: 3 once there are 3 servers
/// (5 would double the write cost for little gain here), else 1.
pub fn default_replicas(cluster_size: usize) -> usize {
    if cluster_size >= 3 { 3 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(cluster: Option<&str>, urls: usize) -> ServerInfo {
        ServerInfo {
            cluster: cluster.map(str::to_owned),
            connect_urls: (0..urls)
                .map(|i| format!("127.0.0.1:{}", 4222 + i))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn replicas_follow_the_cluster() {
        assert_eq!(replicas(None, &info(None, 0)), 1);
        assert_eq!(replicas(None, &info(Some("picloud"), 2)), 1);
        assert_eq!(replicas(None, &info(Some("picloud"), 3)), 3);
        assert_eq!(replicas(None, &info(Some("picloud"), 5)), 3);
        // A name without members, or members without a cluster: one node.
        assert_eq!(replicas(None, &info(Some(""), 3)), 1);
        assert_eq!(replicas(None, &info(None, 3)), 1);
        assert_eq!(replicas(Some(1), &info(Some("picloud"), 3)), 1);
        assert_eq!(replicas(Some(3), &info(None, 0)), 3);
    }

    #[test]
    fn each_role_has_its_inbox() {
        assert_eq!(inbox_prefix("p-1", "gateway"), "_INBOX.p-1.gateway");
        assert_eq!(inbox_prefix("p", "a.b*"), "_INBOX.p.a_b_");
    }
}

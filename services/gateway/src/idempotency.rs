//! What an async call keeps of its caller, and when a retry is "the same
//! request".
//!
//! Following the IETF `Idempotency-Key` draft
//! (draft-ietf-httpapi-idempotency-key-header), a key is bound to a
//! fingerprint of the request that first used it: SHA-256 over the method,
//! the path with its query, the body and the credential headers
//! ([`CREDENTIAL_HEADERS`]). Only the hash is kept, never the credentials.
//! The same key with another fingerprint is refused with 422 and learns
//! nothing about the first call.
//!
//! Async jobs are stored (JetStream, dead letters) and shown to the script
//! later, so [`strip_credentials`] drops the caller's credential headers
//! from them unless the script's version sets `keep_credentials`.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, Method, Uri};
use picloud_core::CREDENTIAL_HEADERS;
use sha2::{Digest, Sha256};

/// Hex SHA-256 fingerprint of a request. Every part is length-prefixed, so
/// no two different requests hash the same input.
pub fn fingerprint(method: &Method, uri: &Uri, body: &[u8], headers: &HeaderMap) -> String {
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    part(b"picloud-idempotency-v1");
    part(method.as_str().as_bytes());
    part(uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    part(body);
    for name in CREDENTIAL_HEADERS {
        let values: Vec<&[u8]> = headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
        part(name.as_bytes());
        part(&(values.len() as u64).to_be_bytes());
        for v in values {
            part(v);
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Drops the credential headers from a job's flattened request headers.
pub fn strip_credentials(headers: &mut BTreeMap<String, String>) {
    for name in CREDENTIAL_HEADERS {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(method: &str, uri: &str, body: &str, auth: Option<&str>) -> String {
        let mut headers = HeaderMap::new();
        if let Some(a) = auth {
            headers.insert("authorization", a.parse().expect("valid header"));
        }
        fingerprint(
            &method.parse().expect("valid method"),
            &uri.parse().expect("valid uri"),
            body.as_bytes(),
            &headers,
        )
    }

    #[test]
    fn each_part_of_the_request_counts() {
        let base = fp("POST", "/fn/a/x?q=1", "{}", Some("Bearer t"));
        assert_eq!(base, fp("POST", "/fn/a/x?q=1", "{}", Some("Bearer t")));
        assert_eq!(base.len(), 64);
        assert_ne!(base, fp("PUT", "/fn/a/x?q=1", "{}", Some("Bearer t")));
        assert_ne!(base, fp("POST", "/fn/a/y?q=1", "{}", Some("Bearer t")));
        assert_ne!(base, fp("POST", "/fn/a/x?q=2", "{}", Some("Bearer t")));
        assert_ne!(base, fp("POST", "/fn/a/x?q=1", "{ }", Some("Bearer t")));
        assert_ne!(base, fp("POST", "/fn/a/x?q=1", "{}", Some("Bearer u")));
        assert_ne!(base, fp("POST", "/fn/a/x?q=1", "{}", None));
        // The hash never contains the credential itself.
        assert!(!base.contains("Bearer"));
    }

    #[test]
    fn credentials_are_stripped_and_nothing_else() {
        let mut h: BTreeMap<String, String> = [
            ("authorization", "Bearer t"),
            ("cookie", "s=1"),
            ("proxy-authorization", "Basic x"),
            ("x-other", "kept"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        strip_credentials(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-other"]);
    }
}

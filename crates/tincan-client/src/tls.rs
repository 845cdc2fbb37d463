//! The TLS client configuration of the HTTP transport: the system's roots (honouring
//! `SSL_CERT_FILE` and `SSL_CERT_DIR`) plus the Mozilla roots for machines without a CA store,
//! on rustls with ring, the same trust as the WebSocket transport's.

use std::sync::Arc;

/// An HTTP client builder (reqwest) with the transports' TLS trust, for `http://` and `https://`
/// alike. Build every reqwest client through this or [`http_client`]: reqwest is built without
/// a process-wide TLS provider (to keep aws-lc out), so `reqwest::Client::new()` panics.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().tls_backend_preconfigured(client_config())
}

/// [`http_client_builder`], built.
pub fn http_client() -> reqwest::Client {
    // With the TLS configuration given and no proxy or resolver settings, building cannot fail
    // (the rustls versions match at compile time).
    http_client_builder()
        .build()
        .expect("a reqwest client with a preconfigured rustls configuration builds")
}

/// A rustls client configuration trusting the system's and the Mozilla roots.
fn client_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "could not load some system root certificates");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system root certificates");
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

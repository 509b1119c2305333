//! TLS for fhir-fence's own outgoing calls (identity providers): rustls with the Web PKI roots,
//! or the CA certificates of a PEM file when the config names one (a private CA), and the
//! HTTPS-only client those calls go through.
use crate::config::ConfigError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use std::sync::Arc;

/// A client configuration trusting the PEM certificates `ca` (a `ca_file`'s content), or the Web
/// PKI roots without them. TLS 1.2 and 1.3 only (rustls offers nothing older); `key` names the
/// config key in errors.
pub fn client_config(key: &str, ca: Option<&[u8]>) -> Result<rustls::ClientConfig, ConfigError> {
    let mut roots = RootCertStore::empty();
    match ca {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| ConfigError::invalid(key, format!("not PEM certificates: {e}")))?;
                roots.add(cert).map_err(|e| ConfigError::invalid(key, format!("unusable CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(ConfigError::invalid(key, "the file holds no CA certificate"));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::invalid(key, e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// An HTTPS-only HTTP/1 client over `tls` (plain `http://` is refused by the connector).
pub fn https_client<B>(
    tls: rustls::ClientConfig,
) -> hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    B,
>
where
    B: http_body::Body + Send,
    B::Data: Send,
{
    let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(30))
        .build(connector)
}

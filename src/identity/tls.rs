//! TLS for fhir-fence's own outgoing calls (identity providers): rustls with the Web PKI roots,
//! or the CA certificates of a PEM file when the config names one (a private CA).
use crate::config::{ConfigError, Loaded};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use std::path::Path;
use std::sync::Arc;

/// A client configuration trusting `ca_file`'s certificates, or the Web PKI roots without one.
/// TLS 1.2 and 1.3 only (rustls offers nothing older); `key` names the config key in errors.
pub fn client_config(loaded: &Loaded, key: &str, ca_file: Option<&Path>) -> Result<rustls::ClientConfig, ConfigError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let pem = loaded.read_file(key, path)?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
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

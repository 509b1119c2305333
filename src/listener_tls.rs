//! TLS on the public listener (`server.tls`): rustls (TLS 1.2 and 1.3 only), the server
//! certificate followed on disk (`server_cert`: a renewal serves from the next handshake, open
//! connections carry on), and optionally client certificates verified against
//! `client_ca_file`. A verified client certificate's names (SAN URIs such as SPIFFE IDs, and
//! DNS names) are what `identity` maps to a tenant (`tenants.NAME.client_certs`).
//!
//! Built with each snapshot; a reload that leaves `server.tls` and the CA file alone keeps the
//! one in use (and its certificate follower).
use crate::config::{ClientCerts, ConfigError, Loaded};
use crate::server_cert::ServerCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

pub struct ListenerTls {
    pub acceptor: TlsAcceptor,
    settings: crate::config::ListenerTls,
    ca: Option<Vec<u8>>,
    /// Kept alive with the snapshot: its follower stops when the last snapshot using it goes.
    _cert: Arc<ServerCert>,
}

impl ListenerTls {
    /// The listener's TLS for `loaded` (`None`: plain HTTP); `prev`'s when nothing changed.
    pub fn build(loaded: &Loaded, prev: Option<&Arc<ListenerTls>>) -> Result<Option<Arc<ListenerTls>>, ConfigError> {
        let Some(settings) = &loaded.config.server.tls else { return Ok(None) };
        let ca =
            settings.client_ca_file.as_ref().map(|f| loaded.read_file("server.tls.client_ca_file", f)).transpose()?;
        if let Some(prev) = prev.filter(|p| &p.settings == settings && p.ca == ca) {
            return Ok(Some(prev.clone()));
        }
        let cert = ServerCert::load(&loaded.resolve(&settings.cert_file), &loaded.resolve(&settings.key_file))
            .map_err(|e| ConfigError::invalid("server.tls", e.to_string()))?;
        // Followed on the runtime that builds the snapshot (`fhir-fence check` has none, and
        // needs no follower).
        if tokio::runtime::Handle::try_current().is_ok() {
            cert.follow();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::invalid("server.tls", e.to_string()))?;
        let builder = match &ca {
            None => builder.with_no_client_auth(),
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(pem) {
                    let c =
                        c.map_err(|e| ConfigError::invalid("server.tls.client_ca_file", format!("not PEM: {e}")))?;
                    roots.add(c).map_err(|e| ConfigError::invalid("server.tls.client_ca_file", e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(ConfigError::invalid("server.tls.client_ca_file", "the file holds no CA certificate"));
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = match settings.client_certs {
                    ClientCerts::Optional => verifier.allow_unauthenticated(),
                    ClientCerts::Required => verifier,
                };
                let verifier =
                    verifier.build().map_err(|e| ConfigError::invalid("server.tls.client_ca_file", e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(cert.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        if ca.is_some() {
            // A resumed session skips the certificate check: an expired (or no longer
            // trusted) client certificate would keep its tenant through session tickets. With
            // client certificates, every connection does a full handshake.
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        }
        Ok(Some(Arc::new(ListenerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            settings: settings.clone(),
            ca,
            _cert: cert,
        })))
    }
}

/// A name of `tenants.NAME.client_certs` as `peer_names` writes a certificate's: with `://`, a
/// SAN URI (`uri:…`), else a DNS name (`dns:…`). The kinds never match each other: a CA that
/// lets a workload pick DNS names must not let it pick a SPIFFE ID.
pub fn configured_name(name: &str) -> String {
    if name.contains("://") {
        format!("uri:{name}")
    } else {
        format!("dns:{name}")
    }
}

/// The names a verified client certificate carries: its SAN URIs (`uri:…`) and DNS names
/// (`dns:…`); empty without a certificate, or for one whose names cannot be read.
pub fn peer_names(conn: &rustls::ServerConnection) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) else { return vec![] };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else { return vec![] };
    let Ok(Some(san)) = cert.subject_alternative_name() else { return vec![] };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(format!("uri:{u}")),
            GeneralName::DNSName(d) => Some(format!("dns:{d}")),
            _ => None,
        })
        .collect()
}

//! A TLS server certificate that follows its files: the certificate chain and private key are
//! read from PEM files (as cert-manager, a Kubernetes Secret or an `openssl` step writes them),
//! checked to belong together, and re-read every few seconds. A changed pair that is whole and
//! matching replaces the old one for the next handshake; a half-written or mismatched pair is
//! logged and counted, and the old pair keeps serving (a rotation never takes a listener down).
//! Used by the public listener (`listener_tls`) and the admission webhook's (`kube::webhook`).
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How often the files are read again. Polling (of two small files) sees every way a file is
/// replaced: written in place, renamed over, or a Kubernetes Secret's `..data` link swapped.
pub const RECHECK: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{0}: cannot read: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0}: no PEM certificate in it")]
    NoCertificate(PathBuf),
    #[error("{0}: not PEM certificates: {1}")]
    Certificates(PathBuf, String),
    #[error("{0}: no usable PEM private key in it: {1}")]
    Key(PathBuf, String),
    #[error("{cert} and {key} do not belong together: {why}")]
    Mismatch { cert: PathBuf, key: PathBuf, why: String },
    #[error("TLS settings: {0}")]
    Settings(String),
}

/// The pair in use, and the file contents it was made from (to see a change).
struct Pair {
    key: Arc<CertifiedKey>,
    files: (Vec<u8>, Vec<u8>),
}

pub struct ServerCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<Pair>,
}

impl std::fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCert").field("cert", &self.cert_path).field("key", &self.key_path).finish()
    }
}

impl ServerCert {
    /// Reads the pair; fails when either file is missing, unreadable or the two do not match.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerCert>, CertError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let files = read_files(cert_path, key_path)?;
        let key = certified(cert_path, key_path, &files, &provider)?;
        Ok(Arc::new(ServerCert {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            provider,
            current: ArcSwap::from_pointee(Pair { key, files }),
        }))
    }

    /// Reads the files again: `Ok(true)` when a new pair now serves, `Ok(false)` when nothing
    /// changed, `Err` when they changed into something unusable (the old pair keeps serving).
    pub fn recheck(&self) -> Result<bool, CertError> {
        let files = read_files(&self.cert_path, &self.key_path)?;
        if files == self.current.load().files {
            return Ok(false);
        }
        let key = certified(&self.cert_path, &self.key_path, &files, &self.provider)?;
        self.current.store(Arc::new(Pair { key, files }));
        Ok(true)
    }

    /// Rechecks the files every [`RECHECK`] on the current tokio runtime, for as long as the
    /// returned handle's owner keeps the runtime (the task holds only a weak reference).
    pub fn follow(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RECHECK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tick.tick().await;
                let Some(cert) = weak.upgrade() else { return };
                match cert.recheck() {
                    Ok(true) => {
                        tracing::info!(cert = %cert.cert_path.display(), "TLS certificate reloaded");
                        failing = false;
                    }
                    Ok(false) => failing = false,
                    // Logged once per failure streak: a file being written fails one check.
                    Err(e) if !failing => {
                        tracing::warn!(error = %e, "TLS certificate files changed but are unusable; the old pair serves");
                        failing = true;
                    }
                    Err(_) => {}
                }
            }
        });
    }

    /// A rustls server configuration serving this certificate (TLS 1.2 and 1.3, no client
    /// certificates), offering `alpn` (e.g. `http/1.1`).
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, CertError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| CertError::Settings(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().key.clone())
    }
}

fn read_files(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), CertError> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| CertError::Read(p.to_path_buf(), e));
    Ok((read(cert)?, read(key)?))
}

fn certified(
    cert_path: &Path,
    key_path: &Path,
    (cert, key): &(Vec<u8>, Vec<u8>),
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Certificates(cert_path.to_path_buf(), e.to_string()))?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate(cert_path.to_path_buf()));
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| CertError::Key(key_path.to_path_buf(), e.to_string()))?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| CertError::Mismatch {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        why: e.to_string(),
    })?;
    Ok(Arc::new(certified))
}

//! Certificates made at test time (rcgen), and files laid out like a mounted Kubernetes Secret.
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::path::PathBuf;

pub struct Ca(pub CertifiedIssuer<'static, KeyPair>);

/// An issued certificate: its PEM, its key's PEM, its DER, and the key.
pub struct Issued {
    pub pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    pub key: KeyPair,
}

impl Ca {
    pub fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ca(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    /// A certificate for `names`: `uri:` / `dns:` force the kind of name; otherwise `://`
    /// makes a URI, anything else a DNS name.
    pub fn issue(&self, names: &[&str]) -> Issued {
        self.issue_with(names, |_| {})
    }

    /// [`Ca::issue`], with the parameters edited first (validity, say).
    pub fn issue_with(&self, names: &[&str], edit: impl FnOnce(&mut CertificateParams)) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        for n in names {
            let (uri, n) = match (n.strip_prefix("uri:"), n.strip_prefix("dns:")) {
                (Some(rest), _) => (true, rest),
                (_, Some(rest)) => (false, rest),
                _ => (n.contains("://"), *n),
            };
            let name = rcgen::string::Ia5String::try_from(n).unwrap();
            params.subject_alt_names.push(if uri { rcgen::SanType::URI(name) } else { rcgen::SanType::DnsName(name) });
        }
        edit(&mut params);
        let cert = params.signed_by(&key, &self.0).unwrap();
        Issued { pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone(), key }
    }

    pub fn pem(&self) -> String {
        self.0.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.0.der().clone()
    }
}

/// A directory laid out like a mounted Secret: each file a link through `..data`, which
/// [`Volume::swap`] replaces in one rename, as the kubelet does.
pub struct Volume(pub PathBuf);

impl Volume {
    pub fn new() -> Volume {
        let dir = std::env::temp_dir().join(format!("fhir-fence-pki-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Volume(dir)
    }

    pub fn swap(&self, files: &[(&str, &str)]) {
        let stamp = format!("..{}", uuid::Uuid::new_v4());
        std::fs::create_dir(self.0.join(&stamp)).unwrap();
        for (name, text) in files {
            std::fs::write(self.0.join(&stamp).join(name), text).unwrap();
            let link = self.0.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{name}"), link).unwrap();
            }
        }
        let _ = std::fs::remove_file(self.0.join("..data_tmp"));
        std::os::unix::fs::symlink(&stamp, self.0.join("..data_tmp")).unwrap();
        std::fs::rename(self.0.join("..data_tmp"), self.0.join("..data")).unwrap();
    }

    pub fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A TLS front for `backend` (`host:port`) serving `cert`, asking for client certificates of
/// `clients` when given; answers its own `host:port`.
pub async fn tls_front(backend: String, cert: &Issued, clients: Option<&Ca>) -> String {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder =
        rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().unwrap();
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.der()).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(std::sync::Arc::new(roots), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let config = builder.with_single_cert(vec![cert.der.clone()], key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, backend) = (acceptor.clone(), backend.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut plain) = tokio::net::TcpStream::connect(&backend).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

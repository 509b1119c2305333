//! How fhir-fence reaches one upstream beyond plain TCP: TLS for an `https://` base (rustls,
//! TLS 1.2/1.3, the upstream's name verified against its certificate, the Web PKI roots or the
//! upstream's `ca_file`, a client certificate when the upstream asks for one), and the bearer
//! token fhir-fence itself presents (`bearer_file`, or one it obtains with OAuth2 client
//! credentials, `upstream_token`). Built with each snapshot from the files the config names;
//! `upstream.rs` opens connections through it and adds its credentials.
use crate::config::{ConfigError, Loaded, Upstream as UpstreamConfig};
use crate::upstream_token::{TokenError, UpstreamToken};
use http::HeaderValue;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::sync::Arc;

/// What fhir-fence presents to the upstream as `Authorization`.
pub enum Credentials {
    None,
    /// `bearer_file`'s token.
    Bearer(HeaderValue),
    /// A token obtained with OAuth2 client credentials (`oauth2`), renewed as it ages.
    OAuth2(Arc<UpstreamToken>),
}

pub struct Link {
    /// The TLS connector and the name the upstream's certificate must carry (`https://` only).
    pub tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// fhir-fence's own `Authorization` for every request to the upstream.
    pub credentials: Credentials,
    /// The contents of the files it was built from: a reload keeps the upstream's connections
    /// only while these are unchanged.
    pub files: Vec<Vec<u8>>,
}

impl Link {
    pub fn build(loaded: &Loaded, name: &str, cfg: &UpstreamConfig) -> Result<Link, ConfigError> {
        let key = |k: &str| format!("upstreams.{name}.{k}");
        let read =
            |k: &str, p: &Option<std::path::PathBuf>| p.as_ref().map(|p| loaded.read_file(&key(k), p)).transpose();
        let ca = read("ca_file", &cfg.ca_file)?;
        let cert = read("client_cert_file", &cfg.client_cert_file)?;
        let private = read("client_key_file", &cfg.client_key_file)?;
        let bearer = read("bearer_file", &cfg.bearer_file)?;
        let authorization = match &bearer {
            None => None,
            Some(bytes) => {
                let token = std::str::from_utf8(bytes).map(str::trim).unwrap_or_default();
                let token68 = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b);
                if token.is_empty() || !token.bytes().all(token68) {
                    return Err(ConfigError::invalid(
                        key("bearer_file"),
                        "the file holds no bearer token (RFC 6750 characters)",
                    ));
                }
                let mut value = HeaderValue::from_str(&format!("Bearer {token}")).expect("checked characters");
                value.set_sensitive(true);
                Some(value)
            }
        };
        let credentials = match (authorization, &cfg.oauth2) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(key("oauth2"), "give bearer_file or oauth2, not both"));
            }
            (Some(bearer), None) => Credentials::Bearer(bearer),
            (None, Some(o)) => Credentials::OAuth2(Arc::new(UpstreamToken::build(loaded, name, o)?)),
            (None, None) => Credentials::None,
        };
        let url = url::Url::parse(&cfg.base_url).map_err(|e| ConfigError::invalid(key("base_url"), e.to_string()))?;
        let tls = if url.scheme() == "https" {
            let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
            let server_name =
                ServerName::try_from(host).map_err(|e| ConfigError::invalid(key("base_url"), e.to_string()))?;
            let config = client_config(&key, ca.as_deref(), cert.as_deref().zip(private.as_deref()))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), server_name))
        } else {
            None
        };
        let oauth2 = cfg.oauth2.iter().flat_map(|o| [Some(&o.client_secret_file), o.ca_file.as_ref()]);
        let oauth2 = oauth2
            .map(|p| p.map(|p| loaded.read_file(&key("oauth2"), p)).transpose())
            .collect::<Result<Vec<_>, _>>()?;
        let files = [ca, cert, private, bearer].into_iter().chain(oauth2).map(Option::unwrap_or_default).collect();
        Ok(Link { tls, credentials, files })
    }

    /// The `Authorization` to send now, if any (an OAuth2 token is fetched first when there is
    /// no usable one: bounded, see `upstream_token`).
    pub async fn authorization(&self) -> Result<Option<HeaderValue>, TokenError> {
        match &self.credentials {
            Credentials::None => Ok(None),
            Credentials::Bearer(value) => Ok(Some(value.clone())),
            Credentials::OAuth2(token) => token.authorization().await.map(Some),
        }
    }

    /// Whether a request the upstream refused (401) may get other credentials when sent again:
    /// only a fetched token can be replaced.
    pub fn renews(&self) -> bool {
        matches!(self.credentials, Credentials::OAuth2(_))
    }

    /// The upstream answered 401 to `sent`: a fetched token is dropped, so the next request
    /// fetches a new one.
    pub fn refused(&self, sent: &HeaderValue) {
        if let Credentials::OAuth2(token) = &self.credentials {
            token.rejected(sent);
        }
    }
}

fn client_config(
    key: &dyn Fn(&str) -> String,
    ca: Option<&[u8]>,
    client: Option<(&[u8], &[u8])>,
) -> Result<rustls::ClientConfig, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(pem) => {
            for c in CertificateDer::pem_slice_iter(pem) {
                let c = c.map_err(|e| ConfigError::invalid(key("ca_file"), format!("not PEM certificates: {e}")))?;
                roots.add(c).map_err(|e| ConfigError::invalid(key("ca_file"), e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(ConfigError::invalid(key("ca_file"), "the file holds no CA certificate"));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::invalid(key("base_url"), e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, private)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ConfigError::invalid(key("client_cert_file"), format!("not PEM certificates: {e}")))?;
            if chain.is_empty() {
                return Err(ConfigError::invalid(key("client_cert_file"), "the file holds no certificate"));
            }
            let private = PrivateKeyDer::from_pem_slice(private)
                .map_err(|e| ConfigError::invalid(key("client_key_file"), format!("no usable PEM private key: {e}")))?;
            builder.with_client_auth_cert(chain, private).map_err(|e| {
                ConfigError::invalid(key("client_key_file"), format!("does not fit the certificate: {e}"))
            })?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

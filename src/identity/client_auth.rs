//! fhir-fence's own client credentials at an authorization server (RFC 6749 §2.3.1), for the
//! calls it makes as a client there: token introspection (`introspect`) and the tokens it
//! obtains for an upstream (`upstream_token`). One place reads the secret and puts it on a
//! request, so both send it the same way — and neither can print it (no `Debug` shows it).
use crate::config::{ConfigError, IntrospectionAuth, Loaded};
use http::{header, HeaderValue};
use std::path::Path;

pub struct ClientSecret {
    id: String,
    secret: String,
    auth: IntrospectionAuth,
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSecret").field("id", &self.id).field("auth", &self.auth).finish_non_exhaustive()
    }
}

impl ClientSecret {
    /// Reads and checks a client's settings; `key` names the config table in errors
    /// (`….client_id`, `….client_secret_file`).
    pub fn read(
        loaded: &Loaded,
        key: &str,
        id: &str,
        secret_file: &Path,
        auth: IntrospectionAuth,
    ) -> Result<Self, ConfigError> {
        if id.is_empty() {
            return Err(ConfigError::invalid(format!("{key}.client_id"), "must not be empty"));
        }
        let file = format!("{key}.client_secret_file");
        let secret = String::from_utf8(loaded.read_file(&file, secret_file)?)
            .map_err(|_| ConfigError::invalid(&file, "the secret is not UTF-8"))?;
        let secret = secret.trim_end_matches(['\r', '\n']).to_owned();
        if secret.is_empty() {
            return Err(ConfigError::invalid(&file, "the file is empty"));
        }
        Ok(ClientSecret { id: id.to_owned(), secret, auth })
    }

    /// Puts the credentials on a form POST: an `Authorization: Basic` header
    /// (`client_secret_basic`; each part form-encoded first, then joined and base64-encoded) or
    /// two form fields (`client_secret_post`).
    pub fn apply(
        &self,
        request: http::request::Builder,
        form: &mut form_urlencoded::Serializer<String>,
    ) -> http::request::Builder {
        match self.auth {
            IntrospectionAuth::ClientSecretBasic => {
                use base64::Engine;
                let part = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let pair = format!("{}:{}", part(&self.id), part(&self.secret));
                let basic = base64::engine::general_purpose::STANDARD.encode(pair);
                let mut value = HeaderValue::from_str(&format!("Basic {basic}")).expect("base64 is a header value");
                value.set_sensitive(true);
                request.header(header::AUTHORIZATION, value)
            }
            IntrospectionAuth::ClientSecretPost => {
                form.append_pair("client_id", &self.id).append_pair("client_secret", &self.secret);
                request
            }
        }
    }
}

//! TLS on the public listener (`server.tls`), with certificates made at test time (rcgen): a
//! renewed certificate serves new handshakes while open connections carry on, plain HTTP gets
//! no answer, and client certificates map to tenants — alone where the tenant allows it, else
//! only together with the same tenant's token.
use crate::support::fake::{self, Answer};
use crate::support::pki::{Ca, Volume};
use crate::support::{self, tenants, Options};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rcgen::KeyPair;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A client certificate and its key, or none.
type Client<'a> = Option<(CertificateDer<'static>, &'a KeyPair)>;

/// (certificate PEM, key PEM, DER, key) for `names` (see `pki::Ca::issue`).
fn issue(ca: &Ca, names: &[&str]) -> (String, String, CertificateDer<'static>, KeyPair) {
    let i = ca.issue(names);
    (i.pem, i.key_pem, i.der, i.key)
}

/// A client configuration trusting `ca`, presenting `client` if given.
fn client_config(ca: &Ca, client: Client<'_>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            builder.with_client_auth_cert(vec![cert], key).unwrap()
        }
    })
}

/// A client connection over TLS: the sender for its requests, the certificate the server
/// showed, and whether the handshake resumed an earlier session.
async fn connect_with(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<(SendRequest<Full<Bytes>>, CertificateDer<'static>, bool), String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let served = tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned();
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok((sender, served, resumed))
}

/// A client connection over TLS (trusting `ca`, presenting `client` if given): the sender for
/// its requests and the certificate the server showed.
async fn connect(
    addr: &str,
    ca: &Ca,
    client: Client<'_>,
) -> Result<(SendRequest<Full<Bytes>>, CertificateDer<'static>), String> {
    connect_with(addr, client_config(ca, client)).await.map(|(s, c, _)| (s, c))
}

/// Whether a second connection with the same client configuration resumes the first's session
/// (after a request, so that a TLS 1.3 ticket has arrived).
async fn resumes(addr: &str, config: Arc<rustls::ClientConfig>, token: Option<&str>) -> bool {
    let (mut first, _, _) = connect_with(addr, config.clone()).await.unwrap();
    let _ = get(&mut first, "/fhir/Patient/p1", token).await;
    connect_with(addr, config).await.unwrap().2
}

/// GET `path` on an open connection: (status, body); `None` when the connection failed (a
/// TLS 1.3 server refuses a client certificate after the handshake the client saw finish).
async fn get(sender: &mut SendRequest<Full<Bytes>>, path: &str, token: Option<&str>) -> Option<(u16, Value)> {
    let mut req = http::Request::get(path).header("host", "localhost").header("accept", "application/fhir+json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let response = sender.send_request(req.body(Full::new(Bytes::new())).unwrap()).await.ok()?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// The upstream answers each read with the resource of the tenant whose prefix the id carries.
async fn upstream(ts: &[support::T]) -> fake::Fake {
    let known: Vec<(String, String)> = ts.iter().map(|t| (t.prefix.clone(), t.name.clone())).collect();
    fake::start(move |seen| {
        let id = seen.path.rsplit('/').next().unwrap_or_default();
        match known.iter().find(|(p, _)| id.starts_with(&format!("{p}-"))) {
            Some((p, n)) => Answer::Json(200, fake::stored("Patient", p, n, "p1")),
            None => Answer::Json(404, serde_json::json!({"resourceType": "OperationOutcome"})),
        }
    })
    .await
}

#[tokio::test]
async fn a_renewed_certificate_serves_new_handshakes_and_open_connections_carry_on() {
    let ca = Ca::new();
    let (cert, key, first, _) = issue(&ca, &["localhost"]);
    let volume = Volume::new();
    volume.swap(&[("tls.crt", &cert), ("tls.key", &key)]);
    let ts = tenants(1);
    let up = upstream(&ts).await;
    let mut o = Options::new(&up.base, &ts);
    o.extra =
        format!("[server.tls]\ncert_file = {:?}\nkey_file = {:?}\n", volume.path("tls.crt"), volume.path("tls.key"));
    let fence = support::start(o).await;
    let addr = fence.base.trim_start_matches("http://").split('/').next().unwrap().to_owned();
    let token = fence.token(&ts[0].name);

    let (mut open, served) = connect(&addr, &ca, None).await.unwrap();
    assert_eq!(served, first);
    // Without client certificates, sessions resume (the control for the test below).
    assert!(resumes(&addr, client_config(&ca, None), Some(&token)).await, "no resumption without client certificates");
    assert_eq!(get(&mut open, "/fhir/Patient/p1", Some(&token)).await.unwrap().0, 200);

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(&addr).await.unwrap();
    plain.write_all(b"GET /fhir/metadata HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), plain.read_to_end(&mut answer)).await;
    assert!(!answer.starts_with(b"HTTP/"), "plain HTTP was answered");

    let (cert2, key2, second, _) = issue(&ca, &["localhost"]);
    volume.swap(&[("tls.crt", &cert2), ("tls.key", &key2)]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, served) = connect(&addr, &ca, None).await.unwrap();
        if served == second {
            break;
        }
        assert!(Instant::now() < deadline, "the renewed certificate was not served within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection opened before the renewal goes on serving.
    assert_eq!(get(&mut open, "/fhir/Patient/p1", Some(&token)).await.unwrap().0, 200);
}

#[tokio::test]
async fn client_certificates_name_their_tenant_alone_or_with_its_token() {
    let ca = Ca::new();
    let (cert, key, _, _) = issue(&ca, &["localhost"]);
    let volume = Volume::new();
    volume.swap(&[("tls.crt", &cert), ("tls.key", &key), ("clients.pem", &ca.pem())]);
    let mut ts = tenants(3);
    // a: its certificate alone; b: its certificate and its token; c: tokens only.
    ts[0].extra = format!("client_certs = [\"spiffe://test/{}\"]\nclient_auth = \"certificate\"", ts[0].name);
    ts[1].extra = format!("client_certs = [\"spiffe://test/{}\", \"{}.svc.test\"]", ts[1].name, ts[1].name);
    let up = upstream(&ts).await;
    let mut o = Options::new(&up.base, &ts);
    o.extra = format!(
        "[server.tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n",
        volume.path("tls.crt"),
        volume.path("tls.key"),
        volume.path("clients.pem")
    );
    let fence = support::start(o).await;
    let addr = fence.base.trim_start_matches("http://").split('/').next().unwrap().to_owned();
    let (a, b, c) = (&ts[0].name, &ts[1].name, &ts[2].name);
    let (_, _, a_cert, a_key) = issue(&ca, &[&format!("spiffe://test/{a}")]);
    let (_, _, b_cert, b_key) = issue(&ca, &[&format!("{b}.svc.test")]);
    let (_, _, nobody_cert, nobody_key) = issue(&ca, &["spiffe://test/nobody"]);
    let (_, _, both_cert, both_key) = issue(&ca, &[&format!("spiffe://test/{a}"), &format!("spiffe://test/{b}")]);
    // The same text under the other kind of name: a DNS name is no SPIFFE ID, nor the reverse.
    let (_, _, dns_as_uri, dns_as_uri_key) = issue(&ca, &[&format!("dns:spiffe://test/{a}")]);
    let (_, _, uri_as_dns, uri_as_dns_key) = issue(&ca, &[&format!("uri:{b}.svc.test")]);
    let stranger = Ca::new();
    let (_, _, foreign_cert, foreign_key) = issue(&stranger, &[&format!("spiffe://test/{a}")]);

    let cases: Vec<(&str, Client, Option<String>, u16)> = vec![
        ("a's certificate alone", Some((a_cert.clone(), &a_key)), None, 200),
        ("a's certificate, b's token", Some((a_cert.clone(), &a_key)), Some(fence.token(b)), 401),
        ("a's certificate, a's token", Some((a_cert, &a_key)), Some(fence.token(a)), 200),
        ("b's certificate alone", Some((b_cert.clone(), &b_key)), None, 401),
        ("b's token alone", None, Some(fence.token(b)), 401),
        ("b's certificate and token", Some((b_cert, &b_key)), Some(fence.token(b)), 200),
        ("c's token alone", None, Some(fence.token(c)), 200),
        ("a certificate of no tenant, c's token", Some((nobody_cert, &nobody_key)), Some(fence.token(c)), 200),
        ("a certificate naming two tenants", Some((both_cert, &both_key)), None, 401),
        ("a's SPIFFE ID as a DNS name", Some((dns_as_uri, &dns_as_uri_key)), None, 401),
        ("b's DNS name as a URI, b's token", Some((uri_as_dns, &uri_as_dns_key)), Some(fence.token(b)), 401),
    ];
    for (why, client, token, want) in cases {
        let (mut sender, _) = connect(&addr, &ca, client).await.unwrap();
        let (status, body) = get(&mut sender, "/fhir/Patient/p1", token.as_deref()).await.unwrap();
        assert_eq!(status, want, "{why}: {body}");
    }
    // With client certificates, no session resumes: a resumed session would skip the check of
    // the certificate (found in an attack: an expired certificate kept its tenant by tickets).
    let (_, _, a2_cert, a2_key) = issue(&ca, &[&format!("spiffe://test/{a}")]);
    assert!(!resumes(&addr, client_config(&ca, Some((a2_cert, &a2_key))), None).await, "a session resumed");
    // Another CA's certificate: no connection at all.
    let refused = match connect(&addr, &ca, Some((foreign_cert, &foreign_key))).await {
        Err(_) => true,
        Ok((mut sender, _)) => get(&mut sender, "/fhir/Patient/p1", None).await.is_none(),
    };
    assert!(refused, "a certificate of another CA was accepted");
}

/// `fhir-fence check` names what cannot work: client certificates without a CA to verify them,
/// one certificate name for two tenants, a certificate-only tenant without certificates, and a
/// certificate file that does not hold the key's certificate.
#[test]
fn check_names_unusable_tls_settings() {
    let ca = Ca::new();
    let (cert, key, _, _) = issue(&ca, &["localhost"]);
    let (other_cert, _, _, _) = issue(&ca, &["localhost"]);
    let volume = Volume::new();
    volume.swap(&[("tls.crt", &cert), ("tls.key", &key), ("other.crt", &other_cert), ("ca.pem", &ca.pem())]);
    let tls = |cert: &str, ca: bool| {
        let ca = if ca { format!("client_ca_file = {:?}\n", volume.path("ca.pem")) } else { String::new() };
        format!("[server.tls]\ncert_file = {:?}\nkey_file = {:?}\n{ca}", volume.path(cert), volume.path("tls.key"))
    };
    let cases = [
        ("no CA", tls("tls.crt", false), "client_certs = [\"spiffe://x/a\"]", "", "client_ca_file"),
        (
            "a name twice",
            tls("tls.crt", true),
            "client_certs = [\"spiffe://x/a\"]",
            "client_certs = [\"spiffe://x/a\"]",
            "already",
        ),
        ("alone without names", tls("tls.crt", true), "client_auth = \"certificate\"", "", "client_certs"),
        ("another's certificate", tls("other.crt", true), "", "", "server.tls"),
    ];
    for (why, extra, a, b, says) in cases {
        let mut ts = tenants(2);
        ts[0].extra = a.into();
        ts[1].extra = b.into();
        let mut o = Options::new("http://127.0.0.1:9/fhir", &ts);
        o.extra = extra;
        let err = support::check_config(&support::config_text(&o, 1, 2)).expect_err(why);
        assert!(err.contains(says), "{why}: {err}");
    }
}

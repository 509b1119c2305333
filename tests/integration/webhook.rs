//! `fhir-fence webhook` over real TLS: AdmissionReviews shaped like the Kubernetes
//! documentation's examples, answered as the API server needs (an annotated Pod gets the
//! sidecar as a JSON Patch, an unannotated one `allowed` and no patch, a malformed review a 400
//! with the reason), and a certificate renewed on disk (a Secret's `..data` link swapped) is
//! served from the next handshake, while a half-written one is not.
use crate::support::pki::{Ca, Volume};
use base64::Engine;
use fhir_fence::kube::webhook;
use fhir_fence::server_cert::ServerCert;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server certificate for the webhook's Service name and loopback: (cert PEM, key PEM, DER).
fn issue(ca: &Ca) -> (String, String, CertificateDer<'static>) {
    let i = ca.issue(&["fhir-fence-webhook.fhir-fence.svc", "localhost"]);
    (i.pem, i.key_pem, i.der)
}

fn client(ca: &Ca) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A Secret volume holding the webhook's `tls.crt` and `tls.key`.
fn secret(cert: &str, key: &str) -> Volume {
    let v = Volume::new();
    v.swap(&[("tls.crt", cert), ("tls.key", key)]);
    v
}

struct Webhook {
    addr: std::net::SocketAddr,
    cert: Arc<ServerCert>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
    }
}

async fn start(cert: &Path, key: &Path) -> Webhook {
    let cert = ServerCert::load(cert, key).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = cert.clone();
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        webhook::serve(listener, served, "ghcr.io/fhir-fence/fhir-fence:test".into(), shutdown).await.unwrap();
    });
    Webhook { addr, cert, stop: Some(stop) }
}

/// One HTTP/1.1 exchange over a fresh TLS connection: (status, body, the certificate served).
async fn exchange(
    ca: &Ca,
    addr: std::net::SocketAddr,
    head: &str,
    body: &[u8],
) -> (u16, Value, CertificateDer<'static>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("fhir-fence-webhook.fhir-fence.svc").unwrap();
    let mut tls = client(ca).connect(name, tcp).await.unwrap();
    let served = tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned();
    let length =
        if head.contains("Content-Length") { String::new() } else { format!("\r\nContent-Length: {}", body.len()) };
    let request = format!("{head}\r\nHost: webhook{length}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tls.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap(), served)
}

/// A Pod as the ReplicaSet controller creates it, and the review the documentation shows.
fn review(annotations: Value) -> (Value, Vec<u8>) {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "fhir-server-7c9d-", "namespace": "fhir", "labels": {"app": "fhir-server"}, "annotations": annotations},
        "spec": {
            "containers": [{
                "name": "hapi", "image": "hapiproject/hapi:v8.4.0",
                "env": [{"name": "SERVER_ADDRESS", "value": "127.0.0.1"}, {"name": "SERVER_PORT", "value": "8090"}],
                "ports": [{"containerPort": 8090, "name": "http", "protocol": "TCP"}],
                "resources": {}, "terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "IfNotPresent"
            }],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 45, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "fhir-server"
        }
    });
    let body = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "fhir", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "groups": ["system:serviceaccounts"]},
            "object": pod, "oldObject": null, "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    });
    (pod, serde_json::to_vec(&body).unwrap())
}

const POST: &str = "POST /mutate HTTP/1.1\r\nContent-Type: application/json";

#[tokio::test]
async fn an_annotated_pod_is_patched_and_an_unannotated_one_allowed_as_it_is() {
    let ca = Ca::new();
    let (cert, key, _) = issue(&ca);
    let volume = secret(&cert, &key);
    let hook = start(volume.path("tls.crt").as_ref(), volume.path("tls.key").as_ref()).await;

    let (pod, body) = review(json!({"fhir-fence.dev/inject": "enabled", "fhir-fence.dev/upstream-port": "8090"}));
    let (status, answer, _) = exchange(&ca, hook.addr, POST, &body).await;
    assert_eq!(status, 200);
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD.decode(response["patch"].as_str().unwrap()).unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch).unwrap();
    let spec = &patched["spec"];
    assert_eq!(spec["initContainers"][0]["name"], "fhir-fence");
    assert_eq!(spec["initContainers"][0]["restartPolicy"], "Always");
    assert_eq!(spec["initContainers"][0]["image"], "ghcr.io/fhir-fence/fhir-fence:test");
    assert!(spec["containers"][0].get("ports").is_none(), "the FHIR server's port is no longer declared");
    assert_eq!(spec["containers"][0]["env"], pod["spec"]["containers"][0]["env"], "the FHIR server is left alone");
    assert_eq!(spec["volumes"].as_array().unwrap().len(), 2);

    let (_, body) = review(json!({"team": "a"}));
    let (status, answer, _) = exchange(&ca, hook.addr, POST, &body).await;
    assert_eq!(status, 200);
    assert_eq!(answer["response"], json!({"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": true}));

    // Asked for, but the FHIR server is not on loopback: refused, and says why.
    let (_, body) = review(json!({"fhir-fence.dev/inject": "enabled", "fhir-fence.dev/upstream-port": "8090"}));
    let body = String::from_utf8(body).unwrap().replace("127.0.0.1", "0.0.0.0");
    let (status, answer, _) = exchange(&ca, hook.addr, POST, body.as_bytes()).await;
    assert_eq!(status, 200);
    assert_eq!(answer["response"]["allowed"], false);
    assert_eq!(answer["response"]["status"]["code"], 403);
    assert!(answer["response"]["status"]["message"].as_str().unwrap().contains("127.0.0.1"));
}

#[tokio::test]
async fn malformed_requests_get_a_clear_error_and_the_webhook_keeps_serving() {
    let ca = Ca::new();
    let (cert, key, _) = issue(&ca);
    let volume = secret(&cert, &key);
    let hook = start(volume.path("tls.crt").as_ref(), volume.path("tls.key").as_ref()).await;
    let cases: [(&str, &[u8], u16, &str); 6] = [
        (POST, b"{\"apiVersion\": ", 400, "AdmissionReview"),
        (
            POST,
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u"}}"#,
            400,
            "v1beta1",
        ),
        (POST, br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#, 400, "no request"),
        ("POST /mutate HTTP/1.1\r\nContent-Type: text/plain", b"{}", 415, "application/json"),
        ("GET /mutate HTTP/1.1", b"", 405, "GET"),
        ("POST /validate HTTP/1.1\r\nContent-Type: application/json", b"{}", 404, "/mutate"),
    ];
    for (head, body, want, says) in cases {
        let (status, answer, _) = exchange(&ca, hook.addr, head, body).await;
        assert_eq!(status, want, "{head}");
        assert!(answer["error"].as_str().unwrap().contains(says), "{head}: {answer}");
    }
    // Too big, by its declared length: refused before any of it is read (and sent none, so the
    // connection's close cannot reset unread bytes away).
    let (status, answer, _) = exchange(&ca, hook.addr, &format!("{POST}\r\nContent-Length: 5242880"), b"").await;
    assert_eq!(status, 413, "{answer}");
    let (status, answer, _) = exchange(&ca, hook.addr, "GET /healthz HTTP/1.1", b"").await;
    assert_eq!((status, answer), (200, json!({"status": "ok"})));
}

#[tokio::test]
async fn a_renewed_certificate_serves_from_the_next_handshake_and_a_broken_one_never() {
    let ca = Ca::new();
    let (cert, key, first) = issue(&ca);
    let volume = secret(&cert, &key);
    let hook = start(volume.path("tls.crt").as_ref(), volume.path("tls.key").as_ref()).await;
    hook.cert.follow();
    let (_, _, served) = exchange(&ca, hook.addr, "GET /healthz HTTP/1.1", b"").await;
    assert_eq!(served, first);

    // Half a renewal (the new certificate with the old key): refused, the old pair serves on.
    let (cert2, key2, second) = issue(&ca);
    volume.swap(&[("tls.crt", &cert2), ("tls.key", &key)]);
    assert!(hook.cert.recheck().is_err(), "a certificate with another's key is no pair");
    let (_, _, served) = exchange(&ca, hook.addr, "GET /healthz HTTP/1.1", b"").await;
    assert_eq!(served, first);

    // The whole renewal: picked up by the follower within a few of its rechecks.
    volume.swap(&[("tls.crt", &cert2), ("tls.key", &key2)]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, _, served) = exchange(&ca, hook.addr, "GET /healthz HTTP/1.1", b"").await;
        if served == second {
            break;
        }
        assert!(Instant::now() < deadline, "the renewed certificate was not served within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!hook.cert.recheck().unwrap(), "nothing more to reload");
}

//! TLS to the upstream (`https://` base_url) and fhir-fence's own upstream credentials, with
//! certificates made at test time: the in-process fake upstream sits behind a TLS front (rustls,
//! optionally asking for a client certificate). The right CA and name serve; another CA, another
//! name, an expired certificate or a missing client certificate fail to connect, naming why (a
//! client gets 502); `bearer_file` reaches the upstream, a client's own token never does.
use crate::support::client::get;
use crate::support::fake::{self, Answer};
use crate::support::pki::{self, Ca, Volume};
use crate::support::{self, tenants, Options};
use fhir_fence::config;
use fhir_fence::state::Snapshot;
use http::{HeaderMap, Method};

fn backend(up: &fake::Fake) -> String {
    up.base.trim_start_matches("http://").split('/').next().unwrap().to_owned()
}

/// The upstream `main` of a snapshot built from `o` with these `[upstreams.main]` lines
/// appended: what `GET metadata` through its link came to (an error names why).
async fn metadata_through(o: &Options, lines: &str) -> Result<u16, String> {
    let text = support::config_text(o, 1, 2).replace("[upstreams.main]\n", &format!("[upstreams.main]\n{lines}\n"));
    let path = support::write_config(&text);
    let snap = Snapshot::build(config::load(&path).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let upstream = snap.upstreams["main"].clone();
    upstream
        .send(Method::GET, "metadata", HeaderMap::new(), None)
        .await
        .map(|a| a.status.as_u16())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn https_upstreams_are_verified_by_ca_name_and_date() {
    let ts = tenants(1);
    let up = fake::start(|_| Answer::Json(200, serde_json::json!({"resourceType": "OperationOutcome"}))).await;
    let (ca, other) = (Ca::new(), Ca::new());
    let good = pki::tls_front(backend(&up), &ca.issue(&["localhost"]), None).await;
    let expired = pki::tls_front(
        backend(&up),
        &ca.issue_with(&["localhost"], |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }),
        None,
    )
    .await;
    let files = Volume::new();
    files.swap(&[("ca.pem", &ca.pem()), ("other.pem", &other.pem())]);
    let port = |a: &str| a.rsplit(':').next().unwrap().to_owned();
    let o = |base: String| Options::new(&base, &ts);
    let ca_file = format!("ca_file = {:?}", files.path("ca.pem"));
    let ok = metadata_through(&o(format!("https://localhost:{}/fhir", port(&good))), &ca_file).await;
    assert_eq!(ok, Ok(200));
    let refused = [
        ("the Web PKI roots", format!("https://localhost:{}/fhir", port(&good)), String::new(), "UnknownIssuer"),
        (
            "another CA",
            format!("https://localhost:{}/fhir", port(&good)),
            format!("ca_file = {:?}", files.path("other.pem")),
            "invalid peer certificate",
        ),
        ("another name", format!("https://127.0.0.1:{}/fhir", port(&good)), ca_file.clone(), "not valid for name"),
        (
            "an expired certificate",
            format!("https://localhost:{}/fhir", port(&expired)),
            ca_file.clone(),
            "certificate expired",
        ),
    ];
    for (why, base, lines, says) in refused {
        let got = metadata_through(&o(base), &lines).await;
        assert!(matches!(&got, Err(e) if e.contains("TLS") && e.contains(says)), "{why}: {got:?}");
    }
}

#[tokio::test]
async fn client_certificates_and_credentials_reach_the_upstream_and_client_tokens_never() {
    let ts = tenants(1);
    let (name, prefix) = (ts[0].name.clone(), ts[0].prefix.clone());
    let up = fake::start(move |_| Answer::Json(200, fake::stored("Patient", &prefix, &name, "p1"))).await;
    let ca = Ca::new();
    let front = pki::tls_front(backend(&up), &ca.issue(&["localhost"]), Some(&ca)).await;
    let client = ca.issue(&["spiffe://test/fhir-fence"]);
    let files = Volume::new();
    files.swap(&[
        ("ca.pem", &ca.pem()),
        ("client.crt", &client.pem),
        ("client.key", &client.key_pem),
        ("bearer", "upstream-secret-token\n"),
    ]);
    let base = format!("https://localhost:{}/fhir", front.rsplit(':').next().unwrap());
    let ca_file = format!("ca_file = {:?}", files.path("ca.pem"));
    let without = metadata_through(&Options::new(&base, &ts), &ca_file).await;
    assert!(without.is_err(), "an upstream asking for a client certificate served without one: {without:?}");

    let lines = format!(
        "{ca_file}\nclient_cert_file = {:?}\nclient_key_file = {:?}\nbearer_file = {:?}",
        files.path("client.crt"),
        files.path("client.key"),
        files.path("bearer")
    );
    let mut o = Options::new(&base, &ts);
    o.extra = String::new();
    let fence = support::start_with(o, |text| {
        support::write_config(&text.replace("[upstreams.main]\n", &format!("[upstreams.main]\n{lines}\n")))
    })
    .await;
    let token = fence.token(&ts[0].name);
    let r = get(&fence.url("Patient/p1")).bearer(&token).send().await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = up.seen();
    let read =
        seen.iter().rev().find(|s| s.path.ends_with(&format!("/Patient/{}-p1", ts[0].prefix))).expect("the read");
    assert_eq!(read.headers.get("authorization").unwrap(), "Bearer upstream-secret-token");
    assert!(seen.iter().all(|s| s.headers.get("authorization").is_none_or(|v| !v.to_str().unwrap().contains(&token))));
}

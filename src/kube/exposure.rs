//! What would leave the FHIR server reachable around fhir-fence, judged as Kubernetes and the
//! FHIR server will read the manifest: the server's listening address (Spring Boot's
//! `server.address`, which HAPI reads, however it is set), ports and probes that name its port
//! (by number or by name), and Services that target it. Anything these checks cannot read with
//! certainty (a float or `8_090` where Kubernetes reads a port number, an address from
//! `valueFrom`) is refused, never guessed. Used by `inject` for manifests and, through it, by
//! the admission webhook.
use serde_json::Value;

/// A container port as Kubernetes reads an `IntOrString` port field.
#[derive(Debug, Clone, PartialEq)]
pub enum PortRef {
    Number(u64),
    Name(String),
}

/// Reads a port field (`containerPort`, a probe's `port`, a Service's `targetPort`): a plain
/// integer, or a string that is a port number or an IANA service name. Anything else (a float,
/// `8_090`, `017632`) is read differently by YAML 1.1 and 1.2, or not at all: an `Err`.
pub fn port_ref(v: &Value) -> Result<PortRef, String> {
    match v {
        Value::Number(n) if n.is_u64() => Ok(PortRef::Number(n.as_u64().expect("u64"))),
        Value::String(s)
            if !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0') =>
        {
            Ok(PortRef::Number(s.parse().expect("digits")))
        }
        Value::String(s) if is_port_name(s) => Ok(PortRef::Name(s.clone())),
        other => Err(format!("{other} is neither a port number nor a port name as Kubernetes reads them")),
    }
}

/// An IANA service name as Kubernetes validates a port name: 1–15 of `[a-z0-9-]`, a letter
/// among them, no leading, trailing or doubled `-`.
fn is_port_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// Whether `port` names the FHIR server's port: its number, or a name it is declared under.
pub fn reaches(port: &PortRef, upstream: u64, names: &[String]) -> bool {
    match port {
        PortRef::Number(n) => *n == upstream,
        PortRef::Name(n) => names.contains(n),
    }
}

/// Every port a container's probes and lifecycle hooks call (`httpGet`, `tcpSocket`, `grpc`),
/// with where it is, for messages.
pub fn called_ports(container: &Value) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        for handler in ["httpGet", "tcpSocket", "grpc"] {
            if let Some(p) = container.pointer(&format!("/{probe}/{handler}/port")) {
                out.push((format!("{probe}.{handler}"), p));
            }
        }
    }
    for hook in ["postStart", "preStop"] {
        for handler in ["httpGet", "tcpSocket"] {
            if let Some(p) = container.pointer(&format!("/lifecycle/{hook}/{handler}/port")) {
                out.push((format!("lifecycle.{hook}.{handler}"), p));
            }
        }
    }
    out
}

const LOOPBACK: [&str; 3] = ["127.0.0.1", "localhost", "::1"];

/// The FHIR server container(s), or why they cannot be shown to listen on loopback only. The
/// FHIR server is the container `chosen` names (`fhir-fence.dev/upstream-container`), else the
/// one that declares `upstream`, else every container but fhir-fence. Spring Boot reads
/// `server.address` from the command line, `SPRING_APPLICATION_JSON`, Java system properties and
/// environment variables in any spelling of `SERVER_ADDRESS`: every one of these that is set
/// must be a literal loopback address, and at least one must be.
pub fn fhir_servers_on_loopback(
    containers: &[&Value],
    upstream: u64,
    chosen: Option<&str>,
) -> Result<Vec<String>, String> {
    let declares = |c: &&&Value| {
        let ports = c.get("ports").and_then(Value::as_array).into_iter().flatten();
        ports.filter_map(|p| p.get("containerPort")).any(|p| p.as_u64() == Some(upstream))
    };
    let servers: Vec<&Value> = match chosen {
        Some(name) => {
            let found: Vec<&Value> =
                containers.iter().filter(|c| c.get("name").and_then(Value::as_str) == Some(name)).copied().collect();
            if found.is_empty() {
                return Err(format!(
                    "fhir-fence.dev/upstream-container names {name:?}, which is no container of the pod"
                ));
            }
            found
        }
        None => {
            let owners: Vec<&Value> = containers.iter().filter(declares).copied().collect();
            if owners.is_empty() {
                containers.to_vec()
            } else {
                owners
            }
        }
    };
    if servers.is_empty() {
        return Err("no FHIR server container".into());
    }
    if let Some(why) = servers.iter().find_map(|c| container_problem(c)) {
        return Err(why);
    }
    Ok(servers.iter().filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_owned)).collect())
}

fn container_problem(c: &Value) -> Option<String> {
    let name = c.get("name").and_then(Value::as_str).unwrap_or("?");
    let mut shown = false;
    let args = ["command", "args"].into_iter().filter_map(|k| c.get(k).and_then(Value::as_array)).flatten();
    for arg in args {
        let arg = arg.as_str().unwrap_or_default();
        if arg.contains("spring.application.json") {
            return Some(format!(
                "container {name}: argument {arg:?} may set server.address; set it with SERVER_ADDRESS=127.0.0.1 only"
            ));
        }
        if !arg.contains("server.address") {
            continue;
        }
        match arg.split_once('=') {
            Some((key, value)) if key.trim_start_matches('-').ends_with("server.address") && LOOPBACK.contains(&value) => shown = true,
            _ => return Some(format!("container {name}: argument {arg:?} sets server.address to something other than 127.0.0.1 (or in a form fhir-fence cannot judge: write --server.address=127.0.0.1)")),
        }
    }
    for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
        let env_name = e.get("name").and_then(Value::as_str).unwrap_or_default();
        let value = e.get("value").and_then(Value::as_str);
        let relaxed = env_name.to_ascii_lowercase().replace(['.', '-'], "_");
        if relaxed == "server_address" {
            match value {
                Some(v) if LOOPBACK.contains(&v) && e.get("valueFrom").is_none() => shown = true,
                Some(v) => {
                    return Some(format!(
                        "container {name}: {env_name}={v}: the FHIR server must listen on 127.0.0.1 only"
                    ))
                }
                None => {
                    return Some(format!(
                        "container {name}: {env_name} comes from valueFrom, which fhir-fence cannot see"
                    ))
                }
            }
        } else if relaxed == "spring_application_json" {
            if e.get("valueFrom").is_some() || value.is_some_and(|v| v.contains("address")) {
                return Some(format!(
                    "container {name}: {env_name} may set server.address; set it with SERVER_ADDRESS=127.0.0.1 only"
                ));
            }
        } else if value.is_some_and(|v| v.contains("server.address") || v.contains("spring.application.json")) {
            return Some(format!(
                "container {name}: {env_name} may set server.address; set it with SERVER_ADDRESS=127.0.0.1 only"
            ));
        }
    }
    (!shown).then(|| {
        format!(
            "container {name}: the FHIR server must listen on 127.0.0.1 only (for HAPI: env SERVER_ADDRESS=127.0.0.1), \
             or say so with fhir-fence.dev/upstream-loopback: \"true\""
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ports_are_read_as_kubernetes_reads_them_or_refused() {
        assert_eq!(port_ref(&json!(8090)), Ok(PortRef::Number(8090)));
        assert_eq!(port_ref(&json!("8090")), Ok(PortRef::Number(8090)));
        assert_eq!(port_ref(&json!("http")), Ok(PortRef::Name("http".into())));
        for unclear in [
            json!(8090.0),
            json!("8_090"),
            json!("017632"),
            json!("8.09e+3"),
            json!("HTTP"),
            json!("a--b"),
            json!(-1),
            json!(null),
        ] {
            assert!(port_ref(&unclear).is_err(), "{unclear}");
        }
    }

    #[test]
    fn the_address_is_judged_however_spring_boot_would_read_it() {
        let hapi = |env: Value, args: Value| json!({"name": "hapi", "env": env, "args": args, "ports": [{"containerPort": 8090}]});
        let lo = json!([{"name": "SERVER_ADDRESS", "value": "127.0.0.1"}]);
        let ok = |c: &[&Value], chosen| fhir_servers_on_loopback(c, 8090, chosen).is_ok();
        assert!(ok(&[&hapi(lo.clone(), json!([]))], None));
        assert!(ok(&[&hapi(json!([]), json!(["--server.address=127.0.0.1"]))], None));
        let refused = [
            ("nothing set", hapi(json!([]), json!([]))),
            (
                "a second entry wins",
                hapi(
                    json!([{"name": "SERVER_ADDRESS", "value": "127.0.0.1"}, {"name": "SERVER_ADDRESS", "value": "0.0.0.0"}]),
                    json!([]),
                ),
            ),
            ("the command line wins", hapi(lo.clone(), json!(["--server.address=0.0.0.0"]))),
            ("two arguments", hapi(lo.clone(), json!(["--server.address", "127.0.0.1"]))),
            (
                "a system property",
                hapi(
                    json!([{"name": "SERVER_ADDRESS", "value": "127.0.0.1"}, {"name": "JAVA_TOOL_OPTIONS", "value": "-Dserver.address=0.0.0.0"}]),
                    json!([]),
                ),
            ),
            (
                "Spring's JSON",
                hapi(
                    json!([{"name": "SERVER_ADDRESS", "value": "127.0.0.1"}, {"name": "SPRING_APPLICATION_JSON", "value": "{\"server\":{\"address\":\"0.0.0.0\"}}"}]),
                    json!([]),
                ),
            ),
            (
                "a relaxed name",
                hapi(
                    json!([{"name": "SERVER_ADDRESS", "value": "127.0.0.1"}, {"name": "server.address", "value": "0.0.0.0"}]),
                    json!([]),
                ),
            ),
            (
                "valueFrom",
                hapi(
                    json!([{"name": "SERVER_ADDRESS", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]),
                    json!([]),
                ),
            ),
        ];
        for (why, c) in refused {
            assert!(!ok(&[&c], None), "{why}");
        }
        // The FHIR server is the container declaring the port, not one beside it.
        let logger = json!({"name": "logger", "env": lo});
        let open = hapi(json!([]), json!([]));
        assert!(!ok(&[&logger, &open], None));
        // With no declared port, every container must show it, or the annotation names one.
        let undeclared = json!({"name": "hapi", "env": lo});
        let quiet = json!({"name": "logger"});
        assert!(!ok(&[&quiet, &undeclared], None));
        assert!(ok(&[&quiet, &undeclared], Some("hapi")));
        assert!(!ok(&[&quiet, &undeclared], Some("logger")));
        assert!(!ok(&[&quiet, &undeclared], Some("nobody")));
    }
}

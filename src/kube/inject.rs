//! `fhir-fence inject`: adds the fhir-fence sidecar to the Kubernetes workloads of a manifest
//! stream (like `linkerd inject`), so teams need not hand-write the part where isolation gets
//! lost. Every Deployment, StatefulSet, DaemonSet and Pod annotated
//! `fhir-fence.dev/inject: enabled` (on the object or its pod template) gets the sidecar of
//! `deploy/base` as a native sidecar, its config and key volumes, and loses the FHIR server
//! port it declared (nothing outside the pod may reach the FHIR server). Every other document
//! is written back byte for byte, and injecting twice changes nothing the second time.
//!
//! Annotations (all optional): `fhir-fence.dev/config` (the policy ConfigMap,
//! `fhir-fence-config`), `fhir-fence.dev/keys` (the key Secret, `fhir-fence-keys`),
//! `fhir-fence.dev/image`, `fhir-fence.dev/upstream-port` (the FHIR server's port: removed from
//! the FHIR server's declared ports; it must differ from fhir-fence's own 8080 and 9090).
use super::sidecar::{self, Sidecar};
use serde_json::{Map, Value};

pub const ANNOTATION: &str = "fhir-fence.dev/inject";
const WORKLOADS: &[&str] = &["Deployment", "StatefulSet", "DaemonSet"];

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("document {0}: not YAML: {1}")]
    Yaml(usize, String),
    #[error("document {0} ({1}): {2}")]
    Invalid(usize, String, String),
}

/// The manifests with the sidecar injected where asked; untouched documents are unchanged.
pub fn inject(manifests: &str, default_image: &str) -> Result<String, InjectError> {
    let docs = documents(manifests);
    let mut planned = Vec::with_capacity(docs.len());
    for (i, doc) in docs.iter().enumerate() {
        let rest = doc.separator.trim_end().trim_start_matches("---").trim();
        if !rest.is_empty() && !rest.starts_with('#') {
            return Err(InjectError::Yaml(i, "content on the --- line: put the document on the next line".into()));
        }
        planned.push(plan(i, doc.body, default_image)?);
    }
    // No Service of the same stream may still reach the FHIR server's port.
    let closed: Vec<(u16, Vec<String>)> = planned.iter().flatten().map(|p| (p.port, p.port_names.clone())).collect();
    for (i, doc) in docs.iter().enumerate() {
        if let Some(service) = reaching_service(doc.body, &closed) {
            return Err(InjectError::Invalid(i, format!("Service/{service}"), "it targets the FHIR server's port, which only fhir-fence may reach: target fhir-fence's port 8080 (named fhir)".into()));
        }
    }
    let mut out = String::with_capacity(manifests.len() + 4096);
    for (doc, plan) in docs.iter().zip(planned) {
        match plan {
            None => out.push_str(doc.raw),
            Some(p) => {
                out.push_str(if doc.separator.is_empty() { "" } else { "---\n" });
                // JSON is YAML too, and reads the same under YAML 1.1 (Kubernetes) and 1.2.
                out.push_str(&serde_json::to_string_pretty(&p.doc).expect("serialisable"));
                out.push('\n');
            }
        }
    }
    Ok(out)
}

/// One document of a stream: its raw text (separator line included), and the text after it.
struct Document<'a> {
    raw: &'a str,
    separator: &'a str,
    body: &'a str,
}

/// Splits a YAML stream at its `---` lines, keeping every byte.
fn documents(text: &str) -> Vec<Document<'_>> {
    let mut starts = vec![0];
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if at > 0 && (bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t")) {
            starts.push(at);
        }
        at += line.len();
    }
    starts.push(text.len());
    starts
        .windows(2)
        .map(|w| {
            let raw = &text[w[0]..w[1]];
            let first = raw.split_inclusive('\n').next().unwrap_or("");
            let bare = first.trim_end_matches(['\n', '\r']);
            let is_separator = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t");
            let cut = if is_separator { first.len() } else { 0 };
            Document { raw, separator: &raw[..cut], body: &raw[cut..] }
        })
        .collect()
}

/// An injected document, and the FHIR server port it closed (with the names it had).
struct Planned {
    doc: Value,
    port: u16,
    port_names: Vec<String>,
}

/// The injected document, or `None` when it is left alone.
fn plan(index: usize, body: &str, default_image: &str) -> Result<Option<Planned>, InjectError> {
    if body.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
        return Ok(None);
    }
    let mut doc: Value = yaml_serde::from_str(body).map_err(|e| InjectError::Yaml(index, e.to_string()))?;
    let what = describe(&doc);
    let invalid = |why: String| InjectError::Invalid(index, what.clone(), why);
    let Some(closed) = inject_object(&mut doc, default_image).map_err(invalid)? else { return Ok(None) };
    // What a YAML 1.2 reader and Kubernetes' YAML 1.1 reader read differently is refused
    // rather than rewritten with another meaning (the sidecar itself holds no such value).
    if let Some(why) = ambiguous(&doc) {
        return Err(invalid(why));
    }
    Ok(Some(Planned { doc, port: closed.port, port_names: closed.port_names }))
}

/// `Kind/name` of an object, for messages.
pub fn describe(doc: &Value) -> String {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    let name = doc.pointer("/metadata/name").and_then(Value::as_str);
    let name = name.or_else(|| doc.pointer("/metadata/generateName").and_then(Value::as_str)).unwrap_or("?");
    format!("{kind}/{name}")
}

/// The FHIR server port an injection closed, with the names it had.
pub struct Closed {
    pub port: u16,
    pub port_names: Vec<String>,
}

/// Adds the sidecar to one Kubernetes object (a Pod or a workload's pod template) when its
/// annotations ask for it: `Ok(None)` when they do not, or when it is there already (so
/// injecting twice is injecting once). The one place the annotations are read, for `inject`
/// and the admission webhook alike; an `Err` says why the object cannot be injected safely.
pub fn inject_object(doc: &mut Value, default_image: &str) -> Result<Option<Closed>, String> {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
    if kind.ends_with("List") && doc.get("items").and_then(Value::as_array).is_some_and(|items| items.iter().any(asks))
    {
        return Err("inject the items of a List one by one (as separate documents)".into());
    }
    let (meta_path, spec_path) = match kind.as_str() {
        "Pod" => ("/metadata", "/spec"),
        k if WORKLOADS.contains(&k) => ("/spec/template/metadata", "/spec/template/spec"),
        _ if asks(doc) => return Err("only Deployments, StatefulSets, DaemonSets and Pods are injected".into()),
        _ => return Ok(None),
    };
    let annotations = |path: &str| doc.pointer(&format!("{path}/annotations")).and_then(Value::as_object).cloned();
    let mut found = annotations("/metadata").unwrap_or_default();
    found.extend(annotations(meta_path).unwrap_or_default());
    if found.get(ANNOTATION).and_then(Value::as_str) != Some("enabled") {
        return Ok(None);
    }
    if let Some((k, _)) = found.iter().find(|(k, v)| k.starts_with("fhir-fence.dev/") && !v.is_string()) {
        return Err(format!("annotation {k} must be a string (quote it)"));
    }
    let text = |k: &str| found.get(&format!("fhir-fence.dev/{k}")).and_then(Value::as_str).map(str::to_owned);
    let port = text("upstream-port")
        .ok_or("name the FHIR server's port: fhir-fence.dev/upstream-port")?
        .parse::<u16>()
        .map_err(|_| "fhir-fence.dev/upstream-port is not a port")?;
    if port == sidecar::FHIR_PORT || port == sidecar::ADMIN_PORT {
        return Err("the FHIR server's port is one fhir-fence listens on (8080, 9090)".into());
    }
    let sidecar = Sidecar {
        image: text("image").unwrap_or_else(|| default_image.to_owned()),
        config_map: text("config").unwrap_or_else(|| sidecar::CONFIG_MAP.to_owned()),
        keys_secret: text("keys").unwrap_or_else(|| sidecar::KEYS_SECRET.to_owned()),
    };
    let asserted_loopback = text("upstream-loopback").as_deref() == Some("true");
    let spec = doc.pointer_mut(spec_path).and_then(Value::as_object_mut).ok_or("no pod spec")?;
    Ok(add_sidecar(spec, &sidecar, port, asserted_loopback)?.map(|port_names| Closed { port, port_names }))
}

/// Whether an object asks for injection (on itself or its pod template).
fn asks(doc: &Value) -> bool {
    [
        "/metadata/annotations",
        "/spec/template/metadata/annotations",
        "/spec/jobTemplate/spec/template/metadata/annotations",
    ]
    .iter()
    .any(|p| doc.pointer(p).and_then(|a| a.get(ANNOTATION)).is_some())
}

/// Why a document reads differently under YAML 1.1 than as `yaml_serde` (1.2) read it: merge
/// keys (`<<`, which 1.2 keeps as a plain key) and strings that 1.1 reads as octal numbers.
fn ambiguous(v: &Value) -> Option<String> {
    match v {
        Value::Object(o) => {
            if o.contains_key("<<") {
                return Some("merge keys (<<) are not supported: write the merged mapping out".into());
            }
            o.values().find_map(ambiguous)
        }
        Value::Array(items) => items.iter().find_map(ambiguous),
        Value::String(s) if s.len() > 1 && s.starts_with('0') && s.bytes().all(|b| matches!(b, b'0'..=b'7')) => {
            Some(format!(
                "{s} is an octal number to Kubernetes and a string here: write it in decimal or quote it differently"
            ))
        }
        _ => None,
    }
}

/// Whether a container shows the FHIR server bound to loopback (Spring Boot's
/// `SERVER_ADDRESS`, which HAPI reads).
fn binds_loopback(container: &Value) -> bool {
    let env = container.get("env").and_then(Value::as_array).into_iter().flatten();
    env.filter(|e| e.get("name").and_then(Value::as_str) == Some("SERVER_ADDRESS"))
        .any(|e| matches!(e.get("value").and_then(Value::as_str), Some("127.0.0.1" | "localhost" | "::1")))
}

/// Adds the sidecar and its volumes, and takes the FHIR server's port out of the containers'
/// declared ports; answers the names that port had (`None`: injected before). Refuses what
/// would leave the FHIR server reachable around fhir-fence.
fn add_sidecar(
    spec: &mut Map<String, Value>,
    sidecar: &Sidecar,
    upstream: u16,
    asserted_loopback: bool,
) -> Result<Option<Vec<String>>, String> {
    if spec.get("hostNetwork").is_some_and(|v| *v != Value::Bool(false)) {
        return Err("hostNetwork would expose the FHIR server beside fhir-fence".into());
    }
    let named = |v: &Value, n: &str| v.get("name").and_then(Value::as_str) == Some(n);
    for list in ["initContainers", "containers"] {
        if spec.get(list).and_then(Value::as_array).is_some_and(|l| l.iter().any(|c| named(c, sidecar::NAME))) {
            return Ok(None);
        }
    }
    let containers = spec.get("containers").and_then(Value::as_array).ok_or("no containers")?;
    if !asserted_loopback && !containers.iter().any(binds_loopback) {
        return Err("the FHIR server must listen on 127.0.0.1 only (for HAPI: env SERVER_ADDRESS=127.0.0.1), \
                    or say so with fhir-fence.dev/upstream-loopback: \"true\""
            .into());
    }
    let mut names = Vec::new();
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else { continue };
        for c in containers.iter_mut() {
            for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
                let port = c
                    .pointer(&format!("/{probe}/httpGet/port"))
                    .or_else(|| c.pointer(&format!("/{probe}/tcpSocket/port")));
                if port.is_some_and(|p| p.as_u64() == Some(u64::from(upstream))) {
                    return Err(format!(
                        "{probe} on the FHIR server's port: the kubelet reaches it only if it is not on loopback"
                    ));
                }
            }
            let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) else { continue };
            if ports.iter().any(|p| p.get("hostPort").is_some()) {
                return Err("hostPort would expose a container on the node".into());
            }
            let number = |p: &Value| p.get("containerPort").and_then(Value::as_u64);
            if ports.iter().any(|p| {
                number(p) == Some(u64::from(sidecar::FHIR_PORT)) || number(p) == Some(u64::from(sidecar::ADMIN_PORT))
            }) {
                return Err("a container declares port 8080 or 9090, which fhir-fence listens on".into());
            }
            for p in ports.iter().filter(|p| number(p) == Some(u64::from(upstream))) {
                names.extend(p.get("name").and_then(Value::as_str).map(str::to_owned));
            }
            ports.retain(|p| number(p) != Some(u64::from(upstream)));
            if ports.is_empty() {
                c.as_object_mut().expect("a container").remove("ports");
            }
        }
    }
    let init = spec.entry("initContainers").or_insert_with(|| Value::Array(vec![]));
    let init = init.as_array_mut().ok_or("initContainers is not a list")?;
    init.insert(0, sidecar.container());
    let volumes = spec.entry("volumes").or_insert_with(|| Value::Array(vec![]));
    let volumes = volumes.as_array_mut().ok_or("volumes is not a list")?;
    for volume in sidecar.volumes() {
        let name = volume["name"].as_str().unwrap_or_default().to_owned();
        if volumes.iter().any(|v| named(v, &name)) {
            return Err(format!("a volume named {name} exists already"));
        }
        volumes.push(volume);
    }
    Ok(Some(names))
}

/// The name of a Service in `body` whose target is a FHIR server port that was closed (by
/// number, or by a name that port had).
fn reaching_service(body: &str, closed: &[(u16, Vec<String>)]) -> Option<String> {
    let doc: Value = yaml_serde::from_str(body).ok()?;
    if doc.get("kind").and_then(Value::as_str) != Some("Service") {
        return None;
    }
    let ports = doc.pointer("/spec/ports").and_then(Value::as_array)?;
    let reaches = |p: &Value| {
        let target = p.get("targetPort").or_else(|| p.get("port"));
        closed.iter().any(|(port, names)| match target {
            Some(Value::Number(n)) => n.as_u64() == Some(u64::from(*port)),
            Some(Value::String(s)) => names.contains(s) || s.parse::<u16>().ok() == Some(*port),
            _ => false,
        })
    };
    ports.iter().any(reaches).then(|| doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("?").to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE: &str = "ghcr.io/fhir-fence/fhir-fence:test";

    const MANIFESTS: &str = "# my app\napiVersion: v1\nkind: Service\nmetadata:\n  name: hapi   # a comment kept\nspec:\n  ports: [{port: 80}]\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: hapi\nspec:\n  selector: {matchLabels: {app: hapi}}\n  template:\n    metadata:\n      labels: {app: hapi}\n      annotations:\n        fhir-fence.dev/inject: enabled\n        fhir-fence.dev/upstream-port: \"8090\"\n    spec:\n      containers:\n        - name: hapi\n          image: hapiproject/hapi\n          env: [{name: SERVER_ADDRESS, value: 127.0.0.1}]\n          ports: [{containerPort: 8090, name: http}]\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: other\nspec:\n  template:\n    spec:\n      containers: [{name: x, image: y}]\n";

    fn docs(text: &str) -> Vec<Value> {
        documents(text).iter().map(|d| yaml_serde::from_str(d.body).unwrap()).collect()
    }

    #[test]
    fn only_annotated_workloads_change_and_the_rest_stays_byte_for_byte() {
        let out = inject(MANIFESTS, IMAGE).unwrap();
        let (before, after) = (documents(MANIFESTS), documents(&out));
        assert_eq!(after.len(), 3);
        assert_eq!(after[0].raw, before[0].raw, "the Service, comments and all");
        assert_eq!(after[2].raw, before[2].raw, "the unannotated Deployment");
        let hapi = &docs(&out)[1];
        let spec = &hapi["spec"]["template"]["spec"];
        assert_eq!(spec["initContainers"][0]["name"], "fhir-fence");
        assert_eq!(spec["initContainers"][0]["restartPolicy"], "Always");
        assert_eq!(spec["initContainers"][0]["image"], IMAGE);
        assert_eq!(spec["initContainers"][0]["startupProbe"]["httpGet"]["path"], "/healthz");
        assert!(spec["containers"][0].get("ports").is_none(), "the FHIR server's port is no longer declared");
        let volumes: Vec<&str> =
            spec["volumes"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
        assert_eq!(volumes, ["fhir-fence-config", "fhir-fence-keys"]);
    }

    /// Found in review: what would leave the FHIR server reachable, or be read differently by
    /// Kubernetes, is refused, naming the document.
    #[test]
    fn what_would_leave_the_fhir_server_reachable_is_refused() {
        let refused = [
            ("no port named", MANIFESTS.replace("        fhir-fence.dev/upstream-port: \"8090\"\n", "")),
            ("not on loopback", MANIFESTS.replace("          env: [{name: SERVER_ADDRESS, value: 127.0.0.1}]\n", "")),
            ("a Service by number", MANIFESTS.replace("ports: [{port: 80}]", "ports: [{port: 80, targetPort: 8090}]")),
            ("a Service by name", MANIFESTS.replace("ports: [{port: 80}]", "ports: [{port: 80, targetPort: http}]")),
            ("a hostPort", MANIFESTS.replace("containerPort: 8090, name: http", "containerPort: 8090, hostPort: 8090")),
            ("a probe", MANIFESTS.replace("          ports: [{containerPort: 8090, name: http}]", "          readinessProbe: {httpGet: {path: /, port: 8090}}")),
            ("hostNetwork: yes", MANIFESTS.replace("    spec:\n      containers:", "    spec:\n      hostNetwork: yes\n      containers:")),
            ("a merge key", MANIFESTS.replace("      labels: {app: hapi}\n      annotations:", "      labels: {<<: {app: hapi}}\n      annotations:")),
            ("an octal mode", MANIFESTS.replace("          env:", "          volumeMounts: [{name: v, mountPath: /v, defaultMode: 0644}]\n          env:")),
            ("a Job", MANIFESTS.replace("kind: Deployment\nmetadata:\n  name: hapi", "kind: Job\nmetadata:\n  name: hapi")),
            ("an unquoted port", MANIFESTS.replace("upstream-port: \"8090\"", "upstream-port: 8090")),
            ("a document on the --- line", MANIFESTS.replace("---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: other", "--- {apiVersion: v1, kind: ConfigMap, metadata: {name: c}}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: other")),
        ];
        for (why, text) in refused {
            assert!(inject(&text, IMAGE).is_err(), "{why}");
        }
        let list = "apiVersion: v1\nkind: List\nitems:\n- kind: Pod\n  metadata: {name: p, annotations: {fhir-fence.dev/inject: enabled}}\n";
        assert!(inject(list, IMAGE).is_err(), "a List's items");
    }

    #[test]
    fn twice_is_once() {
        let once = inject(MANIFESTS, IMAGE).unwrap();
        assert_eq!(inject(&once, IMAGE).unwrap(), once);
    }

    #[test]
    fn refusals_name_the_document() {
        let clash = MANIFESTS.replace("containerPort: 8090", "containerPort: 8080");
        assert!(matches!(inject(&clash, IMAGE), Err(InjectError::Invalid(1, _, _))));
        let host = MANIFESTS.replace(
            "    spec:\n      containers:\n        - name: hapi",
            "    spec:\n      hostNetwork: true\n      containers:\n        - name: hapi",
        );
        assert!(matches!(inject(&host, IMAGE), Err(InjectError::Invalid(1, _, _))));
        assert!(matches!(inject("kind: [", IMAGE), Err(InjectError::Yaml(0, _))));
        let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {fhir-fence.dev/inject: enabled, fhir-fence.dev/config: mine, fhir-fence.dev/upstream-port: '8090', fhir-fence.dev/upstream-loopback: 'true'}\nspec:\n  containers: [{name: a, image: b}]\n";
        let out = docs(&inject(pod, IMAGE).unwrap()).remove(0);
        assert_eq!(out["spec"]["volumes"][0]["configMap"]["name"], "mine");
    }
}

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
use super::exposure;
use super::sidecar::{self, Sidecar};
use serde_json::{Map, Value};

pub const ANNOTATION: &str = "fhir-fence.dev/inject";
/// The FHIR server's container, as the user names it or as `inject` judged it.
const UPSTREAM_CONTAINER: &str = "fhir-fence.dev/upstream-container";
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
    // A byte-order mark is no part of the first document (Kubernetes skips it too).
    let (bom, text) = match manifests.strip_prefix('\u{feff}') {
        Some(rest) => ("\u{feff}", rest),
        None => ("", manifests),
    };
    let docs = documents(text);
    let mut planned = Vec::with_capacity(docs.len());
    for (i, doc) in docs.iter().enumerate() {
        let rest = doc.separator.trim_end().trim_start_matches("---").trim();
        if !rest.is_empty() && !rest.starts_with('#') {
            return Err(InjectError::Yaml(i, "content on the --- line: put the document on the next line".into()));
        }
        planned.push(plan(i, doc.body, default_image)?);
    }
    // No Service of the same stream may still reach the FHIR server's port (of a workload
    // injected now or before).
    let closed: Vec<&Closed> = planned.iter().flatten().map(|p| &p.closed).collect();
    if !closed.is_empty() {
        for (i, doc) in docs.iter().enumerate() {
            reaching_service(doc.body, &closed).map_err(|(what, why)| InjectError::Invalid(i, what, why))?;
        }
    }
    let mut out = String::with_capacity(manifests.len() + 4096);
    out.push_str(bom);
    for (doc, plan) in docs.iter().zip(planned) {
        match plan {
            Some(p) if p.changed => {
                out.push_str(if doc.separator.is_empty() { "" } else { "---\n" });
                // JSON is YAML too, and reads the same under YAML 1.1 (Kubernetes) and 1.2.
                out.push_str(&serde_json::to_string_pretty(&p.doc).expect("serialisable"));
                out.push('\n');
            }
            _ => out.push_str(doc.raw),
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

/// An annotated document: as injected (or as it was, when it carried the sidecar already), and
/// the FHIR server port it closes.
struct Planned {
    doc: Value,
    closed: Closed,
    changed: bool,
}

/// Kinds whose documents are read for the annotation or for ports (and so must read the same
/// to fhir-fence as to Kubernetes).
const READ_KINDS: &[&str] =
    &["Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Service"];

/// The annotated document, or `None` when it is left alone.
fn plan(index: usize, body: &str, default_image: &str) -> Result<Option<Planned>, InjectError> {
    // Blank lines, comments and directives (`%YAML 1.1` before the first `---`) are no object.
    if body.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.starts_with('%')) {
        return Ok(None);
    }
    let mut doc: Value = yaml_serde::from_str(body).map_err(|e| InjectError::Yaml(index, e.to_string()))?;
    let what = describe(&doc);
    let invalid = |why: String| InjectError::Invalid(index, what.clone(), why);
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    if READ_KINDS.contains(&kind) || kind.ends_with("List") {
        // Kubernetes (YAML 1.1) applies merge keys and decodes !!binary; yaml_serde (1.2)
        // keeps `<<` as a key and binary as its base64 text, so an annotation or a port could
        // read differently. Refused, not guessed.
        if let Some(why) = merge_keys(&doc) {
            return Err(invalid(why));
        }
        if body.contains("!!binary") || body.contains("tag:yaml.org,2002:binary") {
            return Err(invalid("a !!binary value reads differently to Kubernetes: write it as text".into()));
        }
    }
    let Some(injection) = inject_object(&mut doc, default_image).map_err(invalid)? else { return Ok(None) };
    // What a YAML 1.2 reader and Kubernetes' YAML 1.1 reader read differently is refused
    // rather than rewritten with another meaning (the sidecar itself holds no such value).
    if let Some(why) = ambiguous(&doc) {
        return Err(invalid(why));
    }
    Ok(Some(Planned { doc, closed: injection.closed, changed: injection.changed }))
}

/// `Kind/name` of an object, for messages.
pub fn describe(doc: &Value) -> String {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    let name = doc.pointer("/metadata/name").and_then(Value::as_str);
    let name = name.or_else(|| doc.pointer("/metadata/generateName").and_then(Value::as_str)).unwrap_or("?");
    format!("{kind}/{name}")
}

/// The FHIR server port an injection closes, with the names it had.
pub struct Closed {
    pub port: u16,
    pub port_names: Vec<String>,
}

/// An annotated object: the port it closes, and whether the sidecar was added now (`false`:
/// it was there already, exactly as `inject` adds it, and every check still passed).
pub struct Injection {
    pub closed: Closed,
    pub changed: bool,
}

/// Adds the sidecar to one Kubernetes object (a Pod or a workload's pod template) when its
/// annotations ask for it: `Ok(None)` when they do not; `changed: false` when it is there
/// already (so injecting twice is injecting once; the checks run again all the same). The one
/// place the annotations are read, for `inject` and the admission webhook alike; an `Err` says
/// why the object cannot be injected safely.
pub fn inject_object(doc: &mut Value, default_image: &str) -> Result<Option<Injection>, String> {
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
    let chosen = text("upstream-container");
    let spec = doc.pointer_mut(spec_path).and_then(Value::as_object_mut).ok_or("no pod spec")?;
    let (port_names, servers, changed) = add_sidecar(spec, &sidecar, port, asserted_loopback, chosen.as_deref())?;
    // The container judged to be the FHIR server is written down, so that a second run (which
    // no longer sees the port it declared) judges the same one.
    if let (true, None, [server]) = (changed, &chosen, servers.as_slice()) {
        let mut at: &mut Value = doc;
        for key in meta_path.trim_start_matches('/').split('/').chain(["annotations"]) {
            let map = at.as_object_mut().ok_or("the pod's metadata is not a mapping")?;
            at = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
        }
        let annotations = at.as_object_mut().ok_or("the annotations are not a mapping")?;
        annotations.insert(UPSTREAM_CONTAINER.into(), Value::String(server.clone()));
    }
    Ok(Some(Injection { closed: Closed { port, port_names }, changed }))
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

/// Merge keys (`<<`, which YAML 1.1 merges and 1.2 keeps as a plain key) anywhere in a document.
fn merge_keys(v: &Value) -> Option<String> {
    match v {
        Value::Object(o) if o.contains_key("<<") => {
            Some("merge keys (<<) are not supported: write the merged mapping out".into())
        }
        Value::Object(o) => o.values().find_map(merge_keys),
        Value::Array(items) => items.iter().find_map(merge_keys),
        _ => None,
    }
}

/// Why a document reads differently under YAML 1.1 than as `yaml_serde` (1.2) read it: merge
/// keys and strings that 1.1 reads as octal numbers.
fn ambiguous(v: &Value) -> Option<String> {
    if let Some(why) = merge_keys(v) {
        return Some(why);
    }
    match v {
        Value::Object(o) => o.values().find_map(ambiguous),
        Value::Array(items) => items.iter().find_map(ambiguous),
        Value::String(s) if s.len() > 1 && s.starts_with('0') && s.bytes().all(|b| matches!(b, b'0'..=b'7')) => {
            Some(format!(
                "{s} is an octal number to Kubernetes and a string here: write it in decimal or quote it differently"
            ))
        }
        _ => None,
    }
}

/// Adds the sidecar and its volumes, and takes the FHIR server's port out of the containers'
/// declared ports; answers the names that port had, and whether anything changed (`false`: the
/// sidecar was there already). Refuses what would leave the FHIR server reachable around
/// fhir-fence (`exposure`), also when the sidecar is there already: a container merely named
/// fhir-fence proves nothing.
fn add_sidecar(
    spec: &mut Map<String, Value>,
    sidecar: &Sidecar,
    upstream: u16,
    asserted_loopback: bool,
    chosen: Option<&str>,
) -> Result<(Vec<String>, Vec<String>, bool), String> {
    if spec.get("hostNetwork").is_some_and(|v| *v != Value::Bool(false)) {
        return Err("hostNetwork would expose the FHIR server beside fhir-fence".into());
    }
    let named = |v: &Value, n: &str| v.get("name").and_then(Value::as_str) == Some(n);
    let present = present_sidecar(spec, sidecar)?;
    let list = |k: &str| spec.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
    let (inits, mains) = (list("initContainers"), list("containers"));
    if mains.is_empty() {
        return Err("no containers".into());
    }
    let others: Vec<&Value> = mains.iter().filter(|c| !named(c, sidecar::NAME)).collect();
    let servers = match exposure::fhir_servers_on_loopback(&others, u64::from(upstream), chosen) {
        Ok(servers) => servers,
        Err(_) if asserted_loopback => vec![],
        Err(why) => return Err(why),
    };
    // The names the FHIR server's port is declared under (a probe or Service may use them).
    let mut names = Vec::new();
    for c in inits.iter().chain(&mains).filter(|c| !(present && named(c, sidecar::NAME))) {
        for p in c.get("ports").and_then(Value::as_array).into_iter().flatten() {
            if p.get("hostPort").is_some() {
                return Err("hostPort would expose a container on the node".into());
            }
            let number = exposure::port_ref(p.get("containerPort").unwrap_or(&Value::Null))
                .map_err(|e| format!("container {}: containerPort {e}", c["name"]))?;
            let exposure::PortRef::Number(number) = number else {
                return Err(format!("container {}: containerPort must be a number", c["name"]));
            };
            if number == u64::from(sidecar::FHIR_PORT) || number == u64::from(sidecar::ADMIN_PORT) {
                return Err("a container declares port 8080 or 9090, which fhir-fence listens on".into());
            }
            if number == u64::from(upstream) {
                names.extend(p.get("name").and_then(Value::as_str).map(str::to_owned));
            }
        }
    }
    for c in inits.iter().chain(&mains).filter(|c| !(present && named(c, sidecar::NAME))) {
        for (what, port) in exposure::called_ports(c) {
            let port = exposure::port_ref(port).map_err(|e| format!("container {}: {what}: {e}", c["name"]))?;
            if exposure::reaches(&port, u64::from(upstream), &names) {
                return Err(format!(
                    "container {}: {what} on the FHIR server's port: the kubelet reaches it only if it is not on loopback",
                    c["name"]
                ));
            }
        }
    }
    if present {
        return Ok((names, servers, false));
    }
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else { continue };
        for c in containers.iter_mut() {
            let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) else { continue };
            ports.retain(|p| p.get("containerPort").and_then(Value::as_u64) != Some(u64::from(upstream)));
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
    Ok((names, servers, true))
}

/// Whether the pod carries the sidecar already, exactly as `inject` adds it (the first init
/// container, its volumes beside it; the image may differ: a registry or kustomize sets it). A
/// container of that name that is anything else is refused.
fn present_sidecar(spec: &Map<String, Value>, sidecar: &Sidecar) -> Result<bool, String> {
    let named = |v: &Value| v.get("name").and_then(Value::as_str) == Some(sidecar::NAME);
    let count = |k: &str| spec.get(k).and_then(Value::as_array).map_or(0, |l| l.iter().filter(|c| named(c)).count());
    match (count("initContainers"), count("containers")) {
        (0, 0) => return Ok(false),
        (1, 0) => {}
        _ => return Err(format!("a container named {} that is not the sidecar inject adds", sidecar::NAME)),
    }
    let first = spec.get("initContainers").and_then(Value::as_array).and_then(|l| l.first());
    let without_image = |c: &Value| {
        let mut c = c.clone();
        c.as_object_mut().map(|o| o.remove("image"));
        c
    };
    let volumes = spec.get("volumes").and_then(Value::as_array).cloned().unwrap_or_default();
    let same = first.is_some_and(|c| named(c) && without_image(c) == without_image(&sidecar.container()))
        && sidecar.volumes().iter().all(|v| volumes.contains(v));
    if same {
        Ok(true)
    } else {
        Err(format!(
            "a container named {} that is not the sidecar inject adds (its first init container, with its volumes; \
             remove it to inject again)",
            sidecar::NAME
        ))
    }
}

/// Refuses a Service in `body` whose target is a FHIR server port that is closed (by number,
/// or by a name that port had), or whose ports cannot be read as Kubernetes reads them.
fn reaching_service(body: &str, closed: &[&Closed]) -> Result<(), (String, String)> {
    let Ok(doc) = yaml_serde::from_str::<Value>(body) else { return Ok(()) };
    if doc.get("kind").and_then(Value::as_str) != Some("Service") {
        return Ok(());
    }
    let what = describe(&doc);
    let refuse = |why: String| Err((what.clone(), why));
    for p in doc.pointer("/spec/ports").and_then(Value::as_array).into_iter().flatten() {
        let Some(target) = p.get("targetPort").or_else(|| p.get("port")) else { continue };
        let target = match exposure::port_ref(target) {
            Ok(t) => t,
            Err(e) => return refuse(format!("targetPort {e}")),
        };
        if closed.iter().any(|c| exposure::reaches(&target, u64::from(c.port), &c.port_names)) {
            return refuse(
                "it targets the FHIR server's port, which only fhir-fence may reach: target fhir-fence's port 8080 (named fhir)"
                    .into(),
            );
        }
    }
    Ok(())
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

    /// Found by an attacker: what only looked injected, or hid the annotation or the port
    /// from fhir-fence but not from Kubernetes.
    #[test]
    fn what_only_looks_safe_is_refused() {
        let pod = |extra: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: hapi\n  annotations: {{fhir-fence.dev/inject: enabled, fhir-fence.dev/upstream-port: '8090'}}\nspec:\n  containers:\n  - name: hapi\n    image: hapiproject/hapi\n    env: [{{name: SERVER_ADDRESS, value: 127.0.0.1}}]\n    ports: [{{containerPort: 8090, name: http}}]\n{extra}"
            )
        };
        let refused = [
            ("a stand-in named fhir-fence", pod("  - {name: fhir-fence, image: busybox}\n")),
            (
                "a second entry of the address",
                pod("").replace("value: 127.0.0.1}]", "value: 127.0.0.1}, {name: SERVER_ADDRESS, value: 0.0.0.0}]"),
            ),
            (
                "the address on another container",
                pod("  - {name: logger, image: x, env: [{name: SERVER_ADDRESS, value: 127.0.0.1}]}\n")
                    .replace("env: [{name: SERVER_ADDRESS, value: 127.0.0.1}]\n    ports", "ports"),
            ),
            ("a grpc probe", pod("").replace("    ports:", "    startupProbe: {grpc: {port: 8090}}\n    ports:")),
            (
                "a probe by the port's name",
                pod("").replace("    ports:", "    readinessProbe: {httpGet: {port: http}}\n    ports:"),
            ),
            (
                "a lifecycle hook",
                pod("").replace("    ports:", "    lifecycle: {postStart: {tcpSocket: {port: 8090}}}\n    ports:"),
            ),
            ("a float port", pod("").replace("containerPort: 8090,", "containerPort: 8090.0,")),
            (
                "the annotation under a merge key",
                pod("")
                    .replace("annotations: {fhir-fence.dev/inject", "annotations: {<<: {fhir-fence.dev/inject")
                    .replace("'8090'}", "'8090'}}"),
            ),
            ("the annotation as !!binary", pod("").replace("inject: enabled", "inject: !!binary ZW5hYmxlZA==")),
        ];
        for (why, text) in refused {
            assert!(inject(&text, IMAGE).is_err(), "{why}");
        }
        for target in ["8_090", "8090.0", "017632", "8.09e+3"] {
            let text = format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\nspec:\n  ports: [{{port: 80, targetPort: {target}}}]\n---\n{}", pod(""));
            assert!(inject(&text, IMAGE).is_err(), "a Service's targetPort {target}");
        }
        // Injected before, then opened up again: every check runs again.
        let once = inject(&pod(""), IMAGE).unwrap();
        assert!(inject(&once.replace("\"127.0.0.1\"", "\"0.0.0.0\""), IMAGE).is_err(), "re-exposed after injection");
        let service =
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports: [{port: 80, targetPort: 8090}]\n---\n";
        assert!(inject(&format!("{service}{once}"), IMAGE).is_err(), "a Service added after injection");
    }

    #[test]
    fn the_fhir_server_judged_once_is_judged_again() {
        // Beside the FHIR server, a container with no address of its own: the FHIR server is
        // the one declaring the port, which injection removes; the annotation keeps the choice.
        let two = MANIFESTS.replace(
            "          ports: [{containerPort: 8090, name: http}]\n",
            "          ports: [{containerPort: 8090, name: http}]\n        - name: logger\n          image: fluent-bit\n",
        );
        let once = inject(&two, IMAGE).unwrap();
        let hapi = &docs(&once)[1];
        assert_eq!(hapi["spec"]["template"]["metadata"]["annotations"]["fhir-fence.dev/upstream-container"], "hapi");
        assert_eq!(inject(&once, IMAGE).unwrap(), once);
    }

    #[test]
    fn marks_and_directives_are_kept_and_skipped() {
        for prefix in ["\u{feff}", "%YAML 1.1\n---\n"] {
            let text = format!("{prefix}{MANIFESTS}");
            let out = inject(&text, IMAGE).unwrap();
            assert!(out.starts_with(prefix), "{prefix:?}");
            let plain = MANIFESTS.replace("fhir-fence.dev/inject: enabled", "team: a");
            assert_eq!(inject(&format!("{prefix}{plain}"), IMAGE).unwrap(), format!("{prefix}{plain}"));
        }
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

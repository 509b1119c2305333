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
    let mut out = String::with_capacity(manifests.len() + 4096);
    for (i, doc) in documents(manifests).into_iter().enumerate() {
        match inject_one(i, doc.body, default_image)? {
            None => out.push_str(doc.raw),
            Some(changed) => {
                out.push_str(doc.separator);
                out.push_str(&changed);
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
            let is_separator = first.trim_end_matches(['\n', '\r']).starts_with("---");
            let cut = if is_separator { first.len() } else { 0 };
            Document { raw, separator: &raw[..cut], body: &raw[cut..] }
        })
        .collect()
}

/// The injected document as YAML, or `None` when it is left alone.
fn inject_one(index: usize, body: &str, default_image: &str) -> Result<Option<String>, InjectError> {
    if body.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
        return Ok(None);
    }
    let mut doc: Value = yaml_serde::from_str(body).map_err(|e| InjectError::Yaml(index, e.to_string()))?;
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
    let name = doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("?").to_owned();
    let what = format!("{kind}/{name}");
    let invalid = |why: &str| InjectError::Invalid(index, what.clone(), why.to_owned());
    let (meta_path, spec_path) = match kind.as_str() {
        "Pod" => ("/metadata", "/spec"),
        k if WORKLOADS.contains(&k) => ("/spec/template/metadata", "/spec/template/spec"),
        _ => return Ok(None),
    };
    let annotations = |path: &str| doc.pointer(&format!("{path}/annotations")).and_then(Value::as_object).cloned();
    let mut found = annotations("/metadata").unwrap_or_default();
    found.extend(annotations(meta_path).unwrap_or_default());
    if found.get(ANNOTATION).and_then(Value::as_str) != Some("enabled") {
        return Ok(None);
    }
    let text = |k: &str| found.get(&format!("fhir-fence.dev/{k}")).and_then(Value::as_str).map(str::to_owned);
    let upstream_port = match text("upstream-port") {
        None => None,
        Some(p) => Some(p.parse::<u16>().map_err(|_| invalid("fhir-fence.dev/upstream-port is not a port"))?),
    };
    let sidecar = Sidecar {
        image: text("image").unwrap_or_else(|| default_image.to_owned()),
        config_map: text("config").unwrap_or_else(|| sidecar::CONFIG_MAP.to_owned()),
        keys_secret: text("keys").unwrap_or_else(|| sidecar::KEYS_SECRET.to_owned()),
    };
    if upstream_port.is_some_and(|p| p == sidecar::FHIR_PORT || p == sidecar::ADMIN_PORT) {
        return Err(invalid("the FHIR server's port is one fhir-fence listens on (8080, 9090)"));
    }
    let spec = doc.pointer_mut(spec_path).and_then(Value::as_object_mut).ok_or_else(|| invalid("no pod spec"))?;
    if !add_sidecar(spec, &sidecar, upstream_port).map_err(|e| invalid(&e))? {
        return Ok(None);
    }
    yaml_serde::to_string(&doc).map(Some).map_err(|e| InjectError::Yaml(index, e.to_string()))
}

/// Adds the sidecar, its volumes, and takes the FHIR server's port out of the other
/// containers' declared ports. `false` when the sidecar is there already (injected before).
fn add_sidecar(spec: &mut Map<String, Value>, sidecar: &Sidecar, upstream_port: Option<u16>) -> Result<bool, String> {
    let named = |v: &Value, n: &str| v.get("name").and_then(Value::as_str) == Some(n);
    for list in ["initContainers", "containers"] {
        if spec.get(list).and_then(Value::as_array).is_some_and(|l| l.iter().any(|c| named(c, sidecar::NAME))) {
            return Ok(false);
        }
    }
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Err("hostNetwork would expose the FHIR server beside fhir-fence".into());
    }
    let containers = spec.get_mut("containers").and_then(Value::as_array_mut).ok_or("no containers")?;
    for c in containers.iter_mut() {
        let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) else { continue };
        let clash = |p: &Value| {
            let port = p.get("containerPort").and_then(Value::as_u64);
            port == Some(u64::from(sidecar::FHIR_PORT)) || port == Some(u64::from(sidecar::ADMIN_PORT))
        };
        if ports.iter().any(clash) && upstream_port.is_none() {
            return Err("a container declares port 8080 or 9090, which fhir-fence listens on".into());
        }
        ports.retain(|p| {
            upstream_port.is_none_or(|u| p.get("containerPort").and_then(Value::as_u64) != Some(u64::from(u)))
        });
        if ports.iter().any(clash) {
            return Err("a container declares port 8080 or 9090, which fhir-fence listens on".into());
        }
        if ports.is_empty() {
            c.as_object_mut().expect("a container").remove("ports");
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
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE: &str = "ghcr.io/fhir-fence/fhir-fence:test";

    const MANIFESTS: &str = "# my app\napiVersion: v1\nkind: Service\nmetadata:\n  name: hapi   # a comment kept\nspec:\n  ports: [{port: 80}]\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: hapi\nspec:\n  selector: {matchLabels: {app: hapi}}\n  template:\n    metadata:\n      labels: {app: hapi}\n      annotations:\n        fhir-fence.dev/inject: enabled\n        fhir-fence.dev/upstream-port: \"8090\"\n    spec:\n      containers:\n        - name: hapi\n          image: hapiproject/hapi\n          ports: [{containerPort: 8090}]\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: other\nspec:\n  template:\n    spec:\n      containers: [{name: x, image: y}]\n";

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

    #[test]
    fn twice_is_once() {
        let once = inject(MANIFESTS, IMAGE).unwrap();
        assert_eq!(inject(&once, IMAGE).unwrap(), once);
    }

    #[test]
    fn refusals_name_the_document() {
        let clash = MANIFESTS.replace("fhir-fence.dev/upstream-port: \"8090\"", "x: y").replace("8090", "8080");
        assert!(matches!(inject(&clash, IMAGE), Err(InjectError::Invalid(1, _, _))));
        let host = MANIFESTS.replace(
            "    spec:\n      containers:\n        - name: hapi",
            "    spec:\n      hostNetwork: true\n      containers:\n        - name: hapi",
        );
        assert!(matches!(inject(&host, IMAGE), Err(InjectError::Invalid(1, _, _))));
        assert!(matches!(inject("kind: [", IMAGE), Err(InjectError::Yaml(0, _))));
        let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {fhir-fence.dev/inject: enabled, fhir-fence.dev/config: mine}\nspec:\n  containers: [{name: a, image: b}]\n";
        let out = docs(&inject(pod, IMAGE).unwrap()).remove(0);
        assert_eq!(out["spec"]["volumes"][0]["configMap"]["name"], "mine");
    }
}

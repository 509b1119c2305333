//! The fhir-fence sidecar container, as `deploy/base` runs it: a native sidecar (an init
//! container with `restartPolicy: Always`), probes on the admin port (`startupProbe` on
//! `/healthz`, never `/readyz`: the FHIR server starts only after the sidecar has), the
//! restricted security context, the config and keys mounted read-only. `inject` (and later the
//! webhook) add exactly this; a test holds it equal to the container in `deploy/base`.
use serde_json::{json, Value};

pub const NAME: &str = "fhir-fence";
pub const FHIR_PORT: u16 = 8080;
pub const ADMIN_PORT: u16 = 9090;
pub const CONFIG_MAP: &str = "fhir-fence-config";
pub const KEYS_SECRET: &str = "fhir-fence-keys";
/// The volumes' names in the pod (distinct from names a FHIR server's pod might use).
const CONFIG_VOLUME: &str = "fhir-fence-config";
const KEYS_VOLUME: &str = "fhir-fence-keys";

pub struct Sidecar {
    pub image: String,
    pub config_map: String,
    pub keys_secret: String,
}

impl Sidecar {
    pub fn container(&self) -> Value {
        let restricted = json!({
            "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}
        });
        let probe = |path: &str| json!({"httpGet": {"path": path, "port": "admin"}});
        let mut startup = probe("/healthz");
        startup["periodSeconds"] = json!(1);
        startup["failureThreshold"] = json!(30);
        let mut liveness = probe("/healthz");
        liveness["periodSeconds"] = json!(10);
        liveness["timeoutSeconds"] = json!(2);
        liveness["failureThreshold"] = json!(3);
        let mut readiness = probe("/readyz");
        readiness["periodSeconds"] = json!(5);
        readiness["timeoutSeconds"] = json!(3);
        readiness["failureThreshold"] = json!(2);
        json!({
            "name": NAME,
            "image": self.image,
            "imagePullPolicy": "IfNotPresent",
            "restartPolicy": "Always",
            "args": ["serve", "--config", "/etc/fhir-fence/fence.toml"],
            "ports": [
                {"name": "fhir", "containerPort": FHIR_PORT, "protocol": "TCP"},
                {"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}
            ],
            "env": [{"name": "FHIR_FENCE_LOG", "value": "info"}],
            "startupProbe": startup,
            "livenessProbe": liveness,
            "readinessProbe": readiness,
            "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}},
            "securityContext": restricted,
            "volumeMounts": [
                {"name": CONFIG_VOLUME, "mountPath": "/etc/fhir-fence", "readOnly": true},
                {"name": KEYS_VOLUME, "mountPath": "/var/run/secrets/fhir-fence", "readOnly": true}
            ]
        })
    }

    pub fn volumes(&self) -> Vec<Value> {
        vec![
            json!({"name": CONFIG_VOLUME, "configMap": {"name": self.config_map}}),
            json!({"name": KEYS_VOLUME, "secret": {"secretName": self.keys_secret}}),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sidecar `inject` adds is the one `deploy/base` runs (but for the image, which
    /// kustomize sets, and the volume names, which `inject` keeps apart from the pod's own).
    #[test]
    fn the_injected_sidecar_is_deploy_base_s() {
        let base: Value = yaml_serde::from_str(include_str!("../../deploy/base/deployment.yaml")).unwrap();
        let mut theirs = base["spec"]["template"]["spec"]["initContainers"][0].clone();
        let sidecar = Sidecar { image: "fhir-fence".into(), config_map: "c".into(), keys_secret: "k".into() };
        let mut ours = sidecar.container();
        for mounts in [&mut theirs, &mut ours] {
            for m in mounts["volumeMounts"].as_array_mut().unwrap() {
                m.as_object_mut().unwrap().remove("name");
            }
        }
        assert_eq!(ours, theirs);
    }
}

//! The admission webhook's answer: an `admission.k8s.io/v1` `AdmissionReview` in, the same
//! review with its `response` out. The change is exactly `inject::inject_object`'s (the one
//! place the annotations are read), sent as the JSON Patch from the object as it arrived to the
//! object with the sidecar. An object that is not annotated, or carries the sidecar already, is
//! allowed unchanged; an annotated object that cannot be injected safely is refused (403, the
//! reason in the message) rather than admitted without the sidecar.
use super::inject;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

pub const API_VERSION: &str = "admission.k8s.io/v1";

#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// The body is no `AdmissionReview` this webhook can answer (there is no `uid` to answer
    /// to): the API server gets a 400 and applies the webhook's `failurePolicy`.
    #[error("not an admission.k8s.io/v1 AdmissionReview: {0}")]
    NotAReview(String),
}

/// The parts of a review this webhook reads (the API server sends many more, ignored).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: String,
    kind: String,
    request: Option<Request>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    uid: String,
    operation: Option<String>,
    object: Option<Value>,
}

/// The review's answer (a whole `AdmissionReview`, ready to serialise).
pub fn review(body: &[u8], default_image: &str) -> Result<Value, AdmissionError> {
    let review: Review = serde_json::from_slice(body).map_err(|e| AdmissionError::NotAReview(e.to_string()))?;
    if review.api_version != API_VERSION || review.kind != "AdmissionReview" {
        return Err(AdmissionError::NotAReview(format!(
            "apiVersion {:?}, kind {:?}: this webhook answers {API_VERSION} AdmissionReview (admissionReviewVersions: [v1])",
            review.api_version, review.kind
        )));
    }
    let request = review.request.ok_or_else(|| AdmissionError::NotAReview("no request".into()))?;
    if request.uid.is_empty() {
        return Err(AdmissionError::NotAReview("request.uid is empty".into()));
    }
    let response = match decide(&request, default_image) {
        Decision::Unchanged => json!({"uid": request.uid, "allowed": true}),
        Decision::Patch(patch) => {
            let patch = serde_json::to_vec(&patch).expect("a JSON Patch serialises");
            json!({
                "uid": request.uid,
                "allowed": true,
                "patchType": "JSONPatch",
                "patch": base64::engine::general_purpose::STANDARD.encode(patch),
            })
        }
        Decision::Refuse(code, message) => json!({
            "uid": request.uid,
            "allowed": false,
            "status": {"status": "Failure", "code": code, "reason": reason(code), "message": message},
        }),
    };
    Ok(json!({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}))
}

enum Decision {
    Unchanged,
    Patch(json_patch::Patch),
    Refuse(u16, String),
}

fn decide(request: &Request, default_image: &str) -> Decision {
    // Only a created or updated object can need the sidecar (DELETE and CONNECT carry none).
    if !matches!(request.operation.as_deref(), Some("CREATE" | "UPDATE")) {
        return Decision::Unchanged;
    }
    let Some(object) = request.object.as_ref().filter(|o| o.is_object()) else {
        return Decision::Refuse(400, "the review's request carries no object".into());
    };
    // A running Pod's containers cannot change: an update (new labels, say) is let through as
    // it is; the sidecar comes with the Pod's creation, or its workload's update.
    if request.operation.as_deref() == Some("UPDATE") && object.get("kind").and_then(Value::as_str) == Some("Pod") {
        return Decision::Unchanged;
    }
    let mut injected = object.clone();
    match inject::inject_object(&mut injected, default_image) {
        Ok(None) => Decision::Unchanged,
        Ok(Some(i)) if !i.changed => Decision::Unchanged,
        Ok(Some(_)) => Decision::Patch(json_patch::diff(object, &injected)),
        Err(why) => Decision::Refuse(
            403,
            format!(
                "fhir-fence: {} asks for the fhir-fence sidecar, which cannot be added safely: {why}",
                inject::describe(object)
            ),
        ),
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        _ => "Forbidden",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Pod as the API server sends it (name set by the ReplicaSet controller, defaults in).
    fn pod(annotations: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "hapi-5d8f7-", "namespace": "fhir", "annotations": annotations},
            "spec": {
                "containers": [{
                    "name": "hapi", "image": "hapiproject/hapi:v8.4.0",
                    "env": [{"name": "SERVER_ADDRESS", "value": "127.0.0.1"}],
                    "ports": [{"containerPort": 8090, "name": "http", "protocol": "TCP"}],
                    "terminationMessagePath": "/dev/termination-log"
                }],
                "restartPolicy": "Always", "dnsPolicy": "ClusterFirst"
            }
        })
    }

    fn request(object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": API_VERSION, "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "fhir", "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": object, "oldObject": null, "dryRun": false
            }
        }))
        .unwrap()
    }

    fn annotated() -> Value {
        json!({"fhir-fence.dev/inject": "enabled", "fhir-fence.dev/upstream-port": "8090"})
    }

    #[test]
    fn an_annotated_pod_gets_the_sidecar_as_a_patch() {
        let object = pod(annotated());
        let answer = review(&request(object.clone()), "img").unwrap();
        let response = &answer["response"];
        assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(response["allowed"], true);
        assert_eq!(response["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD.decode(response["patch"].as_str().unwrap()).unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
        let mut patched = object.clone();
        json_patch::patch(&mut patched, &patch).unwrap();
        let mut expected = object;
        inject::inject_object(&mut expected, "img").unwrap().unwrap();
        assert_eq!(patched, expected);
        assert_eq!(patched["spec"]["initContainers"][0]["name"], "fhir-fence");
        // Reinvoked on its own result (reinvocationPolicy: IfNeeded): nothing more to do.
        let again = review(&request(patched), "img").unwrap();
        assert_eq!(again["response"], json!({"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": true}));
    }

    #[test]
    fn an_unannotated_pod_is_allowed_unchanged() {
        let answer = review(&request(pod(json!({"team": "a"}))), "img").unwrap();
        assert_eq!(answer["response"], json!({"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": true}));
    }

    #[test]
    fn an_annotated_pod_that_cannot_be_fenced_is_refused() {
        let mut object = pod(annotated());
        object["spec"]["hostNetwork"] = json!(true);
        let answer = review(&request(object), "img").unwrap();
        assert_eq!(answer["response"]["allowed"], false);
        assert_eq!(answer["response"]["status"]["code"], 403);
        let message = answer["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains("Pod/hapi-5d8f7-") && message.contains("hostNetwork"), "{message}");
    }

    #[test]
    fn malformed_reviews_are_errors_not_crashes() {
        for body in [
            &b"{"[..],
            b"[]",
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u"}}"#,
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":""}}"#,
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":7}}"#,
        ] {
            assert!(review(body, "img").is_err(), "{}", String::from_utf8_lossy(body));
        }
        let no_object = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","operation":"CREATE","object":"x"}}"#;
        let answer = review(no_object, "img").unwrap();
        assert_eq!(answer["response"]["allowed"], false);
        assert_eq!(answer["response"]["status"]["code"], 400);
    }
}

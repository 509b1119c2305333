"""The admission webhook as the API server meets it, for scripts/check-deploy.

``python3 admission.py review MANIFESTS.yaml [--unannotated]`` prints the AdmissionReview the API
server would send when the Deployment's ReplicaSet creates a Pod (the pod template as a Pod,
with a generateName, in a namespace); ``--unannotated`` drops the fhir-fence annotations first.

``python3 admission.py apply MANIFESTS.yaml ANSWER.json`` checks the webhook's answer (the
review's uid, allowed, a JSONPatch), applies the patch to that Pod with the ``jsonpatch``
library, and prints the patched Pod followed by the manifests' other objects (so the rules can
check the Pod against its Service, NetworkPolicy and PodDisruptionBudget).

``python3 admission.py unchanged ANSWER.json`` checks an answer allows the Pod without a patch.
"""

import base64
import json
import sys

import jsonpatch
import yaml

UID = "0df28fbd-5f5f-11e8-bc74-36e6bb280816"


def pod_of(docs, unannotated=False):
    (deployment,) = [d for d in docs if d.get("kind") == "Deployment"]
    template = deployment["spec"]["template"]
    meta = dict(template["metadata"])
    if unannotated:
        meta["annotations"] = {k: v for k, v in (meta.get("annotations") or {}).items()
                               if not k.startswith("fhir-fence.dev/")}
    meta["generateName"] = deployment["metadata"]["name"] + "-7c9d5b6f4-"
    meta["namespace"] = "fhir"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]}


def review(pod):
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": UID,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "fhir",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def response(path):
    answer = json.load(open(path))
    assert answer.get("apiVersion") == "admission.k8s.io/v1" and answer.get("kind") == "AdmissionReview", answer
    r = answer["response"]
    assert r["uid"] == UID, f"the answer's uid {r['uid']!r} is not the review's"
    assert r["allowed"] is True, f"not allowed: {r.get('status')}"
    return r


def main(argv):
    if argv[0] == "unchanged":
        r = response(argv[1])
        assert "patch" not in r and "patchType" not in r, f"an unannotated Pod was patched: {r}"
        return 0
    docs = [d for d in yaml.safe_load_all(open(argv[1])) if d]
    if argv[0] == "review":
        json.dump(review(pod_of(docs, unannotated="--unannotated" in argv)), sys.stdout)
        return 0
    if argv[0] == "apply":
        r = response(argv[2])
        assert r.get("patchType") == "JSONPatch", f"no JSONPatch in {r}"
        patch = jsonpatch.JsonPatch(json.loads(base64.b64decode(r["patch"])))
        patched = patch.apply(pod_of(docs))
        rest = [d for d in docs if d.get("kind") != "Deployment"]
        yaml.safe_dump_all([patched] + rest, sys.stdout, sort_keys=False)
        return 0
    raise SystemExit(f"unknown command {argv[0]!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

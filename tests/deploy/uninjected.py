"""The rendered deploy/base as a team's own manifests would look before `fhir-fence inject`:
the sidecar and its volumes taken out, the pod template annotated to ask for them.

Usage: ``python3 uninjected.py RENDERED.yaml > INPUT.yaml``. scripts/check-deploy injects the
result again and checks it like every overlay.
"""

import sys

import yaml

SIDECAR = "fhir-fence"

docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
for doc in docs:
    if doc.get("kind") != "Deployment":
        continue
    template = doc["spec"]["template"]
    spec = template["spec"]
    mounts = next(c for c in spec["initContainers"] if c["name"] == SIDECAR)["volumeMounts"]
    spec["initContainers"] = [c for c in spec["initContainers"] if c["name"] != SIDECAR]
    if not spec["initContainers"]:
        del spec["initContainers"]
    names = {m["name"] for m in mounts}
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] not in names]
    annotations = template["metadata"].setdefault("annotations", {})
    annotations["fhir-fence.dev/inject"] = "enabled"
    annotations["fhir-fence.dev/upstream-port"] = "8090"
yaml.safe_dump_all(docs, sys.stdout, sort_keys=False)

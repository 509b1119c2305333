"""The fhir-fence sidecar of one rendered manifest equals another's (the Helm chart's
`fhir-fence.sidecar` template against deploy/base), but for the image and the volume names,
which each way of deploying chooses itself.

Usage: ``python3 same_sidecar.py EXPECTED.yaml ACTUAL.yaml`` (exit 1 with both containers shown).
"""

import sys

import yaml


def sidecar(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    (deployment,) = [d for d in docs if d.get("kind") == "Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    (c,) = [c for c in spec.get("initContainers") or [] if c.get("name") == "fhir-fence"]
    c = dict(c, image=None)
    c["volumeMounts"] = [{k: v for k, v in m.items() if k != "name"} for m in c.get("volumeMounts") or []]
    return c


want, got = sidecar(sys.argv[1]), sidecar(sys.argv[2])
if want != got:
    print(f"the sidecars differ:\n{sys.argv[1]}: {want}\n{sys.argv[2]}: {got}")
    sys.exit(1)

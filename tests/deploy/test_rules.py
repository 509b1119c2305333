"""The deploy rules (rules.py) pass every overlay in deploy/ and fail each broken manifest.

Each broken case takes a rendered overlay, breaks one field that isolation depends on, and
expects that rule's id among the violations, so no rule can silently stop checking.
Run: ``python3 -m unittest tests/deploy/test_rules.py`` (scripts/check-deploy runs it).
"""

from __future__ import annotations

import copy
import pathlib
import subprocess
import unittest

import yaml

import rules

ROOT = pathlib.Path(__file__).resolve().parents[2]
OVERLAYS = ["base", "overlays/shared", "overlays/dedicated", "overlays/classic-sidecar", "overlays/monitoring",
            "webhook", "overlays/webhook-cert-manager"]


def render(overlay: str) -> list[dict]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "deploy" / overlay)], check=True, capture_output=True, text=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def one(docs, kind):
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def pod(docs):
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def fence(docs):
    spec = pod(docs)
    (c,) = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == "fhir-fence"]
    return c


def server(docs):
    (c,) = [c for c in pod(docs)["containers"] if c["name"] != "fhir-fence"]
    return c


def config_text(docs, edit):
    cm = one(docs, "ConfigMap")
    cm["data"]["fence.toml"] = edit(cm["data"]["fence.toml"])


def env(c, name, value):
    c["env"] = [e for e in c.get("env", []) if e["name"] != name]
    if value is not None:
        c["env"].append({"name": name, "value": value})


def set_path(d, path, value):
    *head, last = path
    for k in head:
        d = d.setdefault(k, {})
    if value is None:
        d.pop(last, None)
    else:
        d[last] = value


def hook(docs):
    return one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def webhook(docs):
    return one(docs, "MutatingWebhookConfiguration")["webhooks"][0]


# (rule id, overlay, what breaks it)
BROKEN = {
    "webhook fails open": ("webhook", "webhook", lambda d: webhook(d).update(failurePolicy="Ignore")),
    "webhook with side effects": ("webhook", "webhook", lambda d: webhook(d).update(sideEffects="Some")),
    "webhook on updates too": ("webhook", "webhook", lambda d: webhook(d)["rules"][0].update(operations=["CREATE", "UPDATE"])),
    "webhook sent its own namespace": (
        "webhook", "webhook", lambda d: webhook(d)["namespaceSelector"]["matchExpressions"].pop(1)),
    "webhook calls a missing Service": (
        "webhook", "webhook", lambda d: webhook(d)["clientConfig"]["service"].update(name="fhir-fence")),
    "webhook on another path": ("webhook", "webhook", lambda d: webhook(d)["clientConfig"]["service"].update(path="/")),
    "webhook without a CA": (
        "webhook", "webhook", lambda d: one(d, "MutatingWebhookConfiguration")["metadata"].pop("annotations")),
    "webhook not reinvoked": ("webhook", "webhook", lambda d: webhook(d).pop("reinvocationPolicy")),
    "webhook probe over HTTP": ("webhook", "webhook", lambda d: hook(d)["readinessProbe"]["httpGet"].pop("scheme")),
    "webhook key outside a Secret": ("webhook", "webhook", lambda d: hook(d)["args"].__setitem__(3, "--key=/tmp/tls.key")),
    "webhook listens elsewhere": ("webhook", "webhook", lambda d: hook(d)["args"].__setitem__(1, "--listen=0.0.0.0:9443")),
    "webhook runs as root": ("security", "webhook", lambda d: hook(d)["securityContext"].update(runAsUser=0)),
    "webhook's certificate mounted writable": (
        "mounts", "webhook", lambda d: hook(d)["volumeMounts"][0].update(readOnly=False)),
    "webhook's NetworkPolicy admits any port": (
        "network-policy", "webhook", lambda d: one(d, "NetworkPolicy")["spec"]["ingress"][0].pop("ports")),
    "webhook without a PodDisruptionBudget": ("pdb", "webhook", lambda d: d.remove(one(d, "PodDisruptionBudget"))),
    "restartPolicy misspelt": ("restart-policy", "overlays/shared", lambda d: fence(d).update(restartPolicy="Alway")),
    "restartPolicy missing": ("restart-policy", "overlays/shared", lambda d: fence(d).pop("restartPolicy")),
    "classic sidecar with restartPolicy": (
        "restart-policy", "overlays/classic-sidecar", lambda d: fence(d).update(restartPolicy="Always")),
    "sidecar twice": ("sidecar-once", "overlays/shared", lambda d: pod(d)["containers"].append(copy.deepcopy(fence(d)))),
    "classic: the hook tool copier runs as root": (
        "security", "overlays/classic-sidecar",
        lambda d: pod(d)["initContainers"][0]["securityContext"].update(runAsNonRoot=False, runAsUser=0)),
    "sidecar missing": ("sidecar-once", "overlays/shared", lambda d: pod(d).pop("initContainers")),
    "startupProbe on /readyz": (
        "probes", "overlays/shared", lambda d: fence(d)["startupProbe"]["httpGet"].update(path="/readyz")),
    "readinessProbe on the FHIR port": (
        "probes", "overlays/dedicated", lambda d: fence(d)["readinessProbe"]["httpGet"].update(port="fhir")),
    "livenessProbe missing": ("probes", "overlays/classic-sidecar", lambda d: fence(d).pop("livenessProbe")),
    "FHIR server on every interface": ("loopback", "overlays/shared", lambda d: env(server(d), "SERVER_ADDRESS", "0.0.0.0")),
    "FHIR server address unset": ("loopback", "overlays/dedicated", lambda d: env(server(d), "SERVER_ADDRESS", None)),
    "FHIR server declares its port": (
        "loopback", "overlays/shared", lambda d: server(d).update(ports=[{"containerPort": 8090}])),
    "host network": ("loopback", "overlays/shared", lambda d: pod(d).update(hostNetwork=True)),
    "upstream outside the pod": (
        "loopback", "overlays/shared",
        lambda d: config_text(d, lambda t: t.replace("http://127.0.0.1:8090/fhir", "http://hapi.fhir.svc:8080/fhir"))),
    "writable root filesystem": (
        "security", "overlays/shared", lambda d: fence(d)["securityContext"].update(readOnlyRootFilesystem=False)),
    "capabilities kept": ("security", "overlays/shared", lambda d: fence(d)["securityContext"].pop("capabilities")),
    "no seccomp": (
        "security", "overlays/shared",
        lambda d: (pod(d)["securityContext"].pop("seccompProfile"), fence(d)["securityContext"].pop("seccompProfile"))),
    "may run as root": (
        "security", "overlays/dedicated",
        lambda d: (pod(d)["securityContext"].pop("runAsNonRoot"), server(d)["securityContext"].pop("runAsNonRoot"))),
    "privilege escalation": (
        "security", "overlays/shared", lambda d: server(d)["securityContext"].update(allowPrivilegeEscalation=True)),
    "NetworkPolicy selects another pod": (
        "network-policy", "overlays/shared",
        lambda d: one(d, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"].update({"app.kubernetes.io/instance": "x"})),
    "NetworkPolicy rule without ports": (
        "network-policy", "overlays/shared", lambda d: one(d, "NetworkPolicy")["spec"]["ingress"][0].pop("ports")),
    "NetworkPolicy admits the FHIR server's port": (
        "network-policy", "overlays/shared",
        lambda d: one(d, "NetworkPolicy")["spec"]["ingress"][0]["ports"].append({"port": 8090})),
    "admin port from anywhere": (
        "network-policy", "overlays/monitoring", lambda d: one(d, "NetworkPolicy")["spec"]["ingress"][1].pop("from")),
    "no Ingress policy type": (
        "network-policy", "overlays/shared", lambda d: one(d, "NetworkPolicy")["spec"].update(policyTypes=["Egress"])),
    "Service targets the admin port": (
        "service", "overlays/shared",
        lambda d: [s for s in d if s["kind"] == "Service"][0]["spec"]["ports"][0].update(targetPort="admin")),
    "Service also targets the FHIR server": (
        "service", "overlays/shared",
        lambda d: [s for s in d if s["kind"] == "Service"][0]["spec"]["ports"].append(
            {"name": "hapi", "port": 8090, "targetPort": 8090})),
    "metrics Service targets the FHIR port": (
        "service", "overlays/monitoring",
        lambda d: [s for s in d if s["metadata"]["name"].startswith("fhir-fence-metrics")][0]["spec"]["ports"][0].update(
            targetPort="fhir")),
    "ServiceMonitor scrapes a port the Service lacks": (
        "monitoring", "overlays/monitoring", lambda d: one(d, "ServiceMonitor")["spec"]["endpoints"][0].update(port="http")),
    "ServiceMonitor selects the FHIR Service": (
        "monitoring", "overlays/monitoring",
        lambda d: one(d, "ServiceMonitor")["spec"]["selector"]["matchLabels"].pop("fhir-fence.dev/role")),
    "config mounted writable": (
        "mounts", "overlays/shared", lambda d: fence(d)["volumeMounts"][0].update(readOnly=False)),
    "config mounted by subPath": (
        "mounts", "overlays/shared", lambda d: fence(d)["volumeMounts"][1].update(subPath="paging.key")),
    "grace shorter than the drain": (
        "grace", "overlays/shared", lambda d: pod(d).update(terminationGracePeriodSeconds=30)),
    "classic: FHIR server stops before the drain ends": (
        "grace", "overlays/classic-sidecar",
        lambda d: set_path(server(d), ["lifecycle", "preStop", "exec", "command"], ["/hooks/busybox", "sleep", "10"])),
    "no PodDisruptionBudget": ("pdb", "overlays/shared", lambda d: d.remove(one(d, "PodDisruptionBudget"))),
    "listen port is not the container port": (
        "ports", "overlays/shared", lambda d: config_text(d, lambda t: t.replace('"0.0.0.0:8080"', '"0.0.0.0:8081"'))),
    "config not from a ConfigMap": (
        "config", "overlays/shared", lambda d: fence(d).update(args=["serve", "--config", "/tmp/fence.toml"])),
}


class Rules(unittest.TestCase):
    rendered: dict[str, list[dict]] = {}

    @classmethod
    def setUpClass(cls):
        cls.rendered = {o: render(o) for o in OVERLAYS}

    def test_every_overlay_passes(self):
        for overlay, docs in self.rendered.items():
            with self.subTest(overlay=overlay):
                self.assertEqual(rules.check(docs), [])

    def test_each_broken_manifest_fails_its_rule(self):
        for case, (rule, overlay, breaks) in BROKEN.items():
            with self.subTest(case=case):
                docs = copy.deepcopy(self.rendered[overlay])
                self.assertEqual(rules.check(docs), [], "the overlay passes before it is broken")
                breaks(docs)
                found = rules.check(docs)
                self.assertTrue(any(v.startswith(rule + ":") for v in found), f"{case}: want {rule}, got {found}")


if __name__ == "__main__":
    unittest.main()

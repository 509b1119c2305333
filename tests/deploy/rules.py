"""fhir-fence's own rules for rendered Kubernetes manifests (deploy/, `kubectl kustomize`).

A schema validator checks that every field is a known field of the right type; it accepts
`restartPolicy: Alway`, a probe on the wrong port, or a Service that also exposes the FHIR
server. These rules check the fields isolation depends on. Each violation is a string that
starts with the rule's id, e.g. ``"sidecar-once: Deployment/fhir-server: ..."``.

Usage: ``python3 rules.py FILE.yaml...`` (exit 1 and one line per violation), or
``check(documents)`` from Python.
"""

from __future__ import annotations

import ipaddress
import sys
import tomllib
from urllib.parse import urlsplit

import yaml

SIDECAR = "fhir-fence"
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
# fhir-fence's own drain after SIGTERM, at most (src/server.rs, `drain`).
DRAIN_SECS = 30
LOOPBACK_NAMES = {"localhost"}


def check(docs: list[dict]) -> list[str]:
    """Every violation in one rendered overlay (all its objects)."""
    docs = [d for d in docs if isinstance(d, dict)]
    out: list[str] = []
    pods = list(_pods(docs))
    if not pods:
        out.append("sidecar-once: no workload in the manifests")
    for name, meta, spec in pods:
        if _webhook_container(spec) is not None:
            out += _check_webhook_pod(name, meta, spec, docs)
        else:
            out += _check_pod(name, meta, spec, docs)
    out += _check_service_monitors(docs)
    out += _check_webhook_configs(docs)
    return out


def _webhook_container(spec: dict):
    """The container running `fhir-fence webhook` (the admission webhook), if any."""
    for c in spec.get("containers") or []:
        image = str(c.get("image", "")).rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]
        if image == SIDECAR and [str(a) for a in c.get("args") or []][:1] == ["webhook"]:
            return c
    return None


def _flag(c: dict, name: str):
    """The value of `--name=value` or `--name value` in a container's args."""
    args = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
    for i, a in enumerate(args):
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
        if a == f"--{name}" and i + 1 < len(args):
            return args[i + 1]
    return None


def _check_webhook_pod(name: str, meta: dict, spec: dict, docs: list[dict]) -> list[str]:
    """The admission webhook's pod: restricted like the sidecar, its certificate from a Secret
    mounted read-only, probes over HTTPS on its port, a Service, a NetworkPolicy admitting only
    that port, and a PodDisruptionBudget (with failurePolicy Fail, no replica means no Pods)."""
    out: list[str] = []
    hook = _webhook_container(spec)
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        out += _check_security(name, c, spec.get("securityContext") or {})
    out += _check_mounts(name, hook, spec)
    if spec.get("hostNetwork"):
        out.append(f"webhook: {name}: hostNetwork")
    ports = {p.get("name"): p.get("containerPort") for p in hook.get("ports") or [] if p.get("name")}
    listen = _flag(hook, "listen") or "0.0.0.0:8443"
    port = int(listen.rsplit(":", 1)[-1]) if listen.rsplit(":", 1)[-1].isdigit() else None
    if port is None or port not in ports.values():
        out.append(f"webhook: {name}: --listen {listen!r} is not a declared container port {ports}")
        return out
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    for flag in ("cert", "key"):
        path = _flag(hook, flag)
        directory = (path or "").rpartition("/")[0]
        mount = next((m for m in hook.get("volumeMounts") or [] if m.get("mountPath") == directory), None)
        if path is None or mount is None or "secret" not in volumes.get(mount.get("name"), {}):
            out.append(f"webhook: {name}: --{flag} {path!r} is not in a mounted Secret")
    for probe in ("readinessProbe", "livenessProbe"):
        get = (hook.get(probe) or {}).get("httpGet") or {}
        if _resolve(get.get("port"), ports) != port or get.get("scheme") != "HTTPS" or get.get("path") != "/healthz":
            out.append(f"webhook: {name}: {probe} is not an HTTPS GET /healthz on port {port} (got {get})")
    labels = meta.get("labels") or {}
    services = [d for d in docs if d.get("kind") == "Service" and _selects(d["spec"].get("selector"), labels)]
    for s in services:
        for p in s["spec"].get("ports") or []:
            if _resolve(p.get("targetPort", p.get("port")), ports) != port:
                out.append(f"webhook: {name}: Service {s['metadata'].get('name')} targets {p.get('targetPort')!r}, "
                           f"not the webhook's port {port}")
    if not services:
        out.append(f"webhook: {name}: no Service selects the pod (the API server calls a Service)")
    policies = [d for d in docs if d.get("kind") == "NetworkPolicy" and _selects(d["spec"].get("podSelector"), labels)]
    if not policies:
        out.append(f"network-policy: {name}: no NetworkPolicy selects the pod")
    for pol in policies:
        for rule in pol["spec"].get("ingress") or []:
            admitted = [_resolve(rp.get("port"), ports) for rp in rule.get("ports") or [{}]]
            if any(a != port for a in admitted):
                out.append(f"network-policy: {name}: {pol['metadata'].get('name')} admits more than the webhook's port")
    if not any(d.get("kind") == "PodDisruptionBudget" and _selects(d["spec"].get("selector"), labels) for d in docs):
        out.append(f"pdb: {name}: no PodDisruptionBudget selects the pod")
    return out


def _check_webhook_configs(docs: list[dict]) -> list[str]:
    """Each webhook of a MutatingWebhookConfiguration calling fhir-fence: Pods on CREATE only,
    v1 reviews, no side effects, failing closed, a bounded timeout, reinvoked when another
    webhook changes the Pod, never sent its own namespace (or no webhook Pod could start), and
    calling an existing Service's port over a CA the API server is given."""
    out: list[str] = []
    for conf in (d for d in docs if d.get("kind") == "MutatingWebhookConfiguration"):
        annotations = conf.get("metadata", {}).get("annotations") or {}
        for w in conf.get("webhooks") or []:
            who = f"MutatingWebhookConfiguration/{conf['metadata'].get('name')}: {w.get('name')}"
            if "v1" not in (w.get("admissionReviewVersions") or []):
                out.append(f"webhook: {who}: admissionReviewVersions lacks v1")
            if w.get("sideEffects") != "None":
                out.append(f"webhook: {who}: sideEffects is {w.get('sideEffects')!r}, not None")
            if w.get("failurePolicy", "Fail") != "Fail":
                out.append(f"webhook: {who}: failurePolicy {w.get('failurePolicy')!r} admits annotated Pods "
                           f"without the sidecar while the webhook is down")
            if not 1 <= int(w.get("timeoutSeconds", 10)) <= 10:
                out.append(f"webhook: {who}: timeoutSeconds {w.get('timeoutSeconds')} outside 1..10")
            if w.get("reinvocationPolicy") != "IfNeeded":
                out.append(f"webhook: {who}: reinvocationPolicy is not IfNeeded")
            for r in w.get("rules") or [{}]:
                if r.get("operations") != ["CREATE"] or r.get("resources") != ["pods"] or r.get("apiGroups") != [""]:
                    out.append(f"webhook: {who}: rule {r} is not Pods on CREATE")
            client = w.get("clientConfig") or {}
            service = client.get("service")
            if service is None:
                out.append(f"webhook: {who}: clientConfig does not name a Service")
                continue
            if service.get("path") != "/mutate":
                out.append(f"webhook: {who}: path {service.get('path')!r}, the webhook serves /mutate")
            target = next((d for d in docs if d.get("kind") == "Service"
                           and d["metadata"].get("name") == service.get("name")
                           and d["metadata"].get("namespace") == service.get("namespace")), None)
            if target is None:
                out.append(f"webhook: {who}: Service {service.get('namespace')}/{service.get('name')} "
                           f"is not in the manifests")
            elif service.get("port", 443) not in [p.get("port") for p in target["spec"].get("ports") or []]:
                out.append(f"webhook: {who}: the Service has no port {service.get('port', 443)}")
            if not client.get("caBundle") and "cert-manager.io/inject-ca-from" not in annotations:
                out.append(f"webhook: {who}: neither a caBundle nor cert-manager's inject-ca-from annotation")
            excluded = [e for e in (w.get("namespaceSelector") or {}).get("matchExpressions") or []
                        if e.get("key") == "kubernetes.io/metadata.name" and e.get("operator") == "NotIn"]
            if not any(service.get("namespace") in (e.get("values") or []) for e in excluded):
                out.append(f"webhook: {who}: its own namespace {service.get('namespace')!r} is not excluded "
                           f"by the namespaceSelector")
    return out


def _check_service_monitors(docs) -> list[str]:
    """A ServiceMonitor (no schema is bundled for it) must select a metrics Service by its
    labels and scrape a port that Service names."""
    out = []
    for m in (d for d in docs if d.get("kind") == "ServiceMonitor"):
        mname = m["metadata"].get("name")
        selected = [
            d for d in docs
            if d.get("kind") == "Service" and _selects(m["spec"].get("selector"), d["metadata"].get("labels") or {})
        ]
        if not selected or any((s["metadata"].get("labels") or {}).get("fhir-fence.dev/role") != "metrics"
                               for s in selected):
            out.append(f"monitoring: ServiceMonitor/{mname} selects {[s['metadata']['name'] for s in selected]}, "
                       f"not exactly the metrics Services")
            continue
        names = {p.get("name") for s in selected for p in s["spec"].get("ports") or []}
        for e in m["spec"].get("endpoints") or [{}]:
            if e.get("port") not in names or e.get("path", "/metrics") != "/metrics":
                out.append(f"monitoring: ServiceMonitor/{mname} scrapes port {e.get('port')!r} path "
                           f"{e.get('path')!r}; the metrics Service names {sorted(names)}, path /metrics")
    return out


def _pods(docs):
    """(name, template metadata, pod spec) of every workload and bare Pod."""
    for d in docs:
        kind, name = d.get("kind"), f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        if kind == "Pod":
            yield name, d.get("metadata", {}), d.get("spec", {})
        elif kind in WORKLOADS:
            tpl = d.get("spec", {}).get("template", {})
            yield name, tpl.get("metadata", {}), tpl.get("spec", {})
        elif kind == "CronJob":
            tpl = d.get("spec", {}).get("jobTemplate", {}).get("spec", {}).get("template", {})
            yield name, tpl.get("metadata", {}), tpl.get("spec", {})


def _check_pod(name: str, meta: dict, spec: dict, docs: list[dict]) -> list[str]:
    out: list[str] = []
    inits = spec.get("initContainers") or []
    mains = spec.get("containers") or []
    found = [("init", c) for c in inits if _is_sidecar(c)] + [("main", c) for c in mains if _is_sidecar(c)]
    if len(found) != 1:
        return [f"sidecar-once: {name}: fhir-fence appears {len(found)} times (want exactly 1)"]
    where, fence = found[0]
    # The containers serving beside fhir-fence: the FHIR server (init containers that run to
    # completion before it, such as a hook-tool copy, serve nothing).
    others = [c for c in mains if c is not fence]

    # Native sidecar: an init container that keeps running needs exactly `Always` (an unknown
    # value passes schema validation). A classic sidecar has no restartPolicy of its own.
    policy = fence.get("restartPolicy")
    if where == "init" and policy != "Always":
        out.append(f"restart-policy: {name}: the native sidecar's restartPolicy is {policy!r}, not 'Always'")
    if where == "main" and policy is not None:
        out.append(f"restart-policy: {name}: a classic sidecar has no restartPolicy (got {policy!r})")
    if where == "init" and inits.index(fence) != 0:
        out.append(f"restart-policy: {name}: the native sidecar is not the first init container")

    ports = {p.get("name"): p.get("containerPort") for p in fence.get("ports") or [] if p.get("name")}
    config, config_problem = _fence_config(name, fence, spec, docs)
    if config_problem:
        out.append(config_problem)
    public, admin = ports.get("fhir"), ports.get("admin")
    if public is None or admin is None or public == admin:
        out.append(f"ports: {name}: fhir-fence must name two different ports `fhir` and `admin` (got {ports})")
        return out
    if config is not None:
        for key, port in (("server.listen", public), ("admin.listen", admin)):
            section, _ = key.split(".")
            listen = str(config.get(section, {}).get("listen", ""))
            if not listen.endswith(f":{port}"):
                out.append(f"ports: {name}: {key} is {listen!r}, the container port is {port}")
        for up, u in (config.get("upstreams") or {}).items():
            host = urlsplit(str(u.get("base_url", ""))).hostname or ""
            if not _loopback(host):
                out.append(f"loopback: {name}: upstream {up} is {host!r}, not the FHIR server on loopback")

    out += _check_probes(name, fence, ports, admin)
    for c in inits + mains:
        out += _check_security(name, c, spec.get("securityContext") or {})
    out += _check_loopback(name, spec, others)
    out += _check_mounts(name, fence, spec)
    out += _check_grace(name, spec, fence, others, where)
    labels = meta.get("labels") or {}
    out += _check_network_policy(name, labels, docs, ports, public, admin)
    out += _check_services(name, labels, docs, ports, public, admin)
    if not any(d.get("kind") == "PodDisruptionBudget" and _selects(d["spec"].get("selector"), labels) for d in docs):
        out.append(f"pdb: {name}: no PodDisruptionBudget selects the pod")
    return out


def _is_sidecar(c: dict) -> bool:
    image = str(c.get("image", "")).rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]
    return c.get("name") == SIDECAR or image == SIDECAR


def _loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _resolve(port, ports: dict):
    """A port given by number or by the sidecar's port name, as a number (None if unknown)."""
    if isinstance(port, int):
        return port
    return ports.get(port)


def _check_probes(name, fence, ports, admin) -> list[str]:
    out = []
    want = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in want.items():
        p = fence.get(probe)
        if not p:
            out.append(f"probes: {name}: fhir-fence has no {probe}")
            continue
        get = p.get("httpGet")
        if not get:
            out.append(f"probes: {name}: {probe} is not an httpGet on the admin port")
            continue
        if _resolve(get.get("port"), ports) != admin:
            out.append(f"probes: {name}: {probe} is on port {get.get('port')!r}, not the admin port {admin}")
        if get.get("path") != path:
            # startupProbe on /readyz: /readyz needs the FHIR server, which a native sidecar's
            # start holds back: the pod would wait on itself.
            out.append(f"probes: {name}: {probe} asks {get.get('path')!r}, want {path}")
    return out


def _check_security(name, c, pod_ctx) -> list[str]:
    ctx = c.get("securityContext") or {}
    who = f"{name}: container {c.get('name')}"

    def eff(key):
        return ctx.get(key, pod_ctx.get(key))

    out = []
    if eff("runAsNonRoot") is not True:
        out.append(f"security: {who}: runAsNonRoot is not true")
    if eff("runAsUser") == 0:
        out.append(f"security: {who}: runs as uid 0")
    if ctx.get("readOnlyRootFilesystem") is not True:
        out.append(f"security: {who}: readOnlyRootFilesystem is not true")
    if ctx.get("allowPrivilegeEscalation") is not False:
        out.append(f"security: {who}: allowPrivilegeEscalation is not false")
    if ctx.get("privileged"):
        out.append(f"security: {who}: privileged")
    caps = ctx.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []) or caps.get("add"):
        out.append(f"security: {who}: capabilities must drop ALL and add none (got {caps})")
    seccomp = (eff("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        out.append(f"security: {who}: seccompProfile is {seccomp!r}, not RuntimeDefault")
    return out


def _check_loopback(name, spec, others) -> list[str]:
    out = []
    if spec.get("hostNetwork"):
        out.append(f"loopback: {name}: hostNetwork shares the node's loopback with every host process")
    if not others:
        out.append(f"loopback: {name}: no FHIR server container beside fhir-fence")
    for c in others:
        env = {e.get("name"): e.get("value") for e in c.get("env") or []}
        args = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
        bound = [env.get("SERVER_ADDRESS")] + [a.split("=", 1)[1] for a in args if a.startswith("--server.address=")]
        bound = [b for b in bound if b is not None]
        if not bound or not all(_loopback(b) for b in bound):
            out.append(f"loopback: {name}: container {c.get('name')} is not bound to loopback (server.address {bound})")
        if c.get("ports"):
            out.append(f"loopback: {name}: container {c.get('name')} declares ports; only fhir-fence may")
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        if any(p.get("hostPort") for p in c.get("ports") or []):
            out.append(f"loopback: {name}: container {c.get('name')} uses a hostPort")
    return out


def _fence_config(name, fence, spec, docs):
    """fhir-fence's parsed config from the ConfigMap mounted where `--config` points."""
    args = [str(a) for a in (fence.get("command") or []) + (fence.get("args") or [])]
    try:
        path = args[args.index("--config") + 1]
    except (ValueError, IndexError):
        return None, f"config: {name}: fhir-fence has no --config argument"
    directory, _, file = path.rpartition("/")
    mount = next((m for m in fence.get("volumeMounts") or [] if m.get("mountPath") == directory), None)
    if mount is None:
        return None, f"config: {name}: nothing is mounted at {directory} (--config {path})"
    volume = next((v for v in spec.get("volumes") or [] if v.get("name") == mount.get("name")), {})
    cm_name = (volume.get("configMap") or {}).get("name")
    if cm_name is None:
        return None, f"config: {name}: {directory} is not a ConfigMap volume"
    cm = next((d for d in docs if d.get("kind") == "ConfigMap" and d["metadata"].get("name") == cm_name), None)
    if cm is None or file not in (cm.get("data") or {}):
        return None, f"config: {name}: ConfigMap {cm_name} with key {file} is not in the manifests"
    try:
        return tomllib.loads(cm["data"][file]), None
    except tomllib.TOMLDecodeError as e:
        return None, f"config: {name}: {cm_name}/{file} is not TOML: {e}"


def _check_mounts(name, fence, spec) -> list[str]:
    out = []
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    for m in fence.get("volumeMounts") or []:
        v = volumes.get(m.get("name"), {})
        if ("configMap" in v or "secret" in v) and m.get("readOnly") is not True:
            out.append(f"mounts: {name}: {m.get('mountPath')} (ConfigMap/Secret) is not mounted readOnly")
        if m.get("subPath"):
            # A subPath mount never sees a ConfigMap update: the hot reload would be blind.
            out.append(f"mounts: {name}: {m.get('mountPath')} uses subPath (no live updates)")
    return out


def _prestop_secs(c) -> int:
    """How long a container's preStop waits: a `sleep` action, or an exec of `... sleep N`."""
    hook = (c.get("lifecycle") or {}).get("preStop") or {}
    if "sleep" in hook:
        return int(hook["sleep"].get("seconds") or 0)
    command = [str(a) for a in (hook.get("exec") or {}).get("command") or []]
    if len(command) >= 2 and command[-2] == "sleep" and command[-1].isdigit():
        return int(command[-1])
    return 0


def _check_grace(name, spec, fence, others, where) -> list[str]:
    grace = spec.get("terminationGracePeriodSeconds", 30)
    own = _prestop_secs(fence) + DRAIN_SECS
    if where == "init":
        # Native: the FHIR server stops first (its preStop), then fhir-fence drains.
        need = max((_prestop_secs(c) for c in others), default=0) + own
    else:
        # Classic: all stop at once; the FHIR server must outlive fhir-fence's drain.
        need = own
        for c in others:
            if _prestop_secs(c) < own:
                return [f"grace: {name}: container {c.get('name')} stops after {_prestop_secs(c)} s, "
                        f"before fhir-fence's preStop + drain ({own} s)"]
    if grace < need:
        return [f"grace: {name}: terminationGracePeriodSeconds {grace} < {need} s the drain can take"]
    return []


def _selects(selector, labels) -> bool:
    """Whether a LabelSelector (matchLabels) or a Service's plain selector selects `labels`."""
    if not selector:
        return False
    if "matchExpressions" in selector:
        return False  # not understood here: counted as not selecting, so the rules fail loudly
    want = selector.get("matchLabels", {}) if "matchLabels" in selector else selector
    return bool(want) and all(labels.get(k) == v for k, v in want.items())


def _check_network_policy(name, labels, docs, ports, public, admin) -> list[str]:
    policies = [d for d in docs if d.get("kind") == "NetworkPolicy" and _selects(d["spec"].get("podSelector"), labels)]
    if not policies:
        return [f"network-policy: {name}: no NetworkPolicy selects the pod"]
    out = []
    admitted = set()
    for p in policies:
        pname = p["metadata"].get("name")
        if "Ingress" not in (p["spec"].get("policyTypes") or ["Ingress"]):
            out.append(f"network-policy: {name}: {pname} does not restrict Ingress")
        for rule in p["spec"].get("ingress") or []:
            rports = rule.get("ports")
            if not rports:
                out.append(f"network-policy: {name}: {pname} admits every port")
                continue
            for rp in rports:
                port = _resolve(rp.get("port"), ports)
                if port not in (public, admin) or rp.get("endPort"):
                    out.append(f"network-policy: {name}: {pname} admits port {rp.get('port')!r}, not fhir-fence's")
                    continue
                admitted.add(port)
                if port == admin:
                    sources = rule.get("from") or []
                    if not sources or any(set(s) != {"namespaceSelector"} for s in sources):
                        out.append(f"network-policy: {name}: {pname} admits the admin port from outside a "
                                   f"monitoring namespaceSelector")
    if public not in admitted:
        out.append(f"network-policy: {name}: fhir-fence's port {public} is not admitted (clients cannot reach it)")
    return out


def _check_services(name, labels, docs, ports, public, admin) -> list[str]:
    out = []
    services = [d for d in docs if d.get("kind") == "Service" and _selects(d["spec"].get("selector"), labels)]
    reaching_public = False
    for s in services:
        sname = s["metadata"].get("name")
        metrics = (s["metadata"].get("labels") or {}).get("fhir-fence.dev/role") == "metrics"
        allowed = admin if metrics else public
        for p in s["spec"].get("ports") or []:
            target = _resolve(p.get("targetPort", p.get("port")), ports)
            if target != allowed:
                out.append(f"service: {name}: Service {sname} targets port {p.get('targetPort')!r}, "
                           f"not fhir-fence's {'admin' if metrics else 'FHIR'} port")
            elif not metrics:
                reaching_public = True
    if not reaching_public:
        out.append(f"service: {name}: no Service targets fhir-fence's FHIR port")
    return out


def main(files: list[str]) -> int:
    docs = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            docs += list(yaml.safe_load_all(fh))
    problems = check(docs)
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

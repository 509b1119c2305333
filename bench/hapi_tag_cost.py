#!/usr/bin/env python3
"""What the tenant tag costs HAPI itself: HAPI's own CPU (all its threads,
/proc/PID/task/*/schedstat; the process found by `server.port=PORT` in its command line) and wall
time per 20-entry Observation search,
for tagged, security-labelled and unlabelled copies of the same data and several query forms,
plain and gzip'd answers, interleaved, c=1, with `Cache-Control: no-cache` (HAPI's search cache
would otherwise answer repeats). Run it against a HAPI nobody else uses: a shared one's CPU
includes the other users' requests.

Usage: bench/hapi_tag_cost.py ROUNDS N
  HAPI_URL (default http://127.0.0.1:18090/fhir: `HAPI_PORT=18090 scripts/hapi start`);
  ENCODINGS (default "plain gzip"); SEED_FROM=URL copies the tagged data from another HAPI
  (e.g. one started with a different tag storage mode, which needs the same data).
Needs the tagged data of tenant `perfq` (prefix `perfq7k`: Patient pt1, Observations ob1…ob24),
written through fhir-fence by `bench/gateway-compare` or `bench/hapi-search` (HAPI_URL pointing
at the same HAPI). The other copies are written here, straight to HAPI, from Observation ob1:
  perfq7kU-…  no tenant coding at all (no tenant's search can match it)
  perfq7kS-…  the tenant coding in `meta.security` instead of `meta.tag`
  perfq7kX-…  ANOTHER tenant's data (`globex` in fhir-fence's system) that also carries a tag of
              another system whose code happens to be `perfq`: the script checks that
              `_tag=perfq` (code alone) matches it and `_tag=system|perfq` does not.
Before the measured rounds every form is sent WARM times (default 100, per encoding): a freshly
started HAPI's JIT makes its first searches cost 5-10x more."""
import http.client, json, os, statistics, subprocess, sys, time
from urllib.parse import urlparse

rounds, n = int(sys.argv[1]), int(sys.argv[2])
HAPI = urlparse(os.environ.get("HAPI_URL", "http://127.0.0.1:18090/fhir"))
BASE = HAPI.path.rstrip("/")
SYSTEM = "https://fhir-fence.dev/CodeSystem/tenant"
ENCODINGS = os.environ.get("ENCODINGS", "plain gzip").split()


def conn():
    return http.client.HTTPConnection(HAPI.hostname, HAPI.port, timeout=120)


def put(path, resource):
    c = conn()
    h = {"Content-Type": "application/fhir+json", "X-Meta-Snapshot-Mode": "TAG, PROFILE, SECURITY_LABEL"}
    c.request("PUT", f"{BASE}/{path}", body=json.dumps(resource), headers=h)
    r = c.getresponse(); r.read()
    assert r.status in (200, 201), (path, r.status)


SEED_FROM = os.environ.get("SEED_FROM")
if SEED_FROM:
    # Copy the tagged data (as fhir-fence stored it) from another HAPI, resource by resource.
    import urllib.request
    for path in ["Patient/perfq7k-pt1"] + [f"Observation/perfq7k-ob{i}" for i in range(1, 25)]:
        with urllib.request.urlopen(urllib.request.Request(f"{SEED_FROM}/{path}", headers={"Accept": "application/fhir+json"})) as f:
            res = json.loads(f.read())
        res["meta"] = {"tag": res["meta"]["tag"]}
        put(path, res)
c = conn()
c.request("GET", f"{BASE}/Observation/perfq7k-ob1", headers={"Accept": "application/fhir+json"})
r = c.getresponse()
assert r.status == 200, "no tagged data: run bench/gateway-compare (or bench/hapi-search) against this HAPI first, or SEED_FROM"
tagged = json.loads(r.read())
copies = {
    "perfq7kU": {},
    "perfq7kS": {"security": [{"system": SYSTEM, "code": "perfq"}]},
    "perfq7kX": {"tag": [{"system": SYSTEM, "code": "globex"}, {"system": "https://example.org/labels", "code": "perfq"}]},
}
for prefix, meta in copies.items():
    # `X-Meta-Snapshot-Mode`: the stored meta is exactly this one (HAPI would otherwise carry
    # tags and labels forward from an earlier version of the same id).
    put(f"Patient/{prefix}-pt1", {"resourceType": "Patient", "id": f"{prefix}-pt1", "meta": meta, "name": [{"family": "Perf"}]})
    for i in range(1, 25):
        o = json.loads(json.dumps(tagged))
        o["id"] = f"{prefix}-ob{i}"
        o["meta"] = meta
        o["subject"] = {"reference": f"Patient/{prefix}-pt1"}
        put(f"Observation/{prefix}-ob{i}", o)

pid = subprocess.run(["pgrep", "-f", f"server.port={HAPI.port}"], capture_output=True, text=True).stdout.split()[0]
tick = os.sysconf("SC_CLK_TCK")


def cpu():
    """(s on CPU of the live threads, precise; their ids; the process total in ticks, which
    keeps the time of threads that ended)"""
    ns, tids = 0, set()
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            ns += int(open(f"/proc/{pid}/task/{t}/schedstat").read().split()[0])
            tids.add(t)
        except (FileNotFoundError, ProcessLookupError):
            pass
    st = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return ns / 1e9, tids, (int(st[11]) + int(st[12])) / tick


def spent(a, b):
    return b[0] - a[0] if a[1] <= b[1] else b[2] - a[2]


Q = "Observation?subject=Patient/{p}-pt1&_count=20"
forms = {
    "tagged, `_tag=system|code` (fhir-fence's form)": (Q + f"&_tag={SYSTEM}%7Cperfq", "perfq7k"),
    "tagged, `_tag=code` (no system)": (Q + "&_tag=perfq", "perfq7k"),
    "tagged, no tenant criterion": (Q, "perfq7k"),
    "security label, `_security=system|code`": (Q + f"&_security={SYSTEM}%7Cperfq", "perfq7kS"),
    "security label, no tenant criterion": (Q, "perfq7kS"),
    "unlabelled, no tenant criterion": (Q, "perfq7kU"),
}
encodings = {"plain": {}, "gzip": {"Accept-Encoding": "gzip"}}


def entries(path):
    c = conn()
    c.request("GET", path, headers={"Accept": "application/fhir+json", "Cache-Control": "no-cache"})
    return len(json.loads(c.getresponse().read()).get("entry", []))


leak = entries(f"{BASE}/{Q.format(p='perfq7kX')}&_tag=perfq")
safe = entries(f"{BASE}/{Q.format(p='perfq7kX')}&_tag={SYSTEM}%7Cperfq")
print(f"another tenant's Observations carrying a foreign tag with the code `perfq`: `_tag=perfq` matches {leak}, "
      f"`_tag={SYSTEM}|perfq` matches {safe}")
WARM = int(os.environ.get("WARM", "100"))
for name, (q, p) in forms.items():
    for ename in ENCODINGS:
        c = conn()
        for i in range(WARM):
            c.request("GET", f"{BASE}/{q.format(p=p)}", headers={"Accept": "application/fhir+json", "Cache-Control": "no-cache", **encodings[ename]})
            c.getresponse().read()
print("warm-up done", file=sys.stderr, flush=True)
res = {}
for r in range(rounds):
    items = list(forms.items())
    items = items[r % len(items):] + items[:r % len(items)]
    for name, (q, p) in items:
        path = f"{BASE}/{q.format(p=p)}"
        for ename in ENCODINGS:
            c = conn()
            h = {"Accept": "application/fhir+json", "Cache-Control": "no-cache", **encodings[ename]}
            for i in range(3):
                c.request("GET", path, headers=h)
                resp = c.getresponse(); body = resp.read()
            if ename == "plain":
                b = json.loads(body)
                assert len(b.get("entry", [])) == 20, (name, body[:300])
            a, t0 = cpu(), time.perf_counter()
            for i in range(n):
                c.request("GET", path, headers=h)
                resp = c.getresponse(); body = resp.read()
                assert resp.status == 200, (resp.status, body[:200])
            b, t1 = cpu(), time.perf_counter()
            c.close()
            res.setdefault((name, ename), []).append((spent(a, b) / n, (t1 - t0) / n))
        print(f"round {r + 1}: {name} done", file=sys.stderr, flush=True)
BASELINE = "unlabelled, no tenant criterion"
print(f"| data, query | answer | HAPI CPU ms per search (median of {rounds} rounds of {n}) | minus the unlabelled search of the same round (median of the paired differences) | wall ms per search | rounds (CPU ms) |")
print("|---|---|---|---|---|---|")
for name in forms:
    for ename in ENCODINGS:
        v = res[(name, ename)]
        base = res[(BASELINE, ename)]
        diff = statistics.median(x[0] - y[0] for x, y in zip(v, base)) * 1e3
        print(f"| {name.replace('|', chr(92) + '|')} | {ename} | {statistics.median(x[0] for x in v)*1e3:.2f} | {'—' if name == BASELINE else f'{diff:+.2f}'} | "
              f"{statistics.median(x[1] for x in v)*1e3:.2f} | {' '.join(f'{x[0]*1e3:.1f}' for x in v)} |")

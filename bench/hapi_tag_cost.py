#!/usr/bin/env python3
"""What the tenant tag costs HAPI itself: HAPI's own CPU (utime+stime of its process, found by
`server.port=8090` in its command line) and wall time per 20-entry Observation search, for
tagged and untagged data and query forms, plain and gzip'd answers, interleaved, c=1, with
`Cache-Control: no-cache` (HAPI's search cache would otherwise answer repeats).

Usage: bench/hapi_tag_cost.py ROUNDS N   (after `bench/hapi-search`, which writes the tagged
data of tenant `perfq` through fhir-fence). The untagged copy (prefix `perfq7kU`, no tenant
coding: no tenant's searches can match it) is written here, straight to HAPI."""
import http.client, json, os, statistics, subprocess, sys, time
rounds, n = int(sys.argv[1]), int(sys.argv[2])

def put(path, resource):
    c = http.client.HTTPConnection("127.0.0.1", 8090)
    c.request("PUT", path, body=json.dumps(resource), headers={"Content-Type": "application/fhir+json"})
    r = c.getresponse(); r.read()
    assert r.status in (200, 201), r.status

put("/fhir/Patient/perfq7kU-pt1", {"resourceType": "Patient", "id": "perfq7kU-pt1", "name": [{"family": "Perf"}]})
c = http.client.HTTPConnection("127.0.0.1", 8090)
c.request("GET", "/fhir/Observation/perfq7k-ob1", headers={"Accept": "application/fhir+json"})
tagged = json.loads(c.getresponse().read())
for i in range(1, 25):
    o = json.loads(json.dumps(tagged))
    o["id"] = f"perfq7kU-ob{i}"
    o["meta"] = {}
    o["subject"] = {"reference": "Patient/perfq7kU-pt1"}
    put(f"/fhir/Observation/perfq7kU-ob{i}", o)
pid = subprocess.run(["pgrep", "-f", "server.port=8090"], capture_output=True, text=True).stdout.split()[0]
tick = os.sysconf("SC_CLK_TCK")
def cpu():
    st = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(st[11]) + int(st[12])) / tick
TAG = "_tag=https://fhir-fence.dev/CodeSystem/tenant%7Cperfq"
forms = {
    "tagged, with `_tag` (fhir-fence's form)": f"/fhir/Observation?subject=Patient/perfq7k-pt1&_count=20&{TAG}",
    "tagged, without `_tag`": "/fhir/Observation?subject=Patient/perfq7k-pt1&_count=20",
    "untagged, without `_tag`": "/fhir/Observation?subject=Patient/perfq7kU-pt1&_count=20",
}
encodings = {"plain": {}, "gzip": {"Accept-Encoding": "gzip"}}
res = {}
for r in range(rounds):
    for name, path in forms.items():
        for ename, eh in encodings.items():
            c = http.client.HTTPConnection("127.0.0.1", 8090)
            h = {"Accept": "application/fhir+json", "Cache-Control": "no-cache", **eh}
            for i in range(3):
                c.request("GET", path, headers=h); c.getresponse().read()
            a, t0 = cpu(), time.perf_counter()
            for i in range(n):
                c.request("GET", path, headers=h)
                resp = c.getresponse(); body = resp.read()
                assert resp.status == 200, (resp.status, body[:200])
            b, t1 = cpu(), time.perf_counter()
            c.close()
            res.setdefault((name, ename), []).append(((b - a) / n, (t1 - t0) / n))
print("| data, query | answer | HAPI CPU ms per search (median of rounds) | wall ms per search | rounds (CPU) |")
print("|---|---|---|---|---|")
for (name, ename), v in res.items():
    print(f"| {name} | {ename} | {statistics.median(x[0] for x in v)*1e3:.2f} | {statistics.median(x[1] for x in v)*1e3:.2f} | {' '.join(f'{x[0]*1e3:.1f}' for x in v)} |")

#!/usr/bin/env python3
"""Writes the benchmark's origin: static FHIR JSON as fhir-fence's upstream stores it (tenant
coding in meta.tag, tenant prefix on every id), an nginx config serving it, an nginx reverse
proxy config in front of it, and a fhir-fence config (RS256 issuer) in front of it.

Usage: bench/origin.py OUT_DIR ORIGIN_PORT NGINX_PORT FENCE_PORT ADMIN_PORT REPO_DIR

BENCH_TENANTS (default 3): the number of tenants in all. Beyond bencha, benchb and benchc, tenants
s00001, s00002, ... are written as tenant files (`lifecycle.tenants_dir`, conf/tenants), each
asserted by the HS256 issuer `benchs` (bench/scale_tokens.py signs its tokens), each with its own
1 KB Patient p1 at the origin: the set-up of `bench/tenants-at-scale` (issue 20).
"""
import json
import os
import shutil
import sys

out, origin_port, nginx_port, fence_port, admin_port, repo = sys.argv[1:7]
SYSTEM = "https://fhir-fence.dev/CodeSystem/tenant"
TENANTS = ["bencha", "benchb", "benchc"]
EXTRA = [f"s{n:05d}" for n in range(1, max(int(os.environ.get("BENCH_TENANTS", "2")) - len(TENANTS), 0) + 1)]
ORIGIN = f"http://127.0.0.1:{origin_port}/fhir"
root = os.path.join(out, "root")
os.makedirs(os.path.join(root, "fhir", "Patient"), exist_ok=True)
os.makedirs(os.path.join(root, "fhir", "Organization"), exist_ok=True)


def patient(tenant, n):
    """A realistic Patient of about 1 KB."""
    return {
        "resourceType": "Patient",
        "id": f"{tenant}-p{n}",
        "meta": {"versionId": "3", "lastUpdated": "2026-11-20T10:15:30.123+00:00",
                 "tag": [{"system": SYSTEM, "code": tenant}]},
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Ada Lovelace</div>"},
        "identifier": [{"use": "usual", "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                        "system": "urn:oid:1.2.36.146.595.217.0.1", "value": f"{12345 + n}"}],
        "active": True,
        "name": [{"use": "official", "family": "Lovelace", "given": ["Ada", "Augusta"]},
                 {"use": "usual", "given": ["Ada"]}],
        "telecom": [{"system": "phone", "value": "(03) 5555 6473", "use": "work", "rank": 1},
                    {"system": "email", "value": "ada@example.org", "use": "home"}],
        "gender": "female",
        "birthDate": "1815-12-10",
        "address": [{"use": "home", "type": "both", "line": ["534 Erewhon St"], "city": "PleasantVille",
                     "district": "Rainbow", "state": "Vic", "postalCode": "3999",
                     "period": {"start": "1974-12-25"}}],
        "contact": [{"relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "N"}]}],
                     "name": {"family": "du Marché", "given": ["Bénédicte"]},
                     "telecom": [{"system": "phone", "value": "+33 (237) 998327"}], "gender": "female"}],
        "managingOrganization": {"reference": f"Organization/{tenant}-org1"},
    }


def write(path, value):
    # UTF-8 as FHIR servers send it (HAPI writes "é", not "\u00e9").
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, separators=(",", ":"), ensure_ascii=False)


for t in TENANTS:
    write(os.path.join(root, "fhir", "Patient", f"{t}-p1"), patient(t, 1))
    # The target of every Patient's managingOrganization, for the reference check of a write.
    write(os.path.join(root, "fhir", "Organization", f"{t}-org1"),
          {"resourceType": "Organization", "id": f"{t}-org1", "meta": {"tag": [{"system": SYSTEM, "code": t}]},
           "name": "Org"})
    entries = [{"fullUrl": f"{ORIGIN}/Patient/{t}-p{n}", "resource": patient(t, n), "search": {"mode": "match"}}
               for n in range(1, 101)]
    write(os.path.join(root, f"search-{t}.json"), {
        "resourceType": "Bundle", "id": "7d1c0a4e-search", "type": "searchset", "total": 100,
        "link": [{"relation": "self", "url": f"{ORIGIN}/Patient?name=lovelace&_tag={SYSTEM}|{t}"}],
        "entry": entries})

for t in EXTRA:
    write(os.path.join(root, "fhir", "Patient", f"{t}-p1"), patient(t, 1))

# A client's 1 KB update of Patient/p1 (bench/instructions' write): the client's view, ids local.
client_patient = patient("x", 1)
client_patient["id"] = "p1"
del client_patient["meta"]["tag"]
client_patient["managingOrganization"]["reference"] = "Organization/org1"
write(os.path.join(out, "put-patient.json"), client_patient)

params = [{"name": n, "type": ty} for n, ty in
          [("_id", "token"), ("_tag", "token"), ("_security", "token"), ("name", "string"), ("_lastUpdated", "date")]]
write(os.path.join(root, "metadata.json"), {
    "resourceType": "CapabilityStatement", "status": "active", "kind": "instance", "fhirVersion": "4.0.1",
    "date": "2026-11-27", "format": ["json"],
    "rest": [{"mode": "server", "resource": [
        {"type": t, "interaction": [{"code": "read"}, {"code": "search-type"}], "searchParam": params}
        for t in ["Patient", "Organization"]]}]})

mime = "types { } default_type application/fhir+json; charset utf-8;"
with open(os.path.join(out, "origin.conf"), "w") as f:
    f.write(f"""worker_processes 1;
pid {out}/origin.pid;
error_log {out}/origin-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  {mime}
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{origin_port} backlog=4096;
    root {root};
    location = /fhir/metadata {{ try_files /metadata.json =404; }}
    location = /fhir/Patient {{
      if ($args ~ "benchb") {{ rewrite ^ /search-benchb.json last; }}
      rewrite ^ /search-bencha.json last;
    }}
    # A PUT is answered with the stored file, as an upstream answers an update with the
    # resource (static files refuse PUT with 405; that becomes the file with 200).
    location / {{ error_page 405 =200 $uri; }}
  }}
}}
""")

with open(os.path.join(out, "proxy.conf"), "w") as f:
    f.write(f"""worker_processes 2;
pid {out}/proxy.pid;
error_log {out}/proxy-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log {out}/proxy-access.log;
  keepalive_requests 1000000;
  upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{nginx_port} backlog=4096;
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
""")

keys = os.path.join(repo, "fixtures", "keys")
# The config sits in a directory of its own, as a mounted ConfigMap would: fhir-fence watches
# the config's directory, and the audit file and logs written beside it would wake the watcher.
os.makedirs(os.path.join(out, "conf"), exist_ok=True)
# BENCH_WORKERS: fhir-fence's worker threads (default: one per core).
workers = f"workers = {os.environ['BENCH_WORKERS']}\n" if os.environ.get("BENCH_WORKERS") else ""
tenants_dir = os.path.join(out, "conf", "tenants")
shutil.rmtree(tenants_dir, ignore_errors=True)
scale = ""
if EXTRA:
    os.makedirs(tenants_dir)
    for t in EXTRA:
        with open(os.path.join(tenants_dir, f"{t}.toml"), "w") as f:
            f.write(f'prefix = "{t}"\nupstream = "origin"\nstatus = "active"\nissuers = ["benchs"]\n')
    with open(os.path.join(out, "conf", "benchs.secret"), "w") as f:
        f.write("bench-scale-secret-0123456789abcdef0123456789\n")
    scale = f"""
[lifecycle]
tenants_dir = "tenants"

[issuers.benchs]
iss = "https://issuer-s.bench.fhir-fence.dev"
audience = ["fhir-fence-bench"]
algorithms = ["HS256"]
secret_file = "benchs.secret"
tenant_claim = "$.tenant"
"""
# BENCH_LIMITS (bench/instructions): `local` or `redis` gives the measured tenant a rate limit it
# never reaches (so every request pays the limiter, none is refused), kept in this process or in
# the Redis at BENCH_REDIS_URL (leased in batches of BENCH_REDIS_BATCH units; a generous timeout,
# as everything runs under valgrind).
limits = ""
if os.environ.get("BENCH_LIMITS") in ("local", "redis"):
    limits = "[tenants.benchb.limits]\nrate_per_second = 100000\nburst = 100000\n"
if os.environ.get("BENCH_LIMITS") == "redis":
    limits += f"""
[limits]
backend = "redis"

[redis]
url = "{os.environ['BENCH_REDIS_URL']}"
timeout_ms = 1000
batch = {os.environ.get('BENCH_REDIS_BATCH', '100')}
"""
with open(os.path.join(out, "conf", "fence.toml"), "w") as f:
    f.write(f"""[server]
listen = "127.0.0.1:{fence_port}"
public_base = "http://127.0.0.1:{fence_port}/fhir"
{workers}
[admin]
listen = "127.0.0.1:{admin_port}"

[tenancy]
marker = "tag"
system = "{SYSTEM}"

[audit]
sink = "file"
file = "{out}/fence-audit.jsonl"

[upstreams.origin]
base_url = "{ORIGIN}"
pool_size = 128

[issuers.bench]
iss = "https://issuer.bench.fhir-fence.dev"
audience = ["fhir-fence-bench"]
algorithms = ["RS256"]
jwks_file = "{keys}/rs256-jwks.json"
signing_key_file = "{keys}/rs256-private.pem"
tenant_claim = "$.tenant"
tenants = {json.dumps(TENANTS)}

[tenants.bencha]
prefix = "bencha"
upstream = "origin"
status = "active"
# The noisy neighbour: limited to 200 reads per second.
[tenants.bencha.limits]
rate_per_second = 200
burst = 200

[tenants.benchb]
prefix = "benchb"
upstream = "origin"
status = "active"

# Over its limit at once (`bench/instructions`: what a refusal costs).
[tenants.benchc]
prefix = "benchc"
upstream = "origin"
status = "active"
[tenants.benchc.limits]
rate_per_second = 1
burst = 1
{scale}{limits}""")

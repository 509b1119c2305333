#!/usr/bin/env python3
"""Measures one fhir-fence process with N tenants (issue 20; run by bench/tenants-at-scale):
start-up, reload, resident memory, and /metrics once every tenant has sent a request.

Usage: bench/scale.py BIN OUT_DIR N [TENANT_LABELS]

OUT_DIR holds what bench/origin.py wrote with BENCH_TENANTS=N (its nginx origin running).
TENANT_LABELS, if given, is written as `[metrics] tenant_labels` (default: the built-in one).
Prints one JSON object.
"""
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

BIN, OUT, N = sys.argv[1], sys.argv[2], int(sys.argv[3])
LABELS = sys.argv[4] if len(sys.argv) > 4 else None
BASE = int(os.environ.get("SCALE_PORT_BASE", "18691"))
FENCE_PORT, ADMIN_PORT = BASE + 2, BASE + 3
CONF = os.path.join(OUT, "conf", "fence.toml")

if LABELS:
    with open(CONF, "a") as f:
        f.write(f'\n[metrics]\ntenant_labels = "{LABELS}"\n')


def admin(path, method="GET"):
    req = urllib.request.Request(f"http://127.0.0.1:{ADMIN_PORT}{path}", method=method)
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, r.read()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def wait_for(path, deadline):
    while time.monotonic() < deadline:
        try:
            if admin(path)[0] == 200:
                return time.monotonic()
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"{path} did not answer 200")


env = dict(os.environ, FHIR_FENCE_LOG="warn")
log = open(os.path.join(OUT, f"fence-{N}.log"), "w")
started = time.monotonic()
proc = subprocess.Popen([BIN, "serve", "--config", CONF], stdout=log, stderr=subprocess.STDOUT, env=env)
try:
    healthy = wait_for("/healthz", started + 120)
    ready = wait_for("/readyz", started + 120)
    time.sleep(0.5)
    rss_idle = rss_kib(proc.pid)

    reloads = []
    for _ in range(5):
        t = time.monotonic()
        status, body = admin("/reload", "POST")
        reloads.append((time.monotonic() - t) * 1000)
        assert status == 200, body
    time.sleep(0.5)
    rss_reloaded = rss_kib(proc.pid)

    # One read of its own Patient per tenant.
    tokens = []
    for t in ["bencha", "benchb"][:N]:
        tokens.append(subprocess.run([BIN, "token", "--config", CONF, "--tenant", t, "--ttl", "7200"],
                                     capture_output=True, text=True, check=True).stdout.strip())
    if N > 2:
        secret = os.path.join(OUT, "conf", "benchs.secret")
        tokens += subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "scale_tokens.py"),
                                  secret, str(N - 2)], capture_output=True, text=True, check=True).stdout.split()
    statuses = {}
    lock = threading.Lock()

    def send(part):
        conn = http.client.HTTPConnection("127.0.0.1", FENCE_PORT, timeout=30)
        for token in part:
            conn.request("GET", "/fhir/Patient/p1", headers={"Authorization": f"Bearer {token}"})
            r = conn.getresponse()
            r.read()
            with lock:
                statuses[r.status] = statuses.get(r.status, 0) + 1
        conn.close()

    t = time.monotonic()
    threads = [threading.Thread(target=send, args=(tokens[i::4],)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    served_secs = time.monotonic() - t
    assert statuses == {200: N}, statuses
    time.sleep(0.5)
    rss_served = rss_kib(proc.pid)

    scrapes, size, text = [], 0, b""
    for _ in range(7):
        t = time.monotonic()
        _, text = admin("/metrics")
        scrapes.append((time.monotonic() - t) * 1000)
        size = len(text)
    labels = set()
    for line in text.decode().splitlines():
        if line.startswith("fhir_fence_requests_total{"):
            labels.add(line.split('tenant="', 1)[1].split('"', 1)[0])
    print(json.dumps({
        "tenants": N,
        "tenant_labels": LABELS or "default",
        "startup_ms": round((healthy - started) * 1000),
        "ready_ms": round((ready - started) * 1000),
        "reload_ms_median": round(statistics.median(reloads)),
        "reload_ms_max": round(max(reloads)),
        "rss_idle_kib": rss_idle,
        "rss_after_reloads_kib": rss_reloaded,
        "rss_served_kib": rss_served,
        "served_per_sec": round(N / served_secs),
        "metrics_bytes": size,
        "metrics_scrape_ms_median": round(statistics.median(scrapes), 1),
        "metrics_tenant_values": len(labels),
    }))
finally:
    proc.kill()
    proc.wait()

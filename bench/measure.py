#!/usr/bin/env python3
"""Runs oha against the three targets bench/run started and prints a Markdown report.

Each configuration runs BENCH_ROUNDS times (default 3), the targets in rotating order so that
machine noise falls on all of them alike; the report gives medians over the rounds.
"""
import json
import time
import os
import shutil
import statistics
import subprocess
import urllib.request

SECS = int(os.environ.get("BENCH_SECS", "8"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SYSTEM = "https://fhir-fence.dev/CodeSystem/tenant"
O, N, F, H = (os.environ[k] for k in ("ORIGIN_PORT", "NGINX_PORT", "FENCE_PORT", "FORWARD_PORT"))
TOKEN_A, TOKEN_B = os.environ["TOKEN_A"], os.environ["TOKEN_B"]

# (name, base, token, tenant-scoped paths on it)
TARGETS = [
    ("direct", f"http://127.0.0.1:{O}/fhir", None),
    ("nginx", f"http://127.0.0.1:{N}/fhir", None),
    ("fhir-fence", f"http://127.0.0.1:{F}/fhir", TOKEN_B),
    # Not a product: the plain hyper forwarder of benches/export_filter.rs (no checks, no
    # tenancy), the floor of any proxy built on the HTTP stack fhir-fence uses.
    ("hyper", f"http://127.0.0.1:{H}/fhir", None),
]
SCENARIOS = {
    "read 1 KB": {"plain": "Patient/benchb-p1", "fence": "Patient/p1"},
    "search Bundle, 100 entries": {
        "plain": f"Patient?name=lovelace&_tag={SYSTEM}%7Cbenchb",
        "fence": "Patient?name=lovelace",
    },
}
CONCURRENCY = [1, 16, 64]
# Quicker partial runs while working on one path, e.g. BENCH_ONLY=read BENCH_CONC=1,16 BENCH_NOISY=0.
if os.environ.get("BENCH_ONLY"):
    SCENARIOS = {k: v for k, v in SCENARIOS.items() if os.environ["BENCH_ONLY"] in k}
if os.environ.get("BENCH_CONC"):
    CONCURRENCY = [int(c) for c in os.environ["BENCH_CONC"].split(",")]


def url_for(target, scenario):
    name, base, _ = target
    return f"{base}/{SCENARIOS[scenario]['fence' if name == 'fhir-fence' else 'plain']}"


def oha(url, conc, secs, token=None, rate=None, prefix=()):
    cmd = [*prefix, "oha", "-z", f"{secs}s", "-c", str(conc), "--no-tui", "--output-format", "json"]
    if rate:
        cmd += ["-q", str(rate)]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    r = json.loads(out)
    lat = r["latencyPercentiles"]
    return {
        "p50": lat["p50"] * 1000,
        "p99": lat["p99"] * 1000,
        "rps": r["summary"]["requestsPerSec"],
        "status": r.get("statusCodeDistribution", {}),
    }


def check(target, scenario):
    """Every target must answer 200 with the same resource(s) before it is measured."""
    req = urllib.request.Request(url_for(target, scenario))
    if target[2]:
        req.add_header("Authorization", f"Bearer {target[2]}")
    with urllib.request.urlopen(req) as resp:
        body = json.load(resp)
    if body["resourceType"] == "Bundle":
        assert len(body["entry"]) == 100, f"{target[0]}: {len(body['entry'])} entries"
    else:
        assert body["id"] in ("p1", "benchb-p1"), body["id"]


def main():
    for s in SCENARIOS:
        for t in TARGETS:
            check(t, s)
    results = {}  # (scenario, conc, target) -> [runs]
    for rnd in range(ROUNDS):
        for s in SCENARIOS:
            for c in CONCURRENCY:
                k = rnd % len(TARGETS)
                order = TARGETS[k:] + TARGETS[:k]
                for t in order:
                    r = oha(url_for(t, s), c, SECS, t[2])
                    bad = {k: v for k, v in r["status"].items() if k != "200"}
                    assert not bad, f"{t[0]} {s} c={c}: non-200 answers {bad}"
                    results.setdefault((s, c, t[0]), []).append(r)
    med = lambda runs, k: statistics.median(x[k] for x in runs)
    print(f"## Proxy overhead (oha, {SECS} s per run, median of {ROUNDS} rounds)\n")
    print("| request | c | direct p50 / p99 ms | direct req/s | nginx added p50 / p99 ms | nginx req/s "
          "| fhir-fence added p50 / p99 ms | fhir-fence req/s | added p50 ratio (fence/nginx) | throughput ratio (fence/nginx) "
          "| hyper forwarder added p50 ms | hyper forwarder req/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in SCENARIOS:
        for c in CONCURRENCY:
            d, n, f, h = (results[(s, c, name)] for name in ("direct", "nginx", "fhir-fence", "hyper"))
            dp50, dp99 = med(d, "p50"), med(d, "p99")
            np50, np99 = med(n, "p50") - dp50, med(n, "p99") - dp99
            fp50, fp99 = med(f, "p50") - dp50, med(f, "p99") - dp99
            ratio = f"{fp50 / np50:.2f}" if np50 > 0 else "n/a"
            print(f"| {s} | {c} | {dp50:.3f} / {dp99:.3f} | {med(d, 'rps'):.0f} | {np50:.3f} / {np99:.3f} | "
                  f"{med(n, 'rps'):.0f} | {fp50:.3f} / {fp99:.3f} | {med(f, 'rps'):.0f} | {ratio} | "
                  f"{med(f, 'rps') / med(n, 'rps'):.2f} | {med(h, 'p50') - dp50:.3f} | {med(h, 'rps'):.0f} |")
    if os.environ.get("BENCH_NOISY", "1") != "0":
        noisy()


def pin():
    """For the noisy-neighbour run: fhir-fence on CPU 0, the load generators and the origin on
    the others, so that B's latency measures fhir-fence rather than the generators' share of
    the same cores. Returns the prefix for the generators' commands."""
    cpus = os.cpu_count() or 1
    if cpus < 2 or not shutil.which("taskset"):
        return []
    rest = f"1-{cpus - 1}"
    subprocess.run(["taskset", "-a", "-p", "-c", "0", os.environ["FENCE_PID"]], check=True, capture_output=True)
    with open(os.path.join(os.environ["OUT"], "origin.pid")) as f:
        origin = f.read().strip()
    for pid in [origin] + subprocess.run(["pgrep", "-P", origin], capture_output=True, text=True).stdout.split():
        subprocess.run(["taskset", "-a", "-p", "-c", rest, pid], check=True, capture_output=True)
    return ["taskset", "-c", rest]


AUDIT = os.path.join(os.environ.get("OUT", ""), "fence-audit.jsonl")


def audit_p99(tenant, since):
    """p99s (ms) from the audit lines written after byte `since` for `tenant`: of fhir-fence's
    handling time (`micros`, which includes the wait on the origin), and of its own share
    (`micros - upstream_micros`), which leaves out the origin — on this machine the origin shares
    a CPU with both load generators."""
    time.sleep(0.2)  # the audit writer flushes every few ms
    with open(AUDIT, "rb") as f:
        f.seek(since)
        records = [r for r in map(json.loads, f.read().splitlines()) if r.get("tenant") == tenant]
    if not records:
        return float("nan"), float("nan")
    handling = sorted(r["micros"] for r in records)
    own = sorted(r["micros"] - r.get("upstream_micros", 0) for r in records)
    at = int(0.99 * (len(records) - 1))
    return handling[at] / 1000, own[at] / 1000


def noisy():
    """Tenant B at a steady 400 req/s alone, then with tenant A sending 10x its 200/s limit."""
    fence = TARGETS[2][1]
    prefix = pin()
    b_url, a_url = f"{fence}/Patient/p1", f"{fence}/Patient/p1"
    alone, crowded, a_status = [], [], {}
    inside_alone, inside_crowded, own_alone, own_crowded = [], [], [], []
    # p99 over a few thousand requests on a shared VM swings by tens of percent from minute to
    # minute: more rounds, alone and crowded back to back, and the median of the paired rises.
    rounds = int(os.environ.get("BENCH_NOISY_ROUNDS", "7"))
    for _ in range(rounds):
        mark = os.path.getsize(AUDIT)
        alone.append(oha(b_url, 8, SECS, TOKEN_B, rate=400, prefix=prefix)["p99"])
        handling, own = audit_p99("benchb", mark)
        inside_alone.append(handling)
        own_alone.append(own)
        mark = os.path.getsize(AUDIT)
        a = subprocess.Popen([*prefix, "oha", "-z", f"{SECS + 2}s", "-c", "32", "-q", "2000", "--no-tui",
                              "--output-format", "json", "-H", f"Authorization: Bearer {TOKEN_A}", a_url],
                             stdout=subprocess.PIPE, text=True)
        crowded.append(oha(b_url, 8, SECS, TOKEN_B, rate=400, prefix=prefix)["p99"])
        out = json.loads(a.communicate()[0])
        handling, own = audit_p99("benchb", mark)
        inside_crowded.append(handling)
        own_crowded.append(own)
        for k, v in out.get("statusCodeDistribution", {}).items():
            a_status[k] = a_status.get(k, 0) + v
    b0, b1 = statistics.median(alone), statistics.median(crowded)
    rises = sorted(100 * (c / a - 1) for a, c in zip(alone, crowded))
    where = f"fhir-fence pinned to CPU 0, load generators and origin to the others" if prefix else "unpinned"
    print(f"\n## Noisy neighbour ({rounds} rounds, {SECS} s each, alone then crowded; {where})\n")
    print("| tenant B p99 alone (400 req/s), median | with A at 2000 req/s (10x its limit), median | "
          "rise, median of the paired rounds | rises, all rounds | A's answers |")
    print("|---|---|---|---|---|")
    print(f"| {b0:.3f} ms | {b1:.3f} ms | {statistics.median(rises):+.0f} % | "
          + " ".join(f"{r:+.0f}" for r in rises) + " % | "
          + ", ".join(f"{k}: {v}" for k, v in sorted(a_status.items())) + " |")
    rise_line("Inside fhir-fence (its audit records' handling time of B's requests, p99)", inside_alone, inside_crowded)
    rise_line("fhir-fence's own share of B's requests (audit `micros - upstream_micros`, p99)", own_alone, own_crowded)


def rise_line(what, alone, crowded):
    """One line: the medians of the alone and crowded p99s, and the paired rises."""
    rises = sorted(100 * (c / a - 1) for a, c in zip(alone, crowded))
    print(f"\n{what}: alone {statistics.median(alone):.3f} ms, crowded {statistics.median(crowded):.3f} ms, "
          f"rise {statistics.median(rises):+.0f} % (rounds: " + " ".join(f"{r:+.0f}" for r in rises) + " %)")


main()

#!/usr/bin/env python3
"""bench/tls's measurement: fhir-fence's CPU per request, plain HTTP against TLS, kept-alive
and with a new connection per request, in rotating order over BENCH_ROUNDS rounds (medians)."""
import json
import os
import statistics
import subprocess

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
KEEP_N = int(os.environ.get("BENCH_KEEP_N", "40000"))
NEW_N = int(os.environ.get("BENCH_NEW_N", "6000"))
CONC = 16
OUT, TOKEN = os.environ["OUT"], os.environ["TOKEN"]
TARGETS = {
    "plain": (int(os.environ["PLAIN_PID"]), f"http://127.0.0.1:{os.environ['FENCE_PORT']}/fhir/Patient/p1", []),
    "tls": (int(os.environ["TLS_PID"]), f"https://localhost:{os.environ['TLS_PORT']}/fhir/Patient/p1",
            ["--cacert", f"{OUT}/tls/ca.crt"]),
}
MODES = {"kept-alive": (KEEP_N, []), "new connection": (NEW_N, ["--disable-keepalive"])}


def cpu(pid):
    """utime + stime of a process, in seconds."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(target, mode):
    pid, url, extra = TARGETS[target]
    n, flags = MODES[mode]
    before = cpu(pid)
    out = subprocess.run(["oha", "-n", str(n), "-c", str(CONC), "--no-tui", "--output-format", "json",
                          "-H", f"Authorization: Bearer {TOKEN}", *flags, *extra, url],
                         check=True, capture_output=True, text=True).stdout
    used = cpu(pid) - before
    stats = json.loads(out)
    codes = stats.get("statusCodeDistribution", {})
    assert set(codes) == {"200"}, f"{target} {mode}: {codes}"
    return used / n * 1e6, stats["summary"]["requestsPerSec"]


results = {(t, m): [] for t in TARGETS for m in MODES}
for r in range(ROUNDS):
    order = list(results)
    order = order[r % len(order):] + order[:r % len(order)]
    for key in order:
        results[key].append(run(*key))

med = lambda xs: statistics.median(xs)
print(f"# TLS on the public listener: fhir-fence CPU per 1 KB read ({ROUNDS} rounds, medians; concurrency {CONC})\n")
print("| | CPU µs per request | range | requests/s |")
print("|---|---|---|---|")
for (t, m), xs in results.items():
    us = [x[0] for x in xs]
    print(f"| {t}, {m} | {med(us):.1f} | {min(us):.1f}–{max(us):.1f} | {med([x[1] for x in xs]):.0f} |")
keep = med([a[0] - b[0] for a, b in zip(results[("tls", "kept-alive")], results[("plain", "kept-alive")])])
new = med([a[0] - b[0] for a, b in zip(results[("tls", "new connection")], results[("plain", "new connection")])])
print(f"\nTLS adds **{keep:.1f} µs** of CPU per kept-alive request (goal ≤ 15 µs), "
      f"and **{new:.0f} µs** per new connection (handshake, ECDSA P-256, TLS 1.3), same round differences' medians.")

#!/usr/bin/env python3
"""A process's CPU (all threads: /proc/PID/task/*/schedstat, ns) and context switches per
request over N requests that oha sends at concurrency C (after a short warm-up).

Usage: bench/proc_cost.py PID URL N C TOKEN [LABEL]   (prints one Markdown table row; EXPECT=429
counts refusals: ≥ 99 % of the answers must have that status, the rest 200)"""
import json, os, subprocess, sys
pid, url, n, c, token = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
label = sys.argv[6] if len(sys.argv) > 6 else pid
EXPECT = os.environ.get("EXPECT", "200")
def sample():
    ns = vol = inv = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            ns += int(open(f"/proc/{pid}/task/{t}/schedstat").read().split()[0])
            for line in open(f"/proc/{pid}/task/{t}/status"):
                if line.startswith("voluntary_ctxt_switches"): vol += int(line.split()[1])
                if line.startswith("nonvoluntary_ctxt_switches"): inv += int(line.split()[1])
        except FileNotFoundError:
            pass
    return ns, vol, inv
oha = os.path.expanduser("~/.cargo/bin/oha")
hdr = ["-H", f"Authorization: Bearer {token}"]
subprocess.run([oha, "-n", str(max(20, c * 2)), "-c", str(c), "--no-tui"] + hdr + [url], capture_output=True)
a = sample()
out = subprocess.run([oha, "-n", str(n), "-c", str(c), "--no-tui", "--output-format", "json"] + hdr + [url], capture_output=True, text=True).stdout
b = sample()
d = json.loads(out)
codes = d["statusCodeDistribution"]
assert set(codes) <= {"200", EXPECT} and codes.get(EXPECT, 0) >= 0.99 * sum(codes.values()), codes
print(f"| {label} | {c} | {n} | {(b[0]-a[0])/n/1e3:.0f} | {(b[1]-a[1])/n:.1f} + {(b[2]-a[2])/n:.1f} | "
      f"{d['latencyPercentiles']['p50']*1e3:.2f} | {d['summary']['requestsPerSec']:.0f} |")

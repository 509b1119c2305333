#!/usr/bin/env python3
"""Signs HS256 tokens for the generated tenants of `bench/origin.py` (issuer `benchs`), with the
standard library only: one token per line on stdout, for tenants s00001 .. sNNNNN.

Usage: bench/scale_tokens.py SECRET_FILE COUNT
"""
import base64
import hashlib
import hmac
import json
import sys
import time

secret_file, count = sys.argv[1], int(sys.argv[2])
secret = open(secret_file, "rb").read().rstrip(b"\n")


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=")


now = int(time.time())
header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
for n in range(1, count + 1):
    claims = {"iss": "https://issuer-s.bench.fhir-fence.dev", "aud": "fhir-fence-bench", "sub": "bench",
              "iat": now, "nbf": now, "exp": now + 7200, "tenant": f"s{n:05d}"}
    signing_input = header + b"." + b64(json.dumps(claims).encode())
    signature = b64(hmac.new(secret, signing_input, hashlib.sha256).digest())
    print((signing_input + b"." + signature).decode())

#!/usr/bin/env python3
"""Writes the seed corpus under fuzz/corpus/<target>/ from ../vectors (the
official and multi-implementation test vectors) and a few request shapes the
tests send. Deterministic: file names are the SHA-256 of their bytes, so a
rerun changes nothing. Run from the repository root: python3 fuzz/seed.py"""
import base64, glob, hashlib, json, os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "corpus")
seeds = {}

def add(target, data):
    if isinstance(data, str):
        data = data.encode()
    seeds.setdefault(target, set()).add(data)

def walk(value, visit):
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, str):
                visit(k, v)
            walk(v, visit)
    elif isinstance(value, list):
        for v in value:
            walk(v, visit)

def unhex(text):
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None

MESSAGES = {"token_challenge", "token_request", "token_response", "token"}
for path in sorted(glob.glob(os.path.join(ROOT, "vectors", "*.json"))):
    name = os.path.basename(path)
    target = "wire"
    if name.startswith(("kat_private", "kat_amortized", "rfc9578_type1")):
        target = "voprf"
    elif name.startswith(("kat_generic", "ext_generic")):
        target = "batch"

    def visit(key, value, target=target):
        raw = unhex(value)
        if key in MESSAGES and raw:
            add(target, raw)
        elif key in ("pkS", "pk_s", "skS", "sk_s") and raw:
            add("keys", raw)
        elif key == "WWW-Authenticate":
            add("auth_header", value)

    walk(json.load(open(path)), visit)

b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
add("auth_header", "PrivateToken token=" + b64(b"\x00\x02" + bytes(32)))
add("auth_header", 'PrivateToken challenge="AAIA", token-key="AAAA", max-age="10"')
add("directory", json.dumps({"issuer-request-uri": "/token-request", "token-keys": [
    {"token-type": 2, "token-key": b64(bytes(64)), "not-before": 1700000000}]}))
add("directory", json.dumps({"issuer-request-uri": "https://issuer.example/token-request", "token-keys": []}))
challenge = {"issuer_name": "localhost", "origin_info": "/api/privacy/v1/relays", "expires_at": 1700003600,
             "claim_type": "age_over18_verified", "environment": "sandbox", "mac": b64(bytes(32))}
add("persona_token", b64(json.dumps(challenge).encode()))
add("persona_token", b64(json.dumps({"challenge": b64(json.dumps(challenge).encode()), "nonce": b64(bytes(32)),
                                     "key_id": "00" * 32, "authenticator": b64(bytes(256))}).encode()))
for body in (
    {"data": {"attributes": {"blinded-token": b64(bytes(256)), "key-id": "00" * 32}}},
    {"data": {"attributes": {"claim-type": "age_over18_verified", "sandbox": True}}},
    {"data": {"attributes": {"claimType": "age_over18_verified", "encryption-key-pem": "-----BEGIN PUBLIC KEY-----"}}},
    {"data": {"attributes": {"passed": True, "methodology": []}}},
    {},
):
    add("persona_json", json.dumps(body))

for target, items in sorted(seeds.items()):
    directory = os.path.join(OUT, target)
    os.makedirs(directory, exist_ok=True)
    for data in sorted(items):
        with open(os.path.join(directory, hashlib.sha256(data).hexdigest()[:16]), "wb") as f:
            f.write(data)
    print(f"{target}: {len(items)} seeds, {sum(map(len, items))} bytes")

#!/usr/bin/env python3
"""Tokens from an independent signer (PyJWT + cryptography) for tests/authn_crosscheck.rs.

Usage: jwt_crosscheck.py OUTDIR

Writes into OUTDIR: jwks.json (the issuer's public keys), k8s-jwks.json (a Kubernetes API
server's service-account key), hmac.secret, and manifest.json: the fixed "now", the issuers,
and one case per token with the outcome Palisade must reach ("ok" or a failure reason label).
Keys are made fresh on every run, so nothing here is a fixture to go stale.
"""

import base64
import hashlib
import hmac
import json
import os
import sys

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

NOW = 1_750_000_000
ISSUER = "https://issuer.example.com"
HMAC_ISSUER = "https://hmac.example.com"
K8S_ISSUER = "https://kubernetes.default.svc.cluster.local"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk(algorithm, public_key, **extra):
    d = json.loads(algorithm.to_jwk(public_key))
    d.update(extra)
    return d


def claims(**over):
    c = {"iss": ISSUER, "sub": "alice", "aud": "orders", "iat": NOW - 10, "nbf": NOW - 10, "exp": NOW + 600}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def raw_token(header: dict, payload, sign) -> str:
    """A token put together by hand: payload may be a dict or exact JSON text."""
    h = b64(json.dumps(header, separators=(",", ":")).encode())
    p = b64(payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
    signing_input = f"{h}.{p}".encode()
    return f"{h}.{p}.{b64(sign(signing_input))}"


def main(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    rsa1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa2 = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    ec256 = ec.generate_private_key(ec.SECP256R1())
    ec384 = ec.generate_private_key(ec.SECP384R1())
    ed = ed25519.Ed25519PrivateKey.generate()
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    k8s = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    secret = os.urandom(64)

    keys = [
        jwk(RSAAlgorithm, rsa1.public_key(), kid="rsa1", use="sig"),
        # Published for RS256 only: a PS256 token under this kid is algorithm confusion.
        jwk(RSAAlgorithm, rsa2.public_key(), kid="rsa2", alg="RS256"),
        jwk(ECAlgorithm, ec256.public_key(), kid="ec256", alg="ES256"),
        jwk(ECAlgorithm, ec384.public_key(), kid="ec384"),
        jwk(OKPAlgorithm, ed.public_key(), kid="ed1", alg="EdDSA"),
        # An encryption key in the same set must never verify anything.
        jwk(RSAAlgorithm, attacker.public_key(), kid="enc1", use="enc"),
    ]
    with open(os.path.join(out, "jwks.json"), "w") as f:
        json.dump({"keys": keys}, f)
    # The API server names its key by the SHA-256 of the DER public key.
    k8s_der = k8s.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    k8s_kid = b64(hashlib.sha256(k8s_der).digest())
    with open(os.path.join(out, "k8s-jwks.json"), "w") as f:
        json.dump({"keys": [jwk(RSAAlgorithm, k8s.public_key(), kid=k8s_kid, use="sig", alg="RS256")]}, f)
    with open(os.path.join(out, "hmac.secret"), "wb") as f:
        f.write(secret)

    cases = []

    def case(name, token, expect, principal=None):
        cases.append({"name": name, "token": token, "expect": expect, "principal": principal})

    signers = {
        "RS256": (rsa1, "rsa1"), "RS384": (rsa1, "rsa1"), "RS512": (rsa1, "rsa1"),
        "PS256": (rsa1, "rsa1"), "PS384": (rsa1, "rsa1"), "PS512": (rsa1, "rsa1"),
        "ES256": (ec256, "ec256"), "ES384": (ec384, "ec384"), "EdDSA": (ed, "ed1"),
    }
    for alg, (key, kid) in signers.items():
        case(f"valid {alg}", jwt.encode(claims(), key, algorithm=alg, headers={"kid": kid}), "ok", f"{ISSUER}/alice")
    for alg in ["HS256", "HS384", "HS512"]:
        t = jwt.encode(claims(iss=HMAC_ISSUER), secret, algorithm=alg)
        case(f"valid {alg} with the configured secret", t, "ok", f"{HMAC_ISSUER}/alice")
    case("valid RS256 from a 3072-bit key", jwt.encode(claims(), rsa2, algorithm="RS256", headers={"kid": "rsa2"}), "ok",
         f"{ISSUER}/alice")
    case("valid without kid (bounded key search)", jwt.encode(claims(), ec384, algorithm="ES384"), "ok",
         f"{ISSUER}/alice")
    case("valid with an audience list", jwt.encode(claims(aud=["x", "orders"]), rsa1, algorithm="RS256",
                                                   headers={"kid": "rsa1"}), "ok", f"{ISSUER}/alice")
    case("valid within clock skew after exp", jwt.encode(claims(exp=NOW - 30), rsa1, algorithm="RS256",
                                                        headers={"kid": "rsa1"}), "ok", f"{ISSUER}/alice")
    case("valid typ at+jwt", jwt.encode(claims(), rsa1, algorithm="RS256", headers={"kid": "rsa1", "typ": "at+jwt"}),
         "ok", f"{ISSUER}/alice")

    # The Kubernetes API server's projected service-account token, bound to a pod.
    sa = claims(iss=K8S_ISSUER, aud=["palisade"], sub="system:serviceaccount:shop:orders", nbf=NOW - 10)
    sa["kubernetes.io"] = {
        "namespace": "shop",
        "pod": {"name": "orders-7d9f8-abcde", "uid": "1f6c1f3e-7a55-4c1b-9d2e-0a7c3b8e9f10"},
        "serviceaccount": {"name": "orders", "uid": "6b0e2d4a-3c5f-4e7a-8b9c-1d2e3f4a5b6c"},
    }
    case("kubernetes service-account token", jwt.encode(sa, k8s, algorithm="RS256", headers={"kid": k8s_kid}), "ok",
         f"{K8S_ISSUER}/system:serviceaccount:shop:orders")
    case("kubernetes token for another audience",
         jwt.encode(dict(sa, aud=["https://kubernetes.default.svc"]), k8s, algorithm="RS256", headers={"kid": k8s_kid}),
         "wrong_audience")
    case("kubernetes token expired", jwt.encode(dict(sa, exp=NOW - 3600), k8s, algorithm="RS256",
                                                headers={"kid": k8s_kid}), "expired")
    case("kubernetes token signed by another key",
         jwt.encode(sa, attacker, algorithm="RS256", headers={"kid": k8s_kid}), "bad_signature")

    # alg none, in both shapes.
    case("alg none, empty signature", jwt.encode(claims(), None, algorithm="none"), "unsupported_alg")
    case("alg none with a signature", raw_token({"alg": "none"}, claims(), lambda m: b"x" * 32), "unsupported_alg")

    # Algorithm confusion.
    pem = rsa1.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    der = rsa1.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    for name, key_bytes in [("PEM", pem), ("DER", der)]:
        t = raw_token({"alg": "HS256", "kid": "rsa1", "typ": "JWT"}, claims(),
                      lambda m, k=key_bytes: hmac.new(k, m, hashlib.sha256).digest())
        case(f"HS256 signed with the RSA public key ({name}) as secret", t, "unsupported_alg")
    t = raw_token({"alg": "HS256"}, claims(iss=HMAC_ISSUER), lambda m: hmac.new(pem, m, hashlib.sha256).digest())
    case("HS256 for the HMAC issuer signed with an RSA public key", t, "bad_signature")
    case("PS256 under a kid published for RS256",
         jwt.encode(claims(), rsa2, algorithm="PS256", headers={"kid": "rsa2"}), "unsupported_alg")
    case("ES256 under an RSA kid", jwt.encode(claims(), ec256, algorithm="ES256", headers={"kid": "rsa1"}),
         "unsupported_alg")
    case("ES256 under a P-384 kid", jwt.encode(claims(), ec256, algorithm="ES256", headers={"kid": "ec384"}),
         "unsupported_alg")
    case("RS256 under an encryption key's kid",
         jwt.encode(claims(), attacker, algorithm="RS256", headers={"kid": "enc1"}), "unknown_key")
    case("ES512 is not supported", jwt.encode(claims(), ec.generate_private_key(ec.SECP521R1()), algorithm="ES512",
                                              headers={"kid": "ec256"}), "unsupported_alg")
    der_sig = raw_token({"alg": "ES256", "kid": "ec256"}, claims(),
                        lambda m: ec256.sign(m, ec.ECDSA(hashes.SHA256())))
    case("ES256 with a DER signature instead of r||s", der_sig, "bad_signature")

    # Keys named by the token itself are never trusted.
    attacker_jwk = jwk(RSAAlgorithm, attacker.public_key())
    case("embedded jwk with an unknown kid",
         jwt.encode(claims(), attacker, algorithm="RS256", headers={"kid": "attacker", "jwk": attacker_jwk}),
         "unknown_key")
    case("embedded jwk under a known kid",
         jwt.encode(claims(), attacker, algorithm="RS256", headers={"kid": "rsa1", "jwk": attacker_jwk}),
         "bad_signature")
    case("jku and x5u pointing elsewhere",
         jwt.encode(claims(), attacker, algorithm="RS256",
                    headers={"kid": "rsa1", "jku": "https://evil.example/jwks", "x5u": "https://evil.example/c"}),
         "bad_signature")

    # Signatures and tampering.
    good = jwt.encode(claims(), rsa1, algorithm="RS256", headers={"kid": "rsa1"})
    h, p, s = good.split(".")
    tampered = b64(json.dumps(claims(sub="admin")).encode())
    case("claims changed after signing", f"{h}.{tampered}.{s}", "bad_signature")
    flipped = bytearray(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
    flipped[10] ^= 1
    case("signature with a flipped bit", f"{h}.{p}.{b64(bytes(flipped))}", "bad_signature")
    case("signature from another issuer's key",
         jwt.encode(claims(), attacker, algorithm="RS256", headers={"kid": "rsa1"}), "bad_signature")
    case("unknown kid", jwt.encode(claims(), rsa1, algorithm="RS256", headers={"kid": "rotated-away"}), "unknown_key")

    # Claims.
    def rs(c, **hdr):
        return jwt.encode(c, rsa1, algorithm="RS256", headers={"kid": "rsa1", **hdr})

    case("expired", rs(claims(exp=NOW - 120)), "expired")
    case("not yet valid", rs(claims(nbf=NOW + 300)), "not_yet_valid")
    case("issued in the future", rs(claims(iat=NOW + 300)), "not_yet_valid")
    case("no exp", rs(claims(exp=None)), "malformed")
    case("exp as a string", rs(claims(exp=str(NOW + 600))), "malformed")
    case("wrong issuer", rs(claims(iss="https://other.example.com")), "wrong_issuer")
    case("issuer differing in a trailing slash", rs(claims(iss=ISSUER + "/")), "wrong_issuer")
    case("no issuer", rs(claims(iss=None)), "wrong_issuer")
    case("wrong audience", rs(claims(aud="payments")), "wrong_audience")
    case("no audience", rs(claims(aud=None)), "wrong_audience")
    case("sub not a string", rs(claims(sub=7)), "malformed")

    # Headers.
    case("unknown crit", rs(claims(), crit=["exp"]), "crit_unsupported")
    case("b64 false", raw_token({"alg": "RS256", "kid": "rsa1", "b64": False, "crit": ["b64"]}, claims(),
                                lambda m: rsa1.sign(m, padding.PKCS1v15(), hashes.SHA256())), "crit_unsupported")

    # Encoding and JSON.
    case("padding in the payload", f"{h}.{p}{'=' * (-len(p) % 4) or '=='}.{s}", "malformed")
    case("standard base64 alphabet", f"{h}.{p}.{s.replace('-', '+').replace('_', '/')}"
         if ("-" in s or "_" in s) else f"{h}.{p}.{s}+", "malformed")
    dup_claims = '{"iss":"%s","sub":"alice","sub":"admin","aud":"orders","exp":%d}' % (ISSUER, NOW + 600)
    case("duplicate claim", raw_token({"alg": "RS256", "kid": "rsa1"}, dup_claims,
                                      lambda m: rsa1.sign(m, padding.PKCS1v15(), hashes.SHA256())), "malformed")
    dup_header = b64(b'{"alg":"RS256","kid":"rsa1","alg":"HS256"}')
    case("duplicate header member", f"{dup_header}.{p}.{s}", "malformed")
    case("header not JSON", f"{b64(b'not json')}.{p}.{s}", "malformed")
    case("two parts", f"{h}.{p}", "malformed")
    case("four parts", f"{h}.{p}.{s}.{s}", "malformed")
    big = rs(claims(pad="x" * 9000))
    case("over the size limit", big, "too_large")
    last = s[-1]
    # The last character of an RS256 signature (256 bytes: 2 bits unused) with a stray bit.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    stray = alphabet[alphabet.index(last) | 1] if alphabet.index(last) % 2 == 0 else alphabet[alphabet.index(last) - 1]
    case("non-canonical trailing bits", f"{h}.{p}.{s[:-1]}{stray}", "malformed")

    manifest = {
        "now": NOW,
        "issuer": ISSUER,
        "hmac_issuer": HMAC_ISSUER,
        "k8s_issuer": K8S_ISSUER,
        "cases": cases,
    }
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"{len(cases)} tokens written to {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])

"""Shared pieces of the Kubernetes validation tests: the chart, the binary, Kubernetes schemas."""

import os
import pathlib
import subprocess
import time

import kubernetes_validate
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "palisade"
NAMESPACE = "palisade-system"
# The oldest Kubernetes the chart supports (native sidecars are on by default from 1.29), and the newest
# kubernetes-validate knows.
KUBE_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
# Kinds from cert-manager's CRDs: no schema in kubernetes-validate; checked by their own fields.
CRD_KINDS = {("cert-manager.io/v1", "Issuer"), ("cert-manager.io/v1", "Certificate")}


def binary():
    """The palisade binary the Rust tests built (PALISADE_BIN, else the debug build)."""
    path = os.environ.get("PALISADE_BIN")
    if path:
        return path
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    path = pathlib.Path(target) / "debug" / "palisade"
    if not path.exists():
        pytest.skip(f"{path} is not built: run cargo build first (scripts/test.sh does)")
    return str(path)


def patience():
    """Seconds a test waits for a positive signal: PALISADE_TEST_PATIENCE (default 30), as in Rust."""
    return float(os.environ.get("PALISADE_TEST_PATIENCE", "30"))


def eventually(check, give_up=lambda: False):
    """Polls `check` until it holds (True), `give_up` holds, or patience runs out (False): the
    one way these tests wait, as `eventually` in tests/support/mod.rs."""
    deadline = time.monotonic() + patience()
    while time.monotonic() < deadline and not give_up():
        if check():
            return True
        time.sleep(0.05)
    return False


def palisade(*args, stdin=None, check=True):
    out = subprocess.run([binary(), *args], input=stdin, capture_output=True, text=True, timeout=60)
    if check and out.returncode != 0:
        raise AssertionError(f"palisade {' '.join(args)} exited {out.returncode}: {out.stderr}")
    return out


def mesh_root(directory):
    """A real root certificate for the trust anchors (injection checks that they are CA certificates)."""
    palisade("ca", "init", "--trust-domain", "cluster.local", "--out", str(pathlib.Path(directory) / "ca"))
    return pathlib.Path(directory) / "ca" / "ca.crt"


def documents(text):
    return [d for d in yaml.safe_load_all(text) if d]


def validate(obj):
    """Validates one object against the Kubernetes schemas of every supported version."""
    if (obj.get("apiVersion"), obj.get("kind")) in CRD_KINDS:
        assert obj["spec"], obj
        return
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)

"""The Dockerfile parses (the `dockerfile` package: Docker's own Go parser) and checkov's scan of the chart
and the Dockerfile finds nothing that the chart README does not explain. Offline, checkov reports no
severities, so every failed check counts: each must be listed, with its reason, in the README."""

import json
import re
import subprocess
import sys
import pathlib

import dockerfile

from conftest import CHART, ROOT
from render import render


def test_the_dockerfile_parses_into_the_stages_the_chart_uses():
    commands = dockerfile.parse_file(str(ROOT / "Dockerfile"))
    stages = [c.value for c in commands if c.cmd == "FROM"]
    assert [s[-1] for s in stages] == ["builder", "init", "final"], stages
    assert stages[-1][0].startswith("gcr.io/distroless/cc-debian12"), "a distroless final image"
    final = commands[[i for i, c in enumerate(commands) if c.cmd == "FROM"][-1]:]
    users = [c.value[0] for c in final if c.cmd == "USER"]
    assert users == ["2102:2102"], users
    assert ("/usr/local/bin/palisade",) in [c.value for c in final if c.cmd == "ENTRYPOINT"]
    build = " ".join(" ".join(c.value) for c in commands if c.cmd == "RUN")
    assert "scripts/build-pgo.sh" in build and "cargo build --release --locked" in build
    init = commands[[i for i, c in enumerate(commands) if c.cmd == "FROM"][1]:]
    assert any("iptables" in " ".join(c.value) for c in init if c.cmd == "RUN")


def checkov(*args):
    exe = pathlib.Path(sys.executable).with_name("checkov")
    out = subprocess.run([str(exe), *args, "-o", "json", "--quiet", "--skip-download", "--compact"],
                         capture_output=True, text=True, timeout=600)
    reports = json.loads(out.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert all(r["summary"]["parsing_errors"] == 0 for r in reports), out.stdout[:2000]
    assert sum(r["summary"]["resource_count"] for r in reports) > 0, "checkov scanned nothing"
    return {c["check_id"] for r in reports for c in r["results"]["failed_checks"]}


def test_checkov_finds_nothing_unexplained_in_the_chart_and_the_dockerfile(tmp_path):
    # checkov's helm runner needs the helm binary; the same manifests, rendered by the Helm SDK, are what it
    # would scan.
    for path, text in render().items():
        (tmp_path / path.replace("/", "_")).write_text(text)
    failed = checkov("-d", str(tmp_path), "--framework", "kubernetes")
    failed |= checkov("-f", str(ROOT / "Dockerfile"), "--framework", "dockerfile")
    readme = (CHART / "README.md").read_text()
    explained = set(re.findall(r"^\| `(CKV2?_[A-Z0-9_]+)` \|", readme, re.M))
    assert failed <= explained, f"explain these in the chart README's checkov table: {sorted(failed - explained)}"

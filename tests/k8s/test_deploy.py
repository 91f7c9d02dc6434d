"""deploy/ stays what the chart renders, and the example app is valid."""

import pathlib
import tempfile

from conftest import ROOT, documents, palisade, validate
from render import deploy_text


def test_deploy_palisade_yaml_is_the_chart_rendered_with_default_values():
    current = (ROOT / "deploy" / "palisade.yaml").read_text()
    assert current == deploy_text(), "deploy/palisade.yaml is stale: python tests/k8s/render.py > deploy/palisade.yaml"
    for obj in documents(current):
        validate(obj)


def test_the_example_app_is_valid_and_its_policy_checks():
    app = (ROOT / "deploy" / "example" / "app.yaml").read_text()
    objs = documents(app)
    assert {o["kind"] for o in objs} >= {"Namespace", "ServiceAccount", "Deployment", "Service"}
    for obj in objs:
        validate(obj)
    ns = [o for o in objs if o["kind"] == "Namespace"][0]
    assert ns["metadata"]["labels"]["palisade.dev/inject"] == "enabled"
    # The policy, as Helm values and as the file palisade check reads.
    import yaml
    values = yaml.safe_load((ROOT / "deploy" / "example" / "values.yaml").read_text())
    with tempfile.TemporaryDirectory() as d:
        for policy in values["policies"]:
            path = pathlib.Path(d) / f"{policy['metadata']['name']}.yaml"
            path.write_text(yaml.safe_dump(policy))
            palisade("check", str(path))
    # Injected as the webhook would, the example's pods are still valid objects.
    injected = palisade("inject", "--identity-mode", "secret", stdin=app).stdout
    for obj in documents(injected):
        validate(obj)

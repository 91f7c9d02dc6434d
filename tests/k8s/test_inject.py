"""What injection makes is a valid Kubernetes pod, and `palisade inject` and the webhook make the same one
(the webhook's JSON Patch applied with the reference jsonpatch library, as the API server would)."""

import base64
import json

import jsonpatch
import pytest

from conftest import documents, mesh_root, palisade, validate

WORKLOADS = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: orders, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  template:
    metadata: {labels: {app: orders}}
    spec:
      serviceAccountName: orders
      containers:
        - {name: app, image: "example/orders:1", ports: [{containerPort: 8080}]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: report, namespace: shop}
spec:
  schedule: "0 * * * *"
  jobTemplate:
    spec:
      template:
        metadata:
          annotations: {palisade.dev/exclude-outbound-cidrs: "10.96.0.0/12", palisade.dev/log-level: debug}
        spec:
          restartPolicy: OnFailure
          initContainers: [{name: migrate, image: "example/migrate:1"}]
          containers: [{name: job, image: "example/report:1"}]
"""

POD = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
    "spec": {"serviceAccountName": "web", "containers": [{"name": "app", "image": "nginx:1.27", "ports": [{"containerPort": 80}]}]},
}


def review(obj, namespace="shop"):
    return json.dumps({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "3c8e9f1a-1b2c-4d5e-8f90-123456789abc",
                    "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": namespace, "operation": "CREATE", "object": obj, "dryRun": False},
    })


@pytest.mark.parametrize("mode", ["secret", "controlPlane"])
def test_injected_workloads_are_valid_kubernetes_objects(mode, tmp_path):
    anchors = mesh_root(tmp_path)
    out = palisade("inject", "--identity-mode", mode, "--trust-anchors", str(anchors), stdin=WORKLOADS)
    objs = documents(out.stdout)
    assert len(objs) == 2
    for obj in objs:
        validate(obj)
    cron_pod = objs[1]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert [c["name"] for c in cron_pod["initContainers"]] == ["palisade-init", "palisade-proxy", "migrate"]
    assert "10.96.0.0/12" in cron_pod["initContainers"][0]["args"]


def test_the_webhook_and_palisade_inject_make_the_same_pod():
    out = palisade("inject", "--identity-mode", "secret", "--admission-review", stdin=review(POD))
    response = json.loads(out.stdout)["response"]
    assert response["allowed"] and response["uid"] == "3c8e9f1a-1b2c-4d5e-8f90-123456789abc"
    assert response["patchType"] == "JSONPatch"
    patched = jsonpatch.apply_patch(POD, json.loads(base64.b64decode(response["patch"])))
    validate(patched)
    cli = palisade("inject", "--identity-mode", "secret", stdin=json.dumps(POD))
    (from_cli,) = documents(cli.stdout)
    assert from_cli == patched
    # Once injected, the webhook has nothing more to add.
    again = json.loads(palisade("inject", "--identity-mode", "secret", "--admission-review", stdin=review(patched)).stdout)
    assert again["response"]["allowed"] and "patch" not in again["response"]


PROBED = """\
apiVersion: v1
kind: Pod
metadata: {name: orders, namespace: shop}
spec:
  containers:
    - name: app
      image: example/orders:1
      ports: [{name: grpc, containerPort: 9090}, {name: http, containerPort: 8080}]
      livenessProbe:
        # the server's own health service
        grpc:
          service: shop.Orders
          port: 9090
        periodSeconds: 5
      readinessProbe: {tcpSocket: {port: http}, timeoutSeconds: 2}
      startupProbe: {httpGet: {path: /started, port: 8080}, failureThreshold: 30}
"""


def test_grpc_tcp_and_http_probes_become_valid_http_probes_of_the_sidecar_by_either_route():
    (pod,) = documents(PROBED)
    out = palisade("inject", "--identity-mode", "secret", "--admission-review", stdin=review(pod))
    response = json.loads(out.stdout)["response"]
    assert response["allowed"] and not response.get("warnings"), response
    patched = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))
    validate(patched)
    app = patched["spec"]["containers"][0]
    assert app["livenessProbe"] == {"httpGet": {"path": "/app-health/app/liveness", "port": 15000}, "periodSeconds": 5}
    assert app["readinessProbe"] == {"httpGet": {"path": "/app-health/app/readiness", "port": 15000}, "timeoutSeconds": 2}
    assert app["startupProbe"] == {"httpGet": {"path": "/app-health/app/startup", "port": 15000}, "failureThreshold": 30}
    cli = palisade("inject", "--identity-mode", "secret", stdin=PROBED)
    (from_cli,) = documents(cli.stdout)
    assert from_cli == patched
    assert "# the server's own health service" in cli.stdout, "the manifest's comments stay"
    # A JSON manifest stays JSON (kubectl reads a stream that starts with `{` as JSON).
    from_json = palisade("inject", "--identity-mode", "secret", stdin=json.dumps(pod))
    assert json.loads(from_json.stdout) == patched


@pytest.mark.parametrize("case,namespace,expect", [
    ("opted out", "shop", "skipped"),
    ("host network", "shop", "skipped"),
    ("kube-system", "kube-system", "skipped"),
    ("bad annotation", "shop", "refused"),
])
def test_the_webhook_answers_pods_it_must_not_inject(case, namespace, expect):
    pod = json.loads(json.dumps(POD))
    if case == "opted out":
        pod["metadata"]["annotations"] = {"palisade.dev/inject": "disabled"}
    if case == "host network":
        pod["spec"]["hostNetwork"] = True
    if case == "bad annotation":
        pod["metadata"]["annotations"] = {"palisade.dev/inbound-ports": "http"}
    response = json.loads(palisade("inject", "--identity-mode", "secret", "--admission-review", stdin=review(pod, namespace)).stdout)["response"]
    assert "patch" not in response
    assert response["allowed"] == (expect == "skipped"), response
    if expect == "refused":
        assert "palisade.dev/inbound-ports" in response["status"]["message"]


def test_a_malformed_review_is_refused_with_a_reason():
    out = palisade("inject", "--identity-mode", "secret", "--admission-review", stdin='{"kind": "Pod"}', check=False)
    assert out.returncode == 65
    assert "AdmissionReview" in json.loads(out.stdout)["message"]

"""The Helm chart through the real Helm SDK: lint, render with several value sets, every object valid for
Kubernetes 1.29+, bad values refused by the schema with the field named, and the policies value read by
`palisade check` as the control plane reads it."""

import base64
import contextlib
import datetime
import pathlib
import re
import socket
import ssl
import subprocess
import tempfile
import urllib.request

import helm_python
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import CHART, NAMESPACE, binary, documents, eventually, mesh_root, palisade, validate
from render import render

POLICY = {
    "apiVersion": "palisade.dev/v1alpha1",
    "kind": "SecurityPolicy",
    "metadata": {"name": "orders-api", "namespace": "shop"},
    "spec": {
        "selector": {"matchLabels": {"app": "orders"}},
        "mtls": "STRICT",
        # A mapping keyed by port: Helm renders its keys quoted, which the sidecar reads as ports.
        "portLevelMtls": {"5432": {"mode": "PERMISSIVE"}},
        "authorization": {
            "default": "DENY",
            "rules": [{"name": "frontend-reads", "action": "ALLOW",
                       "from": {"principals": ["spiffe://cluster.local/ns/shop/sa/frontend"]},
                       "to": {"methods": ["GET"], "paths": ["/orders", "/orders/*"]}}],
        },
        "rateLimits": [{"name": "per-caller", "key": "source.principal", "rate": 100, "per": "1s", "burst": 200}],
    },
}

# A webhook CA (`palisade ca init`), for value sets that bring their own webhook certificate.
WEBHOOK_CA_PEM = """\
-----BEGIN CERTIFICATE-----
MIIB4DCCAYWgAwIBAgIQaWa/xiMYVTxbmk6TUUvJozAKBggqhkjOPQQDAjA+MSAw
HgYDVQQKDBdQYWxpc2FkZSBkZXZlbG9wbWVudCBDQTEaMBgGA1UEAwwRd2ViaG9v
ay50ZXN0IHJvb3QwHhcNMjYxMjA3MjEwNDU2WhcNMzYxMjA0MjEwOTU2WjA+MSAw
HgYDVQQKDBdQYWxpc2FkZSBkZXZlbG9wbWVudCBDQTEaMBgGA1UEAwwRd2ViaG9v
ay50ZXN0IHJvb3QwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQed6o28QU8q83D
6wn1dUerFuawjClFTkR2AvXkML6rZyrRFnYqTxIEHn5qOpxTpV3wuTuGegBX/oMi
6Cx8y7Kgo2UwYzAgBgNVHREEGTAXhhVzcGlmZmU6Ly93ZWJob29rLnRlc3QwDwYD
VR0PAQH/BAUDAweGADAdBgNVHQ4EFgQUbP9ooQ7j2YavnpupVkJ75wq1od0wDwYD
VR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNJADBGAiEAyjbAq9zmyPSSVjUr+81A
i2Gz6vVc/K7F5s3WhOfZ7pcCIQCn/8haDasjpW0ouN23AHJzIvu45YkEzMrN+ICO
xixgRQ==
-----END CERTIFICATE-----
"""
# What `webhook.caBundle` takes: the base64 of that PEM, on one line.
WEBHOOK_CA_BUNDLE = base64.b64encode(WEBHOOK_CA_PEM.encode()).decode()

VALUE_SETS = {
    "defaults": {},
    "cert-manager and policies": {"pki": {"source": "certManager"}, "policies": [POLICY]},
    "existing secrets, secret identity, fail open": {
        "pki": {"source": "existing"},
        "webhook": {"caBundle": WEBHOOK_CA_BUNDLE, "failurePolicy": "Ignore", "excludeNamespaces": ["legacy"]},
        "identity": {"mode": "secret"},
        "sidecar": {
            "excludeOutboundCidrs": ["10.96.0.0/12"], "excludeOutboundPorts": [5432],
            "outboundPassthrough": ["10.20.0.0/16", "fd00:db::/64"], "opaquePorts": [3306],
        },
        "controlPlane": {"replicas": 3, "podDisruptionBudget": {"enabled": False}},
    },
    "dual-stack": {"controlPlane": {"service": {"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv6", "IPv4"]}}},
    "cert-manager with a cluster issuer": {
        "pki": {"source": "certManager", "certManager": {"issuerRef": {"name": "mesh-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}}},
    },
}
ISSUER = VALUE_SETS["cert-manager with a cluster issuer"]["pki"]["certManager"]["issuerRef"]


def objects(values):
    return [obj for text in render(values).values() for obj in documents(text)]


def by_kind(objs, kind):
    return [o for o in objs if o["kind"] == kind]


@pytest.mark.parametrize("values", [
    {"webhook": {"failurePolicy": "Sometimes"}},
    {"controlPlane": {"replicas": 0}},
    {"identity": {"mode": "spire"}},
    {"sidecar": {"excludeOutboundPorts": [70000]}},
    {"sidecar": {"opaquePorts": [0]}},
    {"sidecar": {"outboundPassthrough": ["the database"]}},
    {"trustDomain": "Cluster.Local"},
    {"policies": [{"apiVersion": "v1", "kind": "SecurityPolicy", "metadata": {"name": "a", "namespace": "b"}, "spec": {}}]},
    {"policies": [{"apiVersion": "palisade.dev/v1alpha1", "kind": "SecurityPolicy", "metadata": {"name": "a"}, "spec": {}}]},
    {"webhok": {}},
    {"controlPlane": {"service": {"ipFamilyPolicy": "DualStack"}}},
    # The control plane exits with "policies.pollInterval: must be more than 0".
    {"controlPlane": {"policyPollInterval": "0ms"}},
    {"controlPlane": {"policyPollInterval": "0s"}},
    {"controlPlane": {"policyPollInterval": "000h"}},
    {"controlPlane": {"policyPollInterval": "0"}},
    # Refused by the binary at start (exit 78), so by the schema before an install crash-loops.
    {"sidecar": {"excludeOutboundCidrs": ["10.0.0.0/33"]}},
    {"sidecar": {"outboundPassthrough": ["999.1.1.1/8"]}},
    {"sidecar": {"logLevel": "verbose"}},
    {"controlPlane": {"logLevel": "info,palisade=loud"}},
    # A collector address with credentials or a query, which the sidecar refuses at start.
    {"sidecar": {"telemetry": {"otlp": {"endpoint": "http://user:secret@collector:4317"}}}},
    {"sidecar": {"telemetry": {"otlp": {"endpoint": "http://collector:4318/?api_key=x"}}}},
    {"sidecar": {"telemetry": {"otlp": {"sampling": 2}}}},
    {"sidecar": {"telemetry": {"events": {"format": "cef"}}}},
    # Rendered and valid to kubernetes-validate, refused by the API server (outside tester o2).
    {"controlPlane": {"podAnnotations": {"Bad Key": "x"}}},
    {"controlPlane": {"podAnnotations": {"checksum/config": "pinned"}}},
    {"controlPlane": {"tolerations": [{"operator": "Bogus"}]}},
    {"controlPlane": {"service": {"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4", "IPv6"]}}},
    {"image": {"repository": "UPPER/Case"}},
], ids=lambda v: str(v)[:60])
def test_bad_values_are_refused_by_the_schema_with_the_field_named(values):
    with helm_python.Chart.load(str(CHART)) as chart:
        with pytest.raises(helm_python.HelmValuesError) as refused:
            chart.render(values, name="palisade", namespace=NAMESPACE)
    message = str(refused.value)
    # The innermost key of the bad value (or the unknown one) is named in the message.
    def leaf(v, path=()):
        if isinstance(v, dict) and v:
            k, inner = next(iter(v.items()))
            return leaf(inner, path + (k,))
        if isinstance(v, list) and v:
            return leaf(v[0], path + ("0",))
        return path
    named = leaf(values)
    assert any(part in message for part in named if not part.isdigit()), message


# Helm reads values files as YAML 1.1 (PyYAML does too): an unquoted on, yes or 0123 is a
# boolean or an octal number by the time the chart sees it, and the rendered policy would compare
# "true" or "83" where "on" or "0123" was written: a DENY that never matches.
POLICY_VALUES = """
policies:
  - apiVersion: palisade.dev/v1alpha1
    kind: SecurityPolicy
    metadata: {name: orders, namespace: shop}
    spec:
      selector: {matchLabels: {app: orders}}
      authorization:
        rules:
          - {name: no-debug-mode, action: DENY, when: [{key: "request.headers[x-debug]", values: [%s]}]}
"""


@pytest.mark.parametrize("written", ["on", "yes", "0123", "off"])
def test_a_policy_value_yaml_would_retype_is_refused_until_quoted(written):
    with helm_python.Chart.load(str(CHART)) as chart:
        with pytest.raises(helm_python.HelmValuesError) as refused:
            chart.render(yaml.safe_load(POLICY_VALUES % written), name="palisade", namespace=NAMESPACE)
        assert "values" in str(refused.value), refused.value
    # Quoted, it is the text written, and the control plane's ConfigMap carries it so.
    rendered = objects(yaml.safe_load(POLICY_VALUES % f'"{written}"'))
    config_map = next(d for d in rendered if d["metadata"]["name"] == "palisade-policies")
    text = "".join(config_map["data"].values())
    policy = yaml.safe_load(text)
    assert policy["spec"]["authorization"]["rules"][0]["when"][0]["values"] == [written], text


@pytest.mark.parametrize("ttl", ["0s", "4s", "4999ms", "8785h", "100000h"])
def test_a_certificate_lifetime_the_ca_would_refuse_is_refused_at_render(ttl):
    with helm_python.Chart.load(str(CHART)) as chart:
        with pytest.raises(Exception) as refused:
            chart.render({"controlPlane": {"certTtl": ttl}}, name="palisade", namespace=NAMESPACE)
    assert f"controlPlane.certTtl: {ttl} is outside 5s..8784h" in str(refused.value)


def test_certificate_lifetimes_at_the_bounds_render():
    for ttl in ["5s", "5000ms", "24h", "8784h", "527040m"]:
        assert objects({"controlPlane": {"certTtl": ttl}})


def test_the_chart_lints_clean():
    for values in VALUE_SETS.values():
        report = helm_python.lint(str(CHART), values, namespace=NAMESPACE, kube_version="v1.29.0", strict=True)
        problems = [m for m in report["messages"] if m["severity"] >= 2 and "icon is recommended" not in m["error"]]
        assert not problems and not report["errors"], report


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_rendered_object_is_valid_for_kubernetes(name):
    objs = objects(VALUE_SETS[name])
    assert objs
    for obj in objs:
        validate(obj)


def test_the_control_plane_runs_locked_down_with_two_replicas_and_a_budget():
    objs = objects({})
    (deployment,) = by_kind(objs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["port"] == "admin" and container["readinessProbe"]["httpGet"]["path"] == "/ready"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 15010, "ca": 15012, "webhook": 15017, "admin": 15014}
    (pdb,) = by_kind(objs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    (service,) = by_kind(objs, "Service")
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        "grpc": (15010, "grpc"), "ca": (15012, "ca"), "webhook": (443, "webhook"), "admin": (15014, "admin")}


def test_the_control_plane_service_takes_the_clusters_families_unless_told():
    (default,) = by_kind(objects({}), "Service")
    assert "ipFamilyPolicy" not in default["spec"] and "ipFamilies" not in default["spec"], default
    (dual,) = by_kind(objects(VALUE_SETS["dual-stack"]), "Service")
    assert dual["spec"]["ipFamilyPolicy"] == "PreferDualStack"
    assert dual["spec"]["ipFamilies"] == ["IPv6", "IPv4"]


def test_rbac_grants_pods_reads_and_token_reviews_only():
    (role,) = by_kind(objects({}), "ClusterRole")
    grants = sorted((tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["verbs"])) for r in role["rules"])
    assert grants == [(("",), ("pods",), ("get",)), (("authentication.k8s.io",), ("tokenreviews",), ("create",))]


def test_the_webhook_selects_opted_in_namespaces_and_pods_and_follows_the_failure_policy():
    for failure in ("Fail", "Ignore"):
        (config,) = by_kind(objects({"webhook": {"failurePolicy": failure}}), "MutatingWebhookConfiguration")
        hooks = config["webhooks"]
        assert len(hooks) == 2
        for hook in hooks:
            assert hook["failurePolicy"] == failure and hook["sideEffects"] == "None"
            assert hook["admissionReviewVersions"] == ["v1"] and hook["reinvocationPolicy"] == "IfNeeded"
            assert hook["clientConfig"]["service"] == {"name": "palisade-control", "namespace": NAMESPACE, "path": "/inject", "port": 443}
            assert hook["clientConfig"]["caBundle"]
            excluded = hook["namespaceSelector"]["matchExpressions"][0]
            assert excluded["operator"] == "NotIn" and {"kube-system", NAMESPACE} <= set(excluded["values"])
        ns_hook, pod_hook = hooks
        assert {"key": "palisade.dev/inject", "operator": "In", "values": ["enabled"]} in ns_hook["namespaceSelector"]["matchExpressions"]
        assert pod_hook["objectSelector"]["matchExpressions"] == [{"key": "palisade.dev/inject", "operator": "In", "values": ["enabled"]}]
        (cm,) = [o for o in objects({"webhook": {"failurePolicy": failure}}) if o["metadata"]["name"] == "palisade-control-config"]
        assert f"failurePolicy: {failure}" in cm["data"]["control.yaml"]


def test_generated_certificates_are_kept_across_upgrades_by_lookup():
    # Offline, lookup finds nothing, so two renders make two CAs: the chart reads the Secrets back on
    # a cluster. What can be checked here is that the template asks for them by name.
    text = (CHART / "templates" / "pki.yaml").read_text()
    assert 'lookup "v1" "Secret" $ns .Values.pki.caSecret' in text and 'lookup "v1" "Secret" $ns .Values.pki.webhookSecret' in text
    secrets = {o["metadata"]["name"]: o for o in by_kind(objects({}), "Secret")}
    assert set(secrets["palisade-ca"]["data"]) == {"ca.crt", "ca.key"}
    assert secrets["palisade-ca"]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert secrets["palisade-webhook-tls"]["type"] == "kubernetes.io/tls"


def test_policies_round_trip_into_what_the_control_plane_loads():
    objs = objects({"policies": [POLICY]})
    (cm,) = [o for o in objs if o["metadata"]["name"] == "palisade-policies"]
    assert sorted(cm["data"]) == ["revision", "shop_orders-api.yaml"]
    # The release's revision, which the control plane puts on every snapshot: an upgrade's is
    # higher, so a replica that has not read it yet cannot take a sidecar back.
    assert cm["data"]["revision"] == "1"
    upgraded = [o for t in render({"policies": [POLICY]}, revision=7).values() for o in documents(t)]
    (cm7,) = [o for o in upgraded if o["metadata"]["name"] == "palisade-policies"]
    assert cm7["data"]["revision"] == "7"
    with tempfile.TemporaryDirectory() as d:
        path = pathlib.Path(d) / "shop_orders-api.yaml"
        path.write_text(cm["data"]["shop_orders-api.yaml"])
        out = palisade("check", str(path))
        assert "shop/orders-api selects workloads labelled app=orders in namespace shop" in out.stdout, out.stdout
        assert yaml.safe_load(path.read_text()) == POLICY
    # A policy the control plane would refuse is refused by check with file, line and field.
    bad = dict(POLICY, spec=dict(POLICY["spec"], mtls="STRIKT"))
    (cm,) = [o for o in objects({"policies": [bad]}) if o["metadata"]["name"] == "palisade-policies"]
    with tempfile.TemporaryDirectory() as d:
        path = pathlib.Path(d) / "p.yaml"
        path.write_text(cm["data"]["shop_orders-api.yaml"])
        out = palisade("check", str(path), check=False)
        assert out.returncode != 0 and "spec.mtls" in out.stderr, out.stderr


def test_policies_whose_names_joined_with_a_dash_would_collide_are_two_files_and_a_duplicate_fails():
    # shop-admin/api and shop/admin-api were one key with `-` between namespace and name: one of
    # the two policies vanished without a word.
    a = dict(POLICY, metadata={"name": "api", "namespace": "shop-admin"})
    b = dict(POLICY, metadata={"name": "admin-api", "namespace": "shop"})
    (cm,) = [o for o in objects({"policies": [a, b]}) if o["metadata"]["name"] == "palisade-policies"]
    assert sorted(cm["data"]) == ["revision", "shop-admin_api.yaml", "shop_admin-api.yaml"]
    with helm_python.Chart.load(str(CHART)) as chart:
        with pytest.raises(Exception) as refused:
            chart.render({"policies": [POLICY, POLICY]}, name="palisade", namespace=NAMESPACE)
    assert "policies[1]: shop/orders-api is listed twice" in str(refused.value)


def test_the_rendered_control_plane_configuration_gives_palisade_inject_its_settings():
    for mode in ("controlPlane", "secret"):
        (cm,) = [o for o in objects({"identity": {"mode": mode}}) if o["metadata"]["name"] == "palisade-control-config"]
        control = yaml.safe_load(cm["data"]["control.yaml"])
        assert control["webhook"]["sidecar"]["identity"]["mode"] == mode
        assert control["policies"]["dir"] == "/etc/palisade/policies"
        with tempfile.TemporaryDirectory() as d:
            config = pathlib.Path(d) / "control.yaml"
            anchors = mesh_root(d)
            # The file the control plane reads from its CA Secret, here from the temp dir.
            config.write_text(cm["data"]["control.yaml"].replace("/etc/palisade/ca/ca.crt", str(anchors)))
            pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: shop}\nspec: {containers: [{name: app, image: a}]}\n"
            out = palisade("inject", "--config", str(config), stdin=pod)
            (injected,) = documents(out.stdout)
            assert [c["name"] for c in injected["spec"]["initContainers"]] == ["palisade-init", "palisade-proxy"]
            assert injected["spec"]["initContainers"][1]["image"] == "ghcr.io/palisade-mesh/palisade:0.1.0"


def test_passthrough_destinations_and_opaque_ports_reach_every_injected_sidecar():
    values = {"identity": {"mode": "secret"}, "sidecar": {"outboundPassthrough": ["10.20.0.0/16"], "opaquePorts": [7000]}}
    (cm,) = [o for o in objects(values) if o["metadata"]["name"] == "palisade-control-config"]
    with tempfile.TemporaryDirectory() as d:
        config = pathlib.Path(d) / "control.yaml"
        config.write_text(cm["data"]["control.yaml"])
        pod = ("apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: shop, annotations: "
               "{palisade.dev/outbound-passthrough: 203.0.113.7}}\nspec: {containers: [{name: app, image: a}]}\n")
        (injected,) = documents(palisade("inject", "--config", str(config), stdin=pod).stdout)
    proxy = injected["spec"]["initContainers"][1]
    (sidecar_config,) = [e["value"] for e in proxy["env"] if e["name"] == "PALISADE_CONFIG"]
    outbound = yaml.safe_load(sidecar_config)["outbound"]
    assert outbound["passthrough"] == ["10.20.0.0/16", "203.0.113.7/32"], outbound
    # Added to Linkerd's defaults, which every injected sidecar has on both sides.
    assert outbound["opaquePorts"] == [25, 587, 3306, 4444, 5432, 6379, 7000, 9300, 11211], outbound


BLOCKS = ["10.0.0.0/8", "10.1.2.3", "10.0.0.128/25", "0.0.0.0/0", "fd00::/8", "::/0", "::1", "fe80::/10",
          "1:2:3:4:5:6:7:8", "fd00:0:0:100::/56", "ffff:fffe::/31",
          "10.1.2.3/8", "10.0.0.64/25", ":::", "fd00::1/8", "1::2::3", "fe80::1:2:3:4:5/64", "fd00:0:0:ff::/56",
          "ffff:ffff::/31", "1:2:3:4:5:6:7:8:9", "12345::", "10.0.0.256/8"]


@pytest.mark.parametrize("value", ["excludeOutboundCidrs", "outboundPassthrough"])
def test_the_chart_refuses_exactly_the_address_blocks_the_control_plane_refuses(value):
    # The schema let "10.1.2.3/8" and ":::" through, and the control plane they reached exited at start
    # (crash-looping, with the webhook refusing every meshed pod). Each block is judged by both.
    (cm,) = [o for o in objects({"identity": {"mode": "secret"}}) if o["metadata"]["name"] == "palisade-control-config"]
    control = yaml.safe_load(cm["data"]["control.yaml"])
    pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: shop}\nspec: {containers: [{name: app, image: a}]}\n"
    verdicts = {}
    for block in BLOCKS:
        control["webhook"]["sidecar"][value] = [block]
        with tempfile.TemporaryDirectory() as d:
            config = pathlib.Path(d) / "control.yaml"
            config.write_text(yaml.safe_dump(control))
            binary_takes = palisade("inject", "--config", str(config), stdin=pod, check=False).returncode == 0
        try:
            objects({"identity": {"mode": "secret"}, "sidecar": {value: [block]}})
            chart_takes = True
        except (helm_python.HelmRenderError, helm_python.HelmValuesError) as refused:
            chart_takes = False
            assert f"{value}" in str(refused), refused
        verdicts[block] = (chart_takes, binary_takes)
    assert all(chart == binary for chart, binary in verdicts.values()), verdicts
    assert sum(chart for chart, _ in verdicts.values()) == 11, verdicts


def test_the_meshs_telemetry_values_reach_every_injected_sidecar():
    telemetry = {"otlp": {"endpoint": "http://otel-collector.observability:4317", "sampling": 0.01},
                 "events": {"format": "ecs"}, "accessLog": False}
    values = {"identity": {"mode": "secret"}, "sidecar": {"telemetry": telemetry}}
    (cm,) = [o for o in objects(values) if o["metadata"]["name"] == "palisade-control-config"]
    with tempfile.TemporaryDirectory() as d:
        config = pathlib.Path(d) / "control.yaml"
        config.write_text(cm["data"]["control.yaml"])
        pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: shop}\nspec: {containers: [{name: app, image: a}]}\n"
        (injected,) = documents(palisade("inject", "--config", str(config), stdin=pod).stdout)
    proxy = injected["spec"]["initContainers"][1]
    (sidecar_config,) = [e["value"] for e in proxy["env"] if e["name"] == "PALISADE_CONFIG"]
    written = yaml.safe_load(sidecar_config)["telemetry"]
    assert written["otlp"]["endpoint"] == telemetry["otlp"]["endpoint"], written
    assert written["otlp"]["sampling"] == 0.01 and written["events"]["format"] == "ecs", written
    assert written["accessLog"] is False, written


@contextlib.contextmanager
def running_control_plane(text, d):
    """A real `palisade control` on the rendered configuration `text` with its /etc/palisade/ paths moved
    to the directory `d` (where the test put the Secrets' files) and its ports to free loopback ones:
    yields the policy stream's port once /ready answers 200."""
    ports = []
    for _ in range(4):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        ports.append(s)
    grpc, ca, webhook, admin = [s.getsockname()[1] for s in ports]
    for s in ports:
        s.close()
    (d / "policies").mkdir(exist_ok=True)
    local = (text.replace("/etc/palisade/", f"{d}/")
             .replace("0.0.0.0:15010", f"127.0.0.1:{grpc}").replace("0.0.0.0:15012", f"127.0.0.1:{ca}")
             .replace("0.0.0.0:15017", f"127.0.0.1:{webhook}").replace("0.0.0.0:15014", f"127.0.0.1:{admin}"))
    # No API server here: one on loopback that is never asked (no sidecar sends a token).
    local += "kubernetes: {url: \"http://127.0.0.1:9\"}\nevents: {sink: stderr}\n"
    config = d / "control.yaml"
    config.write_text(local)
    child = subprocess.Popen([binary(), "control", "--config", str(config)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def is_ready():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=2).status == 200
            except OSError:
                return False

        ready = eventually(is_ready, give_up=lambda: child.poll() is not None)
        assert ready, child.stderr.read() if child.poll() is not None else "not ready in time"
        yield grpc
    finally:
        child.terminate()
        child.wait(timeout=10)


def served_certificate(port, roots):
    """The certificate the policy stream presents, checked against the PEM file `roots` only."""
    context = ssl.create_default_context(cafile=str(roots))
    context.check_hostname = False  # a SPIFFE certificate names no host; callers check the URI
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with context.wrap_socket(raw) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def spiffe_ids(cert):
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)


def test_the_default_install_needs_no_secret_made_by_hand_and_its_control_plane_starts():
    """identity.mode controlPlane: the control plane signs its own certificate with the CA the chart
    generated (Sprig's RSA key), so nothing is mounted for it and no manual step precedes the install.
    The rendered configuration, with its paths moved to a temp dir, starts a real `palisade control`
    that presents exactly the SPIFFE ID sidecars are told to expect, signed by the chart's CA."""
    objs = objects({})
    (deployment,) = [o for o in objs if o["kind"] == "Deployment"]
    secrets = [v["secret"]["secretName"] for v in deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    assert "palisade-control-identity" not in secrets, secrets
    assert not [o for o in objs if o["kind"] == "Certificate"], "no cert-manager objects with pki.source generate"
    (cm,) = [o for o in objs if o["metadata"]["name"] == "palisade-control-config"]
    text = cm["data"]["control.yaml"]
    control = yaml.safe_load(text)
    expected = f"spiffe://cluster.local/ns/{NAMESPACE}/sa/palisade-control"
    assert control["identity"] == {"files": None, "spiffeId": expected}
    assert control["webhook"]["sidecar"]["controlPlane"]["namespace"] == NAMESPACE

    by_name = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Secret"}
    with tempfile.TemporaryDirectory() as d:
        d = pathlib.Path(d)
        for sub, secret in (("ca", "palisade-ca"), ("webhook", "palisade-webhook-tls")):
            (d / sub).mkdir()
            for key, value in by_name[secret]["data"].items():
                (d / sub / key).write_bytes(base64.b64decode(value))
        with running_control_plane(text, d) as grpc:
            assert spiffe_ids(served_certificate(grpc, d / "ca" / "ca.crt")) == [expected]


def test_a_poll_interval_of_more_than_0_reaches_the_control_plane():
    for interval in ("1ms", "10s", "0250ms"):
        (cm,) = [o for o in objects({"controlPlane": {"policyPollInterval": interval}})
                 if o["metadata"]["name"] == "palisade-control-config"]
        assert yaml.safe_load(cm["data"]["control.yaml"])["policies"]["pollInterval"] == interval


def refusal(values):
    """The message of the render's failure (a template's `fail`)."""
    with helm_python.Chart.load(str(CHART)) as chart:
        with pytest.raises(helm_python.HelmRenderError) as refused:
            chart.render(values, name="palisade", namespace=NAMESPACE)
    return str(refused.value)


@pytest.mark.parametrize("mode", ["controlPlane", "secret"])
@pytest.mark.parametrize("issuer", [{}, ISSUER], ids=["self-signed", "issuer"])
def test_every_certificate_asks_cert_manager_for_a_pkcs8_key(issuer, mode):
    # Without an encoding cert-manager writes a SEC1 "EC PRIVATE KEY", which not every loader reads.
    values = {"pki": {"source": "certManager", "certManager": {"issuerRef": issuer}}, "identity": {"mode": mode}}
    certs = by_kind(objects(values), "Certificate")
    assert certs
    for cert in certs:
        assert cert["spec"]["privateKey"] == {"algorithm": "ECDSA", "size": 256, "encoding": "PKCS8"}, cert["metadata"]["name"]


def pem(obj):
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def issue(common_name, issuer=None, ca=True):
    """A P-256 certificate and key, as cert-manager makes them with `encoding: PKCS8`: self-signed without
    `issuer`, else signed by that (certificate, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    issuer_cert, issuer_key = issuer or (None, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_cert.subject if issuer else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def test_an_issuer_ref_makes_the_mesh_ca_its_intermediate_whose_roots_are_the_trust_bundle():
    """As istio-csr does: with pki.certManager.issuerRef the chart requests palisade-ca from that issuer as an
    intermediate CA (before, nothing made that Secret and the control plane never started), and the ca.crt
    cert-manager writes beside it, the issuer's roots, is the control plane's ca.trustBundle (it refuses an
    intermediate without one) and the injected sidecars' trust anchors. A real control plane then starts on
    the files as the Deployment mounts them and serves a chain that the roots alone verify."""
    objs = objects(VALUE_SETS["cert-manager with a cluster issuer"])
    assert not by_kind(objs, "Issuer"), "the given issuer signs: no self-signed root of the chart's own"
    (ca,) = [c["spec"] for c in by_kind(objs, "Certificate") if c["metadata"]["name"] == "palisade-ca"]
    assert ca["isCA"] is True and ca["issuerRef"] == ISSUER and ca["secretName"] == "palisade-ca"
    assert ca["privateKey"] == {"algorithm": "ECDSA", "size": 256, "encoding": "PKCS8"}
    assert ca["duration"] == f"{3650 * 24}h"
    (deployment,) = by_kind(objs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "ca"]
    assert volume["secret"]["secretName"] == "palisade-ca"
    items = {i["key"]: i["path"] for i in volume["secret"]["items"]}
    assert items == {"tls.crt": "ca.crt", "tls.key": "ca.key", "ca.crt": "roots.crt"}
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "ca"]
    roots = f"{mount['mountPath']}/{items['ca.crt']}"
    (cm,) = [o for o in objs if o["metadata"]["name"] == "palisade-control-config"]
    text = cm["data"]["control.yaml"]
    control = yaml.safe_load(text)
    assert control["ca"]["trustBundle"] == roots
    assert control["webhook"]["sidecar"]["identity"]["trustAnchorsFile"] == roots

    # The Secret as cert-manager writes it for a CA issuer: tls.crt the intermediate alone, ca.crt the root.
    root = issue("mesh root")
    intermediate = issue("Palisade mesh CA cluster.local", issuer=root)
    webhook = issue(f"palisade-control.{NAMESPACE}.svc", issuer=root, ca=False)
    secret = {"tls.crt": pem(intermediate[0]), "tls.key": pem(intermediate[1]), "ca.crt": pem(root[0])}
    with tempfile.TemporaryDirectory() as d:
        d = pathlib.Path(d)
        (d / "ca").mkdir()
        (d / "webhook").mkdir()
        for key, path in items.items():
            (d / "ca" / path).write_bytes(secret[key])
        (d / "webhook" / "tls.crt").write_bytes(pem(webhook[0]))
        (d / "webhook" / "tls.key").write_bytes(pem(webhook[1]))
        with running_control_plane(text, d) as grpc:
            served = served_certificate(grpc, d / "ca" / "roots.crt")
    assert served.issuer == intermediate[0].subject
    assert spiffe_ids(served) == [f"spiffe://cluster.local/ns/{NAMESPACE}/sa/palisade-control"]


def test_without_an_issuer_ref_the_mesh_ca_stays_a_self_signed_root_and_its_own_trust_anchor():
    objs = objects(VALUE_SETS["cert-manager and policies"])
    assert {i["metadata"]["name"] for i in by_kind(objs, "Issuer")} == {"palisade-selfsigned", "palisade-ca"}
    (ca,) = [c["spec"] for c in by_kind(objs, "Certificate") if c["metadata"]["name"] == "palisade-ca"]
    assert ca["isCA"] is True and ca["issuerRef"]["name"] == "palisade-selfsigned"
    (deployment,) = by_kind(objs, "Deployment")
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "ca"]
    assert {i["key"]: i["path"] for i in volume["secret"]["items"]} == {"tls.crt": "ca.crt", "tls.key": "ca.key"}
    (cm,) = [o for o in objs if o["metadata"]["name"] == "palisade-control-config"]
    control = yaml.safe_load(cm["data"]["control.yaml"])
    assert "trustBundle" not in control["ca"]
    assert control["webhook"]["sidecar"]["identity"]["trustAnchorsFile"] == "/etc/palisade/ca/ca.crt"
    # Only the control plane's CA signs with the intermediate: in secret mode the issuer signs everything.
    secret_mode = objects(dict(VALUE_SETS["cert-manager with a cluster issuer"], identity={"mode": "secret"}))
    assert sorted(c["metadata"]["name"] for c in by_kind(secret_mode, "Certificate")) == ["palisade-control-identity", "palisade-webhook"]


def test_a_trust_bundle_value_carries_a_ca_rotation_to_the_control_plane_and_the_injector(tmp_path):
    """README "Rotating the CA" with Helm: pki.trustBundle holds the old root and the new one. The chart mounts
    it as the control plane's ca.trustBundle and the injector's trustAnchorsFile, and a new bundle rolls the
    control plane's pods. A real control plane on the rendered files then signs with the new key (step 2): its
    certificate verifies under the two roots and not under the old one alone. Given the old root alone while the
    new key signs (step 3 too early), it refuses to start, saying why."""
    roots = {}
    for name in ("old", "new"):
        palisade("ca", "init", "--trust-domain", "cluster.local", "--out", str(tmp_path / name))
        roots[name] = (tmp_path / name / "ca.crt").read_text()
    both = roots["old"] + roots["new"]
    objs = objects({"pki": {"trustBundle": both}})
    for obj in objs:
        validate(obj)
    (bundle,) = [o for o in objs if o["metadata"]["name"] == "palisade-trust-bundle"]
    assert bundle["kind"] == "ConfigMap" and bundle["data"] == {"roots.crt": both}
    (deployment,) = by_kind(objs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v.get("configMap", {}).get("name") == "palisade-trust-bundle"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    (cm,) = [o for o in objs if o["metadata"]["name"] == "palisade-control-config"]
    text = cm["data"]["control.yaml"]
    control = yaml.safe_load(text)
    assert control["ca"]["trustBundle"] == f"{mount['mountPath']}/roots.crt"
    assert control["webhook"]["sidecar"]["identity"]["trustAnchorsFile"] == control["ca"]["trustBundle"]
    checksum = lambda objs: by_kind(objs, "Deployment")[0]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert checksum(objs) != checksum(objects({"pki": {"trustBundle": roots["new"]}})), "a new bundle rolls the pods"
    assert not [o for o in objects({}) if o["metadata"]["name"] == "palisade-trust-bundle"]

    d = tmp_path / "run"
    (d / "ca").mkdir(parents=True)
    (d / "trust").mkdir()
    (d / "webhook").mkdir()
    for key in ("ca.crt", "ca.key"):
        (d / "ca" / key).write_bytes((tmp_path / "new" / key).read_bytes())
    (d / "trust" / "roots.crt").write_text(both)
    (webhook,) = [o for o in objs if o["metadata"]["name"] == "palisade-webhook-tls"]
    for key in ("tls.crt", "tls.key"):
        (d / "webhook" / key).write_bytes(base64.b64decode(webhook["data"][key]))
    with running_control_plane(text, d) as grpc:
        served = served_certificate(grpc, d / "trust" / "roots.crt")
        with pytest.raises(ssl.SSLCertVerificationError):
            served_certificate(grpc, tmp_path / "old" / "ca.crt")
    assert spiffe_ids(served) == [f"spiffe://cluster.local/ns/{NAMESPACE}/sa/palisade-control"]
    (d / "trust" / "roots.crt").write_text(roots["old"])
    with pytest.raises(AssertionError, match="ca.trustBundle: none of its 1 certificates is the root the CA certificate chains to"):
        with running_control_plane(text, d):
            pass


def test_a_trust_bundle_that_is_no_pem_or_in_secret_mode_fails_the_render_naming_the_value(tmp_path):
    assert "pki.trustBundle: no PEM certificate" in refusal({"pki": {"trustBundle": "the old root and the new"}})
    anchors = mesh_root(tmp_path).read_text()
    message = refusal({"pki": {"source": "existing", "trustBundle": anchors}, "webhook": {"caBundle": WEBHOOK_CA_BUNDLE},
                       "identity": {"mode": "secret"}})
    assert "pki.trustBundle: only with identity.mode controlPlane" in message, message


def test_a_ca_bundle_is_taken_as_base64_or_pem_and_anything_else_fails_the_render_naming_the_value():
    # A PEM given as it is, or base64 wrapped at 76 columns, rendered YAML that did not parse and named
    # nothing; base64 of no certificate rendered a webhook the API server cannot call (outside tester o2).
    wrapped = "\n".join(WEBHOOK_CA_BUNDLE[i:i + 76] for i in range(0, len(WEBHOOK_CA_BUNDLE), 76))
    for given in (WEBHOOK_CA_BUNDLE, WEBHOOK_CA_PEM, wrapped):
        out = render({"pki": {"source": "existing"}, "webhook": {"caBundle": given}})
        hooks = [d for d in documents(out["palisade/templates/pki.yaml"]) if d["kind"] == "MutatingWebhookConfiguration"]
        bundle = base64.b64decode(hooks[0]["webhooks"][0]["clientConfig"]["caBundle"]).decode()
        assert x509.load_pem_x509_certificates(bundle.encode()) == [x509.load_pem_x509_certificate(WEBHOOK_CA_PEM.encode())]
    for given in ("eA==", "hello world!"):
        message = refusal({"pki": {"source": "existing"}, "webhook": {"caBundle": given}})
        assert "webhook.caBundle: not a certificate" in message, message
    # A certificate and its key in one file, given as the bundle: refused, not published (review).
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    message = refusal({"pki": {"source": "existing"}, "webhook": {"caBundle": WEBHOOK_CA_PEM + key}})
    assert "webhook.caBundle: holds a private key" in message, message


def test_existing_secrets_without_a_ca_bundle_fail_the_render_naming_the_value():
    # Rendered, the webhook had no caBundle: the API server could not verify it and refused every pod of
    # a meshed namespace.
    message = refusal({"pki": {"source": "existing"}})
    assert "webhook.caBundle" in message and "pki.source existing" in message, message


def test_a_budget_that_keeps_every_control_plane_pod_fails_the_render():
    # Such a budget lets no control-plane pod be evicted: every node drain waits forever.
    for control_plane in ({"replicas": 1}, {"replicas": 2, "podDisruptionBudget": {"minAvailable": 2}},
                          {"replicas": 3, "podDisruptionBudget": {"minAvailable": 4}}):
        message = refusal({"controlPlane": control_plane})
        assert "controlPlane.podDisruptionBudget.minAvailable" in message and "controlPlane.replicas" in message, message
    for control_plane in ({"replicas": 3, "podDisruptionBudget": {"minAvailable": 2}},
                          {"replicas": 1, "podDisruptionBudget": {"minAvailable": 0}},
                          {"replicas": 1, "podDisruptionBudget": {"enabled": False}}):
        objs = objects({"controlPlane": control_plane})
        assert len(by_kind(objs, "PodDisruptionBudget")) == control_plane["podDisruptionBudget"].get("enabled", True)


@pytest.mark.parametrize("value, requests, limits", [
    ("resources", {"cpu": "2"}, {"cpu": "1"}),
    ("resources", {"cpu": "1001m"}, {"cpu": 1}),
    ("resources", {"memory": "1Gi"}, {"memory": "1G"}),
    ("resources", {"memory": "300Mi"}, {"memory": "0.25Gi"}),
    ("resources", {"memory": 268435457}, {"memory": "256Mi"}),
    ("resources", {"ephemeral-storage": "2k"}, {"ephemeral-storage": "1Ki"}),
    ("initResources", {"memory": "64Mi"}, {"memory": "32Mi"}),
    ("initResources", {"cpu": "0.2"}, {"cpu": "100m"}),
], ids=str)
def test_a_sidecar_request_above_its_limit_fails_the_render_naming_the_value(value, requests, limits):
    # The sidecar's resources reach the pods through the control plane's ConfigMap, so nothing refused
    # them at install: the API server refused every injected pod instead.
    message = refusal({"sidecar": {value: {"requests": requests, "limits": limits}}})
    (resource,) = requests
    assert f"sidecar.{value}: requests.{resource}" in message and f"limits.{resource}" in message, message


def test_a_control_plane_request_above_its_limit_fails_the_render_naming_the_value():
    # It rendered, and the API server refused the control plane's pods while the install succeeded.
    message = refusal({"controlPlane": {"resources": {"requests": {"cpu": "2", "memory": "1Gi"},
                                                      "limits": {"cpu": "1", "memory": "256Mi"}}}})
    assert "controlPlane.resources: requests." in message and "the control plane's pods" in message, message
    (deployment,) = by_kind(objects({"controlPlane": {"resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}}}}),
                            "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "1"


def test_sidecar_requests_up_to_their_limits_render_in_any_unit():
    for requests, limits in ((("cpu", "100m"), ("cpu", "0.1")), (("cpu", 1), ("cpu", "1000m")),
                             (("memory", "1536Mi"), ("memory", "1.5Gi")), (("memory", "1G"), ("memory", "1Gi")),
                             (("memory", "1k"), ("memory", "1Ki")), (("memory", "300M"), ("memory", "0.3G")),
                             (("memory", 268435456), ("memory", "256Mi"))):
        resources = {"requests": dict([requests]), "limits": dict([limits])}
        (cm,) = [o for o in objects({"sidecar": {"resources": resources}}) if o["metadata"]["name"] == "palisade-control-config"]
        rendered = yaml.safe_load(cm["data"]["control.yaml"])["webhook"]["sidecar"]["resources"]
        assert rendered["requests"][requests[0]] == requests[1] and rendered["limits"][limits[0]] == limits[1], rendered


def test_the_readme_names_what_the_cluster_role_grants():
    # It said `pods: get, list, watch`, where the role grants get.
    (role,) = by_kind(objects({}), "ClusterRole")
    granted = {resource: set(rule["verbs"]) for rule in role["rules"] for resource in rule["resources"]}
    (row,) = [line for line in (CHART / "README.md").read_text().splitlines() if line.startswith("| ClusterRole + binding |")]
    said = {resource: set(verbs.split(", ")) for resource, verbs in re.findall(r"`(\w+)`: ([a-z]+(?:, [a-z]+)*)", row)}
    assert said == granted, row


# The Pod Security Standards' capabilities and volume types
# (kubernetes.io/docs/concepts/security/pod-security-standards).
BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
                         "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}


def pod_security(pod, container):
    """What `container` of the pod spec `pod` breaks of the Pod Security Standards' `baseline` and
    `restricted` (which includes baseline), as {level: [fields]}: the container and pod fields of both,
    and the pod's volumes."""
    pod_sc = pod.get("securityContext", {})
    sc = container.get("securityContext", {})
    caps = sc.get("capabilities", {})
    added = set(caps.get("add", []))
    seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
    baseline = [field for field, broken in (
        ("privileged", sc.get("privileged")),
        ("capabilities.add", added - BASELINE_CAPABILITIES),
        ("host namespaces", any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))),
        ("hostPath", any("hostPath" in v for v in pod.get("volumes", []))),
        ("hostPort", any(p.get("hostPort") for p in container.get("ports", []))),
        ("seccompProfile", seccomp == "Unconfined"),
    ) if broken]
    restricted = baseline + [field for field, broken in (
        ("volumes", any(set(v) - {"name"} - RESTRICTED_VOLUMES for v in pod.get("volumes", []))),
        ("allowPrivilegeEscalation", sc.get("allowPrivilegeEscalation") is not False),
        ("runAsNonRoot", sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True),
        ("runAsUser", sc.get("runAsUser", pod_sc.get("runAsUser")) == 0),
        ("seccompProfile", seccomp not in ("RuntimeDefault", "Localhost")),
        ("capabilities", "ALL" not in caps.get("drop", []) or added - {"NET_BIND_SERVICE"}),
    ) if broken]
    return {level: fields for level, fields in (("baseline", baseline), ("restricted", restricted)) if fields}


@pytest.mark.parametrize("mode", ["controlPlane", "secret"])
def test_the_readme_says_which_pod_security_level_each_container_meets(mode):
    """The chart README's Pod Security section, checked: the control plane and the injected sidecar meet
    `restricted`; the injected init container, with NET_ADMIN and NET_RAW as root, not even `baseline`, so
    meshed namespaces must not enforce either."""
    section = (CHART / "README.md").read_text().split("\n## Pod Security\n", 1)[1].split("\n## ", 1)[0]
    for said in ("`palisade-proxy`", "`palisade-init`", "`NET_ADMIN`", "`NET_RAW`", "`restricted`", "`baseline`",
                 "`pod-security.kubernetes.io/enforce: privileged`"):
        assert said in section, said
    objs = objects({"identity": {"mode": mode}})
    (deployment,) = by_kind(objs, "Deployment")
    control = deployment["spec"]["template"]["spec"]
    assert [pod_security(control, c) for c in control["containers"]] == [{}]

    (cm,) = [o for o in objs if o["metadata"]["name"] == "palisade-control-config"]
    with tempfile.TemporaryDirectory() as d:
        config = pathlib.Path(d) / "control.yaml"
        anchors = pathlib.Path(d) / "ca.crt"
        anchors.write_bytes(pem(issue("mesh root")[0]))
        config.write_text(cm["data"]["control.yaml"].replace("/etc/palisade/ca/ca.crt", str(anchors)))
        pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: shop}\nspec: {containers: [{name: app, image: a}]}\n"
        (injected,) = documents(palisade("inject", "--config", str(config), stdin=pod).stdout)
    spec = injected["spec"]
    levels = {c["name"]: pod_security(spec, c) for c in spec["initContainers"]}
    assert levels["palisade-proxy"] == {}, levels
    assert levels["palisade-init"] == {"baseline": ["capabilities.add"],
                                       "restricted": ["capabilities.add", "runAsNonRoot", "runAsUser", "capabilities"]}, levels


def _webhook_pair(secret, now, validity_days=825):
    """What the chart's palisade.webhookCertificate makes of `secret` (a Secret as `lookup` returns
    it, or None) at `now`: rendered by Helm in a chart holding only that template, as `lookup`
    needs a cluster."""
    with tempfile.TemporaryDirectory() as tmp:
        chart = pathlib.Path(tmp) / "t"
        (chart / "templates").mkdir(parents=True)
        (chart / "Chart.yaml").write_text("apiVersion: v2\nname: t\nversion: 0.1.0\n")
        helper = CHART / "templates" / "_webhook_certificate.tpl"
        (chart / "templates" / helper.name).write_text(helper.read_text())
        (chart / "templates" / "out.yaml").write_text(
            '{{- $w := include "palisade.webhookCertificate" (dict "secret" .Values.secret "now" (int64 .Values.now)'
            ' "validityDays" .Values.validity "commonName" "palisade-control.palisade-system.svc"'
            ' "dnsNames" (list "palisade-control.palisade-system.svc")) | fromYaml }}\n'
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: out}\ndata:\n"
            "  cert: {{ $w.cert | quote }}\n  ca: {{ $w.ca | quote }}\n  trusted: {{ $w.trusted | quote }}\n"
            "  notAfter: {{ $w.notAfter | quote }}\n  previous: {{ $w.previous | quote }}\n  renewedAt: {{ $w.renewedAt | quote }}\n"
        )
        with helm_python.Chart.load(str(chart)) as loaded:
            out = loaded.render({"secret": secret, "now": now, "validity": validity_days}, name="t", namespace=NAMESPACE)
    return yaml.safe_load(out["t/templates/out.yaml"])["data"]


def test_the_generated_webhook_certificate_is_renewed_near_its_end_with_both_cas_trusted_meanwhile():
    # The chart read a generated webhook Secret back on every upgrade whatever its dates: after
    # 825 days the API server refused to call the webhook, and no upgrade mended it (outside
    # tester o2).
    now = int(datetime.datetime.now(datetime.timezone.utc).timestamp())
    first = _webhook_pair(None, now)
    ends = int(first["notAfter"])
    assert ends == now + 825 * 86400
    cert = x509.load_pem_x509_certificate(first["cert"].encode())
    assert abs(cert.not_valid_after_utc.timestamp() - ends) < 86400, "the annotation says when the pair ends"
    pems = lambda text: x509.load_pem_x509_certificates(text.encode())  # noqa: E731
    assert pems(first["trusted"]) == pems(first["ca"])

    def secret(pair, not_after):
        data = {k: base64.b64encode(pair[v].encode()).decode() for k, v in (("tls.crt", "cert"), ("ca.crt", "ca"))}
        data["tls.key"] = base64.b64encode(b"key").decode()
        if pair.get("previous"):
            data["previous-ca.crt"] = base64.b64encode(pair["previous"].encode()).decode()
        annotations = {} if not_after is None else {"palisade.dev/not-after": str(not_after)}
        if pair.get("renewedAt"):
            annotations["palisade.dev/renewed-at"] = pair["renewedAt"]
        return {"metadata": {"name": "palisade-webhook-tls", "annotations": annotations}, "data": data}

    # Far from its end: kept as it is.
    kept = _webhook_pair(secret(first, ends), ends - 31 * 86400)
    assert (kept["cert"], kept["notAfter"]) == (first["cert"], first["notAfter"])
    assert pems(kept["trusted"]) == pems(first["ca"])
    # Within 30 days of its end, past it, or of a chart that wrote no end: a new pair, and the old
    # CA trusted beside the new one.
    for at, not_after in ((ends - 29 * 86400, ends), (ends + 86400, ends), (now, None)):
        renewed = _webhook_pair(secret(first, not_after), at)
        assert renewed["cert"] != first["cert"] and renewed["ca"] != first["ca"]
        assert int(renewed["notAfter"]) == at + 825 * 86400
        bundle = x509.load_pem_x509_certificates(renewed["trusted"].encode())
        cas = [x509.load_pem_x509_certificate(pair["ca"].encode()) for pair in (renewed, first)]
        assert bundle == cas, "both CAs in the caBundle, the new one first"
        # An upgrade soon after (the control plane may still serve the old pair): both CAs
        # still; a week on, the new one alone (review).
        ends_new = int(renewed["notAfter"])
        soon = _webhook_pair(secret(renewed, ends_new), at + 60)
        assert soon["cert"] == renewed["cert"] and pems(soon["trusted"]) == cas
        later = _webhook_pair(secret(renewed, ends_new), at + 8 * 86400)
        assert later["cert"] == renewed["cert"] and pems(later["trusted"]) == cas[:1]
    # A short life is renewed in its last third.
    short = _webhook_pair(None, now, validity_days=3)
    later = lambda days: _webhook_pair(secret(short, int(short["notAfter"])), now + days * 86400 + 3600, 3)  # noqa: E731
    assert later(1)["cert"] == short["cert"] and later(2)["cert"] != short["cert"]

"""The Helm chart through the real Helm SDK: lint, render with several value sets, every object valid for
Kubernetes 1.29+, bad values refused by the schema with the field named, and the policies value read by
`palisade check` as the control plane reads it."""

import pathlib
import tempfile

import helm_python
import pytest
import yaml

from conftest import CHART, NAMESPACE, binary, documents, eventually, palisade, validate
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

VALUE_SETS = {
    "defaults": {},
    "cert-manager and policies": {"pki": {"source": "certManager"}, "policies": [POLICY]},
    "existing secrets, secret identity, fail open": {
        "pki": {"source": "existing"},
        "webhook": {"caBundle": "Y2E=", "failurePolicy": "Ignore", "excludeNamespaces": ["legacy"]},
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
            anchors = pathlib.Path(d) / "ca.crt"
            anchors.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
            # The file the control plane reads from its CA Secret, here from the temp dir.
            config.write_text(cm["data"]["control.yaml"].replace("/etc/palisade/ca/ca.crt", str(anchors)))
            pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: shop}\nspec: {containers: [{name: app, image: a}]}\n"
            out = palisade("inject", "--config", str(config), stdin=pod)
            (injected,) = documents(out.stdout)
            assert [c["name"] for c in injected["spec"]["initContainers"]] == ["palisade-init", "palisade-proxy"]
            assert injected["spec"]["initContainers"][1]["image"] == "ghcr.io/palisade-mesh/palisade:0.1.0"


def test_passthrough_destinations_and_opaque_ports_reach_every_injected_sidecar():
    values = {"identity": {"mode": "secret"}, "sidecar": {"outboundPassthrough": ["10.20.0.0/16"], "opaquePorts": [3306]}}
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
    assert outbound["opaquePorts"] == [3306], outbound


def test_the_default_install_needs_no_secret_made_by_hand_and_its_control_plane_starts():
    """identity.mode controlPlane: the control plane signs its own certificate with the CA the chart
    generated (Sprig's RSA key), so nothing is mounted for it and no manual step precedes the install.
    The rendered configuration, with its paths moved to a temp dir, starts a real `palisade control`
    that presents exactly the SPIFFE ID sidecars are told to expect, signed by the chart's CA."""
    import base64
    import socket
    import ssl
    import subprocess
    import urllib.request

    from cryptography import x509

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
        (d / "policies").mkdir()
        ports = []
        for _ in range(4):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            ports.append(s)
        grpc, ca, webhook, admin = [s.getsockname()[1] for s in ports]
        for s in ports:
            s.close()
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
            context = ssl.create_default_context(cafile=str(d / "ca" / "ca.crt"))
            context.check_hostname = False  # a SPIFFE certificate names no host; the URI is checked below
            with socket.create_connection(("127.0.0.1", grpc)) as raw:
                with context.wrap_socket(raw) as tls:
                    der = tls.getpeercert(binary_form=True)
            cert = x509.load_der_x509_certificate(der)
            uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
                x509.UniformResourceIdentifier)
            assert uris == [expected]
        finally:
            child.terminate()
            child.wait(timeout=10)

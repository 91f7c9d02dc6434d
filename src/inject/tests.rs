//! Injection as `palisade inject` and the webhook do it, on manifests written as people write them.

use serde_json::{json, Value};

use super::annotations as ann;
use super::patch;
use super::pod::{INIT_NAME, PROXY_NAME};
use super::webhook::{decide, Decided};
use super::*;
use crate::yaml::{parse, Limits};

/// A real root: injection checks that trust anchors are CA certificates.
static ANCHORS: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| crate::identity::DevCa::generate("cluster.local").unwrap().cert_pem().to_string());

fn settings() -> InjectSettings {
    let mut s = InjectSettings::default();
    s.identity.trust_anchors = Some(ANCHORS.clone());
    s
}

fn inject_text(text: &str) -> (String, Vec<Report>) {
    inject(text, &settings()).unwrap_or_else(|e| panic!("{text}\n{e}"))
}

/// The documents of a YAML stream as JSON.
fn docs(text: &str) -> Vec<Value> {
    parse(text, &Limits::MANIFESTS)
        .unwrap()
        .into_iter()
        .filter(|d| !d.root.is_null())
        .map(|d| d.root.to_json())
        .collect()
}

fn names(containers: &Value) -> Vec<&str> {
    containers.as_array().into_iter().flatten().filter_map(|c| c["name"].as_str()).collect()
}

const DEPLOYMENT: &str = r#"# The orders service.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: orders   # keep this comment
  namespace: shop
spec:
  replicas: 2
  selector: {matchLabels: {app: orders}}
  template:
    metadata:
      labels:
        app: orders
    spec:
      serviceAccountName: orders
      # the app
      containers:
        - name: app
          image: "example/orders:1.0"
          ports: [{containerPort: 8080}]
          x-unknown-field: kept
"#;

fn pod(extra_meta: Value, extra_spec: Value) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "nginx", "ports": [{"containerPort": 80}]}]},
    });
    for (k, v) in extra_meta.as_object().into_iter().flatten() {
        pod["metadata"][k] = v.clone();
    }
    for (k, v) in extra_spec.as_object().into_iter().flatten() {
        pod["spec"][k] = v.clone();
    }
    pod
}

fn admission_review(object: &Value, namespace: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace, "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "groups": ["system:serviceaccounts"]},
            "object": object, "oldObject": null, "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
    }))
    .unwrap()
}

/// The webhook's response, and the pod with its patch applied.
fn webhook(object: &Value, namespace: &str, policy: FailurePolicy) -> (Value, Value) {
    let outcome = decide(&admission_review(object, namespace), &settings(), policy);
    assert_eq!(outcome.status, 200);
    let review: Value = serde_json::from_slice(&outcome.body).unwrap();
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    let response = review["response"].clone();
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002", "the uid is echoed");
    let mut patched = object.clone();
    if let Some(encoded) = response["patch"].as_str() {
        use base64::Engine;
        assert_eq!(response["patchType"], "JSONPatch");
        let ops: Vec<Value> =
            serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(encoded).unwrap()).unwrap();
        apply_json_patch(&mut patched, &ops);
    }
    (response, patched)
}

/// RFC 6902 as the API server reads it (independent of `patch::Op`): from the wire form.
fn apply_json_patch(doc: &mut Value, ops: &[Value]) {
    let ops: Vec<patch::Op> = ops
        .iter()
        .map(|op| {
            let (path, value) = (op["path"].as_str().unwrap().to_string(), op["value"].clone());
            match op["op"].as_str().unwrap() {
                "add" => patch::Op::Add { path, value },
                "replace" => patch::Op::Replace { path, value },
                "remove" => patch::Op::Remove { path },
                "move" => patch::Op::Move { from: op["from"].as_str().unwrap().to_string(), path },
                other => panic!("unexpected op {other}"),
            }
        })
        .collect();
    patch::apply(doc, &ops).unwrap();
}

// === what is refused or left alone ===

#[test]
fn manifests_that_cannot_be_read_or_have_no_pod_spec_are_refused_with_their_line() {
    for (text, words) in [
        ("kind: Pod\nmetadata: {name: a}\nspec: [\n", "line"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n", "/spec"),
        ("---\nkind: Service\n---\nkind: Deployment\nmetadata: {name: d}\nspec: {replicas: 1}\n", "line 4: Deployment/d"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {containers: {app: x}}\n", "/spec/containers"),
        (
            "kind: Pod\nmetadata: {name: a, annotations: {palisade.dev/exclude-outbound-ports: http}}\nspec: {containers: []}\n",
            "palisade.dev/exclude-outbound-ports",
        ),
    ] {
        let err = inject(text, &settings()).expect_err(text).to_string();
        assert!(err.contains(words), "{text}: {err}");
    }
}

#[test]
fn kube_system_the_control_planes_namespace_and_excluded_namespaces_are_never_injected() {
    // A list of the operator's own adds to kube-system, never replaces it.
    let mut s = settings();
    s.excluded_namespaces = vec!["legacy".into()];
    for ns in ["kube-system", "palisade-system", "legacy"] {
        let text = format!("kind: Pod\nmetadata: {{name: a, namespace: {ns}}}\nspec: {{containers: [{{name: c}}]}}\n");
        let (out, reports) = inject(&text, &s).unwrap();
        assert_eq!(out, text);
        assert!(matches!(&reports[0].outcome, Outcome::Skipped(Skip::ExcludedNamespace(n)) if n == ns), "{reports:?}");
        if ns != "legacy" {
            let (response, patched) = webhook(&pod(json!({"namespace": ns}), json!({})), ns, FailurePolicy::Fail);
            assert_eq!((response["allowed"].as_bool(), response.get("patch")), (Some(true), None), "{response}");
            assert_eq!(patched, pod(json!({"namespace": ns}), json!({})));
        }
    }
}

fn windows_affinity(terms: &[&[&str]]) -> Value {
    let terms: Vec<Value> = terms
        .iter()
        .map(|values| json!({"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": values}]}))
        .collect();
    json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}})
}

#[test]
fn a_pod_that_may_run_on_linux_is_injected_whatever_else_its_affinity_allows() {
    for spec in [windows_affinity(&[&["windows", "linux"]]), windows_affinity(&[&["windows"], &["linux"]])] {
        let (response, patched) = webhook(&pod(json!({}), spec.clone()), "shop", FailurePolicy::Fail);
        assert_eq!(response["auditAnnotations"]["injection"], "injected", "{spec}");
        assert!(patched["spec"]["initContainers"].is_array());
    }
}

#[test]
fn a_pod_with_another_meshs_sidecar_is_refused_with_how_to_take_it_out() {
    for (list, name, words) in [
        ("containers", "istio-proxy", "sidecar.istio.io/inject: \"false\""),
        ("initContainers", "istio-init", "sidecar.istio.io/inject: \"false\""),
        ("containers", "linkerd-proxy", "linkerd.io/inject: disabled"),
    ] {
        let mut object = pod(json!({}), json!({}));
        let other = json!({"name": name, "image": "mesh"});
        match list {
            "containers" => object["spec"]["containers"].as_array_mut().unwrap().push(other),
            _ => object["spec"]["initContainers"] = json!([other]),
        }
        let (response, _) = webhook(&object, "shop", FailurePolicy::Fail);
        assert_eq!(response["allowed"], false, "{name}");
        let message = response["status"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("/spec/{list}/")) && message.contains(words), "{message}");
    }
}

#[test]
fn host_network_pods_and_pods_that_opt_out_are_never_injected() {
    let cases = [
        (json!({}), json!({"hostNetwork": true}), Skip::HostNetwork),
        (json!({}), json!({"os": {"name": "windows"}}), Skip::Windows),
        (json!({}), json!({"nodeSelector": {"kubernetes.io/os": "windows"}}), Skip::Windows),
        (json!({}), json!({"nodeSelector": {"beta.kubernetes.io/os": "windows"}}), Skip::Windows),
        (json!({}), windows_affinity(&[&["windows"], &["windows"]]), Skip::Windows),
        (json!({"annotations": {"palisade.dev/inject": "disabled"}}), json!({}), Skip::OptedOut),
        (json!({"labels": {"palisade.dev/inject": "disabled"}}), json!({}), Skip::OptedOut),
    ];
    for (meta, spec, why) in cases {
        let object = pod(meta, spec);
        let text = serde_json::to_string_pretty(&object).unwrap();
        let (out, reports) = inject_text(&text);
        assert_eq!(out, text, "untouched");
        assert_eq!(reports[0].outcome, Outcome::Skipped(why.clone()));
        let (response, patched) = webhook(&object, "shop", FailurePolicy::Fail);
        assert_eq!(response["allowed"], true);
        assert!(response.get("patch").is_none(), "{response}");
        assert!(response["auditAnnotations"]["injection"].as_str().unwrap().starts_with("skipped"), "{response}");
        assert_eq!(patched, object);
    }
    // A workload's own opt-out counts for its pods.
    let text = DEPLOYMENT.replace(
        "  name: orders   # keep this comment\n",
        "  name: orders\n  annotations: {palisade.dev/inject: disabled}\n",
    );
    let (out, reports) = inject_text(&text);
    assert_eq!((out.as_str(), &reports[0].outcome), (text.as_str(), &Outcome::Skipped(Skip::OptedOut)));
}

#[test]
fn injecting_twice_changes_nothing() {
    let (once, _) = inject_text(DEPLOYMENT);
    let (twice, reports) = inject_text(&once);
    assert_eq!(once, twice);
    assert_eq!(reports[0].outcome, Outcome::Skipped(Skip::AlreadyInjected));
    // The webhook, called again (reinvocationPolicy: IfNeeded), agrees.
    let (_, injected) = webhook(&pod(json!({}), json!({})), "shop", FailurePolicy::Fail);
    let (response, again) = webhook(&injected, "shop", FailurePolicy::Fail);
    assert!(response.get("patch").is_none(), "{response}");
    assert_eq!(again, injected);
}

#[test]
fn other_kinds_pass_through_byte_for_byte() {
    let text = "# a service\napiVersion: v1\nkind: Service\nmetadata: {name: s}   # odd   spacing\nspec:\n  ports: [{port: 80}]\n---\nkind: ConfigMap\ndata: {a: \"1\"}\n";
    let (out, reports) = inject_text(text);
    assert_eq!(out, text);
    assert!(reports.iter().all(|r| r.outcome == Outcome::NoPods));
}

// === what injection adds ===

#[test]
fn every_workload_kind_gets_the_sidecar_in_its_pod_template() {
    let template = "metadata: {labels: {app: a}}\n    spec:\n      containers: [{name: app, image: a}]\n";
    let cases = [
        ("v1", "Pod", String::from("spec:\n  containers: [{name: app, image: a}]\n"), ""),
        ("apps/v1", "Deployment", format!("spec:\n  template:\n    {template}"), "/spec/template"),
        ("apps/v1", "StatefulSet", format!("spec:\n  serviceName: s\n  template:\n    {template}"), "/spec/template"),
        ("apps/v1", "DaemonSet", format!("spec:\n  template:\n    {template}"), "/spec/template"),
        ("apps/v1", "ReplicaSet", format!("spec:\n  template:\n    {template}"), "/spec/template"),
        ("batch/v1", "Job", format!("spec:\n  template:\n    {template}"), "/spec/template"),
        (
            "batch/v1",
            "CronJob",
            String::from("spec:\n  schedule: \"* * * * *\"\n  jobTemplate:\n    spec:\n      template:\n        metadata: {labels: {app: a}}\n        spec:\n          containers: [{name: app, image: a}]\n"),
            "/spec/jobTemplate/spec/template",
        ),
    ];
    for (api, kind, body, path) in cases {
        let text = format!("apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: w\n  namespace: shop\n{body}");
        let (out, reports) = inject_text(&text);
        assert_eq!(reports[0].outcome, Outcome::Injected(vec![]), "{kind}");
        let doc = &docs(&out)[0];
        let pod = doc.pointer(path).unwrap();
        assert_eq!(names(&pod["spec"]["initContainers"]), [INIT_NAME, PROXY_NAME], "{kind}: {out}");
        assert_eq!(names(&pod["spec"]["containers"]), ["app"], "{kind}");
        assert_eq!(pod["metadata"]["annotations"][ann::INJECTED], env!("CARGO_PKG_VERSION"), "{kind}");
        if !path.is_empty() {
            assert_eq!(pod["metadata"]["labels"]["app"], "a", "{kind}");
        }
        assert!(out.starts_with(&format!("apiVersion: {api}\nkind: {kind}\nmetadata:\n")), "{out}");
    }
}

#[test]
fn items_go_into_empty_and_full_flow_lists_with_their_commas() {
    // Helm charts often render `initContainers: []` and `volumes: []`.
    for (init, volumes) in [("[]", "[]"), ("[ ]", "[{name: data, emptyDir: {}}]"), ("[{name: setup, image: b}]", "[]")]
    {
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: e, namespace: shop}}\nspec:\n  initContainers: {init}\n  containers: [{{name: app, image: nginx}}]\n  volumes: {volumes}\n"
        );
        let (out, reports) = inject_text(&text);
        assert_eq!(reports[0].outcome, Outcome::Injected(vec![]), "{text}");
        let pod = &docs(&out)[0];
        let inits = names(&pod["spec"]["initContainers"]);
        assert_eq!(inits[..2], [INIT_NAME, PROXY_NAME], "{out}");
        assert_eq!(inits.len(), if init.contains("setup") { 3 } else { 2 }, "{out}");
        let volumes_out = names(&pod["spec"]["volumes"]);
        assert!(volumes_out.len() >= 3 && volumes_out.contains(&"palisade-token"), "{out}");
        assert_eq!(volumes_out.contains(&"data"), volumes.contains("data"), "{out}");
    }
}

#[test]
fn a_list_and_a_multi_document_stream_keep_every_untouched_byte() {
    let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: s}\n- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: p\n  spec:\n    initContainers:\n    - name: setup\n      image: busybox\n    containers:\n    - name: app\n      image: a\n";
    let text = format!("{DEPLOYMENT}---\n# between documents\n{list}---\n");
    let (out, reports) = inject_text(&text);
    let outcomes: Vec<&Outcome> = reports.iter().map(|r| &r.outcome).collect();
    assert_eq!(outcomes, [&Outcome::Injected(vec![]), &Outcome::NoPods, &Outcome::Injected(vec![])]);
    // Every line of the input is still there, in order, unchanged: only lines were added.
    let mut out_lines = out.lines();
    for line in text.lines() {
        assert!(out_lines.any(|l| l == line), "line {line:?} lost or changed in:\n{out}");
    }
    let docs = docs(&out);
    assert_eq!(docs[0]["spec"]["template"]["spec"]["containers"][0]["x-unknown-field"], "kept");
    let list_pod = &docs[1]["items"][1];
    // The existing init container runs after the capture and the sidecar.
    assert_eq!(names(&list_pod["spec"]["initContainers"]), [INIT_NAME, PROXY_NAME, "setup"]);
    assert_eq!(docs[1]["items"][0], json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}));
    assert!(out.contains("  name: orders   # keep this comment\n") && out.contains("      # the app\n"), "{out}");
}

#[test]
fn the_injected_pod_has_what_the_spec_asks() {
    let (out, _) = inject_text(DEPLOYMENT);
    let pod = docs(&out)[0]["spec"]["template"].clone();
    let init = &pod["spec"]["initContainers"][0];
    assert_eq!(init["args"][0], "init-net");
    assert_eq!(
        init["args"],
        json!([
            "init-net",
            "--proxy-uid",
            "2102",
            "--inbound-port",
            "15006",
            "--outbound-port",
            "15001",
            "--admin-port",
            "15000"
        ])
    );
    let sc = &init["securityContext"];
    assert_eq!(sc["capabilities"], json!({"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}));
    assert_eq!((sc["runAsUser"].as_u64(), sc["runAsNonRoot"].as_bool()), (Some(0), Some(false)));
    assert_eq!(
        (sc["allowPrivilegeEscalation"].as_bool(), sc["readOnlyRootFilesystem"].as_bool()),
        (Some(false), Some(true))
    );

    let proxy = &pod["spec"]["initContainers"][1];
    assert_eq!((proxy["restartPolicy"].as_str(), &proxy["args"]), (Some("Always"), &json!(["sidecar"])));
    let sc = &proxy["securityContext"];
    assert_eq!(
        (sc["runAsUser"].as_u64(), sc["runAsGroup"].as_u64(), sc["runAsNonRoot"].as_bool()),
        (Some(2102), Some(2102), Some(true))
    );
    assert_eq!((sc["readOnlyRootFilesystem"].as_bool(), &sc["capabilities"]), (Some(true), &json!({"drop": ["ALL"]})));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(proxy["ports"][0], json!({"name": "palisade-admin", "containerPort": 15000, "protocol": "TCP"}));
    for (probe, path) in [("startupProbe", "/ready"), ("readinessProbe", "/ready"), ("livenessProbe", "/live")] {
        assert_eq!(proxy[probe]["httpGet"], json!({"path": path, "port": 15000}), "{probe}");
    }
    assert_eq!(proxy["resources"]["requests"]["memory"], "32Mi");
    let env: std::collections::BTreeMap<&str, &Value> =
        proxy["env"].as_array().unwrap().iter().map(|e| (e["name"].as_str().unwrap(), e)).collect();
    assert_eq!(env["PALISADE_WORKLOAD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace");
    assert_eq!(
        env["PALISADE_WORKLOAD_SERVICEACCOUNT"]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.serviceAccountName"
    );
    assert_eq!(env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
    assert_eq!(env["PALISADE_LOG"]["value"], "info");
    let config = env["PALISADE_CONFIG"]["value"].as_str().unwrap();
    let config = crate::yaml::parse(config, &Limits::FILE).unwrap()[0].root.to_json();
    assert_eq!(config["inbound"]["app"], "0.0.0.0:0", "the pod address the caller reached, never loopback");
    assert_eq!(config["policy"]["controlPlane"], "https://palisade-control.palisade-system.svc:15010");
    assert_eq!(
        config["policy"]["controlPlaneIdentity"],
        "spiffe://cluster.local/ns/palisade-system/sa/palisade-control"
    );
    assert!(
        out.contains("PALISADE_CONFIG\n") && out.contains("value: |\n"),
        "the configuration is readable text:\n{out}"
    );

    let volumes: Vec<&str> =
        pod["spec"]["volumes"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(volumes, ["palisade-podinfo", "palisade-token", "palisade-init-run"]);
    assert_eq!(pod["spec"]["volumes"][1]["projected"]["sources"][0]["serviceAccountToken"]["audience"], "palisade");
}

#[test]
fn annotations_tune_the_capture_the_log_level_and_the_resources() {
    let object = pod(
        json!({"annotations": {
            ann::INBOUND_PORTS: "80", ann::EXCLUDE_INBOUND_PORTS: "9090", ann::EXCLUDE_OUTBOUND_PORTS: "5432",
            ann::EXCLUDE_OUTBOUND_CIDRS: "10.96.0.0/12", ann::LOG_LEVEL: "debug", ann::APP_PROTOCOL: "http2",
            ann::PROXY_MEMORY_LIMIT: "512Mi", ann::INJECTED: "stale",
        }}),
        json!({"initContainers": [], "volumes": [{"name": "data", "emptyDir": {}}]}),
    );
    let (_, patched) = webhook(&object, "shop", FailurePolicy::Fail);
    let init = &patched["spec"]["initContainers"][0];
    let args: Vec<&str> = init["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    for pair in [
        ["--inbound-ports", "80"],
        ["--exclude-inbound-ports", "9090"],
        ["--exclude-outbound-ports", "5432"],
        ["--exclude-outbound-cidrs", "10.96.0.0/12"],
    ] {
        assert!(args.windows(2).any(|w| w == pair), "{pair:?} in {args:?}");
    }
    let proxy = &patched["spec"]["initContainers"][1];
    assert!(proxy["env"].as_array().unwrap().contains(&json!({"name": "PALISADE_LOG", "value": "debug"})));
    assert!(proxy["env"][0]["value"].as_str().unwrap().contains("appProtocol: http2"));
    assert_eq!(proxy["resources"]["limits"]["memory"], "512Mi");
    assert_eq!(proxy["resources"]["requests"]["memory"], "32Mi");
    assert_eq!(
        patched["metadata"]["annotations"][ann::INJECTED],
        env!("CARGO_PKG_VERSION"),
        "a stale mark is replaced"
    );
    let volumes: Vec<&str> =
        patched["spec"]["volumes"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(volumes, ["palisade-podinfo", "palisade-token", "palisade-init-run", "data"]);
}

#[test]
fn secret_mode_mounts_the_service_accounts_secret() {
    let mut s = settings();
    s.identity.mode = IdentityMode::Secret;
    let (out, _) = inject(DEPLOYMENT, &s).unwrap();
    let pod = docs(&out)[0]["spec"]["template"].clone();
    let secret = pod["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "palisade-identity").unwrap();
    assert_eq!(secret["secret"]["secretName"], "palisade-identity-orders");
    let mounts = &pod["spec"]["initContainers"][1]["volumeMounts"];
    assert!(mounts
        .as_array()
        .unwrap()
        .contains(&json!({"name": "palisade-identity", "mountPath": "/var/run/palisade/identity", "readOnly": true})));
}

#[test]
fn the_sidecar_configuration_reads_back_as_the_sidecars_own() {
    use crate::config::{load_text, SidecarConfig};
    use std::path::Path;
    let env = std::collections::BTreeMap::<String, String>::new();
    let mut s = settings();
    s.identity.mode = IdentityMode::Secret;
    let text = pod::sidecar_config(&s, &Default::default());
    let config: SidecarConfig =
        load_text(Path::new("PALISADE_CONFIG"), &text, &env).unwrap_or_else(|e| panic!("{text}\n{e:?}"));
    assert_eq!(config.inbound.app.to_string(), "0.0.0.0:0");
    assert_eq!(config.inbound.listen.to_string(), "0.0.0.0:15006");
    assert_eq!(config.outbound.listen.to_string(), "127.0.0.1:15001");
    assert_eq!(config.admin.listen.to_string(), "0.0.0.0:15000");
    assert_eq!(config.workload.labels_file.as_deref(), Some(Path::new("/var/run/palisade/podinfo/labels")));
    assert_eq!(config.identity.files.unwrap().key, Path::new("/var/run/palisade/identity/tls.key"));
    // No CA token to fall back on: the policy stream names its own, or the control plane cannot
    // read the pod's labels and refuses the stream.
    assert_eq!(config.policy.token_file.as_deref(), Some(Path::new("/var/run/secrets/palisade/token")), "{text}");
    // Only what differs from the defaults is written.
    assert!(!text.contains("drainPeriod") && !text.contains("telemetry"), "{text}");

    // controlPlane mode reads too; until the CA is built the sidecar refuses that one source by name.
    let text = pod::sidecar_config(&settings(), &Default::default());
    assert!(text.contains("files: null") && text.contains("trustAnchors:"), "{text}");
    let errors = load_text::<SidecarConfig>(Path::new("PALISADE_CONFIG"), &text, &env).err().unwrap_or_default();
    assert!(errors.iter().all(|e| e.field == "identity.controlPlane"), "{errors:?}");
    let value = crate::yaml::parse(&text, &Limits::FILE).unwrap()[0].root.to_json();
    assert_eq!(value["identity"]["controlPlane"]["address"], "palisade-control.palisade-system.svc:15012");
    assert_eq!(value["identity"]["controlPlane"]["tokenFile"], "/var/run/secrets/palisade/token");
    assert_eq!(value["identity"]["controlPlane"]["trustAnchors"], ANCHORS.as_str());
}

#[test]
fn passthrough_destinations_and_opaque_ports_reach_the_sidecars_configuration() {
    use crate::config::{load_text, SidecarConfig};
    let env = std::collections::BTreeMap::<String, String>::new();
    let mut s = settings();
    s.identity.mode = IdentityMode::Secret;
    s.outbound_passthrough = vec!["10.20.0.0/16".into()];
    s.opaque_ports = vec![25];
    let annotations = json!({ann::OUTBOUND_PASSTHROUGH: "203.0.113.7, fd00:db::/64", ann::OPAQUE_PORTS: "3306,7000"});
    let options = ann::PodOptions::read(annotations.as_object()).unwrap();
    let text = pod::sidecar_config(&s, &options);
    let config: SidecarConfig =
        load_text(std::path::Path::new("PALISADE_CONFIG"), &text, &env).unwrap_or_else(|e| panic!("{text}\n{e:?}"));
    let blocks: Vec<String> = config.outbound.passthrough.iter().map(ToString::to_string).collect();
    assert_eq!(blocks, ["10.20.0.0/16", "203.0.113.7/32", "fd00:db::/64"], "{text}");
    // Both sides: the well-known ones (Linkerd's), and those added.
    assert_eq!(config.outbound.opaque_ports, [25, 587, 3306, 4444, 5432, 6379, 7000, 9300, 11211], "{text}");
    assert_eq!(config.inbound.opaque_ports, config.outbound.opaque_ports, "{text}");
    // Without either, the sidecar's defaults stand and nothing is written.
    let text = pod::sidecar_config(&settings(), &Default::default());
    assert!(!text.contains("passthrough") && !text.contains("opaquePorts"), "{text}");
    // A default taken away (an app serving HTTP on 4444), and one the settings add (25).
    let annotations = json!({ann::NOT_OPAQUE_PORTS: "4444, 25"});
    let options = ann::PodOptions::read(annotations.as_object()).unwrap();
    let text = pod::sidecar_config(&s, &options);
    let config: SidecarConfig =
        load_text(std::path::Path::new("PALISADE_CONFIG"), &text, &env).unwrap_or_else(|e| panic!("{text}\n{e:?}"));
    assert_eq!(config.inbound.opaque_ports, [587, 3306, 5432, 6379, 9300, 11211], "{text}");
    assert_eq!(config.outbound.opaque_ports, config.inbound.opaque_ports, "{text}");
    // Both lists naming a port is a contradiction, refused by name.
    let both = json!({ann::OPAQUE_PORTS: "3306", ann::NOT_OPAQUE_PORTS: "3306"});
    let err = ann::PodOptions::read(both.as_object()).unwrap_err();
    assert_eq!(err.key, ann::NOT_OPAQUE_PORTS);

    for (key, value) in
        [(ann::OUTBOUND_PASSTHROUGH, "10.0.0.0/33"), (ann::OPAQUE_PORTS, "0"), (ann::OPAQUE_PORTS, "mysql")]
    {
        let err = ann::PodOptions::read(json!({key: value}).as_object()).unwrap_err();
        assert_eq!(err.key, key, "{value}: {err}");
    }
    s.outbound_passthrough = vec!["10.20.0.0/16".into(), "10.1.2.3/40".into()];
    s.opaque_ports = vec![0];
    let fields: Vec<String> = s.check().into_iter().map(|(field, _)| field).collect();
    assert_eq!(fields, ["outboundPassthrough[1]", "opaquePorts"]);
}

#[test]
fn the_meshs_telemetry_settings_reach_every_sidecar_and_bad_ones_are_refused_at_load() {
    use crate::config::{load_text, OtlpConfig, SidecarConfig};
    let env = std::collections::BTreeMap::<String, String>::new();
    let mut s = settings();
    s.identity.mode = IdentityMode::Secret;
    s.telemetry.otlp = Some(OtlpConfig {
        endpoint: "http://collector.observability:4317".into(),
        sampling: 0.05,
        ..Default::default()
    });
    s.telemetry.access_log = false;
    assert!(s.check().is_empty(), "{:?}", s.check());
    let text = pod::sidecar_config(&s, &Default::default());
    let config: SidecarConfig =
        load_text(std::path::Path::new("PALISADE_CONFIG"), &text, &env).unwrap_or_else(|e| panic!("{text}\n{e:?}"));
    assert_eq!(config.telemetry, s.telemetry, "{text}");
    // What a sidecar would refuse at start is refused in the settings, by field.
    s.telemetry.otlp = Some(OtlpConfig { endpoint: "http://user:secret@collector:4317".into(), ..Default::default() });
    let fields: Vec<String> = s.check().into_iter().map(|(field, _)| field).collect();
    assert_eq!(fields, ["telemetry.otlp.endpoint"]);
    // Files an injected sidecar can neither write (its file system is read-only) nor read (not
    // mounted) stop every injected sidecar at start: refused here.
    s.telemetry.otlp = Some(OtlpConfig {
        endpoint: "https://collector:4317".into(),
        trust_bundle: Some("/etc/collector/ca.crt".into()),
        ..Default::default()
    });
    s.telemetry.events.sink = crate::config::EventSink::File("/var/log/palisade/events.jsonl".into());
    let fields: Vec<String> = s.check().into_iter().map(|(field, _)| field).collect();
    assert_eq!(fields, ["telemetry.events.sink", "telemetry.otlp.trustBundle"]);
}

// === the webhook ===

#[test]
fn a_malformed_review_is_a_400_with_the_reason() {
    for (body, words) in [
        (&b"not json"[..], "not an AdmissionReview"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u"}}"#,
            "admission.k8s.io/v1",
        ),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#, "no request"),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"object":{}}}"#, "uid"),
    ] {
        let outcome = decide(body, &settings(), FailurePolicy::Fail);
        assert_eq!(outcome.status, 400);
        let error: Value = serde_json::from_slice(&outcome.body).unwrap();
        assert!(error["message"].as_str().unwrap().contains(words), "{error}");
        assert!(matches!(outcome.decision, Decided::Malformed(_)));
    }
}

#[test]
fn a_pod_that_cannot_be_injected_is_refused_or_admitted_as_the_failure_policy_says() {
    let object = pod(json!({"annotations": {ann::INBOUND_PORTS: "http"}}), json!({}));
    let (response, _) = webhook(&object, "shop", FailurePolicy::Fail);
    assert_eq!(response["allowed"], false);
    assert!(response["status"]["message"].as_str().unwrap().contains(ann::INBOUND_PORTS), "{response}");
    let (response, patched) = webhook(&object, "shop", FailurePolicy::Ignore);
    assert_eq!(response["allowed"], true);
    assert!(response["warnings"][0].as_str().unwrap().contains("without a sidecar"), "{response}");
    assert_eq!(patched, object);
}

#[test]
fn a_misspelt_annotation_is_warned_of_and_the_pod_still_injected() {
    let object = pod(json!({"annotations": {"palisade.dev/exclude-outbound-port": "5432"}}), json!({}));
    let (response, patched) = webhook(&object, "shop", FailurePolicy::Fail);
    assert_eq!(response["allowed"], true);
    let warning = response["warnings"][0].as_str().unwrap();
    assert!(warning.contains(&format!("did you mean {}?", ann::EXCLUDE_OUTBOUND_PORTS)), "{response}");
    assert_ne!(patched, object, "the pod is injected all the same");
    // `palisade inject` says the same on its report line.
    let manifest = "kind: Pod\nmetadata: {name: a, annotations: {palisade.dev/inject: \"false\"}}\nspec: {containers: [{name: app, image: i}]}\n";
    let (_, reports) = inject_text(manifest);
    let line = reports[0].to_string();
    assert!(line.starts_with("pod/a injected; warning: annotation palisade.dev/inject: \"false\""), "{line}");
    // A pod without such annotations gets no warnings member at all.
    let (response, _) = webhook(&pod(json!({}), json!({})), "shop", FailurePolicy::Fail);
    assert!(response.get("warnings").is_none(), "{response}");
}

#[test]
fn a_pod_the_sidecar_would_break_is_refused_with_the_field_and_why() {
    let app = |extra: Value| {
        let mut c = json!({"name": "app", "image": "nginx"});
        for (k, v) in extra.as_object().into_iter().flatten() {
            c[k] = v.clone();
        }
        json!([c])
    };
    let cases = [
        (
            json!({"volumes": [{"name": "data", "emptyDir": {}}, {"name": "palisade-token", "emptyDir": {}}]}),
            "/spec/volumes/1/name",
            "sidecar's own volume",
        ),
        (
            json!({"containers": app(json!({"ports": [{"containerPort": 80}, {"containerPort": 15006}]}))}),
            "/spec/containers/0/ports/1/containerPort",
            "sidecar's ports",
        ),
        (
            json!({"initContainers": app(json!({"ports": [{"containerPort": 15000}]}))}),
            "/spec/initContainers/0/ports/0/containerPort",
            "sidecar's ports",
        ),
        (
            json!({"containers": app(json!({"securityContext": {"runAsUser": 2102}}))}),
            "/spec/containers/0/securityContext/runAsUser",
            "never captured",
        ),
        (json!({"securityContext": {"runAsUser": 2102}}), "/spec/securityContext/runAsUser", "never captured"),
        // One of the sidecar's names without the sidecar: never taken as injected already.
        (
            json!({"initContainers": [{"name": "palisade-init", "image": "busybox", "command": ["true"]}]}),
            "/spec/initContainers/0/name",
            "sidecar's own container names",
        ),
        (
            json!({"containers": [{"name": "app", "image": "nginx"}, {"name": "palisade-proxy", "image": "busybox"}]}),
            "/spec/containers/1/name",
            "sidecar's own container names",
        ),
    ];
    for (spec, field, why) in cases {
        let object = pod(json!({}), spec);
        let (response, _) = webhook(&object, "shop", FailurePolicy::Fail);
        assert_eq!(response["allowed"], false, "{field}: {response}");
        let message = response["status"]["message"].as_str().unwrap();
        assert!(message.contains(field) && message.contains(why), "{field}: {message}");
        // `palisade inject` says the same of the manifest.
        let text = crate::yaml::to_string(&object).unwrap();
        let error = inject(&text, &settings()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains(field), "{field}: {error}");
    }
    // A UDP port of the sidecar's number is no clash with its TCP listener: injected.
    let object =
        pod(json!({}), json!({"containers": app(json!({"ports": [{"containerPort": 15006, "protocol": "UDP"}]}))}));
    assert_eq!(webhook(&object, "shop", FailurePolicy::Fail).0["allowed"], true);
    // Another uid at the container overrides the pod's: injected.
    let object = pod(
        json!({}),
        json!({"securityContext": {"runAsUser": 2102}, "containers": app(json!({"securityContext": {"runAsUser": 1000}}))}),
    );
    assert_eq!(webhook(&object, "shop", FailurePolicy::Fail).0["allowed"], true);
}

#[test]
fn annotations_that_would_capture_nothing_or_break_the_pod_are_refused_by_name() {
    let cases = [
        (json!({ann::INBOUND_PORTS: "15000,15006"}), ann::INBOUND_PORTS, "captures no port"),
        (
            json!({ann::INBOUND_PORTS: "8080", ann::EXCLUDE_INBOUND_PORTS: "8080"}),
            ann::INBOUND_PORTS,
            "captures no port",
        ),
        // Over the settings' limit (256Mi), or under the settings' request (50m).
        (json!({ann::PROXY_MEMORY_REQUEST: "2Gi"}), ann::PROXY_MEMORY_REQUEST, "more than its limit"),
        (json!({ann::PROXY_CPU_LIMIT: "0"}), ann::PROXY_CPU_LIMIT, "more than its limit"),
        (json!({ann::PROXY_MEMORY_LIMIT: "0.01Gi"}), ann::PROXY_MEMORY_LIMIT, "more than its limit"),
    ];
    // Excluded by the injector's settings, not the pod: still nothing captured.
    let mut excluding = settings();
    excluding.exclude_inbound_ports = vec![8080];
    let object = pod(json!({"annotations": {ann::INBOUND_PORTS: "8080"}}), json!({}));
    let outcome = decide(&admission_review(&object, "shop"), &excluding, FailurePolicy::Fail);
    let review: Value = serde_json::from_slice(&outcome.body).unwrap();
    assert_eq!(review["response"]["allowed"], false, "{review}");
    for (annotations, key, why) in cases {
        let object = pod(json!({"annotations": annotations}), json!({}));
        let (response, _) = webhook(&object, "shop", FailurePolicy::Fail);
        assert_eq!(response["allowed"], false, "{annotations}: {response}");
        let message = response["status"]["message"].as_str().unwrap();
        assert!(message.contains(key) && message.contains(why), "{annotations}: {message}");
    }
    // What can work is injected: a port of the app's beside the sidecar's, a request at its
    // limit, a limit raised with the request.
    for annotations in [
        json!({ann::INBOUND_PORTS: "15006,8080"}),
        json!({ann::PROXY_MEMORY_REQUEST: "256Mi"}),
        json!({ann::PROXY_MEMORY_REQUEST: "1Gi", ann::PROXY_MEMORY_LIMIT: "1.5Gi"}),
        json!({ann::PROXY_CPU_LIMIT: "0.05"}),
    ] {
        let object = pod(json!({"annotations": annotations}), json!({}));
        assert_eq!(webhook(&object, "shop", FailurePolicy::Fail).0["allowed"], true, "{annotations}");
    }
}

#[test]
fn a_pod_whose_sidecar_could_not_be_started_by_linux_is_refused_naming_the_annotations() {
    // 12,000 addresses to pass through (136 KB, within the API server's 256 KiB for annotations)
    // made a 221 KB PALISADE_CONFIG: admitted, then the container could not start (E2BIG), and
    // the runtime's error named neither.
    let many =
        |n: usize| (0..n).map(|i| format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)).collect::<Vec<_>>();
    for (annotation, n, field) in [
        (ann::OUTBOUND_PASSTHROUGH, 12_000, "PALISADE_CONFIG"),
        (ann::EXCLUDE_OUTBOUND_CIDRS, 12_000, "an argument of palisade-init"),
    ] {
        let object = pod(json!({"annotations": {annotation: many(n).join(",")}}), json!({}));
        let (response, _) = webhook(&object, "shop", FailurePolicy::Fail);
        assert_eq!(response["allowed"], false, "{annotation}");
        let message = response["status"]["message"].as_str().unwrap();
        assert!(message.contains("more than Linux passes") && message.contains(field), "{message}");
        assert!(
            message.contains(ann::OUTBOUND_PASSTHROUGH) && message.contains(ann::EXCLUDE_OUTBOUND_CIDRS),
            "{message}"
        );
    }
    // A thousand fit.
    let object = pod(json!({"annotations": {ann::OUTBOUND_PASSTHROUGH: many(1_000).join(",")}}), json!({}));
    assert_eq!(webhook(&object, "shop", FailurePolicy::Fail).0["allowed"], true);
}

#[test]
fn settings_whose_requests_are_over_their_limits_are_refused() {
    let mut s = settings();
    s.resources.requests.insert("memory".into(), "512Mi".into());
    s.init_resources.limits.insert("cpu".into(), "5m".into());
    let errors: Vec<String> = s.check().iter().map(|(field, message)| format!("{field}: {message}")).collect();
    assert!(
        errors.iter().any(|e| e.contains("resources.requests.memory") && e.contains("more than its limit")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("initResources.requests.cpu")), "{errors:?}");
    assert!(settings().check().is_empty(), "the defaults hold");
    // Equal quantities in other forms are not over: compared exactly (as floats, 350m came out
    // above 0.35).
    for (request, limit) in
        [("350m", "0.35"), ("700m", "0.7"), ("9m", "0.009"), ("1536Mi", "1.5Gi"), ("1Gi", "1073741824")]
    {
        let mut s = settings();
        s.resources.requests.insert("cpu".into(), request.into());
        s.resources.limits.insert("cpu".into(), limit.into());
        assert!(s.check().is_empty(), "{request} <= {limit}: {:?}", s.check());
    }
    let mut s = settings();
    s.resources.requests.insert("memory".into(), "1001Mi".into());
    s.resources.limits.insert("memory".into(), "1000Mi".into());
    assert!(!s.check().is_empty(), "1001Mi > 1000Mi");
}

#[test]
fn the_webhook_injects_a_pod_of_an_opted_in_namespace_as_palisade_inject_does() {
    let object = pod(json!({"annotations": {"team": "web"}}), json!({"serviceAccountName": "web"}));
    let (response, patched) = webhook(&object, "shop", FailurePolicy::Fail);
    assert_eq!(response["allowed"], true);
    assert_eq!(names(&patched["spec"]["initContainers"]), [INIT_NAME, PROXY_NAME]);
    // The same pod through the command's path: YAML text in, text out.
    let text = crate::yaml::to_string(&object).unwrap();
    let (out, _) = inject_text(&text);
    assert_eq!(docs(&out)[0], patched);
    // And from JSON text, as `kubectl get -o json` gives it.
    let (out, _) = inject_text(&serde_json::to_string_pretty(&object).unwrap());
    assert_eq!(docs(&out)[0], patched);
}

#[test]
fn reviews_of_other_objects_and_operations_are_allowed_unchanged() {
    let mut review: Value = serde_json::from_slice(&admission_review(&pod(json!({}), json!({})), "shop")).unwrap();
    review["request"]["operation"] = json!("UPDATE");
    let outcome = decide(&serde_json::to_vec(&review).unwrap(), &settings(), FailurePolicy::Fail);
    let body: Value = serde_json::from_slice(&outcome.body).unwrap();
    assert_eq!((body["response"]["allowed"].as_bool(), body["response"].get("patch")), (Some(true), None));
    review["request"]["operation"] = json!("CREATE");
    review["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let outcome = decide(&serde_json::to_vec(&review).unwrap(), &settings(), FailurePolicy::Fail);
    assert!(matches!(outcome.decision, Decided::Skipped(ref why) if why == "not a Pod"), "{:?}", outcome.decision);
}

#[test]
fn the_apps_probes_of_captured_ports_are_asked_through_the_sidecars_admin_port() {
    use crate::config::{load_text, AppProbe, GrpcProbe, ProbeHeader, SidecarConfig};
    let http = |port: Value| json!({"httpGet": {"path": "/healthz", "port": port, "httpHeaders": [{"name": "x-probe", "value": "1"}]}, "timeoutSeconds": 3, "periodSeconds": 7});
    let app = json!({
        "name": "app", "image": "a",
        "ports": [{"name": "http", "containerPort": 8080}, {"name": "metrics", "containerPort": 9090}],
        "readinessProbe": http(json!("http")),
        "livenessProbe": {"httpGet": {"port": 8080}},
        "startupProbe": {"exec": {"command": ["true"]}},
    });
    let side = json!({
        "name": "side", "image": "s",
        // Not captured (excluded below), the app's own TLS, another host: left as written.
        "readinessProbe": http(json!(9090)),
        "livenessProbe": {"httpGet": {"path": "/", "port": 8443, "scheme": "HTTPS"}},
        "startupProbe": {"httpGet": {"path": "/", "port": 8080, "host": "example.com"}},
    });
    let grpc = json!({"name": "grpc", "image": "g",
        "livenessProbe": {"grpc": {"port": 8080, "service": "shop.Orders"}, "periodSeconds": 2},
        "readinessProbe": {"tcpSocket": {"port": 8080}},
        "startupProbe": {"tcpSocket": {"port": 8080, "host": "db.example"}}});
    let object = pod(
        json!({"annotations": {ann::EXCLUDE_INBOUND_PORTS: "9090"}}),
        json!({"containers": [app.clone(), side.clone(), grpc.clone()]}),
    );
    let (response, patched) = webhook(&object, "shop", FailurePolicy::Fail);
    assert_eq!(response["allowed"], true);
    // What cannot work as written is said: the HTTPS probe of 8443.
    let warnings: Vec<&str> = response["warnings"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("livenessProbe of container side: an HTTPS probe of captured port 8443"),
        "{warnings:?}"
    );
    let containers = &patched["spec"]["containers"];
    // The port and path change; the timings and headers (which the admin port ignores) stay.
    let admin =
        json!({"path": "/app-health/app/readiness", "port": 15000, "httpHeaders": [{"name": "x-probe", "value": "1"}]});
    assert_eq!(containers[0]["readinessProbe"], json!({"httpGet": admin, "timeoutSeconds": 3, "periodSeconds": 7}));
    assert_eq!(containers[0]["livenessProbe"], json!({"httpGet": {"path": "/app-health/app/liveness", "port": 15000}}));
    assert_eq!(containers[0]["startupProbe"], app["startupProbe"], "exec probes stay");
    assert_eq!(containers[1], side);
    // A gRPC and a TCP probe become HTTP GETs the sidecar answers, with their timings; one of
    // another host stays.
    assert_eq!(
        containers[2]["livenessProbe"],
        json!({"httpGet": {"path": "/app-health/grpc/liveness", "port": 15000}, "periodSeconds": 2})
    );
    assert_eq!(
        containers[2]["readinessProbe"],
        json!({"httpGet": {"path": "/app-health/grpc/readiness", "port": 15000}})
    );
    assert_eq!(containers[2]["startupProbe"], grpc["startupProbe"]);

    let proxy = &patched["spec"]["initContainers"][1];
    let text = proxy["env"].as_array().unwrap().iter().find(|e| e["name"] == crate::config::CONFIG_VAR).unwrap()
        ["value"]
        .as_str()
        .unwrap();
    let env = std::collections::BTreeMap::<String, String>::new();
    let config: Result<SidecarConfig, _> = load_text(std::path::Path::new("PALISADE_CONFIG"), text, &env);
    // In controlPlane mode the sidecar refuses only its certificate source here (no CA running).
    let probes = match config {
        Ok(config) => config.admin.app_probes,
        Err(errors) => {
            assert!(errors.iter().all(|e| e.field == "identity.controlPlane"), "{errors:?}");
            let value = crate::yaml::parse(text, &Limits::FILE).unwrap()[0].root.to_json();
            serde_json::from_value(value["admin"]["appProbes"].clone()).unwrap()
        }
    };
    let expected: std::collections::BTreeMap<String, AppProbe> = [
        (
            "app/readiness".to_string(),
            AppProbe {
                port: 8080,
                path: Some("/healthz".into()),
                grpc: None,
                headers: vec![ProbeHeader { name: "x-probe".into(), value: "1".into() }],
                timeout_seconds: 3,
            },
        ),
        (
            "app/liveness".to_string(),
            AppProbe { port: 8080, path: Some("/".into()), grpc: None, headers: vec![], timeout_seconds: 1 },
        ),
        (
            "grpc/liveness".to_string(),
            AppProbe {
                port: 8080,
                path: None,
                grpc: Some(GrpcProbe { service: "shop.Orders".into() }),
                headers: vec![],
                timeout_seconds: 1,
            },
        ),
        (
            "grpc/readiness".to_string(),
            AppProbe { port: 8080, path: None, grpc: None, headers: vec![], timeout_seconds: 1 },
        ),
    ]
    .into();
    assert_eq!(probes, expected, "{text}");
    // `palisade inject` writes the same into the manifest's text.
    let manifest = crate::yaml::to_string(&object).unwrap();
    let (out, _) = inject(&manifest, &settings()).unwrap();
    assert_eq!(docs(&out)[0]["spec"]["containers"], patched["spec"]["containers"]);
    // A port the injector's settings exclude is not captured either: its probes stay as written.
    let mut excluding = settings();
    excluding.exclude_inbound_ports = vec![8080];
    let (out, _) = inject(&manifest, &excluding).unwrap();
    assert_eq!(docs(&out)[0]["spec"]["containers"][0], app, "nothing to rewrite on an excluded port");
}

#[test]
fn a_manifest_with_anchors_is_refused_with_the_line_and_what_to_do() {
    let text = "apiVersion: v1\nkind: List\nitems:\n  - kind: Pod\n    metadata: {name: a}\n    spec: &s {containers: [{name: app, image: i}]}\n  - kind: Pod\n    metadata: {name: b}\n    spec: *s\n";
    let err = inject(text, &settings()).unwrap_err().to_string();
    assert!(err.starts_with("line 6: YAML anchors and aliases"), "{err}");
    assert!(err.contains("yq 'explode(.)'"), "{err}");
    // The same objects without them are injected.
    let expanded = text.replace("&s ", "").replace("spec: *s", "spec: {containers: [{name: app, image: i}]}");
    assert!(inject(&expanded, &settings()).is_ok());
}

/// The webhook reads its trust anchors file again when it changes: a rotation's new root goes
/// into the pods made from then on; a file that turns unreadable or holds no CA keeps the last.
#[test]
fn the_webhooks_trust_anchors_follow_their_file() {
    use crate::identity::DevCa;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("roots.crt");
    let (old, new) = (DevCa::generate("cluster.local").unwrap(), DevCa::generate("cluster.local").unwrap());
    std::fs::write(&file, old.cert_pem()).unwrap();
    let mut configured = InjectSettings::default();
    configured.identity.trust_anchors_file = Some(file.clone());
    let live = super::webhook::LiveSettings::new(configured.resolve_files().unwrap());
    let anchors = |s: &InjectSettings| s.identity.trust_anchors.clone().unwrap();
    assert_eq!(anchors(&live.current()), old.cert_pem());
    let both = format!("{}{}", old.cert_pem(), new.cert_pem());
    std::fs::write(&file, &both).unwrap();
    assert_eq!(anchors(&live.current()), both);
    std::fs::write(&file, "not a certificate\n").unwrap();
    assert_eq!(anchors(&live.current()), both, "refused anchors leave the last in force");
    std::fs::remove_file(&file).unwrap();
    assert_eq!(anchors(&live.current()), both, "an unreadable file too");
}

/// With a CA in the control plane, pods get the roots it hands out, whatever the anchors file
/// says meanwhile: a bundle the CA refused (the file rewritten with the old root alone while the
/// new key signs) stays out of new pods, as it stays out of the CA.
#[test]
fn the_webhooks_trust_anchors_follow_the_cas_bundle_in_force_over_the_file() {
    use crate::identity::DevCa;
    use rustls::pki_types::pem::PemObject;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("roots.crt");
    let (old, new) = (DevCa::generate("cluster.local").unwrap(), DevCa::generate("cluster.local").unwrap());
    let both = format!("{}{}", old.cert_pem(), new.cert_pem());
    std::fs::write(&file, &both).unwrap();
    let mut configured = InjectSettings::default();
    configured.identity.trust_anchors_file = Some(file.clone());
    let live = super::webhook::LiveSettings::new(configured.resolve_files().unwrap());
    let der = |pem: &str| -> Vec<Vec<u8>> {
        rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).map(|c| c.unwrap().to_vec()).collect()
    };
    let (ca, roots) = tokio::sync::watch::channel(std::sync::Arc::new(der(&both)));
    live.follow_ca_roots(roots);
    let anchors = |s: &InjectSettings| der(s.identity.trust_anchors.as_deref().unwrap());
    assert_eq!(anchors(&live.current()), der(&both));
    // The file loses the new root; the CA refused that and keeps both.
    std::fs::write(&file, old.cert_pem()).unwrap();
    assert_eq!(anchors(&live.current()), der(&both));
    // The CA's bundle moves on (a rotation's last step): so do new pods.
    ca.send_replace(std::sync::Arc::new(der(new.cert_pem())));
    assert_eq!(anchors(&live.current()), der(new.cert_pem()));
    assert!(crate::identity::check_trust_anchors(live.current().identity.trust_anchors.as_deref().unwrap()).is_ok());
}

/// A native sidecar (an init container with `restartPolicy: Always`) is an app container: its
/// probes of captured ports are the sidecar's to ask, found at its index once `palisade-init`
/// and `palisade-proxy` are in front of it, by the webhook's patch and in the manifest's text.
#[test]
fn a_native_sidecars_probes_are_rewritten_as_an_app_containers() {
    let logship = json!({
        "name": "logship", "image": "l", "restartPolicy": "Always",
        "ports": [{"name": "ship", "containerPort": 6000}],
        "startupProbe": {"tcpSocket": {"port": "ship"}},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 6000}},
    });
    let migrate = json!({"name": "migrate", "image": "m"});
    let object = pod(
        json!({}),
        json!({"initContainers": [migrate.clone(), logship], "containers": [{"name": "app", "image": "a"}]}),
    );
    let (response, patched) = webhook(&object, "shop", FailurePolicy::Fail);
    assert_eq!(response["allowed"], true, "{response}");
    let init = &patched["spec"]["initContainers"];
    assert_eq!(names(init), ["palisade-init", "palisade-proxy", "migrate", "logship"]);
    assert_eq!(init[2], migrate, "an ordinary init container is left as it is");
    assert_eq!(init[3]["startupProbe"], json!({"httpGet": {"path": "/app-health/logship/startup", "port": 15000}}));
    assert_eq!(init[3]["readinessProbe"], json!({"httpGet": {"path": "/app-health/logship/readiness", "port": 15000}}));
    let manifest = crate::yaml::to_string(&object).unwrap();
    let (out, _) = inject(&manifest, &settings()).unwrap();
    assert_eq!(docs(&out)[0]["spec"]["initContainers"], patched["spec"]["initContainers"]);
}

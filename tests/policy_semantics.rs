//! Authorisation semantics, table-driven, through a real sidecar: real TLS callers with real
//! SPIFFE identities, plaintext callers without one, raw request targets as attackers send them.

mod support;

use support::*;

struct Case {
    caller: &'static str,
    method: &'static str,
    target: &'static str,
    headers: &'static [(&'static str, &'static str)],
    status: u16,
    why: &'static str,
}

const fn case(
    caller: &'static str,
    method: &'static str,
    target: &'static str,
    status: u16,
    why: &'static str,
) -> Case {
    Case { caller, method, target, headers: &[], status, why }
}

const fn with(
    caller: &'static str,
    method: &'static str,
    target: &'static str,
    headers: &'static [(&'static str, &'static str)],
    status: u16,
    why: &'static str,
) -> Case {
    Case { caller, method, target, headers, status, why }
}

/// Runs every case against a sidecar enforcing `documents`; returns how many ran.
async fn run(documents: &str, cases: &[Case]) -> usize {
    let sidecar = PolicedSidecar::start(documents).await;
    let mut failures = Vec::new();
    for c in cases {
        let answer = sidecar.send(c.caller, c.method, c.target, c.headers).await;
        if answer.status != c.status {
            failures.push(format!(
                "{} {} {} as {}: got {}, want {} ({})",
                c.method,
                c.target,
                c.headers.len(),
                c.caller,
                answer.status,
                c.status,
                c.why
            ));
            continue;
        }
        if c.method == "HEAD" {
            assert!(answer.body.is_empty(), "an answer to HEAD has no body: {:?}", answer.body);
        } else if c.status == 403 {
            let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
            assert_eq!(body["error"], "forbidden", "{}", c.why);
            assert!(!answer.body.contains("rule"), "the caller is never told which rule matched");
        }
    }
    sidecar.shutdown();
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    cases.len()
}

const MAIN_POLICY: &str = r#"  authorization:
    default: DENY
    rules:
      - name: block-admin
        action: DENY
        to: {paths: ["/admin", "/admin/*"]}
      - name: frontend-reads
        action: ALLOW
        from: {principals: ["spiffe://cluster.local/ns/shop/sa/frontend"]}
        to: {methods: [GET, HEAD], paths: ["/orders", "/orders/*"]}
      - name: shop-writes
        action: ALLOW
        from: {namespaces: [shop]}
        to: {methods: [POST], paths: ["/orders"]}
      - name: any-admin-account
        action: ALLOW
        from: {principals: ["*/sa/admin"]}
      - name: loopback-health
        action: ALLOW
        from: {ipBlocks: ["127.0.0.0/8"]}
        to: {paths: ["/healthz"]}
      - name: ipv6-only
        action: ALLOW
        from: {ipBlocks: ["fd00::/8"]}
        to: {paths: ["/v6"]}
      - name: tenant-acme
        action: ALLOW
        to: {paths: ["/tenant*"]}
        when: [{key: "request.headers[x-tenant]", values: [acme, "beta-*"]}]
      - name: shop-prefix
        action: ALLOW
        from: {principals: ["spiffe://cluster.local/ns/shop/*"]}
        to: {paths: ["/shop-only"]}
      - name: wrong-port
        action: ALLOW
        to: {ports: [1], paths: ["/wrong-port"]}
      - name: frontend-or-billing-delete
        action: ALLOW
        from: {principals: ["spiffe://cluster.local/ns/shop/sa/frontend", "spiffe://cluster.local/ns/shop/sa/billing"]}
        to: {methods: [DELETE], paths: ["/carts/*"]}
      - name: mapped-loopback-deny
        action: DENY
        from: {ipBlocks: ["::ffff:127.0.0.0/104"]}
        to: {paths: ["/mapped"]}
      - name: web-namespace-reads
        action: ALLOW
        from: {namespaces: ["web"]}
        to: {methods: [GET], paths: ["/catalog"]}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_wildcards_and_combinations() {
    let cases = [
        case("frontend", "GET", "/orders", 200, "principal + method + exact path"),
        case("frontend", "GET", "/orders/7", 200, "prefix path"),
        case("frontend", "HEAD", "/orders/7", 200, "second listed method"),
        case("frontend", "GET", "/orders/", 200, "trailing slash is the same path"),
        case("frontend", "GET", "/orders?id=7", 200, "query does not take part"),
        case("frontend", "GET", "/ordersX", 403, "'/orders/*' needs the slash; '/orders' is exact"),
        case("frontend", "PUT", "/orders", 403, "method not listed: default DENY"),
        case("frontend", "POST", "/orders", 200, "namespace shop may POST"),
        case("billing", "POST", "/orders", 200, "namespace shop may POST"),
        case("billing", "GET", "/orders", 403, "billing is not the frontend principal"),
        case("ui", "POST", "/orders", 403, "namespace web may not POST"),
        case("ui", "GET", "/catalog", 200, "namespace web may read the catalog"),
        case("frontend", "GET", "/catalog", 403, "namespace shop may not"),
        case("plain", "GET", "/catalog", 403, "no principal, no namespace"),
        case("plain", "GET", "/orders", 403, "plaintext has no principal"),
        case("admin", "GET", "/anything", 200, "suffix wildcard principal"),
        case("admin", "DELETE", "/orders/7", 200, "a rule without 'to' allows every operation"),
        case("admin", "GET", "/admin", 403, "DENY is checked before any ALLOW"),
        case("admin", "GET", "/admin/users", 403, "DENY on the prefix"),
        case("frontend", "GET", "/admin", 403, "DENY for everyone"),
        case("frontend", "HEAD", "/admin", 403, "a refusal of HEAD is a head alone"),
        case("plain", "GET", "/admin", 403, "DENY for plaintext too"),
        case("plain", "GET", "/healthz", 200, "ipBlocks: loopback"),
        case("frontend", "GET", "/healthz", 200, "ipBlocks apply to TLS callers too"),
        case("plain", "GET", "/v6", 403, "an IPv4 caller is not in fd00::/8"),
        with("plain", "GET", "/tenant/1", &[("x-tenant", "acme")], 200, "when: header value"),
        with("plain", "GET", "/tenant/1", &[("x-tenant", "beta-7")], 200, "when: header prefix wildcard"),
        with("plain", "GET", "/tenant/1", &[("x-tenant", "other")], 403, "when: wrong value"),
        case("plain", "GET", "/tenant/1", 403, "when: header missing"),
        with("plain", "GET", "/tenant/1", &[("X-Tenant", "acme")], 200, "header names are case-insensitive"),
        case("billing", "GET", "/shop-only", 200, "principal prefix wildcard"),
        case("ui", "GET", "/shop-only", 403, "outside the prefix"),
        case("frontend", "GET", "/wrong-port", 403, "ports: the request did not come to port 1"),
        case("billing", "DELETE", "/carts/9", 200, "second principal in the list"),
        case("ui", "DELETE", "/carts/9", 403, "not in the principal list"),
        case("billing", "DELETE", "/carts/", 200, "'/carts/*' holds for the directory's own page"),
        case("billing", "DELETE", "/carts", 200, "which is '/carts' in match form (a trailing slash is ignored)"),
        case("billing", "DELETE", "/cartsX", 403, "'/carts/*' needs the slash"),
    ];
    assert!(run(&policy("main", MAIN_POLICY), &cases).await >= 30);
}

/// Over HTTP/2 too, a refused HEAD is answered with its head alone: a body after it broke the
/// stream (curl and nghttp2 saw PROTOCOL_ERROR, never the status), and a caller's sidecar
/// counted each refused HEAD as a 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_head_over_http2_is_a_head_alone() {
    let sidecar = PolicedSidecar::start(&policy("main", MAIN_POLICY)).await;
    let answer =
        sidecar.https("frontend").head(sidecar.url("/admin")).send().await.expect("an answer, not a broken stream");
    assert_eq!(answer.version(), reqwest::Version::HTTP_2);
    assert_eq!(answer.status(), 403);
    assert!(answer.headers().contains_key("x-request-id"));
    assert!(answer.bytes().await.expect("the stream ends cleanly").is_empty());
    sidecar.shutdown();
}

/// A DENY on `/private/*` alone holds for `/private/`, which the app routes as the directory's
/// own page (Django's `/admin/`), in whatever spelling reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_on_a_directory_holds_for_its_own_page() {
    let spec = r#"  authorization:
    default: ALLOW
    rules:
      - name: no-private
        action: DENY
        to: {paths: ["/private/*"]}
"#;
    let cases = [
        case("frontend", "GET", "/private/", 403, "the directory's page"),
        case("frontend", "GET", "/private", 403, "the same path in match form"),
        case("frontend", "GET", "//private//", 403, "merged slashes"),
        case("frontend", "GET", "/private/./", 403, "a dot segment"),
        case("frontend", "GET", "/PRIVATE/", 403, "upper case"),
        case("frontend", "GET", "/private/x", 403, "below it"),
        case("frontend", "GET", "/privateer", 200, "another path"),
    ];
    assert_eq!(run(&policy("dir", spec), &cases).await, cases.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normalisation_closes_every_bypass_of_a_deny() {
    let cases = [
        case("admin", "GET", "/public/../admin", 403, "dot-dot"),
        case("admin", "GET", "//admin", 403, "double slash"),
        case("admin", "GET", "/%61dmin", 403, "percent-encoded letter"),
        case("admin", "GET", "/%61%64%6d%69%6e", 403, "every letter encoded"),
        case("admin", "GET", "/admin/", 403, "trailing slash"),
        case("admin", "GET", "/ADMIN/", 403, "trailing slash, upper case"),
        case("admin", "GET", "/./admin", 403, "dot segment"),
        case("admin", "GET", "/x/%2e%2e/admin", 403, "encoded dot-dot"),
        case("admin", "GET", "/x/%2E%2E/admin/", 403, "upper-case encoded dot-dot"),
        case("admin", "GET", "///admin//users", 403, "many slashes"),
        case("admin", "GET", "/admin%2fusers", 400, "encoded slash is refused"),
        case("admin", "GET", "/admin%00", 400, "encoded NUL is refused"),
        case("admin", "GET", "/../admin", 400, "escaping the root is refused"),
        case("admin", "GET", "/%2e%2e/admin", 400, "escaping the root, encoded"),
        case("admin", "GET", "/public/./x", 200, "a harmless dot segment still gets through"),
        case("admin", "GET", "x:/admin", 400, "a target not in origin form"),
        case("admin", "GET", "admin/users", 400, "a relative target"),
        case("admin", "GET", "/admin;x", 400, "path parameters (Tomcat, Spring strip them)"),
        case("admin", "GET", "/public/..;/admin", 400, "the ..; traversal"),
        case("admin", "GET", "/public\\..\\admin", 400, "backslashes (IIS, WHATWG)"),
        case("admin", "delete", "/orders/7", 400, "a lower-case method would dodge method rules"),
        case("admin", "GET", "/mapped", 403, "an IPv4-mapped ipBlock matches the IPv4 caller"),
        with(
            "plain",
            "GET",
            "/tenant/1",
            &[("x-tenant", "other"), ("x-tenant", "acme")],
            403,
            "a repeated header does not satisfy an ALLOW",
        ),
    ];
    assert!(run(&policy("main", MAIN_POLICY), &cases).await >= 22);

    // The app receives the path the policy judged.
    let sidecar = PolicedSidecar::start(&policy("main", MAIN_POLICY)).await;
    let answer = sidecar.send("admin", "GET", "/public/./x//y/%7Ez?q=%2F", &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.seen().path, "/public/x/y/~z");
    sidecar.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_audit_and_several_policies() {
    let mut ran = 0;
    // Default ALLOW with one DENY rule.
    let deny_delete = "  authorization:\n    default: ALLOW\n    rules:\n      - {name: no-delete, action: DENY, to: {methods: [DELETE]}}\n";
    ran += run(
        &policy("deny-delete", deny_delete),
        &[case("plain", "GET", "/x", 200, "default ALLOW"), case("frontend", "DELETE", "/x", 403, "the DENY rule")],
    )
    .await;
    // No explicit default: only DENY rules means ALLOW; an ALLOW rule turns it into an allow-list.
    ran += run(
        &policy(
            "implicit",
            "  authorization:\n    rules:\n      - {name: no-secret, action: DENY, to: {paths: [\"/secret\"]}}\n",
        ),
        &[case("plain", "GET", "/x", 200, "implicit ALLOW"), case("plain", "GET", "/secret", 403, "the DENY rule")],
    )
    .await;
    ran += run(
        &policy(
            "implicit-list",
            "  authorization:\n    rules:\n      - {name: reads, action: ALLOW, to: {methods: [GET]}}\n",
        ),
        &[case("plain", "GET", "/x", 200, "the ALLOW rule"), case("plain", "POST", "/x", 403, "implicit DENY")],
    )
    .await;
    // No authorization section at all.
    ran +=
        run(&policy("empty", "  mtls: PERMISSIVE\n"), &[case("plain", "POST", "/anything", 200, "nothing to enforce")])
            .await;
    // AUDIT decides and counts but never blocks.
    let audit = "  authorization:\n    mode: AUDIT\n    default: DENY\n    rules:\n      - {name: reads, action: ALLOW, to: {methods: [GET]}}\n";
    ran += run(
        &policy("audit", audit),
        &[
            case("plain", "GET", "/x", 200, "allowed anyway"),
            case("plain", "POST", "/x", 200, "would be denied, is not"),
        ],
    )
    .await;
    // Several policies: all apply; a request must pass every one. Policies for other labels or
    // namespaces do not apply.
    let many = format!(
        "{}{}{}{}",
        policy("gets-only", "  authorization:\n    default: DENY\n    rules:\n      - {name: gets, action: ALLOW, to: {methods: [GET]}}\n"),
        policy("no-secret", "  authorization:\n    rules:\n      - {name: secret, action: DENY, to: {paths: [\"/secret*\"]}}\n"),
        "---\napiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: other-app, namespace: shop}\nspec:\n  selector: {matchLabels: {app: payments}}\n  authorization: {default: DENY}\n",
        "---\napiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: other-ns, namespace: web}\nspec:\n  authorization: {default: DENY}\n",
    );
    ran += run(
        &many,
        &[
            case("plain", "GET", "/x", 200, "both policies allow"),
            case("plain", "GET", "/secret/1", 403, "the second policy denies"),
            case("plain", "POST", "/x", 403, "the first policy denies"),
            case("admin", "POST", "/secret", 403, "both deny"),
        ],
    )
    .await;
    assert!(ran >= 13);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_is_counted_and_reported() {
    let audit = "  authorization:\n    mode: AUDIT\n    default: DENY\n    rules:\n      - {name: reads, action: ALLOW, to: {methods: [GET]}}\n";
    let sidecar = PolicedSidecar::start(&policy("audit", audit)).await;
    assert_eq!(sidecar.send("frontend", "POST", "/x", &[]).await.status, 200);
    let metrics = sidecar.metrics().await;
    assert!(
        metrics.contains(
            r#"palisade_authz_decisions_total{decision="deny",mode="AUDIT",policy="shop/audit",rule="default"} 1"#
        ),
        "{metrics}"
    );
    sidecar.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_are_counted_by_policy_and_rule() {
    let sidecar = PolicedSidecar::start(&policy("main", MAIN_POLICY)).await;
    for _ in 0..3 {
        assert_eq!(sidecar.send("admin", "GET", "/admin", &[]).await.status, 403);
    }
    let metrics = sidecar.metrics().await;
    assert!(
        metrics.contains(
            r#"palisade_authz_decisions_total{decision="deny",mode="ENFORCE",policy="shop/main",rule="block-admin"} 3"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(r#"decision="deny",destination="",direction="inbound",method="GET",source_principal="spiffe://cluster.local/ns/ops/sa/admin"} 3"#), "{metrics}");
    sidecar.shutdown();
}

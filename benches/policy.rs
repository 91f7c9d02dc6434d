//! Policy decision (the whole of `PolicySnapshot::decide`), rate-limit and compile times (issue 3's targets: a decision under 1 µs at
//! 200 rules, a compile of 200 rules under 10 ms). Run: `cargo bench --bench policy`.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use palisade::authn::{AuthnRuntime, SystemClock};
use palisade::config::{MtlsMode, Workload};
use palisade::identity::SpiffeId;
use palisade::policy::{
    match_form, normalize, parse_file, Authenticated, BodyInspection, Buckets, PolicySnapshot, Refusal, RequestView,
    Source,
};
use palisade::telemetry::Metrics;

/// A policy with `n` rules of every kind, none of which matches the benchmark's request, so a
/// decision walks all of them (the worst case), then falls to the default.
fn policy_with(n: usize) -> String {
    let mut doc = String::from(
        "apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: bench, namespace: shop}\nspec:\n  authorization:\n    default: ALLOW\n    rules:\n",
    );
    for i in 0..n {
        let rule = match i % 4 {
            0 => format!("      - {{name: r{i}, action: DENY, to: {{methods: [DELETE], paths: [\"/r{i}/*\"]}}}}\n"),
            1 => format!("      - {{name: r{i}, action: DENY, from: {{principals: [\"spiffe://cluster.local/ns/x{i}/*\"]}}, to: {{paths: [\"/orders\"]}}}}\n"),
            2 => format!("      - {{name: r{i}, action: DENY, from: {{ipBlocks: [\"10.{}.0.0/16\"]}}}}\n", i % 250),
            _ => format!("      - {{name: r{i}, action: DENY, when: [{{key: \"request.headers[x-r{i}]\", values: [\"v*\"]}}]}}\n"),
        };
        doc.push_str(&rule);
    }
    doc
}

fn workload() -> Workload {
    Workload { namespace: "shop".into(), service_account: "orders".into(), ..Default::default() }
}

fn compile(n: usize, metrics: &Metrics) -> PolicySnapshot {
    let (docs, errors) = parse_file(Path::new("bench.yaml"), &policy_with(n));
    assert!(errors.is_empty(), "{errors:?}");
    let authn = AuthnRuntime::new(Arc::new(SystemClock));
    PolicySnapshot::compile("bench".into(), Source::Files, &docs, &workload(), MtlsMode::STRICT, metrics, &authn, None)
        .expect("the bench policy compiles")
}

fn decisions(c: &mut Criterion) {
    let metrics = Metrics::new();
    let principal = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/frontend").unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert("user-agent", "bench".parse().unwrap());
    headers.insert("accept", "*/*".parse().unwrap());
    let method = http::Method::GET;
    // The whole decision (limits, normalisation, authorisation, rate limits) as the inbound
    // proxy asks it.
    let mut group = c.benchmark_group("decide");
    for n in [1, 10, 200] {
        let snapshot = compile(n, &metrics);
        let view = RequestView {
            principal: Some(&principal),
            source_ip: Some("192.168.1.7".parse().unwrap()),
            plaintext: false,
            method: &method,
            target: b"/orders/7",
            path: "/orders/7",
            port: 8080,
            headers: &headers,
            authority: None,
            malformed_head: None,
            auth: Authenticated::Nobody,
        };
        assert!(snapshot.decide(&view, |_| {}).is_ok());
        group.bench_with_input(BenchmarkId::from_parameter(n), &view, |b, view| {
            b.iter(|| black_box(snapshot.decide(black_box(view), |_| {})).is_ok())
        });
    }
    group.finish();

    c.bench_function("normalize/already-normal", |b| {
        b.iter(|| black_box(normalize(black_box("/orders/7/items")).is_ok()))
    });
    c.bench_function("normalize/attack", |b| {
        b.iter(|| black_box(normalize(black_box("/public/..//%61dmin/./x/")).map(|p| match_form(&p).len())))
    });
}

/// Step 6 on a body as the inbound proxy asks it: the plan, the content coding undone, the WAF.
fn bodies(c: &mut Criterion) {
    let metrics = Metrics::new();
    let doc = "apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: bench, namespace: shop}\nspec:\n  authorization: {default: ALLOW}\n  inputValidation:\n    waf: {mode: BLOCK}\n";
    let (docs, errors) = parse_file(Path::new("bench.yaml"), doc);
    assert!(errors.is_empty(), "{errors:?}");
    let authn = AuthnRuntime::new(Arc::new(SystemClock));
    let snapshot = PolicySnapshot::compile(
        "bench".into(),
        Source::Files,
        &docs,
        &workload(),
        MtlsMode::STRICT,
        &metrics,
        &authn,
        None,
    )
    .expect("the bench policy compiles");
    // About 1 KB of an order API's JSON.
    let item = r#"{"sku":"TEA-001","name":"Earl Grey & Lemon, O'Brien's blend","qty":2,"price":4.5,"note":"leave it by the door; select the blue box"}"#;
    let json = format!(r#"{{"id":"550e8400-e29b-41d4-a716-446655440000","items":[{}]}}"#, [item; 8].join(","));
    let gzip = |body: &[u8]| {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(body).unwrap();
        e.finish().unwrap()
    };
    let gzipped = gzip(json.as_bytes());
    // 64 MiB of blanks inside a JSON string, about 64 KB compressed: stops at inspectBodyBytes.
    let bomb = gzip(format!(r#"{{"pad":"{}"}}"#, " ".repeat(64 << 20)).as_bytes());
    let png = [&b"\x89PNG\r\n\x1a\n"[..], &[0u8; 1024]].concat();
    let mut group = c.benchmark_group("body");
    let inspected = Ok(BodyInspection::Inspected);
    // (name, Content-Type, Content-Encoding, body, what step 6 makes of it)
    type Case<'a> = (&'a str, &'a [u8], Option<&'a [u8]>, &'a [u8], Result<BodyInspection, Refusal>);
    let cases: [Case; 5] = [
        ("json 1 KB", b"application/json", None, json.as_bytes(), inspected.clone()),
        ("json 1 KB as text/plain", b"text/plain", None, json.as_bytes(), inspected.clone()),
        ("json 1 KB gzip", b"application/json", Some(b"gzip"), &gzipped, inspected),
        ("gzip bomb to the 64 KiB limit", b"application/json", Some(b"gzip"), &bomb, Err(Refusal::UninspectableBody)),
        ("image/png 1 KB (first bytes only)", b"image/png", None, &png, Ok(BodyInspection::NotRead)),
    ];
    for (name, content_type, coding, body, outcome) in cases {
        let plan = snapshot.body_plan("/orders", Some(content_type), coding).expect("a WAF reads bodies");
        assert_eq!(snapshot.inspect_body(plan, "/orders", Some(content_type), body, |_| {}), outcome, "{name}");
        group.bench_function(name, |b| {
            b.iter(|| {
                let plan = snapshot.body_plan("/orders", Some(content_type), coding).unwrap();
                black_box(snapshot.inspect_body(plan, "/orders", Some(content_type), black_box(body), |_| {}))
            })
        });
    }
    group.finish();
}

fn compile_time(c: &mut Criterion) {
    let metrics = Metrics::new();
    c.bench_function("compile/200-rules (parse + compile)", |b| {
        b.iter(|| black_box(compile(200, &metrics).policies.len()))
    });
}

fn rate_limits(c: &mut Criterion) {
    let one = NonZeroU32::new(1_000_000).unwrap();
    let buckets = Buckets::new(one, Duration::from_secs(1), one);
    let keys: Vec<u64> = (0..10_000u32).map(|i| buckets.key_of(&i.to_le_bytes())).collect();
    for k in &keys {
        let _ = buckets.take(*k);
    }
    assert_eq!(buckets.keys(), 10_000);
    let mut i = 0usize;
    c.bench_function("ratelimit/take with 10k live keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(buckets.take(keys[i]).is_ok())
        })
    });
    c.bench_function("ratelimit/hash a principal key", |b| {
        b.iter(|| black_box(buckets.key_of(black_box(b"spiffe://cluster.local/ns/shop/sa/frontend"))))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = decisions, bodies, compile_time, rate_limits
}
criterion_main!(benches);

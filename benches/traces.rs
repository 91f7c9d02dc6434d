//! What a request pays for tracing in the sidecar when traces are on: starting a span from the
//! request's headers, writing the `traceparent` for the next hop, and ending it, for a new
//! trace (1% sampled, so almost always not recorded) and for a caller's sampled trace; and what
//! it pays for the API inventory (`GET /inventory`), for a route seen before.
//! Run: `cargo bench --bench traces`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use opentelemetry::trace::SpanKind;
use palisade::config::OtlpProtocol;
use palisade::telemetry::{SpanEnd, TraceCounters, TraceSettings, Traces};

fn traces(ratio: f64) -> Traces {
    let settings = TraceSettings {
        endpoint: "http://127.0.0.1:9".into(),
        protocol: OtlpProtocol::Grpc,
        sampler: palisade::telemetry::SamplerChoice::ParentBased(palisade::telemetry::ParentRoot::Ratio(ratio)),
        service_name: "bench".into(),
        resource: vec![],
        propagators: palisade::telemetry::Propagators::DEFAULT,
        tls_roots: None,
    };
    let counters = TraceCounters {
        exported: prometheus::IntCounter::new("e", "e").unwrap(),
        dropped: prometheus::IntCounter::new("d", "d").unwrap(),
    };
    Traces::new(settings, counters)
}

fn end() -> SpanEnd<'static> {
    SpanEnd {
        method: "GET",
        path: "/orders/7",
        status: 200,
        protocol: "2",
        scheme: "https",
        client: Some("127.0.0.1:40000".parse().unwrap()),
        server: None,
        decision: "allow",
        policy: None,
        rule: None,
        principal: "spiffe://cluster.local/ns/shop/sa/frontend",
        request_id: "0123456789abcdef0123456789abcdef",
        grpc_status: None,
    }
}

fn spans(c: &mut Criterion) {
    let mut group = c.benchmark_group("trace span per request");
    let unsampled = traces(0.01);
    let no_parent = HeaderMap::new();
    group.bench_function("new trace, 1% sampling", |b| {
        b.iter(|| {
            let span = unsampled.start("GET", SpanKind::Server, black_box(&no_parent));
            black_box(span.traceparent());
            span.end(end());
        })
    });
    let mut unsampled_parent = HeaderMap::new();
    unsampled_parent
        .insert("traceparent", HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"));
    group.bench_function("caller's unsampled trace", |b| {
        b.iter(|| {
            let span = unsampled.start("GET", SpanKind::Server, black_box(&unsampled_parent));
            black_box(span.traceparent());
            span.end(end());
        })
    });
    // Recording spans go to the export queue; with no exporter task draining it, the queue fills
    // and further spans are counted as dropped, which is the cost a request sees either way.
    let mut sampled_parent = HeaderMap::new();
    sampled_parent
        .insert("traceparent", HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
    group.bench_function("caller's sampled trace (recorded)", |b| {
        b.iter(|| {
            let span = unsampled.start("GET", SpanKind::Server, black_box(&sampled_parent));
            black_box(span.traceparent());
            span.end(end());
        })
    });
    group.finish();
}

fn inventory(c: &mut Criterion) {
    use palisade::telemetry::{Inventory, Observed};
    let inventory = Inventory::default();
    let caller = "spiffe://cluster.local/ns/shop/sa/frontend";
    // A table of a few hundred routes, as a real API's.
    for n in 0..300 {
        let path = format!("/api/v1/resource{n}/7");
        inventory.observe(Observed { method: "GET", path: &path, status: 200, principal: caller, authenticated: true });
    }
    let mut group = c.benchmark_group("inventory");
    for (name, path) in [
        ("short route", "/orders/7"),
        ("route with a UUID and a word", "/api/v1/users/3f2504e0-4f89-11d3-9a0c-0305e82c3301/settings"),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                inventory.observe(Observed {
                    method: "GET",
                    path: black_box(path),
                    status: 200,
                    principal: caller,
                    authenticated: true,
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, spans, inventory);
criterion_main!(benches);

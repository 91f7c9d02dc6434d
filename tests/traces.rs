//! OpenTelemetry traces as a collector sees them: real OTLP receivers (gRPC with the official
//! OTLP protobuf service, and HTTP/protobuf), a real sidecar pair, and real W3C and B3 headers.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use palisade::config::{OtlpConfig, OtlpProtocol, SidecarConfig};
use prost::Message;
use support::*;

/// A span as received, with the service that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    /// The resource's attributes, `service.name` included.
    resource: BTreeMap<String, String>,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    kind: i32,
    name: String,
    attributes: BTreeMap<String, String>,
    error: bool,
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

impl Collector {
    fn take(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.resource_spans {
            let resource: BTreeMap<String, String> = resource_spans
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .map(|a| (a.key.clone(), value(a.value.as_ref())))
                .collect();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(Received {
                    service: service.clone(),
                    resource: resource.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    kind: span.kind,
                    name: span.name.clone(),
                    attributes: span.attributes.iter().map(|a| (a.key.clone(), value(a.value.as_ref()))).collect(),
                    error: span.status.as_ref().is_some_and(|s| s.code == 2),
                });
            }
        }
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    async fn wait_for(&self, count: usize) -> Vec<Received> {
        let arrived = eventually(|| async { self.spans().len() >= count }).await;
        assert!(arrived, "{count} spans arrived; have {:?}", self.spans());
        self.spans()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn value(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.take(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// An OTLP/gRPC receiver on loopback.
async fn grpc_collector() -> (Collector, SocketAddr) {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (collector, addr)
}

/// An OTLP/HTTP receiver: `POST /v1/traces` with a protobuf body.
async fn http_collector() -> (Collector, SocketAddr) {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shared = collector.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_otlp_http(stream, shared.clone()));
        }
    });
    (collector, addr)
}

/// OTLP/HTTP on one connection.
async fn serve_otlp_http<I>(io: I, collector: Collector)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let collector = collector.clone();
        async move {
            let ok = req.uri().path() == "/v1/traces"
                && req.headers().get("content-type").is_some_and(|v| v == "application/x-protobuf");
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let status = match (ok, ExportTraceServiceRequest::decode(body)) {
                (true, Ok(request)) => {
                    collector.take(request);
                    200
                }
                _ => 400,
            };
            let reply = ExportTraceServiceResponse { partial_success: None }.encode_to_vec();
            Ok::<_, std::convert::Infallible>(
                hyper::Response::builder()
                    .status(status)
                    .header("content-type", "application/x-protobuf")
                    .body(http_body_util::Full::new(bytes::Bytes::from(reply)))
                    .unwrap(),
            )
        }
    });
    let _ =
        hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(io), service).await;
}

/// An OTLP receiver over TLS on loopback (gRPC or HTTP/protobuf), as `localhost` with a
/// certificate from `pki`'s CA. Also returns, for each handshake that failed, the reason rustls
/// gave on its side.
async fn tls_collector(pki: &Pki, protocol: OtlpProtocol) -> (Collector, u16, Arc<Mutex<Vec<String>>>) {
    use rustls::pki_types::pem::PemObject;
    let files = pki.issue(
        "collector",
        &palisade::identity::LeafSpec {
            spiffe_id: None,
            dns_names: vec!["localhost".into()],
            client_auth: false,
            ..palisade::identity::LeafSpec::workload("spiffe://unused")
        },
    );
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(&files.cert).unwrap().map(Result::unwrap).collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&files.key).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![match protocol {
        OtlpProtocol::Grpc => b"h2".to_vec(),
        OtlpProtocol::HttpProtobuf => b"http/1.1".to_vec(),
    }];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let collector = Collector::default();
    let refused = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (streams, incoming) = tokio::sync::mpsc::unbounded_channel();
    if protocol == OtlpProtocol::Grpc {
        let incoming = futures::stream::unfold(incoming, |mut incoming| async move {
            incoming.recv().await.map(|stream| (Ok::<_, std::io::Error>(stream), incoming))
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector.clone()))
                .serve_with_incoming(incoming),
        );
    }
    let (shared, failures) = (collector.clone(), refused.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, collector, failures, streams) =
                (acceptor.clone(), shared.clone(), failures.clone(), streams.clone());
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Err(e) => failures.lock().unwrap().push(e.to_string()),
                    Ok(tls) if protocol == OtlpProtocol::Grpc => {
                        let _ = streams.send(tls);
                    }
                    Ok(tls) => serve_otlp_http(tls, collector).await,
                }
            });
        }
    });
    (collector, port, refused)
}

fn otlp(endpoint: String, protocol: OtlpProtocol, sampling: f64) -> impl Fn(&mut SidecarConfig) {
    move |c: &mut SidecarConfig| {
        c.telemetry.otlp = Some(OtlpConfig { endpoint: endpoint.clone(), protocol, sampling, ..OtlpConfig::default() });
    }
}

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_crosses_both_sidecars_with_the_right_parents_and_attributes() {
    let (collector, addr) = grpc_collector().await;
    let endpoint = format!("http://{addr}");
    let app = EchoApp::start().await;
    let events = tempfile::NamedTempFile::new().unwrap();
    let events_path = events.path().to_path_buf();
    let pair = Pair::start_configured(app, otlp(endpoint.clone(), OtlpProtocol::Grpc, 0.01), |c| {
        otlp(endpoint.clone(), OtlpProtocol::Grpc, 0.01)(c);
        c.telemetry.events.sink = palisade::config::EventSink::File(events_path.clone());
    })
    .await;

    // App A's own span is the caller's traceparent; the sampled flag makes both sidecars record
    // even at 1% sampling (parent-based).
    let seen: Seen = http_client()
        .get(pair.url("/orders/7?x=1"))
        .header("host", B_AUTHORITY)
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .header("tracestate", "acme=1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let spans = collector.wait_for(2).await;
    let outbound = spans.iter().find(|s| s.kind == SpanKind::Client as i32).expect("sidecar A's client span");
    let inbound = spans.iter().find(|s| s.kind == SpanKind::Server as i32).expect("sidecar B's server span");

    assert_eq!((outbound.trace_id.as_str(), inbound.trace_id.as_str()), (CALLER_TRACE, CALLER_TRACE));
    assert_eq!(outbound.parent_span_id, CALLER_SPAN, "A's span is the parent of sidecar A's");
    assert_eq!(inbound.parent_span_id, outbound.span_id, "sidecar A's span is the parent of sidecar B's");
    let at_app = seen.header("traceparent").expect("app B got a traceparent");
    assert_eq!(at_app, format!("00-{CALLER_TRACE}-{}-01", inbound.span_id), "B's span is a child of sidecar B's");
    assert_eq!(seen.header("tracestate"), Some("acme=1"));

    assert_eq!((outbound.service.as_str(), inbound.service.as_str()), ("frontend.shop", "orders.shop"));
    assert_eq!(outbound.name, "GET");
    for span in [outbound, inbound] {
        assert_eq!(span.attributes["http.request.method"], "GET");
        assert_eq!(span.attributes["url.path"], "/orders/7");
        assert_eq!(span.attributes["http.response.status_code"], "200");
        assert_eq!(span.attributes["palisade.decision"], "allow");
        assert_eq!(span.attributes["palisade.request_id"], seen.header("x-request-id").unwrap());
        assert!(!span.error);
    }
    assert_eq!(inbound.attributes["palisade.peer.principal"], id("shop", "frontend"));
    assert_eq!(outbound.attributes["palisade.peer.principal"], id("shop", "orders"));
    assert_eq!(outbound.attributes["server.address"], "orders.shop");
    assert_eq!(inbound.attributes["network.protocol.version"], "2", "sidecars speak HTTP/2 to each other");
    assert!(inbound.attributes.contains_key("client.address"));
    // What the HTTP conventions require of each kind: the client span's URL (the app's, without
    // its query), the server span's scheme (the hop came over mutual TLS).
    assert_eq!(outbound.attributes["url.full"], "http://orders.shop/orders/7");
    assert_eq!(inbound.attributes["url.scheme"], "https");
    assert!(!inbound.attributes.contains_key("error.type"), "{:?}", inbound.attributes);

    drop(events);
    pair.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_no_app_answers_fails_both_spans_with_its_status_as_error_type() {
    let (collector, addr) = grpc_collector().await;
    let endpoint = format!("http://{addr}");
    let nothing_there: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let pair = Pair::start_configured(EchoApp::start().await, otlp(endpoint.clone(), OtlpProtocol::Grpc, 1.0), |c| {
        otlp(endpoint.clone(), OtlpProtocol::Grpc, 1.0)(c);
        c.inbound.app.0 = nothing_there;
    })
    .await;
    let answer = http_client().get(pair.url("/gone")).header("host", B_AUTHORITY).send().await.unwrap();
    assert_eq!(answer.status(), 502);
    let spans = collector.wait_for(2).await;
    for span in &spans {
        assert_eq!(span.attributes["http.response.status_code"], "502", "{span:?}");
        assert_eq!(span.attributes["error.type"], "502", "{span:?}");
        assert!(span.error, "{span:?}");
    }
    pair.shutdown();
}

/// A failed gRPC call is an HTTP 200: its own status makes the spans (outside tester o3 found
/// them unset, the calls counted as successes). NOT_FOUND fails the client span only (a server
/// span fails on the server's faults), and both carry `rpc.grpc.status_code`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_grpc_call_carries_its_status_and_fails_the_client_span() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let (collector, addr) = grpc_collector().await;
    let endpoint = format!("http://{addr}");
    let (_reporter, app) = grpc_health_app(&["orders"]).await;
    let pair = Pair::start_configured(EchoApp::start().await, otlp(endpoint.clone(), OtlpProtocol::Grpc, 1.0), |c| {
        otlp(endpoint.clone(), OtlpProtocol::Grpc, 1.0)(c);
        c.inbound.app.0 = app;
    })
    .await;
    let channel = grpc_channel(pair.a.outbound, B_AUTHORITY).await;
    let missing = HealthClient::new(channel).check(HealthCheckRequest { service: "billing".into() }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    let spans = collector.wait_for(2).await;
    let outbound = spans.iter().find(|s| s.kind == SpanKind::Client as i32).expect("sidecar A's client span");
    let inbound = spans.iter().find(|s| s.kind == SpanKind::Server as i32).expect("sidecar B's server span");
    for span in [outbound, inbound] {
        assert_eq!(span.attributes["http.response.status_code"], "200", "{span:?}");
        assert_eq!(
            (span.attributes["rpc.system"].as_str(), span.attributes["rpc.grpc.status_code"].as_str()),
            ("grpc", "5")
        );
    }
    assert!(outbound.error && outbound.attributes["error.type"] == "grpc_5", "{outbound:?}");
    assert!(!inbound.error && !inbound.attributes.contains_key("error.type"), "{inbound:?}");
    pair.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_names_its_policy_and_rule_and_the_event_carries_the_trace_id() {
    let (collector, addr) = grpc_collector().await;
    let sidecar = PolicedSidecar::start_with(&policy("orders-api", DENY_ADMIN_LIMIT_ONE), |c| {
        otlp(format!("http://{addr}"), OtlpProtocol::Grpc, 1.0)(c)
    })
    .await;
    let answer = sidecar.send("frontend", "GET", "/admin/users", &[]).await;
    assert_eq!(answer.status, 403);
    let spans = collector.wait_for(1).await;
    let span = &spans[0];
    assert_eq!(span.attributes["palisade.decision"], "deny");
    assert_eq!(span.attributes["palisade.policy"], "shop/orders-api");
    assert_eq!(span.attributes["palisade.rule"], "no-admin");
    assert_eq!(span.attributes["http.response.status_code"], "403");
    assert!(!span.error, "a 403 is the server doing its job, not a server error");
    let span = span.clone();

    // A WAF block names the policy and the detector, as its event does.
    write_policy(
        &sidecar.policy_file,
        &policy("orders-api", &format!("{DENY_ADMIN_LIMIT_ONE}  inputValidation:\n    waf: {{mode: BLOCK}}\n")),
    );
    let blocked =
        eventually(async || sidecar.send("frontend", "GET", "/x?q=1'%20or%201=1--", &[]).await.status == 403).await;
    assert!(blocked, "the WAF is in force");
    let spans = collector.wait_for(2).await;
    let waf = spans.iter().find(|s| s.attributes.get("palisade.decision").map(String::as_str) == Some("waf")).unwrap();
    assert_eq!(waf.attributes["palisade.policy"], "shop/orders-api");
    assert_eq!(waf.attributes["palisade.rule"], "waf:sqli");

    let event =
        sidecar.events_where("the OCSF deny event", 1, |e| e["firewall_rule"]["name"] == "no-admin").await.remove(0);
    assert_eq!(event["metadata"]["correlation_uid"], span.trace_id.as_str());
    assert_eq!(event["metadata"]["product"]["name"], "Palisade", "the rest of metadata stays");
    sidecar.shutdown();

    // ECS carries it as trace.id.
    let sidecar = PolicedSidecar::start_with(&policy("orders-api", DENY_ADMIN_LIMIT_ONE), |c| {
        otlp(format!("http://{addr}"), OtlpProtocol::Grpc, 1.0)(c);
        c.telemetry.events.format = palisade::config::EventFormat::Ecs;
    })
    .await;
    let parent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    assert_eq!(sidecar.send("frontend", "GET", "/admin", &[("traceparent", &parent)]).await.status, 403);
    let event = sidecar.events_where("the ECS deny event", 1, |e| e["rule"]["name"] == "no-admin").await.remove(0);
    assert_eq!(event["trace"]["id"], CALLER_TRACE);
    assert_eq!(event["rule"]["name"], "no-admin");
    sidecar.shutdown();
}

/// A caller that proved no identity (plaintext on a PERMISSIVE port) chooses neither the trace
/// nor its sampling: its traceparent is not continued, as its request id is not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_caller_neither_joins_a_trace_nor_forces_its_sampling() {
    let (collector, addr) = grpc_collector().await;
    let single = Single::start(|c| {
        otlp(format!("http://{addr}"), OtlpProtocol::Grpc, 0.0)(c);
        c.inbound.mtls = palisade::config::MtlsMode::PERMISSIVE;
    })
    .await;
    let plain = format!("http://{}/", single.sidecar.inbound);
    let parent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    for _ in 0..20 {
        let seen: Seen =
            http_client().get(&plain).header("traceparent", &parent).send().await.unwrap().json().await.unwrap();
        let at_app = seen.header("traceparent").expect("the app gets the sidecar's traceparent");
        assert!(!at_app.contains(CALLER_TRACE) && at_app.ends_with("-00"), "a new, unsampled trace: {at_app}");
    }
    // The same traceparent from a meshed caller is followed: its span arrives, and none of the
    // plaintext caller's came before it.
    let arrived = flush_through(&collector, &single.https(), single.url("/"), 7).await;
    assert_eq!(arrived, 0, "the plaintext caller's requests were not sampled");
    assert!(collector.spans().iter().all(|s| s.trace_id != CALLER_TRACE));
    single.sidecar.shutdown();
}

/// Sends a request whose trace is sampled by its caller, and waits for its span: spans leave in
/// order through one queue and one exporter, so every span ended before it has arrived too.
/// Returns how many spans arrived before it.
async fn flush_through(collector: &Collector, client: &reqwest::Client, url: String, n: u32) -> usize {
    let marker = format!("{:032x}", 0xfeed_0000_u128 + u128::from(n));
    let parent = format!("00-{marker}-{:016x}-01", 1);
    client.get(url).header("traceparent", parent).send().await.unwrap();
    let arrived = eventually(async || collector.spans().iter().any(|s| s.trace_id == marker)).await;
    assert!(arrived, "the marker span arrived");
    collector.spans().iter().position(|s| s.trace_id == marker).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_follows_the_ratio_for_new_traces_and_the_callers_decision_otherwise() {
    let (collector, addr) = grpc_collector().await;
    let single = Single::start(otlp(format!("http://{addr}"), OtlpProtocol::Grpc, 0.25)).await;
    let client = single.https();
    let mut flagged = 0;
    for _ in 0..400 {
        let seen: Seen = client.get(single.url("/")).send().await.unwrap().json().await.unwrap();
        if seen.header("traceparent").unwrap().ends_with("-01") {
            flagged += 1;
        }
    }
    let recorded = flush_through(&collector, &client, single.url("/"), 0).await;
    // 400 draws at 0.25: mean 100, standard deviation about 8.7.
    assert!((55..=145).contains(&recorded), "{recorded} of 400 sampled at 0.25");
    assert_eq!(flagged, recorded, "the app is told exactly which traces are sampled");

    // A caller's decision is followed, both ways.
    for (n, (flag, expected)) in [("01", 20), ("00", 0)].into_iter().enumerate() {
        let before = collector.spans().len();
        for i in 0..20 {
            let parent = format!("00-{CALLER_TRACE}-{:016x}-{flag}", i + 1);
            client.get(single.url("/")).header("traceparent", parent).send().await.unwrap();
        }
        let arrived = flush_through(&collector, &client, single.url("/"), n as u32 + 1).await;
        assert_eq!(arrived - before, expected, "parent flag {flag}");
    }

    // B3 is accepted as the parent when no traceparent is sent, and the app gets B3 back, naming
    // this hop's span.
    let before = collector.spans().len();
    let seen: Seen = client
        .get(single.url("/"))
        .header("b3", format!("{CALLER_TRACE}-{CALLER_SPAN}-1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let spans = collector.wait_for(before + 1).await;
    assert_eq!(spans[before].trace_id, CALLER_TRACE);
    assert_eq!(spans[before].parent_span_id, CALLER_SPAN);
    assert_eq!(seen.header("b3"), Some(format!("{CALLER_TRACE}-{}-1", spans[before].span_id).as_str()));
    let seen: Seen = client
        .get(single.url("/"))
        .header("x-b3-traceid", CALLER_TRACE)
        .header("x-b3-spanid", CALLER_SPAN)
        .header("x-b3-parentspanid", "1111111111111111")
        .header("x-b3-sampled", "1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let spans = collector.wait_for(before + 2).await;
    assert_eq!(seen.header("x-b3-traceid"), Some(CALLER_TRACE));
    assert_eq!(seen.header("x-b3-spanid"), Some(spans[before + 1].span_id.as_str()));
    assert_eq!(seen.header("x-b3-sampled"), Some("1"));
    assert_eq!(seen.header("x-b3-parentspanid"), None);
    single.sidecar.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_export_works_and_a_dead_collector_costs_only_dropped_spans() {
    let (collector, addr) = http_collector().await;
    let single = Single::start(otlp(format!("http://{addr}"), OtlpProtocol::HttpProtobuf, 1.0)).await;
    let status = single.https().get(single.url("/over-http")).send().await.unwrap().status();
    assert_eq!(status, 200);
    let spans = collector.wait_for(1).await;
    assert_eq!(spans[0].attributes["url.path"], "/over-http");
    // `<account>.<namespace>` of the workload, which the configuration leaves to the certificate.
    assert_eq!(spans[0].service, "orders.shop");
    single.sidecar.shutdown();

    // Nothing listens at the collector's address: every request still succeeds, and every
    // sampled span is counted as dropped.
    let dead = free_port();
    let single = Single::start(otlp(format!("http://127.0.0.1:{dead}"), OtlpProtocol::Grpc, 1.0)).await;
    let client = single.https();
    for _ in 0..200 {
        assert_eq!(client.get(single.url("/")).send().await.unwrap().status(), 200);
    }
    let metrics = format!("http://{}/metrics", single.sidecar.admin);
    let counted = eventually(|| {
        let metrics = metrics.clone();
        async move {
            let text = http_client().get(metrics).send().await.unwrap().text().await.unwrap();
            text.contains("palisade_trace_spans_dropped_total 200")
                && text.contains("palisade_trace_spans_exported_total 0")
        }
    })
    .await;
    assert!(counted, "all 200 spans counted as dropped");
    single.sidecar.shutdown();
}

/// A sidecar's spans reach a collector that serves `https://` with a certificate from the CA the
/// sidecar was given, over gRPC and HTTP/protobuf; a collector whose certificate another CA
/// signed gets nothing: the sidecar refuses its certificate (the collector sees the alert) and
/// counts the spans as dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_over_tls_to_a_collector_the_given_ca_vouches_for_and_no_other() {
    let collector_pki = Pki::new();
    let collector_ca = collector_pki.path("collector-ca.pem");
    std::fs::write(&collector_ca, collector_pki.ca.cert_pem()).unwrap();
    // Another CA, named differently (one of the same name fails the signature check instead).
    let stranger = Pki::for_domain("elsewhere.test");
    let stranger_ca = stranger.path("stranger-ca.pem");
    std::fs::write(&stranger_ca, stranger.ca.cert_pem()).unwrap();
    let https = |port: u16, protocol, trust: &std::path::Path| {
        let trust = trust.to_path_buf();
        move |c: &mut SidecarConfig| {
            c.telemetry.otlp = Some(OtlpConfig {
                endpoint: format!("https://localhost:{port}"),
                protocol,
                sampling: 1.0,
                trust_bundle: Some(trust),
                ..OtlpConfig::default()
            })
        }
    };
    for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
        let (collector, port, refused) = tls_collector(&collector_pki, protocol).await;
        let single = Single::start(https(port, protocol, &collector_ca)).await;
        assert_eq!(single.https().get(single.url("/over-tls")).send().await.unwrap().status(), 200);
        let spans = collector.wait_for(1).await;
        assert_eq!(spans[0].attributes["url.path"], "/over-tls", "{protocol:?}");
        assert!(refused.lock().unwrap().is_empty(), "{protocol:?}: {:?}", refused.lock().unwrap());
        single.sidecar.shutdown();

        // The same collector, but the sidecar trusts another CA.
        let (collector, port, refused) = tls_collector(&collector_pki, protocol).await;
        let single = Single::start(https(port, protocol, &stranger_ca)).await;
        for _ in 0..3 {
            assert_eq!(single.https().get(single.url("/")).send().await.unwrap().status(), 200);
        }
        let metrics = format!("http://{}/metrics", single.sidecar.admin);
        let sample = |text: &str, name: &str| {
            text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<u64>().ok()).unwrap_or(0)
        };
        let failed = eventually(async || {
            let text = http_client().get(&metrics).send().await.unwrap().text().await.unwrap();
            let alerted = refused.lock().unwrap().iter().any(|reason| reason.contains("UnknownCA"));
            sample(&text, "palisade_trace_spans_dropped_total") == 3 && alerted
        })
        .await;
        let text = http_client().get(&metrics).send().await.unwrap().text().await.unwrap();
        assert!(failed, "{protocol:?}: the collector saw {:?}; the sidecar counted\n{text}", refused.lock().unwrap());
        assert_eq!(sample(&text, "palisade_trace_spans_exported_total"), 0, "{protocol:?}");
        assert!(collector.spans().is_empty(), "{protocol:?}: {:?}", collector.spans());
        single.sidecar.shutdown();
    }

    // The standard variables, read by a `palisade sidecar` process from its environment.
    let (collector, port, _) = tls_collector(&collector_pki, OtlpProtocol::Grpc).await;
    let app = EchoApp::start().await;
    let pki = Pki::new();
    let client = pki.workload("client", &id("shop", "frontend"));
    let (endpoint, ca) = (format!("https://localhost:{port}"), collector_ca.to_str().unwrap().to_string());
    let (_sidecar, inbound) = sidecar_process(
        &pki,
        app.addr,
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", &ca),
            ("OTEL_TRACES_SAMPLER", "always_on"),
        ],
    )
    .await;
    let answer = https_client(Some(&client)).get(format!("https://{inbound}/from-env")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(collector.wait_for(1).await[0].attributes["url.path"], "/from-env");
    app.stop();
}

/// A `palisade sidecar` process, killed when dropped (also when the test fails).
struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `palisade sidecar` process for `shop/orders` in front of `app`, with `env` set (the `OTEL_*`
/// variables are read from its own environment, as in a pod), once it is ready; and its inbound
/// address.
async fn sidecar_process(pki: &Pki, app: SocketAddr, env: &[(&str, &str)]) -> (Process, SocketAddr) {
    let server = pki.workload("server", &id("shop", "orders"));
    let [inbound, outbound, admin] = [free_port(), free_port(), free_port()];
    let config = pki.dir.path().join("sidecar.yaml");
    std::fs::write(
        &config,
        format!(
            "identity:\n  files: {{cert: \"{}\", key: \"{}\", trustBundle: \"{}\"}}\ntrustDomain: {TD}\n\
             workload: {{namespace: shop, serviceAccount: orders}}\n\
             inbound: {{listen: \"127.0.0.1:{inbound}\", app: \"{app}\"}}\noutbound: {{listen: \"127.0.0.1:{outbound}\"}}\n\
             admin: {{listen: \"127.0.0.1:{admin}\"}}\n",
            server.cert.display(),
            server.key.display(),
            server.trust_bundle.display(),
        ),
    )
    .unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"));
    command
        .args(["sidecar", "--config"])
        .arg(&config)
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_PROPAGATORS")
        .env("PALISADE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    let sidecar = Process(command.spawn().unwrap());
    wait_for("the sidecar is ready", async || {
        matches!(http_client().get(format!("http://127.0.0.1:{admin}/ready")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    (sidecar, format!("127.0.0.1:{inbound}").parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_carry_the_k8s_resource_attributes_from_the_environment() {
    // The real binary: the variables are read from its own environment, as in a pod.
    let (collector, collector_addr) = grpc_collector().await;
    let app = EchoApp::start().await;
    let pki = Pki::new();
    let client = pki.workload("client", &id("shop", "frontend"));
    let endpoint = format!("http://{collector_addr}");
    let (_sidecar, inbound) = sidecar_process(
        &pki,
        app.addr,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_TRACES_SAMPLER", "always_on"),
            ("POD_NAME", "orders-7d9f"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test,k8s.cluster.name=kind%2Dlocal"),
        ],
    )
    .await;
    let answer = https_client(Some(&client)).get(format!("https://{inbound}/orders/1")).send().await.unwrap();
    assert_eq!(answer.status(), 200);

    let span = collector.wait_for(1).await.remove(0);
    assert_eq!(span.service, "orders.shop", "service.name from the workload: {span:?}");
    assert_eq!(span.resource["k8s.namespace.name"], "shop");
    assert_eq!(span.resource["k8s.pod.name"], "orders-7d9f");
    assert_eq!(span.resource["deployment.environment"], "test");
    assert_eq!(span.resource["k8s.cluster.name"], "kind-local", "percent-decoded");
    assert_eq!(span.resource["service.version"], env!("CARGO_PKG_VERSION"));
    app.stop();
}

/// `OTEL_PROPAGATORS` decides which trace-context headers are read and which are written; the
/// formats not in use pass through to the app untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_propagators_choose_the_headers_read_and_written() {
    const B3_TRACE: &str = "80f198ee56343ba864fe8b2a57d3eff7";
    const B3_SPAN: &str = "e457b5a2e4d86bd1";
    let (collector, collector_addr) = grpc_collector().await;
    let endpoint = format!("http://{collector_addr}");
    let app = EchoApp::start().await;
    let pki = Pki::new();
    let client = https_client(Some(&pki.workload("client", &id("shop", "frontend"))));
    let w3c_parent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");

    // b3multi: the x-b3-* parent is followed (its sampled flag records the span, the root sampler
    // would not), the traceparent is neither read nor written, and only x-b3-* name this hop.
    let (sidecar, inbound) = sidecar_process(
        &pki,
        app.addr,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_PROPAGATORS", "b3multi"),
            ("OTEL_TRACES_SAMPLER", "parentbased_always_off"),
        ],
    )
    .await;
    let seen: Seen = client
        .get(format!("https://{inbound}/b3multi"))
        .header("traceparent", &w3c_parent)
        .header("x-b3-traceid", B3_TRACE)
        .header("x-b3-spanid", B3_SPAN)
        .header("x-b3-sampled", "1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let span = collector.wait_for(1).await.remove(0);
    assert_eq!((span.trace_id.as_str(), span.parent_span_id.as_str()), (B3_TRACE, B3_SPAN), "{span:?}");
    assert_eq!(seen.header("x-b3-traceid"), Some(B3_TRACE));
    assert_eq!(seen.header("x-b3-spanid"), Some(span.span_id.as_str()), "the app's parent is this hop's span");
    assert_eq!(seen.header("x-b3-sampled"), Some("1"));
    assert_eq!(seen.header("traceparent"), Some(w3c_parent.as_str()), "not read, not written: passed through");
    assert_eq!(seen.header("b3"), None, "the single-header form is not in use");
    drop(sidecar);

    // tracecontext: a b3 parent is not read, so the trace starts here; only traceparent is written.
    let b3_parent = format!("{B3_TRACE}-{B3_SPAN}-1");
    let (_sidecar, inbound) = sidecar_process(
        &pki,
        app.addr,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_PROPAGATORS", "tracecontext"),
            ("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
        ],
    )
    .await;
    let seen: Seen = client
        .get(format!("https://{inbound}/tracecontext"))
        .header("b3", &b3_parent)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let span = collector.wait_for(2).await.remove(1);
    assert_eq!(span.attributes["url.path"], "/tracecontext");
    assert!(span.trace_id != B3_TRACE && span.parent_span_id.is_empty(), "a new trace: {span:?}");
    assert_eq!(seen.header("traceparent"), Some(format!("00-{}-{}-01", span.trace_id, span.span_id).as_str()));
    assert_eq!(seen.header("b3"), Some(b3_parent.as_str()), "not read, not written: passed through");
    assert_eq!(seen.header("x-b3-traceid"), None);
    app.stop();
}

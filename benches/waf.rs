//! WAF inspection cost (issue 14's target: a typical request, 1 KB JSON body and 10 query
//! parameters, under 20 µs at paranoia 1), and a 64 KB body. Run: `cargo bench --bench waf`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use palisade::waf::{DetectorSet, HeadView, Skips, Waf, WafSettings};

const QUERY: &str = "page=2&per_page=50&sort=-created_at&status=open&q=O%27Brien+%26+sons\
&from=2024-01-01T00%3A00%3A00Z&to=2024-02-01&fields=id%2Cname%2Cemail&lang=en-GB&session=3f2a9c1e-8b7d-4e6f-a5c4-1d2e3f4a5b6c";

/// About 1 KB of the JSON an order API takes: names with apostrophes, prose, ids, numbers.
fn typical_json() -> String {
    let body = r#"{"order":{"id":"550e8400-e29b-41d4-a716-446655440000","customer":{"name":"Conan O'Brien","email":"conan.obrien@example.com","phone":"+1 (555) 123-4567","address":{"street":"221B Baker Street","city":"London","postcode":"NW1 6XE","country":"GB"}},"items":[{"sku":"TEA-001","name":"Earl Grey & Lemon","qty":2,"price":4.5},{"sku":"BIS-042","name":"Digestive biscuits (500 g)","qty":1,"price":2.25},{"sku":"MUG-007","name":"Mug \"World's best dad\"","qty":1,"price":9.99}],"notes":"Please leave it by the door; the bell doesn't work. If nobody answers, select a neighbour from the list and update the order.","coupon":"SPRING-2024","gift":false,"created_at":"2024-03-01T10:15:30Z","tags":["priority","gift-wrap","fragile"],"payment":{"method":"card","last4":"4242","token":"tok_1NXWPn2eZvKYlo2CsCwQW3Nq"},"metadata":{"source":"web","campaign":"newsletter-march","ab":"variant-b","referrer":"https://example.com/blog/spring-teas?utm_source=mail"}}}"#;
    body.to_string()
}

/// About 64 KB: an array of such records.
fn large_json() -> String {
    let one = typical_json();
    let mut s = String::from("[");
    while s.len() + one.len() < 64 * 1024 {
        if s.len() > 1 {
            s.push(',');
        }
        s.push_str(&one);
    }
    s.push(']');
    s
}

fn headers() -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (k, v) in [
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
        ),
        ("accept", "application/json, text/plain, */*"),
        ("accept-language", "en-GB,en;q=0.9"),
        ("content-type", "application/json"),
        ("referer", "https://shop.example.com/orders?page=1"),
        ("cookie", "session=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.sig; theme=dark; _ga=GA1.2.1234.5678"),
        ("x-request-id", "8c6f1a4e-2b3d-4c5e-9f0a-1b2c3d4e5f60"),
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ] {
        h.insert(k, v.parse().unwrap());
    }
    h
}

fn bench(c: &mut Criterion) {
    let headers = headers();
    let typical = typical_json();
    let large = large_json();
    let mut group = c.benchmark_group("waf");
    for pl in [1u8, 4] {
        let waf = Waf::new(WafSettings { paranoia: pl, detectors: DetectorSet::ALL }).unwrap();
        let head = HeadView { path: "/api/v1/orders/42", query: Some(QUERY), headers: &headers };
        assert!(waf.inspect_head(&head, &Skips::NONE).is_none());
        assert!(waf.inspect_body(Some(b"application/json"), typical.as_bytes(), &Skips::NONE).is_none());
        group.throughput(Throughput::Bytes((typical.len() + QUERY.len()) as u64));
        group.bench_with_input(BenchmarkId::new("typical_request", format!("pl{pl}")), &pl, |b, _| {
            b.iter(|| {
                let head =
                    HeadView { path: black_box("/api/v1/orders/42"), query: Some(black_box(QUERY)), headers: &headers };
                let a = waf.inspect_head(&head, &Skips::NONE);
                let b2 = waf.inspect_body(Some(b"application/json"), black_box(typical.as_bytes()), &Skips::NONE);
                (a, b2)
            })
        });
        group.throughput(Throughput::Bytes(large.len() as u64));
        group.bench_with_input(BenchmarkId::new("json_body_64k", format!("pl{pl}")), &pl, |b, _| {
            b.iter(|| waf.inspect_body(Some(b"application/json"), black_box(large.as_bytes()), &Skips::NONE))
        });
        // Inputs made to cost: 64 KB JSON values of one unit repeated (each took time quadratic
        // in its length before; the second group from an audit of every detector).
        let units = [
            ("backticks_64k", "`"),
            ("quote_braces_64k", "'{"),
            ("short_lines_64k", "x\\n"),
            ("slash_bracket_64k", " /["),
            ("backtick_slash_64k", "`/"),
            ("word_comment_64k", "a/*("),
            ("fences_64k", "```a"),
            ("insert_into_64k", "insert into x "),
            ("alert_call_64k", "alert("),
            ("long_words_64k", ";aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
            // Command words from expansions (the review of the variables rule).
            ("braced_names_64k", ";${"),
            ("prefix_flags_64k", ";call -x"),
            ("cmd_expansions_64k", "& %a% x"),
            ("variable_uses_64k", "$a"),
            // Code injection's openers: indexers, joined quotes, calls after groups, templates.
            ("php_indexers_64k", "$a["),
            ("joined_quotes_64k", "'x'."),
            ("group_calls_64k", ")("),
            ("template_braces_64k", "{{"),
            ("java_names_64k", "java.x"),
            ("while_loops_64k", "while("),
            // The review's quadratic openers before their bounds.
            ("runtime_names_64k", "x.runtime "),
            ("unclosed_comments_64k", "$/*"),
            ("comment_then_call_64k", "*/("),
            // Request forgery's: a URL's slashes, `@` signs past its authority, URLs in text.
            ("url_slashes_64k", "/"),
            ("url_at_signs_64k", "/@1"),
            ("urls_in_text_64k", "http://a@b "),
        ];
        for (name, unit) in units {
            // The expansions' uses need what they use: a long assigned value, or a cmd variable.
            let head = match name {
                "variable_uses_64k" => format!("a=/{};x", "x".repeat(32 * 1024)),
                "cmd_expansions_64k" => "set a=ping".to_string(),
                "url_slashes_64k" | "url_at_signs_64k" => "http:".to_string(),
                _ => String::new(),
            };
            let hostile = format!("{{\"v\":\"{head}{}\"}}", unit.repeat((64 * 1024 - head.len()) / unit.len()));
            group.throughput(Throughput::Bytes(hostile.len() as u64));
            group.bench_with_input(BenchmarkId::new(name, format!("pl{pl}")), &pl, |b, _| {
                b.iter(|| waf.inspect_body(Some(b"application/json"), black_box(hostile.as_bytes()), &Skips::NONE))
            });
        }
        // Shapes, not units: a long escaped key over an array of empty strings; a multipart file
        // name of many `;`; blanks, then many function definitions (text).
        let key = "k\\u0041".repeat(2048);
        let shapes = [
            (
                "escaped_key_array_64k",
                "application/json".to_string(),
                format!("{{\"{key}\":[{}\"\"]}}", "\"\",".repeat(24 * 1024)),
            ),
            (
                "filename_semicolons_64k",
                "multipart/form-data; boundary=b".to_string(),
                format!(
                    "--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"{}\"\r\n\r\nx\r\n--b--\r\n",
                    "x; ".repeat(21 * 1024)
                ),
            ),
            (
                "leading_blanks_functions_64k",
                "text/plain".to_string(),
                format!("{}{}", " ".repeat(32 * 1024), "x() {".repeat(6 * 1024)),
            ),
        ];
        for (name, content_type, hostile) in &shapes {
            group.throughput(Throughput::Bytes(hostile.len() as u64));
            group.bench_with_input(BenchmarkId::new(*name, format!("pl{pl}")), &pl, |b, _| {
                b.iter(|| waf.inspect_body(Some(content_type.as_bytes()), black_box(hostile.as_bytes()), &Skips::NONE))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

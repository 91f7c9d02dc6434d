//! The WAF's decoders, tokenizers and body walkers on arbitrary bytes: no panic, no unbounded
//! work, decoding never grows a value, and a finding's fragment stays short.
//! Run: `cargo +nightly fuzz run waf -- -max_len=4096`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade::waf::{canonical, DetectorSet, HeadView, Skips, Waf, WafSettings, MAX_FRAGMENT, MAX_NAME};

const CONTENT_TYPES: [&[u8]; 6] = [
    b"application/x-www-form-urlencoded",
    b"application/json",
    b"multipart/form-data; boundary=b",
    b"text/xml",
    b"text/plain",
    b"multipart/form-data; boundary=\"--x y\"",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let decoded = canonical(rest);
    assert!(decoded.len() <= rest.len(), "decoding grew a value");

    let paranoia = 1 + selector % 4;
    let waf = Waf::new(WafSettings { paranoia, detectors: DetectorSet::ALL }).unwrap();
    let check = |f: Option<palisade::waf::Finding>| {
        if let Some(f) = f {
            assert!(f.paranoia >= 1 && f.paranoia <= paranoia);
            assert!(f.fragment.len() <= MAX_FRAGMENT + 3);
            assert!(f.location.name.len() <= MAX_NAME + 3);
        }
    };

    // The body under every content type.
    let ct = CONTENT_TYPES[(selector as usize >> 2) % CONTENT_TYPES.len()];
    check(waf.inspect_body(Some(ct), rest, &Skips::NONE));

    // The head: the text as query, path and header value (where the types allow it).
    let text = String::from_utf8_lossy(rest);
    let mut headers = http::HeaderMap::new();
    if let Ok(value) = http::HeaderValue::from_bytes(rest) {
        headers.insert(http::header::USER_AGENT, value.clone());
        headers.insert(http::header::COOKIE, value.clone());
        headers.insert("x-custom", value);
    }
    let path = format!("/{}", text.replace(['?', '#'], ""));
    let head = HeadView { path: &path, query: Some(&text), headers: &headers };
    check(waf.inspect_head(&head, &Skips::NONE));
});

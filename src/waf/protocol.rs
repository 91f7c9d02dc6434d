//! Protocol anomalies visible in parsed parts (raw framing is the HTTP parser's job): broken or
//! IIS-only percent-encoding, NUL and control bytes, invalid or overlong UTF-8, line breaks that
//! inject headers or split a request, request lines smuggled inside a parameter.

use super::decode::{find_ci, hex, starts_with_ci, Hit};
use super::LocationKind;

/// A still percent-encoded query or form body: `%` not followed by two hex digits, and `%uXXXX`
/// (an IIS-only form no ordinary client sends). Invalid escapes in a form body wait for
/// paranoia 2, as in CRS.
pub(crate) fn encoding(raw: &[u8], level: u8, body: bool) -> Option<Hit> {
    let mut i = 0;
    while let Some(p) = raw[i..].iter().position(|&b| b == b'%') {
        let at = i + p;
        let rest = &raw[at + 1..];
        if matches!(rest.first(), Some(b'u' | b'U')) && rest.len() >= 5 && rest[1..5].iter().all(|&b| hex(b).is_some())
        {
            return Some(Hit::new(1, at, at + 6));
        }
        let valid = rest.len() >= 2 && hex(rest[0]).is_some() && hex(rest[1]).is_some();
        if !valid {
            let lvl = if body { 2 } else { 1 };
            return (lvl <= level).then(|| Hit::new(lvl, at, (at + 3).min(raw.len())));
        }
        i = at + 3;
    }
    None
}

const METHODS: &[&[u8]] =
    &[b"get ", b"post ", b"put ", b"head ", b"delete ", b"patch ", b"options ", b"connect ", b"trace ", b"propfind "];

/// One value as the application receives it (decoded once).
pub(crate) fn value(v: &[u8], arg: bool, kind: LocationKind, level: u8) -> Option<Hit> {
    if kind == LocationKind::Path {
        // The normaliser keeps reserved escapes encoded: an encoded line break is still visible.
        for needle in [&b"%0a"[..], b"%0d"] {
            if let Some(at) = find_ci(v, needle, 0) {
                return Some(Hit::new(1, at, (at + 12).min(v.len())));
            }
        }
        return None;
    }
    if !arg {
        return None;
    }
    let name = matches!(
        kind,
        LocationKind::QueryName
            | LocationKind::FormName
            | LocationKind::CookieName
            | LocationKind::JsonKey
            | LocationKind::MultipartName
    );
    let mut i = 0;
    // Bounded: every branch moves `i` forward.
    while i < v.len() {
        let b = v[i];
        match b {
            0 => return Some(Hit::new(1, i.saturating_sub(8), (i + 8).min(v.len()))),
            b'\r' | b'\n' => {
                if name {
                    return Some(Hit::new(1, i, (i + 16).min(v.len())));
                }
                let mut j = i;
                while j < v.len() && matches!(v[j], b'\r' | b'\n') {
                    j += 1;
                }
                if let Some(lvl) = header_line(&v[j..], level, prose_kind(kind)) {
                    return Some(Hit::new(lvl, i, (j + 24).min(v.len())));
                }
                if starts_with_ci(&v[j..], b"http/") || METHODS.iter().any(|m| starts_with_ci(&v[j..], m)) {
                    return Some(Hit::new(1, i, (j + 24).min(v.len())));
                }
                i = j;
                continue;
            }
            0x01..=0x08 | 0x0b | 0x0c | 0x0e..=0x1f | 0x7f if level >= 2 => {
                return Some(Hit::new(2, i.saturating_sub(8), (i + 8).min(v.len())));
            }
            0x80..=0xff => {
                let len = utf8_len(&v[i..]);
                if len == 0 {
                    return Some(Hit::new(1, i, (i + 4).min(v.len())));
                }
                i += len;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    smuggled_request_line(v)
}

/// The length of the valid, shortest-form UTF-8 sequence at the start of `v`, or 0.
fn utf8_len(v: &[u8]) -> usize {
    let n = match v[0] {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return 0,
    };
    if v.len() < n {
        return 0;
    }
    match std::str::from_utf8(&v[..n]) {
        Ok(_) => n,
        Err(_) => 0,
    }
}

/// Where several lines of text are what users send (a ticket, a recipe, a forwarded e-mail in a
/// JSON or form body, an upload's field) rather than an anomaly (a query, a header, a cookie).
fn prose_kind(kind: LocationKind) -> bool {
    matches!(
        kind,
        LocationKind::JsonValue
            | LocationKind::FormValue
            | LocationKind::MultipartValue
            | LocationKind::XmlValue
            | LocationKind::GrpcField
            | LocationKind::Body
    )
}

/// After a line break: `Name:` (a header being injected), allowing the stray CRs and blanks
/// attackers put before the colon. Headers that steer a client or a proxy count at 1; any other
/// `Word:` line (common in text: "Note: ...") from 2. In text users write (`prose`), a steering
/// name counts at 1 only with a value shaped as that header's (`Location: /admin`,
/// `Set-Cookie: sid=x`, `Content-Length: 0`, `Host: db-01.internal`); `Location: Berlin office`,
/// `Cookie: chocolate chip` and `Connection: refused` in a ticket are lines of text, from 2
/// (outside tester o1).
fn header_line(line: &[u8], level: u8, prose: bool) -> Option<u8> {
    let name_end =
        line.iter().position(|&b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_')).unwrap_or(line.len());
    if name_end == 0 || name_end > 64 {
        return None;
    }
    let mut j = name_end;
    while j < line.len() && matches!(line[j], b'\r' | b' ' | b'\t') {
        j += 1;
    }
    if line.get(j) != Some(&b':') {
        return None;
    }
    const STEERING: &[&[u8]] = &[
        b"set-cookie",
        b"cookie",
        b"location",
        b"refresh",
        b"content-type",
        b"content-length",
        b"transfer-encoding",
        b"host",
        b"via",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"x-forwarded-server",
        b"forwarded",
        b"remote-addr",
        b"remote-ip",
        b"originating-ip",
        b"x-originating-ip",
        b"x-real-ip",
        b"x-client-ip",
        b"authorization",
        b"connection",
        b"upgrade",
        b"content-security-policy",
        b"x-xss-protection",
        b"access-control-allow-origin",
        b"access-control-allow-credentials",
        // nginx's and Apache's internal redirect and file-send headers, link preloads, RFC 2965
        // cookies (tester p1).
        b"x-accel-redirect",
        b"x-sendfile",
        b"link",
        b"set-cookie2",
    ];
    let name = &line[..name_end];
    let steering = STEERING.iter().any(|h| name.eq_ignore_ascii_case(h));
    let rest = &line[j + 1..];
    let value_end = rest.iter().position(|&b| matches!(b, b'\r' | b'\n')).unwrap_or(rest.len());
    // A value folded onto the next line (obs-fold, which user agents unfold) is the header's.
    let after = &rest[value_end..];
    let next_line = &after[after.iter().position(|&b| !matches!(b, b'\r' | b'\n')).unwrap_or(after.len())..];
    let folded =
        after.first().is_some_and(|&b| b == b'\r' || b == b'\n') && matches!(next_line.first(), Some(b' ' | b'\t'));
    let value = rest[..value_end].trim_ascii();
    let shaped = value.is_empty() || folded || header_shaped(name, value);
    let lvl = if steering && (!prose || shaped) { 1 } else { 2 };
    (lvl <= level).then_some(lvl)
}

/// Whether `value` reads as the value of the steering header `name` rather than as text: the
/// header's own grammar, as leniently as the clients that take it (a cookie name with blanks
/// around it, a `Location` of `\\host`, a `Refresh` of `.5`, a list of forwarding addresses).
fn header_shaped(name: &[u8], value: &[u8]) -> bool {
    let is = |h: &str| name.eq_ignore_ascii_case(h.as_bytes());
    let token = |t: &[u8]| !t.is_empty() && !t.iter().any(|b| b.is_ascii_whitespace());
    let list = |value: &[u8]| value.split(|&b| b == b',').all(|e| token(e.trim_ascii()));
    let known = |value: &[u8], words: &[&str]| {
        value.split(|&b| b == b',').any(|e| words.iter().any(|w| e.trim_ascii().eq_ignore_ascii_case(w.as_bytes())))
    };
    if is("location") || is("content-location") {
        // A path, a network path (`//`, or `\\`, which URL parsers read alike), or a scheme.
        let scheme = value.iter().position(|&b| b == b':').is_some_and(|c| {
            c > 0 && value[..c].iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        });
        return value.starts_with(b"/") || value.starts_with(b"\\") || scheme;
    }
    if is("refresh") {
        return value.first().is_some_and(|b| b.is_ascii_digit() || *b == b'.');
    }
    if is("x-accel-redirect") || is("x-sendfile") {
        return value.starts_with(b"/");
    }
    if is("link") {
        return value.starts_with(b"<");
    }
    if is("content-security-policy") {
        // Directives (`script-src *`, `default-src 'self'`): a name and sources.
        return value.split(|&b| b == b';').any(|d| {
            let name = d.trim_ascii().split(|b| b.is_ascii_whitespace()).next().unwrap_or_default();
            name.ends_with(b"-src") || name.eq_ignore_ascii_case(b"sandbox") || name.eq_ignore_ascii_case(b"report-uri")
        });
    }
    if is("x-xss-protection") {
        return value.first().is_some_and(u8::is_ascii_digit);
    }
    if is("set-cookie") || is("set-cookie2") || is("cookie") {
        // `sid=abc; Path=/`, `sid =abc`: a name (blanks around it are trimmed), `=`.
        let first = value.split(|&b| b == b';').next().unwrap_or_default();
        return first.iter().position(|&b| b == b'=').is_some_and(|eq| token(first[..eq].trim_ascii()));
    }
    if is("content-type") {
        let ty = value.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
        return token(ty) && ty.contains(&b'/');
    }
    if is("content-length") {
        return value.iter().all(u8::is_ascii_digit);
    }
    if is("authorization") {
        return value.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty()).count() == 2
            && !value.ends_with(b".");
    }
    if is("via") {
        return value.first().is_some_and(u8::is_ascii_digit) || starts_with_ci(value, b"http/");
    }
    if is("host") || is("x-forwarded-host") || is("x-forwarded-server") {
        // A host (a name with a dot, a port, an IPv6 address), a trailing dot allowed.
        return token(value) && value.iter().any(|b| matches!(b, b'.' | b':' | b'['));
    }
    if is("transfer-encoding") {
        return list(value) && known(value, &["chunked", "gzip", "deflate", "compress", "identity", "br", "zstd"]);
    }
    if is("connection") {
        return list(value) && (known(value, &["close", "keep-alive", "upgrade", "te"]) || value.contains(&b'-'));
    }
    if is("upgrade") {
        let protocol = |e: &[u8]| {
            let e = e.trim_ascii();
            ["websocket", "h2c", "http/", "tls/"].iter().any(|p| starts_with_ci(e, p.as_bytes()))
        };
        return list(value) && value.split(|&b| b == b',').any(protocol);
    }
    // The forwarding headers (a list of addresses), the CORS and CSP headers: tokens in a list.
    list(value) && !value.ends_with(b".")
}

/// `GET http://host/ HTTP/1.1` inside a parameter: a request for a proxy or a backend to split.
fn smuggled_request_line(v: &[u8]) -> Option<Hit> {
    let http = find_ci(v, b" http/", 0)?;
    if !v.get(http + 6).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let line_start = v[..http].iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let line = &v[line_start..http];
    let method_end = line.iter().position(|&b| b == b' ')?;
    let method = &line[..=method_end];
    let target = &line[method_end + 1..];
    let known = METHODS.iter().any(|m| method.eq_ignore_ascii_case(m));
    (known && !target.is_empty() && !target.contains(&b' ')).then(|| Hit::new(1, line_start, (http + 9).min(v.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_values_pass() {
        for s in [
            &b"hello"[..],
            b"line one\nline two\n\nline four",
            b"caf\xc3\xa9 \xe2\x82\xac",
            b"tab\there",
            b"Dear team,\r\nthanks: all",
            b"Hi team,\nLocation: Berlin office, 3rd floor\nThe printer is broken.",
            b"Our setup:\nHost: the old database server\nPort: 5432",
            b"Ingredients\nCookie: chocolate chip\nFlour: 200g",
            b"Route\nVia: Frankfurt hub",
            b"Agenda\nConnection: zoom link below",
            b"Note\nAuthorization: ask your manager first.",
            b"Error log\nConnection: refused",
            b"Status\nUpgrade: pending",
        ] {
            assert_eq!(value(s, true, LocationKind::JsonValue, 1), None, "{s:?}");
        }
        for q in [&b"a=1&b=%20%41"[..], b"q=100%25", b""] {
            assert_eq!(encoding(q, 4, false), None);
        }
    }

    #[test]
    fn anomalies_are_caught() {
        let pl1 = |s: &[u8], kind| value(s, true, kind, 1).is_some();
        assert!(pl1(b"test1\0", LocationKind::QueryValue));
        assert!(pl1(b"x\r\nSet-Cookie: a=b", LocationKind::QueryValue));
        assert!(pl1(b"\r\nRemote-addr\r\r\r: foo", LocationKind::QueryValue));
        assert!(pl1(b"x\r\n\r\nGET /admin HTTP/1.1", LocationKind::FormValue));
        assert!(pl1(b"GET http://www.foo.bar HTTP/1.2", LocationKind::QueryValue));
        assert!(pl1(b"parameter\r\n", LocationKind::QueryName));
        assert!(pl1(b"\xc0\xaf", LocationKind::QueryValue));
        assert!(pl1(b"\xe2\xa3", LocationKind::QueryValue));
        assert!(value(b"/foo%0Abar", false, LocationKind::Path, 1).is_some());
        // In a body's text, a steering header with its own value's shape is still an injection;
        // in a query, any steering name after a line break.
        for s in [
            &b"x\r\nLocation: http://evil.example/"[..],
            b"x\nSet-Cookie: sid=attacker; Path=/",
            b"x\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK",
            b"x\nHost: evil.example",
            b"x\nX-Forwarded-For: 127.0.0.1",
            b"x\nRefresh: 0;url=http://evil.example/",
            b"x\nContent-Type: text/html",
            // Folded, a blank before `=`, `\\host`, `.5`, a trailing dot, lists (review).
            b"x\r\nSet-Cookie:\r\n sid=attacker; Path=/",
            b"x\r\nSet-Cookie: sid =attacker; Path=/",
            b"x\r\nLocation: \\\\evil.example",
            b"x\r\nLocation: https://evil.example/ x",
            b"x\r\nRefresh: .5;url=https://evil.example/",
            b"x\r\nHost: evil.example.",
            b"x\r\nX-Forwarded-For: 127.0.0.1, 127.0.0.1",
            b"x\r\nTransfer-Encoding: gzip, chunked",
            b"x\r\nAuthorization: Basic  YWRtaW46YWRtaW4=",
            // A policy header, internal redirects, a preload, an old cookie (tester p1).
            b"x\r\nContent-Security-Policy: script-src *",
            b"x\r\nX-Accel-Redirect: /internal/secrets",
            b"x\r\nLink: <https://evil.example/x.js>; rel=preload",
            b"x\r\nSet-Cookie2: sid=attacker",
        ] {
            assert!(pl1(s, LocationKind::JsonValue), "{:?}", String::from_utf8_lossy(s));
        }
        assert!(pl1(b"x\nLocation: Berlin office", LocationKind::QueryValue));
        assert!(value(b"x\nLocation: Berlin office", true, LocationKind::JsonValue, 2).is_some(), "text from 2");
        assert!(encoding(b"a=%uff0F", 1, false).is_some());
        assert!(encoding(b"a=%zz", 1, false).is_some());
        assert_eq!(encoding(b"a=%zz", 1, true), None);
        assert!(value(b"a\x01b", true, LocationKind::QueryValue, 2).is_some());
        assert_eq!(value(b"a\x01b", true, LocationKind::QueryValue, 1), None);
    }
}

//! Path normalisation (SPEC section 4), so that a rule on `/admin` also catches `/public/../admin`,
//! `//admin`, `/%61dmin` and `/admin/`. The result is what both the policy and the app see.
//!
//! Forms that common backends route somewhere the policy cannot tell are refused instead of
//! guessed at (docs/policy.md, "Path forms"): control characters raw or encoded, raw spaces and
//! non-ASCII bytes, a segment ending in a dot or a space (Windows and IIS drop those, Spring can
//! trim them), an encoded `%` before two hex digits (a second decoding makes a new path), and
//! encoded UTF-8 that is malformed or holds a character some stack folds to ASCII (fullwidth
//! `ａ`, the Kelvin sign, long s, ...).

use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    EncodedSlash,
    Nul,
    EscapesRoot,
    NotAbsolute,
    BadEscape,
    /// `;` starts path parameters that Tomcat, Jetty and Spring strip before routing, and `\`
    /// is a separator to IIS and WHATWG URL parsers: either lets a path mean one thing to the
    /// policy and another to the app.
    Ambiguous,
    /// A control character, raw or encoded (a raw TAB arrives encoded: pingora re-encodes
    /// it), a raw space or a raw non-ASCII byte: servers strip, split at or mangle them.
    Control,
    /// `%25` before two hex digits: a backend or framework that decodes twice sees another path
    /// (`/%2561dmin` becomes `/admin`).
    DoubleEncoded,
    /// A segment ending in `.` or a space (other than `.` and `..`), or starting with a space:
    /// Windows and IIS drop trailing ones, so `/admin.` and `/admin%20` are `/admin` there, and
    /// Spring's path matcher trimmed both ends of a segment (CVE-2016-5007: `/%20admin`).
    TrailingDotOrSpace,
    /// Encoded bytes that are not UTF-8 (overlongs such as `%C0%AF`), or a character some
    /// stack folds to ASCII by Unicode compatibility or case mapping.
    Confusable,
}

impl PathError {
    /// The rule a refused path's event names: stable, for a SIEM's rules to match.
    pub fn id(self) -> &'static str {
        match self {
            PathError::EncodedSlash => "path-encoded-slash",
            PathError::Nul => "path-nul",
            PathError::EscapesRoot => "path-escapes-root",
            PathError::NotAbsolute => "path-not-absolute",
            PathError::BadEscape => "path-bad-escape",
            PathError::Ambiguous => "path-ambiguous",
            PathError::Control => "path-control",
            PathError::DoubleEncoded => "path-double-encoded",
            PathError::TrailingDotOrSpace => "path-trailing-dot-or-space",
            PathError::Confusable => "path-confusable",
        }
    }

    /// Why the path is refused, in the words the 400's event and log line carry.
    pub fn reason(self) -> &'static str {
        match self {
            PathError::EncodedSlash => "path holds an encoded '/' or '\\'",
            PathError::Nul => "path holds a NUL byte",
            PathError::EscapesRoot => "path climbs above the root",
            PathError::NotAbsolute => "path does not start with '/'",
            PathError::BadEscape => "path holds a malformed percent-escape",
            PathError::Ambiguous => "path holds ';' or '\\'",
            PathError::Control => "path holds a control character, a raw space or a raw non-ASCII byte",
            PathError::DoubleEncoded => "path is double percent-encoded",
            PathError::TrailingDotOrSpace => "path segment ends in a dot or a space, or starts with a space",
            PathError::Confusable => "path holds malformed UTF-8 or a character that folds to ASCII",
        }
    }
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for PathError {}

pub(super) fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalises the path part of a request target (no query): percent-decodes unreserved
/// characters, merges `//`, resolves `.` and `..`. Returns the input unchanged, without
/// allocating, when it is already normal.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(bytes)? {
        return Ok(Cow::Borrowed(path));
    }
    // Decode unreserved escapes; keep the others, with upper-case hex.
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (hi, lo) = match (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
                (Some(hi), Some(lo)) => (hi, lo),
                _ => return Err(PathError::BadEscape),
            };
            let value = hi << 4 | lo;
            match value {
                0 => return Err(PathError::Nul),
                b'/' | b'\\' => return Err(PathError::EncodedSlash),
                v if is_control(v) => return Err(PathError::Control),
                v if is_unreserved(v) => decoded.push(v),
                v => {
                    // An encoded UTF-8 sequence is judged whole and kept encoded.
                    let len = if v >= 0x80 { check_encoded_utf8(&bytes[i..])? } else { 1 };
                    for k in 0..len {
                        let e = &bytes[i + 3 * k..i + 3 * k + 3];
                        decoded.extend_from_slice(&[b'%', e[1].to_ascii_uppercase(), e[2].to_ascii_uppercase()]);
                    }
                    i += 3 * (len - 1);
                }
            }
            i += 3;
        } else if matches!(b, b';' | b'\\') {
            return Err(PathError::Ambiguous);
        } else if is_control(b) || b == b' ' || b >= 0x80 {
            return Err(PathError::Control);
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    // Judged on the decoded form, so `%25%34%31` (which decodes to `%2541`) is caught too.
    if decoded.windows(5).any(|w| w.starts_with(b"%25") && hex(w[3]).is_some() && hex(w[4]).is_some()) {
        return Err(PathError::DoubleEncoded);
    }
    // Resolve segments.
    let trailing_slash = decoded.len() > 1 && decoded.ends_with(b"/");
    let mut segments: Vec<&[u8]> = Vec::new();
    for segment in decoded.split(|&b| b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => {
                if segments.pop().is_none() {
                    return Err(PathError::EscapesRoot);
                }
            }
            s if ends_in_dot_or_space(s) => return Err(PathError::TrailingDotOrSpace),
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(std::str::from_utf8(s).map_err(|_| PathError::BadEscape)?);
    }
    if out.is_empty() || (trailing_slash && !segments.is_empty()) {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// `segment` (decoded, other escapes still encoded) is not `.` or `..` and ends in `.` or an
/// encoded space, or starts with an encoded space.
fn ends_in_dot_or_space(segment: &[u8]) -> bool {
    segment.ends_with(b".") || segment.ends_with(b"%20") || segment.starts_with(b"%20")
}

/// `escaped` starts with a `%XX` escape of a byte >= 0x80: the UTF-8 sequence it starts, all of
/// it percent-encoded, must be well-formed and must not be a character that folds to ASCII.
/// A lone continuation byte or a sequence broken by a raw byte is malformed. Returns how many
/// escapes the sequence takes.
fn check_encoded_utf8(escaped: &[u8]) -> Result<usize, PathError> {
    let byte_at = |k: usize| -> Option<u8> {
        let e = escaped.get(3 * k..3 * k + 3)?;
        (e[0] == b'%').then_some(hex(e[1])? << 4 | hex(e[2])?)
    };
    let first = byte_at(0).ok_or(PathError::BadEscape)?;
    let len = match first {
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        // Continuation bytes are consumed with their lead byte (below); one here stands alone.
        // 0xc0, 0xc1 and 0xf5.. only ever start overlong or out-of-range forms.
        _ => return Err(PathError::Confusable),
    };
    let mut buf = [0u8; 4];
    for (k, slot) in buf.iter_mut().enumerate().take(len) {
        *slot = byte_at(k).ok_or(PathError::Confusable)?;
    }
    let c = std::str::from_utf8(&buf[..len]).map_err(|_| PathError::Confusable)?.chars().next();
    match c {
        Some(c) if folds_to_ascii(c) => Err(PathError::Confusable),
        _ => Ok(len),
    }
}

/// Characters that some server, framework or file system turns into ASCII: NFKC compatibility
/// forms (fullwidth and halfwidth forms, mathematical alphanumerics, enclosed and letterlike
/// symbols, ligatures, superscripts, odd spaces and slashes) and the non-ASCII letters whose
/// upper or lower case is ASCII (`ı` -> `I`, `ſ` -> `S`, Kelvin `K` -> `k`). Not a full Unicode
/// confusables table: these are the ones that turn into the ASCII a rule names. With them, every
/// Unicode default-ignorable code point (soft hyphen, joiners, variation selectors, fillers,
/// bidirectional marks): IDNA, NFKC_Casefold and many search and routing stacks drop them, so
/// `/ad<U+00AD>min` is `/admin` to them.
fn folds_to_ascii(c: char) -> bool {
    matches!(c as u32,
        0x00a0 | 0x00aa | 0x00b2 | 0x00b3 | 0x00b9 | 0x00ba // NBSP, ordinals, superscripts
        | 0x0130 | 0x0131 | 0x017f // dotted I, dotless i, long s
        | 0x037e // Greek question mark: `;`
        | 0x2047..=0x2049 // `??`, `?!`, `!?`
        | 0x3371..=0x33df | 0x33ff // squared units and abbreviations (`a.m.`, `Co.`, `kg`)
        | 0x1d2c..=0x1d6a // modifier letters
        | 0x2000..=0x200f | 0x2024..=0x2026 | 0x2028..=0x202f | 0x205f..=0x2064 // spaces, dots, zero-width
        | 0x2044 | 0x2070..=0x209c | 0x2100..=0x214f | 0x2150..=0x218b // fraction slash, sub/superscripts, letterlike, numbers
        | 0x2215 | 0x2460..=0x24ff | 0x3000 | 0xfb00..=0xfb06 // division slash, enclosed, ideographic space, ligatures
        | 0xfe10..=0xfe19 | 0xfe30..=0xfe6f | 0xfeff // vertical and small forms, BOM
        | 0xff00..=0xffef // fullwidth and halfwidth forms
        | 0x1d400..=0x1d7ff | 0x1f100..=0x1f1ff // mathematical alphanumerics, enclosed supplement
        | 0x00ad | 0x034f | 0x061c | 0x115f | 0x1160 | 0x17b4 | 0x17b5 | 0x180b..=0x180f // default-ignorable:
        | 0x2060..=0x206f | 0x3164 | 0xfe00..=0xfe0f | 0xfff0..=0xfff8 // soft hyphen, joiners, selectors,
        | 0x1bca0..=0x1bca3 | 0x1d173..=0x1d17a // fillers, format controls
        | 0xe0000..=0xe0fff // tags, variation selectors supplement
    )
}

/// True when nothing needs rewriting; errors on bytes that are never allowed.
fn is_normal(bytes: &[u8]) -> Result<bool, PathError> {
    let mut prev_slash = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            0 => return Err(PathError::Nul),
            b';' | b'\\' => return Err(PathError::Ambiguous),
            b'%' => return Ok(false),
            _ if is_control(b) || b == b' ' || b >= 0x80 => return Err(PathError::Control),
            // A segment ending in '.': the slow path tells "." and ".." from "a." and refuses.
            b'/' if i > 0 && bytes[i - 1] == b'.' => return Ok(false),
            b'/' if prev_slash => return Ok(false),
            b'.' if prev_slash => {
                // "/." or "/.." as a whole segment
                let rest = &bytes[i..];
                let seg_end = rest.iter().position(|&c| c == b'/').unwrap_or(rest.len());
                if matches!(&rest[..seg_end], b"." | b"..") {
                    return Ok(false);
                }
            }
            _ => {}
        }
        prev_slash = b == b'/';
    }
    Ok(!bytes.ends_with(b"."))
}

/// The form rules are matched against: normalised, without a trailing slash (except the root).
pub fn match_form(normalized: &str) -> &str {
    if normalized.len() > 1 {
        normalized.strip_suffix('/').unwrap_or(normalized)
    } else {
        normalized
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bypass_attempts_all_become_admin() {
        for raw in [
            "/admin",
            "/public/../admin",
            "//admin",
            "/%61dmin",
            "/admin/",
            "/./admin",
            "/a/b/../../admin",
            "/x/%2E%2E/admin",
            "///admin//",
        ] {
            let n = normalize(raw).unwrap();
            assert_eq!(match_form(&n), "/admin", "{raw}");
        }
    }

    #[test]
    fn already_normal_paths_are_borrowed() {
        assert!(matches!(normalize("/orders/7").unwrap(), Cow::Borrowed(_)));
        assert!(matches!(normalize("/").unwrap(), Cow::Borrowed(_)));
        assert!(matches!(normalize("/a.b/c..d/.e").unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn reserved_escapes_stay_encoded() {
        assert_eq!(normalize("/a%3fb").unwrap(), "/a%3Fb");
        assert_eq!(normalize("/a%20b").unwrap(), "/a%20b");
    }

    #[test]
    fn dangerous_paths_are_rejected() {
        assert_eq!(normalize("/a%2fb"), Err(PathError::EncodedSlash));
        assert_eq!(normalize("/a%2Fb"), Err(PathError::EncodedSlash));
        assert_eq!(normalize("/a%5cb"), Err(PathError::EncodedSlash));
        assert_eq!(normalize("/a%00b"), Err(PathError::Nul));
        assert_eq!(normalize("/.."), Err(PathError::EscapesRoot));
        assert_eq!(normalize("/a/../../b"), Err(PathError::EscapesRoot));
        assert_eq!(normalize("/%2e%2e/x"), Err(PathError::EscapesRoot));
        assert_eq!(normalize("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%4"), Err(PathError::BadEscape));
        assert_eq!(normalize("admin"), Err(PathError::NotAbsolute));
        assert_eq!(normalize("/admin;x"), Err(PathError::Ambiguous));
        assert_eq!(normalize("/public/..;/admin"), Err(PathError::Ambiguous));
        assert_eq!(normalize("/public\\..\\admin"), Err(PathError::Ambiguous));
        assert_eq!(normalize("/%61dmin;x"), Err(PathError::Ambiguous));
    }

    #[test]
    fn forms_backends_route_to_admin_are_refused() {
        use PathError::*;
        for (raw, why) in [
            ("/admin.", TrailingDotOrSpace),
            ("/admin..", TrailingDotOrSpace),
            ("/admin./x", TrailingDotOrSpace),
            ("/admin%2e", TrailingDotOrSpace),
            ("/admin%2E/", TrailingDotOrSpace),
            ("/admin%20", TrailingDotOrSpace),
            ("/%20admin", TrailingDotOrSpace),
            ("/api/%20admin/x", TrailingDotOrSpace),
            ("/admin%09", Control),
            ("/admin%7f", Control),
            ("/admin%0d%0a", Control),
            ("/admin\t", Control),
            ("/admin\tx", Control),
            ("/ad\x01min", Control),
            ("/admin\x7f", Control),
            ("/admin ", Control),
            ("/%2561dmin", DoubleEncoded),
            ("/%252e%252e/admin", DoubleEncoded),
            ("/%25%36%31dmin", DoubleEncoded),
            ("/%EF%BD%81dmin", Confusable), // fullwidth a
            ("/%ef%bd%81dmin", Confusable),
            ("/%E2%84%AAelvin", Confusable),    // Kelvin sign
            ("/%C5%BFecret", Confusable),       // long s
            ("/admin%CD%BEx", Confusable),      // Greek question mark: `;`
            ("/x%E2%81%87", Confusable),        // `??`
            ("/%E3%8F%98/admin", Confusable),   // `p.m.`
            ("/%E3%8F%87", Confusable),         // `Co.`
            ("/ad%C2%ADmin", Confusable),       // soft hyphen
            ("/ad%CD%8Fmin", Confusable),       // combining grapheme joiner
            ("/ad%E1%A0%8Emin", Confusable),    // Mongolian vowel separator
            ("/ad%EF%B8%8Fmin", Confusable),    // variation selector 16
            ("/ad%E3%85%A4min", Confusable),    // Hangul filler
            ("/ad%E1%85%9Fmin", Confusable),    // Hangul choseong filler
            ("/ad%E2%81%A6min", Confusable),    // left-to-right isolate
            ("/ad%F3%A0%84%80min", Confusable), // variation selector 17
            ("/%C0%AFadmin", Confusable),       // overlong '/'
            ("/%E0%80%AEadmin", Confusable),    // overlong '.'
            ("/%BDadmin", Confusable),          // lone continuation byte
            ("/%E2%84", Confusable),            // cut short
            ("/%ED%A0%80", Confusable),         // surrogate
            ("/caf\u{e9}", Control),            // raw non-ASCII
        ] {
            assert_eq!(normalize(raw), Err(why), "{raw:?}");
        }
    }

    #[test]
    fn ordinary_encoded_text_is_kept_encoded() {
        assert_eq!(normalize("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(normalize("/%E6%97%A5%E6%9C%AC").unwrap(), "/%E6%97%A5%E6%9C%AC");
        assert_eq!(normalize("/a%20b/c").unwrap(), "/a%20b/c");
        assert_eq!(normalize("/100%25").unwrap(), "/100%25");
        assert_eq!(normalize("/v1.2/x.json").unwrap(), "/v1.2/x.json");
        assert_eq!(normalize("/a/./b/..").unwrap(), "/a");
    }

    #[test]
    fn root_and_trailing_slashes() {
        assert_eq!(normalize("//").unwrap(), "/");
        assert_eq!(normalize("/a/..").unwrap(), "/");
        assert_eq!(normalize("/a//b/").unwrap(), "/a/b/");
        assert_eq!(match_form("/"), "/");
    }
}

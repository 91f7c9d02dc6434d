//! Path normalisation (SPEC section 4), so that a rule on `/admin` also catches `/public/../admin`,
//! `//admin`, `/%61dmin` and `/admin/`. The result is what both the policy and the app see.

use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path holds an encoded '/' or '\\'")]
    EncodedSlash,
    #[error("path holds a NUL byte")]
    Nul,
    #[error("path climbs above the root")]
    EscapesRoot,
    #[error("path does not start with '/'")]
    NotAbsolute,
    #[error("path holds a malformed percent-escape")]
    BadEscape,
    /// `;` starts path parameters that Tomcat, Jetty and Spring strip before routing, and `\`
    /// is a separator to IIS and WHATWG URL parsers: either lets a path mean one thing to the
    /// policy and another to the app.
    #[error("path holds ';' or '\\'")]
    Ambiguous,
}

fn hex(b: u8) -> Option<u8> {
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
                v if is_unreserved(v) => decoded.push(v),
                v => {
                    const HEX: &[u8; 16] = b"0123456789ABCDEF";
                    decoded.extend_from_slice(&[b'%', HEX[(v >> 4) as usize], HEX[(v & 0xf) as usize]]);
                }
            }
            i += 3;
        } else if matches!(b, b';' | b'\\') {
            return Err(PathError::Ambiguous);
        } else {
            decoded.push(b);
            i += 1;
        }
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

/// True when nothing needs rewriting; errors on bytes that are never allowed.
fn is_normal(bytes: &[u8]) -> Result<bool, PathError> {
    let mut prev_slash = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            0 => return Err(PathError::Nul),
            b';' | b'\\' => return Err(PathError::Ambiguous),
            b'%' => return Ok(false),
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
    Ok(true)
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
    fn root_and_trailing_slashes() {
        assert_eq!(normalize("//").unwrap(), "/");
        assert_eq!(normalize("/a/..").unwrap(), "/");
        assert_eq!(normalize("/a//b/").unwrap(), "/a/b/");
        assert_eq!(match_form("/"), "/");
    }
}

//! Cross-site scripting: libinjection's HTML5 tokenizer (the `libinjectionrs` port) reads the
//! value in every context a reflection can land in; our own checks add the forms that need no
//! tag of their own to run script (`javascript:` URLs, event handlers) and tags that load
//! active content, seen through whitespace and control-character tricks.

use super::decode::{find_ci, is_word, Hit};

/// Past this many bytes libinjection is not asked; our own checks still read everything.
const LIBINJECTION_MAX: usize = 4096;

pub(crate) fn check(v: &[u8], libinjection: bool, level: u8) -> Option<Hit> {
    if !v.iter().any(|&b| matches!(b, b'<' | b'>' | b'=' | b':' | b'(' | b'`' | b'"' | b'\'')) {
        return None;
    }
    if let Some(hit) = own_checks(v, level) {
        return Some(hit);
    }
    if libinjection {
        let head = &v[..v.len().min(LIBINJECTION_MAX)];
        if libinjectionrs::detect_xss(head).is_injection() {
            return Some(Hit::new(1, 0, v.len()));
        }
    }
    None
}

/// Tags that load or run active content, or change where the page's URLs point.
const ACTIVE_TAGS: &[&[u8]] = &[
    b"script", b"iframe", b"frame", b"frameset", b"object", b"embed", b"applet", b"svg", b"math", b"meta", b"base",
    b"link", b"style", b"xml", b"import", b"isindex", b"template", b"portal", b"xss",
];

/// URL schemes that run script when followed.
const SCRIPT_SCHEMES: &[&[u8]] = &[b"javascript", b"vbscript", b"livescript", b"mocha"];

fn own_checks(v: &[u8], level: u8) -> Option<Hit> {
    let mut i = 0;
    // Bounded: each iteration moves past at least one byte.
    while i < v.len() {
        match v[i] {
            b'<' => {
                if let Some(hit) = tag_at(v, i, level) {
                    return Some(hit);
                }
            }
            b'o' | b'O' if i > 0 && handler_delimiter(v[i - 1]) => {
                if let Some(end) = event_handler_at(v, i) {
                    return Some(Hit::new(1, i, end));
                }
            }
            b':' => {
                if let Some(start) = script_scheme_before(v, i) {
                    if looks_like_code(&v[i + 1..]) {
                        return Some(Hit::new(1, start, (i + 24).min(v.len())));
                    }
                }
            }
            b'(' if level >= 2 => {
                // CSS expression() is an old IE script vector.
                if v[..i].len() >= 10 && v[..i].trim_ascii_end().to_ascii_lowercase().ends_with(b"expression") {
                    return Some(Hit::new(2, i.saturating_sub(10), i + 1));
                }
            }
            _ => {}
        }
        i += 1;
    }
    if level >= 2 {
        if let Some(at) = find_ci(v, b"-moz-binding", 0).or_else(|| find_ci(v, b"@import", 0)) {
            return Some(Hit::new(2, at, (at + 20).min(v.len())));
        }
    }
    None
}

/// `<` followed (after `/` or NULs) by a tag name: active tags at 1; any tag that
/// carries an event handler at 1 (caught by the handler check); any tag at all from 3.
fn tag_at(v: &[u8], lt: usize, level: u8) -> Option<Hit> {
    let mut j = lt + 1;
    while j < v.len() && (v[j] == b'/' || v[j] == 0) {
        j += 1;
    }
    let name_end = v[j..].iter().position(|&b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b':')).map_or(v.len(), |n| j + n);
    let name = &v[j..name_end];
    if name.is_empty() || !name[0].is_ascii_alphabetic() {
        return None;
    }
    // `svg:script` and the like are still the tag after the prefix.
    let local = name.iter().rposition(|&b| b == b':').map_or(name, |p| &name[p + 1..]);
    if ACTIVE_TAGS.iter().any(|t| local.eq_ignore_ascii_case(t)) {
        let after = v.get(name_end).copied();
        if after.is_none_or(|b| !is_word(b)) {
            return Some(Hit::new(1, lt, name_end));
        }
    }
    if level >= 3 && name_end < v.len() && matches!(v[name_end], b'>' | b' ' | b'/' | b'\t' | b'\n') {
        return Some(Hit::new(3, lt, name_end + 1));
    }
    None
}

fn handler_delimiter(b: u8) -> bool {
    b.is_ascii_whitespace() || matches!(b, b'"' | b'\'' | b'/' | b';' | b',' | b'(' | b'`' | 0x0b | 0x0c | 0)
}

/// `on` + 3..25 letters + optional whitespace + `=` (not `==`): an event-handler attribute.
fn event_handler_at(v: &[u8], i: usize) -> Option<usize> {
    if !v[i..].get(..2)?.eq_ignore_ascii_case(b"on") {
        return None;
    }
    let mut j = i + 2;
    let letters_start = j;
    while j < v.len() && v[j].is_ascii_alphabetic() {
        j += 1;
    }
    if !(3..=25).contains(&(j - letters_start)) {
        return None;
    }
    while j < v.len() && (v[j].is_ascii_whitespace() || matches!(v[j], 0x0b | 0x0c | 0)) {
        j += 1;
    }
    if v.get(j) == Some(&b'=') && v.get(j + 1) != Some(&b'=') && j + 1 < v.len() {
        Some(j + 1)
    } else {
        None
    }
}

/// For a `:` at `colon`, the start of a script scheme right before it, read through the
/// whitespace and control characters browsers drop inside a scheme (`java\tscript:`).
fn script_scheme_before(v: &[u8], colon: usize) -> Option<usize> {
    for scheme in SCRIPT_SCHEMES {
        let mut k = scheme.len();
        let mut j = colon;
        while k > 0 && j > 0 {
            let b = v[j - 1];
            if b <= 0x20 {
                j -= 1;
                continue;
            }
            if b.to_ascii_lowercase() != scheme[k - 1] {
                break;
            }
            k -= 1;
            j -= 1;
        }
        if k == 0 && (j == 0 || !v[j - 1].is_ascii_alphanumeric()) {
            return Some(j);
        }
    }
    None
}

/// After a script scheme: something that calls, assigns or reads, not prose (`javascript:
/// the good parts` is a book title).
fn looks_like_code(rest: &[u8]) -> bool {
    rest.iter().take(512).any(|&b| matches!(b, b'(' | b'=' | b'`' | b'\\' | b'[' | b'.' | b'<' | b'{' | b'\'' | b'"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xss(s: &str, level: u8) -> bool {
        check(s.as_bytes(), true, level).is_some()
    }

    #[test]
    fn ordinary_text_markup_and_urls_pass() {
        for s in [
            "Tom & Jerry",
            "a < b and c > d",
            "x <= 10",
            "I <3 cats",
            "JavaScript: The Good Parts",
            "https://example.com/path?x=1&y=2",
            "mailto:jane@example.com",
            "online shopping is fun",
            "status=online",
            "The **bold** and `code` in markdown, [a link](https://example.com)",
            "if (a == b) { return; }",
            "Use <b>bold</b> sparingly",
            "O'Brien said \"hello\"",
            "{\"a\": 1}",
        ] {
            assert!(!xss(s, 1), "{s}");
        }
    }

    #[test]
    fn script_vectors_are_caught_at_paranoia_one() {
        for s in [
            "<script>alert(1)</script>",
            "<ScRiPt src=//evil.example/x.js>",
            "</title><svg/onload=alert(1)>",
            "<img src=x onerror=alert(1)>",
            "\" onmouseover=\"alert(1)",
            "' autofocus onfocus='alert(1)",
            "javascript:alert(document.cookie)",
            "java\tscript:alert(1)",
            "<iframe src=\"javascript:alert(1)\">",
            "<a href=\"vbscript:msgbox(1)\">x</a>",
            "<meta http-equiv=\"refresh\" content=\"0;url=http://evil\">",
            "<svg:script>alert(1)</svg:script>",
            "<body onload=alert(1)>",
        ] {
            assert!(xss(s, 1), "{s}");
        }
    }

    #[test]
    fn any_tag_counts_only_from_paranoia_three() {
        assert!(!xss("<b>bold</b>", 2));
        assert!(xss("<b>bold</b>", 3));
    }
}

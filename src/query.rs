//! A query string as the frameworks behind a sidecar read it, for the checks that look for one
//! parameter by name (a token's, `_method`): `&` and `;` both separate parameters (Rack 2, Go
//! before 1.17, Python before 3.9.2), names and values are form-decoded, ASP.NET compares names
//! ignoring case, and PHP drops a name's leading blanks, reads `.`, ` ` and `[` in it as `_` and
//! ends it at a NUL. A check that missed one spelling let that framework's app read a parameter
//! the sidecar had not: a forged `access.token` reached PHP's `$_GET['access_token']`.

use std::borrow::Cow;

/// The parameters of `query`, as (name, value) before decoding; a parameter without `=` has an
/// empty value.
pub fn params(query: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    query.split(|&b| b == b'&' || b == b';').filter(|p| !p.is_empty()).map(|param| {
        match param.iter().position(|&b| b == b'=') {
            Some(eq) => (&param[..eq], &param[eq + 1..]),
            None => (param, &b""[..]),
        }
    })
}

/// Whether some framework reads the parameter name `raw` (as it came) as `name` (lower case
/// ASCII, `_` for any of PHP's substitutes), its value whole or as an array's element
/// (`access_token[]`, `access_token[0]`: PHP and Rack hand the app an array under the name).
pub fn is_named(raw: &[u8], name: &[u8]) -> bool {
    let decoded = form_component(raw);
    let mut bytes = decoded.iter().copied().skip_while(|&b| b == b' ').take_while(|&b| b != 0);
    let mut matched = 0;
    while let Some(b) = bytes.next() {
        if matched == name.len() && b == b'[' {
            return bytes.any(|b| b == b']');
        }
        let b = match b {
            b' ' | b'.' | b'[' => b'_',
            b => b.to_ascii_lowercase(),
        };
        if name.get(matched) != Some(&b) {
            return false;
        }
        matched += 1;
    }
    matched == name.len()
}

/// [`form_component`] as text, when it is UTF-8 (a token, a name to compare).
pub fn form_text(raw: &[u8]) -> Option<Cow<'_, str>> {
    match form_component(raw) {
        Cow::Borrowed(bytes) => std::str::from_utf8(bytes).ok().map(Cow::Borrowed),
        Cow::Owned(bytes) => String::from_utf8(bytes).ok().map(Cow::Owned),
    }
}

/// `application/x-www-form-urlencoded` decoding of one name or value: `%XX` and `+` as space.
/// Malformed escapes stay as they are (the WAF's protocol detector reports them).
pub fn form_component(raw: &[u8]) -> Cow<'_, [u8]> {
    if !raw.iter().any(|&b| b == b'%' || b == b'+') {
        return Cow::Borrowed(raw);
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => match (raw.get(i + 1).copied().and_then(hex), raw.get(i + 2).copied().and_then(hex)) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_components_decode_plus_and_percent_once() {
        assert_eq!(&*form_component(b"a+b%20c%2527"), b"a b c%27");
        assert_eq!(&*form_component(b"100%"), b"100%");
        assert!(matches!(form_component(b"plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn every_spelling_a_framework_reads_as_the_name_is_the_name() {
        for raw in [
            &b"access_token"[..],
            b"ACCESS_TOKEN",
            b"access.token",
            b"access+token",
            b"access%20token",
            b"%20access_token",
            b"+access_token",
            b"access[token",
            b"access_token%00x",
            b"%61ccess_token",
            b"access_token[]",
            b"access_token%5B%5D",
            b"access_token[0]",
            b"access.token[x]",
        ] {
            assert!(is_named(raw, b"access_token"), "{}", String::from_utf8_lossy(raw));
        }
        for raw in [&b"access_tokens"[..], b"access_toke", b"xaccess_token", b"access-token", b"", b"access_token[x"] {
            assert!(!is_named(raw, b"access_token"), "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn semicolons_separate_parameters_too() {
        let names: Vec<&[u8]> = params(b"x=1;access_token=F&y&&z=").map(|(n, _)| n).collect();
        assert_eq!(names, [&b"x"[..], b"access_token", b"y", b"z"]);
        assert_eq!(params(b"a=b=c").next(), Some((&b"a"[..], &b"b=c"[..])));
    }
}

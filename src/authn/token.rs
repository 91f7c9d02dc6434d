//! The compact JWS form (RFC 7515 section 7.1) taken apart before any key is involved: every
//! check that needs no key happens here, in an order that does the cheapest first.

use serde_json::{Map, Value};

use super::alg::Algorithm;
use super::failure::{Failure, Reason};
use super::{b64, json};

/// The default `maxTokenBytes`. Real access tokens are 1-2 KiB; Kubernetes projected tokens
/// about 1 KiB.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;

/// A token whose structure, header and claims parsed; nothing about it is trusted yet.
#[derive(Debug)]
pub(crate) struct Unverified<'a> {
    /// `BASE64URL(header) || '.' || BASE64URL(payload)`: what the signature covers.
    pub signing_input: &'a [u8],
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
    pub signature: Vec<u8>,
}

/// Parses `token`. Header members that would point at a key (`jku`, `x5u`, `jwk`, `x5c`) are
/// read past and never used: keys come only from the provider's configuration.
pub(crate) fn parse(token: &str, max_len: usize) -> Result<Unverified<'_>, Failure> {
    if token.len() > max_len {
        return Err(Failure::new(Reason::TooLarge, format!("{} bytes, limit {max_len}", token.len())));
    }
    let bytes = token.as_bytes();
    let mut dots = bytes.iter().enumerate().filter(|(_, &b)| b == b'.').map(|(i, _)| i);
    let (Some(first), Some(second)) = (dots.next(), dots.next()) else {
        return Err(malformed("not three dot-separated parts"));
    };
    if dots.next().is_some() {
        // Five parts is JWE; anything else is junk. Neither is a signed token.
        return Err(malformed("more than three parts (JWE is not accepted)"));
    }
    let (header_b64, payload_b64, sig_b64) = (&bytes[..first], &bytes[first + 1..second], &bytes[second + 1..]);
    if header_b64.is_empty() || payload_b64.is_empty() {
        return Err(malformed("empty header or payload"));
    }

    let header = b64::decode(header_b64).ok_or_else(|| malformed("header is not base64url"))?;
    let header = json::parse_object(&header).map_err(|e| malformed(format!("header: {e}")))?;
    // `alg: none` is refused here as the algorithm it is, with or without a signature.
    let (alg, kid) = check_header(&header)?;
    if sig_b64.is_empty() {
        // A header that names a real algorithm over no signature: a token cut short, or one
        // that hopes to be taken unsigned.
        return Err(malformed("no signature"));
    }

    let payload = b64::decode(payload_b64).ok_or_else(|| malformed("payload is not base64url"))?;
    let claims = json::parse_object(&payload).map_err(|e| malformed(format!("claims: {e}")))?;
    let signature = b64::decode(sig_b64).ok_or_else(|| malformed("signature is not base64url"))?;

    Ok(Unverified { signing_input: &bytes[..second], alg, kid, claims, signature })
}

fn check_header(header: &Map<String, Value>) -> Result<(Algorithm, Option<String>), Failure> {
    // RFC 7515 section 4.1.11: a recipient must refuse a token whose `crit` names anything it
    // does not understand, and this verifier understands no extension.
    if let Some(crit) = header.get("crit") {
        return Err(Failure::new(Reason::CritUnsupported, format!("crit {crit}")));
    }
    // RFC 7797: `b64: false` changes what the signature covers; only the default is accepted.
    if let Some(b64) = header.get("b64") {
        if b64 != &Value::Bool(true) {
            return Err(Failure::new(Reason::CritUnsupported, format!("b64 {b64}")));
        }
    }
    if header.contains_key("enc") {
        return Err(malformed("an encrypted token (JWE) header"));
    }
    if header.contains_key("zip") {
        return Err(malformed("compressed payloads are not accepted"));
    }
    let alg = match header.get("alg") {
        Some(Value::String(name)) => Algorithm::from_name(name)
            .ok_or_else(|| Failure::new(Reason::UnsupportedAlg, format!("alg {:?}", truncate(name))))?,
        Some(_) => return Err(malformed("alg is not a string")),
        None => return Err(malformed("no alg")),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(malformed("kid is not a string")),
    };
    if header.get("typ").is_some_and(|t| !t.is_string()) {
        return Err(malformed("typ is not a string"));
    }
    Ok((alg, kid))
}

fn malformed(detail: impl Into<std::borrow::Cow<'static, str>>) -> Failure {
    Failure::new(Reason::Malformed, detail)
}

/// Caller-chosen text going into a log line is cut short.
pub(crate) fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(header: &str, payload: &str, sig: &[u8]) -> String {
        format!("{}.{}.{}", b64::encode(header.as_bytes()), b64::encode(payload.as_bytes()), b64::encode(sig))
    }

    fn reason(t: &str) -> Reason {
        parse(t, DEFAULT_MAX_TOKEN_BYTES).unwrap_err().reason
    }

    const CLAIMS: &str = r#"{"iss":"i","sub":"s","exp":1}"#;

    #[test]
    fn parses_a_well_formed_token() {
        let t = token(r#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#, CLAIMS, b"sig");
        let u = parse(&t, DEFAULT_MAX_TOKEN_BYTES).unwrap();
        assert_eq!(u.alg, Algorithm::ES256);
        assert_eq!(u.kid.as_deref(), Some("k1"));
        assert_eq!(u.claims["iss"], "i");
        assert_eq!(u.signature, b"sig");
        assert_eq!(u.signing_input, t.rsplit_once('.').unwrap().0.as_bytes());
    }

    #[test]
    fn alg_none_and_unsigned_tokens_are_refused() {
        assert_eq!(reason(&token(r#"{"alg":"none"}"#, CLAIMS, b"x")), Reason::UnsupportedAlg);
        assert_eq!(reason(&token(r#"{"alg":"None"}"#, CLAIMS, b"x")), Reason::UnsupportedAlg);
        assert_eq!(reason(&token(r#"{"alg":"none"}"#, CLAIMS, b"")), Reason::UnsupportedAlg);
        let unsigned = token(r#"{"alg":"RS256"}"#, CLAIMS, b"");
        assert_eq!(reason(&unsigned), Reason::Malformed);
        assert!(unsigned.ends_with('.'));
        assert_eq!(reason(&token(r#"{"alg":"ES512"}"#, CLAIMS, b"x")), Reason::UnsupportedAlg);
    }

    #[test]
    fn crit_and_b64_are_refused() {
        assert_eq!(reason(&token(r#"{"alg":"RS256","crit":["exp"],"exp":1}"#, CLAIMS, b"x")), Reason::CritUnsupported);
        assert_eq!(reason(&token(r#"{"alg":"RS256","crit":[]}"#, CLAIMS, b"x")), Reason::CritUnsupported);
        assert_eq!(reason(&token(r#"{"alg":"RS256","b64":false}"#, CLAIMS, b"x")), Reason::CritUnsupported);
        assert!(parse(&token(r#"{"alg":"RS256","b64":true}"#, CLAIMS, b"x"), 8192).is_ok());
    }

    #[test]
    fn structure_errors_are_malformed() {
        let good = token(r#"{"alg":"RS256"}"#, CLAIMS, b"x");
        let (h, rest) = good.split_once('.').unwrap();
        let (p, s) = rest.split_once('.').unwrap();
        let cases = [
            String::new(),
            "abc".into(),
            format!("{h}.{p}"),
            format!("{h}.{p}.{s}.{s}.{s}"),
            format!("{h}.{p}.{s}.{s}"),
            format!(".{p}.{s}"),
            format!("{h}..{s}"),
            format!("{h}=.{p}.{s}"),
            format!("{h}.{p}.{s}="),
            format!("{h}.{p}.{s}+"),
            format!("{h}.{p}.{s} "),
            format!(" {h}.{p}.{s}"),
            token(r#"{"alg":"RS256","alg":"RS256"}"#, CLAIMS, b"x"),
            token(r#"{"alg":"RS256"}"#, r#"{"iss":"a","iss":"b"}"#, b"x"),
            token(r#"["RS256"]"#, CLAIMS, b"x"),
            token(r#"{"alg":"RS256"}"#, r#"["iss"]"#, b"x"),
            token(r#"{"alg":"RS256"}"#, "not json", b"x"),
            token(r#"{"alg":256}"#, CLAIMS, b"x"),
            token(r#"{"kid":"k"}"#, CLAIMS, b"x"),
            token(r#"{"alg":"RS256","kid":7}"#, CLAIMS, b"x"),
            token(r#"{"alg":"RS256","typ":1}"#, CLAIMS, b"x"),
            token(r#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#, CLAIMS, b"x"),
            token(r#"{"alg":"RS256","zip":"DEF"}"#, CLAIMS, b"x"),
        ];
        for t in cases {
            assert_eq!(reason(&t), Reason::Malformed, "{t:?}");
        }
    }

    #[test]
    fn non_canonical_base64_is_malformed() {
        // One stray bit in the last character of the signature decodes to the same bytes in a
        // lax decoder; here it is refused.
        let good = token(r#"{"alg":"RS256"}"#, CLAIMS, b"xy");
        assert!(good.ends_with("eHk"));
        assert_eq!(reason(&format!("{}eHl", &good[..good.len() - 3])), Reason::Malformed);
    }

    #[test]
    fn oversized_tokens_are_refused_before_decoding() {
        let big = format!("{}.{}.{}", "A".repeat(9000), "A", "A");
        assert_eq!(reason(&big), Reason::TooLarge);
        assert_eq!(parse(&big, 10_000).unwrap_err().reason, Reason::Malformed);
    }

    #[test]
    fn key_pointers_in_the_header_are_parsed_past() {
        let t = token(r#"{"alg":"RS256","jku":"https://evil","x5u":"https://evil","jwk":{"kty":"oct"}}"#, CLAIMS, b"x");
        let u = parse(&t, DEFAULT_MAX_TOKEN_BYTES).unwrap();
        assert_eq!(u.kid, None);
    }
}

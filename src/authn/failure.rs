use std::borrow::Cow;
use std::fmt;

use http::{HeaderValue, StatusCode};

/// Why a request's token was refused: a closed set, so it can be the `reason` label of
/// `palisade_authn_failures_total` without growing the label space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No token while one is required (`requireJwt`).
    Missing,
    /// Not a compact JWS: wrong number of parts, bad base64url, bad or duplicate-key JSON,
    /// claims of the wrong type, no `exp`.
    Malformed,
    /// Longer than the configured limit; nothing of it was decoded.
    TooLarge,
    /// `none`, an unknown algorithm, one the issuer does not allow, or one that does not fit
    /// the key (algorithm confusion).
    UnsupportedAlg,
    /// No key of the issuer's JWKS fits the token's `kid` (after a refresh, when allowed).
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    /// No configured provider has the token's `iss`.
    WrongIssuer,
    WrongAudience,
    /// The header names extensions in `crit` (none is understood) or asks for `b64: false`.
    CritUnsupported,
    /// Two different tokens in one request.
    MultipleTokens,
}

impl Reason {
    pub const ALL: [Reason; 12] = [
        Reason::Missing,
        Reason::Malformed,
        Reason::TooLarge,
        Reason::UnsupportedAlg,
        Reason::UnknownKey,
        Reason::BadSignature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::WrongIssuer,
        Reason::WrongAudience,
        Reason::CritUnsupported,
        Reason::MultipleTokens,
    ];

    /// The metric label and the event's reason.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Malformed => "malformed",
            Reason::TooLarge => "too_large",
            Reason::UnsupportedAlg => "unsupported_alg",
            Reason::UnknownKey => "unknown_key",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::WrongAudience => "wrong_audience",
            Reason::CritUnsupported => "crit_unsupported",
            Reason::MultipleTokens => "multiple_tokens",
        }
    }

    /// The rule its events name inside the policy (`<policy>/jwt`, named `jwt:expired`).
    pub fn rule(self) -> &'static str {
        match self {
            Reason::Missing => "jwt:missing",
            Reason::Malformed => "jwt:malformed",
            Reason::TooLarge => "jwt:too_large",
            Reason::UnsupportedAlg => "jwt:unsupported_alg",
            Reason::UnknownKey => "jwt:unknown_key",
            Reason::BadSignature => "jwt:bad_signature",
            Reason::Expired => "jwt:expired",
            Reason::NotYetValid => "jwt:not_yet_valid",
            Reason::WrongIssuer => "jwt:wrong_issuer",
            Reason::WrongAudience => "jwt:wrong_audience",
            Reason::CritUnsupported => "jwt:crit_unsupported",
            Reason::MultipleTokens => "jwt:multiple_tokens",
        }
    }

    /// Text for `error_description`: says what is wrong with the token the caller sent, never
    /// which keys, issuers or audiences this sidecar would accept.
    pub fn description(self) -> &'static str {
        match self {
            Reason::Missing => "a bearer token is required",
            Reason::Malformed => "the token is malformed",
            Reason::TooLarge => "the token is too large",
            Reason::UnsupportedAlg => "the token's algorithm is not accepted",
            Reason::UnknownKey => "the token's signing key is not known",
            Reason::BadSignature => "the token's signature is invalid",
            Reason::Expired => "the token has expired",
            Reason::NotYetValid => "the token is not yet valid",
            Reason::WrongIssuer => "the token's issuer is not accepted",
            Reason::WrongAudience => "the token's audience is not accepted",
            Reason::CritUnsupported => "the token uses unsupported critical header parameters",
            Reason::MultipleTokens => "the request carries more than one token",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A refused token: the bounded [`Reason`] plus a detail for logs and events (it may name the
/// `kid` or issuer; it is not for the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: Reason,
    pub detail: Cow<'static, str>,
}

impl Failure {
    pub(crate) fn new(reason: Reason, detail: impl Into<Cow<'static, str>>) -> Self {
        Failure { reason, detail: detail.into() }
    }

    /// The refusal of a request without a token under `requireJwt` (the authenticator itself
    /// returns `Ok(None)` for such a request; the policy decides).
    pub fn missing() -> Self {
        Failure::new(Reason::Missing, "no bearer token")
    }

    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// Every authentication failure is 401 (SPEC section 5), `multiple_tokens` included: RFC
    /// 6750 would allow 400 there, but one status keeps the pipeline's mapping simple.
    pub fn status(&self) -> StatusCode {
        StatusCode::UNAUTHORIZED
    }

    /// The `WWW-Authenticate` value for this failure (see [`www_authenticate`]).
    pub fn www_authenticate(&self, realm: &str) -> HeaderValue {
        www_authenticate(realm, Some(self.reason))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.label(), self.detail)
    }
}

impl std::error::Error for Failure {}

/// Renders `WWW-Authenticate` for a 401 (RFC 6750 section 3). `None` is a request that carried
/// no token at all: section 3.1 says to send no error code then, so it is the scheme and realm
/// only. Every other refusal, two tokens included, is `invalid_token` with a description safe
/// to show, as SPEC section 5 has it (RFC 6750 would answer two tokens with a 400
/// `invalid_request`; a client that reads the code learns the same: its token was not taken).
pub fn www_authenticate(realm: &str, reason: Option<Reason>) -> HeaderValue {
    let realm = quoted(realm);
    let value = match reason {
        None | Some(Reason::Missing) => format!("Bearer realm=\"{realm}\""),
        Some(r) => {
            format!("Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"", r.description())
        }
    };
    // Every piece is either a fixed ASCII text or the realm made safe by `quoted`.
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

/// The realm as the inside of an RFC 9110 quoted-string: printable ASCII only, with `"` and
/// `\` escaped (a realm comes from configuration, but a header must never break on it).
fn quoted(realm: &str) -> String {
    let mut out = String::with_capacity(realm.len());
    for c in realm.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.label()));
            assert!(r.label().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert_eq!(r.rule(), format!("jwt:{}", r.label()), "the rule is named after the label");
        }
    }

    #[test]
    fn no_token_gets_the_realm_only() {
        assert_eq!(www_authenticate("palisade", None), "Bearer realm=\"palisade\"");
        assert_eq!(www_authenticate("palisade", Some(Reason::Missing)), "Bearer realm=\"palisade\"");
    }

    #[test]
    fn a_bad_token_gets_invalid_token_with_a_description() {
        let v = Failure::new(Reason::Expired, "exp 1 < now 2").www_authenticate("shop");
        assert_eq!(v, "Bearer realm=\"shop\", error=\"invalid_token\", error_description=\"the token has expired\"");
    }

    #[test]
    fn two_tokens_are_an_invalid_token_as_spec_section_5_has_it() {
        let v = www_authenticate("r", Some(Reason::MultipleTokens));
        assert!(v.to_str().unwrap().contains("error=\"invalid_token\""), "{v:?}");
    }

    #[test]
    fn a_hostile_realm_cannot_break_the_header() {
        let v = www_authenticate("a\"b\\c\r\nx: y\u{e9}", None);
        assert_eq!(v, "Bearer realm=\"a\\\"b\\\\c??x: y?\"");
    }

    #[test]
    fn every_reason_renders() {
        for r in Reason::ALL {
            assert!(www_authenticate("r", Some(r)).to_str().is_ok());
        }
    }
}

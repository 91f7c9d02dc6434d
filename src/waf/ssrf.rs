//! Server-side request forgery and remote file inclusion: a value that names a place for the
//! server to fetch from, or to include, that no outside caller has business naming. Cloud
//! metadata services (`169.254.169.254`, `metadata.google.internal`), the loopback interface and
//! its names (`localhost`, `[::1]`), the container host and the Kubernetes API
//! (`host.docker.internal`, `kubernetes.default.svc`), in every spelling URL parsers accept
//! (`http://0x7f.1/`, `http://2130706433/`, `http://[::ffff:127.0.0.1]`, `http://①②⑦.⓪.⓪.①`,
//! `http:127.0.0.1`, a tab inside the host, ten slashes), the schemes only request forgery uses
//! (`gopher://`, `dict://`), and remote inclusion's shapes (a script fetched from an address, a
//! URL ending in `?`, PHP parameters that included one). The OWASP Core Rule Set's rules 931 and
//! 934110-934190 read the same.
//!
//! At paranoia 1 a value is judged when it *is* a URL (or a scheme-less local address followed
//! by a path); private addresses (`10.0.0.5`) and other literal addresses are paranoia 2 there,
//! since services in a mesh hand each other such URLs every day (registrations, health checks,
//! trace attributes, connection strings). From 2, every URL inside a value (prose, a JSON
//! document in a parameter) and every `@` that hands a URL parser a second host. A number, a
//! CIDR range (`10.0.0.0/8`), `localhost` alone (a database form's host field) and a host name
//! with a path are text. The redirect URI of OAuth's native apps (RFC 8252 section 7.3:
//! `redirect_uri=http://127.0.0.1:53682/`) is a browser's redirect, never a fetch: the loopback is
//! allowed there, a metadata address is not.

use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::decode::{ends_with_ci, find_bytes, find_ci, Hit, Shape};

/// `name`: the value's parameter name (empty when it has none).
pub(crate) fn check(v: &[u8], shape: Shape, name: &[u8], level: u8) -> Option<Hit> {
    // Every form read here holds a `:` (a scheme, a port, IPv6), a `/` or `\` (a path) or a `?`.
    if !shape.has(const { Shape::mask(b":/\\?") }) {
        return None;
    }
    let v = without_tabs_and_line_breaks(v, shape);
    let mut start = v.iter().position(|&b| b > b' ').unwrap_or(v.len());
    // RFC 3986 appendix C's delimiters, `<http://...>` and `<URL:http://...>`, which Python's
    // urllib strips before it fetches (tester v1).
    let wrapped = v.get(start) == Some(&b'<');
    if wrapped {
        start += 1;
        if v[start..].len() >= 4 && v[start..start + 4].eq_ignore_ascii_case(b"url:") {
            start += 4;
        }
    }
    let v = match v.iter().rposition(|&b| b == b'>') {
        // Only blanks, `<` and `URL:` are before `start`: the `>` is at or after it.
        Some(end) if wrapped => Cow::Owned(v[..end].to_vec()),
        _ => v,
    };
    let oauth_redirect = find_ci(name, b"redirect_uri", 0).is_some();
    if let Some(hit) = whole_value(&v, start, name, oauth_redirect, 0).filter(|hit| hit.level <= level) {
        return Some(hit);
    }
    if level >= 2 {
        return inside(&v, start, oauth_redirect);
    }
    None
}

/// The value as URL parsers read it: WHATWG's and CPython's delete every tab, CR and LF before
/// parsing (`http://local%09host/` is `http://localhost/`). Copied only when it holds one.
fn without_tabs_and_line_breaks(v: &[u8], shape: Shape) -> Cow<'_, [u8]> {
    if !shape.whitespace() || !v.iter().any(|b| matches!(b, b'\t' | b'\r' | b'\n')) {
        return Cow::Borrowed(v);
    }
    Cow::Owned(v.iter().copied().filter(|b| !matches!(b, b'\t' | b'\r' | b'\n')).collect())
}

/// The path (normalised: `//` is one `/`), from paranoia 2: a segment that opens a URL, as
/// proxies and image resizers take one (`/proxy/http:/169.254.169.254/latest`), read as a
/// value that is one; at most 16 of them.
pub(crate) fn path(v: &[u8], shape: Shape) -> Option<Hit> {
    if !shape.has(const { Shape::mask(b":") }) {
        return None;
    }
    let mut seen = 0;
    for (at, _) in v.iter().enumerate().filter(|(_, &b)| b == b'/') {
        if scheme_at(&v[at + 1..]).is_none() {
            continue;
        }
        seen += 1;
        if seen > 16 {
            break;
        }
        if let Some(hit) = whole_value(v, at + 1, b"", false, 0) {
            return Some(Hit { level: 2, ..hit });
        }
    }
    None
}

/// What a URL's host is, for request forgery; later is worse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    /// Any other address written as a literal.
    PublicAddress,
    /// RFC 1918, carrier-grade NAT and unique-local addresses.
    Private,
    /// The machine itself: `localhost` and its kin, `127/8`, `::1`, `0.0.0.0`.
    Loopback,
    /// Cloud metadata services, link-local addresses, and the names of the container host and
    /// the Kubernetes API.
    Internal,
}

impl Target {
    /// Reached only by a request the server makes for the caller: at paranoia 1 in any URL.
    fn local(self) -> bool {
        matches!(self, Target::Loopback | Target::Internal)
    }
}

/// How a host names its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Judged {
    target: Target,
    /// An address written as a literal (in any radix), not a name.
    literal: bool,
}

/// Schemes whose URL a server fetches or includes.
const FETCHED: [&[u8]; 16] = [
    b"http", b"https", b"ftp", b"ftps", b"file", b"gopher", b"dict", b"ldap", b"ldaps", b"tftp", b"sftp", b"smb",
    b"ws", b"wss", b"jar", b"netdoc",
];

/// Schemes no client hands an API except to make its server speak another protocol to a host
/// of the attacker's choosing (Redis and memcached through `gopher://`, `dict://`).
const FORGERY_ONLY: [&[u8]; 3] = [b"gopher", b"dict", b"netdoc"];

/// Schemes that wrap another URL: Java's `jar:http://host/x.jar!/` fetches the inner one, and
/// `new URL("url:http://...")` drops the prefix.
const WRAPPING: [&[u8]; 4] = [b"jar", b"url", b"view-source", b"jdbc"];

/// The schemes remote file inclusion loads from (CRS 931).
const INCLUDED: [&[u8]; 5] = [b"http", b"https", b"ftp", b"ftps", b"file"];

/// What an `include` loads: a script or the text of one.
const SCRIPT_EXTENSIONS: [&[u8]; 8] = [b".php", b".phtml", b".txt", b".inc", b".jsp", b".asp", b".aspx", b".pl"];

/// Parameters of PHP applications that have included a URL given to them (CRS 931110).
const INCLUDE_PARAMETERS: [&[u8]; 7] = [
    b"_conf[path]",
    b"mosconfig_absolute_path",
    b"_server[document_root]",
    b"gallery_basedir",
    b"path[docroot]",
    b"appserv_root",
    b"config[root_dir]",
];

fn one_of(word: &[u8], list: &[&[u8]]) -> bool {
    list.iter().any(|w| word.eq_ignore_ascii_case(w))
}

/// The value read whole, from its first byte that is not blank. `depth`: how many wrapping
/// schemes were read through.
fn whole_value(v: &[u8], start: usize, name: &[u8], oauth_redirect: bool, depth: u8) -> Option<Hit> {
    let rest = &v[start..];
    // `http?`: a scheme's name and question marks (the longest name is five bytes).
    let word = rest.iter().take(6).position(|&b| b == b'?').map_or(rest, |p| &rest[..p]);
    if word.len() < rest.len()
        && one_of(word, &INCLUDED)
        && rest[word.len()..].trim_ascii_end().iter().all(|&b| b == b'?')
    {
        return Some(Hit::new(1, start, v.len()));
    }
    let Some(scheme_len) = scheme_at(rest) else {
        return schemeless(v, start, oauth_redirect);
    };
    let scheme = &rest[..scheme_len];
    let after = start + scheme_len + 1;
    if depth < 3 && one_of(scheme, &WRAPPING) && scheme_at(&v[after..]).is_some() {
        return whole_value(v, after, name, oauth_redirect, depth + 1);
    }
    // `http://host/x.txt?`: a question mark that ends the URL cuts off whatever an `include`
    // appends (`.php`), as remote inclusion's payloads do (CRS 931120).
    if one_of(scheme, &INCLUDED) && dangling_question_mark(&v[after..]) {
        return Some(Hit::new(1, start, v.len()));
    }
    // WHATWG skips any number of slashes and backslashes after a scheme it knows.
    let slashes = v[after..].iter().take_while(|&&b| b == b'/' || b == b'\\').count();
    let fetched = one_of(scheme, &FETCHED);
    if slashes == 0 && !fetched {
        // `mailto:`, `urn:`, `tel:` and prose (`note: 127.0.0.1 is fine`) name no fetch;
        // `localhost:8080/admin` is a host and its port.
        return schemeless(v, start, oauth_redirect);
    }
    let authority_at = after + slashes;
    let authority_end = authority_end(v, authority_at);
    let authority = &v[authority_at..authority_end];
    // The host, never the user information before it: it may hold a password.
    let host_at = authority.iter().rposition(|&b| b == b'@').map_or(authority_at, |at| authority_at + at + 1);
    let hit = |level| Some(Hit::new(level, host_at, authority_end.max(host_at)));
    if slashes >= 2 && one_of(scheme, &INCLUDED) && one_of(name, &INCLUDE_PARAMETERS) {
        return hit(1);
    }
    if slashes >= 1 && one_of(scheme, &FORGERY_ONLY) && !authority.is_empty() {
        return hit(1);
    }
    // An `@` past where the authority seems to end: the `/`, `?`, `#` or `\` before it may have
    // come encoded (`http://evil.example%2F@127.0.0.1/`: the app's parser reads 127.0.0.1, as
    // curl, PHP and Python's clients read `http://evil.example\@127.0.0.1/`; tester u1).
    let judged = worse(judge_authority(authority), hosts_after_at(v, authority_end))?;
    if oauth_redirect && judged.target == Target::Loopback {
        return None;
    }
    let level = match judged.target {
        target if target.local() => 1,
        // A script fetched from an address, or anything by FTP from one: remote inclusion's
        // shape (CRS 931100), not a service's own URL.
        Target::PublicAddress if fetched && judged.literal && slashes > 0 => {
            match scheme.eq_ignore_ascii_case(b"ftp")
                || scheme.eq_ignore_ascii_case(b"ftps")
                || names_a_script(v, authority_end)
            {
                true => 1,
                false => 2,
            }
        }
        Target::Private if fetched || slashes > 0 => 2,
        // A public address in a scheme of no fetcher's (`rsync://`, `xri://`): CRS reads it at 2.
        Target::PublicAddress if slashes > 0 && judged.literal => 2,
        _ => return None,
    };
    hit(level)
}

/// The worst host after an `@` in a URL's path, query or fragment: for each run between what
/// may be separators (`/ ? # \`), the host after its last `@`, as a parser reads user
/// information when the separator before it came encoded (blanks included: a parser
/// percent-encodes them; tester v1). One walk over the rest of the value. A bare name of one
/// label other than the loopback's (`@kubernetes/client-node`, npm's scopes) is a path's, not a
/// host.
fn hosts_after_at(v: &[u8], from: usize) -> Option<Judged> {
    let rest = &v[from..];
    let mut worst = None;
    let mut last_at = None;
    let mut judged = 0;
    for (i, &b) in rest.iter().enumerate().chain(std::iter::once((rest.len(), &b'/'))) {
        match b {
            b'@' => last_at = Some(i),
            b'/' | b'\\' | b'?' | b'#' => {
                if let Some(at) = last_at.take() {
                    let host = &rest[at + 1..i];
                    let found = (host.len() <= 300).then(|| judge_host_port(host)).flatten().filter(|j| {
                        j.literal || j.target == Target::Loopback || host.iter().any(|&c| c == b'.' || c == b':')
                    });
                    worst = worse(worst, found);
                    judged += 1;
                    if judged == 64 {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    worst
}

/// Whether the URL's path, from `from`, ends in a script's or a text file's extension
/// (`/crash.php`, `/shell.txt`), before its query or fragment.
fn names_a_script(v: &[u8], from: usize) -> bool {
    let path = &v[from..];
    let path = &path[..path.iter().position(|&b| matches!(b, b'?' | b'#') || b <= b' ').unwrap_or(path.len())];
    SCRIPT_EXTENSIONS.iter().any(|e| ends_with_ci(path, e))
}

/// The length of a URL scheme at the start of `v` followed by `:` (RFC 3986: a letter, then
/// letters, digits, `+`, `-`, `.`), if there is one.
fn scheme_at(v: &[u8]) -> Option<usize> {
    if !v.first()?.is_ascii_alphabetic() {
        return None;
    }
    let len = v.iter().take(33).position(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')))?;
    // One letter is a Windows drive (`D:\0\backup`; tester u1), never a scheme.
    (len >= 2 && v.get(len) == Some(&b':')).then_some(len)
}

/// After `scheme:`: nothing but question marks, or `//` and a URL whose only question marks end
/// it (`https://foo.bar?`; `https://foo.bar?q=1` is an ordinary query).
fn dangling_question_mark(after_colon: &[u8]) -> bool {
    let text = after_colon.trim_ascii_end();
    let Some(first_mark) = text.iter().position(|&b| b == b'?') else { return false };
    if !text[first_mark..].iter().all(|&b| b == b'?') {
        return false;
    }
    let url = &text[..first_mark];
    url.is_empty() || (url.starts_with(b"//") && url.len() > 2 && !url.iter().any(u8::is_ascii_whitespace))
}

/// Where a URL's authority ends, as URL parsers end it: at a path, a query or a fragment (user
/// information may hold blanks and quotes, which the parser percent-encodes).
fn authority_end(v: &[u8], from: usize) -> usize {
    v[from..].iter().position(|&b| matches!(b, b'/' | b'\\' | b'?' | b'#')).map_or(v.len(), |p| from + p)
}

/// Where a URL's authority ends inside text: also at a blank, a quote or markup.
fn authority_end_in_text(v: &[u8], from: usize) -> usize {
    let limit = (from + 255).min(v.len());
    v[from..limit]
        .iter()
        .position(|&b| b <= b' ' || matches!(b, b'/' | b'\\' | b'?' | b'#' | b'"' | b'\'' | b'<' | b'>' | b'`'))
        .map_or(limit, |p| from + p)
}

/// The most dangerous host an authority names: URL parsers disagree on which `@` ends the user
/// information (`http://127.0.0.1:80@evil.example/` reaches the loopback through some), so the
/// text before the first is read too, when it reads as a host and a port (not `user:password`).
fn judge_authority(authority: &[u8]) -> Option<Judged> {
    let after_last = authority.iter().rposition(|&b| b == b'@').map_or(authority, |at| &authority[at + 1..]);
    let judged = judge_host_port(after_last);
    if after_last.len() == authority.len() {
        return judged;
    }
    let before_first = &authority[..authority.iter().position(|&b| b == b'@').unwrap_or(0)];
    let port = before_first.iter().rposition(|&b| b == b':').map(|at| &before_first[at + 1..]);
    if port.is_some_and(|p| !p.iter().all(u8::is_ascii_digit)) {
        return judged;
    }
    worse(judged, judge_host_port(before_first))
}

fn worse(a: Option<Judged>, b: Option<Judged>) -> Option<Judged> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.target > a.target { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// A host with its port: `[v6]:port`, a bare IPv6 address (CRS 931100 sees
/// `https://2001:41d0::29c8/`), or `host:port`.
fn judge_host_port(hp: &[u8]) -> Option<Judged> {
    if let Some(inner) = hp.strip_prefix(b"[") {
        let inner = &inner[..inner.iter().position(|&b| b == b']').unwrap_or(inner.len())];
        return Some(judge_ipv6_text(inner));
    }
    if hp.iter().filter(|&&b| b == b':').count() >= 2 {
        if let Some(judged) = ipv6(hp) {
            return Some(judged);
        }
    }
    let host = &hp[..hp.iter().position(|&b| b == b':').unwrap_or(hp.len())];
    judge_host(host, false)
}

/// An IPv6 address between brackets (a zone, `%eth0`, dropped); text that does not parse is
/// still a literal an attacker wrote to be read as one.
fn judge_ipv6_text(inner: &[u8]) -> Judged {
    let address = &inner[..inner.iter().position(|&b| b == b'%').unwrap_or(inner.len())];
    ipv6(address).unwrap_or(Judged { target: Target::PublicAddress, literal: true })
}

fn ipv6(text: &[u8]) -> Option<Judged> {
    let address: Ipv6Addr = std::str::from_utf8(text).ok()?.parse().ok()?;
    Some(Judged { target: ipv6_target(address), literal: true })
}

fn ipv6_target(a: Ipv6Addr) -> Target {
    let s = a.segments();
    if a.is_loopback() || a.is_unspecified() {
        return Target::Loopback;
    }
    // IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`) and NAT64 (`64:ff9b::/96`)
    // addresses reach the IPv4 address they hold.
    let embeds_v4 = (s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0)) || (s[0] == 0x64 && s[1] == 0xff9b);
    if embeds_v4 {
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return ipv4_target(v4);
    }
    match s[0] {
        // AWS's and Google Cloud's metadata services on IPv6, inside the unique-local range.
        0xfd00 if s[1] == 0x0ec2 => Target::Internal,
        0xfd20 if s[1] == 0x00ce && s[7] == 0x0254 => Target::Internal,
        _ if a.is_unicast_link_local() => Target::Internal,
        _ if a.is_unique_local() => Target::Private,
        _ => Target::PublicAddress,
    }
}

fn ipv4_target(a: Ipv4Addr) -> Target {
    let [a0, a1, a2, a3] = a.octets();
    match (a0, a1) {
        _ if a.is_loopback() => Target::Loopback,
        // `0.0.0.0` reaches the loopback on Linux; the rest of `0/8` reaches nothing.
        _ if a.is_unspecified() => Target::Loopback,
        _ if a.is_link_local() => Target::Internal,
        // Alibaba Cloud's and Oracle Cloud's metadata services.
        (100, 100) if a2 == 100 && a3 == 200 => Target::Internal,
        (192, 0) if a2 == 0 && a3 == 192 => Target::Internal,
        _ if a.is_private() => Target::Private,
        (100, b) if (64..128).contains(&b) => Target::Private,
        _ => Target::PublicAddress,
    }
}

/// Names that reach the machine itself.
const LOOPBACK_NAMES: [&[u8]; 15] = [
    b"localhost",
    b"localhost.localdomain",
    b"localhost4",
    b"localhost4.localdomain4",
    b"localhost6",
    b"localhost6.localdomain6",
    b"ip6-localhost",
    b"ip6-loopback",
    b"ipv6-localhost",
    b"ipv6-loopback",
    // Public names whose every subdomain resolves to 127.0.0.1.
    b"localtest.me",
    b"lvh.me",
    b"vcap.me",
    b"local.gd",
    b"localhost.direct",
];

/// Domains whose every name resolves to the loopback, or to whatever address the name asks for
/// at each lookup (DNS rebinding services: `7f000001.c0a80001.rbndr.us`).
const LOOPBACK_DOMAINS: [&[u8]; 6] =
    [b".localhost", b".localtest.me", b".lvh.me", b".vcap.me", b".local.gd", b".localhost.direct"];
const REBINDING_DOMAINS: [&[u8]; 2] = [b".rbndr.us", b".1u.ms"];

/// Names of metadata services, the container host and the Kubernetes API.
const INTERNAL_NAMES: [&[u8]; 17] = [
    b"metadata",
    // The Kubernetes API by its short name, in the `default` namespace.
    b"kubernetes",
    b"metadata.google.internal",
    b"metadata.goog",
    b"metadata.packet.net",
    b"metadata.platformequinix.com",
    b"metadata.tencentyun.com",
    b"instance-data",
    b"instance-data.ec2.internal",
    b"host.docker.internal",
    b"gateway.docker.internal",
    b"kubernetes.docker.internal",
    b"host.containers.internal",
    b"host.minikube.internal",
    b"kubernetes.default",
    b"kubernetes.default.svc",
    b"kubernetes.default.svc.cluster.local",
];

/// Domains that resolve to the address their subdomain spells (`127.0.0.1.nip.io`,
/// `app-169-254-169-254.nip.io`, `--1.sslip.io`).
const ADDRESS_DOMAINS: [&[u8]; 4] = [b".nip.io", b".sslip.io", b".xip.io", b".traefik.me"];

/// A host name or an IPv4 address in any spelling `inet_aton` reads, after the mapping browsers
/// and URL parsers apply to a name with characters beyond ASCII (UTS 46: `localhoſt`,
/// `①②⑦.⓪.⓪.①`, `169。254。169。254`, a soft hyphen ignored). `schemeless`: only names and
/// addresses of four parts count (`0/1` and `100/minute` are no addresses).
fn judge_host(raw: &[u8], schemeless: bool) -> Option<Judged> {
    let mapped;
    let host: &[u8] = if raw.is_ascii() {
        raw
    } else {
        let text = std::str::from_utf8(raw).ok()?;
        // UTS 46 refuses a joiner outside the scripts that use one; curl's libidn2 drops it
        // (`local\u{200d}host`; tester u1).
        mapped = idna::domain_to_ascii(text)
            .or_else(|_| idna::domain_to_ascii(&text.replace(['\u{200c}', '\u{200d}'], "")))
            .ok()?;
        mapped.as_bytes()
    };
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return None;
    }
    if let Some((address, parts)) = inet_aton(host) {
        if schemeless && parts != 4 {
            return None;
        }
        return Some(Judged { target: ipv4_target(address), literal: true });
    }
    let name = |target| Some(Judged { target, literal: false });
    if one_of(host, &LOOPBACK_NAMES) || LOOPBACK_DOMAINS.iter().any(|d| ends_with_ci(host, d)) {
        return name(Target::Loopback);
    }
    if one_of(host, &INTERNAL_NAMES) || REBINDING_DOMAINS.iter().any(|d| ends_with_ci(host, d)) {
        return name(Target::Internal);
    }
    let domain = ADDRESS_DOMAINS.iter().find(|d| ends_with_ci(host, d))?;
    let target = spelled_address(&host[..host.len() - domain.len()])?;
    Some(Judged { target, literal: false })
}

/// The address a name under an address domain spells, when it is not a public one: the last
/// four labels (`app.10.0.0.1`), or the last four dash-separated parts of the last label
/// (`app-169-254-169-254`), eight hexadecimal digits (`app-a9fea9fe`), or IPv6 with dashes
/// for colons (`--1`).
fn spelled_address(spelled: &[u8]) -> Option<Target> {
    let last_label = &spelled[spelled.iter().rposition(|&b| b == b'.').map_or(0, |p| p + 1)..];
    let dotted_at = spelled.iter().enumerate().filter(|(_, &b)| b == b'.').map(|(i, _)| i).rev().nth(3);
    let dotted = dotted_at.map_or(spelled, |at| &spelled[at + 1..]);
    let mut candidates: Vec<Target> = Vec::new();
    if let Some((address, 4)) = inet_aton(dotted) {
        candidates.push(ipv4_target(address));
    }
    let dashes: Vec<&[u8]> = last_label.split(|&b| b == b'-').collect();
    if dashes.len() >= 4 {
        let four = dashes[dashes.len() - 4..].join(&b'.');
        if let Some((address, 4)) = inet_aton(&four) {
            candidates.push(ipv4_target(address));
        }
    }
    if let Some(hex) = dashes.last().filter(|h| h.len() == 8 && h.iter().all(u8::is_ascii_hexdigit)) {
        let n = u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
        candidates.push(ipv4_target(Ipv4Addr::from(n)));
    }
    if last_label.contains(&b'-') && last_label.iter().all(|&b| b == b'-' || b.is_ascii_hexdigit()) {
        let colons: Vec<u8> = last_label.iter().map(|&b| if b == b'-' { b':' } else { b }).collect();
        if let Some(j) = ipv6(&colons) {
            candidates.push(j.target);
        }
    }
    candidates.into_iter().filter(|&t| t != Target::PublicAddress).max()
}

/// An IPv4 address as `inet_aton` and the URL parsers after it read one: one to four parts,
/// each decimal, octal (a leading `0`) or hexadecimal (`0x`), the last filling the bytes left
/// (`127.1`, `2130706433`, `0x7f.0.0.1`, `0177.0.0.1`); a value past 32 bits wraps, as some
/// parsers let it. With the number of parts.
fn inet_aton(host: &[u8]) -> Option<(Ipv4Addr, usize)> {
    if !host.first()?.is_ascii_digit() {
        return None;
    }
    let mut parts = [0u64; 4];
    let mut count = 0;
    for part in host.split(|&b| b == b'.') {
        *parts.get_mut(count)? = number(part)?;
        count += 1;
    }
    let last = parts[count - 1];
    let mut address: u64 = 0;
    for (i, &p) in parts[..count - 1].iter().enumerate() {
        address |= (p & 0xff) << (24 - 8 * i);
    }
    // The last part fills the bytes the others left: four for one part, one for four.
    address |= last & ((1u64 << (8 * (5 - count))) - 1);
    Some((Ipv4Addr::from((address & 0xffff_ffff) as u32), count))
}

/// One part of an IPv4 address in `inet_aton`'s radixes, saturating far past 32 bits.
fn number(part: &[u8]) -> Option<u64> {
    let (digits, radix) = if let Some(hex) = part.strip_prefix(b"0x").or_else(|| part.strip_prefix(b"0X")) {
        (hex, 16)
    } else if part.len() > 1 && part[0] == b'0' {
        (&part[1..], 8)
    } else {
        (part, 10)
    };
    if part.is_empty() || (digits.is_empty() && radix != 16) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let d = (b as char).to_digit(radix)?;
        Some(n.saturating_mul(u64::from(radix)).saturating_add(u64::from(d)).min(1 << 40))
    })
}

/// A value that starts with a local or metadata host and a path, without a scheme
/// (`localhost/`, `169.254.169.254/latest/meta-data`, `x@169.254.169.254/`, `[::1]/`,
/// `//169.254.169.254/`, a path after `\`): libraries that add `http://`, and a relative URL
/// resolved against the app's own, fetch it (CRS 934190). The path must not open with a digit:
/// `127.0.0.0/8` is a CIDR range.
fn schemeless(v: &[u8], start: usize, oauth_redirect: bool) -> Option<Hit> {
    let slashes = v[start..].iter().take_while(|&&b| b == b'/' || b == b'\\').count();
    let relative = slashes >= 2;
    let from = start + if relative { slashes } else { 0 };
    let end = authority_end(v, from);
    let path_follows = matches!(v.get(end), Some(b'/' | b'\\')) && !v.get(end + 1).is_some_and(u8::is_ascii_digit);
    if !(path_follows || (relative && end > from)) {
        return None;
    }
    let authority = &v[from..end];
    let host_port = authority.iter().rposition(|&b| b == b'@').map_or(authority, |at| &authority[at + 1..]);
    let judged = match host_port.first() {
        Some(b'[') => judge_host_port(host_port)?,
        _ => {
            let (host, port) = match host_port.iter().position(|&b| b == b':') {
                Some(colon) => (&host_port[..colon], Some(&host_port[colon + 1..])),
                None => (host_port, None),
            };
            if port.is_some_and(|p| p.is_empty() || !p.iter().all(u8::is_ascii_digit)) {
                return None;
            }
            let judged = judge_host(host, true)?;
            // With a port, the loopback's path may name an image on a local registry
            // (`localhost:5000/app:1`, tester u1), which only the image grammar tells apart;
            // curl fetches the rest (tester v1). No image lives at a metadata address.
            if port.is_some()
                && judged.target == Target::Loopback
                && image_reference(v.get(end + 1..).unwrap_or_default())
            {
                return None;
            }
            judged
        }
    };
    let host_at = end - host_port.len();
    (judged.target.local() && !(oauth_redirect && judged.target == Target::Loopback))
        .then(|| Hit::new(1, host_at, (end + 1).min(v.len())))
}

/// Whether `path` reads as a container image's name after its registry: lower-case components
/// of letters, digits and `._-`, a `:tag`, a `@sha256:` digest (`app:1`, `team/app@sha256:...`).
fn image_reference(path: &[u8]) -> bool {
    let (name, digest) = match find_bytes(path, b"@sha256:", 0) {
        Some(at) => (&path[..at], Some(&path[at + 8..])),
        None => (path, None),
    };
    let (name, tag) = match name.iter().rposition(|&b| b == b':') {
        Some(colon) => (&name[..colon], Some(&name[colon + 1..])),
        None => (name, None),
    };
    let component = |c: &[u8]| {
        !c.is_empty()
            && c.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
    };
    name.split(|&b| b == b'/').all(component)
        && tag.is_none_or(|t| {
            !t.is_empty()
                && t.len() <= 128
                && t.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
        && digest.is_none_or(|d| d.len() == 64 && d.iter().all(u8::is_ascii_hexdigit))
}

/// From paranoia 2: every URL inside a value, and every `@` that hands a parser a second host
/// (`http://google.com:80 &@127.88.23.245:22/`), at most 16 of each.
fn inside(v: &[u8], start: usize, oauth_redirect: bool) -> Option<Hit> {
    let dangerous = |j: Option<Judged>| {
        j.is_some_and(|j| {
            (j.literal || j.target != Target::PublicAddress) && !(oauth_redirect && j.target == Target::Loopback)
        })
    };
    let mut from = start;
    let mut seen = 0;
    while let Some(at) = find_bytes(v, b"://", from) {
        from = at + 3;
        seen += 1;
        if seen > 16 {
            break;
        }
        let end = authority_end_in_text(v, at + 3);
        if dangerous(judge_authority(&v[at + 3..end])) {
            let scheme_start = v[..at].iter().rposition(|b| !b.is_ascii_alphanumeric()).map_or(0, |p| p + 1);
            return Some(Hit::new(2, scheme_start, end));
        }
    }
    if seen == 0 {
        return None;
    }
    let mut from = start;
    for _ in 0..16 {
        let at = from + v[from..].iter().position(|&b| b == b'@')?;
        from = at + 1;
        let end = authority_end_in_text(v, at + 1);
        if dangerous(judge_host_port(&v[at + 1..end])) {
            return Some(Hit::new(2, at, end));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level_of(v: &str, name: &str, level: u8) -> Option<u8> {
        check(v.as_bytes(), Shape::of(v.as_bytes()), name.as_bytes(), level).map(|h| h.level)
    }

    #[test]
    fn metadata_and_loopback_urls_are_refused_in_every_spelling() {
        for v in [
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
            "http://169.254.169.254/latest",
            " http://169.254.169.254/",
            "HTTP://169.254.169.254/computeMetadata/v1/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://metadata/computeMetadata/v1/",
            "http://METADATA.GOOGLE.INTERNAL./",
            "https://metadata.packet.net/userdata",
            "http://100.100.100.200/latest/meta-data/",
            "http://192.0.0.192/latest/user-data/",
            "http://[fd00:ec2::254]/latest/meta-data/",
            "http://127.0.0.1:6379/",
            "http://127.1/",
            "http://0/",
            "http://0.0.0.0:8080/admin",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0x7f.0.0.1/",
            "http://0177.0.0.1/",
            "http://0251.0376.0251.0376/",
            "http://169.254.43518/",
            "http://7147006462/",
            "http://[::1]/",
            "http://[::]:80/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:a9fe:a9fe]/",
            "http://[0:0:0:0:0:ffff:169.254.169.254]/",
            "http://[fe80::1%25eth0]/",
            "http://[fe80::%zone1]",
            "http://[64:ff9b::7f00:1]/",
            "http://localhost/",
            "http://LOCALHOST:8080/",
            "http://localhost./",
            "http://app.localhost/",
            "http://api.localtest.me/",
            "http://127.0.0.1.nip.io/",
            "http://169-254-169-254.sslip.io/latest",
            "http://host.docker.internal:2375/containers/json",
            "https://kubernetes.default.svc/api/v1/secrets",
            "http:127.0.0.1",
            "http:/127.0.0.1/",
            "http:\\\\127.0.0.1\\",
            "http://evil.example@127.0.0.1/",
            "http://127.0.0.1:80@evil.example/",
            "http://①②⑦.⓪.⓪.①/",
            "http://169。254。169。254/",
            "http://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ/",
            "ftp://localhost/",
            "file://localhost/etc/passwd",
            "file://127.0.0.1/etc/passwd",
            "gopher://127.0.0.1:6379/_FLUSHALL",
            "gopher://redis.internal:6379/_INFO",
            "dict://cache.internal:11211/stats",
            "ldap://127.0.0.1/",
            "rsync://[0:0:0:0:0:ffff:169.254.169.254]",
            "xri://[::ffff:127.0.0.1]",
            "redis://127.0.0.1:6379",
        ] {
            assert_eq!(level_of(v, "url", 1), Some(1), "{v}");
        }
    }

    /// The review: each passed at paranoia 1, and each reaches the metadata service or the
    /// loopback through Node's, Python's, curl's or Java's URL parsers.
    #[test]
    fn what_url_parsers_read_past_the_first_version_is_refused() {
        let long_user = format!("http://{}@169.254.169.254/latest/meta-data/", "a".repeat(300));
        for v in [
            // Tabs and line breaks, which WHATWG and CPython delete before parsing.
            "http://\t169.254.169.254/latest/meta-data/iam/security-credentials/",
            "http://local\thost/",
            "http://metadata.google\n.internal/computeMetadata/v1/",
            "h\nttp://169.254.169.254/",
            "http:/\t/169.254.169.254/",
            // Any number of slashes.
            "http://////////169.254.169.254/latest/meta-data/",
            // User information with quotes, blanks or past 255 bytes.
            "http://x'@169.254.169.254/latest/meta-data/",
            "http://a b@169.254.169.254/",
            "http://x\"@127.0.0.1:6379/",
            &long_user,
            // What UTS 46 maps to ASCII.
            "http://localhoſt/",
            "http://𝟏𝟔𝟗.𝟐𝟓𝟒.𝟏𝟔𝟗.𝟐𝟓𝟒/latest",
            "http://¹²⁷.0.0.1/",
            "http://local\u{ad}host/",
            "http://\u{212a}ubernetes.default.svc/api",
            // Wrapping schemes.
            "jar:http://169.254.169.254/latest!/",
            "url:http://169.254.169.254/latest/meta-data/",
            "jdbc:postgresql://localhost:5432/x",
            // Address domains in every shape.
            "http://app-169-254-169-254.nip.io/",
            "http://magic-127-0-0-1.nip.io/",
            "http://www-169-254-169-254.sslip.io/",
            "http://app-a9fea9fe.nip.io/",
            "http://--1.sslip.io/",
            // One slash.
            "gopher:/redis.internal:6379/_FLUSHALL",
            "dict:/cache.internal:11211/stats",
            // Without a scheme.
            "x@169.254.169.254/latest/meta-data/",
            "[fd00:ec2::254]/latest/meta-data/",
            "169.254.169.254\\latest\\meta-data",
            "//169.254.169.254/latest/meta-data/",
        ] {
            assert_eq!(level_of(v, "url", 1), Some(1), "{v:?}");
        }
        // Tester u1: an `@` past a separator the app gets encoded (the WAF reads it decoded), or
        // past a backslash that curl, PHP and Python's clients read as user information; as a
        // redirect URI, refused when it reaches more than the loopback.
        for (v, beyond_the_loopback) in [
            ("http://evil.example/@127.0.0.1/", false),
            ("http://evil.example?@169.254.169.254/latest", true),
            ("http://evil.example#@127.0.0.1:6379/", false),
            ("http://evil.example\\@127.0.0.1/", false),
            ("http://127.0.0.1\\@169.254.169.254/", true),
            // Invisible characters, Google's IPv6 metadata service, names of the loopback and
            // of DNS rebinding services, the Kubernetes API's short name.
            ("http://local\u{200b}host/", false),
            ("http://local\u{200d}host/", false),
            ("http://[fd20:ce::254]/computeMetadata/v1/", true),
            ("http://app.localhost.direct/", false),
            ("http://127.0.0.1.vcap.me/", false),
            ("http://x.local.gd/", false),
            ("http://7f000001.a9fea9fe.rbndr.us/", true),
            ("http://make-127-0-0-1-rr.1u.ms/", true),
            ("https://kubernetes/api/v1/namespaces/default/secrets", true),
        ] {
            assert_eq!(level_of(v, "url", 1), Some(1), "{v:?}");
            assert_eq!(level_of(v, "redirect_uri", 1).is_some(), beyond_the_loopback, "{v:?}");
        }
        // A handle in a path is no host, nor a package's scope (tester v1).
        assert_eq!(level_of("https://mastodon.example/@alice", "url", 4), None);
        assert_eq!(
            level_of("https://registry.npmjs.org/@kubernetes/client-node/-/client-node-1.0.0.tgz", "url", 1),
            None
        );
        // Tester v1: a blank after the encoded separator, nine `@`, a port without a scheme,
        // the delimiters of RFC 3986's appendix C.
        for v in [
            "http://evil.example/ x@127.0.0.1/",
            "http://evil.example? x@169.254.169.254/latest",
            "http://evil.example\\ @127.0.0.1/",
            "http://evil.example/@x@x@x@x@x@x@x@x@127.0.0.1/",
            "127.0.0.1:26090/admin?delete=1",
            "169.254.169.254:80/latest/meta-data/",
            "x@127.0.0.1:26090/admin?x=1",
            "<http://127.0.0.1/>",
            "<URL:http://169.254.169.254/latest>",
            // A relative URL with a port and nothing after it.
            "//127.0.0.1:8080",
        ] {
            assert_eq!(level_of(v, "url", 1), Some(1), "{v:?}");
        }
        // The loopback is a native app's redirect; the metadata service behind it is not.
        assert_eq!(level_of("http://127.0.0.1@169.254.169.254/latest", "redirect_uri", 1), Some(1));
        assert_eq!(level_of("http://127.0.0.1:8400/cb", "redirect_uris", 1), None);
    }

    /// The review: what services in a mesh hand each other are paranoia 2, not 1.
    #[test]
    fn private_addresses_and_service_urls_are_paranoia_two() {
        for v in [
            "http://10.0.0.5:8500/v1/agent/self",
            "http://192.168.1.1/",
            "http://172.16.0.1/",
            "http://10.1.2.3:8080/health",
            "postgres://app:pw@10.0.1.20:5432/app",
            "mongodb://10.0.0.5:27017/db",
            "http://203.0.113.9/hooks/deploy",
        ] {
            assert_eq!(level_of(v, "url", 1), None, "{v}");
            assert_eq!(level_of(v, "url", 2), Some(2), "{v}");
        }
        // A numeric user name with a password is no host (`https://<key>:<secret>@api...`).
        assert_eq!(level_of("https://123456789012345:secret@api.cloudinary.com/v1_1/demo", "url", 4), None);
        // The finding shows the host, never the password before it.
        let hit = check(b"postgres://app:S3cret@127.0.0.1:5432/app", Shape::of(b":/"), b"dsn", 1).unwrap();
        let fragment = &b"postgres://app:S3cret@127.0.0.1:5432/app"[hit.start..hit.end];
        assert_eq!(fragment, b"127.0.0.1:5432");
    }

    #[test]
    fn literal_addresses_in_urls_are_remote_inclusion() {
        // CRS 931100: what `include` or a fetcher loads from, by address.
        for v in [
            "http://66.240.183.75/crash.php",
            "https://[2001:41d0:701:1100::29c8]/gecko.php",
            "https://2001:41d0:701:1100::29c8/gecko.php",
            "ftp://1.1.1.1",
            "http://8.8.8.8:80/shell.txt",
            "http://8.8.8.8/shell.txt?",
        ] {
            assert_eq!(level_of(v, "src", 1), Some(1), "{v}");
        }
        // An address with no script: a service's own URL, paranoia 2.
        assert_eq!(level_of("http://8.8.8.8/dns-query", "src", 1), None);
        assert_eq!(level_of("http://8.8.8.8/dns-query", "src", 2), Some(2));
        // A public address in a scheme no fetcher speaks is CRS's 934120, at 2.
        assert_eq!(level_of("rsync://203.0.113.9/backup", "x", 1), None);
        assert_eq!(level_of("rsync://203.0.113.9/backup", "x", 2), Some(2));
    }

    #[test]
    fn remote_inclusion_by_a_dangling_question_mark_or_a_known_parameter() {
        for v in ["http?", "https?", "ftp?", "ftps?", "file?", "https://foo.bar?", "http://evil.example/shell.txt??"] {
            assert_eq!(level_of(v, "x", 1), Some(1), "{v}");
        }
        for (name, v) in [("_CONF[path]", "https://foo.bar"), ("mosConfig_absolute_path", "http://evil.example/")] {
            assert_eq!(level_of(v, name, 1), Some(1), "{name}={v}");
        }
        // An ordinary query, an ordinary parameter, a question.
        for v in [
            "https://foo.bar?foo=bar",
            "https://foo.bar",
            "http status codes?",
            "https://example.com/search?q=what?",
            "https is it?",
        ] {
            assert_eq!(level_of(v, "x", 1), None, "{v}");
        }
        assert_eq!(level_of("https://foo.bar", "path", 1), None);
    }

    #[test]
    fn schemeless_local_hosts_with_a_path_are_refused() {
        for v in [
            "localhost/",
            "localhost.localdomain/",
            "localhost4/",
            "ipv6-localhost/",
            "ip6-loopback/",
            "host.docker.internal/",
            "kubernetes.default.svc.cluster.local/",
            "LOCALHOST/",
            "lvh.me/",
            "169.254.169.254/latest/user-data",
            "127.0.0.1/admin",
        ] {
            assert_eq!(level_of(v, "url", 1), Some(1), "{v}");
        }
    }

    #[test]
    fn ordinary_values_pass() {
        for v in [
            "https://api.example.com/v1/orders",
            "https://example.com/callback?state=abc",
            "http://intranet/",
            "example.com/",
            "mylocalhost",
            "localhost",
            "localhost:5432",
            // Images on a local registry (tester u1), and a Windows path.
            "localhost:5000/myapp:latest",
            "127.0.0.1:5000/app:dev",
            "localhost:5000/team/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "D:\\0\\backup\\db.bak",
            "10.0.0.0/8",
            "127.0.0.0/8",
            "192.168.0.0/16",
            "0/1",
            "100/minute",
            "1.2/3",
            "3.14159",
            "http:0xABCDEF",
            "v1.2.3",
            "2852039166",
            "0x41414141A9FEA9FE",
            "169.16689662",
            "[0:0:0:0:0:ffff:a9fe:a9fe]",
            "[::ffff:a9fe:a9fe]",
            "169.254.169.254",
            "mailto:root@localhost",
            "urn:isbn:0451450523",
            "tel:+1-201-555-0123",
            "note: 127.0.0.1 is the loopback",
            "data:image/png;base64,iVBORw0KGgo=",
            "see http://localhost:3000/ for the dev server",
            "https://user@example.com/",
            "ssh://git@github.com/org/repo.git",
            "s3://bucket/key",
            "12:30:45",
            "fe80::1",
            "::1",
            "http://0800-flowers.example/",
            "http://1password.example/",
        ] {
            assert_eq!(level_of(v, "q", 1), None, "{v}");
        }
    }

    #[test]
    fn oauth_native_apps_redirect_to_the_loopback_but_never_to_metadata() {
        for v in ["http://127.0.0.1:53682/", "http://[::1]:8080/callback", "http://localhost:8400/oauth2callback"] {
            assert_eq!(level_of(v, "redirect_uri", 2), None, "{v}");
            assert_eq!(level_of(v, "post_logout_redirect_uri", 2), None, "{v}");
            assert_eq!(level_of(v, "callback_url", 1), Some(1), "{v}");
        }
        assert_eq!(level_of("http://169.254.169.254/latest", "redirect_uri", 1), Some(1));
        assert_eq!(level_of("http://10.1.2.3/", "redirect_uri", 2), Some(2));
    }

    #[test]
    fn urls_inside_a_value_from_paranoia_two() {
        let prose = "see http://localhost:3000/ for the dev server";
        assert_eq!(level_of(prose, "q", 2), Some(2));
        let json = r#"{"hook":"http://169.254.169.254/latest"}"#;
        assert_eq!(level_of(json, "q", 1), None);
        assert_eq!(level_of(json, "q", 2), Some(2));
        // Orange Tsai's parser confusion: the host a fetcher reaches hides after a fragment.
        // At 1 too, since a host after a later `@` is read (tester v1): 127/8 is the loopback.
        let confused = "http://google.com:80 &@google.com:80# @127.88.23.245:22/";
        assert_eq!(level_of(confused, "q", 1), Some(1));
        let confused = "http://google.com:80 &@google.com:80# @10.88.23.245:22/";
        assert_eq!((level_of(confused, "q", 1), level_of(confused, "q", 2)), (None, Some(2)));
        assert_eq!(level_of("read https://docs.example.com/ and mail me@example.com", "q", 2), None);
    }

    /// Values made of what the parsing turns on, in random order: every verdict is a span of the
    /// value it was asked about (and no slice is out of bounds).
    #[test]
    fn random_url_like_values_get_spans_inside_them() {
        const PARTS: [&str; 24] = [
            "http:",
            "//",
            "/",
            "\\",
            "@",
            ":",
            "?",
            "#",
            "<",
            ">",
            "URL:",
            "[",
            "]",
            "::1",
            "127.0.0.1",
            "localhost",
            "169.254.169.254",
            ".nip.io",
            "-",
            "0x7f",
            " ",
            "\t",
            "ſ",
            "jar:",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let mut v = String::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            for k in 0..(seed % 12) {
                v.push_str(PARTS[((seed >> (k * 5)) % PARTS.len() as u64) as usize]);
            }
            let bytes = v.as_bytes();
            for level in [1, 4] {
                if let Some(hit) = check(bytes, Shape::of(bytes), b"q", level) {
                    assert!(hit.start <= hit.end && hit.end <= bytes.len(), "{v:?}: {hit:?}");
                }
            }
        }
    }

    #[test]
    fn inet_aton_reads_every_radix_and_part_count() {
        let a = |s: &str| inet_aton(s.as_bytes()).map(|(a, n)| (a.to_string(), n));
        assert_eq!(a("127.0.0.1"), Some(("127.0.0.1".into(), 4)));
        assert_eq!(a("127.1"), Some(("127.0.0.1".into(), 2)));
        assert_eq!(a("2130706433"), Some(("127.0.0.1".into(), 1)));
        assert_eq!(a("0x7f.0x0.0x0.0x1"), Some(("127.0.0.1".into(), 4)));
        assert_eq!(a("0177.0.0.01"), Some(("127.0.0.1".into(), 4)));
        assert_eq!(a("169.254.43518"), Some(("169.254.169.254".into(), 3)));
        assert_eq!(a("169.16689662"), Some(("169.254.169.254".into(), 2)));
        // Past 32 bits: still an address (some parsers wrap it), whatever it wraps to.
        assert_eq!(a("7147006462").map(|(_, n)| n), Some(1));
        assert_eq!(a("0x41414141A9FEA9FE").map(|(_, n)| n), Some(1));
        assert_eq!(a("08.1.1.1"), None);
        assert_eq!(a("1.2.3.4.5"), None);
        assert_eq!(a("example.com"), None);
        assert_eq!(a("1.2.3.x"), None);
    }

    /// Values made of what the detector parses, 64 KiB each: every scan is linear (the
    /// benchmark times them); here, each verdict.
    #[test]
    fn hostile_values_are_read_to_a_verdict() {
        for (unit, refused) in [
            ("://@", false),
            ("http://a@", false),
            ("@", false),
            ("://[", true),
            ("localhost/", true),
            ("http://\t", false),
            ("/", false),
            ("http://a.nip.io-1-1-1-", false),
        ] {
            let v = unit.repeat(64 * 1024 / unit.len());
            let found = check(v.as_bytes(), Shape::of(v.as_bytes()), b"q", 4);
            assert_eq!(found.is_some(), refused, "{unit}: {found:?}");
        }
    }
}

//! Server-side request forgery and remote file inclusion: a value that names a place for the
//! server to fetch from, or to include, that no outside caller has business naming. Cloud
//! metadata services (`169.254.169.254`, `metadata.google.internal`), the loopback interface and
//! its names (`localhost`, `[::1]`, `host.docker.internal`, the Kubernetes API's
//! `kubernetes.default.svc`), private addresses, any address written as a literal in an `http`,
//! `ftp` or `file` URL (what a fetcher is pointed at to skip DNS, and what remote inclusion
//! loads from), in every spelling URL parsers accept (`http://0x7f.1/`, `http://2130706433/`,
//! `http://[::ffff:127.0.0.1]`, `http://①②⑦.⓪.⓪.①`, `http:127.0.0.1`), and the schemes only
//! request forgery uses (`gopher://`, `dict://`). The OWASP Core Rule Set's rules 931 and
//! 934110-934190 read the same.
//!
//! At paranoia 1 a value is judged when it *is* a URL (or a scheme-less local address followed
//! by a path): what a fetcher or an `include` is handed; from 2, every URL inside a value (prose,
//! a JSON document in a parameter) and every `@` that hands a URL parser a second host.
//! A number, a CIDR range (`10.0.0.0/8`), `localhost` alone (a database form's host field) and
//! a host name with a path are text. The redirect URI of OAuth's native apps (RFC 8252 section
//! 7.3: `redirect_uri=http://127.0.0.1:53682/`) is a browser's redirect, never a fetch: the
//! loopback is allowed there, a metadata address is not.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::decode::{ends_with_ci, find_bytes, Hit, Shape};

/// `name`: the value's parameter name (empty when it has none).
pub(crate) fn check(v: &[u8], shape: Shape, name: &[u8], level: u8) -> Option<Hit> {
    // Every form read here holds a `:` (a scheme, a port, IPv6), a `/` (a path) or a `?`.
    if !shape.has(const { Shape::mask(b":/?") }) {
        return None;
    }
    let start = v.iter().position(|&b| b > b' ').unwrap_or(v.len());
    let oauth_redirect = ends_with_ci(name, b"redirect_uri");
    if let Some(hit) = whole_value(v, start, name, oauth_redirect) {
        return Some(hit);
    }
    if level >= 2 {
        return inside(v, start, oauth_redirect);
    }
    None
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
        if let Some(hit) = whole_value(v, at + 1, b"", false) {
            return Some(Hit { level: 2, ..hit });
        }
    }
    None
}

/// What a URL's host is, for request forgery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The machine itself: `localhost` and its kin, `127/8`, `::1`, `0.0.0.0`.
    Loopback,
    /// Cloud metadata services, link-local addresses, and the names of the container host and
    /// the Kubernetes API.
    Internal,
    /// RFC 1918, carrier-grade NAT and unique-local addresses.
    Private,
    /// Any other address written as a literal.
    PublicAddress,
}

/// How a host names its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Judged {
    target: Target,
    /// An address written as a literal (in any radix), not a name.
    literal: bool,
}

/// Schemes whose URL a server fetches or includes: a literal address in one is flagged whatever
/// its range.
const FETCHED: [&[u8]; 16] = [
    b"http", b"https", b"ftp", b"ftps", b"file", b"gopher", b"dict", b"ldap", b"ldaps", b"tftp", b"sftp", b"smb",
    b"ws", b"wss", b"jar", b"netdoc",
];

/// Schemes no client hands an API except to make its server speak another protocol to a host
/// of the attacker's choosing (Redis and memcached through `gopher://`, `dict://`).
const FORGERY_ONLY: [&[u8]; 3] = [b"gopher", b"dict", b"netdoc"];

/// The schemes remote file inclusion loads from (CRS 931).
const INCLUDED: [&[u8]; 5] = [b"http", b"https", b"ftp", b"ftps", b"file"];

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

/// The value read whole, from its first byte that is not blank.
fn whole_value(v: &[u8], start: usize, name: &[u8], oauth_redirect: bool) -> Option<Hit> {
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
    // `http?`, `https://host?`: a question mark that ends the URL cuts off whatever an
    // `include` appends (`.php`), as remote inclusion's payloads do (CRS 931120).
    if one_of(scheme, &INCLUDED) && dangling_question_mark(&v[after..]) {
        return Some(Hit::new(1, start, v.len()));
    }
    let slashes = v[after..].iter().take(8).take_while(|&&b| b == b'/' || b == b'\\').count();
    let fetched = one_of(scheme, &FETCHED);
    if slashes == 0 && !fetched {
        // `mailto:`, `urn:`, `tel:` and prose (`note: 127.0.0.1 is fine`) name no fetch;
        // `localhost:8080/admin` is a host and its port.
        return schemeless(v, start, oauth_redirect);
    }
    let authority_at = after + slashes;
    let authority_end = authority_end(v, authority_at);
    let authority = &v[authority_at..authority_end];
    let hit = Some(Hit::new(1, start, authority_end.max(after)));
    if slashes >= 2 && one_of(scheme, &INCLUDED) && one_of(name, &INCLUDE_PARAMETERS) {
        return hit;
    }
    if slashes >= 2 && one_of(scheme, &FORGERY_ONLY) && !authority.is_empty() {
        return hit;
    }
    let judged = judge_authority(authority)?;
    if oauth_redirect && judged.target == Target::Loopback {
        return None;
    }
    let flagged = match judged.target {
        Target::Loopback | Target::Internal | Target::Private => true,
        // `http:0xABCDEF` without slashes is a malformed URL more often than a fetch.
        Target::PublicAddress => fetched && slashes > 0,
    };
    if flagged {
        return hit;
    }
    // A public address in a scheme of no fetcher's (`rsync://`, `xri://`): CRS reads it at 2.
    None
}

/// The length of a URL scheme at the start of `v` followed by `:` (RFC 3986: a letter, then
/// letters, digits, `+`, `-`, `.`), if there is one.
fn scheme_at(v: &[u8]) -> Option<usize> {
    if !v.first()?.is_ascii_alphabetic() {
        return None;
    }
    let len = v.iter().take(33).position(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')))?;
    (v.get(len) == Some(&b':')).then_some(len)
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

/// Where a URL's authority ends: at a path, query or fragment, a blank, a quote or a bracket
/// of markup; read at most 255 bytes (no host name is longer).
fn authority_end(v: &[u8], from: usize) -> usize {
    let limit = (from + 255).min(v.len());
    v[from..limit]
        .iter()
        .position(|&b| b <= b' ' || matches!(b, b'/' | b'\\' | b'?' | b'#' | b'"' | b'\'' | b'<' | b'>' | b'`'))
        .map_or(limit, |p| from + p)
}

/// The most dangerous host an authority names: URL parsers disagree on which `@` ends the user
/// information (`http://127.0.0.1:80@evil.example/` reaches the loopback through some), so the
/// text before the first and after the last are both read.
fn judge_authority(authority: &[u8]) -> Option<Judged> {
    let after_last = authority.iter().rposition(|&b| b == b'@').map_or(authority, |at| &authority[at + 1..]);
    let judged = judge_host_port(after_last);
    if after_last.len() == authority.len() {
        return judged;
    }
    let before_first = &authority[..authority.iter().position(|&b| b == b'@').unwrap_or(0)];
    worse(judged, judge_host_port(before_first))
}

fn worse(a: Option<Judged>, b: Option<Judged>) -> Option<Judged> {
    let rank = |j: &Option<Judged>| match j.map(|j| j.target) {
        None => 0,
        Some(Target::PublicAddress) => 1,
        Some(Target::Private) => 2,
        Some(Target::Internal) => 3,
        Some(Target::Loopback) => 4,
    };
    if rank(&b) > rank(&a) {
        b
    } else {
        a
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
        // AWS's metadata service on IPv6, inside the unique-local range.
        0xfd00 if s[1] == 0x0ec2 => Target::Internal,
        x if x & 0xffc0 == 0xfe80 => Target::Internal,
        x if x & 0xfe00 == 0xfc00 => Target::Private,
        _ => Target::PublicAddress,
    }
}

fn ipv4_target(a: Ipv4Addr) -> Target {
    let [a0, a1, a2, a3] = a.octets();
    match (a0, a1) {
        (127, _) => Target::Loopback,
        // `0.0.0.0` reaches the loopback on Linux; the rest of `0/8` reaches nothing.
        (0, 0) if a2 == 0 && a3 == 0 => Target::Loopback,
        (169, 254) => Target::Internal,
        // Alibaba Cloud's and Oracle Cloud's metadata services.
        (100, 100) if a2 == 100 && a3 == 200 => Target::Internal,
        (192, 0) if a2 == 0 && a3 == 192 => Target::Internal,
        (10, _) | (192, 168) => Target::Private,
        (172, b) if (16..32).contains(&b) => Target::Private,
        (100, b) if (64..128).contains(&b) => Target::Private,
        _ => Target::PublicAddress,
    }
}

/// Names that reach the machine itself.
const LOOPBACK_NAMES: [&[u8]; 12] = [
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
];

/// Names of metadata services, the container host and the Kubernetes API.
const INTERNAL_NAMES: [&[u8]; 16] = [
    b"metadata",
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
/// `169-254-169-254.sslip.io`).
const ADDRESS_DOMAINS: [&[u8]; 4] = [b".nip.io", b".sslip.io", b".xip.io", b".traefik.me"];

/// A host name or an IPv4 address in any spelling `inet_aton` reads. `schemeless`: only names
/// and addresses of four parts count (`0/1` and `100/minute` are no addresses).
fn judge_host(raw: &[u8], schemeless: bool) -> Option<Judged> {
    let mut buf = [0u8; 255];
    let host = fold_host(raw, &mut buf)?;
    if host.is_empty() {
        return None;
    }
    if let Some((address, parts)) = inet_aton(host) {
        if schemeless && parts != 4 {
            return None;
        }
        return Some(Judged { target: ipv4_target(address), literal: true });
    }
    let name = |target| Some(Judged { target, literal: false });
    if one_of(host, &LOOPBACK_NAMES)
        || ends_with_ci(host, b".localhost")
        || ends_with_ci(host, b".localtest.me")
        || ends_with_ci(host, b".lvh.me")
    {
        return name(Target::Loopback);
    }
    if one_of(host, &INTERNAL_NAMES) {
        return name(Target::Internal);
    }
    let domain = ADDRESS_DOMAINS.iter().find(|d| ends_with_ci(host, d))?;
    let spelled = &host[..host.len() - domain.len()];
    // The address is the last four labels, or one label with dashes: `app.10.0.0.1.nip.io`.
    let dotted_at = spelled.iter().enumerate().filter(|(_, &b)| b == b'.').map(|(i, _)| i).rev().nth(3);
    let dotted = dotted_at.map_or(spelled, |at| &spelled[at + 1..]);
    let dashed_label = &spelled[spelled.iter().rposition(|&b| b == b'.').map_or(0, |p| p + 1)..];
    let mut dashed = [0u8; 64];
    let dashed = (dashed_label.len() <= 64).then(|| {
        let d = &mut dashed[..dashed_label.len()];
        for (o, &b) in d.iter_mut().zip(dashed_label) {
            *o = if b == b'-' { b'.' } else { b };
        }
        &*d
    });
    let target = [Some(dotted), dashed]
        .into_iter()
        .flatten()
        .filter_map(|s| inet_aton(s).filter(|&(_, parts)| parts == 4))
        .map(|(address, _)| ipv4_target(address))
        .find(|&t| t != Target::PublicAddress)?;
    Some(Judged { target, literal: false })
}

/// The host lower-cased into `buf`, with the forms IDNA maps to ASCII read as it reads them
/// (enclosed alphanumerics `①②⑦` and `ⓛⓞⓒⓐⓛ`, fullwidth letters and digits, the ideographic
/// full stops `。` `．` `｡`) and a final dot dropped. `None` for a host longer than any name.
fn fold_host<'b>(raw: &[u8], buf: &'b mut [u8; 255]) -> Option<&'b [u8]> {
    let mut len = 0;
    let mut push = |b: u8, len: &mut usize| -> Option<()> {
        *buf.get_mut(*len)? = b;
        *len += 1;
        Some(())
    };
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b.is_ascii() {
            push(b.to_ascii_lowercase(), &mut len)?;
            i += 1;
            continue;
        }
        let width = match b {
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            _ => 1,
        };
        let c = raw.get(i..i + width).and_then(|s| std::str::from_utf8(s).ok()).and_then(|s| s.chars().next());
        i += width;
        let Some(c) = c else {
            push(0xff, &mut len)?;
            continue;
        };
        let cp = c as u32;
        match cp {
            // ① to ⑳.
            0x2460..=0x2473 => {
                let n = cp - 0x2460 + 1;
                if n >= 10 {
                    push(b'0' + (n / 10) as u8, &mut len)?;
                }
                push(b'0' + (n % 10) as u8, &mut len)?;
            }
            0x24ea => push(b'0', &mut len)?,
            0x24b6..=0x24cf => push(b'a' + (cp - 0x24b6) as u8, &mut len)?,
            0x24d0..=0x24e9 => push(b'a' + (cp - 0x24d0) as u8, &mut len)?,
            0xff10..=0xff19 => push(b'0' + (cp - 0xff10) as u8, &mut len)?,
            0xff21..=0xff3a => push(b'a' + (cp - 0xff21) as u8, &mut len)?,
            0xff41..=0xff5a => push(b'a' + (cp - 0xff41) as u8, &mut len)?,
            0x3002 | 0xff0e | 0xff61 => push(b'.', &mut len)?,
            _ => push(0xff, &mut len)?,
        }
    }
    let mut host = &buf[..len];
    if let Some(stripped) = host.strip_suffix(b".") {
        host = stripped;
    }
    Some(host)
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
/// (`localhost/`, `169.254.169.254/latest/meta-data`): libraries that add `http://` fetch it
/// (CRS 934190). The path must not open with a digit: `127.0.0.0/8` is a CIDR range.
fn schemeless(v: &[u8], start: usize, oauth_redirect: bool) -> Option<Hit> {
    let end = authority_end(v, start);
    if v.get(end) != Some(&b'/') || v.get(end + 1).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let authority = &v[start..end];
    let host = &authority[..authority.iter().position(|&b| b == b':').unwrap_or(authority.len())];
    let port = &authority[host.len()..];
    if !(port.is_empty() || (port.len() > 1 && port[1..].iter().all(u8::is_ascii_digit))) {
        return None;
    }
    let judged = judge_host(host, true)?;
    let local = matches!(judged.target, Target::Loopback | Target::Internal);
    (local && !(oauth_redirect && judged.target == Target::Loopback)).then(|| Hit::new(1, start, end + 1))
}

/// From paranoia 2: every URL inside a value, and every `@` that hands a parser a second host
/// (`http://google.com:80 &@127.88.23.245:22/`), at most 16 of each.
fn inside(v: &[u8], start: usize, oauth_redirect: bool) -> Option<Hit> {
    let mut from = start;
    let mut seen = 0;
    while let Some(at) = find_bytes(v, b"://", from) {
        from = at + 3;
        seen += 1;
        if seen > 16 {
            break;
        }
        let end = authority_end(v, at + 3);
        let judged = judge_authority(&v[at + 3..end]);
        let flagged = judged.is_some_and(|j| j.literal || j.target != Target::PublicAddress);
        if flagged && !(oauth_redirect && judged.is_some_and(|j| j.target == Target::Loopback)) {
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
        let end = authority_end(v, at + 1);
        if judge_host_port(&v[at + 1..end]).is_some_and(|j| j.literal || j.target != Target::PublicAddress) {
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
            "http://10.0.0.5:8500/v1/agent/self",
            "http://192.168.1.1/",
            "http://172.16.0.1/",
        ] {
            assert_eq!(level_of(v, "url", 1), Some(1), "{v}");
        }
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
        ] {
            assert_eq!(level_of(v, "src", 1), Some(1), "{v}");
        }
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
            "localhost:8080/admin",
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
        assert_eq!(level_of("http://10.1.2.3/", "redirect_uri", 1), Some(1));
    }

    #[test]
    fn urls_inside_a_value_from_paranoia_two() {
        let prose = "see http://localhost:3000/ for the dev server";
        assert_eq!(level_of(prose, "q", 2), Some(2));
        let json = r#"{"hook":"http://169.254.169.254/latest"}"#;
        assert_eq!(level_of(json, "q", 1), None);
        assert_eq!(level_of(json, "q", 2), Some(2));
        // Orange Tsai's parser confusion: the host a fetcher reaches hides after a fragment.
        let confused = "http://google.com:80 &@google.com:80# @127.88.23.245:22/";
        assert_eq!(level_of(confused, "q", 2), Some(2));
        assert_eq!(level_of("read https://docs.example.com/ and mail me@example.com", "q", 2), None);
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

    #[test]
    fn hostile_values_cost_linear_time() {
        for unit in ["://@", "http://a@", "@", "://[", "localhost/"] {
            let v = unit.repeat(64 * 1024 / unit.len());
            let _ = check(v.as_bytes(), Shape::of(v.as_bytes()), b"q", 4);
        }
    }
}

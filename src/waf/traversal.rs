//! Path traversal and local file inclusion: climbing out of a directory (`../`, `..\`, `.../`,
//! `..;/`), and naming the files and directories an attacker reads once out (system files,
//! secrets, version-control and tool directories, backups and dumps), in parameters and in the
//! path itself.

use super::decode::{find_ci, find_either, find_in, first_byte_ranges, is_word, starts_with_ci, Hit, Shape};

pub(crate) fn value(v: &[u8], shape: Shape, level: u8) -> Option<Hit> {
    if shape.has(const { Shape::mask(b"./\\") }) {
        if let Some(hit) = climbs(v, level).or_else(|| sensitive_target(v, level)) {
            return Some(hit);
        }
    }
    if shape.has(const { Shape::mask(b":") }) {
        if let Some(hit) = stream_wrapper(v, level).or_else(|| ntfs_stream(v)) {
            return Some(hit);
        }
    }
    if shape.has(const { Shape::mask(b"\\") }) {
        if let Some(hit) = unc_path(v, level) {
            return Some(hit);
        }
    }
    if shape.digit() {
        return hex_spelled(v, level);
    }
    None
}

/// The stream wrappers PHP's `include`, `file_get_contents` and `fopen` open besides files
/// (`php://filter/convert.base64-encode/resource=index.php` reads a script's source,
/// `expect://id` runs a command, `phar://` and `zip://archive#entry` reach into an uploaded
/// archive), where a scheme starts: a URL's scheme is `http`, never one of these (outside tester
/// o1 passed each in every location). A data URL (`data://` and PHP's `data:` alike) counts when
/// what it holds is PHP (`<?`, plain or in its base64), at paranoia 1; a `data://` holding
/// anything else from 2 (CRS's own test sends `data://text/plain;base64,SSBsb3ZlIFBIUAo=` as
/// benign), and an ordinary `data:` image never. fsspec's `zip://entry::s3://...` names no
/// `#`, and is no PHP archive path.
fn stream_wrapper(v: &[u8], level: u8) -> Option<Hit> {
    const WRAPPERS: &[&[u8]] = &[
        b"php",
        b"phar",
        b"expect",
        b"glob",
        b"compress.zlib",
        b"compress.bzip2",
        b"zlib",
        b"bzip2",
        b"rar",
        b"ogg",
        b"ssh2.shell",
        b"ssh2.exec",
        b"ssh2.sftp",
    ];
    // Each data URL's payload is read up to a bound: a value of many is read for its first few.
    let mut data_urls = 0;
    let mut from = 0;
    while let Some(colon) = find_either(v, from, b':', b':') {
        from = colon + 1;
        let start = v[..colon].iter().rposition(|&b| !(b.is_ascii_alphanumeric() || b == b'.')).map_or(0, |p| p + 1);
        let scheme = &v[start..colon];
        let slashes = v[colon..].starts_with(b"://");
        let hit = |lvl: u8| (lvl <= level).then(|| Hit::new(lvl, start, (colon + 24).min(v.len())));
        if scheme.eq_ignore_ascii_case(b"data") {
            data_urls += 1;
            if data_urls > 4 {
                continue;
            }
            let php = data_holds_php(&v[colon + 1..]);
            let found = match (php, slashes) {
                (true, _) => hit(1),
                (false, true) => hit(2),
                (false, false) => None,
            };
            if found.is_some() {
                return found;
            }
            continue;
        }
        if !slashes {
            continue;
        }
        let archive_entry = scheme.eq_ignore_ascii_case(b"zip")
            && v[colon..].iter().take(1024).take_while(|b| !b.is_ascii_whitespace()).any(|&b| b == b'#');
        if archive_entry || WRAPPERS.iter().any(|w| scheme.eq_ignore_ascii_case(w)) {
            if let Some(found) = hit(1) {
                return Some(found);
            }
        }
    }
    None
}

/// Whether a data URL's text (after `data:`) holds PHP: `<?` in its payload, decoded from base64
/// when it says so, as PHP decodes it (skipping what is not base64: a `#`, a blank, a tab;
/// tester p1); read to a quote, at most 4 KiB of it.
fn data_holds_php(url: &[u8]) -> bool {
    let end = url.iter().take(4096).position(|b| matches!(b, b'"' | b'\'')).unwrap_or(url.len().min(4096));
    let url = &url[..end];
    let Some(comma) = url.iter().position(|&b| b == b',') else { return false };
    let (head, payload) = (&url[..comma], &url[comma + 1..]);
    if find_ci(head, b";base64", 0).is_none() {
        return php_open_tag(payload);
    }
    let alphabet: Vec<u8> =
        payload.iter().copied().filter(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')).collect();
    let mut decoded = Vec::with_capacity(alphabet.len() / 4 * 3);
    for group in alphabet.chunks_exact(4) {
        if super::grpc::decode_group([group[0], group[1], group[2], group[3]], &mut decoded).is_err() {
            break;
        }
    }
    php_open_tag(&decoded)
}

/// PHP's opening tag: `<?php`, `<?=`, or `<?` and a blank (not XML's `<?xml`).
fn php_open_tag(text: &[u8]) -> bool {
    let mut from = 0;
    while let Some(at) = find_ci(text, b"<?", from) {
        from = at + 2;
        let after = &text[at + 2..];
        if starts_with_ci(after, b"php") || after.first().is_none_or(|&b| b == b'=' || b.is_ascii_whitespace()) {
            return true;
        }
    }
    false
}

/// `index.php::$DATA`: NTFS's default stream of a file, which IIS served as the script's source.
/// A file name with an extension before it, and no word after it: PHP's `self::$data` and
/// `Model::$database` are code.
fn ntfs_stream(v: &[u8]) -> Option<Hit> {
    let mut from = 0;
    while let Some(at) = find_ci(v, b"::$data", from) {
        from = at + 1;
        let after_word = v.get(at + 7).is_some_and(|&b| is_word(b));
        let name_start = v[..at].iter().rposition(|&b| !(is_word(b) || matches!(b, b'.' | b'-'))).map_or(0, |p| p + 1);
        let name = &v[name_start..at];
        let extension = name.iter().rposition(|&b| b == b'.').is_some_and(|dot| dot > 0 && dot + 1 < name.len());
        if !after_word && extension {
            return Some(Hit::new(1, name_start, (at + 7).min(v.len())));
        }
    }
    None
}

/// A Windows UNC path where a value starts: a device path (`\\.\`, `\\?\GLOBALROOT`) at
/// paranoia 1; a share on another host (`\\evil.example\share\x.php`: a remote include, and
/// the server's NTLM hash sent to that host) at 2, as IT tools name file shares so too.
fn unc_path(v: &[u8], level: u8) -> Option<Hit> {
    let lead = v.trim_ascii_start();
    let rest = lead.strip_prefix(b"\\\\")?;
    let start = v.len() - lead.len();
    let device = rest.starts_with(b".\\") || rest.starts_with(b"?\\");
    let host_end = rest.iter().position(|&b| b == b'\\')?;
    let host = &rest[..host_end];
    let share = !host.is_empty() && host.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    let lvl = match (device, share) {
        (true, _) => 1,
        (false, true) => 2,
        (false, false) => return None,
    };
    (lvl <= level).then(|| Hit::new(lvl, start, (start + 2 + host_end + 16).min(v.len())))
}

/// `0x2e0x2e0x2f`: dots and slashes written as hex literals, which some applications decode.
fn hex_spelled(v: &[u8], level: u8) -> Option<Hit> {
    // A `0x2e` somewhere: `x` is rarer than `0`, so look for `x2e` and the `0` before it.
    let mut from = 1;
    loop {
        let at = find_ci(v, b"x2e", from)?;
        if v[at - 1] == b'0' {
            break;
        }
        from = at + 1;
    }
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'0' && v.get(i + 1).is_some_and(|b| b.eq_ignore_ascii_case(&b'x')) {
            let lit = v.get(i + 2..i + 4).map(|h| h.to_ascii_lowercase());
            let ch = match lit.as_deref() {
                Some(b"2e") => Some(b'.'),
                Some(b"2f") => Some(b'/'),
                Some(b"5c") => Some(b'\\'),
                _ => None,
            };
            if let Some(ch) = ch {
                out.push(ch);
                i += 4;
                continue;
            }
        }
        out.push(v[i]);
        i += 1;
    }
    climbs(&out, level).map(|h| Hit::new(h.level, 0, v.len().min(32)))
}

/// The normalised path: `..` segments are already resolved (or refused) by the normaliser, so
/// what is left is hidden files and directories, and the same targets as in a parameter.
pub(crate) fn path(p: &[u8], level: u8) -> Option<Hit> {
    let mut start = 0;
    for seg in p.split(|&b| b == b'/') {
        let end = start + seg.len();
        // Dot-segments: hidden files and directories are never a public resource, except the
        // registered `.well-known` prefix (RFC 8615).
        if seg.len() > 1 && seg[0] == b'.' && seg != b".." && !seg.eq_ignore_ascii_case(b".well-known") {
            return Some(Hit::new(1, start, end));
        }
        if seg.contains(&b'\\') || (seg.len() >= 2 && seg.iter().all(|&b| b == b'.')) {
            return Some(Hit::new(1, start, end));
        }
        start = end + 1;
    }
    if let Some(last) = p.rsplit(|&b| b == b'/').next() {
        if restricted_extension(last) {
            return Some(Hit::new(1, p.len() - last.len(), p.len()));
        }
    }
    value(p, Shape::of(p), level)
}

/// The name of an uploaded file: a traversal, or the name of a configuration file the server
/// would run or obey (`.htaccess`, `web.config`, `wp-config.php`, `settings.php`).
pub(crate) fn upload_name(v: &[u8], level: u8) -> Option<Hit> {
    if let Some(h) = value(v, Shape::of(v), level) {
        return Some(h);
    }
    let base = super::decode::upload_base_name(v);
    let base = &base[..];
    const NAMES: &[&[u8]] = &[
        b".htaccess",
        b".htpasswd",
        b"web.config",
        b".user.ini",
        b"php.ini",
        b".env",
        b".boto",
        b".bashrc",
        b".profile",
        b"settings.php",
        b"config.php",
        b"configuration.php",
        b"localsettings.php",
        b"config.yml",
        b"config.yaml",
        b"settings.py",
        b"application.yml",
        b"application.properties",
        b"app.config",
        b"authorized_keys",
    ];
    let hit = NAMES.contains(&base) || base.starts_with(b"wp-config");
    hit.then(|| Hit::new(1, 0, v.len().min(64)))
}

/// A traversal step: two or more dots, then a separator (or the end), where the dots start a
/// segment. `.../` and `..;/` (Tomcat) count too.
fn climbs(v: &[u8], level: u8) -> Option<Hit> {
    let mut i = 0;
    let mut steps = 0;
    let mut first: Option<usize> = None;
    let mut at_start = false;
    while i + 1 < v.len() {
        // Straight to the next dot.
        match find_either(v, i, b'.', b'.') {
            Some(dot) => i = dot,
            None => break,
        }
        if i + 1 >= v.len() {
            break;
        }
        if v[i] == b'.'
            && v[i + 1] == b'.'
            && (i == 0
                || matches!(
                    v[i - 1],
                    b'/' | b'\\' | b'=' | b' ' | b'"' | b'\'' | b';' | b':' | b'|' | b'>' | b'(' | b'['
                ))
        {
            let mut j = i;
            while j < v.len() && v[j] == b'.' {
                j += 1;
            }
            // `;` separates path parameters in Tomcat and Jetty: `..;/` climbs there.
            if j == v.len() || matches!(v[j], b'/' | b'\\' | b';') {
                steps += 1;
                first.get_or_insert(i);
                if i == 0 || (i == 1 && matches!(v[0], b'/' | b'\\')) {
                    at_start = true;
                }
                i = j;
                continue;
            }
            i = j;
            continue;
        }
        i += 1;
    }
    let first = first?;
    // One step in running text (a relative link in markdown) is common; two, or one opening the
    // value (the usual file parameter), is an attack.
    let level_needed = if steps >= 2 || at_start { 1 } else { 2 };
    (level_needed <= level).then(|| Hit::new(level_needed, first, (first + 32).min(v.len())))
}

/// Files and directories read after a traversal, or named outright by absolute path (Unix
/// system files and pseudo-filesystems, Windows system files, secrets and tool directories in a
/// home or project); sorted, so the entries for one first byte are found by binary search.
/// Each entry is matched as a path component: preceded by a separator or the start (or, for
/// entries beginning with a dot, anything that cannot make it part of a longer name), and
/// followed by the end or a non-name character.
const TARGETS: &[&[u8]] = &[
    b".aws",
    b".azure",
    b".bash_history",
    b".bashrc",
    b".bzr",
    b".docker",
    b".env",
    b".gcloud",
    b".git",
    b".gnupg",
    b".hg",
    b".history",
    b".htaccess",
    b".htpasswd",
    b".kube",
    b".my.cnf",
    b".mysql_history",
    b".netrc",
    b".npmrc",
    b".pgpass",
    b".profile",
    b".psql_history",
    b".pypirc",
    b".ssh",
    b".svn",
    b".zsh_history",
    b"@fs/",
    b"@id/",
    b"authorized_keys",
    b"autoexec.bat",
    b"boot.ini",
    b"dev/tcp/",
    b"dev/udp/",
    b"etc/apache2/",
    b"etc/crontab",
    b"etc/debian_version",
    b"etc/environment",
    b"etc/fstab",
    b"etc/group",
    b"etc/gshadow",
    b"etc/hostname",
    b"etc/hosts",
    b"etc/httpd/",
    b"etc/init.d/",
    b"etc/issue",
    b"etc/lsb-release",
    b"etc/motd",
    b"etc/mtab",
    b"etc/mysql/",
    b"etc/nginx/",
    b"etc/os-release",
    b"etc/pam.d/",
    b"etc/passwd",
    b"etc/profile",
    b"etc/redhat-release",
    b"etc/resolv.conf",
    b"etc/security/",
    b"etc/shadow",
    b"etc/ssh/",
    b"etc/subgid",
    b"etc/subuid",
    b"etc/sudoers",
    b"id_dsa",
    b"id_ecdsa",
    b"id_ed25519",
    b"id_rsa",
    b"inetpub/",
    b"known_hosts",
    b"pagefile.sys",
    b"proc/cpuinfo",
    b"proc/interrupts",
    b"proc/kcore",
    b"proc/meminfo",
    b"proc/mounts",
    b"proc/net/",
    b"proc/sched_debug",
    b"proc/self/",
    b"proc/version",
    b"root/.",
    b"sam",
    b"sys/block/",
    b"sys/class",
    b"sys/class/",
    b"sys/devices/",
    b"sys/firmware/",
    b"sys/kernel/",
    b"sys/module/",
    b"system.ini",
    b"tmp/",
    b"usr/local/apache",
    b"var/lib/mysql/",
    b"var/log/",
    b"var/run/secrets/",
    b"web.config",
    b"win.ini",
    b"windows/repair",
    b"windows/system32",
    b"winnt/system32",
    b"wp-config.php",
];

/// Per first byte, the range of [`TARGETS`] that begin with it.
static TARGETS_BY_FIRST: [(u16, u16); 256] = first_byte_ranges(TARGETS);

/// Bytes next to which a component can start: separators before it, `.` and `@` at it.
static STARTS_NEAR: [bool; 256] = {
    let mut t = [false; 256];
    t[b'/' as usize] = true;
    t[b'\\' as usize] = true;
    t[b'.' as usize] = true;
    t[b'@' as usize] = true;
    t
};

fn sensitive_target(v: &[u8], level: u8) -> Option<Hit> {
    if v.len() < 3 {
        return None;
    }
    // One pass over the places a component can start (the start, after a separator, at a dot
    // or `@`), trying only the targets that begin with that byte; from one such place straight
    // to the next.
    let mut at = 0;
    while at < v.len() {
        if let Some(verdict) = target_at(v, at, level) {
            return verdict;
        }
        at = if STARTS_NEAR[v[at] as usize] {
            at + 1
        } else {
            match find_in(v, at + 1, &STARTS_NEAR) {
                Some(p) => p,
                None => break,
            }
        };
    }
    // Compressed database dumps are fetched, never typed.
    if let Some(at) = find_ci(v, b".sql.", 0) {
        let ext = &v[at + 5..];
        let word_end = ext.iter().position(|&b| !b.is_ascii_alphanumeric()).unwrap_or(ext.len());
        if matches!(
            ext[..word_end].to_ascii_lowercase().as_slice(),
            b"gz" | b"zip" | b"bz2" | b"xz" | b"7z" | b"tar" | b"tgz" | b"zst"
        ) {
            return Some(Hit::new(1, at, at + 5 + word_end));
        }
    }
    None
}

/// The targets of [`sensitive_target`] that start at `at`: `Some` ends the search with its
/// verdict.
#[inline(never)]
fn target_at(v: &[u8], at: usize, level: u8) -> Option<Option<Hit>> {
    let b = v[at].to_ascii_lowercase();
    let before = if at == 0 { None } else { Some(v[at - 1]) };
    let after_separator = before.is_none_or(|c| matches!(c, b'/' | b'\\'));
    if !after_separator && b != b'.' && b != b'@' {
        return None;
    }
    let (from, to) = TARGETS_BY_FIRST[b as usize];
    let second = v.get(at + 1).map(u8::to_ascii_lowercase);
    for t in &TARGETS[from as usize..to as usize] {
        // Every target has at least two bytes; the second rules most out.
        if second != Some(t[1]) || !v[at..].get(..t.len()).is_some_and(|w| w.eq_ignore_ascii_case(t)) {
            continue;
        }
        let dotted = t[0] == b'.' || t[0] == b'@';
        let starts_component = match before {
            None => !dotted || t.len() > 2,
            Some(c) => matches!(c, b'/' | b'\\') || (dotted && !is_word(c) && c != b'.' && c != b'-'),
        };
        if !starts_component {
            continue;
        }
        let end = at + t.len();
        let ends_component = t.ends_with(b"/") || v.get(end).is_none_or(|&c| !(is_word(c) || c == b'-'));
        if !ends_component {
            continue;
        }
        // A bare short name (`sam`, `tmp/`) only counts when it is reached by a path.
        let needs_path = matches!(*t, b"sam" | b"tmp/" | b".profile" | b".history" | b".env" | b"sys/class");
        if needs_path && before.is_none_or(|c| !matches!(c, b'/' | b'\\')) {
            continue;
        }
        if *t == b"tmp/" && v.get(end).is_none_or(|&c| !is_word(c)) {
            continue;
        }
        return Some((1 <= level).then(|| Hit::new(1, at.saturating_sub(1), end.min(v.len()))));
    }
    None
}

/// Extensions of files a web server holds but never serves: backups, logs, configuration,
/// databases, credentials.
fn restricted_extension(last: &[u8]) -> bool {
    let Some(dot) = last.iter().rposition(|&b| b == b'.') else { return false };
    if dot == 0 {
        return false;
    }
    let ext = &last[dot + 1..];
    const EXT: &[&[u8]] = &[
        b"bak",
        b"backup",
        b"old",
        b"orig",
        b"swp",
        b"sql",
        b"log",
        b"ini",
        b"conf",
        b"cfg",
        b"config",
        b"mdb",
        b"pwd",
        b"passwd",
        b"htpasswd",
        b"key",
        b"pem",
        b"p12",
        b"pfx",
        b"dbf",
        b"sqlite",
        b"sqlite3",
        b"tmp",
        b"save",
    ];
    EXT.iter().any(|e| ext.eq_ignore_ascii_case(e)) || last.ends_with(b"~")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_values_and_paths_pass() {
        for s in [
            "report.pdf",
            "see the docs",
            "firstname.dockery@host.tld",
            "test.environment",
            "/tmp",
            "https://example.com/a/b/c.html",
            "v1.2.3",
            "etc.",
            "Sam",
            "wait...",
            "Hello... world",
            "history.history",
            "/api/continue/session",
            "C:\\Users\\Public\\Documents\\report.docx",
            "jquery.history.min.js",
            "[link](../docs/readme.md)",
        ] {
            assert_eq!(value(s.as_bytes(), Shape::of(s.as_bytes()), 1), None, "{s}");
        }
        for p in [
            "/",
            "/api/v1/orders/42",
            "/.well-known/openid-configuration",
            "/jquery.nivo.slider.pack.js",
            "/node_modules/@osd/ui-framework/dist/kui_light.css",
            "/files/report.2024.pdf",
            "/api/sys/status",
        ] {
            assert_eq!(path(p.as_bytes(), 1), None, "{p}");
        }
    }

    #[test]
    fn traversals_and_targets_are_caught_at_paranoia_one() {
        for s in [
            "../../../etc/passwd",
            "..\\..\\windows\\win.ini",
            "../x",
            ".../.../WINDOWS/win.ini",
            "..;/..;/admin",
            "/etc/passwd",
            "/etc/shadow\0",
            "file:///etc/passwd",
            "C:\\boot.ini",
            "/proc/self/environ",
            ".ssh/id_rsa",
            "/path/to/.docker/secrets",
            "backup.sql.zip",
            "../.history",
            ">/tmp/curl",
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
        ] {
            assert!(value(s.as_bytes(), Shape::of(s.as_bytes()), 1).is_some(), "{s}");
        }
        for p in [
            "/.git/config",
            "/.env",
            "/app/.claude/settings.json",
            "/get/sys/class",
            "/get/proc/interrupts",
            "/wp-content/debug.log",
            "/@fs/etc/passwd",
            "/index.php.bak",
        ] {
            assert!(path(p.as_bytes(), 1).is_some(), "{p}");
        }
    }

    /// Outside tester o1: each passed in every location; each is an inclusion PHP or IIS opens.
    #[test]
    fn stream_wrappers_ntfs_streams_and_unc_devices_are_caught() {
        for s in [
            "php://filter/convert.base64-encode/resource=index.php",
            "PHP://filter/read=string.rot13/resource=config.php",
            "php://input",
            "expect://id",
            "phar://uploads/x.jpg/shell",
            "zip://uploads/x.jpg#shell.php",
            "data://text/plain;base64,PD9waHAgc3lzdGVtKCRfR0VUWydjJ10pOyA/Pg==",
            // PHP after other bytes, and PHP's `data:` without slashes (review).
            "data://text/plain;base64,eDw/cGhwIHN5c3RlbSgkX0dFVFsnYyddKTsgPz4=",
            "data:text/plain;base64,PD9waHAgc3lzdGVtKCRfR0VUWydjJ10pOyA/Pg==",
            "data:text/plain,<?php system('id'); ?>",
            // Bytes PHP's base64 decoder skips, spread through the payload (tester p1).
            "data://text/plain;base64,PD9w#aHAgc3lzdGVtKCRfR0VUWydjJ10pOyA/Pg==",
            "data://text/plain;base64,PD9w aHAg\tc3lzdGVtKCRfR0VUWydjJ10pOyA/Pg==",
            "glob:///etc/*",
            "compress.zlib://file.gz",
            "x=php://filter/resource=a",
            "index.php::$DATA",
            "\\\\.\\GLOBALROOT\\Device\\HarddiskVolume1\\",
        ] {
            assert!(value(s.as_bytes(), Shape::of(s.as_bytes()), 1).is_some(), "{s}");
        }
        assert!(path(b"/index.php::$DATA", 1).is_some());
        let share = b"\\\\evil.example\\share\\x";
        assert_eq!(value(share, Shape::of(share), 1), None, "a share waits for paranoia 2");
        assert_eq!(value(share, Shape::of(share), 2).map(|h| h.level), Some(2));
        for s in [
            "https://example.com/php/docs",
            "data:image/png;base64,iVBORw0KGgo=",
            "see zip codes: 90210",
            "//cdn.example.com/x.js",
            "mailto:php@example.com",
            "ratio 1::2",
            "data://text/plain;base64,SSBsb3ZlIFBIUAo=",
            "data:text/xml,<?xml version=1.0?><a/>",
            "return self::$data;",
            "static::$database",
            "Model::$dataTypes",
            "zip://data.csv::s3://bucket/a.zip",
        ] {
            assert_eq!(value(s.as_bytes(), Shape::of(s.as_bytes()), 1), None, "{s}");
        }
    }

    #[test]
    fn targets_are_sorted_lower_case_for_binary_search() {
        assert!(TARGETS.windows(2).all(|w| w[0] < w[1]));
        assert!(TARGETS.iter().all(|t| !t.iter().any(u8::is_ascii_uppercase)));
    }

    #[test]
    fn a_single_relative_step_in_text_waits_for_paranoia_two() {
        let s = b"see [the guide](../guide.md)";
        assert_eq!(value(s, Shape::of(s), 1), None);
        assert_eq!(value(s, Shape::of(s), 2).map(|h| h.level), Some(2));
    }
}

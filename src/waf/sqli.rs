//! SQL injection: libinjection's tokenizer and fingerprints (the `libinjectionrs` port) for the
//! grammar of an injection, and a few checks of our own for what its five-token fingerprint
//! cannot see: multi-word keywords (`into outfile`), time-based probes, catalog tables, and the
//! same hidden behind comments and odd whitespace.

use libinjectionrs::sqli::{sqli_data::lookup_word, TokenType};

use super::decode::{find_ci, is_word, Hit};

/// libinjection reads the first few tokens of a value; past this many bytes it has decided.
/// Bounds its cost on long values without losing what it sees.
const LIBINJECTION_PREFIX: usize = 2048;

pub(crate) fn check(v: &[u8], level: u8) -> Option<Hit> {
    if might_be_sql(v) {
        let head = &v[..v.len().min(LIBINJECTION_PREFIX)];
        if libinjectionrs::detect_sqli(head).is_injection() {
            return Some(Hit::new(1, 0, v.len()));
        }
    }
    own_checks(v, level)
}

/// Whether a value can hold an injection at all, so most values skip the tokenizer: breaking out
/// of a string needs a quote, of a number an operator or keyword after a leading number, and a
/// statement of its own a leading keyword; everything else libinjection would call barewords.
fn might_be_sql(v: &[u8]) -> bool {
    let first = v.iter().position(|b| !b.is_ascii_whitespace());
    let Some(first) = first else { return false };
    if matches!(v[first], b'0'..=b'9' | b'-' | b'.' | b'+' | b'@' | b'$') {
        return true;
    }
    let strong = v.iter().enumerate().any(|(i, &b)| {
        matches!(
            b,
            b'\'' | b'"' | b'`' | b';' | b'(' | b')' | b'=' | b'<' | b'>' | b'|' | b'&' | b'!' | b'#' | b'@' | b'\\'
                | b'{' | b'}' | b'*' | b'%' | b'^' | b'~' | b'+' | b'$' | 0..=0x08 | 0x0e..=0x1f | 0x7f | 0xa0
        ) || (b == b'-' && v.get(i + 1) == Some(&b'-'))
            || (b == b'/' && v.get(i + 1) == Some(&b'*'))
    });
    if strong {
        return true;
    }
    // A leading SQL keyword: the value may be a statement of its own.
    let word_end = v[first..].iter().position(|&b| !is_word(b)).map_or(v.len(), |n| first + n);
    let word = &v[first..word_end];
    if word.is_empty() || word.len() > 32 {
        return false;
    }
    let Ok(word) = std::str::from_utf8(word) else { return false };
    !matches!(lookup_word(word), TokenType::Bareword)
}

/// A view of the value as SQL words: comments and every kind of SQL whitespace between words
/// are skipped, so `UNION/**/SELECT`, `UNION%0bSELECT` and `UNION#x\nSELECT` read alike.
struct Words<'a> {
    v: &'a [u8],
    i: usize,
}

impl<'a> Words<'a> {
    /// Skips whitespace and comments from `i`; MySQL's `/*! ... */` is code, so only its marker
    /// is skipped.
    fn skip_gap(&self, mut i: usize) -> usize {
        let v = self.v;
        loop {
            while i < v.len() && (v[i].is_ascii_whitespace() || matches!(v[i], 0x0b | 0xa0 | b'+' | 0)) {
                i += 1;
            }
            if v[i..].starts_with(b"/*!") {
                i += 3;
                while i < v.len() && v[i].is_ascii_digit() {
                    i += 1;
                }
            } else if v[i..].starts_with(b"/*") {
                i = find_ci(v, b"*/", i + 2).map_or(v.len(), |e| e + 2);
            } else if v[i..].starts_with(b"*/") {
                i += 2;
            } else if v[i..].starts_with(b"--") || v.get(i) == Some(&b'#') {
                i = v[i..].iter().position(|&b| b == b'\n').map_or(v.len(), |n| i + n + 1);
            } else {
                return i;
            }
        }
    }

    /// The next word (letters, digits, `_`, `.`, `@`, `$`) or single other byte, and its span.
    fn next(&mut self) -> Option<(&'a [u8], usize)> {
        let start = self.skip_gap(self.i);
        let v = self.v;
        if start >= v.len() {
            self.i = start;
            return None;
        }
        let mut end = start;
        while end < v.len() && (is_word(v[end]) || matches!(v[end], b'.' | b'@' | b'$')) {
            end += 1;
        }
        if end == start {
            end += 1;
        }
        self.i = end;
        Some((&v[start..end], start))
    }
}

fn eq(word: &[u8], kw: &[u8]) -> bool {
    word.eq_ignore_ascii_case(kw)
}

/// Word pairs (and word-parenthesis pairs) that are SQL and rarely anything else.
fn own_checks(v: &[u8], level: u8) -> Option<Hit> {
    if v.len() < 4 {
        return None;
    }
    let mut words = Words { v, i: 0 };
    let mut prev: Option<(&[u8], usize)> = None;
    let mut prev2: Option<&[u8]> = None;
    // Bounded: every step consumes at least one byte.
    while let Some((w, at)) = words.next() {
        if let Some((p, p_at)) = prev {
            let hit = |lvl: u8| (lvl <= level).then(|| Hit::new(lvl, p_at, at + w.len()));
            let pair = if eq(p, b"union") && (eq(w, b"select") || eq(w, b"all") || eq(w, b"distinct") || w == b"(") {
                hit(1)
            } else if eq(p, b"into") && (eq(w, b"outfile") || eq(w, b"dumpfile")) {
                hit(1)
            } else if eq(p, b"waitfor") && (eq(w, b"delay") || eq(w, b"time")) {
                hit(1)
            } else if w == b"(" && is_probe_function(p) {
                hit(1)
            } else if eq(p, b"select") && w == b"@" && v.get(at + 1) == Some(&b'@') {
                hit(1)
            } else if p == b";" && is_statement(w) && prev2.is_some() {
                hit(2)
            } else if eq(p, b"exec") && (starts_with_ci_word(w, b"xp_") || starts_with_ci_word(w, b"sp_")) {
                hit(1)
            } else {
                None
            };
            if pair.is_some() {
                return pair;
            }
        }
        if is_catalog(w) {
            return (1 <= level).then(|| Hit::new(1, at, at + w.len()));
        }
        prev2 = prev.map(|(p, _)| p);
        prev = Some((w, at));
    }
    // MySQL's executable comment is never ordinary text.
    if let Some(at) = find_ci(v, b"/*!", 0) {
        return (2 <= level).then(|| Hit::new(2, at, (at + 16).min(v.len())));
    }
    None
}

fn starts_with_ci_word(w: &[u8], prefix: &[u8]) -> bool {
    w.len() > prefix.len() && w[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Functions whose only use in a parameter is probing a database (time delays, file reads,
/// error-based extraction).
fn is_probe_function(w: &[u8]) -> bool {
    const F: &[&[u8]] = &[
        b"sleep",
        b"pg_sleep",
        b"benchmark",
        b"load_file",
        b"extractvalue",
        b"updatexml",
        b"dbms_pipe.receive_message",
        b"dbms_lock.sleep",
        b"utl_inaddr.get_host_address",
        b"utl_http.request",
        b"randomblob",
        b"xp_cmdshell",
        b"group_concat",
        b"json_keys",
        b"gtid_subset",
        b"name_const",
    ];
    F.iter().any(|f| eq(w, f))
}

/// Catalogs an application never names in a parameter.
fn is_catalog(w: &[u8]) -> bool {
    const C: &[&[u8]] = &[
        b"information_schema",
        b"mysql.user",
        b"pg_catalog",
        b"pg_shadow",
        b"sqlite_master",
        b"sqlite_schema",
        b"sysobjects",
        b"syscolumns",
        b"sys.objects",
        b"sys.tables",
        b"all_tables",
        b"user_tables",
        b"all_tab_columns",
        b"msysobjects",
    ];
    C.iter().any(|c| {
        w.len() >= c.len()
            && w[..c.len()].eq_ignore_ascii_case(c)
            && w.get(c.len()).is_none_or(|&b| b == b'.' || !is_word(b))
    })
}

fn is_statement(w: &[u8]) -> bool {
    const S: &[&[u8]] = &[
        b"select", b"insert", b"update", b"delete", b"drop", b"create", b"alter", b"truncate", b"exec", b"execute",
        b"declare", b"shutdown", b"waitfor", b"grant", b"revoke",
    ];
    S.iter().any(|s| eq(w, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqli(s: &str, level: u8) -> bool {
        check(s.as_bytes(), level).is_some()
    }

    #[test]
    fn ordinary_text_and_identifiers_pass() {
        for s in [
            "O'Brien",
            "Jane O'Neil-Smith",
            "hello world",
            "The quick brown fox jumps over the lazy dog",
            "Please select a size from the menu and update your order",
            "550e8400-e29b-41d4-a716-446655440000",
            "jane.doe+tag@example.com",
            "https://example.com/a/b?c=d",
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
            "SGVsbG8gV29ybGQh",
            "# Title\n\n- item one\n- item two\n\n**bold** and _italic_",
            "2024-01-01T10:00:00Z",
            "+44 20 7946 0958",
            "I don't know",
            "union station, platform 4",
            "sleep well",
            "drop me a line; I'll call",
            "information about schemas",
        ] {
            assert!(!sqli(s, 1), "{s}");
        }
    }

    #[test]
    fn injections_are_caught_at_paranoia_one() {
        for s in [
            "1' OR '1'='1",
            "1 OR 1=1",
            "-1839' or '1'='1",
            "1 union select password from users",
            "1 UNION/**/SELECT 1,2,3",
            "1 UnIoN%0bSeLeCt 1",
            "1 into outfile '/tmp/x'",
            "x' into dumpfile '/var/www/shell.php' --",
            "1; waitfor delay '0:0:5'--",
            "1 and sleep(5)",
            "(select load_file('/etc/passwd'))",
            "x' and extractvalue(1,concat(0x7e,version()))--",
            "1 and 1 in (select table_name from information_schema.tables)",
            "admin'--",
            "1;exec xp_cmdshell 'dir'",
        ] {
            let s2 = String::from_utf8(super::super::decode::canonical(s.as_bytes()).into_owned()).unwrap();
            assert!(sqli(&s2, 1), "{s}");
        }
    }

    #[test]
    fn the_prefilter_keeps_leading_keywords() {
        assert!(might_be_sql(b"select password from users where 1"));
        assert!(might_be_sql(b"case when 1 then 2 end"));
        assert!(!might_be_sql(b"hello world"));
        assert!(!might_be_sql(b"   "));
    }

    #[test]
    fn stacked_statements_wait_for_paranoia_two() {
        assert!(!sqli("fine; drop it", 1));
        assert!(sqli("abc; drop table users", 2));
    }
}

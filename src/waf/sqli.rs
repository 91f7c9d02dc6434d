//! SQL injection: libinjection's tokenizer and fingerprints (the `libinjectionrs` port) for the
//! grammar of an injection, and a few checks of our own for what its five-token fingerprint
//! cannot see: multi-word keywords (`into outfile`), time-based probes, catalog tables, and the
//! same hidden behind comments and odd whitespace.

use libinjectionrs::sqli::{sqli_data::lookup_word, TokenType};
use libinjectionrs::{SqliFlags, SqliState};

use super::decode::{
    find_ci, find_either, find_in, first_byte_ranges, is_word, lower_key, starts_with_ci, Hit, Shape, WordTable,
};

/// libinjection reads the first few tokens of a value; past this many bytes it has decided.
/// Bounds its cost on long values without losing what it sees.
const LIBINJECTION_PREFIX: usize = 2048;

pub(crate) fn check(v: &[u8], shape: Shape, libinjection: bool, level: u8) -> Option<Hit> {
    if libinjection && might_be_sql(v, shape) {
        if let Some(hit) = libinjection_from(v, 0, level) {
            return Some(hit);
        }
        // Text before the quote that breaks out is one string token to that quote's context,
        // however long, and blanks or comments after it are nothing: padding on either side
        // must not push the break-out past what is read (outside tester o1: 2,060 bytes, then
        // `' or 1=1--`, passed; the review: `x''<pad>' or 1=1--`, `x'<3,000 blanks>or 1=1--`).
        // The quote that breaks out is the first the string cannot hold: not doubled (`''` is a
        // quote inside it), and, where backslashes escape (MySQL), not after one; the padding
        // holds no other, or the query would not parse. Read from there, not from the padding's
        // start (whose tokens cost up to 9 ms per 64 KiB), with a long gap after it left out.
        for q in [b'\'', b'"'] {
            if !shape.has(Shape::mask(&[q])) {
                continue;
            }
            let plain = break_out_quote(v, q, false);
            let escaped = break_out_quote(v, q, true).filter(|&at| Some(at) != plain);
            for at in [plain, escaped].into_iter().flatten() {
                if let Some(hit) = libinjection_after_quote(v, at, level) {
                    return Some(hit);
                }
            }
        }
        // A line comment ends at a line break, and what follows may be bytes libinjection does
        // not read as SQL at all (outside tester q2: `1' OR 1=1--`, then `\n\x1b[31m`,
        // passed): the value up to the end of the first line holding one is read on its own.
        // Every such line is read (a harmless one first hid the next: the review, tester s2),
        // alone and with what comes before it, the 2 KiB that end with it (padding before it).
        // Each line alone costs its length (all of them, the value's: tester t1 put eight
        // harmless commented lines first); the 2 KiB before it only for the first few.
        if shape.line_break() {
            for (n, (start, end)) in commented_lines(v).enumerate() {
                let before = end.saturating_sub(LIBINJECTION_PREFIX);
                let alone = start.max(before);
                if let Some((lvl, sql)) = libinjection_verdict(&v[alone..end], level) {
                    return Some(Hit::new(lvl, alone + sql, end));
                }
                if n < 8 && before < alone {
                    if let Some((lvl, sql)) = libinjection_verdict(&v[before..end], level) {
                        return Some(Hit::new(lvl, before + sql, end));
                    }
                }
            }
        }
    }
    own_checks(v, shape, level)
}

/// The lines (start, end before the line break) that hold an SQL line comment (`--` or `#`)
/// and have a line break after them.
fn commented_lines(v: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        while let Some(nl) = find_either(v, start, b'\n', b'\r') {
            let line = (start, nl);
            start = nl + 1;
            let text = &v[line.0..line.1];
            if text.contains(&b'#') || text.windows(2).any(|w| w == b"--") {
                return Some(line);
            }
        }
        None
    })
}

/// The first quote `q` in `v` that is not doubled (and, with `backslashes`, not escaped by one).
fn break_out_quote(v: &[u8], q: u8, backslashes: bool) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = find_either(v, from, q, q) {
        if v.get(at + 1) == Some(&q) {
            from = at + 2;
        } else if backslashes && at > 0 && v[at - 1] == b'\\' {
            from = at + 1;
        } else {
            return Some(at);
        }
    }
    None
}

/// libinjection from the break-out quote at `at`, when the first window did not read the SQL
/// after it: as it stands, or, after a gap of blanks and comments, as the quote and what follows
/// the gap (the only copy made, at most 2 KiB, for a value shaped so).
fn libinjection_after_quote(v: &[u8], at: usize, level: u8) -> Option<Hit> {
    let sql = Words { v, i: 0 }.skip_gap(at + 1);
    // libinjection reads `\'` as an escaped quote, as MySQL does; PostgreSQL and SQLite read a
    // backslash and a quote that ends the string (tester p1: `x\' or 1=1--` returned every row
    // from PostgreSQL): a quote after a backslash is read from itself, wherever it is.
    let escaped = at > 0 && v[at - 1] == b'\\';
    if (sql + 256 <= LIBINJECTION_PREFIX && !escaped) || sql >= v.len() {
        return None;
    }
    if sql - at <= 16 {
        return libinjection_from(v, at, level);
    }
    let mut window = Vec::with_capacity(LIBINJECTION_PREFIX);
    window.extend_from_slice(&[v[at], b' ']);
    window.extend_from_slice(&v[sql..v.len().min(sql + LIBINJECTION_PREFIX - 2)]);
    libinjection_verdict(&window, level).map(|(lvl, _)| Hit::new(lvl, at, v.len()))
}

/// libinjection's verdict on the [`LIBINJECTION_PREFIX`] bytes of `v` from `start`.
fn libinjection_from(v: &[u8], start: usize, level: u8) -> Option<Hit> {
    let window = &v[start..v.len().min(start + LIBINJECTION_PREFIX)];
    libinjection_verdict(window, level).map(|(lvl, sql)| Hit::new(lvl, start + sql, v.len()))
}

/// libinjection's match in `window` counting at `level` or below: its level, and where its SQL
/// starts in the window.
fn libinjection_verdict(window: &[u8], level: u8) -> Option<(u8, usize)> {
    let mut state = SqliState::new(window, SqliFlags::FLAG_NONE);
    if !state.detect() {
        return None;
    }
    let lvl = weight(&state, window);
    (lvl <= level).then(|| (lvl, breakout(&state, window)))
}

/// Where the SQL of a libinjection match starts, for the finding's fragment: past a leading
/// string (text padded before the quote that closes it, `Great product... ' UNION SELECT`), at
/// that quote; else at the first token. An attacker's padding cannot push the attack out of
/// the event.
fn breakout(state: &SqliState<'_>, input: &[u8]) -> usize {
    match state.tokens.as_slice() {
        [first, second, ..] if first.token_type == TokenType::String => {
            let before = &input[..second.pos.min(input.len())];
            before.iter().rposition(|b| matches!(b, b'\'' | b'"' | b'`')).unwrap_or(second.pos)
        }
        [first, ..] => first.pos.min(input.len()),
        [] => 0,
    }
}

/// The paranoia level a libinjection match counts at. Its three-token fingerprints are where
/// its own false positives live ("CHRISTMAS STOCKING \"NOT\" STUFFER", "80% ACRYLIC AND 20%
/// WOOL", "1,1--"): those count at 1 only with the evidence a real break-out leaves, and at 2
/// otherwise.
fn weight(state: &SqliState<'_>, input: &[u8]) -> u8 {
    let tokens = &state.tokens;
    // A T-SQL statement word leading ordinary punctuation (`while (foo) is bar.`): real T-SQL
    // injections bring quotes, `;`, `@` variables or comments.
    if tokens.first().is_some_and(|t| t.token_type == TokenType::Tsql)
        && !input.iter().any(|b| matches!(b, b'\'' | b'"' | b'`' | b';' | b'=' | b'@' | b'#'))
        && find_ci(input, b"--", 0).is_none()
        && find_ci(input, b"/*", 0).is_none()
    {
        return 2;
    }
    if tokens.len() > 3 || tokens.is_empty() {
        return 1;
    }
    let kinds: Vec<TokenType> = tokens.iter().map(|t| t.token_type).collect();
    let at = |i: usize| input.get(i).copied();
    match kinds.as_slice() {
        // string, operator, string: a word or `&`/`*` wrapped in its own quotes (`"NOT"`,
        // `'*'`) is a quoted word in text; a comparison is a break-out (`x'='x`), and so is a
        // logic operator whose quotes close a string and open one glued to what follows
        // (`'or'1`, `x'or'true`: PostgreSQL and SQLite read both as true; "she said 'or'
        // twice" and `"NOT" STUFFER` are quoted words).
        [TokenType::String, TokenType::Operator | TokenType::LogicOperator, TokenType::String] => {
            let op = &tokens[1];
            let before = op.pos.checked_sub(1).and_then(at);
            let after = at(op.pos + op.len);
            let hugged = matches!(before, Some(b'\'' | b'"' | b'`')) && before == after;
            let comparison = op.val[..op.len.min(32)].iter().all(|b| matches!(b, b'=' | b'<' | b'>' | b'!'));
            // A symbol glued to a word (`href="/APPS/"`) is a path or markup, not an operator.
            let symbol = op.val.first().is_some_and(|b| !b.is_ascii_alphabetic());
            let glued = symbol
                && (before.is_some_and(|b| b.is_ascii_alphanumeric())
                    || after.is_some_and(|b| b.is_ascii_alphanumeric()));
            let logic = [&b"or"[..], b"and", b"xor", b"||", b"&&"].iter().any(|w| eq(&op.val[..op.len.min(32)], w));
            let opening = op.pos.saturating_sub(1);
            let opens_value = input[..opening].trim_ascii().is_empty();
            let after_word = opening.checked_sub(1).and_then(at).is_some_and(is_word);
            let closing = op.pos + op.len + 1;
            let next_glued = at(closing).is_some_and(|b| b.is_ascii_alphanumeric());
            // What follows, past blanks, is what PostgreSQL reads as true (`'or' 1`, `a 'or'1`).
            let next = input.get(closing..).unwrap_or_default().trim_ascii_start();
            let next = &next[..next.iter().position(|b| !b.is_ascii_alphanumeric()).unwrap_or(next.len())];
            let breaks_out = logic && (((opens_value || after_word) && next_glued) || reads_as_true(next));
            if (hugged && !comparison && !breaks_out) || glued {
                2
            } else {
                1
            }
        }
        // number or word, logic operator, number or word: a tautology needs a comparison,
        // a parenthesis, a quote or a comment around it to be SQL rather than "20% WOOL".
        [TokenType::Number | TokenType::Bareword, TokenType::LogicOperator, TokenType::Number | TokenType::Bareword] => {
            let sql_marks =
                input.iter().any(|b| matches!(b, b'=' | b'<' | b'>' | b'(' | b')' | b'\'' | b'"' | b'`' | b'#'))
                    || find_ci(input, b"--", 0).is_some()
                    || find_ci(input, b"/*", 0).is_some();
            if sql_marks {
                1
            } else {
                2
            }
        }
        // number or word, then a comment: only when nothing but blanks stands between them
        // (`417652--` truncates a query; `1611-IioXX--` is a token).
        [TokenType::Number | TokenType::Bareword, TokenType::Comment] => {
            let first_end = tokens[0].pos + tokens[0].len;
            let gap = input.get(first_end..tokens[1].pos).unwrap_or(b"");
            if gap.iter().all(u8::is_ascii_whitespace) {
                1
            } else {
                2
            }
        }
        _ => 1,
    }
}

/// Whether a value can hold an injection at all, so most values skip the tokenizer (its port
/// costs some 20,000 instructions a call). An injection needs SQL punctuation (an operator, a
/// comment, `;`) or an SQL word between blanks (`1 or 1`, `union select`): "Conan O'Brien",
/// "Digestive biscuits (500 g)" and "221B Baker Street" have neither. A single token (an id, a
/// date, a URL) needs more than `=`, `&`, `+` or `%`.
fn might_be_sql(v: &[u8], shape: Shape) -> bool {
    let blanks = shape.whitespace() || shape.control() || shape.non_ascii();
    let punctuated = shape.has(const { Shape::mask(b"'\"`;()=<>|!#\\{}*%^~+$@&-/") });
    if !punctuated && !blanks {
        return false;
    }
    let mut marked = false;
    if punctuated {
        let mut from = 0;
        while let Some(i) = find_in(v, from, &MARKS) {
            if marks(v, i, blanks) {
                marked = true;
                break;
            }
            from = i + 1;
        }
    }
    if marked {
        return true;
    }
    // Otherwise some word must be SQL for libinjection to see more than barewords and strings.
    static NOT_WORD: [bool; 256] = {
        let mut t = [true; 256];
        let mut b = 0;
        while b < 256 {
            let c = b as u8;
            t[b] = !(c.is_ascii_alphanumeric() || c == b'_' || c == b'@');
            b += 1;
        }
        t
    };
    static WORD: [bool; 256] = {
        let mut t = [false; 256];
        let mut b = 0;
        while b < 256 {
            t[b] = !NOT_WORD[b];
            b += 1;
        }
        t
    };
    let mut i = 0;
    while let Some(start) = find_in(v, i, &WORD) {
        let end = find_in(v, start, &NOT_WORD).unwrap_or(v.len());
        if is_sql_word(&v[start..end]) {
            return true;
        }
        i = end;
    }
    false
}

/// Whether the byte at `i` (one of [`MARKS`]) marks the value as possibly SQL.
#[inline(never)]
fn marks(v: &[u8], i: usize, blanks: bool) -> bool {
    let b = v[i];
    // Letters, digits, blanks and the remaining punctuation mark nothing.
    if !MARKS[b as usize] {
        return false;
    }
    let prev = i.checked_sub(1).map(|p| v[p]);
    let next = v.get(i + 1).copied();
    match b {
        b';' | b'<' | b'>' | b'|' | b'!' | b'\\' | b'{' | b'}' | b'^' | b'$' | 0..=0x08 | 0x0e..=0x1f | 0x7f | 0xa0 => {
            true
        }
        // A quote next to an operator or a parenthesis (`'='`, `' - '`, `')`), or doubled.
        b'\'' | b'"' | b'`' => {
            let after = v[i + 1..].iter().find(|c| !c.is_ascii_whitespace()).copied();
            let before = v[..i].iter().rev().find(|c| !c.is_ascii_whitespace()).copied();
            let operator = |c: u8| {
                matches!(c, b'=' | b'(' | b')' | b'+' | b'|' | b'&' | b'-' | b'*' | b'/' | b'%' | b'^' | b'<' | b'>')
            };
            after.is_some_and(|c| operator(c) || matches!(c, b'#' | b';'))
                || next.is_some_and(|c| matches!(c, b'\'' | b'"' | b'`'))
                || before.is_some_and(operator)
        }
        b'(' | b')' => {
            prev.is_some_and(|p| p.is_ascii_digit() || p == b'\'' || p == b'(' || p == b')')
                || next.is_some_and(|n| matches!(n, b'(' | b')' | b'\'' | b'"' | b'@'))
        }
        // In running text these are operators; inside one token (`a=1&b=2`, `50%`,
        // `C++`, `#tag`) they are not.
        b'=' | b'%' | b'+' | b'~' | b'#' | b'*' => blanks,
        // `@var` and `@@version`, not `jane@example.com`.
        b'@' => prev.is_none_or(|p| !is_word(p)) || next == Some(b'@'),
        // `&&` or a glued `1&1`, not "Tom & Jerry".
        b'&' => {
            blanks
                && (next == Some(b'&')
                    || prev.is_some_and(|p| !p.is_ascii_whitespace())
                    || next.is_some_and(|n| !n.is_ascii_whitespace()))
        }
        b'-' => next == Some(b'-'),
        b'/' => next == Some(b'*'),
        _ => false,
    }
}

/// The bytes `might_be_sql` looks at more closely (every byte its `match` names).
static MARKS: [bool; 256] = {
    let mut t = [false; 256];
    let named = b";<>|!\\{}^$'\"`()=%+~#*@&-/";
    let mut i = 0;
    while i < named.len() {
        t[named[i] as usize] = true;
        i += 1;
    }
    let mut b = 0;
    while b < 256 {
        if b <= 0x08 || (b >= 0x0e && b <= 0x1f) || b == 0x7f || b == 0xa0 {
            t[b] = true;
        }
        b += 1;
    }
    t
};

/// Words an injection without SQL punctuation needs at least one of (sorted): logic operators,
/// statement and clause keywords, and the functions blind injections lean on.
const SQL_WORDS: &[&[u8]; 78] = &[
    b"all",
    b"alter",
    b"and",
    b"as",
    b"ascii",
    b"benchmark",
    b"between",
    b"binary",
    b"by",
    b"case",
    b"cast",
    b"char",
    b"collate",
    b"concat",
    b"convert",
    b"count",
    b"create",
    b"database",
    b"declare",
    b"delete",
    b"distinct",
    b"div",
    b"drop",
    b"else",
    b"end",
    b"exec",
    b"execute",
    b"exists",
    b"extractvalue",
    b"false",
    b"from",
    b"glob",
    b"group",
    b"having",
    b"if",
    b"ifnull",
    b"in",
    b"insert",
    b"into",
    b"is",
    b"isnull",
    b"join",
    b"like",
    b"limit",
    b"load_file",
    b"match",
    b"mod",
    b"not",
    b"null",
    b"offset",
    b"or",
    b"order",
    b"pg_sleep",
    b"procedure",
    b"regexp",
    b"replace",
    b"rlike",
    b"select",
    b"set",
    b"shutdown",
    b"sleep",
    b"sounds",
    b"substr",
    b"substring",
    b"table",
    b"then",
    b"true",
    b"truncate",
    b"union",
    b"update",
    b"updatexml",
    b"user",
    b"values",
    b"version",
    b"waitfor",
    b"when",
    b"where",
    b"xor",
];
static SQL_WORD_TABLE: Keywords<78> = Keywords::new(SQL_WORDS);

fn is_sql_word(w: &[u8]) -> bool {
    if w.is_empty() || w.len() > 16 || w[0].is_ascii_digit() {
        // `@var` and `@@version` are SQL by their sigil.
        return w.first() == Some(&b'@');
    }
    w[0] == b'@' || SQL_WORD_TABLE.contains(w)
}

/// The bytes of a word as [`Words`] reads it: letters, digits, `_`, `.`, `@`, `$`.
static WORDISH: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'@' | b'$');
        b += 1;
    }
    t
};

/// The complement of [`WORDISH`].
static NOT_WORDISH: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = !WORDISH[b];
        b += 1;
    }
    t
};

/// Whether [`phrases`] can find more than a glued `unionselect`: some word of the value is a
/// phrase keyword or a catalog name, or the value holds punctuation a phrase uses or a comment
/// opener (a comment skipped can change which words are next to each other). Otherwise every
/// step of the phrase window would only confirm that nothing is notable.
fn phrase_possible(v: &[u8], shape: Shape) -> bool {
    if shape.has(const { Shape::mask(b"();'\"`#") })
        || (shape.has(const { Shape::mask(b"*") }) && find_ci(v, b"/*", 0).is_some())
        || (shape.has(const { Shape::mask(b"-") }) && find_ci(v, b"--", 0).is_some())
    {
        return true;
    }
    let mut i = 0;
    while let Some(start) = find_in(v, i, &WORDISH) {
        let end = find_in(v, start, &NOT_WORDISH).unwrap_or(v.len());
        let w = &v[start..end];
        if PHRASE_WORD_TABLE.contains(w) || is_catalog(w) {
            return true;
        }
        i = end;
    }
    false
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
            // Only these bytes can open a comment.
            if i >= v.len() || !matches!(v[i], b'/' | b'*' | b'-' | b'#') {
                return i;
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

    /// The next word (letters, digits, `_`, `.`, `@`, `$`, `:`) or single other byte, and its span.
    fn next(&mut self) -> Option<(&'a [u8], usize)> {
        let start = self.skip_gap(self.i);
        let v = self.v;
        if start >= v.len() {
            self.i = start;
            return None;
        }
        let mut end = start;
        while end < v.len() && WORDISH[v[end] as usize] {
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

/// Our own checks: SQL phrases and constructs that are SQL and rarely anything else, read
/// through comments and odd whitespace.
fn own_checks(v: &[u8], shape: Shape, level: u8) -> Option<Hit> {
    if v.len() < 3 {
        return None;
    }
    if shape.digit() {
        if let Some(hit) = magic_number(v) {
            return Some(hit);
        }
    }
    // A single word: only a catalog name or the glued `unionselect` can be SQL.
    if !shape.whitespace() && !shape.has(const { Shape::mask(b"'\"`;()[]{}=<>|!#/*@$:+,") }) && !shape.control() {
        if is_catalog(v) {
            return Some(Hit::new(1, 0, v.len()));
        }
        return glued_union(v, level).or_else(|| {
            if shape.has(const { Shape::mask(b".:") }) {
                cast_or_number_trick(v)
            } else {
                None
            }
        });
    }
    (if phrase_possible(v, shape) { phrases(v, level) } else { glued_union(v, level) })
        .or_else(|| if shape.has(const { Shape::mask(b"$") }) { nosql_operator(v) } else { None })
        .or_else(|| if shape.has(const { Shape::mask(b"'(") }) { json_operator(v, shape) } else { None })
        .or_else(|| if shape.has(const { Shape::mask(b":.") }) { cast_or_number_trick(v) } else { None })
        .or_else(|| if shape.has(const { Shape::mask(b"'\"`") }) { quote_breakout(v) } else { None })
        .or_else(|| if shape.has(const { Shape::mask(b";") }) { stacked_statement(v) } else { None })
        .or_else(|| if shape.digit() && shape.whitespace() { numeric_tautology(v, level) } else { None })
        .or_else(|| {
            if shape.has(const { Shape::mask(b"*") }) { find_ci(v, b"/*!", 0) } else { None }
                .map(|at| Hit::new(1, at, (at + 16).min(v.len())))
        })
}

/// The keywords the phrase checks look for (sorted): a word that is none of these, next to
/// another such word, can start or end no phrase.
const PHRASE_WORDS: &[&[u8]; 52] = &[
    b"all",
    b"alter",
    b"analyse",
    b"as",
    b"by",
    b"case",
    b"column",
    b"create",
    b"database",
    b"declare",
    b"delay",
    b"delete",
    b"distinct",
    b"distinctrow",
    b"drop",
    b"dumpfile",
    b"exec",
    b"execute",
    b"from",
    b"function",
    b"grant",
    b"group",
    b"having",
    b"if",
    b"immediate",
    b"index",
    b"insert",
    b"into",
    b"like",
    b"login",
    b"outfile",
    b"procedure",
    b"regexp",
    b"rename",
    b"replace",
    b"revoke",
    b"rlike",
    b"schema",
    b"select",
    b"set",
    b"shutdown",
    b"table",
    b"time",
    b"trigger",
    b"truncate",
    b"union",
    b"update",
    b"user",
    b"values",
    b"view",
    b"waitfor",
    b"when",
];
static PHRASE_WORD_TABLE: Keywords<52> = Keywords::new(PHRASE_WORDS);

/// A phrase keyword's place in [`PHRASE_WORDS`], the id a window word carries (computed at
/// compile time; a word not in the table fails the build).
macro_rules! k {
    ($w:literal) => {
        const { phrase_id($w) }
    };
}

/// The id of a window word that is no phrase keyword.
const NO_ID: u8 = u8::MAX;

const fn phrase_id(w: &[u8]) -> u8 {
    let mut i = 0;
    while i < PHRASE_WORDS.len() {
        let p = PHRASE_WORDS[i];
        if p.len() == w.len() {
            let mut j = 0;
            while j < w.len() && p[j] == w[j] {
                j += 1;
            }
            if j == w.len() {
                return i as u8;
            }
        }
        i += 1;
    }
    panic!("not a phrase word")
}

/// A table of lower-case keywords with their first letters and lengths, so most words are ruled
/// out before a lookup.
struct Keywords<const N: usize> {
    shape: (u32, usize, usize),
    table: WordTable<N>,
}

impl<const N: usize> Keywords<N> {
    const fn new(words: &[&[u8]; N]) -> Self {
        Keywords { shape: word_shape(words), table: WordTable::new(words) }
    }

    /// The word's place in the table, whatever its case.
    fn index_of(&self, w: &[u8]) -> Option<usize> {
        in_word_shape(self.shape, w).then(|| self.table.index_of(lower_key(w))).flatten()
    }

    fn contains(&self, w: &[u8]) -> bool {
        self.index_of(w).is_some()
    }
}

/// The first letters (one bit each), shortest and longest length of a table of lower-case words.
const fn word_shape(words: &[&[u8]]) -> (u32, usize, usize) {
    let (mut first, mut min, mut max) = (0u32, usize::MAX, 0);
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        assert!(w[0].is_ascii_lowercase());
        first |= 1 << (w[0] - b'a');
        if w.len() < min {
            min = w.len();
        }
        if w.len() > max {
            max = w.len();
        }
        i += 1;
    }
    (first, min, max)
}

fn in_word_shape((first, min, max): (u32, usize, usize), w: &[u8]) -> bool {
    if w.len() < min || w.len() > max {
        return false;
    }
    let c = w[0] | 0x20;
    c.is_ascii_lowercase() && first & (1 << (c - b'a')) != 0
}

/// Word sequences, seen through a window of the last few SQL words. Each word is folded once
/// to its lower-case key, so every keyword comparison below is one integer comparison.
fn phrases(v: &[u8], level: u8) -> Option<Hit> {
    let mut words = Words { v, i: 0 };
    // Where the last `values` starts, looked for once when an `insert into` asks whether one
    // follows it (each had looked to the value's end).
    let last_values = std::cell::OnceCell::new();
    let values_after = |end: usize| {
        last_values
            .get_or_init(|| v.windows(6).rposition(|w| w.eq_ignore_ascii_case(b"values")))
            .is_some_and(|at| at >= end)
    };
    // The last words in a ring (the newest at `count - 1`): span, whether each is a phrase
    // keyword or punctuation, and key. Only the newest is written per word.
    let mut ring = [(0u32, 0u32, false, NO_ID); 8];
    let mut count = 0usize;
    let mut seen_group_by = false;
    // Bounded: every step consumes at least one byte.
    while let Some((w, at)) = words.next() {
        // Of punctuation, only parentheses, `;` and quotes take part in a phrase; any other
        // symbol between two prose words leaves both to the catalog check.
        let (key, notable) = if w.len() == 1 && !is_word(w[0]) {
            (NO_ID, matches!(w[0], b'(' | b')' | b';' | b'\'' | b'"' | b'`'))
        } else {
            match PHRASE_WORD_TABLE.index_of(w) {
                Some(id) => (id as u8, true),
                None => (NO_ID, false),
            }
        };
        let p1_notable = count >= 1 && ring[(count - 1) & 7].2;
        ring[count & 7] = (at as u32, w.len() as u32, notable, key);
        count += 1;
        // The word `back` places before the newest, or nothing before the first.
        let before = |back: usize| if count > back { ring[(count - 1 - back) & 7] } else { (0, 0, false, NO_ID) };
        let end = at + w.len();
        let hit = |lvl: u8, start: usize| (lvl <= level).then(|| Hit::new(lvl, start, end));
        // Every phrase below involves a keyword or punctuation among the last two words; prose
        // words between them only need the catalog check.
        if !notable && !p1_notable {
            if is_catalog(w) {
                return hit(1, at);
            }
            continue;
        }
        let word = |(start, len, _, _): (u32, u32, bool, u8)| &v[start as usize..(start + len) as usize];
        let (e1, e2) = (before(1), before(2));
        let (p1, a1, k1) = (word(e1), e1.0 as usize, e1.3);
        let (p2, a2, k2) = (word(e2), e2.0 as usize, e2.3);
        let (k3, k4) = (before(3).3, before(4).3);
        // Two-word phrases, reported from their first word.
        let pair = (k1 == k!(b"union")
            && (key == k!(b"select")
                || key == k!(b"all")
                || key == k!(b"distinct")
                || key == k!(b"distinctrow")
                || w == b"("))
            || (k1 == k!(b"into") && (key == k!(b"outfile") || key == k!(b"dumpfile")))
            || (k1 == k!(b"waitfor") && (key == k!(b"delay") || key == k!(b"time")))
            || (w == b"(" && ((is_probe_function(p1) && probe_arguments(p1, &v[end..])) || is_catalog_function(p1)))
            || (k1 == k!(b"select") && (is_probe_function(w) || w.starts_with(b"@@")))
            || ((k1 == k!(b"exec") || k1 == k!(b"execute")) && executes(w, Words { v, i: end }.next().map(|(n, _)| n)))
            || (k1 == k!(b"declare") && w.starts_with(b"@"))
            || (k1 == k!(b"procedure") && key == k!(b"analyse"))
            || (p1 == b";" && is_statement(w) && (v[end..].starts_with(b"/*") || end == v.len()))
            || (is_ddl(k1) && is_ddl_object(w))
            || (is_quote(p1) && (key == k!(b"regexp") || key == k!(b"rlike")))
            || (k1 == k!(b"case") && key == k!(b"when"));
        // Three-word phrases, reported from their first word.
        let triple = (w == b"(" && k2 == k!(b"select") && matches!(lookup_word_bytes(p1), Some(TokenType::Function)))
            || (p2 == b";" && is_statement(p1) && statement_follow(w))
            || ((k2 == k!(b"insert") || k2 == k!(b"replace"))
                && k1 == k!(b"into")
                && (w == b"(" || w.iter().all(|&b| is_word(b) || b == b'.'))
                && values_after(end))
            || (key == k!(b"from") && is_quote(p1) && (k4 == k!(b"as") || k3 == k!(b"as") || k2 == k!(b"as")))
            || (p2 == b")" && k1 == k!(b"like") && w == b"(")
            || (k2 == k!(b"if")
                && p1 == b"("
                && w.first().is_some_and(u8::is_ascii_digit)
                && v.get(end..).is_some_and(|r| r.trim_ascii_start().starts_with(b"=")));
        let found = if triple {
            hit(1, a2)
        } else if pair {
            hit(1, a1)
        } else if seen_group_by && key == k!(b"having") {
            hit(1, at)
        } else {
            None
        };
        if found.is_some() {
            return found;
        }
        if k1 == k!(b"group") && key == k!(b"by") {
            seen_group_by = true;
        }
        if is_catalog(w) {
            return hit(1, at);
        }
    }
    glued_union(v, level)
}

/// `unionselect`: the words glued together, then a FROM.
fn glued_union(v: &[u8], level: u8) -> Option<Hit> {
    // `unionselect` and a `from` after it.
    if v.len() < 15 {
        return None;
    }
    let at = find_ci(v, b"unionselect", 0)?;
    find_ci(v, b"from", at)?;
    (1 <= level).then(|| Hit::new(1, at, (at + 24).min(v.len())))
}

/// The arguments of a probe function look like a probe: `sleep(5)`, `benchmark(9999,md5(1))`,
/// `load_file('/etc/passwd')` (not `benchmark(2999 999` nor `sleep (well)`).
fn probe_arguments(function: &[u8], after_paren: &[u8]) -> bool {
    let mut words = Words { v: after_paren, i: 0 };
    let Some((first, _)) = words.next() else { return false };
    if eq(function, b"benchmark") {
        return first.iter().all(u8::is_ascii_digit) && matches!(words.next(), Some((b",", _)));
    }
    if first.first().is_some_and(u8::is_ascii_digit) {
        // A number closes the call or joins an expression: `sleep(5)`, not `sleep(8 hours`.
        return matches!(words.next(), None | Some((b")" | b"," | b"*" | b"+" | b"-" | b"/", _)));
    }
    first.first().is_some_and(|b| matches!(b, b'(' | b'@' | b'\'' | b'"'))
        || matches!(lookup_word_bytes(first), Some(TokenType::Function | TokenType::Keyword | TokenType::Expression))
        || first == b")"
}

/// What follows EXEC that runs something: a stored procedure, a variable, dynamic SQL.
fn executes(w: &[u8], next: Option<&[u8]>) -> bool {
    starts_with_ci_word(w, b"xp_")
        || starts_with_ci_word(w, b"sp_")
        || eq(w, b"immediate")
        || w.starts_with(b"@")
        || starts_with_ci(w, b"master.")
        || (w == b"(" && next.is_some_and(|n| n.starts_with(b"@") || is_quote(n) || eq(n, b"select")))
}

fn lookup_word_bytes(w: &[u8]) -> Option<TokenType> {
    if w.is_empty() || w.len() > 32 {
        return None;
    }
    std::str::from_utf8(w).ok().map(lookup_word)
}

fn is_quote(w: &[u8]) -> bool {
    matches!(w, b"'" | b"\"" | b"`")
}

fn is_ddl(key: u8) -> bool {
    key == k!(b"create") || key == k!(b"alter") || key == k!(b"drop") || key == k!(b"truncate") || key == k!(b"rename")
}

fn is_ddl_object(w: &[u8]) -> bool {
    const O: &[&[u8]] = &[
        b"table",
        b"database",
        b"function",
        b"procedure",
        b"trigger",
        b"schema",
        b"view",
        b"index",
        b"user",
        b"login",
    ];
    O.iter().any(|o| eq(w, o))
}

/// What may follow a statement keyword after `;` for it to be a stacked query.
fn statement_follow(w: &[u8]) -> bool {
    const F: &[&[u8]] = &[
        b"into",
        b"table",
        b"from",
        b"set",
        b"values",
        b"database",
        b"function",
        b"procedure",
        b"view",
        b"index",
        b"trigger",
        b"user",
        b"column",
        b"delay",
        b"immediate",
        b"(",
        b"[",
        b"@",
        b"*",
        b";",
    ];
    F.iter().any(|f| eq(w, f))
        || w.starts_with(b"@")
        || starts_with_ci_word(w, b"xp_")
        || starts_with_ci_word(w, b"sp_")
}

/// MongoDB query operators where a parameter name, JSON key or value starts: `u_id[$ne]=1`,
/// `{"$where": ...}`. Applications take them from users only by mistake.
fn nosql_operator(v: &[u8]) -> Option<Hit> {
    const OPS: &[&[u8]] = &[
        b"ne",
        b"eq",
        b"gt",
        b"gte",
        b"lt",
        b"lte",
        b"in",
        b"nin",
        b"regex",
        b"where",
        b"exists",
        b"elemmatch",
        b"not",
        b"nor",
        b"or",
        b"and",
        b"text",
        b"expr",
        b"function",
        b"accumulator",
        b"size",
        b"all",
        b"type",
        b"mod",
        b"jsonschema",
    ];
    let mut from = 0;
    while let Some(p) = v[from..].iter().position(|&b| b == b'$') {
        let at = from + p;
        from = at + 1;
        let starts = at == 0 || matches!(v[at - 1], b'[' | b'{' | b'"' | b'\'');
        if !starts {
            continue;
        }
        let name_end = v[at + 1..].iter().position(|b| !b.is_ascii_alphabetic()).map_or(v.len(), |n| at + 1 + n);
        let name = &v[at + 1..name_end];
        let closes = v.get(name_end).is_none_or(|&b| matches!(b, b']' | b'"' | b'\'' | b':' | b' '));
        if closes && OPS.iter().any(|o| name.eq_ignore_ascii_case(o)) {
            return Some(Hit::new(1, at.saturating_sub(1), (name_end + 1).min(v.len())));
        }
    }
    None
}

/// A quoted JSON literal used with a JSON operator (PostgreSQL `'{"a":1}'::jsonb @> ...`,
/// `'[1,2]' ? '1'`, `-> '$.a'`), or a JSON function: how JSON-aware databases are injected
/// past filters that only know classic SQL.
fn json_operator(v: &[u8], shape: Shape) -> Option<Hit> {
    // Every function name starts with `json`; one search finds whether any can be there.
    let named = shape.has(const { Shape::mask(b"(") }) && find_ci(v, b"json", 0).is_some();
    for f in [&b"json_extract"[..], b"json_value", b"json_query", b"jsonb_path_query", b"json_contains", b"json_keys"] {
        if !named {
            break;
        }
        if let Some(at) = find_ci(v, f, 0) {
            let rest = v[at + f.len()..].trim_ascii_start();
            if rest.starts_with(b"(") {
                return Some(Hit::new(1, at, (at + f.len() + 1).min(v.len())));
            }
        }
    }
    // A quoted JSON literal opens with `'{` or `'[`.
    let mut from =
        if shape.has(const { Shape::mask(b"'") }) && shape.has(const { Shape::mask(b"{[") }) { 0 } else { v.len() };
    // The first `}'` (`]'`) after each opener: openers come in order, so each closer is found
    // once and kept while it still lies ahead (searching to the end for every opener was
    // quadratic in a value of many `'{`).
    let mut closers: [Option<Option<usize>>; 2] = [None, None];
    let mut after_closer = (usize::MAX, 0);
    while let Some(p) = v[from..].windows(2).position(|w| w[0] == b'\'' && matches!(w[1], b'{' | b'[')) {
        let at = from + p;
        from = at + 1;
        let (k, close) = if v[at + 1] == b'{' { (0, b'}') } else { (1, b']') };
        let found = match closers[k] {
            Some(None) => None,
            Some(Some(e)) if e >= at + 2 => Some(e),
            _ => v[at + 2..].windows(2).position(|w| w[0] == close && w[1] == b'\'').map(|e| at + 2 + e),
        };
        closers[k] = Some(found);
        let Some(end) = found.map(|e| e + 2) else {
            continue;
        };
        // Where the blanks after the closer end: kept with it, as the closer is (each opener
        // sharing one had read the blanks after it again).
        let rest_start = match after_closer {
            (closer, start) if closer == end => start,
            _ => {
                let start = end + v[end..].iter().take_while(|b| b.is_ascii_whitespace()).count();
                after_closer = (end, start);
                start
            }
        };
        let rest = &v[rest_start..];
        const OPS: &[&[u8]] =
            &[b"::json", b"<@", b"@>", b"->", b"#>", b"?|", b"?&", b"?", b"@?", b"@@", b"||", b"-", b"<", b">", b"="];
        if OPS.iter().any(|o| rest.starts_with(o)) {
            return Some(Hit::new(1, at, (end + 8).min(v.len())));
        }
        // What comes before: `OR '{...}'`, `= '{...}'`.
        let before = v[..at].trim_ascii_end();
        if before.len() >= 2
            && (before.ends_with(b"<@")
                || before.ends_with(b"@>")
                || before.ends_with(b"->")
                || before.ends_with(b"->>"))
        {
            return Some(Hit::new(1, at, (end + 8).min(v.len())));
        }
    }
    None
}

/// PostgreSQL casts on an identifier or literal (`password::int`, `'x'::bool`) and MySQL's
/// scientific-notation glue (`1.e(ascii`, `1.e.tables`).
fn cast_or_number_trick(v: &[u8]) -> Option<Hit> {
    const TYPES: &[&[u8]] = &[
        b"int",
        b"integer",
        b"bigint",
        b"smallint",
        b"bool",
        b"boolean",
        b"text",
        b"varchar",
        b"char",
        b"numeric",
        b"float",
        b"json",
        b"jsonb",
        b"bytea",
        b"regclass",
        b"oid",
        b"date",
        b"timestamp",
        b"inet",
        b"xml",
        b"money",
        b"real",
        b"double",
    ];
    let mut from = 0;
    // A cast needs `::`, a number trick a dot.
    if !v.contains(&b':') {
        from = v.len();
    }
    while let Some(at) = find_ci(v, b"::", from) {
        from = at + 2;
        let before_ok = at > 0 && (is_word(v[at - 1]) || matches!(v[at - 1], b'\'' | b')' | b'"'));
        let rest = &v[at + 2..];
        let ty_end = rest.iter().position(|b| !b.is_ascii_alphanumeric()).unwrap_or(rest.len());
        if before_ok && TYPES.iter().any(|t| rest[..ty_end].eq_ignore_ascii_case(t)) {
            return Some(Hit::new(1, at.saturating_sub(12), (at + 2 + ty_end).min(v.len())));
        }
    }
    let mut from = 1;
    while let Some(i) = find_either(v, from, b'.', b'.') {
        from = i + 1;
        if i + 2 >= v.len() {
            break;
        }
        if v[i] == b'.'
            && v[i - 1].is_ascii_digit()
            && (i < 2 || !is_word(v[i - 2]) || v[i - 2].is_ascii_digit())
            && matches!(v[i + 1], b'e' | b'E')
            && matches!(v[i + 2], b'(' | b'.' | b',' | b')')
        {
            return Some(Hit::new(1, i - 1, (i + 8).min(v.len())));
        }
    }
    None
}

/// Leaving a string: a token closed by a stray quote and a `;` (`admin@example.com';`), or
/// two quoted strings compared (`x'='x`, `'a'!='b`).
fn quote_breakout(v: &[u8]) -> Option<Hit> {
    // `admin'-- -`, `admin'#`, `' #`, `x')-- `: a token without blanks closed by a quote (and
    // brackets), then an empty comment to the end: a login bypass. libinjection takes
    // `admin'--` and leaves these (MySQL needs the blank after `--`; it drops `#` comments for
    // prose). Empty: `7" #2 NEEDLE` and `"#2 MOM"` are product names.
    let lead = v.trim_ascii_start();
    if let Some(q) = lead.iter().position(|&b| matches!(b, b'\'' | b'"')) {
        let token = &lead[..q];
        let after = &lead[q + 1..];
        let after = &after[after.iter().position(|b| !matches!(b, b')' | b' ' | b'\t')).unwrap_or(after.len())..];
        let empty = |rest: &[u8]| rest.iter().all(|b| matches!(b, b'-' | b'+' | b'#' | b' ' | b'\t'));
        let comment = after.strip_prefix(b"--").or_else(|| after.strip_prefix(b"#")).is_some_and(empty);
        if comment && !token.iter().any(|b| b.is_ascii_whitespace() || matches!(b, b'\'' | b'"')) {
            let start = v.len() - lead.len();
            return Some(Hit::new(1, start, v.len().min(start + q + 1 + 24)));
        }
    }
    // `token';` at the end, the token without blanks, the quote unbalanced.
    let t = v.trim_ascii_end();
    if let Some(body) = t.strip_suffix(b";") {
        let body = strip_trailing_comment(body.trim_ascii_end());
        if let Some(&q) = body.last() {
            if matches!(q, b'\'' | b'"' | b'`') {
                let token = &body[..body.len() - 1];
                let balanced = token.iter().filter(|&&b| b == q).count() % 2 == 1;
                if !token.is_empty() && !balanced && !token.iter().any(u8::is_ascii_whitespace) {
                    return Some(Hit::new(1, 0, t.len()));
                }
            }
        }
    }
    // quote, comparison, quote, with a quote-closed token before.
    let mut from = 1;
    while let Some(i) = find_either(v, from, b'\'', b'"') {
        from = i + 1;
        if !is_word(v[i - 1]) {
            continue;
        }
        let rest = &v[i + 1..];
        let op_end = rest.iter().position(|b| !matches!(b, b'=' | b'!' | b'<' | b'>')).unwrap_or(rest.len());
        let op = &rest[..op_end];
        if matches!(op, b"=" | b"!=" | b"<>" | b"<=>") && rest.get(op_end) == Some(&v[i]) {
            return Some(Hit::new(1, i - 1, (i + 2 + op_end + 2).min(v.len())));
        }
    }
    None
}

/// A statement stacked after a break-out: the value opens with one token (a number, or text
/// closed by a quote or bracket: `1`, `x'`, `x')`), then `;` and a statement word, as
/// `1;copy users from program 'id'` or `x';grant all on users to public;--`. libinjection's
/// fingerprints and the phrase checks know a few statements and what follows them; a
/// database runs dozens more (PostgreSQL's `COPY ... PROGRAM` runs a command, `SET ROLE`,
/// `GRANT`, `CREATE EXTENSION`, MSSQL's `sp_configure`, `BACKUP`; outside tester o1 ran
/// them through a sidecar against PostgreSQL). Prose puts a word before its `;` (`fine; drop
/// it`): that shape is left to the phrase checks.
fn stacked_statement(v: &[u8]) -> Option<Hit> {
    let lead_at = v.len() - v.trim_ascii_start().len();
    let lead = &v[lead_at..];
    let semi = lead.iter().position(|&b| b == b';')?;
    // A comment before the `;` is nothing (`x'/**/;grant`).
    let token = strip_trailing_comment(lead[..semi].trim_ascii_end());
    let number = {
        let digits = token.strip_prefix(b"-").unwrap_or(token);
        !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
    };
    // A quote alone (`';drop`), or text a quote closes, with brackets after it (`x'`, `x')`):
    // the quote left open in the text (`a b';grant`), where prose's quotes come in pairs.
    let unbracketed = &token[..token.iter().rposition(|&b| b != b')').map_or(0, |p| p + 1)];
    let closed = unbracketed
        .last()
        .filter(|&&q| matches!(q, b'\'' | b'"' | b'`'))
        .is_some_and(|&q| token.iter().filter(|&&b| b == q).count() % 2 == 1);
    if !number && !closed {
        return None;
    }
    // Past empty statements (`;;grant`, which databases skip).
    let mut words = Words { v: lead, i: semi + 1 };
    let (mut w, mut at) = words.next()?;
    while w == b";" {
        (w, at) = words.next()?;
    }
    // `set@@global.general_log=1`: the statement word ends where a variable or a name starts.
    let w = &w[..w.iter().position(|b| matches!(b, b'@' | b'.' | b'$' | b':')).unwrap_or(w.len())];
    let statement =
        STACKED_STATEMENT_TABLE.contains(w) || starts_with_ci_word(w, b"sp_") || starts_with_ci_word(w, b"xp_");
    statement.then(|| Hit::new(1, lead_at, (lead_at + at + w.len() + 24).min(v.len())))
}

/// Statement words of MySQL, PostgreSQL, MSSQL, Oracle and SQLite that may start a stacked
/// query (sorted).
const STACKED_STATEMENTS: &[&[u8]; 79] = &[
    b"abort",
    b"alter",
    b"analyse",
    b"analyze",
    b"attach",
    b"backup",
    b"begin",
    b"bulk",
    b"call",
    b"change",
    b"checkpoint",
    b"clone",
    b"close",
    b"cluster",
    b"comment",
    b"commit",
    b"copy",
    b"create",
    b"dbcc",
    b"deallocate",
    b"declare",
    b"delete",
    b"describe",
    b"detach",
    b"discard",
    b"do",
    b"drop",
    b"exec",
    b"execute",
    b"explain",
    b"fetch",
    b"flush",
    b"grant",
    b"handler",
    b"import",
    b"insert",
    b"install",
    b"kill",
    b"listen",
    b"load",
    b"lock",
    b"merge",
    b"notify",
    b"pragma",
    b"prepare",
    b"purge",
    b"reassign",
    b"reconfigure",
    b"refresh",
    b"reindex",
    b"release",
    b"rename",
    b"replace",
    b"reset",
    b"resignal",
    b"restart",
    b"restore",
    b"revoke",
    b"rollback",
    b"savepoint",
    b"select",
    b"set",
    b"show",
    b"shutdown",
    b"signal",
    b"start",
    b"stop",
    b"table",
    b"truncate",
    b"uninstall",
    b"unlock",
    b"update",
    b"upsert",
    b"use",
    b"vacuum",
    b"values",
    b"waitfor",
    b"with",
    b"xa",
];
static STACKED_STATEMENT_TABLE: Keywords<79> = Keywords::new(STACKED_STATEMENTS);

/// A number's comparison turned into a tautology or a contradiction, the whole value:
/// `1 or true`, `1 and false`, `-1 or not false`, `1 or id>0` (paranoia 1: a boolean literal or
/// a comparison is SQL); `1 or 1`, `1 and 0`, `1 xor 1` at paranoia 2 (`1 or 2` is prose too).
fn numeric_tautology(v: &[u8], level: u8) -> Option<Hit> {
    // The words skip comments: `1 or true-- -` reads as `1 or true`.
    let mut words = Words { v, i: 0 };
    let mut word = || words.next().map(|(w, _)| w);
    let mut first = word()?;
    if first == b"-" {
        first = word()?;
    }
    if !first.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // `||` and `&&` come as two one-byte words.
    let op = word()?;
    if (op == b"|" || op == b"&") && word()? != op {
        return None;
    }
    if !(eq(op, b"or") || eq(op, b"and") || eq(op, b"xor") || op == b"|" || op == b"&") {
        return None;
    }
    // What follows, up to five words (one more than any shape below reads).
    let mut after: [&[u8]; 5] = [b""; 5];
    let mut n = 0;
    while n < after.len() {
        let Some(w) = word() else { break };
        after[n] = w;
        n += 1;
    }
    let rest = &after[..n];
    let boolean = |w: &[u8]| eq(w, b"true") || eq(w, b"false") || eq(w, b"null");
    let comparison = |w: &[u8]| matches!(w, b"=" | b"<" | b">" | b"!");
    let lvl = match rest {
        [w] if boolean(w) => 1,
        // PostgreSQL's boolean input: `0 or 't'`, `0 or 'yes'`.
        [q, w, q2] if *q == b"'" && *q2 == b"'" && (boolean(w) || reads_as_true(w)) => 1,
        // `0 or id between 0 and 9`, `0 or not id=0`, `0 or bool(1)`: SQL's own grammar.
        [a, between, ..] if is_word(a[0]) && eq(between, b"between") => 1,
        [not, a, c, ..] if eq(not, b"not") && is_word(a[0]) && comparison(c) => 1,
        [f, open, ..] if f.iter().all(|&b| is_word(b)) && !f[0].is_ascii_digit() && *open == b"(" => 1,
        [not, w] if eq(not, b"not") && (boolean(w) || w.iter().all(u8::is_ascii_digit)) => 1,
        [a, c, ..] if is_word(a[0]) && comparison(c) && rest.len() <= 4 => 1,
        [w] if w.iter().all(|&b| is_word(b)) => 2,
        [minus, w] if *minus == b"-" && w.iter().all(u8::is_ascii_digit) => 2,
        _ => return None,
    };
    (lvl <= level).then(|| Hit::new(lvl, 0, v.len()))
}

/// A number, or a word PostgreSQL's boolean input reads as true (`t`, `yes`, `on`, ...): what a
/// tautology after a break-out compares with (`'or' 1`, `0 or 'yes'`).
fn reads_as_true(w: &[u8]) -> bool {
    (!w.is_empty() && w.iter().all(u8::is_ascii_digit))
        || [&b"true"[..], b"t", b"yes", b"y", b"on"].iter().any(|t| eq(w, t))
}

fn strip_trailing_comment(v: &[u8]) -> &[u8] {
    if v.ends_with(b"*/") {
        if let Some(open) = v.windows(2).rposition(|w| w == b"/*") {
            return v[..open].trim_ascii_end();
        }
    }
    v
}

/// Boundary values that probe integer overflow or the PHP/Java float-parsing hang, sent alone.
fn magic_number(v: &[u8]) -> Option<Hit> {
    const N: &[&[u8]] = &[
        b"4294967295",
        b"4294967296",
        b"2147483647",
        b"2147483648",
        b"-2147483648",
        b"-2147483649",
        b"9223372036854775807",
        b"9223372036854775808",
        b"18446744073709551615",
        b"18446744073709551616",
        b"2.2250738585072011e-308",
        b"2.2250738585072012e-308",
        b"1e309",
    ];
    let t = v.trim_ascii();
    N.iter().any(|n| t.eq_ignore_ascii_case(n)).then(|| Hit::new(1, 0, v.len()))
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

/// Catalogs and system databases an application never names in a parameter (sorted).
const CATALOGS: &[&[u8]] = &[
    b"all_tab_columns",
    b"all_tables",
    b"information_schema",
    b"msdb",
    b"msysaccessobjects",
    b"msysobjects",
    b"msysqueries",
    b"msysrelationships",
    b"mysql.db",
    b"mysql.user",
    b"northwind",
    b"pg_catalog",
    b"pg_shadow",
    b"pg_user",
    b"schema_name",
    b"sqlite_master",
    b"sqlite_schema",
    b"sqlite_temp_master",
    b"sys.databases",
    b"sys.objects",
    b"sys.sql_logins",
    b"sys.tables",
    b"syscolumns",
    b"sysdatabases",
    b"sysobjects",
    b"table_schema",
    b"tempdb",
    b"user_tab_columns",
    b"user_tables",
];

/// A catalog name, alone or qualified (`information_schema.tables`), in any case.
fn is_catalog(w: &[u8]) -> bool {
    static BY_FIRST: [(u16, u16); 256] = first_byte_ranges(CATALOGS);
    // The shortest catalog name has four bytes.
    if w.len() < 4 {
        return false;
    }
    let (from, to) = BY_FIRST[w[0].to_ascii_lowercase() as usize];
    let second = w[1].to_ascii_lowercase();
    CATALOGS[from as usize..to as usize].iter().any(|c| {
        c[1] == second
            && w.len() >= c.len()
            && w[..c.len()].eq_ignore_ascii_case(c)
            && w.get(c.len()).is_none_or(|&b| b == b'.' || !is_word(b))
    })
}

/// Functions that name the database itself.
fn is_catalog_function(w: &[u8]) -> bool {
    const F: &[&[u8]] = &[
        b"database",
        b"db_name",
        b"schema",
        b"user_name",
        b"current_database",
        b"current_schema",
        b"lo_import",
        b"lo_export",
        b"lo_get",
        b"lo_put",
        b"pg_read_file",
        b"pg_ls_dir",
        b"div",
        b"unistr",
    ];
    F.iter().any(|f| eq(w, f))
}

fn is_statement(w: &[u8]) -> bool {
    const S: &[&[u8]] = &[
        b"select",
        b"insert",
        b"update",
        b"delete",
        b"drop",
        b"create",
        b"alter",
        b"truncate",
        b"exec",
        b"execute",
        b"declare",
        b"shutdown",
        b"waitfor",
        b"grant",
        b"revoke",
        b"replace",
    ];
    S.iter().any(|s| eq(w, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqli(s: &str, level: u8) -> bool {
        check(s.as_bytes(), Shape::of(s.as_bytes()), true, level).is_some()
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
            "He said 'hello'-- and left",
            "rock'n'roll -- live",
            "the '#general' channel",
            "'quoted' # not a comment",
            "7\" #2 CIRCULAR NEEDLE",
            "\"#2 MOM\"",
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
            // Login bypasses: a comment after the quote that closes the name.
            "admin'-- -",
            "admin' -- ",
            "admin'#",
            "' #",
            "admin')-- -",
            "admin\"#",
        ] {
            let s2 = String::from_utf8(super::super::decode::canonical(s.as_bytes()).into_owned()).unwrap();
            assert!(sqli(&s2, 1), "{s}");
        }
    }

    #[test]
    fn the_prefilter_keeps_sql_words_and_skips_plain_tokens() {
        let pass = |v: &[u8]| might_be_sql(v, Shape::of(v));
        assert!(pass(b"select password from users where 1"));
        assert!(pass(b"case when 1 then 2 end"));
        assert!(pass(b"1 or 1"));
        assert!(pass(b"x' or 1=1"));
        assert!(!pass(b"hello world"));
        assert!(!pass(b"221B Baker Street"));
        assert!(!pass(b"550e8400-e29b-41d4-a716-446655440000"));
        assert!(!pass(b"https://example.com/a?b=c&d=e"));
        assert!(!pass(b"   "));
        assert!(!pass(b"Conan O'Brien"));
        assert!(!pass(b"Digestive biscuits (500 g)"));
    }

    #[test]
    fn sql_words_are_sorted_lower_case_for_binary_search() {
        assert!(SQL_WORDS.windows(2).all(|w| w[0] < w[1]));
        assert!(SQL_WORDS.iter().all(|c| !c.iter().any(u8::is_ascii_uppercase) && c.len() <= 16));
    }

    #[test]
    fn phrase_words_are_sorted_lower_case_for_binary_search() {
        assert!(PHRASE_WORDS.windows(2).all(|w| w[0] < w[1]));
        assert!(PHRASE_WORDS.iter().all(|c| !c.iter().any(u8::is_ascii_uppercase)));
    }

    #[test]
    fn catalogs_are_sorted_lower_case_for_binary_search() {
        assert!(CATALOGS.windows(2).all(|w| w[0] < w[1]));
        assert!(CATALOGS.iter().all(|c| !c.iter().any(u8::is_ascii_uppercase)));
    }

    /// Outside tester o1 ran each through a sidecar against PostgreSQL 15: every one reached the
    /// database (`COPY ... FROM PROGRAM 'id'` ran `id`) with no event.
    #[test]
    fn statements_stacked_after_a_break_out_are_caught_at_paranoia_one() {
        for s in [
            "x';copy users(name) from program 'id';--",
            "1;copy users(name) from program 'id'",
            "x';grant all on users to public;--",
            "x';create extension if not exists plpgsql;--",
            "x';set role postgres;select 1 where ''='",
            "1;create or replace function f() returns text as $$select current_user$$ language sql",
            "1;merge into users u using (select 1) s on true when matched then delete",
            "1;truncate users",
            "1; reset role",
            "1;sp_configure 'xp_cmdshell',1",
            r"1;backup database master to disk='\\a\b'",
            "1;select current_user",
            "-1;/**/grant all on users to public",
            "x');set session authorization postgres--",
            "';show tables",
            // Past an empty statement, a comment, text with blanks; a variable glued to `set`;
            // MySQL's plugin and replication statements (review).
            "x';;grant all on users to public;--",
            "1;;copy users(name) from program 'id'",
            "x'/**/;grant all on users to public",
            "a b';grant all on users to public;--",
            "1;set@@global.general_log=1",
            "1;install plugin x soname 'evil.so'",
            "1;change master to master_host='evil'",
        ] {
            assert!(sqli(s, 1), "{s}");
        }
    }

    #[test]
    fn a_word_then_a_semicolon_is_prose_not_a_stacked_statement() {
        for s in [
            "fine; drop it",
            "I like it; set it up tomorrow",
            "Step 1; copy the file to the server",
            "done; show me more",
            "text/html;charset=utf-8",
            "max-age=0; use this",
            "O'Brien; select a seat",
            "6-4;set two",
            "she said 'hi'; set it aside",
        ] {
            assert!(!sqli(s, 1), "{s}");
        }
    }

    /// A break-out padded past what libinjection reads was not seen (outside tester o1: the
    /// padded `' or 1=1--` returned every row).
    #[test]
    fn padding_before_the_break_out_does_not_hide_it() {
        for pad in ["x".repeat(2060), "Great product, would buy again. ".repeat(70), "a".repeat(60_000)] {
            for attack in ["' or 1=1--", "' or 1=1#", "\" or 1=1--"] {
                let s = format!("{pad}{attack}");
                assert!(sqli(&s, 1), "{} bytes of padding, then {attack}", pad.len());
                // The other kind of quote early in the padding; the same kind doubled or escaped
                // (a quote inside the string); blanks or a comment after the break-out (review).
                let other = if attack.starts_with('\'') { "\"" } else { "'" };
                let q = &attack[..1];
                for s in [
                    format!("a{other}b {pad}{attack}"),
                    format!("x{q}{q}{pad}{attack}"),
                    format!("x\\{q}{pad}{attack}"),
                    format!("x{q}{}{}", " ".repeat(3000), &attack[1..]),
                    format!("x{q}/*{pad}*/{}", &attack[1..]),
                ] {
                    assert!(sqli(&s, 1), "{} bytes of padding: {}...", s.len(), &s[..12]);
                }
                let s = format!("a{other}b {pad}{attack}");
                assert!(sqli(&s, 1), "{} bytes of padding, then {attack}", pad.len());
            }
        }
    }

    /// Outside tester q2: bytes no SQL lexer reads, on the line after a line comment, hid the
    /// injection before it.
    #[test]
    fn what_follows_a_line_comment_does_not_hide_the_injection() {
        for attack in ["1' OR 1=1--", "1' OR 1=1#", "x' union select password from users--"] {
            for tail in ["\n\x1b[31m", "\n\x1b[31m\"}", "\r\n\x07\x07", "\n}}}{{{", "\n\x1b"] {
                let s = format!("{attack}{tail}");
                assert!(sqli(&s, 1), "{s:?}");
                // A harmless commented line first, or padding before (the review, tester s2).
                for head in [
                    "#\n".to_string(),
                    "a--b\n".to_string(),
                    format!("{}\n", "a".repeat(2100)),
                    "a".repeat(2100) + " ",
                    "#\n".repeat(40),
                    "'#\n".repeat(40),
                ] {
                    let s = format!("{head}{attack}{tail}");
                    assert!(sqli(&s, 1), "{}...", &s[s.len().saturating_sub(40)..]);
                }
            }
        }
        for text in ["# Notes\nbuy milk", "-- \nregards, Ann", "see #4 -- fixed\nthanks"] {
            assert!(!sqli(text, 1), "{text:?}");
        }
    }

    /// Tautologies PostgreSQL and SQLite read as true (o1: `'or'1` returned every row), and a
    /// number's, whole values: a boolean literal or a comparison at paranoia 1, numbers alone
    /// at 2 (`1 or 2` is prose too).
    #[test]
    fn tautologies_glued_to_quotes_or_after_a_number_are_caught() {
        for s in [
            "'or'1",
            "'or'true",
            "'or'yes",
            "x'or'1",
            "'||'1",
            "a 'or'1",
            "'or' 1",
            "x 'or' true",
            "1 or true",
            "1 and false",
            "-1 or not false",
            "1 or id>0",
            "1 || true",
            "1 or true-- -",
            // PostgreSQL's readings of true, and SQL grammar after a number (tester p1).
            "0 or 't'",
            "0 or 'yes'",
            "0 or id between 0 and 9",
            "0 or not id=0",
            "0 or bool(1)",
            // A quote after a backslash ends a PostgreSQL string (tester p1).
            "x\\' or 1=1--",
            "\\' or true--",
            "x\\' or name is not null--",
        ] {
            assert!(sqli(s, 1), "{s}");
        }
        for s in ["1 or 1", "1 and 0", "1 xor 1", "1 or id"] {
            assert!(!sqli(s, 1) && sqli(s, 2), "{s}");
        }
        for s in [
            "she said 'or' twice",
            "CHRISTMAS STOCKING \"NOT\" STUFFER",
            "\"NOT\" STUFFER",
            "1 or 2 hours",
            "the 'and' key",
            "pick 1 or 2",
        ] {
            assert!(!sqli(s, 1), "{s}");
        }
    }

    #[test]
    fn stacked_statements_wait_for_paranoia_two() {
        assert!(!sqli("fine; drop it", 1));
        assert!(sqli("abc; drop table users", 2));
    }
}

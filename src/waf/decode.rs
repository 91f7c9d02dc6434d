//! The decodings attackers use to hide a payload from a filter and have the application undo it,
//! and small byte helpers the detectors share. Nothing here allocates unless a value changes.

use std::borrow::Cow;

/// What a detector matched: the span in the text it read, and the paranoia level of its check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hit {
    pub level: u8,
    pub start: usize,
    pub end: usize,
}

impl Hit {
    pub fn new(level: u8, start: usize, end: usize) -> Hit {
        Hit { level, start, end }
    }
}

/// Which kinds of bytes a value holds, from one pass over it: the detectors skip the checks whose
/// syntax cannot occur (most values are words, numbers and identifiers, and need almost none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape(u64);

const PUNCTUATION: &[u8; 32] = b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
const WS: u64 = 1 << 32;
const CRLF: u64 = 1 << 33;
const CTRL: u64 = 1 << 34;
const HIGH: u64 = 1 << 35;
const DIGIT: u64 = 1 << 36;
const ALPHA: u64 = 1 << 37;

const fn class_of(b: u8) -> u64 {
    let mut i = 0;
    while i < PUNCTUATION.len() {
        if PUNCTUATION[i] == b {
            return 1 << i;
        }
        i += 1;
    }
    match b {
        b'\r' | b'\n' => CRLF | WS,
        b' ' | b'\t' | 0x0b | 0x0c => WS,
        b'0'..=b'9' => DIGIT,
        b'a'..=b'z' | b'A'..=b'Z' => ALPHA,
        0x80..=0xff => HIGH,
        _ => CTRL,
    }
}

static CLASSES: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = class_of(b as u8);
        b += 1;
    }
    t
};

impl Shape {
    pub fn of(v: &[u8]) -> Shape {
        Shape(v.iter().fold(0, |acc, &b| acc | CLASSES[b as usize]))
    }

    /// Whether any of these punctuation bytes occurs.
    #[cfg(test)]
    pub fn any(self, bytes: &[u8]) -> bool {
        self.has(Shape::mask(bytes))
    }

    /// The classes of these punctuation bytes, for [`Shape::has`]; callers compute it at compile
    /// time (`shape.has(const { Shape::mask(b"<>") })`), so a check is one `and`.
    pub const fn mask(bytes: &[u8]) -> u64 {
        let mut mask = 0;
        let mut i = 0;
        while i < bytes.len() {
            mask |= class_of(bytes[i]);
            i += 1;
        }
        mask
    }

    /// Whether any byte of the classes in `mask` occurs.
    #[inline(always)]
    pub fn has(self, mask: u64) -> bool {
        self.0 & mask != 0
    }

    pub fn whitespace(self) -> bool {
        self.0 & WS != 0
    }

    pub fn line_break(self) -> bool {
        self.0 & CRLF != 0
    }

    pub fn control(self) -> bool {
        self.0 & CTRL != 0
    }

    pub fn non_ascii(self) -> bool {
        self.0 & HIGH != 0
    }

    pub fn digit(self) -> bool {
        self.0 & DIGIT != 0
    }

    /// Whether a byte that can start an escape [`canonical`] undoes is present: `%`, `&`, `\\`,
    /// NUL (a control byte) or a lead byte of an overlong or fullwidth form (non-ASCII).
    pub fn may_escape(self) -> bool {
        const MASK: u64 = Shape::mask(b"%&\\") | CTRL | HIGH;
        self.0 & MASK != 0
    }
}

/// How often a value is decoded again: URL-in-URL-in-entity is three; a fourth layer is noise.
pub const MAX_ROUNDS: usize = 3;

/// Bytes that may start an encoded form.
fn may_start(b: u8) -> bool {
    matches!(b, b'%' | b'&' | b'\\' | 0 | 0xC0 | 0xC1 | 0xE0 | 0xEF | 0xF0)
}

/// The value after the decodings attackers use, applied until nothing changes (at most
/// [`MAX_ROUNDS`] times). Every decoding shortens the text, so the result is never longer than
/// the input and the cost is bounded by `MAX_ROUNDS` passes.
pub fn canonical(input: &[u8]) -> Cow<'_, [u8]> {
    let mut text = Cow::Borrowed(input);
    for _ in 0..MAX_ROUNDS {
        match round(&text) {
            Some(next) => text = Cow::Owned(next),
            None => break,
        }
    }
    text
}

/// One decoding pass; `None` when nothing decodes (without allocating).
fn round(b: &[u8]) -> Option<Vec<u8>> {
    let mut i = b.iter().position(|&c| may_start(c))?;
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    while i < b.len() {
        if !may_start(b[i]) {
            i += 1;
            continue;
        }
        if let Some((used, ch)) = decode_at(b, i) {
            let o = out.get_or_insert_with(|| Vec::with_capacity(b.len()));
            o.extend_from_slice(&b[copied..i]);
            ch.push_to(o);
            i += used;
            copied = i;
        } else {
            i += 1;
        }
    }
    let mut o = out?;
    o.extend_from_slice(&b[copied..]);
    Some(o)
}

/// A decoded character: nothing (a removed NUL), one byte, or a UTF-8 sequence.
enum Decoded {
    Nothing,
    Byte(u8),
    Char(char),
}

impl Decoded {
    fn push_to(self, out: &mut Vec<u8>) {
        match self {
            Decoded::Nothing => {}
            Decoded::Byte(b) => out.push(b),
            Decoded::Char(c) => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }

    /// A code point as the text an application would see, folded to ASCII where a lenient
    /// decoder (IIS best-fit, JavaScript, HTML) makes fullwidth forms their ASCII twins.
    fn code_point(cp: u32, used: usize) -> Option<Decoded> {
        let folded = fold_fullwidth(cp);
        let d = match folded {
            0 => Decoded::Nothing,
            1..=0x7f => Decoded::Byte(folded as u8),
            _ => Decoded::Char(char::from_u32(folded)?),
        };
        // A multi-byte UTF-8 encoding may not be shorter than its escape: keeps decoding shrinking.
        let len = match &d {
            Decoded::Char(c) => c.len_utf8(),
            Decoded::Byte(_) => 1,
            Decoded::Nothing => 0,
        };
        (len <= used).then_some(d)
    }
}

fn fold_fullwidth(cp: u32) -> u32 {
    match cp {
        0xFF01..=0xFF5E => cp - 0xFEE0,
        0x3000 => 0x20,
        _ => cp,
    }
}

/// A C0 control byte other than tab and line breaks: not in text (a binary file's, a protobuf
/// message's tags and lengths).
pub fn is_control(b: u8) -> bool {
    b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')
}

/// Text as a body is: UTF-8 (but for a character cut at its end) with fewer than a quarter
/// control bytes (a NUL or a form feed added to an attack does not make it binary; a tar
/// header's NUL padding does). A byte that is not UTF-8 makes a body binary: read as text,
/// compiled files that are mostly printable (`.mo` catalogs, `.pyc`) were refused.
pub fn utf8_text(bytes: &[u8]) -> bool {
    let utf8 = match std::str::from_utf8(bytes) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    };
    utf8 && bytes.iter().filter(|&&b| is_control(b)).count() * 4 < bytes.len().max(1)
}

/// Text as a protobuf field or a string in JSON is, to an app that reads it as such:
/// [`utf8_text`], or bytes at least three quarters printable ASCII (Latin-1 text; a `bytes`
/// field an app decodes leniently, a stray byte before an attack). Binary data (an image, a
/// hash, compressed bytes: about 38% printable) is not.
pub fn reads_as_text(bytes: &[u8]) -> bool {
    if utf8_text(bytes) {
        return true;
    }
    let printable = bytes.iter().filter(|&&b| is_text_byte(b)).count();
    printable * 4 >= bytes.len() * 3
}

/// Printable ASCII, a tab or a line break.
pub fn is_text_byte(b: u8) -> bool {
    (0x20..=0x7e).contains(&b) || matches!(b, b'\t' | b'\n' | b'\r')
}

pub fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn hex_run(b: &[u8], max: usize) -> (u32, usize) {
    let mut value = 0u32;
    let mut n = 0;
    while n < max && n < b.len() {
        match hex(b[n]) {
            Some(h) => value = value << 4 | u32::from(h),
            None => break,
        }
        n += 1;
    }
    (value, n)
}

fn dec_run(b: &[u8], max: usize) -> (u32, usize) {
    let mut value = 0u32;
    let mut n = 0;
    while n < max && n < b.len() && b[n].is_ascii_digit() {
        value = value * 10 + u32::from(b[n] - b'0');
        n += 1;
    }
    (value, n)
}

/// The encoded form starting at `b[i]`, if any: how many bytes it spans and what it means.
fn decode_at(b: &[u8], i: usize) -> Option<(usize, Decoded)> {
    let rest = &b[i..];
    match rest[0] {
        0 => Some((1, Decoded::Nothing)),
        b'%' => {
            if rest.len() >= 6 && matches!(rest[1], b'u' | b'U') {
                let (cp, n) = hex_run(&rest[2..], 4);
                if n == 4 {
                    return Decoded::code_point(cp, 6).map(|d| (6, d));
                }
            }
            let hi = hex(*rest.get(1)?)?;
            let lo = hex(*rest.get(2)?)?;
            Some((3, Decoded::Byte(hi << 4 | lo)))
        }
        b'\\' => match rest.get(1)? {
            b'u' | b'U' => {
                if rest.get(2) == Some(&b'{') {
                    let (cp, n) = hex_run(&rest[3..], 6);
                    if n > 0 && rest.get(3 + n) == Some(&b'}') {
                        return Decoded::code_point(cp, n + 4).map(|d| (n + 4, d));
                    }
                    return None;
                }
                let (cp, n) = hex_run(&rest[2..], 4);
                (n == 4).then_some(())?;
                Decoded::code_point(cp, 6).map(|d| (6, d))
            }
            b'x' | b'X' => {
                let (v, n) = hex_run(&rest[2..], 2);
                (n == 2).then_some((4, Decoded::Byte(v as u8)))
            }
            _ => None,
        },
        b'&' => entity(rest),
        0xC0 | 0xC1 => {
            // Overlong two-byte form of an ASCII character (`%c0%ae` is `.`).
            let c = *rest.get(1)?;
            (c & 0xC0 == 0x80).then(|| (2, Decoded::Byte(((rest[0] & 0x1F) << 6) | (c & 0x3F))))
        }
        0xE0 => {
            let (c1, c2) = (*rest.get(1)?, *rest.get(2)?);
            if (0x80..=0x9F).contains(&c1) && c2 & 0xC0 == 0x80 {
                let cp = (u32::from(c1 & 0x3F) << 6) | u32::from(c2 & 0x3F);
                Decoded::code_point(cp, 3).map(|d| (3, d))
            } else {
                None
            }
        }
        0xF0 => {
            let (c1, c2, c3) = (*rest.get(1)?, *rest.get(2)?, *rest.get(3)?);
            if (0x80..=0x8F).contains(&c1) && c2 & 0xC0 == 0x80 && c3 & 0xC0 == 0x80 {
                let cp = (u32::from(c1 & 0x3F) << 12) | (u32::from(c2 & 0x3F) << 6) | u32::from(c3 & 0x3F);
                Decoded::code_point(cp, 4).map(|d| (4, d))
            } else {
                None
            }
        }
        0xEF => {
            // Fullwidth forms U+FF01..U+FF5E are EF BC 81..BF and EF BD 80..9E.
            let (c1, c2) = (*rest.get(1)?, *rest.get(2)?);
            let cp = match (c1, c2) {
                (0xBC, 0x81..=0xBF) | (0xBD, 0x80..=0x9E) => {
                    0xF000 | (u32::from(c1 & 0x3F) << 6) | u32::from(c2 & 0x3F)
                }
                _ => return None,
            };
            Some((3, Decoded::Byte(fold_fullwidth(cp) as u8)))
        }
        _ => None,
    }
}

/// The HTML character references a browser decodes in attribute values and text: numeric ones
/// with or without `;`, and the named ones that spell syntax.
fn entity(rest: &[u8]) -> Option<(usize, Decoded)> {
    if rest.get(1) == Some(&b'#') {
        // Browsers (and Commons Text's unescaper) read any number of leading zeros:
        // `&#00000000000000000000123;` is `{`.
        let hex = matches!(rest.get(2), Some(b'x' | b'X'));
        let digits_at = if hex { 3 } else { 2 };
        let zeros = rest.get(digits_at..).map_or(0, |d| d.iter().take(64).take_while(|&&b| b == b'0').count());
        let zeros = match rest.get(digits_at + zeros) {
            Some(b) if b.is_ascii_hexdigit() => zeros,
            _ => zeros.saturating_sub(1),
        };
        let (cp, n, start) = match hex {
            true => {
                let (cp, n) = hex_run(&rest[3 + zeros..], 8);
                (cp, n, 3 + zeros)
            }
            false => {
                let (cp, n) = dec_run(&rest[2 + zeros..], 8);
                (cp, n, 2 + zeros)
            }
        };
        if n == 0 {
            return None;
        }
        let mut used = start + n;
        if rest.get(used) == Some(&b';') {
            used += 1;
        }
        return Decoded::code_point(cp, used).map(|d| (used, d));
    }
    let end = rest.iter().take(12).position(|&c| c == b';')?;
    let name = &rest[1..end];
    let ch = match name {
        b"lt" | b"LT" => b'<',
        b"gt" | b"GT" => b'>',
        b"quot" | b"QUOT" => b'"',
        b"apos" => b'\'',
        b"amp" | b"AMP" => b'&',
        b"colon" => b':',
        b"sol" => b'/',
        b"bsol" => b'\\',
        b"lpar" => b'(',
        b"rpar" => b')',
        b"semi" => b';',
        b"equals" => b'=',
        b"grave" => b'`',
        b"lsqb" | b"lbrack" => b'[',
        b"rsqb" | b"rbrack" => b']',
        b"lcub" | b"lbrace" => b'{',
        b"rcub" | b"rbrace" => b'}',
        b"excl" => b'!',
        b"num" => b'#',
        b"dollar" => b'$',
        b"percnt" => b'%',
        b"period" => b'.',
        b"comma" => b',',
        b"plus" => b'+',
        b"ast" | b"midast" => b'*',
        b"vert" | b"verbar" => b'|',
        b"Tab" | b"tab" => b'\t',
        b"NewLine" | b"newline" => b'\n',
        b"nbsp" => b' ',
        _ => return None,
    };
    Some((end + 1, Decoded::Byte(ch)))
}

pub use crate::query::form_component;

/// Text for logs: printable ASCII as is (backslash and quote escaped), the rest as `\xNN`, cut
/// to `max` characters of output with `...` when cut.
pub fn escape(bytes: &[u8], max: usize) -> String {
    let mut out = String::with_capacity(max.min(bytes.len() * 4) + 3);
    for &b in bytes {
        let piece_len = match b {
            b'\\' | b'"' => 2,
            0x20..=0x7e => 1,
            _ => 4,
        };
        if out.len() + piece_len > max {
            out.push_str("...");
            return out;
        }
        match b {
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            0x20..=0x7e => out.push(b as char),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\x");
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 0xf) as usize] as char);
            }
        }
    }
    out
}

/// A word of at most 16 bytes packed big-endian into a `u128`, so sorted word tables become
/// sorted integer tables: a lookup is a binary search without a single `memcmp`.
pub const fn word_key(w: &[u8]) -> u128 {
    let mut key = 0u128;
    let mut i = 0;
    while i < 16 {
        key <<= 8;
        if i < w.len() {
            key |= w[i] as u128;
        }
        i += 1;
    }
    key
}

/// The keys of a sorted table of lower-case words (each at most 16 bytes), built at compile time.
pub const fn word_keys<const N: usize>(words: &[&[u8]; N]) -> [u128; N] {
    let mut keys = [0u128; N];
    let mut i = 0;
    while i < N {
        assert!(words[i].len() <= 16);
        keys[i] = word_key(words[i]);
        i += 1;
    }
    keys
}

/// Slots of a [`WordTable`]'s hash index: at least twice as many as words.
const SLOTS: usize = 512;

/// A table of lower-case words (each at most 16 bytes) with a hash index over their keys,
/// built at compile time: a lookup is one multiplication and, on average, little more than one
/// comparison of keys.
pub struct WordTable<const N: usize> {
    keys: [u128; N],
    /// Index + 1 of the word in each slot (open addressing, linear probing), 0 when empty.
    slots: [u16; SLOTS],
}

const fn slot_of(key: u128) -> usize {
    let x = (key as u64) ^ ((key >> 64) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x.wrapping_mul(0xd6e8_feb8_6659_fd93) >> (64 - SLOTS.trailing_zeros())) as usize
}

impl<const N: usize> WordTable<N> {
    pub const fn new(words: &[&[u8]; N]) -> WordTable<N> {
        assert!(2 * N <= SLOTS);
        let keys = word_keys(words);
        let mut slots = [0u16; SLOTS];
        let mut i = 0;
        while i < N {
            let mut s = slot_of(keys[i]);
            while slots[s] != 0 {
                assert!(keys[slots[s] as usize - 1] != keys[i], "a word twice");
                s = (s + 1) % SLOTS;
            }
            slots[s] = i as u16 + 1;
            i += 1;
        }
        WordTable { keys, slots }
    }

    /// The place in the table of the word with this [`lower_key`].
    #[inline]
    pub fn index_of(&self, key: u128) -> Option<usize> {
        if key == 0 {
            return None;
        }
        let mut s = slot_of(key);
        loop {
            let at = self.slots[s] as usize;
            if at == 0 {
                return None;
            }
            if self.keys[at - 1] == key {
                return Some(at - 1);
            }
            s = (s + 1) % SLOTS;
        }
    }

    /// Whether `w`, in any case, is in the table.
    #[inline]
    pub fn contains(&self, w: &[u8]) -> bool {
        self.index_of(lower_key(w)).is_some()
    }
}

/// The [`word_key`] of `w` lower-cased, or 0 when `w` is empty or longer than 16 bytes: equal
/// keys mean the same word without regard to ASCII case (a word holds no NUL byte).
pub fn lower_key(w: &[u8]) -> u128 {
    if w.is_empty() || w.len() > 16 {
        return 0;
    }
    let mut key = 0u128;
    for &b in w {
        key = key << 8 | u128::from(b.to_ascii_lowercase());
    }
    key << (8 * (16 - w.len()))
}

/// Per first byte, the range of a sorted table of lower-case words (each of at least two bytes)
/// that begins with it, built at compile time.
pub const fn first_byte_ranges(table: &[&[u8]]) -> [(u16, u16); 256] {
    let mut t = [(0u16, 0u16); 256];
    let mut i = 0;
    while i < table.len() {
        assert!(table[i].len() >= 2);
        let b = table[i][0] as usize;
        if t[b].1 == 0 {
            t[b].0 = i as u16;
        } else {
            // Sorted: the entries for one first byte are contiguous.
            assert!(t[b].1 == i as u16);
        }
        t[b].1 = i as u16 + 1;
        i += 1;
    }
    t
}

const LOW_BITS: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// Bit 7 of each byte of `word` that equals the byte broadcast in `pattern`; the lowest one
/// marks the first match (bits above a match may be false).
#[inline(always)]
fn zero_bytes(word: u64, pattern: u64) -> u64 {
    let t = word ^ pattern;
    t.wrapping_sub(LOW_BITS) & !t & HIGH_BITS
}

/// The first position from `from` holding `a` or `b`, eight bytes at a time.
pub fn find_either(hay: &[u8], from: usize, a: u8, b: u8) -> Option<usize> {
    let (pa, pb) = (u64::from_ne_bytes([a; 8]), u64::from_ne_bytes([b; 8]));
    let mut i = from;
    while let Some(chunk) = hay.get(i..i + 8) {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        let hits = zero_bytes(word, pa) | zero_bytes(word, pb);
        if hits != 0 {
            return Some(i + (hits.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    hay.get(i..)?.iter().position(|&c| c == a || c == b).map(|p| i + p)
}

/// The first position from `from` holding either of two lower-case ASCII letters in any case,
/// eight bytes at a time.
pub fn find_either_ci(hay: &[u8], from: usize, a: u8, b: u8) -> Option<usize> {
    const CASE: u64 = 0x2020_2020_2020_2020;
    let (pa, pb) = (u64::from_ne_bytes([a; 8]), u64::from_ne_bytes([b; 8]));
    let mut i = from;
    while let Some(chunk) = hay.get(i..i + 8) {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])) | CASE;
        let hits = zero_bytes(word, pa) | zero_bytes(word, pb);
        if hits != 0 {
            return Some(i + (hits.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    hay.get(i..)?.iter().position(|&c| c | 0x20 == a || c | 0x20 == b).map(|p| i + p)
}

/// The first position from `from` whose byte is in `set`: a loop tight enough to keep the
/// work done at each hit out of it.
#[inline]
pub fn find_in(hay: &[u8], from: usize, set: &[bool; 256]) -> Option<usize> {
    hay.get(from..)?.iter().position(|&b| set[b as usize]).map(|p| from + p)
}

/// A byte set for [`find_in`], built at compile time.
pub const fn byte_set(bytes: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < bytes.len() {
        t[bytes[i] as usize] = true;
        i += 1;
    }
    t
}

/// Where `needle` (lower-case ASCII) occurs in `hay` without regard to ASCII case, from `from`.
/// Candidates for the needle's first byte are found eight bytes at a time: `b | 0x20` equals
/// `first | 0x20` only for the two cases of a letter (or one other byte, which the comparison
/// after rejects).
pub fn find_ci(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let first = *needle.first()?;
    if hay.len() < needle.len() {
        return None;
    }
    let last_start = hay.len() - needle.len();
    let mut i = from;
    let folded = first | 0x20;
    let pattern = u64::from_ne_bytes([folded; 8]);
    const CASE: u64 = 0x2020_2020_2020_2020;
    while i <= last_start {
        if let Some(chunk) = hay.get(i..i + 8) {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
            let zero = zero_bytes(word | CASE, pattern);
            if zero == 0 {
                i += 8;
                continue;
            }
            // The lowest flagged byte is a true match; later ones may not be.
            i += (zero.trailing_zeros() / 8) as usize;
        } else if hay[i] | 0x20 != folded {
            i += 1;
            continue;
        }
        if i > last_start {
            return None;
        }
        if hay[i..i + needle.len()].eq_ignore_ascii_case(needle) {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// An uploaded file's name as the server that stores it reads it: the last path segment,
/// lower-cased, with the blanks some servers drop taken out (`wp-config. php`) and the trailing
/// dots and blanks Windows drops (`shell.php..`, `.htaccess.`).
pub fn upload_base_name(v: &[u8]) -> Vec<u8> {
    let mut name: Vec<u8> = v.iter().filter(|b| !b.is_ascii_whitespace()).map(u8::to_ascii_lowercase).collect();
    while name.last() == Some(&b'.') {
        name.pop();
    }
    let base_at = name.iter().rposition(|&b| b == b'/' || b == b'\\').map_or(0, |p| p + 1);
    name.drain(..base_at);
    name
}

pub fn ends_with_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.len() >= needle.len() && hay[hay.len() - needle.len()..].eq_ignore_ascii_case(needle)
}

/// Where `needle` occurs in `hay` from `from`, exactly: candidates for its first byte found eight
/// bytes at a time.
pub fn find_bytes(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let first = *needle.first()?;
    let mut i = from;
    while let Some(at) = find_either(hay, i, first, first) {
        if hay[at..].starts_with(needle) {
            return Some(at);
        }
        i = at + 1;
    }
    None
}

pub fn starts_with_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.len() >= needle.len() && hay[..needle.len()].eq_ignore_ascii_case(needle)
}

#[inline(always)]
pub fn is_word(b: u8) -> bool {
    WORD_BYTES[b as usize]
}

/// ASCII letters, digits and `_`.
static WORD_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c == b'_';
        b += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &[u8]) -> Vec<u8> {
        canonical(s).into_owned()
    }

    #[test]
    fn values_without_encodings_are_borrowed_not_copied() {
        for s in [&b"plain text"[..], b"Tom & Jerry", b"100% sure", b"C:\\Users\\me", b"a;b", b"caf\xc3\xa9"] {
            assert!(matches!(canonical(s), Cow::Borrowed(_)), "{s:?}");
        }
    }

    #[test]
    fn every_layer_attackers_use_is_undone() {
        let table: &[(&[u8], &[u8])] = &[
            (b"%3Cscript%3E", b"<script>"),
            (b"%253Cscript%253E", b"<script>"),
            (b"%25253Cscript%25253E", b"<script>"),
            (b"%u003Cscript%u003E", b"<script>"),
            (b"&lt;img src=x&gt;", b"<img src=x>"),
            (b"&#60;&#x3c;&#X3C&#0000060;", b"<<<<"),
            (b"&#x24;&#00000000000000000000000000000000000000000000000123;", b"${"),
            (b"&#x0000000000000000000000003c;&#0;", b"<"),
            (b"java&Tab;script&colon;", b"java\tscript:"),
            (b"\\u003cb\\x3e", b"<b>"),
            (b"\\u{3c}", b"<"),
            (b"%c0%ae%c0%ae/", b"../"),
            (b"\xc0\xae\xc0\xae\xc1\x9c", b"..\\"),
            (b"\xe0\x80\xae", b"."),
            (b"\xef\xbc\x9cscript\xef\xbc\x9e", b"<script>"),
            (b"%uff1cscript%uff1e", b"<script>"),
            (b"un%00ion", b"union"),
            (b"%26lt%3B", b"<"),
        ];
        for (input, want) in table {
            assert_eq!(canon(input), *want, "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn broken_escapes_are_left_alone() {
        for s in [&b"%"[..], b"%4", b"%zz", b"&#;", b"&#x;", b"&unknown;", b"\\u12", b"\\x4", b"\xc0", b"\xef\xbc"] {
            assert_eq!(canon(s), s.to_vec(), "{s:?}");
        }
    }

    #[test]
    fn decoding_stops_after_the_round_limit() {
        // Five layers: three are undone, two stay.
        assert_eq!(canon(b"%2525252541"), b"%2541".to_vec());
    }

    #[test]
    fn decoding_never_grows_a_value() {
        for s in [&b"&#x10FFFF;"[..], b"%u20AC", b"\\u20ac", b"&#8364", b"\\u{1F600}"] {
            assert!(canon(s).len() <= s.len(), "{s:?}");
        }
    }

    #[test]
    fn escaped_fragments_are_printable_and_short() {
        assert_eq!(escape(b"a\"b\\c\n\xff", 64), "a\\\"b\\\\c\\x0a\\xff");
        let long = escape(&[b'x'; 500], 64);
        assert!(long.len() <= 67 && long.ends_with("..."));
        assert!(escape(&[0u8; 100], 64).len() <= 67);
    }

    #[test]
    fn shapes_record_each_kind_of_byte() {
        let s = Shape::of(b"a b;\r");
        assert!(
            s.whitespace()
                && s.line_break()
                && s.has(const { Shape::mask(b";") })
                && !s.has(const { Shape::mask(b"<'") })
                && !s.digit()
        );
        let s = Shape::of(b"caf\xc3\xa9\x01");
        assert!(s.non_ascii() && s.control() && !s.whitespace());
        assert!(Shape::of(b"\\").any(b"\\") && Shape::of(b"~").any(b"~") && Shape::of(b"!").any(b"!"));
    }

    #[test]
    fn word_tables_find_words_in_any_case_and_nothing_else() {
        const WORDS: &[&[u8]; 3] = &[b"ab", b"abc", b"zz"];
        static TABLE: WordTable<3> = WordTable::new(WORDS);
        assert!(TABLE.contains(b"ABC") && TABLE.contains(b"ab") && TABLE.contains(b"zZ"));
        assert!(
            !TABLE.contains(b"a") && !TABLE.contains(b"abcd") && !TABLE.contains(b"") && !TABLE.contains(&[b'a'; 17])
        );
        assert_eq!(TABLE.index_of(lower_key(b"ZZ")), Some(2));
        // Many words, probing past collisions.
        static MANY: WordTable<200> = WordTable::new(&{
            let mut w: [&[u8]; 200] = [&[]; 200];
            let mut i = 0;
            while i < 200 {
                w[i] = NAMES[i].as_slice();
                i += 1;
            }
            w
        });
        static NAMES: [[u8; 3]; 200] = {
            let mut n = [[0u8; 3]; 200];
            let mut i = 0;
            while i < 200 {
                n[i] = [b'a' + (i / 26) as u8, b'a' + (i % 26) as u8, b'q'];
                i += 1;
            }
            n
        };
        for (i, name) in NAMES.iter().enumerate() {
            assert_eq!(MANY.index_of(lower_key(&name.to_ascii_uppercase())), Some(i));
        }
        assert!(!MANY.contains(b"zzq") && !MANY.contains(b"aa"));
        assert_eq!(word_key(b"abc"), u128::from_be_bytes(*b"abc\0\0\0\0\0\0\0\0\0\0\0\0\0"));
    }

    #[test]
    fn case_insensitive_search_finds_every_case() {
        assert_eq!(find_ci(b"xx UnIoN", b"union", 0), Some(3));
        assert_eq!(find_ci(b"union", b"union", 1), None);
        assert_eq!(find_ci(b"ab", b"abc", 0), None);
    }

    #[test]
    fn byte_search_agrees_with_a_naive_one() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            let hay: Vec<u8> = (0..len)
                .map(|k| [b'"', b'\\', b'a', 0x80, 0xa2, 0xdc, 0x22 ^ 0x80][((seed >> (k % 60)) % 7) as usize])
                .collect();
            for from in [0, 1, 5, 8, 9, 40] {
                let naive =
                    hay.get(from..).and_then(|r| r.iter().position(|&c| c == b'"' || c == b'\\')).map(|p| from + p);
                assert_eq!(find_either(&hay, from, b'"', b'\\'), naive, "{hay:?} {from}");
            }
        }
    }

    #[test]
    fn letter_search_agrees_with_a_naive_one() {
        let mut seed = 0x1234_5678_9abc_def1u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            let hay: Vec<u8> = (0..len)
                .map(|k| [b'f', b'F', b'i', b'I', b'x', 0x46 ^ 0x80, 0x06][((seed >> (k % 60)) % 7) as usize])
                .collect();
            for from in [0, 1, 5, 8, 9, 40] {
                let naive = hay
                    .get(from..)
                    .and_then(|r| r.iter().position(|&c| matches!(c, b'f' | b'F' | b'i' | b'I')))
                    .map(|p| from + p);
                assert_eq!(find_either_ci(&hay, from, b'f', b'i'), naive, "{hay:?} {from}");
            }
        }
    }

    #[test]
    fn case_insensitive_search_agrees_with_a_naive_one() {
        let naive = |hay: &[u8], needle: &[u8], from: usize| {
            (from..=hay.len().saturating_sub(needle.len()))
                .find(|&i| hay.len() >= needle.len() && hay[i..i + needle.len()].eq_ignore_ascii_case(needle))
        };
        // Every byte value around the needles' first bytes, at every offset across chunk edges.
        let alphabet = [b'a', b'A', b'b', b'@', b'`', b'\x01', b'\x81', b'(', b'\x08', b'u', b'U', b'/', b'*'];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            let hay: Vec<u8> =
                (0..len).map(|k| alphabet[((seed >> (k % 50)) as usize + k * 7) % alphabet.len()]).collect();
            for needle in [&b"a"[..], b"ab", b"ba", b"union", b"(", b"/*", b"@a", b"`b", b"aaaaaaaaa"] {
                for from in [0, 1, 7, 8, 9] {
                    assert_eq!(find_ci(&hay, needle, from), naive(&hay, needle, from), "{hay:?} {needle:?} {from}");
                }
            }
        }
    }
}

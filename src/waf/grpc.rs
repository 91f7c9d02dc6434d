//! gRPC requests, read a message at a time: [`GrpcMessages`] finds where each length-prefixed
//! message of a request body ends as its bytes go by (a streaming call is never held back for
//! more than its message in progress), and [`message`] reads one message's text without its
//! schema, as `protoc --decode_raw` does: every length-delimited field that holds UTF-8 is a
//! value to inspect, and one that is itself a message is walked in turn.

use std::io::Write as _;
use std::ops::Range;

use bytes::Bytes;

use super::body::json;
use super::decode::{is_control, is_text_byte, reads_as_text};
use super::{Class, Finding, LocationKind, Skips, Value, Waf};

/// How deep nested messages are walked; deeper ones are read as text only. Protobuf's own
/// parsers stop at 100; real schemas rarely pass ten.
const MAX_DEPTH: usize = 32;

/// A gRPC message's frame: a compression flag, then its length (big-endian).
const FRAME: usize = 5;

/// One message of a request body, whole.
#[derive(Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub compressed: bool,
    pub payload: &'a [u8],
}

/// What a piece of the body holds, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// A whole message: to inspect before its bytes go on.
    Message(Message<'a>),
    /// A message longer than what is inspected: its frame's length, and that it goes on (or is
    /// refused) unread.
    TooLong(u64),
    /// A frame whose flag is neither 0 nor 1: not gRPC. Let through, everything from here on
    /// goes on unread.
    Malformed,
}

/// Where the messages of one request body end, across its pieces however they are cut.
#[derive(Debug)]
pub struct GrpcMessages {
    limit: usize,
    /// A message in progress, its frame included (never more than `limit` + [`FRAME`] bytes).
    held: Vec<u8>,
    /// Bytes of a message longer than the limit still to pass on as they come.
    passing: u64,
}

/// A message refused, or a body that is not gRPC: nothing more of it goes on.
#[derive(Debug, PartialEq, Eq)]
pub struct Stopped;

impl GrpcMessages {
    /// Messages of up to `limit` bytes are inspected.
    pub fn new(limit: usize) -> Self {
        GrpcMessages { limit, held: Vec::new(), passing: 0 }
    }

    /// Takes `chunk`, the body's next bytes, calling `each` for every message that ends in it
    /// (and every one too long to read), and returns what may go on now: whole messages `each`
    /// let through, the bytes of one too long as they come; the rest of a message is held until
    /// it is whole. `each` returning `false` stops the body: nothing more of it goes on. A chunk
    /// that holds only whole messages goes on as it is, without a copy.
    pub fn push(&mut self, chunk: &Bytes, mut each: impl FnMut(Piece<'_>) -> bool) -> Result<Bytes, Stopped> {
        let len = chunk.len();
        let mut at = 0;
        // A held message completed: it goes on first, then `chunk` from `from`.
        let mut released = None::<Vec<u8>>;
        let mut from = 0;
        // Where what goes on of `chunk` ends: before the start of a message it does not finish.
        let mut upto = len;
        while at < len {
            if self.passing > 0 {
                let n = self.passing.min((len - at) as u64) as usize;
                self.passing -= n as u64;
                at += n;
                continue;
            }
            if !self.held.is_empty() {
                // Only at the start of a chunk: the frame first, then the rest of its message.
                let n = FRAME.saturating_sub(self.held.len()).min(len - at);
                self.held.extend_from_slice(&chunk[at..at + n]);
                at += n;
                if self.held.len() < FRAME {
                    (from, upto) = (len, len);
                    break;
                }
                let (flag, size) = (self.held[0], frame_length(&self.held));
                if flag > 1 {
                    if !each(Piece::Malformed) {
                        return Err(self.stop());
                    }
                    // Not gRPC after all: all of it goes on, as it comes.
                    self.passing = u64::MAX;
                    released = Some(std::mem::take(&mut self.held));
                    from = at;
                    continue;
                }
                if size > self.limit as u64 {
                    if !each(Piece::TooLong(size)) {
                        return Err(self.stop());
                    }
                    self.passing = size - (self.held.len() - FRAME) as u64;
                    released = Some(std::mem::take(&mut self.held));
                    from = at;
                    continue;
                }
                let n = (FRAME + size as usize - self.held.len()).min(len - at);
                self.held.extend_from_slice(&chunk[at..at + n]);
                at += n;
                if self.held.len() < FRAME + size as usize {
                    (from, upto) = (len, len);
                    break;
                }
                if !each(Piece::Message(Message { compressed: flag == 1, payload: &self.held[FRAME..] })) {
                    return Err(self.stop());
                }
                released = Some(std::mem::take(&mut self.held));
                from = at;
                continue;
            }
            let rest = &chunk[at..];
            let size = if rest.len() >= FRAME { frame_length(rest) } else { 0 };
            if rest.len() < FRAME || (size <= self.limit as u64 && rest.len() < FRAME + size as usize) {
                self.held.extend_from_slice(rest);
                upto = at;
                break;
            }
            if rest[0] > 1 {
                if !each(Piece::Malformed) {
                    return Err(self.stop());
                }
                self.passing = u64::MAX;
                continue;
            }
            if size > self.limit as u64 {
                if !each(Piece::TooLong(size)) {
                    return Err(self.stop());
                }
                self.passing = size;
                at += FRAME;
                continue;
            }
            let end = FRAME + size as usize;
            if !each(Piece::Message(Message { compressed: rest[0] == 1, payload: &rest[FRAME..end] })) {
                return Err(self.stop());
            }
            at += end;
        }
        let of_chunk = chunk.slice(from..upto.max(from));
        Ok(match released {
            None => of_chunk,
            Some(mut message) => {
                message.extend_from_slice(&of_chunk);
                Bytes::from(message)
            }
        })
    }

    fn stop(&mut self) -> Stopped {
        self.held = Vec::new();
        self.passing = 0;
        Stopped
    }

    /// Whether the body so far ends between messages: at its end, anything else is a message
    /// cut short.
    pub fn between_messages(&self) -> bool {
        self.held.is_empty() && self.passing == 0
    }

    /// At the end of a body that may not be gRPC: what is held goes on as it is.
    pub fn take_held(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }
}

/// gRPC-Web's text form (`application/grpc-web-text`): the call's frames in base64 (RFC 4648's
/// standard alphabet, padded), decoded as they come for [`GrpcMessages`], while what goes on
/// to the app is the text as the caller sent it, byte for byte, held only as long as the
/// decoded bytes it carries are.
#[derive(Debug, Default)]
pub struct Base64Frames {
    /// Text not yet passed on: whole groups of four characters, then any part of the next.
    held: Vec<u8>,
    /// Decoded bytes let through that the groups at the front of `held` carry.
    released: usize,
    /// The group of four being read, `in_quad` characters of it so far.
    quad: [u8; 4],
    in_quad: usize,
}

/// Text that is not base64 (or not all of it): tonic-web and Envoy refuse it too.
#[derive(Debug, PartialEq, Eq)]
pub struct NotBase64;

impl Base64Frames {
    /// Decodes `chunk`, the body's next text, keeping it until [`Base64Frames::release`] lets
    /// it go. Blanks are not base64 here, as they are not to tonic-web's or Envoy's decoder;
    /// `=` ends a group, after which another padded segment may follow (as a decoder that is
    /// given each segment on its own reads them).
    pub fn decode(&mut self, chunk: &[u8]) -> Result<Vec<u8>, NotBase64> {
        let mut out = Vec::with_capacity(chunk.len() / 4 * 3 + 3);
        for &c in chunk {
            self.quad[self.in_quad] = c;
            self.in_quad += 1;
            if self.in_quad == 4 {
                self.in_quad = 0;
                decode_group(self.quad, &mut out)?;
            }
        }
        self.held.extend_from_slice(chunk);
        Ok(out)
    }

    /// Lets `decoded` more decoded bytes go on: returns the text of every group they complete.
    pub fn release(&mut self, decoded: usize) -> Vec<u8> {
        self.released += decoded;
        let mut upto = 0;
        while let Some(group) = self.held.get(upto..upto + 4) {
            let carries = 3 - group.iter().filter(|&&c| c == b'=').count();
            if carries > self.released {
                break;
            }
            self.released -= carries;
            upto += 4;
        }
        self.held.drain(..upto).collect()
    }

    /// At the end of the body: refused when it ends inside a group of four (tonic-web and
    /// Envoy refuse it; unpadded text is not gRPC-Web's).
    pub fn end(&self) -> Result<(), NotBase64> {
        match self.in_quad {
            0 => Ok(()),
            _ => Err(NotBase64),
        }
    }
}

/// Four characters of base64 into `out`: three bytes, or one or two before `=` padding.
pub(super) fn decode_group(group: [u8; 4], out: &mut Vec<u8>) -> Result<(), NotBase64> {
    fn sextet(c: u8) -> Result<u32, NotBase64> {
        Ok(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(NotBase64),
        }))
    }
    let pad = match group {
        [_, _, b'=', b'='] => 2,
        [_, _, _, b'='] => 1,
        _ => 0,
    };
    let mut bits = 0u32;
    for &c in &group[..4 - pad] {
        bits = bits << 6 | sextet(c)?;
    }
    bits <<= 6 * pad as u32;
    let bytes = bits.to_be_bytes();
    out.extend_from_slice(&bytes[1..4 - pad]);
    Ok(())
}

fn frame_length(frame: &[u8]) -> u64 {
    u64::from(u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]))
}

/// Inspects one message (uncompressed): JSON for gRPC's JSON codec (`json`), else protobuf.
pub(crate) fn message(waf: &Waf, payload: &[u8], json_codec: bool, skip: &Skips<'_>) -> Option<Finding> {
    if json_codec {
        return json(waf, payload, true, skip);
    }
    let mut path = Vec::with_capacity(16);
    // Read as a field's value is: a whole body can be text made to parse as a message too (JSON
    // under a protobuf label whose blanks and letters are tags of numbers).
    field_value(waf, payload, 0, &mut path, skip)
}

/// How much of a Connect `GET`'s compressed message is inflated to read: the query that carries it
/// is at most `maxUriBytes` (8 KiB by default).
const CONNECT_GET_INFLATED: usize = 64 * 1024;

/// A Connect unary `GET` (`?message=...&encoding=proto&base64=1[&compression=gzip]`, for methods
/// without side effects, the searches an injection aims at): its message, base64 (URL-safe, or
/// standard, padded or not) and perhaps gzip, read as a message (or as JSON under
/// `encoding=json`). Read as a query value only, the base64 hid it.
pub(crate) fn connect_get(waf: &Waf, query: &[u8], skip: &Skips<'_>) -> Option<Finding> {
    use base64::Engine as _;
    // The first of each, as connect-go's `query.Get` takes (a second `message` must not stand in
    // for the one the app reads); only these four values are decoded.
    let (mut carried, mut encoding, mut base64, mut compression) = (None, None, None, None);
    for pair in query.split(|&b| b == b'&') {
        let (name, value) = pair.split_at(pair.iter().position(|&b| b == b'=').unwrap_or(pair.len()));
        let slot = match &*super::decode::form_component(name) {
            b"message" => &mut carried,
            b"encoding" => &mut encoding,
            b"base64" => &mut base64,
            b"compression" => &mut compression,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(super::decode::form_component(value.get(1..).unwrap_or_default()));
        }
    }
    let base64 = base64.is_some_and(|v| &*v == b"1");
    let (Some(carried), Some(encoding), true) = (carried, encoding, base64) else { return None };
    let text: Vec<u8> = carried
        .iter()
        .map(|&b| match b {
            b'-' => b'+',
            b'_' => b'/',
            b => b,
        })
        .collect();
    let text = text.strip_suffix(b"==").or_else(|| text.strip_suffix(b"=")).unwrap_or(&text);
    // Go's decoder (connect-go's) takes what RFC 4648 calls non-canonical: bits left over.
    let lenient = base64::engine::GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone);
    let decoded = base64::engine::GeneralPurpose::new(&base64::alphabet::STANDARD, lenient).decode(text).ok()?;
    let inflated;
    let decoded = match compression.as_deref() {
        // Empty is none, to connect-go too.
        None | Some(b"" | b"identity") => &decoded[..],
        Some(b"gzip") => {
            match super::encoding::decode(super::encoding::Coding::Gzip, &decoded, CONNECT_GET_INFLATED, false) {
                super::encoding::Decoded::Bytes(bytes) => {
                    inflated = bytes;
                    &inflated[..]
                }
                _ => return None,
            }
        }
        Some(_) => return None,
    };
    message(waf, decoded, &encoding[..] == b"json", skip)
}

/// A length-delimited value, `path` the field numbers that lead to it: walked when it is a
/// message (a finding in it names its own field), read as text when it is text, or for the runs
/// of text in it when it is not.
fn field_value(waf: &Waf, value: &[u8], depth: usize, path: &mut Vec<u8>, skip: &Skips<'_>) -> Option<Finding> {
    let nested = depth <= MAX_DEPTH && !value.is_empty() && parses(value);
    if nested {
        if let Some(f) = walk(waf, value, depth, path, skip) {
            return Some(f);
        }
    }
    if !reads_as_text(value) {
        // Binary (an image, a hash): not read, as binary HTTP bodies are not.
        return None;
    }
    match (nested && has_controls(value), nested && disguised_text(value)) {
        // A message, its fields each read by the walk. Read joined, its keys and values made
        // commands (`env prod`, a line break then `python`) of every OTLP resource and label map.
        (true, false) => None,
        // Text made to parse as a message rather than a message, or an attack with a control
        // byte added so that it parses would hide in the bytes the walk skips (a fixed64
        // "value", a group): read whole, as the app reads the string.
        (true, true) => text_value(waf, &blank_controls(value), path, skip),
        (false, _) => text_value(waf, value, path, skip),
    }
}

/// The fields of `bytes`, a message, `path` the field numbers that lead to it (`1.4.2`).
fn walk(waf: &Waf, bytes: &[u8], depth: usize, path: &mut Vec<u8>, skip: &Skips<'_>) -> Option<Finding> {
    for field in fields(bytes).map_while(|f| f) {
        let Wire::Bytes { value, .. } = field.wire else { continue };
        let outer = path.len();
        if !path.is_empty() {
            path.push(b'.');
        }
        let _ = write!(path, "{}", field.number);
        if let Some(f) = field_value(waf, value, depth + 1, path, skip) {
            return Some(f);
        }
        path.truncate(outer);
    }
    None
}

fn text_value(waf: &Waf, value: &[u8], path: &[u8], skip: &Skips<'_>) -> Option<Finding> {
    let found = waf.value(Value { class: Class::Arg, kind: LocationKind::GrpcField, name: path, value }, skip);
    if found.is_some() || !value.contains(&0) {
        return found;
    }
    // NULs between words (`1\0UNION\0SELECT`), which some engines take as blanks: in a query
    // they are a protocol finding, which gRPC fields do not get.
    let blanked: Vec<u8> = value.iter().map(|&b| if b == 0 { b' ' } else { b }).collect();
    waf.value(Value { class: Class::Arg, kind: LocationKind::GrpcField, name: path, value: &blanked }, skip)
}

/// Control bytes other than blanks (tab, line breaks, vertical tab, form feed): a message's own
/// bytes (tags of fields 1 to 3, lengths under 32), rare in text. A message whose tags and lengths
/// are all blanks (`\n` is field 1's tag, a length of 12 a form feed) is text an app reads with
/// its own spaces: an injection cut into such fields is read whole.
fn has_controls(bytes: &[u8]) -> bool {
    bytes.iter().any(|&b| is_control(b) && !matches!(b, 0x0b | 0x0c))
}

/// Text made to parse as a message rather than a message: a fixed64 or fixed32 field whose
/// bytes are all printable (a double or a fixed-width number seldom is: `a` is the tag of a
/// fixed64 whose value is the next 8 characters, `' OR 1=1`), a group (deprecated since
/// proto3; `S` opens one, `<` closes it), or tags and lengths that are mostly printable
/// characters (`z` and `"` are tags of length-delimited fields, `'` a length of 39, a blank one
/// of 32), where a message's are mostly control bytes, tabs and line feeds (fields 1 to 3, values
/// under 32 bytes). Such a value is read as the app reads a string: whole. `bytes` parses
/// ([`parses`]).
fn disguised_text(bytes: &[u8]) -> bool {
    let printable = |b: &u8| (0x20..=0x7e).contains(b);
    let (mut structure, mut structure_printable) = (0usize, 0usize);
    for field in fields(bytes).map_while(|f| f) {
        let mut count = |span: &[u8]| {
            structure += span.len();
            structure_printable += span.iter().filter(|b| printable(b)).count();
        };
        count(&bytes[field.tag]);
        match field.wire {
            Wire::Bytes { length, .. } => count(&bytes[length]),
            Wire::Fixed(value) if value.iter().all(|&b| is_text_byte(b)) => return true,
            Wire::GroupStart | Wire::GroupEnd => return true,
            Wire::Varint | Wire::Fixed(_) => {}
        }
    }
    structure_printable * 2 > structure
}

fn blank_controls(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().map(|&b| if is_control(b) { b' ' } else { b }).collect()
}

/// Whether `bytes` is a whole protobuf message: each field's tag valid (field number at least 1,
/// a wire type in use), each value inside, groups balanced.
fn parses(bytes: &[u8]) -> bool {
    let mut groups = 0u32;
    for field in fields(bytes) {
        let Some(field) = field else { return false };
        if field.number == 0 || field.number > u64::from(u32::MAX >> 3) {
            return false;
        }
        match field.wire {
            Wire::GroupStart => groups += 1,
            Wire::GroupEnd if groups == 0 => return false,
            Wire::GroupEnd => groups -= 1,
            _ => {}
        }
    }
    groups == 0
}

/// One field of a message, as its bytes lie: where its tag is, its number, and its value.
struct Field<'a> {
    number: u64,
    tag: Range<usize>,
    wire: Wire<'a>,
}

/// A field's value by its wire type (protobuf's encoding guide).
enum Wire<'a> {
    Varint,
    /// fixed64 or fixed32 (doubles, floats, fixed-width integers).
    Fixed(&'a [u8]),
    /// Length-delimited (strings, bytes, messages, packed numbers): where the length is, and the
    /// value.
    Bytes {
        length: Range<usize>,
        value: &'a [u8],
    },
    GroupStart,
    GroupEnd,
}

/// The fields of `bytes` in order, each `Some` while they parse; a field that does not (a varint
/// of more than 10 bytes, a value past the end, a wire type not in use) is `None`, and the last.
fn fields(bytes: &[u8]) -> impl Iterator<Item = Option<Field<'_>>> {
    let mut at = 0;
    let mut broken = false;
    std::iter::from_fn(move || {
        if broken || at >= bytes.len() {
            return None;
        }
        let field = next_field(bytes, &mut at);
        broken = field.is_none();
        Some(field)
    })
}

fn next_field<'a>(bytes: &'a [u8], at: &mut usize) -> Option<Field<'a>> {
    let start = *at;
    let tag = varint(bytes, at)?;
    let tag_span = start..*at;
    let mut take = |n: usize| -> Option<&'a [u8]> {
        let value = bytes.get(*at..at.checked_add(n)?)?;
        *at += n;
        Some(value)
    };
    let wire = match tag & 7 {
        0 => {
            varint(bytes, at)?;
            Wire::Varint
        }
        1 => Wire::Fixed(take(8)?),
        5 => Wire::Fixed(take(4)?),
        2 => {
            let length_start = *at;
            let len = usize::try_from(varint(bytes, at)?).ok()?;
            let length = length_start..*at;
            let value = bytes.get(*at..at.checked_add(len)?)?;
            *at += len;
            Wire::Bytes { length, value }
        }
        3 => Wire::GroupStart,
        4 => Wire::GroupEnd,
        _ => return None,
    };
    Some(Field { number: tag >> 3, tag: tag_span, wire })
}

/// A base-128 varint at `at` (at most 10 bytes), moving `at` past it.
fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in 0..10 {
        let b = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(b & 0x7f) << (7 * shift);
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// `grpc-status`, made once: a name given as text is parsed on every lookup, and this one is
/// looked up in every answer the inbound side passes on.
pub const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// The `grpc-status` a gRPC answer ends with, in its trailers or (a call that failed before any
/// message) its only header; `None` for anything else.
pub fn grpc_status(headers: &http::HeaderMap) -> Option<u16> {
    let value = headers.get(GRPC_STATUS)?.as_bytes();
    if value.is_empty() || value.len() > 2 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::waf::tests::waf;
    use crate::waf::Detector;

    /// A protobuf field: a tag, then a length-delimited value.
    pub(crate) fn field(number: u8, value: &[u8]) -> Vec<u8> {
        let mut f = vec![number << 3 | 2];
        let mut len = value.len();
        while len >= 0x80 {
            f.push((len as u8) | 0x80);
            len >>= 7;
        }
        f.push(len as u8);
        f.extend_from_slice(value);
        f
    }

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut f = vec![0];
        f.extend((message.len() as u32).to_be_bytes());
        f.extend_from_slice(message);
        f
    }

    fn inspect(message: &[u8]) -> Option<Finding> {
        waf(1).inspect_grpc_message(message, false, &Skips::NONE)
    }

    #[test]
    fn an_attack_in_a_string_field_is_found_at_any_depth_and_named_by_its_field_numbers() {
        let attack = b"1' UNION SELECT password FROM users--";
        let top = field(1, attack);
        let found = inspect(&top).expect("a top-level string");
        assert_eq!(
            (found.detector, found.location.kind, found.location.name.as_str()),
            (Detector::Sqli, LocationKind::GrpcField, "1")
        );
        // An order { customer { note } }, beside an id (varint) and an amount (fixed64).
        let mut customer = vec![0x08, 0x96, 0x01];
        customer.extend(field(4, b"<script>alert(document.cookie)</script>"));
        let mut order = vec![0x10, 0x2a, 0x19, 1, 2, 3, 4, 5, 6, 7, 8];
        order.extend(field(3, &customer));
        let found = inspect(&field(2, &order)).expect("nested twice");
        assert_eq!((found.detector, found.location.name.as_str()), (Detector::Xss, "2.3.4"));
        // Text that also parses as a message (a fixed64 tag `a` skipping `' OR 1=1`, a control
        // byte at the end to make it parse): read as text all the same.
        for disguised in [
            &b"a' OR 1=1-- \x0cx"[..],
            b"1' or '1'='1'-- \x0cxx",
            b"11'; dRoP     TaBLE users-- xx\x0c",
            b"Sm<svg\tonload=alert(1)> \x1fxxxxx",
            b"IK<img\tsrc=x onerror=alert(1)> \x0bxxxxx",
        ] {
            assert!(parses(disguised), "{disguised:?} parses as a message");
            assert!(inspect(&field(1, disguised)).is_some(), "{disguised:?}");
        }
        // Length-delimited fields alone: `z`, `"` and `b` are tags, `\x05`, a blank (32) and `'`
        // (39) lengths, so the quotes the injection needs are the message's own bytes.
        let padded = |head: &[u8], tail: &[u8], to: usize| {
            let mut v = head.to_vec();
            v.extend_from_slice(tail);
            v.resize(head.len() + to, b' ');
            v
        };
        // Tags and lengths that are blanks to SQL: `\n` (field 1) and a form feed (a length of 12).
        let blanks =
            b"\n\n1'        \n\x0cUNION       \n\x0cSELECT      \n\x0cpassword    \n\x0cFROM users  \n\x0c--          ";
        assert!(parses(blanks) && inspect(blanks).is_some() && inspect(&field(1, blanks)).is_some());
        for disguised in [padded(b"z\x05admin\" ", b"or 1=1 or \"", 32), padded(b"b\x05adminz'", b" or 1 or '", 39)] {
            let disguised = &disguised[..];
            assert!(parses(disguised), "{disguised:?} parses as a message");
            assert!(inspect(&field(1, disguised)).is_some(), "{disguised:?}");
        }
        // A string cut off by a NUL is still read; a message of this sort is no message.
        let mut nul = attack.to_vec();
        nul.insert(0, 0);
        assert!(inspect(&field(1, &nul)).is_some(), "a NUL before the attack");
        // A `bytes` field an app decodes leniently: a stray byte that is not UTF-8 before the
        // attack; NULs for blanks between its words.
        assert!(inspect(&field(6, b"\xbf<body onload=alert(document.domain)>")).is_some());
        assert!(inspect(&field(6, b"1\0UNION\0SELECT\0password\0FROM\0users--")).is_some());
        // JSON in a string field (a common way to carry a free-form document).
        assert!(inspect(&field(5, br#"{"q": "1; DROP TABLE users--"}"#)).is_some());
        // gRPC's JSON codec: the message is a JSON document.
        let json = br#"{"name": "x' OR '1'='1"}"#;
        assert!(waf(1).inspect_grpc_message(json, true, &Skips::NONE).is_some());
        // A body that is no protobuf at all is read as text.
        assert!(inspect(b"' OR 1=1 --").is_some());
    }

    #[test]
    fn ordinary_messages_and_binary_fields_are_no_finding() {
        let mut customer = field(1, "Zoë O'Brien".as_bytes());
        customer.extend(field(2, b"zoe@example.com"));
        customer.extend(field(3, b"Line one\nLine two, Apt. 4"));
        // A UUID and a hash in `bytes` fields, NUL and control bytes and all.
        customer.extend(field(4, &[0, 1, 2, 3, 0x10, 0x1f, 0x7f, 9, 0, 0, 0x20, 0x41, 0, 0, 0, 1]));
        customer.extend(field(5, &[0xde, 0xad, 0xbe, 0xef, 0x00, 0xff]));
        // Packed repeated numbers, an empty string, a float.
        customer.extend(field(6, &[1, 2, 3, 150, 1]));
        customer.extend(field(7, b""));
        customer.extend([0x45, 0, 0, 0x80, 0x3f]);
        // An image's bytes: binary, not read (a deterministic stand-in for compressed data).
        let mut image = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut x = 0x2545_f491_u32;
        image.extend((0..4096).map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        }));
        customer.extend(field(8, &image[..120]));
        let mut request = field(1, &customer);
        request.extend(field(3, &image));
        request.extend(field(2, b"orders.v1.OrderService/Create"));
        assert_eq!(inspect(&request), None);
        for pl in 1..=4 {
            assert_eq!(waf(pl).inspect_grpc_message(&request, false, &Skips::NONE), None, "paranoia {pl}");
        }
    }

    /// Keys and values of ordinary messages (an OTLP resource's attributes, a label map) are
    /// each read on their own: read joined, `env` then `prod`, or a line break (field 1's tag)
    /// then `python`, were commands, and every OTLP export from Python, Java, Node, Ruby and PHP
    /// SDKs was refused.
    #[test]
    fn keys_and_values_of_nested_messages_are_not_read_joined() {
        let attribute = |key: &[u8], value: &[u8]| field(1, &[field(1, key), field(2, &field(1, value))].concat());
        let mut resource = Vec::new();
        for (key, value) in [(&b"telemetry.sdk.language"[..], &b"python"[..]), (b"service.name", b"checkout")] {
            resource.extend(attribute(key, value));
        }
        let labels = [field(1, &[field(1, b"env"), field(2, b"prod")].concat()), field(2, b"ok")].concat();
        for message in [field(1, &resource), labels] {
            for pl in 1..=2 {
                assert_eq!(waf(pl).inspect_grpc_message(&message, false, &Skips::NONE), None, "{message:?} at {pl}");
            }
        }
        // Each field is still read on its own.
        let attack = attribute(b"q", b"1' UNION SELECT password FROM users--");
        assert!(inspect(&field(1, &attack)).is_some());
    }

    /// A whole message (a bare protobuf body) that is text made to parse as one: JSON whose
    /// blanks and letters are tags of numbers and fixed-width fields. Read whole, as a JSON or
    /// text reader takes it.
    #[test]
    fn a_whole_message_that_is_text_disguised_as_one_is_read_as_text() {
        let jsons = [
            &b" { \"q\":\"1' union   select  1,2 -- \"}"[..],
            b" { \"q\":\"1' or 1=1 -- \"}    ",
            b" { \"q\":\"x;   id\" }    ",
        ];
        for json in jsons {
            assert!(parses(json), "{:?} parses as a message", String::from_utf8_lossy(json));
            assert!(inspect(json).is_some(), "{:?}", String::from_utf8_lossy(json));
        }
    }

    /// A Connect unary `GET` carries its message in the query, base64 (URL-safe, padded or not),
    /// perhaps gzip: read as a message. Read as a query value only, the base64 hid it.
    #[test]
    fn a_connect_get_message_in_the_query_is_read_as_a_message() {
        use base64::Engine as _;
        let url_safe = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE.encode(bytes);
        let attack = field(2, &field(1, b"x' UNION SELECT password FROM users--"));
        let get = |message: String, more: &str| format!("connect=v1&encoding=proto&base64=1{more}&message={message}");
        let found = |query: String| {
            waf(1).inspect_head(
                &super::super::HeadView { path: "/s.v1.S/Find", query: Some(&query), headers: &http::HeaderMap::new() },
                &Skips::NONE,
            )
        };
        let f = found(get(url_safe(&attack), "")).expect("found");
        assert_eq!(
            (f.detector, f.location.kind, f.location.name.as_str()),
            (Detector::Sqli, LocationKind::GrpcField, "2.1")
        );
        assert!(found(get(url_safe(&attack).trim_end_matches('=').into(), "")).is_some(), "unpadded");
        let gzipped = url_safe(&crate::waf::encoding::tests::gzip(&attack));
        assert!(found(get(gzipped, "&compression=gzip")).is_some(), "gzip");
        let json = url_safe(br#"{"q": "x' UNION SELECT password FROM users--"}"#);
        assert!(found(format!("encoding=json&base64=1&message={json}")).is_some(), "JSON in base64");
        let ordinary = field(1, b"orders near 10 Main St.");
        assert_eq!(found(get(url_safe(&ordinary), "")), None);
        // The first of each parameter is the app's (connect-go's `query.Get`); an empty
        // compression is none.
        let first = format!("{}&message={}", get(url_safe(&attack), ""), url_safe(&ordinary));
        assert!(found(first).is_some(), "a second message");
        assert!(found(get(url_safe(&attack), "&base64=0")).is_some(), "a second base64");
        assert!(found(get(url_safe(&attack), "&compression=")).is_some(), "empty compression");
        assert_eq!(found(format!("message={}&page=2", url_safe(&attack))), None, "no Connect GET: a value like any");
    }

    #[test]
    fn malformed_and_hostile_messages_end_the_walk_without_a_panic() {
        for bytes in [
            &[0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01][..],
            &[0x0a, 0x05, b'a'],
            &[0x08],
            &[0x0b, 0x0a, 0x01, b'a'],
            &[0x07, 0x00],
            &[0xff; 11],
        ] {
            let _ = inspect(bytes);
            assert!(!parses(bytes), "{bytes:?}");
        }
        // Nested deeper than is walked: inner messages are still read, as far as the depth goes.
        let mut deep = field(1, b"1' OR '1'='1");
        for _ in 0..200 {
            deep = field(1, &deep);
        }
        let _ = inspect(&deep);
    }

    /// Every way of cutting a body into pieces gives the same messages and the same bytes on.
    #[test]
    fn messages_are_found_however_the_body_is_cut_and_go_on_whole_and_in_order() {
        let messages = [field(1, b"first"), Vec::new(), field(2, &[b'x'; 300]), field(1, b"last")];
        let body: Vec<u8> = messages.iter().flat_map(|m| framed(m)).collect();
        for size in [1, 2, 4, 5, 6, 7, 100, 305, 400, body.len()] {
            let mut split = GrpcMessages::new(1024);
            let (mut seen, mut on, mut read) = (Vec::new(), Vec::new(), 0);
            for piece in body.chunks(size) {
                read += piece.len();
                let out = split
                    .push(&Bytes::copy_from_slice(piece), |p| {
                        match p {
                            Piece::Message(m) => seen.push(m.payload.to_vec()),
                            other => panic!("{other:?}"),
                        }
                        true
                    })
                    .unwrap();
                on.extend_from_slice(&out);
                // Nothing goes on of a message not yet whole.
                assert_eq!(on.len(), read - split.held.len(), "pieces of {size}");
            }
            assert_eq!(seen, messages, "pieces of {size}");
            assert_eq!(on, body, "pieces of {size}");
            assert!(split.between_messages());
        }
    }

    /// gRPC-Web's text form: whatever the cut, and whether the caller encoded the body whole or
    /// each message on its own (padded), the messages are found, and what goes on is the text
    /// as sent, byte for byte, never ahead of the messages let through.
    #[test]
    fn grpc_web_text_is_decoded_however_it_is_cut_and_goes_on_as_it_was_sent() {
        use base64::Engine as _;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes).into_bytes();
        let messages = [field(1, b"first"), field(2, &[b'x'; 301]), Vec::new(), field(1, b"last one")];
        let frames: Vec<u8> = messages.iter().flat_map(|m| framed(m)).collect();
        let whole = b64(&frames);
        let each: Vec<u8> = messages.iter().flat_map(|m| b64(&framed(m))).collect();
        assert!(each.contains(&b'='), "a padded segment in the middle");
        for text in [whole, each] {
            for size in [1, 2, 3, 4, 5, 7, 64, 411, text.len()] {
                let (mut split, mut base64) = (GrpcMessages::new(1024), Base64Frames::default());
                let (mut seen, mut on) = (Vec::new(), Vec::new());
                for piece in text.chunks(size) {
                    let decoded = Bytes::from(base64.decode(piece).unwrap());
                    let let_through = split
                        .push(&decoded, |p| {
                            let Piece::Message(m) = p else { panic!("{p:?}") };
                            seen.push(m.payload.to_vec());
                            true
                        })
                        .unwrap();
                    on.extend(base64.release(let_through.len()));
                    // Whole groups of four, carrying no more than the messages let through.
                    assert_eq!(on.len() % 4, 0);
                    let carried = Base64Frames::default().decode(&on).unwrap();
                    let through: usize = seen.iter().map(|m| m.len() + FRAME).sum();
                    assert!(carried.len() <= through && frames.starts_with(&carried), "pieces of {size}");
                }
                assert_eq!(seen, messages, "pieces of {size}");
                assert_eq!(on, text, "pieces of {size}");
                assert_eq!(base64.end(), Ok(()));
                assert!(split.between_messages());
            }
        }
    }

    #[test]
    fn text_that_is_not_base64_is_refused_as_tonic_web_and_envoy_refuse_it() {
        let decode = |text: &[u8]| Base64Frames::default().decode(text);
        assert_eq!(decode(b"AAAAAAUKA2Zvbw=="), Ok(framed(&field(1, b"foo"))));
        for bad in [&b"AAAA AAUK"[..], b"AAAA\nAAUK", b"AA-_", b"A===", b"=AAA", b"AAAA%41AA"] {
            assert_eq!(decode(bad), Err(NotBase64), "{:?}", String::from_utf8_lossy(bad));
        }
        // Ended inside a group of four: unpadded, or cut.
        for cut in [&b"AAAAAAUKA2Zvbw"[..], b"AAAAA"] {
            let mut text = Base64Frames::default();
            text.decode(cut).unwrap();
            assert_eq!(text.end(), Err(NotBase64));
        }
    }

    #[test]
    fn a_refused_message_stops_the_body_and_none_of_it_goes_on() {
        let body: Vec<u8> =
            [framed(&field(1, b"ok")), framed(&field(1, b"attack")), framed(&field(1, b"after"))].concat();
        for size in [1, 3, 9, body.len()] {
            let mut split = GrpcMessages::new(1024);
            let mut on = Vec::new();
            let mut stopped = false;
            for piece in body.chunks(size) {
                match split.push(
                    &Bytes::copy_from_slice(piece),
                    |p| !matches!(p, Piece::Message(m) if m.payload.ends_with(b"attack")),
                ) {
                    Ok(out) => on.extend_from_slice(&out),
                    Err(Stopped) => {
                        stopped = true;
                        break;
                    }
                }
            }
            assert!(stopped, "pieces of {size}");
            // The first message, unless it came in the same piece (the body stops anyway).
            let first = framed(&field(1, b"ok"));
            assert!(on == first || (on.is_empty() && size >= body.len() / 3), "pieces of {size}: {on:?}");
        }
    }

    /// A body that only looked like gRPC at first (a binary file that starts with 0) goes on
    /// whole once a frame says it is not, however it is cut.
    #[test]
    fn a_body_that_turns_out_not_to_be_grpc_goes_on_whole_when_let_through() {
        let mut body = framed(&field(1, b"first"));
        body.extend([7, 0, 0, 0, 3, 1, 2, 3, 0, 0, 0, 0, 9, 9]);
        for size in [1, 3, 11, body.len()] {
            let mut split = GrpcMessages::new(1024);
            let mut on = Vec::new();
            for piece in body.chunks(size) {
                on.extend_from_slice(&split.push(&Bytes::copy_from_slice(piece), |_| true).unwrap());
            }
            on.extend(split.take_held());
            assert_eq!(on, body, "pieces of {size}");
        }
    }

    #[test]
    fn a_message_over_the_limit_goes_on_as_it_comes_or_stops_the_body_and_a_bad_flag_stops_it() {
        let big = field(1, &[b'a'; 5000]);
        let body: Vec<u8> = [framed(&big), framed(&field(1, b"small"))].concat();
        for size in [1, 4, 1000, body.len()] {
            let mut split = GrpcMessages::new(1024);
            let (mut pieces, mut on) = (Vec::new(), Vec::new());
            for piece in body.chunks(size) {
                let out = split
                    .push(&Bytes::copy_from_slice(piece), |p| {
                        pieces.push(match p {
                            Piece::Message(m) => format!("message {}", m.payload.len()),
                            Piece::TooLong(n) => format!("too long {n}"),
                            Piece::Malformed => "malformed".into(),
                        });
                        true
                    })
                    .unwrap();
                // A message too long to read is never held.
                assert!(split.held.len() <= 1024 + FRAME);
                on.extend_from_slice(&out);
            }
            assert_eq!(pieces, [format!("too long {}", big.len()), "message 7".to_string()], "pieces of {size}");
            assert_eq!(on, body, "pieces of {size}");
        }
        let mut split = GrpcMessages::new(1024);
        assert_eq!(split.push(&Bytes::from(framed(&big)), |p| !matches!(p, Piece::TooLong(_))), Err(Stopped));
        let mut split = GrpcMessages::new(1024);
        let mut bad = framed(b"x");
        bad[0] = 2;
        assert_eq!(split.push(&Bytes::from(bad), |p| p != Piece::Malformed), Err(Stopped));
        // Cut short at the end of the body: not between messages.
        let mut split = GrpcMessages::new(1024);
        let whole = framed(&field(1, b"cut"));
        assert_eq!(split.push(&Bytes::copy_from_slice(&whole[..6]), |_| true).unwrap().len(), 0);
        assert!(!split.between_messages());
    }
}

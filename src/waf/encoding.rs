//! A request body's `Content-Encoding` undone before it is inspected: an app behind the
//! sidecar that inflates gzip bodies (Express's body-parser does by default; ASP.NET's request
//! decompression takes brotli too) would otherwise read a value the WAF never saw. What comes
//! out is bounded, so a small body that inflates to gigabytes costs no more than the inspection
//! limit, and so is the memory a decoder may ask for.

use std::io::Write;

use flate2::write::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};

/// A body's content coding, as far as the WAF undoes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
    /// RFC 9110's `deflate` is zlib's format; some clients send bare deflate, which apps accept too.
    Deflate,
    /// `br` (RFC 7932).
    Brotli,
    /// `zstd` (RFC 9659).
    Zstd,
    /// Anything else (`compress`, a made-up name): not undone, read as it is.
    Other,
}

impl Coding {
    /// From the `Content-Encoding` header's values (every field of that name, each a list);
    /// `identity` counts for nothing. With more than one coding, the first that is undone here
    /// is tried (Go's `Header.Get` and Java's `getHeader` read the first field, and
    /// an inflater then undoes it); when it does not undo the body, the bytes as they came are
    /// read, as for [`Coding::Other`].
    pub fn of<'a>(headers: impl IntoIterator<Item = &'a [u8]>) -> Coding {
        let mut coding = Coding::Identity;
        let names = headers.into_iter().flat_map(|h| h.split(|&b| b == b',')).map(<[u8]>::trim_ascii);
        for name in names.filter(|n| !n.is_empty()) {
            let this = if name.eq_ignore_ascii_case(b"identity") {
                continue;
            } else if name.eq_ignore_ascii_case(b"gzip") || name.eq_ignore_ascii_case(b"x-gzip") {
                Coding::Gzip
            } else if name.eq_ignore_ascii_case(b"deflate") {
                Coding::Deflate
            } else if name.eq_ignore_ascii_case(b"br") {
                Coding::Brotli
            } else if name.eq_ignore_ascii_case(b"zstd") {
                Coding::Zstd
            } else {
                Coding::Other
            };
            coding = match (coding, this) {
                (Coding::Identity | Coding::Other, _) => this,
                (inflatable, _) => inflatable,
            };
        }
        coding
    }

    /// [`super::json_like`] of the body whose first bytes, in this coding, are `prefix`: JSON
    /// when either the bytes as they came or what they inflate to look like it (many apps never
    /// undo a request's coding and parse the bytes as sent). A coding that is not undone is
    /// judged by its bytes as they came.
    pub fn json_like(self, prefix: &[u8]) -> Option<bool> {
        let raw = super::json_like(prefix);
        let inflated = match self {
            Coding::Identity | Coding::Other => return raw,
            Coding::Gzip | Coding::Deflate | Coding::Brotli | Coding::Zstd => {
                match decode(self, prefix, SNIFF_INFLATED, true) {
                    Decoded::Bytes(start) => super::json_like(&start),
                    // Not of its coding: its bytes as they came decide.
                    Decoded::Corrupt(start) => Some(super::json_like(&start) == Some(true)),
                    Decoded::TooLong => Some(true),
                }
            }
        };
        match (raw, inflated) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        }
    }
}

/// How much of a body's start is inflated to tell whether it is JSON: blanks past this leave
/// it undecided, and an undecided body is read as JSON.
const SNIFF_INFLATED: usize = 256;

#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Bytes(Vec<u8>),
    /// More than the limit came out.
    TooLong,
    /// Not of its coding, cut short, or followed by bytes that are not: what came out before
    /// that (an app's inflater may hand its parser as much).
    Corrupt(Vec<u8>),
}

/// Undoes `coding` on `input`, keeping at most `max` bytes. With `start`, `input` is only the
/// body's first bytes: what they give, up to `max`, is the answer.
pub fn decode(coding: Coding, input: &[u8], max: usize, start: bool) -> Decoded {
    match coding {
        // Members one after another are one body to gzip's readers (Node's zlib, Go's).
        Coding::Gzip => run(MultiGzDecoder::new(Bounded::new(max)), input, start),
        Coding::Deflate => match run(ZlibDecoder::new(Bounded::new(max)), input, start) {
            Decoded::Corrupt(zlib) => match run(DeflateDecoder::new(Bounded::new(max)), input, start) {
                Decoded::Corrupt(bare) if bare.len() < zlib.len() => Decoded::Corrupt(zlib),
                other => other,
            },
            other => other,
        },
        // Brotli's window is at most 16 MiB (RFC 7932; the large-window extension is refused,
        // as Node's and .NET's decoders refuse it by default).
        Coding::Brotli => run(brotli_decompressor::DecompressorWriter::new(Bounded::new(max), 4096), input, start),
        Coding::Zstd => match zstd::stream::write::Decoder::new(Bounded::new(max)) {
            Ok(mut decoder) => match decoder.window_log_max(ZSTD_WINDOW_LOG_MAX) {
                Ok(()) => run(decoder, input, start),
                Err(_) => Decoded::TooLong,
            },
            Err(_) => Decoded::TooLong,
        },
        Coding::Identity | Coding::Other => match input.len() > max && !start {
            true => Decoded::TooLong,
            false => Decoded::Bytes(input[..input.len().min(max)].to_vec()),
        },
    }
}

/// The fields of a gzip body's first header that carry bytes of the sender's choosing (FEXTRA,
/// FNAME, FCOMMENT): an app that never inflates its body and parses it as a form reads them as
/// plain text.
pub fn gzip_header_text(input: &[u8]) -> Vec<&[u8]> {
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    let mut fields = Vec::new();
    let [0x1f, 0x8b, 8, flags, ..] = input else { return fields };
    let mut at = 10;
    if flags & FEXTRA != 0 {
        let Some(len) = input.get(10..12).map(|l| usize::from(u16::from_le_bytes([l[0], l[1]]))) else { return fields };
        at = 12 + len;
        fields.push(&input[12.min(input.len())..at.min(input.len())]);
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag == 0 {
            continue;
        }
        let Some(rest) = input.get(at..) else { break };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        fields.push(&rest[..end]);
        at += end + 1;
    }
    fields
}

/// The largest zstd window a body may need, as a power of two: 8 MiB, the most RFC 9659 lets
/// an HTTP encoder use. zstd's own default (128 MiB) would let a body of a few bytes make the
/// sidecar allocate that much; a body that needs more is treated as one that inflates past the
/// limit (413 under `REJECT`, uninspected under `PASS`), never read as its raw bytes.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// The three decoders of flate2's `write` module, brotli's and zstd's, alike.
trait Decoder: Write {
    fn try_finish(&mut self) -> std::io::Result<()>;
    fn output(&mut self) -> &mut Bounded;
    /// Whether `error` refused the stream for the memory it asks for, rather than as corrupt.
    fn refused_as_too_large(_error: &std::io::Error) -> bool {
        false
    }
}

macro_rules! decoder {
    ($($t:ident),*) => {$(
        impl Decoder for $t<Bounded> {
            fn try_finish(&mut self) -> std::io::Result<()> {
                $t::try_finish(self)
            }
            fn output(&mut self) -> &mut Bounded {
                self.get_mut()
            }
        }
    )*};
}
decoder!(MultiGzDecoder, ZlibDecoder, DeflateDecoder);

impl Decoder for brotli_decompressor::DecompressorWriter<Bounded> {
    fn try_finish(&mut self) -> std::io::Result<()> {
        self.close()
    }
    fn output(&mut self) -> &mut Bounded {
        self.get_mut()
    }
}

impl Decoder for zstd::stream::write::Decoder<'static, Bounded> {
    fn try_finish(&mut self) -> std::io::Result<()> {
        self.do_finish()
    }
    fn output(&mut self) -> &mut Bounded {
        self.get_mut()
    }
    fn refused_as_too_large(error: &std::io::Error) -> bool {
        // zstd's ZSTD_error_frameParameter_windowTooLarge, by its name (the crate keeps no code).
        error.to_string().contains("too much memory")
    }
}

fn run<D: Decoder>(mut decoder: D, input: &[u8], start: bool) -> Decoded {
    let written = decoder.write_all(input).and_then(|()| match start {
        // Only the start: the rest of the stream is not here to end it.
        true => decoder.flush(),
        false => decoder.try_finish(),
    });
    if written.is_err() {
        // flate2 holds what it inflated before the failure in a buffer of its own: passed on
        // here (a flush after the failure writes it out), so nothing inflated is lost.
        let _ = decoder.flush();
    }
    let out = decoder.output();
    match (written, out.full) {
        (_, true) if start => Decoded::Bytes(std::mem::take(&mut out.bytes)),
        (_, true) => Decoded::TooLong,
        (Ok(()), false) => Decoded::Bytes(std::mem::take(&mut out.bytes)),
        (Err(e), false) if D::refused_as_too_large(&e) => Decoded::TooLong,
        (Err(_), false) => Decoded::Corrupt(std::mem::take(&mut out.bytes)),
    }
}

/// A `Vec` that takes at most `max` bytes, and says when more were offered.
struct Bounded {
    bytes: Vec<u8>,
    max: usize,
    full: bool,
}

impl Bounded {
    fn new(max: usize) -> Self {
        Bounded { bytes: Vec::new(), max, full: false }
    }
}

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = self.max - self.bytes.len();
        if room == 0 && !buf.is_empty() {
            self.full = true;
            return Err(std::io::Error::other("the decoded body reached its bound"));
        }
        let take = room.min(buf.len());
        self.bytes.extend_from_slice(&buf[..take]);
        Ok(take)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use flate2::Compression;

    use super::*;

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn codings_are_read_from_the_header() {
        let cases: [(&[&[u8]], Coding); 15] = [
            (&[], Coding::Identity),
            (&[b"identity"], Coding::Identity),
            (&[b"GZIP"], Coding::Gzip),
            (&[b"x-gzip"], Coding::Gzip),
            (&[b" deflate , identity"], Coding::Deflate),
            (&[b"BR"], Coding::Brotli),
            (&[b"zstd"], Coding::Zstd),
            (&[b"compress"], Coding::Other),
            (&[b"br-ish"], Coding::Other),
            // A stack, or two fields: the first that inflates is tried (the bytes as they came
            // are read too when it does not undo them).
            (&[b"gzip, gzip"], Coding::Gzip),
            (&[b"deflate, gzip"], Coding::Deflate),
            (&[b"compress, gzip"], Coding::Gzip),
            (&[b"zstd, gzip"], Coding::Zstd),
            (&[b"identity", b"gzip"], Coding::Gzip),
            (&[b"gzip", b"br"], Coding::Gzip),
        ];
        for (headers, coding) in cases {
            assert_eq!(Coding::of(headers.iter().copied()), coding, "{headers:?}");
        }
    }

    #[test]
    fn gzip_and_both_deflates_are_undone() {
        let body = br#"{"q":"1' UNION SELECT password FROM users--"}"#;
        assert_eq!(decode(Coding::Gzip, &gzip(body), 1024, false), Decoded::Bytes(body.to_vec()));
        let mut zlib = ZlibEncoder::new(Vec::new(), Compression::default());
        zlib.write_all(body).unwrap();
        assert_eq!(decode(Coding::Deflate, &zlib.finish().unwrap(), 1024, false), Decoded::Bytes(body.to_vec()));
        let mut raw = DeflateEncoder::new(Vec::new(), Compression::default());
        raw.write_all(body).unwrap();
        assert_eq!(decode(Coding::Deflate, &raw.finish().unwrap(), 1024, false), Decoded::Bytes(body.to_vec()));
    }

    fn brotli(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        brotli::BrotliCompress(&mut &data[..], &mut out, &brotli::enc::BrotliEncoderParams::default()).unwrap();
        out
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(data, 3).unwrap()
    }

    #[test]
    fn brotli_and_zstd_are_undone() {
        let body = br#"{"q":"1' UNION SELECT password FROM users--"}"#;
        assert_eq!(decode(Coding::Brotli, &brotli(body), 1024, false), Decoded::Bytes(body.to_vec()));
        assert_eq!(decode(Coding::Zstd, &zstd(body), 1024, false), Decoded::Bytes(body.to_vec()));
        // Two zstd frames are one body, as to zstd's own reader.
        let two = [zstd(b"{\"a\":"), zstd(b"\"b\"}")].concat();
        assert_eq!(decode(Coding::Zstd, &two, 1024, false), Decoded::Bytes(b"{\"a\":\"b\"}".to_vec()));
        // Cut short, or followed by stray bytes: what came out before is kept.
        let long = br#"{"a":"some text that goes on for a while, a while, a while, and then some more"}"#;
        for (coding, whole) in [(Coding::Brotli, brotli(long)), (Coding::Zstd, zstd(long))] {
            assert!(
                matches!(decode(coding, &whole[..whole.len() - 3], 1024, false), Decoded::Corrupt(_)),
                "{coding:?} cut"
            );
            let trailed = [whole.clone(), b"x".to_vec()].concat();
            assert_eq!(decode(coding, &trailed, 1024, false), Decoded::Corrupt(long.to_vec()), "{coding:?} trailed");
            assert!(
                matches!(decode(coding, b"{\"not\":\"compressed\"}", 1024, false), Decoded::Corrupt(_)),
                "{coding:?}"
            );
        }
    }

    #[test]
    fn a_zstd_window_over_8_mib_is_never_allocated() {
        // A frame that declares a 128 MiB window (zstd's own default limit) for a few bytes: the
        // decoder would allocate the window before the first byte comes out.
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        encoder.window_log(27).unwrap();
        encoder.include_contentsize(false).unwrap();
        encoder.write_all(b"{\"q\":\"1' OR 1=1--\"}").unwrap();
        encoder.flush().unwrap();
        let wide = encoder.finish().unwrap();
        assert_eq!(decode(Coding::Zstd, &wide, 65536, false), Decoded::TooLong);
        assert_eq!(decode(Coding::Zstd, &wide, 64, true), Decoded::TooLong, "its start too");
        // 8 MiB, the most RFC 9659 lets an HTTP encoder use, is read.
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        encoder.window_log(23).unwrap();
        encoder.include_contentsize(false).unwrap();
        encoder.write_all(b"{\"q\":1}").unwrap();
        encoder.flush().unwrap();
        assert_eq!(
            decode(Coding::Zstd, &encoder.finish().unwrap(), 1024, false),
            Decoded::Bytes(b"{\"q\":1}".to_vec())
        );
    }

    #[test]
    fn a_bomb_stops_at_the_bound() {
        // 64 MiB of zeros in about 64 KiB: never inflated past the bound.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 100_000, "{}", bomb.len());
        assert_eq!(decode(Coding::Gzip, &bomb, 65536, false), Decoded::TooLong);
        assert_eq!(decode(Coding::Gzip, &bomb, 16, true), Decoded::Bytes(vec![0; 16]), "its start");
        for (coding, bomb) in
            [(Coding::Brotli, brotli(&vec![0u8; 64 << 20])), (Coding::Zstd, zstd(&vec![0u8; 64 << 20]))]
        {
            assert!(bomb.len() < 100_000, "{coding:?}: {}", bomb.len());
            assert_eq!(decode(coding, &bomb, 65536, false), Decoded::TooLong, "{coding:?}");
            assert_eq!(decode(coding, &bomb, 16, true), Decoded::Bytes(vec![0; 16]), "{coding:?}: its start");
        }
        assert_eq!(decode(Coding::Identity, &[1; 10], 9, false), Decoded::TooLong);
    }

    #[test]
    fn cut_short_or_not_gzip_is_corrupt_but_a_start_is_read() {
        let whole = gzip(br#"{"a":"some text that goes on for a while, a while, a while"}"#);
        let cut = &whole[..whole.len() - 6];
        let Decoded::Corrupt(partial) = decode(Coding::Gzip, cut, 1024, false) else { panic!("no trailer") };
        assert!(partial.starts_with(b"{\"a\":\"some text"), "what came out before is kept: {partial:?}");
        assert_eq!(decode(Coding::Gzip, b"{\"not\":\"gzip\"}", 1024, false), Decoded::Corrupt(Vec::new()));
        // Bare deflate makes some bytes of nearly anything before it fails.
        assert!(matches!(decode(Coding::Deflate, b"{\"not\":\"deflate\"}", 1024, false), Decoded::Corrupt(_)));
        // Two members, or a member and stray bytes: the members' text, all of it.
        let two = [gzip(b"{\"a\":"), gzip(b"\"b\"}")].concat();
        assert_eq!(decode(Coding::Gzip, &two, 1024, false), Decoded::Bytes(b"{\"a\":\"b\"}".to_vec()));
        // A sync-flushed stream, then an invalid block: what came before is kept (Go's reader
        // hands it to its parser).
        let mut flushed = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
        flushed.write_all(b"{\"q\":\"flushed\"}").unwrap();
        flushed.flush().unwrap();
        let broken = [flushed.get_ref().clone(), vec![0x07, 0xff, 0xff]].concat();
        let Decoded::Corrupt(text) = decode(Coding::Gzip, &broken, 1024, false) else { panic!("an invalid block") };
        assert_eq!(text, b"{\"q\":\"flushed\"}");
        let trailed = [gzip(b"{\"q\":\"x\"}"), vec![0]].concat();
        let Decoded::Corrupt(text) = decode(Coding::Gzip, &trailed, 1024, false) else { panic!("a stray byte") };
        assert_eq!(text, b"{\"q\":\"x\"}");
        // The first bytes of the stream: the first bytes of the body, or nothing yet.
        let Decoded::Bytes(start) = decode(Coding::Gzip, &whole[..20], 64, true) else { panic!() };
        assert!(start.is_empty() || br#"{"a":"some"#.starts_with(&start[..start.len().min(9)]), "{start:?}");
        assert_eq!(decode(Coding::Gzip, &whole[..5], 64, true), Decoded::Bytes(Vec::new()), "half a header");
    }

    #[test]
    fn a_gzip_headers_text_fields_are_found() {
        let mut named = flate2::GzBuilder::new()
            .filename("a.txt&q=1' OR 1=1--")
            .comment("a comment")
            .extra(vec![1, 2, 3])
            .write(Vec::new(), Compression::default());
        named.write_all(b"hello").unwrap();
        let named = named.finish().unwrap();
        assert_eq!(gzip_header_text(&named), [&[1u8, 2, 3][..], b"a.txt&q=1' OR 1=1--", b"a comment"]);
        assert!(gzip_header_text(&gzip(b"hello")).is_empty());
        let extra = b"\x1f\x8b\x08\x0c\0\0\0\0\0\xff\x09\0&id=1'--&name\0";
        assert_eq!(gzip_header_text(extra), [&b"&id=1'--&"[..], b"name"], "FEXTRA, then FNAME");
        assert_eq!(gzip_header_text(b"\x1f\x8b\x08\x04\0\0\0\0\0\xff\x09\0&id"), [&b"&id"[..]], "cut short");
        assert!(gzip_header_text(b"\x1f\x8b\x08\x18").is_empty(), "cut short: nothing, no panic");
        assert_eq!(gzip_header_text(b"\x1f\x8b\x08\x08\0\0\0\0\0\0name"), [&b"name"[..]], "unterminated");
    }

    #[test]
    fn json_is_told_through_the_coding() {
        let json = gzip(b"  {\"q\":1}");
        assert_eq!(Coding::Gzip.json_like(&json), Some(true));
        assert_eq!(Coding::Gzip.json_like(&json[..4]), None, "not a byte of the body yet");
        assert_eq!(Coding::Gzip.json_like(&gzip(b"GIF89a")), Some(false));
        // Not gzip after all: apps that never inflate parse it as it came.
        assert_eq!(Coding::Gzip.json_like(b"{\"plain\":1}"), Some(true));
        assert_eq!(Coding::Gzip.json_like(b"GIF89a, not gzip"), Some(false));
        assert_eq!(Coding::Other.json_like(b" {\"q\":1}"), Some(true), "a made-up coding: its bytes decide");
        assert_eq!(Coding::Brotli.json_like(&brotli(b"\n{\"q\":1}")), Some(true));
        assert_eq!(Coding::Zstd.json_like(&zstd(b"[1, 2]")), Some(true));
        assert_eq!(Coding::Zstd.json_like(&zstd(b"GIF89a")), Some(false));
        assert_eq!(Coding::Identity.json_like(b" [1]"), Some(true));
        assert_eq!(Coding::Other.json_like(&gzip(b"{}")), Some(false));
    }
}

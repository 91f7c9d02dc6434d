//! An HTTP/2 connection followed by its frame headers, as the bytes go by (issue 16): the peer's
//! premature stream resets (rapid reset) and which streams are open, so that an idle connection
//! can be told from a busy one. Only the 9 bytes of each frame's header are looked at, and the
//! few payload bytes that say why a stream or connection ended; the rest of a payload is skipped
//! over. h2 itself keeps all of this, but pingora gives no way to ask it.

use std::time::Duration;

use tokio::time::Instant;

/// The client's connection preface, before its first frame (with prior knowledge on a plaintext
/// port, this is how HTTP/2 is told from HTTP/1.1).
pub(crate) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How far `bytes`, read after `matched` bytes of the connection preface, carry it: how many of
/// its bytes have come now, or `None` when one of them differs (then it is not HTTP/2).
pub(crate) fn preface_matched(matched: usize, bytes: &[u8]) -> Option<usize> {
    let rest = &PREFACE[matched..];
    let n = rest.len().min(bytes.len());
    (bytes[..n] == rest[..n]).then_some(matched + n)
}

const DATA: u8 = 0x0;
pub(super) const HEADERS: u8 = 0x1;
pub(super) const RST_STREAM: u8 = 0x3;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
/// HEADERS, PUSH_PROMISE and CONTINUATION: the header block ends in this frame.
const END_HEADERS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
/// GOAWAY's error codes (RFC 9113 section 7): a graceful close, and one for a peer that abuses
/// the connection.
pub(super) const NO_ERROR: u32 = 0x0;
pub(super) const ENHANCE_YOUR_CALM: u32 = 0xb;
/// HEADERS and DATA: the sender's last frame on the stream.
const END_STREAM: u8 = 0x1;
/// More open streams than a connection is ever allowed (h2 refuses past
/// `limits.http2.maxConcurrentStreams`, and its refusals close them here too): past it the
/// connection is taken as never idle rather than tracked at any cost.
const MAX_TRACKED: usize = 4096;

/// Frame headers out of a byte stream, however it is split.
#[derive(Debug)]
struct FrameHeaders {
    /// Bytes still to skip: the rest of the connection preface, or of a frame's payload.
    skip: usize,
    header: [u8; 9],
    /// How much of `header` has arrived.
    have: usize,
    /// A RST_STREAM or GOAWAY frame's payload up to its error code, or a one-byte HEADERS
    /// frame's byte, as it arrives.
    coded: Option<Coded>,
}

/// The start of a frame whose code is wanted: its type, flags and stream, the bytes up to the
/// code (RST_STREAM's 4; GOAWAY's last stream id, then its 4; a HEADERS frame's one byte), and
/// the rest of the payload.
#[derive(Debug)]
struct Coded {
    kind: u8,
    flags: u8,
    stream: u32,
    bytes: [u8; SMALL_HEADER_BLOCK],
    have: usize,
    need: usize,
    rest: usize,
}

/// The error code (RFC 9113 section 7) h2 answers a malformed request or frame with.
const PROTOCOL_ERROR: u32 = 0x1;
/// A header block of one byte, `:status: 400` from HPACK's static table (RFC 7541 appendix A,
/// index 12): the whole of the answer pingora's HTTP/2 server gives, without a body or another
/// field, to a request whose authority is ambiguous (`host` and `:authority` that differ,
/// userinfo, an absolute-form `:path`) before the proxy ever sees it. Every answer the sidecar
/// itself makes carries more fields than its status.
const BARE_400: u32 = 0x80 | 12;
/// Header blocks up to this long are looked at ([`lone_field`]): a status alone, after the
/// table size updates HPACK puts first when the peer changed its table's size (RFC 7541
/// section 4.2: two at most, each at most 6 bytes for a 32-bit size).
const SMALL_HEADER_BLOCK: usize = 13;

/// The one field of a header block that holds one after any dynamic table size updates
/// (`001xxxxx`, a 5-bit prefixed integer), as its byte; `u32::MAX` for any other block.
fn lone_field(block: &[u8]) -> u32 {
    let mut at = 0;
    while block.get(at).is_some_and(|b| b & 0xe0 == 0x20) {
        if block[at] & 0x1f == 0x1f {
            at += 1;
            while block.get(at).is_some_and(|b| b & 0x80 != 0) {
                at += 1;
            }
        }
        at += 1;
    }
    match block.get(at..) {
        Some([field]) => u32::from(*field),
        _ => u32::MAX,
    }
}

impl FrameHeaders {
    fn after(skip: usize) -> Self {
        FrameHeaders { skip, header: [0; 9], have: 0, coded: None }
    }

    /// Between two frames: no frame's header or payload is partly through.
    fn between_frames(&self) -> bool {
        self.skip == 0 && self.have == 0 && self.coded.is_none()
    }

    /// The type of the frame whose payload is partly through, if one is.
    fn in_payload_of(&self) -> Option<u8> {
        match &self.coded {
            Some(c) => Some(c.kind),
            // The header of the frame being skipped stays in `header` until the next one begins.
            None => (self.skip > 0 && self.have == 0).then_some(self.header[3]),
        }
    }

    /// Calls `frame(type, flags, stream, code)` for each frame header completed in `bytes`; a
    /// RST_STREAM or GOAWAY frame's once its error code has come too, a small HEADERS frame's
    /// once its block has, with its lone field ([`lone_field`]) (`code`; `None` for other
    /// frames).
    fn feed(&mut self, mut bytes: &[u8], mut frame: impl FnMut(u8, u8, u32, Option<u32>)) {
        while !bytes.is_empty() {
            if let Some(c) = self.coded.as_mut() {
                let n = (c.need - c.have).min(bytes.len());
                c.bytes[c.have..c.have + n].copy_from_slice(&bytes[..n]);
                c.have += n;
                bytes = &bytes[n..];
                if c.have == c.need {
                    let code = match c.kind {
                        HEADERS => lone_field(&c.bytes[..c.need]),
                        _ => c.bytes[c.need - 4..c.need].iter().fold(0, |code, &b| code << 8 | u32::from(b)),
                    };
                    frame(c.kind, c.flags, c.stream, Some(code));
                    self.skip = c.rest;
                    self.coded = None;
                }
                continue;
            }
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == 9 {
                self.have = 0;
                let h = &self.header;
                self.skip = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                let need = match h[3] {
                    RST_STREAM if self.skip == 4 => 4,
                    GOAWAY if self.skip >= 8 => 8,
                    HEADERS if (1..=SMALL_HEADER_BLOCK).contains(&self.skip) => self.skip,
                    _ => 0,
                };
                if need > 0 {
                    let rest = self.skip - need;
                    self.skip = 0;
                    self.coded = Some(Coded {
                        kind: h[3],
                        flags: h[4],
                        stream,
                        bytes: [0; SMALL_HEADER_BLOCK],
                        have: 0,
                        need,
                        rest,
                    });
                } else {
                    frame(h[3], h[4], stream, None);
                }
            }
        }
    }
}

/// Premature RST_STREAM frames per second (CVE-2023-44487: streams opened and cancelled at once
/// cost the server work the client never waits for). Premature: for a stream the server has not
/// begun to answer (no HEADERS or DATA written on it). Clients reset streams they are done with
/// too (hyper cancels a stream whose response body it drops unread); those resets come after the
/// answer began and are not counted. Whatever else the server writes meanwhile (a PING's
/// acknowledgement, another stream's data) answers nothing.
#[derive(Debug)]
struct Resets {
    max: u32,
    window: Instant,
    count: u32,
}

/// A stream the peer opened that is not done, and whether the server began its answer.
#[derive(Debug, Clone, Copy)]
struct OpenStream {
    id: u32,
    answered: bool,
}

/// The streams the peer opened that are not done: the server ended its side (END_STREAM) or
/// either side reset them.
#[derive(Debug)]
struct OpenStreams {
    streams: Vec<OpenStream>,
    /// Since when none is open; `None` while some are, or past [`MAX_TRACKED`].
    idle_since: Option<Instant>,
    overflowed: bool,
}

impl OpenStreams {
    fn opened(&mut self, id: u32) {
        if self.overflowed {
            return;
        }
        if self.streams.len() == MAX_TRACKED {
            self.overflowed = true;
            self.streams = Vec::new();
        } else {
            self.streams.push(OpenStream { id, answered: false });
        }
        self.idle_since = None;
    }

    fn answered(&mut self, id: u32) {
        if let Some(stream) = self.streams.iter_mut().find(|s| s.id == id) {
            stream.answered = true;
        }
    }

    /// Open and not answered; past [`MAX_TRACKED`], any stream (no connection needs that many).
    fn unanswered(&self, id: u32) -> bool {
        self.overflowed || self.streams.iter().any(|s| s.id == id && !s.answered)
    }

    fn ended(&mut self, id: u32) {
        if let Some(at) = self.streams.iter().position(|s| s.id == id) {
            self.streams.swap_remove(at);
            if self.streams.is_empty() {
                self.idle_since = Some(Instant::now());
            }
        }
    }
}

/// One HTTP/2 connection's frames both ways, from its preface on.
#[derive(Debug)]
pub(super) struct H2Frames {
    read: FrameHeaders,
    written: FrameHeaders,
    /// `None`: resets are not limited.
    resets: Option<Resets>,
    /// The highest stream id the peer opened (HEADERS) so far.
    highest_opened: u32,
    open: OpenStreams,
    /// Whether anyone asks whether the connection is idle (`idle_since`).
    report_idle: bool,
    /// A header block the peer began (HEADERS without END_HEADERS) and has not ended: a request
    /// head still arriving, held to the head's deadline as an HTTP/1.1 one is.
    in_header_block: bool,
    /// Requests h2 or pingora refused as malformed (`RST_STREAM(PROTOCOL_ERROR)` or a bare
    /// [`BARE_400`] before any other answer), not yet taken by [`H2Frames::take_malformed`].
    malformed: u32,
    /// h2 wrote a GOAWAY(ENHANCE_YOUR_CALM) of its own (its flood guards), not yet taken by
    /// [`H2Frames::take_abused`]. The sidecar's own GOAWAYs do not go through [`H2Frames::wrote`].
    abused: bool,
}

impl H2Frames {
    /// Follows a connection whose next `preface_left` bytes read are the rest of its preface:
    /// its resets when limited to `max_resets_per_second`, its open streams when `track_streams`;
    /// `None` when neither.
    pub(super) fn new(max_resets_per_second: Option<u32>, track_streams: bool, preface_left: usize) -> Option<Self> {
        if max_resets_per_second.is_none() && !track_streams {
            return None;
        }
        Some(H2Frames {
            read: FrameHeaders::after(preface_left),
            written: FrameHeaders::after(0),
            resets: max_resets_per_second.map(|max| Resets { max, window: Instant::now(), count: 0 }),
            highest_opened: 0,
            open: OpenStreams { streams: Vec::new(), idle_since: Some(Instant::now()), overflowed: false },
            report_idle: track_streams,
            in_header_block: false,
            malformed: 0,
            abused: false,
        })
    }

    /// Follows `bytes`, the next ones the peer sent; whether the peer is past its resets.
    pub(super) fn read(&mut self, bytes: &[u8]) -> bool {
        let mut premature = 0u32;
        let (highest, open, in_block) = (&mut self.highest_opened, &mut self.open, &mut self.in_header_block);
        self.read.feed(bytes, |kind, flags, stream, _| {
            if matches!(kind, HEADERS | PUSH_PROMISE | CONTINUATION) {
                *in_block = flags & END_HEADERS == 0;
            }
            match kind {
                // A stream's first HEADERS opens it (later ones on it are trailers).
                HEADERS if stream > *highest => {
                    *highest = stream;
                    open.opened(stream);
                }
                RST_STREAM => {
                    // A stream never opened is h2's to refuse; counted all the same.
                    premature += u32::from(stream > *highest || open.unanswered(stream));
                    open.ended(stream);
                }
                _ => {}
            }
        });
        let Some(resets) = self.resets.as_mut().filter(|_| premature > 0) else { return false };
        let now = Instant::now();
        if now.duration_since(resets.window) >= Duration::from_secs(1) {
            resets.window = now;
            resets.count = 0;
        }
        resets.count = resets.count.saturating_add(premature);
        resets.count > resets.max
    }

    /// Follows `bytes`, the next ones the server wrote to the peer: the answers begun and ended.
    pub(super) fn wrote(&mut self, bytes: &[u8]) {
        let (open, malformed, abused) = (&mut self.open, &mut self.malformed, &mut self.abused);
        // Followed even when no stream is: where the frames end is what says whether a GOAWAY
        // may be written (`goaway`).
        self.written.feed(bytes, |kind, flags, stream, code| match kind {
            HEADERS if flags & END_STREAM != 0 => {
                // pingora refusing an ambiguous authority, without a word to the proxy.
                if code == Some(BARE_400) && flags & END_HEADERS != 0 && open.unanswered(stream) {
                    *malformed += 1;
                }
                open.ended(stream)
            }
            DATA if flags & END_STREAM != 0 => open.ended(stream),
            DATA | HEADERS => open.answered(stream),
            RST_STREAM => {
                // h2 refusing a request it found malformed (an upper-case or connection-specific
                // header, a bad pseudo-header, CR or LF in a value) before pingora ever saw it.
                if code == Some(PROTOCOL_ERROR) && open.unanswered(stream) {
                    *malformed += 1;
                }
                open.ended(stream)
            }
            // h2 closing the whole connection for what the peer sent (a connection-specific
            // header is one such error to h2): the request that did it is one refused.
            GOAWAY if code == Some(PROTOCOL_ERROR) => *malformed += 1,
            // h2's own flood guards closing the connection.
            GOAWAY if code == Some(ENHANCE_YOUR_CALM) => *abused = true,
            _ => {}
        });
    }

    /// Whether h2 closed the connection for a flood since the last call.
    pub(super) fn take_abused(&mut self) -> bool {
        std::mem::take(&mut self.abused)
    }

    /// The requests h2 refused as malformed since the last call.
    pub(super) fn take_malformed(&mut self) -> u32 {
        std::mem::take(&mut self.malformed)
    }

    /// The GOAWAY frame to write before the sidecar closes the connection itself: it names the
    /// last stream the peer opened, so the peer knows that any later one it sent was not taken
    /// and may retry it elsewhere (without one, a request racing the close is lost with the
    /// connection, and a well-behaved client takes the close for a failure). `None` while the
    /// server's last frame is only partly written: a frame in its middle would garble both.
    pub(super) fn goaway(&self, code: u32) -> Option<[u8; 17]> {
        if !self.written.between_frames() {
            return None;
        }
        let mut frame = [0u8; 17];
        frame[2] = 8; // the payload: last stream id, then the code
        frame[3] = GOAWAY;
        frame[9..13].copy_from_slice(&self.highest_opened.to_be_bytes());
        frame[13..].copy_from_slice(&code.to_be_bytes());
        Some(frame)
    }

    /// Since when no stream has been open; `None` while one is (or when not followed).
    pub(super) fn idle_since(&self) -> Option<Instant> {
        self.open.idle_since.filter(|_| self.report_idle)
    }

    /// Whether the peer is in the middle of a header block (a request head not yet whole): one
    /// not ended by END_HEADERS, or a header frame whose payload has not all come (one HEADERS
    /// frame sent a byte a second had held a connection past every deadline).
    pub(super) fn in_header_block(&self) -> bool {
        self.in_header_block
            || self.read.in_payload_of().is_some_and(|kind| matches!(kind, HEADERS | PUSH_PROMISE | CONTINUATION))
    }

    /// Stops counting resets (the connection is being closed for them).
    pub(super) fn stop_counting_resets(&mut self) {
        self.resets = None;
    }

    #[cfg(test)]
    fn resets(&self) -> u32 {
        self.resets.as_ref().map_or(0, |r| r.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP/2 frame: length, type, flags, stream id, payload.
    fn frame_with(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        frame_with(kind, 0, stream, payload)
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_h2_resets_as_malformed_before_any_answer_is_counted_once_however_split() {
        let mut h2 = H2Frames::new(Some(100), false, PREFACE.len()).unwrap();
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(HEADERS, 1, &[0x82]));
        wire.extend(frame(HEADERS, 3, &[0x82]));
        wire.extend(frame(HEADERS, 5, &[0x82]));
        h2.read(&wire);
        // Stream 1 refused as malformed; stream 3 answered, then reset so; stream 5 cancelled.
        let mut written = frame(RST_STREAM, 1, &PROTOCOL_ERROR.to_be_bytes());
        written.extend(frame(HEADERS, 3, &[0x88]));
        written.extend(frame(RST_STREAM, 3, &PROTOCOL_ERROR.to_be_bytes()));
        written.extend(frame(RST_STREAM, 5, &8u32.to_be_bytes()));
        // Then the connection closed for a malformed frame (with debug data), and once more
        // gracefully.
        let mut goaway = 5u32.to_be_bytes().to_vec();
        goaway.extend(PROTOCOL_ERROR.to_be_bytes());
        goaway.extend(b"malformed headers");
        written.extend(frame(GOAWAY, 0, &goaway));
        written.extend(frame(GOAWAY, 0, &[0, 0, 0, 5, 0, 0, 0, 0]));
        for piece in written.chunks(3) {
            h2.wrote(piece);
        }
        assert_eq!(h2.take_malformed(), 2);
        assert_eq!(h2.take_malformed(), 0, "taken");
        assert!(h2.written.between_frames());
    }

    #[test]
    fn a_bare_400_before_any_answer_is_a_refused_request_and_no_other_answer_is() {
        const END: u8 = END_STREAM | END_HEADERS;
        let mut h2 = H2Frames::new(None, true, PREFACE.len()).unwrap();
        let mut wire = PREFACE.to_vec();
        for stream in (1..=17).step_by(2) {
            wire.extend(frame_with(HEADERS, END_HEADERS, stream, &[0x82, 0x86]));
        }
        h2.read(&wire);
        // 1: pingora's refusal of an ambiguous authority. 3: a 400 of the sidecar's own, with
        // fields beside its status. 5: a bare 200. 7: a bare 400 as trailers, after an answer
        // began. 9: a bare 400 whose block goes on in a CONTINUATION. 11: the refusal again.
        let mut written = frame_with(HEADERS, END, 1, &[0x8c]);
        written.extend(frame_with(HEADERS, END, 3, &[0x8c, 0x5c, 0x01, b'0']));
        written.extend(frame_with(HEADERS, END, 5, &[0x88]));
        written.extend(frame_with(HEADERS, END_HEADERS, 7, &[0x88, 0x5c, 0x01, b'9']));
        written.extend(frame(DATA, 7, b"12345678"));
        written.extend(frame_with(HEADERS, END, 7, &[0x8c]));
        written.extend(frame_with(HEADERS, END_STREAM, 9, &[0x8c]));
        written.extend(frame_with(CONTINUATION, END_HEADERS, 9, &[0x5c, 0x01, b'0']));
        written.extend(frame_with(HEADERS, END, 11, &[0x8c]));
        // The refusal after the peer changed its table's size: a size update first (0, then
        // 4096 in a prefixed integer of three bytes).
        written.extend(frame_with(HEADERS, END, 13, &[0x20, 0x8c]));
        written.extend(frame_with(HEADERS, END, 15, &[0x20, 0x3f, 0xe1, 0x1f, 0x8c]));
        // A size update, then more than a status: the sidecar's own answer.
        written.extend(frame_with(HEADERS, END, 17, &[0x3f, 0xe1, 0x1f, 0x8c, 0x5c, 0x01, b'0']));
        for piece in written.chunks(2) {
            h2.wrote(piece);
        }
        assert_eq!(h2.take_malformed(), 4);
        assert!(h2.written.between_frames());
        assert!(h2.idle_since().is_some(), "every stream ended");
    }

    #[tokio::test(start_paused = true)]
    async fn stream_resets_are_counted_from_frame_headers_per_second_whatever_the_read_boundaries() {
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(0x4, 0, &[0; 12])); // SETTINGS
        for stream in (1..=9u32).step_by(2) {
            wire.extend(frame(HEADERS, stream, &[0x82, 0x86, 0x84]));
            wire.extend(frame(DATA, stream, &[RST_STREAM; 1000])); // a payload of 0x03 bytes
            wire.extend(frame(RST_STREAM, stream, &8u32.to_be_bytes()));
        }
        // Five resets: at the limit of five, not past it, however the bytes are split up.
        for chunk in [1, 7, 9, 100, wire.len()] {
            let mut count = H2Frames::new(Some(5), false, PREFACE.len()).unwrap();
            assert!(!wire.chunks(chunk).any(|c| count.read(c)), "split every {chunk}");
            assert_eq!(count.resets(), 5, "split every {chunk}: only RST_STREAM frames count");
            // One more within the second: past it.
            assert!(count.read(&frame(RST_STREAM, 11, &8u32.to_be_bytes())));
        }
        // A second later the count starts again.
        let mut count = H2Frames::new(Some(5), false, PREFACE.len()).unwrap();
        assert!(!count.read(&wire));
        tokio::time::advance(Duration::from_secs(1)).await;
        let more: Vec<u8> = (0..5).flat_map(|i| frame(RST_STREAM, 13 + 2 * i, &8u32.to_be_bytes())).collect();
        assert!(!count.read(&more), "five in the next second");
        assert!(count.read(&frame(RST_STREAM, 31, &8u32.to_be_bytes())), "and the sixth is one too many");
    }

    #[test]
    fn resets_of_streams_the_server_may_have_answered_are_not_counted() {
        let mut count = H2Frames::new(Some(5), false, PREFACE.len()).unwrap();
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(0x4, 0, &[]));
        assert!(!count.read(&wire));
        // A client done with each answer: opens a stream, the server answers, the client cancels
        // what is left of it. Any number of those.
        for stream in (1..200u32).step_by(2) {
            assert!(!count.read(&frame(HEADERS, stream, &[0x82, 0x87, 0x84])));
            count.wrote(&frame(HEADERS, stream, &[0x88]));
            assert!(!count.read(&frame(RST_STREAM, stream, &8u32.to_be_bytes())), "stream {stream}");
        }
        assert_eq!(count.resets(), 0);
        // Rapid reset: streams opened and cancelled before the server wrote anything.
        let flood: Vec<u8> = (0..6u32)
            .flat_map(|i| [frame(HEADERS, 201 + 2 * i, &[0x82]), frame(RST_STREAM, 201 + 2 * i, &8u32.to_be_bytes())])
            .flatten()
            .collect();
        assert!(count.read(&flood), "six premature resets, five allowed");
    }

    #[test]
    fn what_the_server_writes_on_other_streams_or_the_connection_answers_no_stream() {
        // The bypass: open a stream, ask for a PING and wait for its acknowledgement, then
        // reset the stream. The server wrote in between, but nothing on that stream.
        let mut count = H2Frames::new(Some(5), false, PREFACE.len()).unwrap();
        assert!(!count.read(&[PREFACE.as_slice(), &frame(0x4, 0, &[])].concat()));
        let long_download = 1;
        assert!(!count.read(&frame(HEADERS, long_download, &[0x82])));
        count.wrote(&frame(HEADERS, long_download, &[0x88]));
        let past = (1..=6u32).map(|i| {
            let stream = 1 + 2 * i;
            assert!(!count.read(&[frame(HEADERS, stream, &[0x82]), frame(0x6, 0, &[0; 8])].concat()));
            count.wrote(&[frame_with(0x6, 0x1, 0, &[0; 8]), frame(DATA, long_download, &[0; 100])].concat());
            count.read(&frame(RST_STREAM, stream, &8u32.to_be_bytes()))
        });
        assert_eq!(past.collect::<Vec<_>>(), [false, false, false, false, false, true], "the sixth is past five");
    }

    #[test]
    fn a_header_block_is_open_from_headers_without_end_headers_to_the_continuation_that_ends_it() {
        let mut conn = H2Frames::new(Some(100), false, PREFACE.len()).unwrap();
        conn.read(&[PREFACE.as_slice(), &frame(0x4, 0, &[])].concat());
        assert!(!conn.in_header_block());
        conn.read(&frame_with(HEADERS, 0x1, 1, &[0x82]));
        assert!(conn.in_header_block(), "HEADERS without END_HEADERS");
        conn.read(&frame(CONTINUATION, 1, &[0x84]));
        assert!(conn.in_header_block(), "a CONTINUATION without it");
        let last = frame_with(CONTINUATION, END_HEADERS, 1, &[0x86]);
        conn.read(&last[..5]);
        assert!(conn.in_header_block(), "its frame header not yet whole");
        conn.read(&last[5..]);
        assert!(!conn.in_header_block(), "ended");
        conn.read(&frame_with(HEADERS, END_HEADERS | 0x1, 3, &[0x82]));
        assert!(!conn.in_header_block(), "a whole head in one frame");
        // One frame with the whole head, its payload trickled (outside tester j2: a byte a
        // second held the connection past headerTimeout and idleTimeout).
        let head = frame_with(HEADERS, END_HEADERS | 0x1, 5, &[0x82; 240]);
        for (i, byte) in head.iter().enumerate() {
            conn.read(std::slice::from_ref(byte));
            // From its frame header on (before it, the connection is idle, and timed so).
            assert_eq!(conn.in_header_block(), (8..head.len() - 1).contains(&i), "after {} bytes", i + 1);
        }
        // A DATA frame's payload is no head.
        let data = frame(DATA, 5, &[0; 100]);
        conn.read(&data[..50]);
        assert!(!conn.in_header_block());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_from_its_preface_and_whenever_every_stream_it_opened_is_done() {
        assert!(H2Frames::new(None, false, PREFACE.len()).is_none(), "nothing to follow");
        let start = Instant::now();
        let mut conn = H2Frames::new(None, true, PREFACE.len()).unwrap();
        assert_eq!(conn.idle_since(), Some(start), "no stream yet");
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(0x4, 0, &[]));
        wire.extend(frame(HEADERS, 1, &[0x82]));
        wire.extend(frame_with(HEADERS, END_STREAM | 0x4, 3, &[0x82]));
        // Split anywhere, both ways.
        for c in wire.chunks(5) {
            conn.read(c);
        }
        assert_eq!(conn.idle_since(), None, "two streams open");
        // The server's settings and its whole answer to stream 1: headers, then data that ends it.
        let mut answer = frame(0x4, 0, &[]);
        answer.extend(frame(HEADERS, 1, &[0x88]));
        answer.extend(frame(DATA, 1, &[0; 300]));
        answer.extend(frame_with(DATA, END_STREAM, 1, &[HEADERS; 40]));
        for c in answer.chunks(7) {
            conn.wrote(c);
        }
        assert_eq!(conn.idle_since(), None, "stream 3 is still open (the client's END_STREAM ends only its side)");
        tokio::time::advance(Duration::from_secs(2)).await;
        // The server resets stream 3 (an early answer's RST_STREAM(NO_ERROR)): none open.
        conn.wrote(&frame(RST_STREAM, 3, &0u32.to_be_bytes()));
        let idle = Instant::now();
        assert_eq!(conn.idle_since(), Some(idle));
        // Trailers on a done stream, or a second reset of it, open nothing and move nothing.
        tokio::time::advance(Duration::from_secs(1)).await;
        conn.read(&frame(HEADERS, 3, &[0x82]));
        conn.read(&frame(RST_STREAM, 1, &8u32.to_be_bytes()));
        assert_eq!(conn.idle_since(), Some(idle));
        // A new stream, reset by the client: busy, then idle again.
        conn.read(&frame(HEADERS, 5, &[0x82]));
        assert_eq!(conn.idle_since(), None);
        conn.read(&frame(RST_STREAM, 5, &8u32.to_be_bytes()));
        assert_eq!(conn.idle_since(), Some(Instant::now()));
    }

    #[test]
    fn a_goaway_names_the_last_stream_the_peer_opened_and_is_only_written_between_frames() {
        let mut conn = H2Frames::new(Some(100), false, PREFACE.len()).unwrap();
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(0x4, 0, &[]));
        wire.extend(frame(HEADERS, 1, &[0x82]));
        wire.extend(frame(HEADERS, 7, &[0x82]));
        wire.extend(frame(HEADERS, 1, &[0x82])); // trailers: no new stream
        conn.read(&wire);
        let expected = frame(GOAWAY, 0, &[0, 0, 0, 7, 0, 0, 0, 0x0b]);
        assert_eq!(conn.goaway(ENHANCE_YOUR_CALM).map(Vec::from), Some(expected.clone()), "nothing written yet");
        // The server's frames in pieces: only once the last one is whole may a GOAWAY follow it.
        let answer = [frame(0x4, 0, &[]), frame(HEADERS, 1, &[0x88]), frame(DATA, 7, &[0; 100])].concat();
        for end in 1..answer.len() {
            let mut conn = H2Frames::new(Some(100), false, PREFACE.len()).unwrap();
            conn.read(&wire);
            conn.wrote(&answer[..end]);
            let between = [9, 19].contains(&end);
            assert_eq!(conn.goaway(ENHANCE_YOUR_CALM).is_some(), between, "after {end} bytes");
            conn.wrote(&answer[end..]);
            assert_eq!(conn.goaway(ENHANCE_YOUR_CALM).map(Vec::from), Some(expected.clone()));
        }
        assert_eq!(
            &H2Frames::new(None, true, PREFACE.len()).unwrap().goaway(NO_ERROR).unwrap()[9..],
            &[0; 8],
            "no stream yet"
        );
    }

    #[test]
    fn past_any_sane_number_of_open_streams_a_connection_is_never_taken_as_idle() {
        let mut conn = H2Frames::new(None, true, PREFACE.len()).unwrap();
        conn.read(PREFACE);
        let opened: Vec<u8> = (0..=MAX_TRACKED as u32).flat_map(|i| frame(HEADERS, 1 + 2 * i, &[0x82])).collect();
        conn.read(&opened);
        let ended: Vec<u8> = (0..=MAX_TRACKED as u32).flat_map(|i| frame(RST_STREAM, 1 + 2 * i, &[0; 4])).collect();
        conn.read(&ended);
        assert_eq!(conn.idle_since(), None);
    }
}

//! base64url without padding (RFC 7515 section 2), strict: one encoding per byte string, so a
//! token cannot be varied (padding, `+`/`/`, stray bits in the last character) while keeping
//! the same signature bytes. (An ECDSA signature has a second valid form, (r, n - s), which ring
//! accepts as issuers' libraries do: refusing it would refuse half of all honest ES256 tokens.
//! Nothing here trusts a token for being byte-equal to another.)

/// Decodes `input`; `None` on any character outside the URL-safe alphabet (`=` included), on
/// a length that no byte string encodes to, or on non-zero unused bits in the last character.
pub(crate) fn decode(input: &[u8]) -> Option<Vec<u8>> {
    if input.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(input.len() / 4 * 3 + 2);
    let mut chunks = input.chunks_exact(4);
    for chunk in &mut chunks {
        let n = (sextet(chunk[0])? << 18) | (sextet(chunk[1])? << 12) | (sextet(chunk[2])? << 6) | sextet(chunk[3])?;
        out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
    }
    match *chunks.remainder() {
        [] => {}
        [a, b] => {
            let (a, b) = (sextet(a)?, sextet(b)?);
            if b & 0x0f != 0 {
                return None;
            }
            out.push(((a << 2) | (b >> 4)) as u8);
        }
        [a, b, c] => {
            let (a, b, c) = (sextet(a)?, sextet(b)?, sextet(c)?);
            if c & 0x03 != 0 {
                return None;
            }
            let n = (a << 18) | (b << 12) | (c << 6);
            out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8]);
        }
        _ => return None,
    }
    Some(out)
}

/// Encodes without padding (tests and the benchmark build tokens with it).
pub fn encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize] as char);
        }
    }
    out
}

fn sextet(c: u8) -> Option<u32> {
    let v = match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => return None,
    };
    Some(u32::from(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_length() {
        let data: Vec<u8> = (0..=255u8).collect();
        for len in 0..70 {
            let enc = encode(&data[..len]);
            assert!(!enc.contains('='));
            assert_eq!(decode(enc.as_bytes()).as_deref(), Some(&data[..len]), "len {len}");
        }
    }

    #[test]
    fn known_vectors() {
        // RFC 4648 section 10, in the URL-safe alphabet without padding.
        for (plain, enc) in
            [("", ""), ("f", "Zg"), ("fo", "Zm8"), ("foo", "Zm9v"), ("foob", "Zm9vYg"), ("fooba", "Zm9vYmE")]
        {
            assert_eq!(encode(plain.as_bytes()), enc);
            assert_eq!(decode(enc.as_bytes()).unwrap(), plain.as_bytes());
        }
        assert_eq!(decode(b"-_-_").unwrap(), [0xfb, 0xff, 0xbf]);
    }

    #[test]
    fn refuses_padding_standard_alphabet_and_junk() {
        for bad in ["Zg==", "Zm8=", "+/+/", "ab/c", "Zm9v\n", "Zm 9v", "Z", "Zm9vY", "é"] {
            assert_eq!(decode(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn refuses_non_canonical_trailing_bits() {
        // "Zg" is the only encoding of "f"; "Zh" decodes to the same byte with a stray bit.
        assert!(decode(b"Zg").is_some());
        assert_eq!(decode(b"Zh"), None);
        assert!(decode(b"Zm8").is_some());
        assert_eq!(decode(b"Zm9"), None);
    }
}

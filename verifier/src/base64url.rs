//! Strict base64url without padding (RFC 7515 §2, RFC 4648 §5): the only encoding JOSE
//! uses. Decoding refuses padding, other alphabets, a length no encoder produces, and
//! non-zero trailing bits, so every value has exactly one accepted spelling.

/// Decodes `text`, or `None` if it is not canonical unpadded base64url.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if bytes.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc: u32 = 0;
        for &c in chunk {
            acc = (acc << 6) | u32::from(value(c)?);
        }
        match chunk.len() {
            4 => out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]),
            3 => {
                if acc & 0b11 != 0 {
                    return None;
                }
                out.extend_from_slice(&[(acc >> 10) as u8, (acc >> 2) as u8]);
            }
            2 => {
                if acc & 0b1111 != 0 {
                    return None;
                }
                out.push((acc >> 4) as u8);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// True when every byte is in the base64url alphabet.
pub fn is_alphabet(text: &str) -> bool {
    text.bytes().all(|b| value(b).is_some())
}

fn value(c: u8) -> Option<u8> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => return None,
    })
}

/// Encodes `bytes` without padding (thumbprints, `ath`, nonces).
pub fn encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_length() {
        let data: Vec<u8> = (0..=255).collect();
        for n in 0..40 {
            assert_eq!(decode(&encode(&data[..n])).as_deref(), Some(&data[..n]));
        }
    }

    #[test]
    fn refuses_non_canonical_spellings() {
        assert_eq!(decode("QQ").as_deref(), Some(&b"A"[..]));
        // Same byte with a non-zero trailing bit, padding, the standard alphabet,
        // an impossible length.
        for bad in ["QR", "QQ==", "a+b/", "QUJDR", "a.b", "é"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }
}

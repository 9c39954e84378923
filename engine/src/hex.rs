//! Lowercase hex, for digests and the raw bytes carried in checkpoints.

/// Why a hex string could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid hex string: {0}")]
pub struct HexError(&'static str);

pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

pub fn decode(text: &str) -> Result<Vec<u8>, HexError> {
    fn nibble(c: u8) -> Result<u8, HexError> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(HexError("non-hex character")),
        }
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return Err(HexError("odd length"));
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Ok((nibble(pair[0])? << 4) | nibble(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let data: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&data)), Ok(data));
        assert_eq!(encode(&[0xab, 0x01]), "ab01");
        assert!(decode("abc").is_err());
        assert!(decode("zz").is_err());
    }
}

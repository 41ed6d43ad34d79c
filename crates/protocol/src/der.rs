//! A minimal, strict DER reader and writer: just what RSA key encodings need.
//!
//! The reader accepts only definite, minimally encoded lengths and never
//! indexes out of bounds; every malformed input is an [`DerError`].

/// Tag numbers used by the key encodings.
pub mod tag {
    /// INTEGER
    pub const INTEGER: u8 = 0x02;
    /// BIT STRING
    pub const BIT_STRING: u8 = 0x03;
    /// OCTET STRING
    pub const OCTET_STRING: u8 = 0x04;
    /// NULL
    pub const NULL: u8 = 0x05;
    /// OBJECT IDENTIFIER
    pub const OID: u8 = 0x06;
    /// SEQUENCE (constructed)
    pub const SEQUENCE: u8 = 0x30;
}

/// Malformed DER.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DerError {
    /// The input ended inside an element.
    #[error("truncated DER")]
    Truncated,
    /// An element has a different tag than the structure requires.
    #[error("unexpected DER tag: expected {expected:#04x}, found {found:#04x}")]
    UnexpectedTag {
        /// The tag the structure requires.
        expected: u8,
        /// The tag found.
        found: u8,
    },
    /// Indefinite, non-minimal or oversized length.
    #[error("invalid DER length")]
    InvalidLength,
    /// An INTEGER that is negative, empty or not minimally encoded.
    #[error("invalid DER INTEGER")]
    InvalidInteger,
    /// Bytes remain after the structure.
    #[error("trailing data after DER structure")]
    TrailingData,
    /// A well-formed value that the structure does not allow.
    #[error("unsupported DER value")]
    Unsupported,
}

/// Reads DER elements from a byte slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading `input`.
    pub fn new(input: &'a [u8]) -> Self {
        Self { rest: input }
    }

    /// True when all input has been consumed.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Fails unless all input has been consumed.
    pub fn finish(&self) -> Result<(), DerError> {
        if self.rest.is_empty() { Ok(()) } else { Err(DerError::TrailingData) }
    }

    /// Reads one element with tag `expected` and returns its contents.
    pub fn read(&mut self, expected: u8) -> Result<&'a [u8], DerError> {
        let (&found, after_tag) = self.rest.split_first().ok_or(DerError::Truncated)?;
        if found != expected {
            return Err(DerError::UnexpectedTag { expected, found });
        }
        let (len, after_len) = read_length(after_tag)?;
        if after_len.len() < len {
            return Err(DerError::Truncated);
        }
        let (contents, rest) = after_len.split_at(len);
        self.rest = rest;
        Ok(contents)
    }

    /// Reads one element with tag `expected` and returns its full encoding
    /// (tag, length and contents).
    pub fn read_raw(&mut self, expected: u8) -> Result<&'a [u8], DerError> {
        let before = self.rest;
        let contents = self.read(expected)?;
        let header_len = before.len() - self.rest.len() - contents.len();
        before.get(..header_len + contents.len()).ok_or(DerError::Truncated)
    }

    /// Reads a SEQUENCE and returns a reader over its contents.
    pub fn sequence(&mut self) -> Result<Reader<'a>, DerError> {
        self.read(tag::SEQUENCE).map(Reader::new)
    }

    /// Reads a non-negative INTEGER and returns its big-endian magnitude with
    /// no leading zero bytes (the value zero is returned as an empty slice).
    pub fn unsigned_integer(&mut self) -> Result<&'a [u8], DerError> {
        let contents = self.read(tag::INTEGER)?;
        match contents {
            [] => Err(DerError::InvalidInteger),
            [first, ..] if first & 0x80 != 0 => Err(DerError::InvalidInteger),
            [0] => Ok(&[]),
            [0, second, rest @ ..] => {
                if second & 0x80 == 0 {
                    return Err(DerError::InvalidInteger);
                }
                let _ = rest;
                contents.get(1..).ok_or(DerError::InvalidInteger)
            }
            _ => Ok(contents),
        }
    }

    /// Reads a small non-negative INTEGER (e.g. a version field).
    pub fn small_integer(&mut self) -> Result<u64, DerError> {
        let magnitude = self.unsigned_integer()?;
        if magnitude.len() > 8 {
            return Err(DerError::Unsupported);
        }
        Ok(magnitude.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }
}

fn read_length(input: &[u8]) -> Result<(usize, &[u8]), DerError> {
    let (&first, rest) = input.split_first().ok_or(DerError::Truncated)?;
    if first < 0x80 {
        return Ok((usize::from(first), rest));
    }
    let count = usize::from(first & 0x7f);
    // 0x80 is the indefinite form (BER only); more than 4 length bytes is
    // absurd for key material.
    if count == 0 || count > 4 {
        return Err(DerError::InvalidLength);
    }
    if rest.len() < count {
        return Err(DerError::Truncated);
    }
    let (len_bytes, rest) = rest.split_at(count);
    if len_bytes.first() == Some(&0) {
        return Err(DerError::InvalidLength);
    }
    let len = len_bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
    if len < 0x80 {
        return Err(DerError::InvalidLength);
    }
    Ok((len, rest))
}

/// Appends a DER element with `tag` and `contents` to `out`.
pub fn write(out: &mut Vec<u8>, tag: u8, contents: &[u8]) {
    out.push(tag);
    write_length(out, contents.len());
    out.extend_from_slice(contents);
}

/// Returns a DER element with `tag` and `contents`.
pub fn element(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(contents.len() + 6);
    write(&mut out, tag, contents);
    out
}

/// Appends a non-negative INTEGER whose big-endian magnitude is `magnitude`
/// (leading zeros are stripped; a zero byte is added when the top bit is set).
pub fn write_unsigned_integer(out: &mut Vec<u8>, magnitude: &[u8]) {
    let first_nonzero = magnitude.iter().position(|&b| b != 0).unwrap_or(magnitude.len());
    let trimmed = magnitude.get(first_nonzero..).unwrap_or(&[]);
    let mut contents = Vec::with_capacity(trimmed.len() + 1);
    match trimmed.first() {
        None => contents.push(0),
        Some(b) if b & 0x80 != 0 => contents.push(0),
        Some(_) => {}
    }
    contents.extend_from_slice(trimmed);
    write(out, tag::INTEGER, &contents);
}

fn write_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        // Checked above: fits in 7 bits.
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    let significant = bytes.get(skip..).unwrap_or(&[]);
    out.push(0x80 | significant.len() as u8);
    out.extend_from_slice(significant);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_long_lengths() {
        for len in [0usize, 1, 127, 128, 255, 256, 65_535, 65_536] {
            let contents = vec![7u8; len];
            let encoded = element(tag::OCTET_STRING, &contents);
            let mut reader = Reader::new(&encoded);
            assert_eq!(reader.read(tag::OCTET_STRING).unwrap(), &contents[..]);
            reader.finish().unwrap();
        }
    }

    #[test]
    fn rejects_non_minimal_lengths() {
        assert_eq!(Reader::new(&[0x04, 0x81, 0x01, 0x00]).read(tag::OCTET_STRING), Err(DerError::InvalidLength));
        assert_eq!(Reader::new(&[0x04, 0x82, 0x00, 0x80]).read(tag::OCTET_STRING), Err(DerError::InvalidLength));
        assert_eq!(Reader::new(&[0x04, 0x80]).read(tag::OCTET_STRING), Err(DerError::InvalidLength));
    }

    #[test]
    fn integers_are_minimal_and_non_negative() {
        assert_eq!(Reader::new(&[0x02, 0x01, 0x80]).unsigned_integer(), Err(DerError::InvalidInteger));
        assert_eq!(Reader::new(&[0x02, 0x02, 0x00, 0x01]).unsigned_integer(), Err(DerError::InvalidInteger));
        assert_eq!(Reader::new(&[0x02, 0x02, 0x00, 0x80]).unsigned_integer().unwrap(), &[0x80]);
        let mut out = Vec::new();
        write_unsigned_integer(&mut out, &[0, 0, 0x80]);
        assert_eq!(out, vec![0x02, 0x02, 0x00, 0x80]);
    }

    #[test]
    fn truncation_is_an_error() {
        assert_eq!(Reader::new(&[0x30, 0x05, 0x00]).read(tag::SEQUENCE), Err(DerError::Truncated));
        assert_eq!(Reader::new(&[]).read(tag::SEQUENCE), Err(DerError::Truncated));
    }
}

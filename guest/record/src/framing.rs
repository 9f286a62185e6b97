//! TLS record framing: where one record ends and the next begins.
//!
//! The one place that reads a record header's length. The guest's
//! connection reassembles records with it, the host's handshake driver
//! shows rustls one record at a time with it, and the host checks every
//! guest's output with [`count_records`].

/// RFC 8446 section 5.1: TLSPlaintext.length is at most 2^14.
pub const MAX_PLAINTEXT: usize = 1 << 14;
/// RFC 8446 section 5.2: TLSCiphertext.length is at most 2^14 + 256.
pub const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// The record header: type, legacy version, length.
pub const HEADER_LEN: usize = 5;

/// What the front of a byte buffer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Not yet a whole record: wait for more bytes.
    Incomplete,
    /// A header whose length is over [`MAX_CIPHERTEXT`]: refuse it now
    /// (record_overflow) rather than wait for a body that may never come.
    Oversize,
    /// A whole record of this many bytes, header included.
    Record(usize),
}

/// The header's declared body length, if the header is there.
pub fn body_len(bytes: &[u8]) -> Option<usize> {
    match bytes {
        [_, _, _, hi, lo, ..] => Some(usize::from(u16::from_be_bytes([*hi, *lo]))),
        _ => None,
    }
}

/// Finds the record at the front of `bytes`.
pub fn next_record(bytes: &[u8]) -> Frame {
    match body_len(bytes) {
        None => Frame::Incomplete,
        Some(len) if len > MAX_CIPHERTEXT => Frame::Oversize,
        Some(len) if bytes.len() >= HEADER_LEN + len => Frame::Record(HEADER_LEN + len),
        Some(_) => Frame::Incomplete,
    }
}

/// Counts whole records in `bytes`; `None` unless they split exactly into
/// records of legal size.
pub fn count_records(mut bytes: &[u8]) -> Option<usize> {
    let mut n = 0;
    while !bytes.is_empty() {
        match next_record(bytes) {
            Frame::Record(len) => bytes = &bytes[len..],
            Frame::Incomplete | Frame::Oversize => return None,
        }
        n += 1;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert_eq!(next_record(&[23, 3, 3, 0]), Frame::Incomplete);
        assert_eq!(next_record(&[23, 3, 3, 0, 2, 1]), Frame::Incomplete);
        assert_eq!(next_record(&[23, 3, 3, 0, 2, 1, 2, 9]), Frame::Record(7));
        assert_eq!(next_record(&[23, 3, 3, 0x42, 0x01]), Frame::Oversize);
        assert_eq!(next_record(&[23, 3, 3, 0x41, 0x00]), Frame::Incomplete);
    }

    #[test]
    fn counts_whole_records_only() {
        assert_eq!(count_records(&[]), Some(0));
        assert_eq!(
            count_records(&[21, 3, 3, 0, 2, 1, 0, 23, 3, 3, 0, 0]),
            Some(2)
        );
        assert_eq!(count_records(&[21, 3, 3, 0, 2, 1]), None);
        assert_eq!(count_records(&[21, 3, 3, 0xff, 0xff]), None);
    }
}

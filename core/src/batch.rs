//! Group-commit batches: the unit of every log write, framed so that recovery can tell a torn
//! final write (never fsynced, so never pubacked nor delivered) from damage to data that was
//! acknowledged.
//!
//! ```text
//! batch   = header records trailer
//! header  = magic:u32le  records_len:u32le  count:u32le  header_crc:u32le   (crc of the 12 bytes before it)
//! trailer = records_crc:u32le  end_magic:u32le                             (crc of the records)
//! ```
//! Records keep their own CRC (see `record`), so an intact record inside a damaged batch can
//! still be recognised and, when the operator asks for salvage, served.

use crate::record::{self, RecordRef};

pub const HEADER_BYTES: usize = 16;
pub const TRAILER_BYTES: usize = 8;
pub const OVERHEAD_BYTES: usize = HEADER_BYTES + TRAILER_BYTES;
/// "FRB1" read as a little-endian u32.
const MAGIC: u32 = u32::from_le_bytes(*b"FRB1");
/// "FRBE": closes a batch.
const END_MAGIC: u32 = u32::from_le_bytes(*b"FRBE");
/// Bounds `records_len` so a damaged header cannot make a scan jump wildly.
pub const RECORDS_BYTES_MAX: usize = 1 << 31;

/// Starts a batch in `out`, which must be empty: a header to be filled in by `seal`.
pub fn begin(out: &mut Vec<u8>) {
    assert!(out.is_empty(), "a batch starts an empty buffer");
    out.extend_from_slice(&[0u8; HEADER_BYTES]);
}

/// Fills in the header of the batch `begin` started in `out` and appends its trailer.
pub fn seal(out: &mut Vec<u8>) {
    assert!(out.len() >= HEADER_BYTES, "seal of a batch that was never begun");
    let records = &out[HEADER_BYTES..];
    assert!(records.len() <= RECORDS_BYTES_MAX, "batch of {} bytes", records.len());
    let mut count = 0u32;
    let mut at = 0usize;
    while at < records.len() {
        let len = u32::from_le_bytes(records[at..at + 4].try_into().expect("4 bytes")) as usize;
        at += record::HEADER_BYTES + len;
        count += 1;
    }
    assert_eq!(at, records.len(), "batch records do not tile the batch");
    let records_crc = crc32fast::hash(records);
    let records_len = records.len() as u32;
    out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    out[4..8].copy_from_slice(&records_len.to_le_bytes());
    out[8..12].copy_from_slice(&count.to_le_bytes());
    let header_crc = crc32fast::hash(&out[0..12]);
    out[12..16].copy_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(&records_crc.to_le_bytes());
    out.extend_from_slice(&END_MAGIC.to_le_bytes());
}

/// Why the bytes at some offset are not an intact batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// No batch header here (wrong magic or header checksum).
    BadHeader,
    /// The header promises more bytes than there are.
    CutShort { needed: u64, present: u64 },
    /// The records do not match the checksum in the trailer, or the trailer is missing.
    BadChecksum,
    /// The checksum matched but the records inside do not decode as the header says.
    BadRecords,
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchError::BadHeader => write!(f, "no valid batch header"),
            BatchError::CutShort { needed, present } => write!(f, "batch needs {needed} bytes, only {present} present"),
            BatchError::BadChecksum => write!(f, "batch checksum mismatch"),
            BatchError::BadRecords => write!(f, "batch records do not decode"),
        }
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Checks the batch at `bytes[0]` and visits its records (offsets relative to `bytes[0]`).
/// Returns the batch's total size. Nothing is visited unless the whole batch is intact.
pub fn read_batch<'a>(bytes: &'a [u8], mut visit: impl FnMut(u64, usize, RecordRef<'a>)) -> Result<usize, BatchError> {
    if bytes.len() < HEADER_BYTES || u32_at(bytes, 0) != MAGIC || crc32fast::hash(&bytes[0..12]) != u32_at(bytes, 12) {
        return Err(BatchError::BadHeader);
    }
    let records_len = u32_at(bytes, 4) as usize;
    let count = u32_at(bytes, 8);
    let size = HEADER_BYTES + records_len + TRAILER_BYTES;
    if bytes.len() < size {
        return Err(BatchError::CutShort { needed: size as u64, present: bytes.len() as u64 });
    }
    let records = &bytes[HEADER_BYTES..HEADER_BYTES + records_len];
    let trailer = HEADER_BYTES + records_len;
    if u32_at(bytes, trailer + 4) != END_MAGIC || crc32fast::hash(records) != u32_at(bytes, trailer) {
        return Err(BatchError::BadChecksum);
    }
    let mut decoded = Vec::with_capacity(count.min(1 << 16) as usize);
    let mut at = 0usize;
    while at < records.len() {
        let (rec, n) = record::decode_record(&records[at..]).map_err(|_| BatchError::BadRecords)?;
        decoded.push(((HEADER_BYTES + at) as u64, n, rec));
        at += n;
    }
    if decoded.len() != count as usize {
        return Err(BatchError::BadRecords);
    }
    for (offset, n, rec) in decoded {
        visit(offset, n, rec);
    }
    Ok(size)
}

/// True when `bytes[0]` starts a batch whose header checks out (its records may still be bad).
pub fn has_header(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_BYTES && u32_at(bytes, 0) == MAGIC && crc32fast::hash(&bytes[0..12]) == u32_at(bytes, 12)
}

/// Where the batch that begins `bytes` ends, if its header checks out (its records may still
/// be bad: a record visited below this offset with `Found::Intact` is in that batch).
pub fn first_batch_end(bytes: &[u8]) -> Option<u64> {
    has_header(bytes).then(|| (HEADER_BYTES + u32_at(bytes, 4) as usize + TRAILER_BYTES) as u64)
}

/// Offset of the next intact batch at or after `from`, if any.
pub fn find_next_intact(bytes: &[u8], from: usize) -> Option<usize> {
    let magic = MAGIC.to_le_bytes();
    let mut at = from;
    while at + HEADER_BYTES <= bytes.len() {
        let found = bytes[at..].windows(4).position(|w| w == magic)?;
        at += found;
        if has_header(&bytes[at..]) && read_batch(&bytes[at..], |_, _, _| {}).is_ok() {
            return Some(at);
        }
        at += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{encode_message, MessageRef};

    fn batch_of(ids: std::ops::Range<u64>) -> Vec<u8> {
        let mut out = Vec::new();
        begin(&mut out);
        for id in ids {
            let m = MessageRef { id, ts_ms: 1, topic: "t", key: None, producer: None, seq: 0, body: "\"hello\"" };
            encode_message(&mut out, &m);
        }
        seal(&mut out);
        out
    }

    fn ids_of(bytes: &[u8]) -> Result<Vec<u64>, BatchError> {
        let mut ids = Vec::new();
        read_batch(bytes, |_, _, r| {
            if let RecordRef::Message(m) = r {
                ids.push(m.id)
            }
        })?;
        Ok(ids)
    }

    #[test]
    fn a_sealed_batch_reads_back_and_any_flipped_byte_is_caught() {
        let bytes = batch_of(1..4);
        assert_eq!(ids_of(&bytes), Ok(vec![1, 2, 3]));
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x04;
            assert!(ids_of(&damaged).is_err(), "flip at {at} went unnoticed");
        }
        let torn = &bytes[..bytes.len() - 1];
        assert!(matches!(ids_of(torn), Err(BatchError::CutShort { .. })));
    }

    #[test]
    fn the_next_intact_batch_is_found_past_damage() {
        let first = batch_of(1..4);
        let second = batch_of(4..6);
        let mut log = first.clone();
        log.extend_from_slice(&second);
        log[HEADER_BYTES + 20] ^= 0xff;
        assert_eq!(find_next_intact(&log, 0), Some(first.len()));
        assert_eq!(find_next_intact(&log, first.len() + 1), None);
    }
}

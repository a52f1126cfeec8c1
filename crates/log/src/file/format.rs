//! The on-disk record batch: pure encoding and decoding, no I/O.
//!
//! ```text
//!  batch = header (48 bytes) + body (body_len bytes); all integers little-endian
//!
//!  0  magic       u32  "SLB1"
//!  4  header_crc  u32  crc32c of header bytes 8..48
//!  8  body_len    u32
//! 12  count       u32  records in the body, >= 1
//! 16  base_offset u64  offset of the first record; the others follow densely
//! 24  first_ts    i64  timestamp of the first record (ms)
//! 32  last_ts     i64  timestamp of the last record; timestamps never decrease
//! 40  body_crc    u32  crc32c of the body
//! 44  reserved    u32  zero
//!
//!  record = key_len u32, value_len u32, timestamp i64, key, value
//! ```
//!
//! The header has its own CRC so that recovery can tell a batch header that is intact (and so
//! where the next batch would start) from bytes that merely look like one.

use bytes::{BufMut, Bytes};

use crate::{Record, StoredRecord};

pub const MAGIC: u32 = u32::from_le_bytes(*b"SLB1");
pub const HEADER_LEN: usize = 48;
pub const RECORD_OVERHEAD: usize = 16;

/// The fixed part of a batch, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub body_len: u32,
    pub count: u32,
    pub base_offset: u64,
    pub first_ts: i64,
    pub last_ts: i64,
    pub body_crc: u32,
}

impl Header {
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.body_len as usize
    }

    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.count)
    }
}

/// Why bytes are not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadBatch {
    /// All zero: the preallocated space after the last batch.
    Zero,
    /// Fewer bytes than the header claims are present.
    Short,
    /// A named inconsistency.
    Invalid(&'static str),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The encoded size of a batch holding these records.
pub fn encoded_len(records: &[Record]) -> usize {
    HEADER_LEN
        + records
            .iter()
            .map(|r| RECORD_OVERHEAD + r.key.len() + r.value.len())
            .sum::<usize>()
}

/// Encodes records as one batch starting at `base_offset`, appending to `out`. Timestamps are
/// clamped to be at least `min_ts` and non-decreasing; returns the batch's last timestamp.
pub fn encode(out: &mut Vec<u8>, base_offset: u64, min_ts: i64, records: &[Record]) -> i64 {
    encode_iter(out, base_offset, min_ts, records.iter())
}

/// [`encode`] over records from several appends that share one batch.
pub fn encode_iter<'a>(
    out: &mut Vec<u8>,
    base_offset: u64,
    min_ts: i64,
    records: impl Iterator<Item = &'a Record>,
) -> i64 {
    let start = out.len();
    let mut count = 0u32;
    out.resize(start + HEADER_LEN, 0);
    let mut ts = min_ts;
    let mut first_ts = None;
    for r in records {
        ts = ts.max(r.timestamp);
        first_ts.get_or_insert(ts);
        count += 1;
        out.put_u32_le(r.key.len() as u32);
        out.put_u32_le(r.value.len() as u32);
        out.put_i64_le(ts);
        out.extend_from_slice(&r.key);
        out.extend_from_slice(&r.value);
    }
    let body_len = (out.len() - start - HEADER_LEN) as u32;
    let body_crc = crc32c::crc32c(&out[start + HEADER_LEN..]);
    let h = &mut out[start..start + HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[8..12].copy_from_slice(&body_len.to_le_bytes());
    h[12..16].copy_from_slice(&count.to_le_bytes());
    h[16..24].copy_from_slice(&base_offset.to_le_bytes());
    h[24..32].copy_from_slice(&first_ts.unwrap_or(ts).to_le_bytes());
    h[32..40].copy_from_slice(&ts.to_le_bytes());
    h[40..44].copy_from_slice(&body_crc.to_le_bytes());
    h[44..48].copy_from_slice(&0u32.to_le_bytes());
    let header_crc = crc32c::crc32c(&h[8..HEADER_LEN]);
    h[4..8].copy_from_slice(&header_crc.to_le_bytes());
    ts
}

/// Decodes and checks a header from the start of `b` (which must hold at least `HEADER_LEN`
/// bytes to succeed).
pub fn decode_header(b: &[u8]) -> Result<Header, BadBatch> {
    if b.len() < HEADER_LEN {
        return if b.iter().all(|&x| x == 0) {
            Err(BadBatch::Zero)
        } else {
            Err(BadBatch::Short)
        };
    }
    let h = &b[..HEADER_LEN];
    if h.iter().all(|&x| x == 0) {
        return Err(BadBatch::Zero);
    }
    if u32_at(h, 0) != MAGIC {
        return Err(BadBatch::Invalid("bad magic"));
    }
    if crc32c::crc32c(&h[8..]) != u32_at(h, 4) {
        return Err(BadBatch::Invalid("header checksum mismatch"));
    }
    let header = Header {
        body_len: u32_at(h, 8),
        count: u32_at(h, 12),
        base_offset: u64_at(h, 16),
        first_ts: u64_at(h, 24) as i64,
        last_ts: u64_at(h, 32) as i64,
        body_crc: u32_at(h, 40),
    };
    if header.count == 0 {
        return Err(BadBatch::Invalid("batch with no records"));
    }
    if (header.body_len as usize) < header.count as usize * RECORD_OVERHEAD {
        return Err(BadBatch::Invalid("body too short for its record count"));
    }
    Ok(header)
}

/// Checks a whole batch (`b` starts at the header and holds at least the whole batch).
pub fn check_batch(b: &[u8]) -> Result<Header, BadBatch> {
    let header = decode_header(b)?;
    if b.len() < header.total_len() {
        return Err(BadBatch::Short);
    }
    if crc32c::crc32c(&b[HEADER_LEN..header.total_len()]) != header.body_crc {
        return Err(BadBatch::Invalid("body checksum mismatch"));
    }
    Ok(header)
}

/// Decodes the records of a checked batch. `batch` holds exactly the batch; the records share its
/// memory. Records below `from` are skipped; at most `max` are pushed.
pub fn decode_records(
    batch: &Bytes,
    header: &Header,
    from: u64,
    max: usize,
    out: &mut Vec<StoredRecord>,
) -> Result<(), BadBatch> {
    let mut at = HEADER_LEN;
    let end = header.total_len();
    for i in 0..u64::from(header.count) {
        if at + RECORD_OVERHEAD > end {
            return Err(BadBatch::Invalid("record header runs past the batch"));
        }
        let key_len = u32_at(batch, at) as usize;
        let value_len = u32_at(batch, at + 4) as usize;
        let ts = u64_at(batch, at + 8) as i64;
        let key_at = at + RECORD_OVERHEAD;
        let value_at = key_at + key_len;
        let next = value_at + value_len;
        if next > end {
            return Err(BadBatch::Invalid("record runs past the batch"));
        }
        let offset = header.base_offset + i;
        if offset >= from {
            if out.len() >= max {
                return Ok(());
            }
            out.push(StoredRecord {
                offset,
                timestamp: ts,
                key: batch.slice(key_at..value_at),
                value: batch.slice(value_at..next),
            });
        }
        at = next;
    }
    if at != end {
        return Err(BadBatch::Invalid("records do not fill the batch"));
    }
    Ok(())
}

/// Timestamps of each record of a checked batch, for time lookups.
pub fn record_timestamps(batch: &[u8], header: &Header) -> Vec<i64> {
    let mut at = HEADER_LEN;
    let mut out = Vec::with_capacity(header.count as usize);
    while out.len() < header.count as usize && at + RECORD_OVERHEAD <= batch.len() {
        let key_len = u32_at(batch, at) as usize;
        let value_len = u32_at(batch, at + 4) as usize;
        out.push(u64_at(batch, at + 8) as i64);
        at += RECORD_OVERHEAD + key_len + value_len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(ts: i64, k: &[u8], v: &[u8]) -> Record {
        Record {
            timestamp: ts,
            key: Bytes::copy_from_slice(k),
            value: Bytes::copy_from_slice(v),
        }
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(
            base in 0u64..1 << 40,
            min_ts in 0i64..1 << 40,
            recs in proptest::collection::vec(
                (0i64..1 << 41, proptest::collection::vec(any::<u8>(), 0..20),
                 proptest::collection::vec(any::<u8>(), 0..200)), 1..20)
        ) {
            let records: Vec<Record> = recs.iter().map(|(t, k, v)| rec(*t, k, v)).collect();
            let mut buf = Vec::new();
            encode(&mut buf, base, min_ts, &records);
            prop_assert_eq!(buf.len(), encoded_len(&records));
            let h = check_batch(&buf).unwrap();
            prop_assert_eq!(h.base_offset, base);
            prop_assert_eq!(h.count as usize, records.len());
            let bytes = Bytes::from(buf);
            let mut out = Vec::new();
            decode_records(&bytes, &h, 0, usize::MAX, &mut out).unwrap();
            let mut ts = min_ts;
            for (i, (r, s)) in records.iter().zip(&out).enumerate() {
                ts = ts.max(r.timestamp);
                prop_assert_eq!(s.offset, base + i as u64);
                prop_assert_eq!(s.timestamp, ts);
                prop_assert_eq!(&s.key, &r.key);
                prop_assert_eq!(&s.value, &r.value);
            }
            prop_assert_eq!(h.last_ts, ts);
        }

        #[test]
        fn any_flipped_bit_is_detected(bit in 0usize..(HEADER_LEN + 2 * RECORD_OVERHEAD + 8) * 8) {
            let mut buf = Vec::new();
            encode(&mut buf, 7, 0, &[rec(1, b"k", b"value"), rec(2, b"", b"xy")]);
            buf[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(check_batch(&buf).is_err());
        }
    }
}

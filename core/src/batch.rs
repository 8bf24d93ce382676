//! Batches: the unit of the change stream.
//!
//! The agent turns every intercepted write into one or more block-aligned ops (an unaligned write
//! carries the whole blocks it touches, read back from the source disk right after the write, so
//! the stream carries exactly the bytes the disk holds). A batch is a run of ops with consecutive
//! seqs `[first_seq, last_seq]`; its data part is the blocks of its data ops, in op order,
//! optionally zstd-compressed by the process server.

use crate::ids::{DiskId, Epoch, Seq};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// The replication block size: dirty tracking, replica indexing and op granularity.
pub const BLOCK_BYTES: u64 = 4096;
/// Most ops one batch may carry.
pub const BATCH_OPS_MAX: usize = 65_536;
/// Most data bytes one batch may carry (before compression).
pub const BATCH_DATA_BYTES_MAX: u64 = 64 << 20;
/// Size of the sample compressed first to decide whether a payload is worth compressing.
pub const COMPRESS_SAMPLE_BYTES: usize = 64 << 10;
/// A payload is sent compressed only if it shrinks below this fraction (percent) of its size.
pub const COMPRESS_WORTH_PERCENT: usize = 90;
/// The default zstd level. On 4 MiB batches of disk data, level -1 compressed 2.4-3x faster
/// than level 1 (437 vs 182 MB/s on a mixed disk image, 1178 vs 397 MB/s on 3:1 data, one core)
/// for the same ratio (0.875 vs 0.876, 0.333 vs 0.333); higher levels suit slow WAN links
/// (see the process server's `compression_level`).
pub const ZSTD_LEVEL_DEFAULT: i32 = -1;
/// When a process server compresses the batches it forwards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CompressionPolicy {
    /// Only while compressing can pay: a whole window's worth of the disk's batches waits
    /// behind the master-target stream's window in flight (the link is the bottleneck), or no
    /// master target is connected (the cache grows). While the link keeps up, compression would
    /// only spend CPU that the rest of the data path needs (and a short queue is a hiccup, not a
    /// slow link).
    #[default]
    Adaptive,
    /// Every batch that compresses well enough (a WAN link that is always the bottleneck).
    Always,
    /// Never.
    Off,
}

impl std::str::FromStr for CompressionPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "adaptive" => Ok(CompressionPolicy::Adaptive),
            "always" => Ok(CompressionPolicy::Always),
            "off" => Ok(CompressionPolicy::Off),
            _ => Err(format!(
                "compression must be adaptive, always or off, not {s:?}"
            )),
        }
    }
}

/// The zstd levels a process server accepts.
pub const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = -7..=9;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpKind {
    /// `blocks` blocks of data follow in the batch's data part.
    Data,
    /// The blocks read as zeros (trim, write-zeroes).
    Zero,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub seq: Seq,
    pub block: u64,
    pub blocks: u32,
    pub kind: OpKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    Raw,
    Zstd,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchHeader {
    pub disk: DiskId,
    pub epoch: Epoch,
    pub first_seq: Seq,
    pub last_seq: Seq,
    /// Source time of the first and the last write in the batch.
    pub first_time: Timestamp,
    pub last_time: Timestamp,
    /// True when the batch ends on a crash-consistent point (data mode).
    pub consistent: bool,
    pub ops: Vec<Op>,
    pub encoding: Encoding,
    /// Length of the data part once decoded.
    pub raw_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch has seqs {first}..={last}: first must be >= 1 and <= last")]
    BadRange { first: Seq, last: Seq },
    #[error("batch has {0} ops, more than the limit of {BATCH_OPS_MAX}")]
    TooManyOps(usize),
    #[error("batch op {index} is malformed: {what}")]
    BadOp { index: usize, what: String },
    #[error("batch data is {actual} bytes but its ops need {expected}")]
    DataLength { expected: u64, actual: u64 },
    #[error("batch op {index} reaches block {end}, past the end of the {disk_bytes}-byte disk")]
    PastEnd {
        index: usize,
        end: u64,
        disk_bytes: u64,
    },
    #[error("batch data does not decompress: {0}")]
    Decompress(String),
}

impl BatchHeader {
    /// Bytes of data the ops need, once decoded.
    pub fn data_bytes_needed(ops: &[Op]) -> u64 {
        ops.iter()
            .filter(|o| o.kind == OpKind::Data)
            .map(|o| o.blocks as u64 * BLOCK_BYTES)
            .sum()
    }

    /// Checks the header's own consistency: the seq range, the ops (every seq of the range is
    /// present, in order), and `raw_bytes`. A peer's batch is validated before anything else.
    pub fn validate(&self) -> Result<(), BatchError> {
        if self.first_seq == 0 || self.first_seq > self.last_seq {
            return Err(BatchError::BadRange {
                first: self.first_seq,
                last: self.last_seq,
            });
        }
        if self.ops.len() > BATCH_OPS_MAX {
            return Err(BatchError::TooManyOps(self.ops.len()));
        }
        let mut expect = self.first_seq;
        for (index, op) in self.ops.iter().enumerate() {
            let bad = |what: &str| BatchError::BadOp {
                index,
                what: what.to_string(),
            };
            if op.blocks == 0 {
                return Err(bad("covers no blocks"));
            }
            if op.block.checked_add(op.blocks as u64).is_none() {
                return Err(bad("block range overflows"));
            }
            // Several ops may share a seq (one write split in pieces); seqs never skip.
            if op.seq != expect && op.seq != expect + 1 || (index == 0 && op.seq != self.first_seq)
            {
                return Err(bad("seqs must be consecutive from first_seq"));
            }
            expect = op.seq;
        }
        if expect != self.last_seq {
            return Err(BatchError::BadRange {
                first: self.first_seq,
                last: self.last_seq,
            });
        }
        let needed = Self::data_bytes_needed(&self.ops);
        if needed != self.raw_bytes || needed > BATCH_DATA_BYTES_MAX {
            return Err(BatchError::DataLength {
                expected: needed,
                actual: self.raw_bytes,
            });
        }
        Ok(())
    }

    /// Checks that every op lies inside a disk of `disk_bytes`.
    pub fn check_bounds(&self, disk_bytes: u64) -> Result<(), BatchError> {
        let disk_blocks = disk_bytes.div_ceil(BLOCK_BYTES);
        for (index, op) in self.ops.iter().enumerate() {
            let end = op.block + op.blocks as u64;
            if end > disk_blocks {
                return Err(BatchError::PastEnd {
                    index,
                    end,
                    disk_bytes,
                });
            }
        }
        Ok(())
    }

    /// Bytes of source data the batch represents (data and zeroed blocks).
    pub fn covered_bytes(&self) -> u64 {
        self.ops.iter().map(|o| o.blocks as u64 * BLOCK_BYTES).sum()
    }
}

/// Compresses a raw data part if that pays: a sample is compressed first, so incompressible data
/// (already compressed or encrypted) costs little. Returns the encoding and the bytes to send.
pub fn compress(raw: Vec<u8>) -> (Encoding, Vec<u8>) {
    compress_at(raw, ZSTD_LEVEL_DEFAULT)
}

/// `compress` at a chosen zstd level.
pub fn compress_at(raw: Vec<u8>, level: i32) -> (Encoding, Vec<u8>) {
    if raw.is_empty() {
        return (Encoding::Raw, raw);
    }
    let sample = &raw[..raw.len().min(COMPRESS_SAMPLE_BYTES)];
    let worth = |packed: usize, plain: usize| packed * 100 < plain * COMPRESS_WORTH_PERCENT;
    match zstd::bulk::compress(sample, level) {
        Ok(s) if worth(s.len(), sample.len()) => {}
        _ => return (Encoding::Raw, raw),
    }
    match zstd::bulk::compress(&raw, level) {
        Ok(packed) if worth(packed.len(), raw.len()) => (Encoding::Zstd, packed),
        _ => (Encoding::Raw, raw),
    }
}

/// Decodes a data part to its raw bytes, checking the length the header promises.
pub fn decompress(header: &BatchHeader, data: Vec<u8>) -> Result<Vec<u8>, BatchError> {
    let raw = match header.encoding {
        Encoding::Raw => data,
        Encoding::Zstd => zstd::bulk::decompress(&data, header.raw_bytes as usize)
            .map_err(|e| BatchError::Decompress(e.to_string()))?,
    };
    if raw.len() as u64 != header.raw_bytes {
        return Err(BatchError::DataLength {
            expected: header.raw_bytes,
            actual: raw.len() as u64,
        });
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn header(first: Seq, ops: Vec<Op>) -> BatchHeader {
        let last = ops.last().map(|o| o.seq).unwrap_or(first);
        let raw_bytes = BatchHeader::data_bytes_needed(&ops);
        BatchHeader {
            disk: DiskId::new("d").unwrap(),
            epoch: Epoch(1),
            first_seq: first,
            last_seq: last,
            first_time: Timestamp(1),
            last_time: Timestamp(2),
            consistent: true,
            ops,
            encoding: Encoding::Raw,
            raw_bytes,
        }
    }

    fn op(seq: Seq, block: u64, blocks: u32, kind: OpKind) -> Op {
        Op {
            seq,
            block,
            blocks,
            kind,
        }
    }

    #[test]
    fn valid_batches_pass() {
        let h = header(
            5,
            vec![
                op(5, 0, 2, OpKind::Data),
                op(6, 9, 1, OpKind::Zero),
                op(6, 3, 1, OpKind::Data),
            ],
        );
        h.validate().unwrap();
        assert_eq!(h.raw_bytes, 3 * BLOCK_BYTES);
        h.check_bounds(10 * BLOCK_BYTES).unwrap();
        assert!(h.check_bounds(9 * BLOCK_BYTES).is_err());
    }

    #[test]
    fn malformed_batches_are_refused() {
        let mut h = header(
            5,
            vec![op(5, 0, 1, OpKind::Data), op(7, 0, 1, OpKind::Data)],
        );
        assert!(h.validate().is_err(), "skipped seq");
        h = header(5, vec![op(5, 0, 0, OpKind::Data)]);
        assert!(h.validate().is_err(), "empty op");
        h = header(5, vec![op(5, u64::MAX, 2, OpKind::Data)]);
        assert!(h.validate().is_err(), "overflow");
        h = header(5, vec![op(5, 0, 1, OpKind::Data)]);
        h.raw_bytes += 1;
        assert!(h.validate().is_err(), "length");
        h = header(0, vec![op(0, 0, 1, OpKind::Data)]);
        assert!(h.validate().is_err(), "seq 0");
        h = header(5, vec![op(6, 0, 1, OpKind::Data)]);
        h.first_seq = 5;
        assert!(h.validate().is_err(), "first op must carry first_seq");
    }

    #[test]
    fn compression_round_trips_and_skips_noise() {
        let text: Vec<u8> = b"haven replicates every write "
            .iter()
            .cycle()
            .take(1 << 20)
            .copied()
            .collect();
        let (enc, packed) = compress(text.clone());
        assert_eq!(enc, Encoding::Zstd);
        assert!(packed.len() < text.len() / 4);
        let mut h = header(1, vec![op(1, 0, 256, OpKind::Data)]);
        h.encoding = enc;
        assert_eq!(decompress(&h, packed).unwrap(), text);

        let mut x: u64 = 0x9e3779b97f4a7c15;
        let noise: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let (enc, out) = compress(noise.clone());
        assert_eq!(enc, Encoding::Raw);
        assert_eq!(out, noise);
    }

    #[test]
    fn the_op_and_data_limits_are_inclusive() {
        let ops: Vec<Op> = (0..BATCH_OPS_MAX as u64)
            .map(|i| op(1, i, 1, OpKind::Zero))
            .collect();
        let mut h = header(1, ops);
        h.validate().expect("exactly BATCH_OPS_MAX ops");
        h.ops.push(op(1, 0, 1, OpKind::Zero));
        assert_eq!(h.validate(), Err(BatchError::TooManyOps(BATCH_OPS_MAX + 1)));

        let blocks = (BATCH_DATA_BYTES_MAX / BLOCK_BYTES) as u32;
        header(1, vec![op(1, 0, blocks, OpKind::Data)])
            .validate()
            .expect("exactly BATCH_DATA_BYTES_MAX bytes");
        let too_big = header(1, vec![op(1, 0, blocks + 1, OpKind::Data)]);
        assert!(matches!(
            too_big.validate(),
            Err(BatchError::DataLength { .. })
        ));
    }

    #[test]
    fn covered_bytes_counts_data_and_zeroed_blocks() {
        let h = header(
            1,
            vec![op(1, 0, 3, OpKind::Data), op(2, 10, 5, OpKind::Zero)],
        );
        assert_eq!(h.covered_bytes(), 8 * BLOCK_BYTES);
        assert_eq!(h.raw_bytes, 3 * BLOCK_BYTES);
    }

    #[test]
    fn compression_policies_parse_from_their_names() {
        for (name, policy) in [
            ("adaptive", CompressionPolicy::Adaptive),
            ("always", CompressionPolicy::Always),
            ("off", CompressionPolicy::Off),
        ] {
            assert_eq!(name.parse::<CompressionPolicy>(), Ok(policy));
        }
        let err = "fast".parse::<CompressionPolicy>().unwrap_err();
        assert!(err.contains("adaptive, always or off"), "{err}");
        assert!(
            ZSTD_LEVELS.contains(&ZSTD_LEVEL_DEFAULT),
            "the default level is accepted"
        );
    }

    /// Xorshift bytes: incompressible.
    fn noise(len: usize) -> Vec<u8> {
        let mut x: u64 = 0x2545f4914f6cdd1d;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn half_compressible_data_is_compressed() {
        // Blocks alternating noise and zeros: about half the size once compressed.
        let mut raw = vec![];
        for _ in 0..64 {
            raw.extend(noise(2048));
            raw.extend([0u8; 2048]);
        }
        let (enc, packed) = compress(raw.clone());
        assert_eq!(
            enc,
            Encoding::Zstd,
            "shrinks to {} of {}",
            packed.len(),
            raw.len()
        );
        assert!(packed.len() < raw.len() * 6 / 10);
    }

    #[test]
    fn a_compressible_sample_does_not_decide_for_the_rest() {
        // The sample (the first 64 KiB) is zeros, the rest is noise: the whole does not shrink
        // enough, so it is sent raw.
        let mut raw = vec![0u8; COMPRESS_SAMPLE_BYTES];
        raw.extend(noise(1 << 20));
        let (enc, out) = compress(raw.clone());
        assert_eq!(enc, Encoding::Raw);
        assert_eq!(out, raw);
    }

    #[test]
    fn corrupt_compressed_data_is_an_error() {
        let mut h = header(1, vec![op(1, 0, 1, OpKind::Data)]);
        h.encoding = Encoding::Zstd;
        assert!(decompress(&h, vec![1, 2, 3, 4]).is_err());
    }
}

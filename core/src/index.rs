//! The replica's block index: for every block, which journal write holds it at which seq.
//!
//! A read of block `b` at recovery point `P` is one `BTreeMap` range lookup for the newest entry
//! `(b, s)` with `s <= P`: O(log n). A block with no entry reads from the base image.

use crate::batch::{BatchHeader, OpKind, BLOCK_BYTES};
use crate::ids::Seq;
use std::collections::BTreeMap;

/// Where a block's content is, at some seq.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockSource {
    /// The block reads as zeros.
    Zero,
    /// In journal record `record` (an opaque id the store chooses), at `body_offset` of its body.
    Journal {
        record: (u64, u64),
        body_offset: u64,
    },
}

#[derive(Default, Debug)]
pub struct BlockIndex {
    map: BTreeMap<(u64, Seq), BlockSource>,
}

impl BlockIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of (block, seq) entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Indexes every block of a journaled batch whose data part starts at `data_offset` of the
    /// record's body. Within a batch a later op with the same block and seq replaces the earlier.
    pub fn insert_batch(&mut self, header: &BatchHeader, record: (u64, u64), data_offset: u64) {
        let mut off = data_offset;
        for op in &header.ops {
            for i in 0..op.blocks as u64 {
                let src = match op.kind {
                    OpKind::Zero => BlockSource::Zero,
                    OpKind::Data => BlockSource::Journal {
                        record,
                        body_offset: off + i * BLOCK_BYTES,
                    },
                };
                self.map.insert((op.block + i, op.seq), src);
            }
            if op.kind == OpKind::Data {
                off += op.blocks as u64 * BLOCK_BYTES;
            }
        }
    }

    /// The source of `block` as of `seq`; None means the base image.
    pub fn lookup(&self, block: u64, seq: Seq) -> Option<BlockSource> {
        self.map
            .range((block, 0)..=(block, seq))
            .next_back()
            .map(|(_, s)| *s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{Encoding, Op};
    use crate::ids::{DiskId, Epoch};
    use crate::time::Timestamp;

    fn batch(ops: Vec<Op>) -> BatchHeader {
        BatchHeader {
            disk: DiskId::new("d").unwrap(),
            epoch: Epoch(1),
            first_seq: ops[0].seq,
            last_seq: ops.last().unwrap().seq,
            first_time: Timestamp(0),
            last_time: Timestamp(0),
            consistent: true,
            raw_bytes: BatchHeader::data_bytes_needed(&ops),
            ops,
            encoding: Encoding::Raw,
        }
    }

    #[test]
    fn lookups_see_the_newest_write_at_or_before_the_point() {
        let mut ix = BlockIndex::new();
        let b1 = batch(vec![Op {
            seq: 1,
            block: 10,
            blocks: 2,
            kind: OpKind::Data,
        }]);
        ix.insert_batch(&b1, (0, 0), 100);
        let b2 = batch(vec![
            Op {
                seq: 2,
                block: 11,
                blocks: 1,
                kind: OpKind::Zero,
            },
            Op {
                seq: 3,
                block: 11,
                blocks: 1,
                kind: OpKind::Data,
            },
        ]);
        ix.insert_batch(&b2, (0, 9000), 50);
        assert_eq!(ix.lookup(10, 0), None);
        assert_eq!(
            ix.lookup(10, 5),
            Some(BlockSource::Journal {
                record: (0, 0),
                body_offset: 100
            })
        );
        assert_eq!(
            ix.lookup(11, 1),
            Some(BlockSource::Journal {
                record: (0, 0),
                body_offset: 100 + BLOCK_BYTES
            })
        );
        assert_eq!(ix.lookup(11, 2), Some(BlockSource::Zero));
        assert_eq!(
            ix.lookup(11, 3),
            Some(BlockSource::Journal {
                record: (0, 9000),
                body_offset: 50
            })
        );
        assert_eq!(ix.lookup(12, 3), None);
    }

    #[test]
    fn the_data_ops_of_a_batch_follow_each_other_in_its_body() {
        let mut ix = BlockIndex::new();
        assert!(ix.is_empty());
        let ops = vec![
            Op {
                seq: 4,
                block: 0,
                blocks: 2,
                kind: OpKind::Data,
            },
            Op {
                seq: 5,
                block: 7,
                blocks: 1,
                kind: OpKind::Zero,
            },
            Op {
                seq: 6,
                block: 20,
                blocks: 3,
                kind: OpKind::Data,
            },
        ];
        ix.insert_batch(&batch(ops), (1, 0), 64);
        assert_eq!(ix.len(), 6);
        assert!(!ix.is_empty());
        let at = |body_offset| {
            Some(BlockSource::Journal {
                record: (1, 0),
                body_offset,
            })
        };
        assert_eq!(ix.lookup(1, 6), at(64 + BLOCK_BYTES));
        assert_eq!(ix.lookup(7, 6), Some(BlockSource::Zero));
        // The second data op starts after the first op's two blocks (zeroes take no room).
        assert_eq!(ix.lookup(20, 6), at(64 + 2 * BLOCK_BYTES));
        assert_eq!(ix.lookup(22, 6), at(64 + 4 * BLOCK_BYTES));
    }
}

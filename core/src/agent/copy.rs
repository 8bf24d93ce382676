//! The initial copy of a disk, as a cursor the core moves: it asks the driver for the next
//! chunk with `CopyRead`, is told what was read with `CopyData`, records every chunk that is not
//! all zeros under the next seq (interleaved with the workload's writes, which get their own
//! seqs, so the replica ends equal to the source), and says when the process server holds the
//! whole copy (`CopyCached`), which the driver persists so that a restart does not copy again.
//!
//! Ordering: a read must see exactly the writes recorded before its chunk. So a read is asked
//! for only when no source write of the disk is in flight, and while it is outstanding the
//! disk's new writes are held; the chunk then takes the next seq. One read per disk per tick
//! (`poll_timeout` says when one is due), so that a copy never starves the workload of rounds.

use super::*;

/// Bytes read per initial-copy chunk (reads are aligned to it).
pub const COPY_CHUNK_BYTES: u64 = 1 << 20;

/// Where a disk's copy stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CopyState {
    /// Nothing to copy: the copy is done and cached, or the disk is not protected.
    Idle,
    /// The next read starts at `next`; `reading` while a `CopyRead` is outstanding;
    /// `batch_closed` once a batch of this copy was closed (a copy batch, not a consistent
    /// point, so the master target has seen or will see one).
    Reading {
        next: u64,
        reading: bool,
        batch_closed: bool,
    },
    /// Every chunk is recorded (the last at `through`); waiting for the process server to cache
    /// it.
    Caching { through: Seq },
}

impl Agent {
    /// Starts copying `disk` from its first byte: until the copy ends, its batches are not
    /// crash-consistent points.
    pub(super) fn start_copy(&mut self, disk: usize) {
        self.streams[disk].start_copy();
    }

    /// True when `disk`'s copy may read its next chunk now: nothing held ahead of it, none of
    /// the disk's source writes in flight, seqs reserved for the chunk (and the end marker, see
    /// `end_copy`) and room in the buffer.
    pub(super) fn copy_read_due(&self, disk: usize) -> bool {
        let s = &self.streams[disk];
        matches!(s.copy, CopyState::Reading { reading: false, .. })
            && !s.retired
            && self.held.is_empty()
            && !self.pending.iter().any(|(_, p)| p.disk == disk)
            && s.next_seq < s.reserved // two seqs: the chunk's, and the end marker's
            && s.buffered_bytes() < self.settings.buffer_bytes_max
    }

    /// True while `disk` has a copy read outstanding (its writes wait for the chunk).
    pub(super) fn copy_reading(&self, disk: usize) -> bool {
        matches!(
            self.streams[disk].copy,
            CopyState::Reading { reading: true, .. }
        )
    }

    /// Asks for the next chunk of every disk whose copy may read.
    pub(super) fn copy_step(&mut self) {
        for disk in 0..self.streams.len() {
            if !self.copy_read_due(disk) {
                continue;
            }
            if let CopyState::Reading { next, reading, .. } = &mut self.streams[disk].copy {
                *reading = true;
                let offset = *next;
                self.out.push_back(Output::CopyRead { disk, offset });
            }
        }
    }

    /// The driver read `data` at `offset` (empty: nothing more to copy).
    pub(super) fn on_copy_data(&mut self, disk: usize, offset: u64, data: Vec<u8>) {
        let CopyState::Reading { reading: true, .. } = self.streams[disk].copy else {
            return; // Read before the protection ended: nobody takes it.
        };
        let size = self.streams[disk].size_bytes.div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
        let end = offset.saturating_add(data.len() as u64);
        let whole =
            offset.is_multiple_of(BLOCK_BYTES) && (data.len() as u64).is_multiple_of(BLOCK_BYTES);
        assert!(
            whole && end <= size,
            "CopyData must be whole blocks inside the disk (its last block padded with zeros)"
        );
        let last_block = (size / BLOCK_BYTES).saturating_sub(1);
        let blocks = (data.len() as u64 / BLOCK_BYTES) as u32;
        // The disk's last block as this read found it, if it reached the end.
        let tail =
            (end >= size && blocks > 0).then(|| data[data.len() - BLOCK_BYTES as usize..].to_vec());
        if data.iter().any(|b| *b != 0) {
            self.record(disk, offset / BLOCK_BYTES, blocks, Some(data));
        }
        if end < size && blocks > 0 {
            if let CopyState::Reading { next, reading, .. } = &mut self.streams[disk].copy {
                *next = end;
                *reading = false;
            }
        } else {
            self.end_copy(disk, last_block, tail);
        }
        self.copy_cached(disk);
    }

    /// Every block is copied. The copy ends with two things the master target relies on: a
    /// copy batch (not a consistent point: the open batch closed now, or, if the copy closed
    /// none, the disk's last block recorded as one), which tells a replica that lost writes
    /// before it that a whole copy follows; then the first consistent point, a batch recording
    /// the disk's last block once more (`tail`, or zeros when it lies past the last data).
    /// Every block was copied after all earlier writes to it, and later writes have later seqs.
    /// Seqs: each read left two free, and its chunk took at most one, so the end has what it
    /// needs (two only when no chunk was recorded at all).
    fn end_copy(&mut self, disk: usize, last_block: u64, tail: Option<Vec<u8>>) {
        let tail = tail.filter(|t| t.iter().any(|b| *b != 0));
        let s = &self.streams[disk];
        if s.size_bytes > 0 {
            let batch_closed = matches!(
                s.copy,
                CopyState::Reading {
                    batch_closed: true,
                    ..
                }
            );
            if s.open.is_none() && !batch_closed {
                self.record(disk, last_block, 1, tail.clone());
            }
            self.streams[disk].close_batch();
            // Not reading any more: the batches from here on are consistent.
            self.streams[disk].copy = CopyState::Caching { through: 0 };
            self.record(disk, last_block, 1, tail);
        }
        let s = &mut self.streams[disk];
        s.close_batch();
        self.batch_deadline[disk] = None;
        s.copy = CopyState::Caching {
            through: s.seq_written(),
        };
        self.pump(disk);
    }

    /// Says once the process server has cached the whole copy of `disk`.
    pub(super) fn copy_cached(&mut self, disk: usize) {
        let s = &mut self.streams[disk];
        if let CopyState::Caching { through } = s.copy {
            if s.cached_seq >= through {
                s.copy = CopyState::Idle;
                s.copied_under = Some(s.epoch);
                self.out.push_back(Output::CopyCached {
                    disk,
                    epoch: s.epoch,
                });
            }
        }
    }
}

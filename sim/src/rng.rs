//! Seeded randomness and cheap digests.

/// xorshift64*: small, seeded, deterministic. Not for cryptography.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Spread the seed so that small seeds differ in every bit; never zero.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// An independent stream for one purpose (so that, say, the workload draws the same
    /// writes whatever the network does).
    pub fn fork(&mut self, salt: u64) -> Rng {
        Rng::new(self.next_u64() ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform-enough in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// Uniform-enough in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below(hi - lo + 1)
    }
    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    /// True with probability `per_mille`/1000.
    pub fn chance_per_mille(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let x = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&x[..chunk.len()]);
        }
    }
}

/// 64-bit FNV-1a.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    pub fn write_u64(&mut self, v: u64) {
        self.write(&v.to_le_bytes());
    }
}

/// A cheap fingerprint of a disk image (FNV over 8-byte words). Checkers compare digests on
/// the hot path and bytes when a digest differs or at the end of a run.
pub fn image_digest(img: &[u8]) -> u64 {
    let mut h = Fnv::default().0;
    for w in img.chunks(8) {
        let mut x = [0u8; 8];
        x[..w.len()].copy_from_slice(w);
        h ^= u64::from_le_bytes(x);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        h ^= h >> 29;
    }
    h
}

/// The first byte offset where two images differ, if any.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    if a == b {
        return None;
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// An image digest kept up to date block by block: the wrapping sum of a hash of each block
/// with its index, so a write re-hashes only the blocks it touched.
#[derive(Clone, Debug, Default)]
pub struct BlockDigest {
    per: Vec<u64>,
    pub sum: u64,
}

impl BlockDigest {
    pub fn new(img: &[u8], block: usize) -> BlockDigest {
        let mut d = BlockDigest {
            per: vec![0; img.len().div_ceil(block)],
            sum: 0,
        };
        d.update(img, block, 0, d.per.len());
        d
    }

    /// Re-hashes blocks `first..first + n` of `img`.
    pub fn update(&mut self, img: &[u8], block: usize, first: usize, n: usize) {
        for i in first..(first + n).min(self.per.len()) {
            let end = ((i + 1) * block).min(img.len());
            let mut h = Fnv::default();
            h.write_u64(i as u64);
            let mut x = h.0;
            for w in img[i * block..end].chunks(8) {
                let mut b = [0u8; 8];
                b[..w.len()].copy_from_slice(w);
                x ^= u64::from_le_bytes(b);
                x = x.wrapping_mul(0x0000_0100_0000_01b3);
                x ^= x >> 29;
            }
            self.sum = self.sum.wrapping_sub(self.per[i]).wrapping_add(x);
            self.per[i] = x;
        }
    }
}

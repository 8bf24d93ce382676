//! The turmoil level's workload of one disk: random writes, trims and zeroes through its agent's
//! NBD export,
//! as qemu would send them, with a model of the disk. Writes that order matters for are drawn
//! on purpose: an op overlaps the one before it a third of the time, and some groups of 2-4
//! overlapping ops are sent together before any reply is read (several requests in flight on one
//! connection, which the agent must apply in the order it received them). Every flush's answer
//! is checked against the agent's durable disk. At the end the workload waits until the newest
//! recovery point equals the model, then compares every listed recovery point with the model as
//! it was right after the write of that point's seq.

use super::durability::Durability;
use super::nbd_client::{NbdClient, CMD_TRIM, CMD_WRITE, CMD_WRITE_ZEROES};
use super::topology::DiskSpec;
use crate::storage::SimVfs;
use haven_runtime::meta::PointRecord;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type HostResult = Result<(), Box<dyn std::error::Error>>;

/// A seeded xorshift for the workload.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// What a workload run ends with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub points: Vec<PointRecord>,
    pub image_digest: u64,
    pub ops: u64,
    /// Recovery points read back and compared with the model at their seq.
    pub points_compared: usize,
    /// Ops that overlapped the op before them, and ops sent while others were in flight.
    pub overlapping: u64,
    pub in_flight: u64,
    /// The master target that held the replica.
    pub master_target: &'static str,
}

/// Where the workload talks to the cluster and what it checks with.
#[derive(Clone)]
pub struct Checks {
    /// The disk it writes, and its agent's file system (to check flushes).
    pub disk: DiskSpec,
    pub agent: SimVfs,
    /// The master targets' hosts (the one that holds the disk is found through their APIs).
    pub mts: Vec<&'static str>,
    pub durability: Arc<Durability>,
}

/// One NBD command of the workload.
struct Op {
    cmd: u16,
    off: u64,
    data: Vec<u8>,
    len: u64,
}

struct Gen {
    rng: Rng,
    size: u64,
    last: Option<(u64, u64)>,
    overlapping: u64,
}

impl Gen {
    /// A range; a third of the time one that overlaps the previous op's.
    fn range(&mut self) -> (u64, u64) {
        let rng = &mut self.rng;
        let len = match rng.below(4) {
            0 => 1 + rng.below(9000),
            1 => 4096 * (1 + rng.below(8)),
            2 => 512 * (1 + rng.below(64)),
            _ => 65_536,
        }
        .min(self.size);
        let off = match self.last {
            Some((po, pl)) if rng.below(3) == 0 => {
                self.overlapping += 1;
                (po + rng.below(pl))
                    .saturating_sub(rng.below(len))
                    .min(self.size - len)
            }
            _ => rng.below(self.size - len + 1),
        };
        self.last = Some((off, len));
        (off, len)
    }

    fn op(&mut self) -> Op {
        let (off, len) = self.range();
        let cmd = match self.rng.below(10) {
            0 => CMD_TRIM,
            1 => CMD_WRITE_ZEROES,
            _ => CMD_WRITE,
        };
        let data = if cmd == CMD_WRITE {
            // Half the writes are incompressible, so that batches are not all tiny.
            let fill = (self.rng.next_u64() & 0xff) as u8;
            if self.rng.below(2) == 0 {
                (0..len).map(|_| self.rng.next_u64() as u8).collect()
            } else {
                (0..len)
                    .map(|i| fill.wrapping_add((i % 251) as u8))
                    .collect()
            }
        } else {
            vec![]
        };
        Op {
            cmd,
            off,
            data,
            len,
        }
    }
}

/// The model: the disk as the workload wrote it, and every op in the order sent (each op takes
/// one seq at the agent, in that order, so the disk at any seq can be replayed).
struct Model {
    disk: Vec<u8>,
    ops: Vec<Op>,
}

fn apply(disk: &mut [u8], op: &Op) {
    let range = op.off as usize..(op.off + op.len) as usize;
    if op.cmd == CMD_WRITE {
        disk[range].copy_from_slice(&op.data);
    } else {
        disk[range].fill(0);
    }
}

async fn connect_retry(addr: &str) -> std::io::Result<turmoil::net::TcpStream> {
    let mut last = None;
    for _ in 0..200 {
        match turmoil::net::TcpStream::connect(addr.to_string()).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(last.expect("tried"))
}

/// Sends `ops` together, then reads all their replies (in any order).
async fn send_group<S>(nbd: &mut NbdClient<S>, ops: &[Op], model: &mut Model) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut handles = BTreeSet::new();
    for op in ops {
        handles.insert(nbd.send(op.cmd, op.off, op.len as u32, &op.data).await?);
        apply(&mut model.disk, op);
    }
    while !handles.is_empty() {
        let h = nbd.recv().await?;
        if !handles.remove(&h) {
            return Err(std::io::Error::other(format!(
                "reply for unknown handle {h}"
            )));
        }
    }
    Ok(())
}

/// The workload: `ops` ops (see the module docs) with a flush every few, then the convergence
/// and every-point checks.
pub async fn workload(
    seed: u64,
    ops: u64,
    checks: Checks,
    result: Arc<Mutex<Option<Outcome>>>,
) -> HostResult {
    let stream = connect_retry(&format!("{}:10809", checks.disk.agent)).await?;
    let mut nbd = NbdClient::connect(stream, checks.disk.disk.as_str()).await?;
    let mut gen = Gen {
        rng: Rng::new(seed ^ 0x5eed),
        size: nbd.size,
        last: None,
        overlapping: 0,
    };
    let mut model = Model {
        disk: vec![0u8; nbd.size as usize],
        ops: vec![],
    };
    let (mut sent, mut in_flight, mut since_flush) = (0, 0, 0);
    while sent < ops {
        let group = if gen.rng.below(5) == 0 {
            2 + gen.rng.below(3)
        } else {
            1
        }
        .min(ops - sent);
        let batch: Vec<Op> = (0..group).map(|_| gen.op()).collect();
        send_group(&mut nbd, &batch, &mut model).await?;
        model.ops.extend(batch);
        if group > 1 {
            in_flight += group;
        }
        sent += group;
        since_flush += group;
        if since_flush >= 8 {
            flush(&mut nbd, &checks, &model).await?;
            since_flush = 0;
        }
        tokio::time::sleep(Duration::from_millis(gen.rng.below(20))).await;
    }
    flush(&mut nbd, &checks, &model).await?;
    let (points, mt) = converge(&checks, &model.disk).await?;
    let points_compared = every_point(&checks, mt, &points, &model, ops).await?;
    let outcome = Outcome {
        points,
        image_digest: crate::image_digest(&model.disk),
        ops,
        points_compared,
        overlapping: gen.overlapping,
        in_flight,
        master_target: mt,
    };
    *result.lock().expect("result") = Some(outcome);
    Ok(())
}

async fn flush<S>(nbd: &mut NbdClient<S>, checks: &Checks, model: &Model) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    nbd.flush().await?;
    let path = Path::new(&checks.disk.path);
    checks
        .durability
        .on_flush_answered(&checks.agent, path, &model.disk);
    Ok(())
}

/// Waits until the newest recovery point equals the model (the check is on bytes, not on
/// counters); returns the points listed then and the master target that holds the replica.
async fn converge(
    checks: &Checks,
    model: &[u8],
) -> Result<(Vec<PointRecord>, &'static str), Box<dyn std::error::Error>> {
    let disk = checks.disk.disk.as_str();
    for _ in 0..600 {
        for &mt in &checks.mts {
            if let Some((points, image)) = newest_image(mt, disk).await {
                if image == model {
                    return Ok((points, mt));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = http_get("cs:7080", "/api/status")
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let mut replicas = vec![];
    for &mt in &checks.mts {
        let r = http_get(&format!("{mt}:7280"), "/replicas").await;
        replicas.push((mt, r.map(|b| String::from_utf8_lossy(&b).into_owned())));
    }
    Err(format!(
        "the replica of {disk} never converged to the source; status: {status:?}; replicas: \
         {replicas:?}"
    )
    .into())
}

/// Reads every listed point back and compares it with the model right after the write of its
/// seq. The last point is the last op's (the convergence check found it equal to the model), so
/// the seq before the first op is `last.seq - ops`.
async fn every_point(
    checks: &Checks,
    mt: &str,
    points: &[PointRecord],
    model: &Model,
    ops: u64,
) -> Result<usize, Box<dyn std::error::Error>> {
    let last = points.last().ok_or("no recovery point")?.seq;
    let base = last.checked_sub(ops).ok_or_else(|| {
        format!(
            "the newest point is seq {last}, below the {ops} ops written: seqs are not one per op"
        )
    })?;
    let (mut compared, mut replay, mut done) = (0, vec![0u8; model.disk.len()], 0);
    for p in points.iter().filter(|p| p.seq > base) {
        let at = (p.seq - base) as usize;
        for op in &model.ops[done..at] {
            apply(&mut replay, op);
        }
        done = at;
        let path = format!("/replicas/{}/image?seq={}", checks.disk.disk, p.seq);
        let api = format!("{mt}:7280");
        let mut got = http_get_status(&api, &path).await;
        for _ in 0..100 {
            // A fault may take the master target down after convergence: wait for it.
            if got.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            got = http_get_status(&api, &path).await;
        }
        let image = match got {
            Ok((200, image)) => image,
            Ok((status, body)) => {
                return Err(format!(
                    "listed point {} could not be read: HTTP {status}: {}",
                    p.seq,
                    String::from_utf8_lossy(&body)
                )
                .into())
            }
            Err(e) => return Err(format!("listed point {} could not be read: {e}", p.seq).into()),
        };
        if image != replay {
            return Err(format!(
                "recovery point seq {} of {} differs from the disk after op {at} (seq base \
                 {base})",
                p.seq, checks.disk.disk
            )
            .into());
        }
        compared += 1;
    }
    Ok(compared)
}

async fn http_get_status(addr: &str, path: &str) -> Result<(u16, Vec<u8>), String> {
    let client = haven_runtime::http::Client::new(super::transport::TurmoilTcp, addr);
    let resp = client
        .send(haven_runtime::http::Method::GET, path, &[], None)
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = haven_runtime::http::read_body(resp.into_body(), 64 << 20)
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, body.to_vec()))
}

async fn http_get(addr: &str, path: &str) -> Option<Vec<u8>> {
    match http_get_status(addr, path).await {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

/// The newest recovery point of `disk` and its image, read from master target `mt`'s API.
pub async fn newest_image(mt: &str, disk: &str) -> Option<(Vec<PointRecord>, Vec<u8>)> {
    let api = format!("{mt}:7280");
    let body = http_get(&api, &format!("/replicas/{disk}/points")).await?;
    let points: Vec<PointRecord> = serde_json::from_slice(&body).ok()?;
    let last = points.last()?.seq;
    let image = http_get(&api, &format!("/replicas/{disk}/image?seq={last}")).await?;
    Some((points, image))
}

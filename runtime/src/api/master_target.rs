//! The master target's HTTP API.
//!
//! - `GET /replicas` — every replica's metadata
//! - `GET /replicas/{disk}/points` — its recovery points, oldest first
//! - `GET /replicas/{disk}/image?seq=N` — the raw disk image at point N, streamed

use super::segments;
use crate::drivers::master_target::Replicas;
use crate::http::{Handler, Request, Response};
use crate::meta::MetaStore;
use haven_core::ids::DiskId;
use serde::Serialize;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Bytes per chunk of a streamed image.
pub const IMAGE_CHUNK_BYTES: u64 = 1 << 20;
/// Chunks buffered ahead of a slow client.
const IMAGE_CHUNKS_AHEAD: usize = 8;

pub struct MtApi<V: crate::vfs::Vfs + Clone> {
    pub replicas: Replicas<V>,
    pub meta: Arc<MetaStore>,
}

#[derive(Serialize)]
struct ReplicaView {
    disk: DiskId,
    size_bytes: u64,
    epoch: u64,
    applied_seq: u64,
    points: u64,
    journal_bytes: u64,
    inconsistent: Option<String>,
}

impl<V: crate::vfs::Vfs + Clone> Handler for MtApi<V> {
    async fn handle(&self, req: Request) -> Response {
        if req.method != "GET" {
            return Response::error(405, "only GET is supported here");
        }
        let segs = segments(&req.path);
        match segs.as_slice() {
            ["replicas"] => self.list(),
            ["replicas", disk, "points"] => match DiskId::new(*disk) {
                Ok(d) => match self.meta.points(&d) {
                    Ok(p) => Response::json(200, &p),
                    Err(e) => Response::error(500, &e.to_string()),
                },
                Err(e) => Response::error(400, &e.to_string()),
            },
            ["replicas", disk, "image"] => self.image(disk, &req),
            _ => Response::error(404, "no such resource; see docs/api.md"),
        }
    }
}

impl<V: crate::vfs::Vfs + Clone> MtApi<V> {
    fn list(&self) -> Response {
        let replicas = self.replicas.lock().expect("replica lock");
        let v: Vec<ReplicaView> = replicas
            .values()
            .map(|r| ReplicaView {
                disk: r.meta.disk.clone(),
                size_bytes: r.meta.size_bytes,
                epoch: r.meta.epoch.0,
                applied_seq: r.meta.applied_seq,
                points: r.meta.points,
                journal_bytes: r.meta.journal_bytes,
                inconsistent: r.meta.inconsistent.clone(),
            })
            .collect();
        Response::json(200, &v)
    }

    fn image(&self, disk: &str, req: &Request) -> Response {
        let disk = match DiskId::new(disk) {
            Ok(d) => d,
            Err(e) => return Response::error(400, &e.to_string()),
        };
        let Some(seq) = req.query.get("seq").and_then(|s| s.parse::<u64>().ok()) else {
            return Response::error(
                400,
                "give the recovery point as ?seq=N (see GET /replicas/{disk}/points)",
            );
        };
        match self.meta.has_point(&disk, seq) {
            Ok(true) => {}
            Ok(false) => {
                return Response::error(
                    404,
                    &format!("seq {seq} is not a recovery point of {disk}"),
                )
            }
            Err(e) => return Response::error(500, &e.to_string()),
        }
        let size = match self.replicas.lock().expect("replica lock").get(&disk) {
            Some(r) => r.meta.size_bytes,
            None => return Response::error(404, &format!("no replica of {disk} here")),
        };
        let (tx, rx) = mpsc::channel(IMAGE_CHUNKS_AHEAD);
        let replicas = self.replicas.clone();
        tokio::spawn(async move {
            let mut off = 0;
            while off < size {
                let n = IMAGE_CHUNK_BYTES.min(size - off);
                let mut buf = vec![0u8; n as usize];
                let r = {
                    let replicas = replicas.lock().expect("replica lock");
                    match replicas.get(&disk) {
                        Some(r) => r.read_at(seq, off, &mut buf).map_err(|e| e.to_string()),
                        None => Err("replica went away".to_string()),
                    }
                };
                let failed = r.is_err();
                if tx.send(r.map(|_| buf)).await.is_err() || failed {
                    return;
                }
                off += n;
            }
        });
        Response::stream(size, rx)
    }
}

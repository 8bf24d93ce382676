//! Carrying out the roles' outputs: network commands, and storage requests against the
//! crash-faithful stores (a store told to fail stops its role).

use crate::cluster::{Cluster, R};
use crate::net::Node;
use crate::stores::{AgentAnswer, DiskFault};
use haven_core::agent;
use haven_core::batch::BLOCK_BYTES;
use haven_core::config_server as cs;
use haven_core::master_target as mt;
use haven_core::net::NetCommand;
use haven_core::process_server as ps;

impl Cluster {
    pub(crate) fn net_cmd(&mut self, from: Node, cmd: NetCommand) -> R {
        let now = self.now;
        match cmd {
            NetCommand::Connect { token, addr } => self.net.connect(from, token, &addr, now),
            NetCommand::Send { conn, msg, data } => {
                self.check_promise(from, &msg)?;
                self.net.send(from, conn, &msg, &data, now)?;
            }
            NetCommand::Close { conn } => self.net.close(from, conn, now),
        }
        Ok(())
    }

    pub(crate) fn cs_output(&mut self, o: cs::Output) -> R {
        match o {
            cs::Output::Net(cmd) => self.net_cmd(Node::Cs, cmd)?,
            cs::Output::Persist { id, records } => {
                let at = self.store_latency();
                self.cs_store.pending.push(at, (id, records));
            }
            cs::Output::CommandDone { id, result } => {
                return Err(format!(
                    "answer to command {id} that was never given: {result:?}"
                ))
            }
        }
        Ok(())
    }

    pub(crate) fn agent_output(&mut self, o: agent::Output) -> R {
        match o {
            agent::Output::Net(cmd) => self.net_cmd(Node::Agent, cmd)?,
            agent::Output::SourceWrite { io, op, .. } => {
                let at = self.store_latency();
                let answer = match self.agent_store.fault {
                    // The source disk refuses the write: nothing changes on it.
                    Some(f) => AgentAnswer::SourceFailed {
                        io,
                        error: f.error().into(),
                    },
                    None => {
                        let (version, data) = self.wl.carry_out(&op);
                        AgentAnswer::SourceDone { io, version, data }
                    }
                };
                self.agent_store.pending.push(at, answer);
            }
            agent::Output::SourceSync { io, .. } => {
                // Syncing what is written needs no new space; an I/O error fails it.
                if self.agent_store.fault == Some(DiskFault::Io) {
                    self.counters.stops[Node::Agent.index()] += 1;
                    self.stop(Node::Agent, "stopped: storage error");
                    return Ok(());
                }
                let at = self.store_latency();
                self.agent_store
                    .pending
                    .push(at, AgentAnswer::Synced { io });
            }
            agent::Output::Complete { io, result } => {
                self.wl.complete(io, result.is_ok())?;
                self.last_progress_ms = self.ms();
            }
            agent::Output::Reserve { disk, reserved } => {
                if self.agent_store.fault.is_some() {
                    self.counters.stops[Node::Agent.index()] += 1;
                    self.stop(Node::Agent, "stopped: storage error");
                    return Ok(());
                }
                let at = self.store_latency();
                let a = AgentAnswer::Reserved { disk, reserved };
                self.agent_store.pending.push(at, a);
            }
            agent::Output::StartCopy { .. } | agent::Output::Retired { .. } => {
                return Err(format!("{o:?}: the simulation never ends a protection"));
            }
        }
        Ok(())
    }

    fn storage_error(&mut self, n: Node, reading: bool) -> bool {
        let f = match n {
            Node::Ps => self.ps_store.fault,
            Node::Mt => self.mt_store.fault,
            _ => self.agent_store.fault,
        };
        // A full disk still reads; an I/O error fails reads too.
        let fails = match f {
            Some(DiskFault::Full) => !reading,
            Some(DiskFault::Io) => true,
            None => false,
        };
        if fails {
            self.counters.stops[n.index()] += 1;
            self.stop(n, "stopped: storage error");
        }
        fails
    }

    pub(crate) fn ps_output(&mut self, o: ps::Output) -> R {
        match o {
            ps::Output::Net(cmd) => self.net_cmd(Node::Ps, cmd)?,
            ps::Output::CacheAppend { id, header, data } => {
                if self.storage_error(Node::Ps, false) {
                    return Ok(());
                }
                let (loc, bytes) = self.ps_store.append(&header, &data)?;
                let at = self.store_latency();
                self.ps_store.pending.push(at, (id, loc, bytes));
            }
            ps::Output::Forward { conn, disk, loc } => {
                if self.storage_error(Node::Ps, true) {
                    return Ok(());
                }
                let frame = self.ps_store.frame(loc)?.to_vec();
                if disk != self.disk {
                    return Err(format!("Forward of {loc:?} for unknown disk {disk}"));
                }
                self.net.send_frame(Node::Ps, conn, &frame, self.now)?;
            }
            ps::Output::CacheRelease { disk, through } => {
                let durable = self.mt_store.durable_seq();
                if through > durable {
                    return Err(format!(
                        "cache released through {through}, journal durable only through {durable}"
                    ));
                }
                self.ps_store.release(&disk, through);
            }
            ps::Output::SaveDisk(meta) => {
                if self.storage_error(Node::Ps, false) {
                    return Ok(());
                }
                self.ps_store.metas.insert(meta.disk.clone(), meta);
            }
            ps::Output::ForgetDisk(disk) => {
                return Err(format!(
                    "ForgetDisk({disk}): the simulation never ends a protection"
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn mt_output(&mut self, o: mt::Output) -> R {
        match o {
            mt::Output::Net(cmd) => self.net_cmd(Node::Mt, cmd)?,
            mt::Output::CreateReplica(meta) => {
                if self.storage_error(Node::Mt, false) {
                    return Ok(());
                }
                if meta.size_bytes != self.wl.source.len() as u64 {
                    return Err(format!("replica of {} bytes", meta.size_bytes));
                }
                if self.mt_store.metas.contains_key(&meta.disk) {
                    return Err(format!("replica {} created twice", meta.disk));
                }
                self.mt_store.replica = vec![0; meta.size_bytes as usize];
                self.mt_store.digest =
                    crate::rng::BlockDigest::new(&self.mt_store.replica, BLOCK_BYTES as usize);
                self.mt_store.metas.insert(meta.disk.clone(), meta);
            }
            mt::Output::SaveReplica(meta) => {
                if self.storage_error(Node::Mt, false) {
                    return Ok(());
                }
                if meta.inconsistent.is_some() {
                    self.note(Node::Mt, "replica inconsistent", meta.applied_seq);
                }
                self.mt_store.metas.insert(meta.disk.clone(), meta);
            }
            mt::Output::RemoveReplica(disk) => {
                return Err(format!(
                    "RemoveReplica({disk}): the simulation never ends a protection"
                ));
            }
            mt::Output::JournalAppend { id, header, data } => {
                if self.storage_error(Node::Mt, false) {
                    return Ok(());
                }
                self.check_journal(&header, &data)?;
                self.mt_store.appended_seq = header.last_seq;
                let at = self.store_latency();
                self.mt_store.pending.push(at, (id, header, data));
            }
        }
        Ok(())
    }
}

//! Carrying out the roles' outputs: network commands, and storage requests against the
//! crash-faithful stores (a store told to fail stops its role).

use crate::cluster::{Cluster, R};
use crate::net::Node;
use crate::stores::{AgentAnswer, DiskFault, MtWork, PsWork, Replica};
use crate::workload::slot_of_io;
use haven_core::agent;
use haven_core::config_server as cs;
use haven_core::master_target::{self as mt, ReplicaMeta};
use haven_core::net::NetCommand;
use haven_core::process_server as ps;

impl Cluster {
    pub(crate) fn net_cmd(&mut self, from: Node, cmd: NetCommand) -> R {
        let now = self.now;
        match cmd {
            NetCommand::Connect { token, addr, epoch } => {
                self.net.connect(from, token, &addr, epoch, now)
            }
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

    pub(crate) fn agent_output(&mut self, a: usize, o: agent::Output) -> R {
        let n = Node::Agent(a as u8);
        match o {
            agent::Output::Net(cmd) => self.net_cmd(n, cmd)?,
            agent::Output::SourceWrite { io, disk, op } => {
                let at = self.store_latency();
                let answer = match self.agent_stores[a].fault {
                    // The source disk refuses the write: nothing changes on it.
                    Some(f) => AgentAnswer::SourceFailed {
                        io,
                        error: f.error().into(),
                    },
                    None => {
                        let d = self.disks_of(a).start + disk;
                        let (version, data) = self.disks[d].wl.carry_out(&op);
                        AgentAnswer::SourceDone {
                            io,
                            disk,
                            version,
                            data,
                        }
                    }
                };
                self.agent_stores[a].pending.push(at, answer);
            }
            agent::Output::SourceSync { io, .. } => {
                // Syncing what is written needs no new space; an I/O error fails it.
                if self.agent_stores[a].fault == Some(DiskFault::Io) {
                    self.storage_stop(n);
                    return Ok(());
                }
                let at = self.store_latency();
                self.agent_stores[a]
                    .pending
                    .push(at, AgentAnswer::Synced { io });
            }
            agent::Output::Complete { io, result } => {
                let d = self.disks_of(a).start + slot_of_io(io);
                self.disks[d].wl.complete(io, result.is_ok())?;
                self.last_progress_ms = self.ms();
            }
            agent::Output::Reserve { disk, reserved } => {
                if self.agent_stores[a].fault.is_some() {
                    self.storage_stop(n);
                    return Ok(());
                }
                let at = self.store_latency();
                let answer = AgentAnswer::Reserved { disk, reserved };
                self.agent_stores[a].pending.push(at, answer);
            }
            agent::Output::Retired { .. } => {
                return Err(format!("{o:?}: the simulation never ends a protection"));
            }
            agent::Output::CopyRead { .. } | agent::Output::CopyCached { .. } => {
                return Err(format!("{o:?}: the simulated disks are never copied"));
            }
        }
        Ok(())
    }

    /// Whether `n`'s store fails this request (and so `n` stops).
    fn storage_error(&mut self, n: Node, reading: bool) -> bool {
        // A full disk still reads; an I/O error fails reads too.
        let fails = match self.fault(n) {
            Some(DiskFault::Full) => !reading,
            Some(DiskFault::Io) => true,
            None => false,
        };
        if fails {
            self.storage_stop(n);
        }
        fails
    }

    pub(crate) fn ps_output(&mut self, i: usize, o: ps::Output) -> R {
        let n = Node::Ps(i as u8);
        match o {
            ps::Output::Net(cmd) => self.net_cmd(n, cmd)?,
            ps::Output::CacheAppend { id, header, data } => {
                if self.storage_error(n, false) {
                    return Ok(());
                }
                let (loc, bytes) = self.ps_stores[i].append(&header, &data)?;
                let at = self.store_latency();
                self.ps_stores[i]
                    .pending
                    .push(at, PsWork::Append(id, loc, bytes));
            }
            ps::Output::Forward { conn, disk, loc } => {
                if self.storage_error(n, true) {
                    return Ok(());
                }
                let frame = self.ps_stores[i].frame(loc)?.to_vec();
                if !self.disk_index.contains_key(&disk) {
                    return Err(format!("Forward of {loc:?} for unknown disk {disk}"));
                }
                self.net.send_frame(n, conn, &frame, self.now)?;
            }
            ps::Output::CacheRelease { disk, through } => {
                let durable = self.journal_seq(&disk);
                if through > durable {
                    return Err(format!(
                        "{} released {disk} through {through}, journal durable only through {durable}",
                        n.name()
                    ));
                }
                self.ps_stores[i].release(&disk, through);
            }
            ps::Output::SaveDisk { save, meta } => {
                if self.storage_error(n, false) {
                    return Ok(());
                }
                let at = self.store_latency();
                self.ps_stores[i].pending.push(at, PsWork::Save(save, meta));
            }
            ps::Output::ForgetDisk(disk) => {
                return Err(format!(
                    "ForgetDisk({disk}): the simulation never ends a protection"
                ));
            }
        }
        Ok(())
    }

    /// A master target's replica save becomes durable: its replica is created (of a known
    /// disk, of its size, once in the cluster) or its metadata replaced.
    pub(crate) fn replica_saved(&mut self, i: usize, meta: ReplicaMeta, create: bool) -> R {
        if create {
            return self.create_replica(i, meta);
        }
        let n = Node::Mt(i as u8);
        let Some(r) = self.mt_stores[i].replicas.get_mut(&meta.disk) else {
            return Err(format!("{} saved {}, never created", n.name(), meta.disk));
        };
        r.meta = meta;
        Ok(())
    }

    fn create_replica(&mut self, i: usize, meta: ReplicaMeta) -> R {
        let Some(&d) = self.disk_index.get(&meta.disk) else {
            return Err(format!("replica of unknown disk {}", meta.disk));
        };
        if meta.size_bytes != self.disks[d].wl.source.len() as u64 {
            return Err(format!("replica of {} bytes", meta.size_bytes));
        }
        if let Some((j, _)) = self.replica(&meta.disk) {
            return Err(format!(
                "replica {} created on {} and again on {}",
                meta.disk,
                Node::Mt(j as u8).name(),
                Node::Mt(i as u8).name()
            ));
        }
        let disk = meta.disk.clone();
        self.mt_stores[i].replicas.insert(disk, Replica::new(meta));
        Ok(())
    }

    /// A replica save (and its creation, if `create`) queued behind the store's latency; a crash
    /// before it completes loses it.
    fn save_replica(&mut self, i: usize, save: u64, meta: ReplicaMeta, create: bool) {
        let n = Node::Mt(i as u8);
        if self.storage_error(n, false) {
            return;
        }
        if meta.inconsistent.is_some() {
            self.note(n, "replica inconsistent", meta.applied_seq);
        }
        let at = self.store_latency();
        let work = MtWork::Save { save, meta, create };
        self.mt_stores[i].pending.push(at, work);
    }

    pub(crate) fn mt_output(&mut self, i: usize, o: mt::Output) -> R {
        let n = Node::Mt(i as u8);
        match o {
            mt::Output::Net(cmd) => self.net_cmd(n, cmd)?,
            mt::Output::CreateReplica { save, meta } => self.save_replica(i, save, meta, true),
            mt::Output::SaveReplica { save, meta } => self.save_replica(i, save, meta, false),
            mt::Output::RemoveReplica(disk) => {
                return Err(format!(
                    "RemoveReplica({disk}): the simulation never ends a protection"
                ));
            }
            mt::Output::JournalAppend {
                id,
                header,
                data,
                point,
                ..
            } => {
                if point.as_ref().is_some_and(|p| p.seq != header.last_seq) {
                    return Err(format!(
                        "{} put the point of batch {}..={} at seq {}",
                        n.name(),
                        header.first_seq,
                        header.last_seq,
                        point.map_or(0, |p| p.seq)
                    ));
                }
                if self.storage_error(n, false) {
                    return Ok(());
                }
                self.check_journal(i, &header, &data)?;
                let r = self.mt_stores[i].replicas.get_mut(&header.disk);
                r.expect("checked").appended_seq = header.last_seq;
                let at = self.store_latency();
                self.mt_stores[i]
                    .pending
                    .push(at, MtWork::Append(id, header, data, point.is_some()));
            }
        }
        Ok(())
    }
}

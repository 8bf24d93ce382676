//! Placement (which process server and master target serve a protected disk) and the
//! announcements that tell each component its part, and nothing more.

use super::*;
use crate::protocol::{Assignment, Retired, Route};

impl ConfigServer {
    /// Protected disks per component that serves them (agent, process server, master target),
    /// in one pass over the protections.
    pub(super) fn loads(&self) -> BTreeMap<&ComponentId, u64> {
        let mut loads = BTreeMap::new();
        for p in self
            .protections
            .values()
            .filter(|p| p.state == ProtectionState::Protected)
        {
            for id in std::iter::once(&p.agent)
                .chain(p.process_server.as_ref())
                .chain(p.master_target.as_ref())
            {
                *loads.entry(id).or_insert(0) += 1;
            }
        }
        loads
    }

    /// The pinned component if it is known, else the least loaded online one (ties by id).
    fn pick(&self, role: Role, pinned: Option<&ComponentId>) -> Option<ComponentId> {
        if let Some(id) = pinned {
            let ok = self
                .components
                .get(id)
                .is_some_and(|c| c.record.role == role);
            return ok.then(|| id.clone());
        }
        let loads = self.loads();
        self.components
            .iter()
            .filter(|(_, c)| c.record.role == role && c.online)
            .min_by_key(|(id, _)| (loads.get(id).copied().unwrap_or(0), *id))
            .map(|(id, _)| id.clone())
    }

    /// Places what is missing of a protected disk's placement; saves it if it changed.
    pub(super) fn place(&mut self, disk: &DiskId) {
        let p = &self.protections[disk];
        if p.state != ProtectionState::Protected {
            return;
        }
        let ps = match &p.process_server {
            Some(x) => Some(x.clone()),
            None => self.pick(Role::ProcessServer, p.pinned_process_server.as_ref()),
        };
        let mt = match &p.master_target {
            Some(x) => Some(x.clone()),
            None => self.pick(Role::MasterTarget, p.pinned_master_target.as_ref()),
        };
        let p = self.protections.get_mut(disk).expect("known");
        if p.process_server != ps || p.master_target != mt {
            p.process_server = ps;
            p.master_target = mt;
            self.save_protection(disk);
        }
    }

    pub(super) fn place_all(&mut self) {
        let unplaced: Vec<DiskId> = self
            .protections
            .iter()
            .filter(|(_, p)| {
                p.state == ProtectionState::Protected
                    && (p.process_server.is_none() || p.master_target.is_none())
            })
            .map(|(d, _)| d.clone())
            .collect();
        for disk in unplaced {
            self.place(&disk);
        }
    }

    fn send(&mut self, id: &ComponentId, msg: Message) {
        if let Some(conn) = self.components.get(id).and_then(|c| c.conn) {
            self.out.push_back(Output::Net(NetCommand::send(conn, msg)));
        }
    }

    /// Tells every connected component its part of the (durable) picture: each agent its
    /// assignments and its retired disks, each process server its routes and the cached disks
    /// it must drop, each master target the replicas it must remove.
    pub(super) fn announce(&mut self) {
        let mut assigns: BTreeMap<ComponentId, Vec<Assignment>> = BTreeMap::new();
        let mut routes: BTreeMap<ComponentId, Vec<Route>> = BTreeMap::new();
        let mut retire: BTreeMap<ComponentId, Vec<Retired>> = BTreeMap::new();
        for (disk, p) in &self.protections {
            let retired = Retired {
                disk: disk.clone(),
                epoch: p.epoch,
            };
            if p.state != ProtectionState::Protected {
                retire
                    .entry(p.agent.clone())
                    .or_default()
                    .push(retired.clone());
                for (ps, stats) in &self.ps_stats {
                    if stats.disks.iter().any(|d| &d.disk == disk) {
                        retire.entry(ps.clone()).or_default().push(retired.clone());
                    }
                }
                if let (ProtectionState::Unprotected, Some(mt)) = (p.state, &p.master_target) {
                    retire.entry(mt.clone()).or_default().push(retired);
                }
                continue;
            }
            let (Some(ps), Some(mt)) = (&p.process_server, &p.master_target) else {
                continue;
            };
            let (Some(psc), Some(mtc)) = (self.components.get(ps), self.components.get(mt)) else {
                continue;
            };
            assigns
                .entry(p.agent.clone())
                .or_default()
                .push(Assignment {
                    disk: disk.clone(),
                    epoch: p.epoch,
                    process_server: ps.clone(),
                    process_server_addr: psc.record.reg.data_addr.clone(),
                    batch_bytes_max: p.policy.batch_bytes_max,
                    batch_delay_ms: p.policy.batch_delay_ms,
                });
            routes.entry(ps.clone()).or_default().push(Route {
                disk: disk.clone(),
                epoch: p.epoch,
                size_bytes: p.size_bytes,
                master_target: mt.clone(),
                master_target_addr: mtc.record.reg.data_addr.clone(),
            });
        }
        for (id, list) in assigns {
            self.send(&id, Message::Assign(list));
        }
        for (id, list) in routes {
            self.send(&id, Message::Routes(list));
        }
        for (id, list) in retire {
            self.send(&id, Message::Retire(list));
        }
    }
}

//! Scenario actions carried out on the cluster: partitions, link faults, crashes and restarts,
//! store faults; and whether the cluster is healthy (no fault active).

use crate::cluster::{Cluster, R};
use crate::net::Node;
use crate::scenario::Action;
use crate::stores::DiskFault;

impl Cluster {
    pub fn apply(&mut self, a: Action) -> R {
        let now = self.now;
        match a {
            Action::Partition(x, y) => {
                self.note(x, "partition", y.index() as u64);
                self.net.partition(x, y, now);
            }
            Action::Heal(x, y) => {
                self.note(x, "heal", y.index() as u64);
                self.net.heal(x, y);
            }
            Action::HealAll => {
                self.note(Node::Cs, "heal all", 0);
                self.net.heal_all();
                for n in self.nodes() {
                    self.set_fault(n, None);
                }
                for n in self.started_nodes() {
                    self.restart(n)?;
                }
            }
            Action::Crash(n) => {
                *self.counters.crashes.entry(n).or_default() += 1;
                self.stop(n, "crash");
            }
            Action::Restart(n) => self.restart(n)?,
            Action::Link(x, y, p) => {
                let detail = p.map_or(0, |p| p.delay_max_ms << 16 | p.reset_per_mille);
                self.note(x, "link", detail);
                self.net.set_link(x, y, p);
            }
            Action::DiskFull(n) => {
                self.note(n, "disk full", 0);
                self.set_fault(n, Some(DiskFault::Full));
            }
            Action::IoError(n) => {
                self.note(n, "io error", 0);
                self.set_fault(n, Some(DiskFault::Io));
            }
            Action::Clear(n) => {
                self.note(n, "clear", 0);
                self.set_fault(n, None);
            }
        }
        self.update_health();
        Ok(())
    }

    fn set_fault(&mut self, n: Node, f: Option<DiskFault>) {
        match n {
            Node::Agent(i) => self.agent_stores[i as usize].fault = f,
            Node::Ps(i) => self.ps_stores[i as usize].fault = f,
            Node::Mt(i) => self.mt_stores[i as usize].fault = f,
            Node::Cs => {}
        }
    }

    /// The agents start, if it is time (see `Topology::agent_start_ms`).
    pub(crate) fn start_agents_if_due(&mut self) -> R {
        if self.agents_start_at.is_none_or(|at| self.ms() < at) {
            return Ok(());
        }
        self.agents_start_at = None;
        for a in 0..self.agents.len() {
            self.restart(Node::Agent(a as u8))?;
        }
        self.update_health();
        Ok(())
    }

    /// The store fault `n` has now, if any.
    pub(crate) fn fault(&self, n: Node) -> Option<DiskFault> {
        match n {
            Node::Agent(i) => self.agent_stores[i as usize].fault,
            Node::Ps(i) => self.ps_stores[i as usize].fault,
            Node::Mt(i) => self.mt_stores[i as usize].fault,
            Node::Cs => None,
        }
    }

    /// A role stops on a storage error.
    pub(crate) fn storage_stop(&mut self, n: Node) {
        *self.counters.stops.entry(n).or_default() += 1;
        self.stop(n, "stopped: storage error");
    }

    pub fn faulty(&self) -> bool {
        self.net.faulty()
            || self
                .started_nodes()
                .into_iter()
                .any(|n| !self.up(n) || self.fault(n).is_some())
    }

    pub(crate) fn update_health(&mut self) {
        if self.faulty() {
            self.healthy_since = None;
            for d in &mut self.disks {
                d.caught_up = false;
            }
        } else if self.healthy_since.is_none() {
            self.healthy_since = Some(self.now);
        }
    }
}

//! Which hosts a turmoil run has: one configuration server, one to [`PS_MAX`] process servers,
//! one to [`MT_MAX`] master targets and one to [`AGENT_MAX`] agents with one to
//! [`DISKS_PER_AGENT_MAX`] disks each. The first host of each role keeps its plain name (`ps`,
//! `mt`, `agent`), so the single topology of the named tests reads as before; the others are
//! `ps2`, `mt2`, `agent2`, `agent3`. Disks are numbered across agents (`disk0`, `disk1`, ...),
//! each agent's in order, and each is the file `/diskN.img` on its agent's file system.

use haven_core::ids::DiskId;

pub const PS_MAX: usize = 2;
pub const MT_MAX: usize = 2;
pub const AGENT_MAX: usize = 3;
pub const DISKS_PER_AGENT_MAX: usize = 3;

const PS_HOSTS: [&str; PS_MAX] = ["ps", "ps2"];
const MT_HOSTS: [&str; MT_MAX] = ["mt", "mt2"];
const AGENT_HOSTS: [&str; AGENT_MAX] = ["agent", "agent2", "agent3"];

/// The hosts of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// Disks of each agent (1 to `DISKS_PER_AGENT_MAX` each).
    pub agents: Vec<usize>,
    pub pss: usize,
    pub mts: usize,
}

/// One protected disk of a run: its id, its agent's host and its file there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    pub disk: DiskId,
    pub agent: &'static str,
    pub path: String,
}

impl Topology {
    /// One of each role and one disk.
    pub fn single() -> Topology {
        Topology {
            agents: vec![1],
            pss: 1,
            mts: 1,
        }
    }

    /// Clamps every count into its bounds, so that any drawn topology can be built.
    pub fn bounded(mut self) -> Topology {
        self.agents.truncate(AGENT_MAX);
        if self.agents.is_empty() {
            self.agents.push(1);
        }
        for d in &mut self.agents {
            *d = (*d).clamp(1, DISKS_PER_AGENT_MAX);
        }
        self.pss = self.pss.clamp(1, PS_MAX);
        self.mts = self.mts.clamp(1, MT_MAX);
        self
    }

    pub fn ps_hosts(&self) -> &'static [&'static str] {
        &PS_HOSTS[..self.pss]
    }

    pub fn mt_hosts(&self) -> &'static [&'static str] {
        &MT_HOSTS[..self.mts]
    }

    pub fn agent_hosts(&self) -> &'static [&'static str] {
        &AGENT_HOSTS[..self.agents.len()]
    }

    /// Every disk of the run, agent by agent.
    pub fn disks(&self) -> Vec<DiskSpec> {
        let mut out = vec![];
        for (a, &n) in self.agents.iter().enumerate() {
            for _ in 0..n {
                let i = out.len();
                out.push(DiskSpec {
                    disk: DiskId::new(format!("disk{i}")).expect("valid disk id"),
                    agent: AGENT_HOSTS[a],
                    path: format!("/disk{i}.img"),
                });
            }
        }
        out
    }

    /// Every host but the configuration server's.
    pub fn hosts(&self) -> Vec<&'static str> {
        let mut h = self.ps_hosts().to_vec();
        h.extend(self.mt_hosts());
        h.extend(self.agent_hosts());
        h
    }

    /// The links a partition or a hold may cut: every agent to every process server, every
    /// process server to every master target, and the configuration server to everyone.
    pub fn links(&self) -> Vec<(&'static str, &'static str)> {
        let mut l = vec![];
        for &a in self.agent_hosts() {
            for &p in self.ps_hosts() {
                l.push((a, p));
            }
        }
        for &p in self.ps_hosts() {
            for &m in self.mt_hosts() {
                l.push((p, m));
            }
        }
        for h in self.hosts() {
            l.push(("cs", h));
        }
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_single_topology_keeps_the_plain_names() {
        let t = Topology::single();
        assert_eq!(t.hosts(), ["ps", "mt", "agent"]);
        let d = t.disks();
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].disk.as_str(), d[0].agent, d[0].path.as_str()),
            ("disk0", "agent", "/disk0.img")
        );
    }

    #[test]
    fn disks_are_numbered_across_agents_and_counts_are_bounded() {
        let t = Topology {
            agents: vec![2, 0, 9, 1],
            pss: 5,
            mts: 0,
        }
        .bounded();
        assert_eq!(t.agents, [2, 1, DISKS_PER_AGENT_MAX]);
        assert_eq!((t.pss, t.mts), (PS_MAX, 1));
        let d = t.disks();
        let agents: Vec<_> = d.iter().map(|d| d.agent).collect();
        assert_eq!(
            agents,
            ["agent", "agent", "agent2", "agent3", "agent3", "agent3"]
        );
        assert_eq!(d[5].disk.as_str(), "disk5");
        assert_eq!(t.links().len(), 3 * 2 + 2 + 6);
    }
}

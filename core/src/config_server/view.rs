//! The status snapshot: what the REST API and the console show. The driver takes one after every
//! round and publishes it; readers never touch the core.

use super::*;
use crate::ids::Epoch;
use crate::stats::{AgentDiskStats, ReplicaStats};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ComponentView {
    pub id: ComponentId,
    pub role: String,
    pub online: bool,
    pub last_seen_ms: u64,
    pub data_addr: String,
    pub api_addr: String,
    /// Protected disks placed on this component (process server, master target) or served by it
    /// (agent).
    pub disks: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DiskView {
    pub disk: DiskId,
    pub state: ProtectionState,
    pub epoch: Epoch,
    pub agent: ComponentId,
    /// The disk's file or device on the agent's machine, as the agent last reported it (None:
    /// not reported); `haven export` refuses to write over it.
    #[serde(default)]
    pub source_path: Option<String>,
    pub size_bytes: u64,
    pub process_server: Option<ComponentId>,
    pub master_target: Option<ComponentId>,
    /// HTTP API of the master target holding the replica (recovery points, images).
    pub master_target_api: Option<String>,
    pub policy: DiskPolicy,
    pub source: Option<AgentDiskStats>,
    pub replica: Option<ReplicaStats>,
    /// Why the master target refuses the disk's stream, as its process server last heard it
    /// (None: not refused): replication of the disk is stuck until the operator acts.
    #[serde(default)]
    pub refused: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusView {
    pub time_ms: u64,
    pub components: Vec<ComponentView>,
    pub disks: Vec<DiskView>,
    pub process_servers: BTreeMap<ComponentId, ProcessServerStats>,
    /// The newest events, oldest first.
    pub events: Vec<Event>,
}

impl ConfigServer {
    /// The whole picture, for the REST API and the console.
    pub fn status(&self) -> StatusView {
        let now = self.now;
        let loads = self.loads();
        let components = self
            .components
            .iter()
            .map(|(id, c)| ComponentView {
                id: id.clone(),
                role: c.record.role.name().to_string(),
                online: c.online,
                last_seen_ms: now.millis_since(c.last_seen),
                data_addr: c.record.reg.data_addr.clone(),
                api_addr: c.record.reg.api_addr.clone(),
                disks: loads.get(id).copied().unwrap_or(0),
            })
            .collect();
        let disks = self
            .protections
            .iter()
            .map(|(disk, p)| self.disk_view(disk, p))
            .collect();
        StatusView {
            time_ms: now.as_millis(),
            components,
            disks,
            process_servers: self.ps_stats.clone(),
            events: self.events.iter().cloned().collect(),
        }
    }

    fn disk_view(&self, disk: &DiskId, p: &ProtectionRecord) -> DiskView {
        let source = self
            .agent_stats
            .get(&p.agent)
            .and_then(|s| s.disks.iter().find(|d| &d.disk == disk).cloned());
        let replica = p
            .master_target
            .as_ref()
            .and_then(|mt| self.mt_stats.get(mt))
            .and_then(|s| s.replicas.iter().find(|r| &r.disk == disk).cloned());
        let master_target_api = p
            .master_target
            .as_ref()
            .and_then(|mt| self.components.get(mt))
            .map(|c| c.record.reg.api_addr.clone());
        let refused = p
            .process_server
            .as_ref()
            .and_then(|ps| self.ps_stats.get(ps))
            .and_then(|s| s.disks.iter().find(|d| &d.disk == disk))
            .and_then(|d| d.refused.clone());
        let source_path = self
            .components
            .get(&p.agent)
            .and_then(|c| c.record.reg.disks.iter().find(|d| &d.disk == disk))
            .map(|d| d.source_path.clone())
            .filter(|path| !path.is_empty());
        DiskView {
            disk: disk.clone(),
            state: p.state,
            epoch: p.epoch,
            agent: p.agent.clone(),
            source_path,
            size_bytes: p.size_bytes,
            process_server: p.process_server.clone(),
            master_target: p.master_target.clone(),
            master_target_api,
            policy: p.policy.clone(),
            source,
            replica,
            refused,
        }
    }
}

//! The configuration server (minimal): registers components, decides which process server and
//! master target serve each protected disk, collects heartbeats, and keeps the event log.
//!
//! Components connect and `Register`. An agent's registration lists its disks; each becomes a
//! protection (epoch 1) served by the process server and master target named in the settings,
//! or, when none are named, the first online ones by name. Agents get `Assign`, process servers
//! get `Routes`, resent whenever the picture changes (receivers act only on a change).

use crate::ids::{ComponentId, ConnId, DiskId, Epoch};
use crate::net::{NetCommand, NetEvent};
use crate::protocol::{Assignment, Message, Registration, Role, Route};
use crate::stats::{
    AgentDiskStats, AgentStats, MasterTargetStats, ProcessServerStats, ReplicaStats,
};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Events kept for the API; older ones are dropped.
pub const EVENTS_MAX: usize = 1000;
/// Components known at once (registrations beyond are refused).
pub const COMPONENTS_MAX: usize = 10_000;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProtectionRule {
    pub disk: DiskId,
    pub process_server: Option<ComponentId>,
    pub master_target: Option<ComponentId>,
}

#[derive(Clone, Debug)]
pub struct ConfigServerSettings {
    pub rules: Vec<ProtectionRule>,
    /// A component silent for this long is reported offline.
    pub heartbeat_timeout_ms: u64,
}

#[derive(Debug)]
pub enum Input {
    Net(NetEvent),
    Tick,
}

#[derive(Debug)]
pub enum Output {
    Net(NetCommand),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    pub time_ms: u64,
    pub level: String,
    pub text: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ComponentView {
    pub id: ComponentId,
    pub role: String,
    pub online: bool,
    pub last_seen_ms: u64,
    pub data_addr: String,
    pub api_addr: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DiskView {
    pub disk: DiskId,
    pub epoch: Epoch,
    pub agent: ComponentId,
    pub process_server: Option<ComponentId>,
    pub master_target: Option<ComponentId>,
    /// HTTP API of the master target holding the replica (recovery points, images).
    pub master_target_api: Option<String>,
    pub source: Option<AgentDiskStats>,
    pub replica: Option<ReplicaStats>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusView {
    pub time_ms: u64,
    pub components: Vec<ComponentView>,
    pub disks: Vec<DiskView>,
    pub process_servers: BTreeMap<ComponentId, ProcessServerStats>,
    pub events: Vec<Event>,
}

#[derive(Debug)]
struct Component {
    role: Role,
    conn: Option<ConnId>,
    reg: Registration,
    last_seen: Timestamp,
    online: bool,
}

#[derive(Debug)]
struct Protection {
    agent: ComponentId,
    size_bytes: u64,
    epoch: Epoch,
    ps: Option<ComponentId>,
    mt: Option<ComponentId>,
}

pub struct ConfigServer {
    settings: ConfigServerSettings,
    components: BTreeMap<ComponentId, Component>,
    conns: BTreeMap<ConnId, (Role, ComponentId)>,
    protections: BTreeMap<DiskId, Protection>,
    agent_stats: BTreeMap<ComponentId, AgentStats>,
    ps_stats: BTreeMap<ComponentId, ProcessServerStats>,
    mt_stats: BTreeMap<ComponentId, MasterTargetStats>,
    events: VecDeque<Event>,
    out: VecDeque<Output>,
    now: Timestamp,
}

impl ConfigServer {
    pub fn new(settings: ConfigServerSettings, now: Timestamp) -> Self {
        ConfigServer {
            settings,
            components: BTreeMap::new(),
            conns: BTreeMap::new(),
            protections: BTreeMap::new(),
            agent_stats: BTreeMap::new(),
            ps_stats: BTreeMap::new(),
            mt_stats: BTreeMap::new(),
            events: VecDeque::new(),
            out: VecDeque::new(),
            now,
        }
    }

    fn event(&mut self, level: &str, text: String) {
        if self.events.len() >= EVENTS_MAX {
            self.events.pop_front();
        }
        self.events.push_back(Event {
            time_ms: self.now.as_millis(),
            level: level.to_string(),
            text,
        });
    }

    fn on_closed(&mut self, conn: ConnId) {
        let Some((_, id)) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(c) = self
            .components
            .get_mut(&id)
            .filter(|c| c.conn == Some(conn))
        {
            c.conn = None;
        }
    }

    fn check_liveness(&mut self) {
        let timeout = self.settings.heartbeat_timeout_ms;
        let now = self.now;
        let mut lost = vec![];
        for (id, c) in self.components.iter_mut() {
            if c.online && now.millis_since(c.last_seen) > timeout {
                c.online = false;
                lost.push(format!(
                    "{} {id} is offline: no heartbeat for {} ms",
                    c.role.name(),
                    timeout
                ));
            }
        }
        for text in lost {
            self.event("warning", text);
        }
    }

    fn on_message(&mut self, conn: ConnId, msg: Message) {
        let Some((role, id)) = self.conns.get(&conn).cloned() else {
            self.out.push_back(Output::Net(NetCommand::Close { conn }));
            return;
        };
        if let Some(c) = self.components.get_mut(&id) {
            c.last_seen = self.now;
            if !c.online && c.conn == Some(conn) {
                c.online = true;
            }
        }
        match msg {
            Message::Register(reg) => self.on_register(conn, role, id, reg),
            Message::AgentHeartbeat(s) if role == Role::Agent => {
                self.agent_stats.insert(id, s);
            }
            Message::ProcessServerHeartbeat(s) if role == Role::ProcessServer => {
                self.ps_stats.insert(id, s);
            }
            Message::MasterTargetHeartbeat(s) if role == Role::MasterTarget => {
                self.mt_stats.insert(id, s);
            }
            other => {
                let reason = format!("unexpected {} from a {}", other.kind(), role.name());
                self.out
                    .extend(NetCommand::refusal(conn, reason).map(Output::Net));
            }
        }
    }

    fn on_register(&mut self, conn: ConnId, role: Role, id: ComponentId, reg: Registration) {
        if !self.components.contains_key(&id) && self.components.len() >= COMPONENTS_MAX {
            let reason = format!("too many components (limit {COMPONENTS_MAX})");
            self.out
                .extend(NetCommand::refusal(conn, reason).map(Output::Net));
            return;
        }
        if let Some(old) = self
            .components
            .get(&id)
            .and_then(|c| c.conn)
            .filter(|c| *c != conn)
        {
            // The same component reconnected; the old connection is stale.
            self.out
                .push_back(Output::Net(NetCommand::Close { conn: old }));
        }
        for d in &reg.disks {
            let p = self
                .protections
                .entry(d.disk.clone())
                .or_insert_with(|| Protection {
                    agent: id.clone(),
                    size_bytes: d.size_bytes,
                    epoch: Epoch(1),
                    ps: None,
                    mt: None,
                });
            p.agent = id.clone();
            p.size_bytes = d.size_bytes;
        }
        let text = format!("{} {id} registered", role.name());
        let c = Component {
            role,
            conn: Some(conn),
            reg,
            last_seen: self.now,
            online: true,
        };
        self.components.insert(id, c);
        self.event("info", text);
        self.place_and_announce();
    }

    fn pick(&self, role: Role, named: Option<&ComponentId>) -> Option<ComponentId> {
        let ok = |id: &ComponentId| self.components.get(id).is_some_and(|c| c.role == role);
        match named {
            Some(id) => ok(id).then(|| id.clone()),
            None => self
                .components
                .iter()
                .find(|(_, c)| c.role == role && c.online)
                .map(|(id, _)| id.clone()),
        }
    }

    /// Places unplaced protections and sends every connected agent and process server its list.
    fn place_and_announce(&mut self) {
        let disks: Vec<DiskId> = self.protections.keys().cloned().collect();
        for disk in disks {
            let rule = self.settings.rules.iter().find(|r| r.disk == disk);
            let ps = self.pick(
                Role::ProcessServer,
                rule.and_then(|r| r.process_server.as_ref()),
            );
            let mt = self.pick(
                Role::MasterTarget,
                rule.and_then(|r| r.master_target.as_ref()),
            );
            let p = self.protections.get_mut(&disk).expect("listed");
            if p.ps.is_none() {
                p.ps = ps;
            }
            if p.mt.is_none() {
                p.mt = mt;
            }
        }
        let mut assigns: BTreeMap<ComponentId, Vec<Assignment>> = BTreeMap::new();
        let mut routes: BTreeMap<ComponentId, Vec<Route>> = BTreeMap::new();
        for (disk, p) in &self.protections {
            let (Some(ps), Some(mt)) = (&p.ps, &p.mt) else {
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
                    process_server_addr: psc.reg.data_addr.clone(),
                });
            routes.entry(ps.clone()).or_default().push(Route {
                disk: disk.clone(),
                epoch: p.epoch,
                size_bytes: p.size_bytes,
                master_target: mt.clone(),
                master_target_addr: mtc.reg.data_addr.clone(),
            });
        }
        for (id, list) in assigns {
            if let Some(conn) = self.components.get(&id).and_then(|c| c.conn) {
                self.out
                    .push_back(Output::Net(NetCommand::send(conn, Message::Assign(list))));
            }
        }
        for (id, list) in routes {
            if let Some(conn) = self.components.get(&id).and_then(|c| c.conn) {
                self.out
                    .push_back(Output::Net(NetCommand::send(conn, Message::Routes(list))));
            }
        }
    }

    /// The whole picture, for the REST API and the console.
    pub fn status(&self) -> StatusView {
        let now = self.now;
        let components = self
            .components
            .iter()
            .map(|(id, c)| ComponentView {
                id: id.clone(),
                role: c.role.name().to_string(),
                online: c.online,
                last_seen_ms: now.millis_since(c.last_seen),
                data_addr: c.reg.data_addr.clone(),
                api_addr: c.reg.api_addr.clone(),
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

    fn disk_view(&self, disk: &DiskId, p: &Protection) -> DiskView {
        let source = self
            .agent_stats
            .get(&p.agent)
            .and_then(|s| s.disks.iter().find(|d| &d.disk == disk).cloned());
        let replica =
            p.mt.as_ref()
                .and_then(|mt| self.mt_stats.get(mt))
                .and_then(|s| s.replicas.iter().find(|r| &r.disk == disk).cloned());
        let master_target_api =
            p.mt.as_ref()
                .and_then(|mt| self.components.get(mt))
                .map(|c| c.reg.api_addr.clone());
        DiskView {
            disk: disk.clone(),
            epoch: p.epoch,
            agent: p.agent.clone(),
            process_server: p.ps.clone(),
            master_target: p.mt.clone(),
            master_target_api,
            source,
            replica,
        }
    }
}

impl crate::machine::Machine for ConfigServer {
    type Input = Input;
    type Output = Output;

    fn handle(&mut self, now: Timestamp, input: Input) {
        self.now = self.now.max(now);
        match input {
            Input::Net(NetEvent::Accepted { conn, peer }) => {
                self.conns.insert(conn, (peer.role, peer.component));
            }
            Input::Net(NetEvent::Received { conn, msg, .. }) => self.on_message(conn, msg),
            Input::Net(NetEvent::Closed { conn, .. }) => self.on_closed(conn),
            Input::Net(_) => {}
            Input::Tick => {}
        }
        self.check_liveness();
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Timestamp> {
        Some(self.now.plus_millis(self.settings.heartbeat_timeout_ms / 2))
    }

    fn tick() -> Input {
        Input::Tick
    }

    fn net(ev: NetEvent) -> Input {
        Input::Net(ev)
    }
}

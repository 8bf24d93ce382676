//! The configuration server: the one place where intent lives and the one writer of epochs.
//!
//! It registers components, knows every disk the agents report, protects the ones it is told to
//! (`Command::Protect`, or at once when `auto_protect` is set), places each protection on the
//! least loaded online process server and master target, collects heartbeats, and keeps the
//! event log. Agents get `Assign`, process servers `Routes`, and every role `Retire` for a
//! protection that ended; each is resent whenever the picture changes (receivers act only on a
//! change).
//!
//! Durability: every change to the state in `state.rs` is emitted as an `Output::Persist`, and
//! nothing that depends on it leaves before its `Input::Persisted`: announcements wait until no
//! persist is outstanding, and a command's answer waits for the persist of its changes. A crash
//! at any moment therefore leaves a command done or not done, never half, and never a peer told
//! of an epoch or a placement that the server forgot.

mod apply;
pub mod command;
mod place;
pub mod state;
mod view;

pub use command::{
    Command, CommandError, CommandErrorKind, CommandId, CommandResult, PolicyChange,
};
pub use state::{
    ComponentRecord, ConfigState, DiskPolicy, Event, ProtectionRecord, ProtectionState, Record,
    EVENTS_MAX,
};
pub use view::{ComponentView, DiskView, StatusView};

use crate::ids::{ComponentId, ConnId, DiskId};
use crate::net::{NetCommand, NetEvent};
use crate::protocol::{Message, Registration, Role};
use crate::stats::{AgentStats, MasterTargetStats, ProcessServerStats};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Components known at once (registrations beyond are refused).
pub const COMPONENTS_MAX: usize = 10_000;
/// Disks known at once (protections and unprotected disks); registrations beyond are refused.
pub const DISKS_MAX: usize = 100_000;
/// Commands waiting for their persist; the driver holds further commands back (its command
/// channel is bounded too).
pub const COMMANDS_PENDING_MAX: usize = 1024;
/// A component refused because its id is online elsewhere retries; the event log says so at
/// most this often per id.
pub const REFUSAL_EVENT_INTERVAL_MS: u64 = 60_000;

/// Where a disk should go when it is protected without naming components (from the TOML).
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
    /// Protect every disk an agent registers for the first time (the lab; small sites). A disk
    /// that was unprotected stays so.
    pub auto_protect: bool,
}

/// Names one `Output::Persist`, chosen by the core.
pub type PersistId = u64;

#[derive(Debug)]
pub enum Input {
    Net(NetEvent),
    /// An operator's command; answered by one `Output::CommandDone` with the same id.
    Command {
        id: CommandId,
        command: Command,
    },
    /// The records of `Persist { id }` are durable.
    Persisted {
        id: PersistId,
    },
    Tick,
}

#[derive(Debug)]
pub enum Output {
    Net(NetCommand),
    /// Write these records in one transaction (all or none), then answer `Persisted { id }`.
    Persist {
        id: PersistId,
        records: Vec<Record>,
    },
    /// The answer to `Input::Command { id }`.
    CommandDone {
        id: CommandId,
        result: CommandResult,
    },
}

#[derive(Debug)]
struct Component {
    record: ComponentRecord,
    conn: Option<ConnId>,
    last_seen: Timestamp,
    online: bool,
}

pub struct ConfigServer {
    settings: ConfigServerSettings,
    components: BTreeMap<ComponentId, Component>,
    conns: BTreeMap<ConnId, (Role, ComponentId)>,
    protections: BTreeMap<DiskId, ProtectionRecord>,
    agent_stats: BTreeMap<ComponentId, AgentStats>,
    ps_stats: BTreeMap<ComponentId, ProcessServerStats>,
    mt_stats: BTreeMap<ComponentId, MasterTargetStats>,
    events: VecDeque<Event>,
    next_event: u64,
    /// Records changed by the input being handled, persisted together when it is done.
    dirty: Vec<Record>,
    /// Persists not yet durable, with the command answers that wait for each.
    persisting: BTreeMap<PersistId, Vec<(CommandId, CommandResult)>>,
    next_persist: PersistId,
    /// Answers of the input being handled, released with its persist.
    answers: Vec<(CommandId, CommandResult)>,
    /// The picture changed: announce it once nothing is being persisted.
    announce_wanted: bool,
    /// When a duplicate of each component id was last recorded in the event log.
    duplicates_logged: BTreeMap<ComponentId, Timestamp>,
    out: VecDeque<Output>,
    now: Timestamp,
    /// When liveness was last checked: the server checks at every input and wakes at least
    /// every half timeout, so a longer gap means the server itself did not run.
    liveness_at: Timestamp,
}

impl ConfigServer {
    /// Starts from the durable state (`ConfigState::default()` on a new server). Components
    /// are offline until they connect again.
    pub fn new(settings: ConfigServerSettings, state: ConfigState, now: Timestamp) -> Self {
        let components = state
            .components
            .into_iter()
            .map(|(id, record)| {
                let c = Component {
                    record,
                    conn: None,
                    last_seen: now,
                    online: false,
                };
                (id, c)
            })
            .collect();
        let mut events = state.events;
        events.sort_by_key(|e| e.id);
        let next_event = events.last().map_or(1, |e| e.id + 1);
        ConfigServer {
            settings,
            components,
            conns: BTreeMap::new(),
            protections: state.protections,
            agent_stats: BTreeMap::new(),
            ps_stats: BTreeMap::new(),
            mt_stats: BTreeMap::new(),
            events: events.into(),
            next_event,
            dirty: vec![],
            persisting: BTreeMap::new(),
            next_persist: 1,
            answers: vec![],
            announce_wanted: false,
            duplicates_logged: BTreeMap::new(),
            out: VecDeque::new(),
            now,
            liveness_at: now,
        }
    }

    /// Commands accepted and not yet answered.
    pub fn commands_pending(&self) -> usize {
        self.persisting.values().map(Vec::len).sum()
    }

    /// Emits what the input just handled changed, and what waits for it.
    fn finish_input(&mut self) {
        if !self.dirty.is_empty() {
            let id = self.next_persist;
            self.next_persist += 1;
            let records = std::mem::take(&mut self.dirty);
            self.out.push_back(Output::Persist { id, records });
            self.persisting
                .insert(id, std::mem::take(&mut self.answers));
        } else {
            // Nothing changed: the answers depend on nothing new.
            for (id, result) in std::mem::take(&mut self.answers) {
                self.out.push_back(Output::CommandDone { id, result });
            }
        }
        if self.announce_wanted && self.persisting.is_empty() {
            self.announce_wanted = false;
            self.announce();
        }
    }

    fn on_persisted(&mut self, id: PersistId) {
        let Some(answers) = self.persisting.remove(&id) else {
            return; // Unknown or repeated: harmless.
        };
        for (id, result) in answers {
            self.out.push_back(Output::CommandDone { id, result });
        }
    }

    fn save_protection(&mut self, disk: &DiskId) {
        let record = self.protections[disk].clone();
        self.dirty.push(Record::Protection {
            disk: disk.clone(),
            record,
        });
        self.announce_wanted = true;
    }

    fn event(&mut self, level: &str, text: String) {
        let e = Event {
            id: self.next_event,
            time_ms: self.now.as_millis(),
            level: level.to_string(),
            text,
        };
        self.next_event += 1;
        if self.events.len() as u64 >= EVENTS_MAX {
            self.events.pop_front();
        }
        self.events.push_back(e.clone());
        self.dirty.push(Record::Event(e));
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
        let asleep = now.millis_since(self.liveness_at);
        self.liveness_at = now;
        if asleep > timeout {
            // The server was stopped (SIGSTOP, a VM pause): the heartbeats that arrived meanwhile
            // wait unread, so silence proves nothing. Every online component gets a full timeout
            // from now.
            for c in self.components.values_mut().filter(|c| c.online) {
                c.last_seen = c.last_seen.max(now);
            }
            self.event(
                "warning",
                format!("the configuration server did not run for {asleep} ms (was it paused?); liveness is measured again from now"),
            );
            return;
        }
        let mut lost = vec![];
        for (id, c) in self.components.iter_mut() {
            if c.online && now.millis_since(c.last_seen) > timeout {
                c.online = false;
                lost.push(format!(
                    "{} {id} is offline: no heartbeat for {} ms",
                    c.record.role.name(),
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
        let mut back_online = false;
        if let Some(c) = self.components.get_mut(&id) {
            if c.conn == Some(conn) {
                c.last_seen = self.now;
                back_online = !c.online;
                c.online = true;
            }
        }
        if back_online && !matches!(msg, Message::Register(_)) {
            self.event("info", format!("{} {id} is online again", role.name()));
            self.announce_wanted = true;
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
                self.retire_done(&id, &s);
                self.mt_stats.insert(id, s);
            }
            other => {
                let reason = format!("unexpected {} from {}", other.kind(), role.with_article());
                self.out
                    .extend(NetCommand::refusal(conn, reason).map(Output::Net));
            }
        }
    }

    /// Refuses `conn` and forgets it, so that nothing more it sends counts.
    fn refuse(&mut self, conn: ConnId, reason: String) {
        self.conns.remove(&conn);
        self.out
            .extend(NetCommand::refusal(conn, reason).map(Output::Net));
    }

    /// Why a registration of `id` as `role` on `conn` is refused, if it is.
    fn registration_refusal(&self, conn: ConnId, role: Role, id: &ComponentId) -> Option<String> {
        let Some(c) = self.components.get(id) else {
            return (self.components.len() >= COMPONENTS_MAX)
                .then(|| format!("too many components (limit {COMPONENTS_MAX})"));
        };
        if c.record.role != role {
            return Some(format!(
                "component id {id} is registered as a {}; give this {} another id",
                c.record.role.name(),
                role.name()
            ));
        }
        // Online on another connection: a second component with the same id. (A component
        // that restarted is let in once its old connection closes or goes silent.)
        let elsewhere = c.conn.is_some_and(|old| old != conn) && c.online;
        elsewhere.then(|| {
            let at = match c.record.reg.data_addr.as_str() {
                "" => String::new(),
                addr => format!(" at {addr}"),
            };
            // The text stays the same from one retry to the next, so that logs can tell repeats.
            format!(
                "component id {id} is already online{at} ({}); give each component its own \
                 id (a component that restarted gets in once its old connection is gone, \
                 within {} ms)",
                role.with_article(),
                self.settings.heartbeat_timeout_ms
            )
        })
    }

    fn on_register(&mut self, conn: ConnId, role: Role, id: ComponentId, reg: Registration) {
        if let Some(reason) = self.registration_refusal(conn, role, &id) {
            let duplicate = self
                .components
                .get(&id)
                .is_some_and(|c| c.record.role == role);
            let last = self.duplicates_logged.get(&id).copied();
            if duplicate
                && last.is_none_or(|t| self.now.millis_since(t) >= REFUSAL_EVENT_INTERVAL_MS)
            {
                self.duplicates_logged.insert(id.clone(), self.now);
                self.event(
                    "warning",
                    format!("a second {} was refused: {reason}", role.name()),
                );
            }
            self.refuse(conn, reason);
            return;
        }
        if let Some(old) = self
            .components
            .get(&id)
            .and_then(|c| c.conn)
            .filter(|c| *c != conn)
        {
            // The same component reconnected; the old connection is stale (closed, or silent
            // past the heartbeat timeout).
            self.out
                .push_back(Output::Net(NetCommand::Close { conn: old }));
        }
        let record = ComponentRecord { role, reg };
        let changed = self.components.get(&id).map(|c| &c.record) != Some(&record);
        if changed {
            self.dirty.push(Record::Component {
                id: id.clone(),
                record: record.clone(),
            });
        }
        if role == Role::Agent {
            self.agent_disks(&id, &record.reg);
        }
        let c = Component {
            record,
            conn: Some(conn),
            last_seen: self.now,
            online: true,
        };
        self.components.insert(id.clone(), c);
        self.event("info", format!("{} {id} registered", role.name()));
        self.place_all();
        self.announce_wanted = true;
    }

    /// Records the disks an agent reports: new ones are known (and protected if
    /// `auto_protect`); a protection whose size changed is updated.
    fn agent_disks(&mut self, agent: &ComponentId, reg: &Registration) {
        for d in &reg.disks {
            let full = self.protections.len() >= DISKS_MAX;
            match self.protections.get_mut(&d.disk) {
                Some(p) if &p.agent != agent => {
                    let text = format!(
                        "agent {agent} reports disk {} which belongs to agent {}; ignored \
                         (give the disk another id)",
                        d.disk, p.agent
                    );
                    self.event("warning", text);
                }
                Some(p) => {
                    if p.size_bytes != d.size_bytes {
                        p.size_bytes = d.size_bytes;
                        self.save_protection(&d.disk);
                    }
                }
                None if full => {
                    let text = format!(
                        "disk {} ignored: too many disks (limit {DISKS_MAX})",
                        d.disk
                    );
                    self.event("warning", text);
                }
                None => {
                    let rule = self.settings.rules.iter().find(|r| r.disk == d.disk);
                    let record = ProtectionRecord {
                        agent: agent.clone(),
                        size_bytes: d.size_bytes,
                        epoch: crate::ids::Epoch(0),
                        state: ProtectionState::Unprotected,
                        process_server: None,
                        master_target: None,
                        pinned_process_server: rule.and_then(|r| r.process_server.clone()),
                        pinned_master_target: rule.and_then(|r| r.master_target.clone()),
                        policy: DiskPolicy::default(),
                    };
                    self.protections.insert(d.disk.clone(), record);
                    if self.settings.auto_protect {
                        self.start_protection(&d.disk);
                    } else {
                        self.save_protection(&d.disk);
                    }
                }
            }
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
            Input::Command { id, command } => {
                let result = self.command(command);
                self.answers.push((id, result));
            }
            Input::Persisted { id } => self.on_persisted(id),
            Input::Tick => {}
        }
        self.check_liveness();
        self.finish_input();
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

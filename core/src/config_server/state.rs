//! The configuration server's durable state: what it must remember across its own restart and a
//! crash at any moment. The core changes it in memory and emits every change as a `Record` in an
//! `Output::Persist`; the driver writes the records of one persist in one transaction (all or
//! nothing) and answers `Input::Persisted`. On start the driver loads the records into a
//! `ConfigState` and hands it to `ConfigServer::new`.

use crate::ids::{ComponentId, DiskId, Epoch};
use crate::protocol::{Registration, Role};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Events kept; the event log is a ring of this many slots (`event_slot`).
pub const EVENTS_MAX: u64 = 1000;

/// A registered component, as it last registered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentRecord {
    pub role: Role,
    pub reg: Registration,
}

/// Whether a known disk is replicated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProtectionState {
    /// Replicated by its process server to its master target.
    Protected,
    /// Not replicated; the agent serves it unreplicated. The replica from the last protection
    /// is being removed from the master target named in `master_target`, if any.
    Unprotected,
    /// Not replicated; the replica of the last protection is kept on its master target.
    UnprotectedKeptReplica,
}

impl ProtectionState {
    pub fn name(self) -> &'static str {
        match self {
            ProtectionState::Protected => "protected",
            ProtectionState::Unprotected => "unprotected",
            ProtectionState::UnprotectedKeptReplica => "unprotected (replica kept)",
        }
    }
}

/// Per-disk settings an operator can change with `haven settings`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskPolicy {
    /// An RPO above this is reported (status exit code, alerts).
    pub rpo_threshold_ms: u64,
    /// The agent closes a batch at this size (None: the agent's own setting).
    pub batch_bytes_max: Option<u64>,
    /// The agent closes a batch this long after its first write (None: the agent's setting).
    pub batch_delay_ms: Option<u64>,
}

/// Default RPO alert threshold (ASR's default for VMware is 15 minutes; ours is stricter
/// because a healthy stream is seconds behind).
pub const RPO_THRESHOLD_MS_DEFAULT: u64 = 30_000;

impl Default for DiskPolicy {
    fn default() -> Self {
        DiskPolicy {
            rpo_threshold_ms: RPO_THRESHOLD_MS_DEFAULT,
            batch_bytes_max: None,
            batch_delay_ms: None,
        }
    }
}

/// A disk the configuration server knows of: whose it is, whether and where it is replicated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtectionRecord {
    pub agent: ComponentId,
    pub size_bytes: u64,
    /// Bumped by every new protection of the disk; carried by every data message.
    pub epoch: Epoch,
    pub state: ProtectionState,
    pub process_server: Option<ComponentId>,
    pub master_target: Option<ComponentId>,
    /// Components the operator named at `protect`; placement waits for them.
    pub pinned_process_server: Option<ComponentId>,
    pub pinned_master_target: Option<ComponentId>,
    pub policy: DiskPolicy,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing over the server's life (survives restarts).
    pub id: u64,
    pub time_ms: u64,
    pub level: String,
    pub text: String,
}

/// The ring slot an event is stored in: the log keeps the newest `EVENTS_MAX` events.
pub fn event_slot(id: u64) -> u64 {
    id % EVENTS_MAX
}

/// One change to the durable state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    Component {
        id: ComponentId,
        record: ComponentRecord,
    },
    Protection {
        disk: DiskId,
        record: ProtectionRecord,
    },
    /// Stored in slot `event_slot(event.id)`, replacing the event `EVENTS_MAX` older.
    Event(Event),
}

/// Everything the configuration server remembers, as loaded at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigState {
    pub components: BTreeMap<ComponentId, ComponentRecord>,
    pub protections: BTreeMap<DiskId, ProtectionRecord>,
    /// At most `EVENTS_MAX`, in any order (sorted by id on load).
    pub events: Vec<Event>,
}

impl ConfigState {
    /// Applies records in order (what a store does; the simulation and tests use it too).
    pub fn apply(&mut self, records: &[Record]) {
        for r in records {
            match r {
                Record::Component { id, record } => {
                    self.components.insert(id.clone(), record.clone());
                }
                Record::Protection { disk, record } => {
                    self.protections.insert(disk.clone(), record.clone());
                }
                Record::Event(e) => {
                    self.events.retain(|x| event_slot(x.id) != event_slot(e.id));
                    self.events.push(e.clone());
                }
            }
        }
    }
}

//! Operators' commands to the configuration server. A command arrives as `Input::Command` and is
//! answered by exactly one `Output::CommandDone`, sent only once every change it made is durable.

use crate::batch::{BATCH_DATA_BYTES_MAX, BLOCK_BYTES};
use crate::ids::{ComponentId, DiskId};
use serde::{Deserialize, Serialize};

/// Names a command in flight, chosen by the driver.
pub type CommandId = u64;

/// RPO thresholds an operator may set.
pub const RPO_THRESHOLD_MS_RANGE: std::ops::RangeInclusive<u64> = 1_000..=7 * 24 * 3_600_000;
/// Batch delays an operator may set.
pub const BATCH_DELAY_MS_RANGE: std::ops::RangeInclusive<u64> = 1..=10_000;
/// Batch sizes an operator may set.
pub const BATCH_BYTES_RANGE: std::ops::RangeInclusive<u64> = BLOCK_BYTES..=BATCH_DATA_BYTES_MAX;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Start replicating a disk an agent registered.
    Protect {
        agent: ComponentId,
        disk: DiskId,
        process_server: Option<ComponentId>,
        master_target: Option<ComponentId>,
    },
    /// Stop replicating a disk; the agent keeps serving it. The replica is removed from its
    /// master target unless `keep_replica`.
    Unprotect { disk: DiskId, keep_replica: bool },
    /// Change a disk's policy; fields left `None` keep their value.
    Settings { disk: DiskId, change: PolicyChange },
}

/// A change to a disk's policy (see `DiskPolicy`), as parsed by the API from `KEY=VALUE`s.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyChange {
    pub rpo_threshold_ms: Option<u64>,
    pub batch_bytes_max: Option<u64>,
    pub batch_delay_ms: Option<u64>,
}

impl PolicyChange {
    pub fn is_empty(&self) -> bool {
        self == &PolicyChange::default()
    }

    /// Checks every value against its named range; the message says what is allowed.
    pub fn validate(&self) -> Result<(), CommandError> {
        fn check(
            name: &str,
            v: Option<u64>,
            range: &std::ops::RangeInclusive<u64>,
            unit: &str,
        ) -> Result<(), CommandError> {
            match v {
                Some(v) if !range.contains(&v) => Err(CommandError::invalid(format!(
                    "{name} = {v} {unit} is out of range: allowed {}..={} {unit}",
                    range.start(),
                    range.end()
                ))),
                _ => Ok(()),
            }
        }
        if self.is_empty() {
            return Err(CommandError::invalid(
                "no setting given: pass KEY=VALUE (rpo_threshold, batch_bytes_max, batch_delay)",
            ));
        }
        check(
            "rpo_threshold",
            self.rpo_threshold_ms,
            &RPO_THRESHOLD_MS_RANGE,
            "ms",
        )?;
        check(
            "batch_bytes_max",
            self.batch_bytes_max,
            &BATCH_BYTES_RANGE,
            "bytes",
        )?;
        check(
            "batch_delay",
            self.batch_delay_ms,
            &BATCH_DELAY_MS_RANGE,
            "ms",
        )?;
        if self
            .batch_bytes_max
            .is_some_and(|b| !b.is_multiple_of(BLOCK_BYTES))
        {
            return Err(CommandError::invalid(format!(
                "batch_bytes_max must be a multiple of {BLOCK_BYTES} bytes"
            )));
        }
        Ok(())
    }
}

/// Why a command was not carried out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommandErrorKind {
    /// Something the command names does not exist (HTTP 404).
    Unknown,
    /// A value is malformed or out of range (HTTP 400).
    Invalid,
    /// The command conflicts with the current state (HTTP 409).
    Refused,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct CommandError {
    pub kind: CommandErrorKind,
    pub message: String,
}

impl CommandError {
    pub fn unknown(m: impl Into<String>) -> Self {
        CommandError {
            kind: CommandErrorKind::Unknown,
            message: m.into(),
        }
    }
    pub fn invalid(m: impl Into<String>) -> Self {
        CommandError {
            kind: CommandErrorKind::Invalid,
            message: m.into(),
        }
    }
    pub fn refused(m: impl Into<String>) -> Self {
        CommandError {
            kind: CommandErrorKind::Refused,
            message: m.into(),
        }
    }
}

/// What a command answers: a sentence saying what was done, or why not.
pub type CommandResult = Result<String, CommandError>;

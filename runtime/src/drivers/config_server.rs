//! The configuration server's driver: registrations and heartbeats over the Haven protocol,
//! operators' commands from the REST API, and the durable state in redb.
//!
//! A round takes every ready input (network events, commands while fewer than
//! `COMMANDS_PENDING_MAX` wait, or a tick), handles each, carries out the outputs, writes every
//! `Persist` of the round in one redb transaction (`Durability::Immediate`), feeds the
//! `Persisted` answers back, and finally publishes a fresh status snapshot that the API reads.

use super::round::{Driver, Effects};
use super::{Host, RoleError, EVENT_CHANNEL_DEPTH};
use crate::meta::MetaStore;
use crate::net::Net;
use crate::transport::Transport;
use crate::vfs::Vfs;
use haven_core::config_server::{
    Command, CommandError, CommandId, CommandResult, ConfigServer, ConfigServerSettings, Input,
    Output, StatusView, COMMANDS_PENDING_MAX,
};
use haven_core::ids::{ComponentId, Epoch};
use haven_core::protocol::{Hello, Role, PROTOCOL_VERSION};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

/// Commands queued between the API and the driver; the API waits (backpressure) past it.
pub const COMMAND_CHANNEL_DEPTH: usize = 64;

#[derive(Clone, Debug)]
pub struct ConfigServerConfig {
    pub component: ComponentId,
    pub settings: ConfigServerSettings,
    /// Where the durable state lives (`config-server.redb`).
    pub data_dir: PathBuf,
    /// Where components connect.
    pub listen: String,
    /// Where the REST API listens.
    pub api_listen: String,
}

type CommandMsg = (Command, oneshot::Sender<CommandResult>);

/// What the API holds: the latest status snapshot and a way to send commands.
#[derive(Clone)]
pub struct CsClient {
    status: watch::Receiver<Arc<StatusView>>,
    commands: mpsc::Sender<CommandMsg>,
}

impl CsClient {
    /// The status as of the driver's last round.
    pub fn status(&self) -> Arc<StatusView> {
        self.status.borrow().clone()
    }

    /// Sends a command and waits for its answer (given once its changes are durable).
    pub async fn command(&self, command: Command) -> CommandResult {
        let (tx, rx) = oneshot::channel();
        let gone = || CommandError::refused("the configuration server is stopping; try again");
        self.commands
            .send((command, tx))
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

pub struct ConfigServerHandle {
    pub addr: String,
    pub api_addr: String,
    pub client: CsClient,
    pub task: tokio::task::JoinHandle<Result<(), RoleError>>,
}

fn fail(e: impl std::fmt::Display) -> RoleError {
    RoleError::new("config-server", e)
}

pub async fn start<T: Transport, V: Vfs + Clone>(
    host: Host<T, V>,
    cfg: ConfigServerConfig,
) -> Result<ConfigServerHandle, RoleError> {
    crate::vfs::create_dir_all_durable(&host.vfs, &cfg.data_dir)
        .map_err(|e| fail(format!("data directory {}: {e}", cfg.data_dir.display())))?;
    let meta = (host.open_meta)(&cfg.data_dir.join("config-server.redb")).map_err(fail)?;
    let state = meta.config_state().map_err(fail)?;
    tracing::info!(
        "configuration server state: {} components, {} disks, {} events",
        state.components.len(),
        state.protections.len(),
        state.events.len()
    );
    let (listener, addr) = super::bind(&host.transport, &cfg.listen, "protocol")
        .await
        .map_err(fail)?;
    let (api, api_addr) = super::bind(&host.transport, &cfg.api_listen, "API")
        .await
        .map_err(fail)?;
    let clock = host.clock();
    let core = ConfigServer::new(cfg.settings.clone(), state, clock.now());
    let (status_tx, status_rx) = watch::channel(Arc::new(core.status()));
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_CHANNEL_DEPTH);
    let client = CsClient {
        status: status_rx,
        commands: cmd_tx,
    };
    let router = crate::api::config_server::router(crate::api::config_server::CsApi::new(
        client.clone(),
        host.transport.clone(),
    ));
    super::spawn_http_api::<T>(api, "configuration server API", router);
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_CHANNEL_DEPTH);
    let hello = Hello {
        version: PROTOCOL_VERSION,
        role: Role::ConfigServer,
        component: cfg.component.clone(),
        epoch: Epoch(0),
    };
    let all = vec![Role::Agent, Role::ProcessServer, Role::MasterTarget];
    let net = Net::new(host.transport.clone(), hello, all, ev_tx);
    net.listen(listener);
    let effects = CsEffects {
        net,
        meta,
        status: status_tx,
        replies: BTreeMap::new(),
        next_command: 1,
        records: vec![],
        persisted: vec![],
    };
    let task = tokio::spawn(Driver::new(core, effects, clock).run(ev_rx, cmd_rx));
    Ok(ConfigServerHandle {
        addr,
        api_addr,
        client,
        task,
    })
}

/// The configuration server's effects: its redb state, command answers, the status snapshot.
struct CsEffects<T: Transport> {
    net: Net<T>,
    meta: MetaStore,
    status: watch::Sender<Arc<StatusView>>,
    replies: BTreeMap<CommandId, oneshot::Sender<CommandResult>>,
    next_command: CommandId,
    /// The records of this round's persists, written in one transaction.
    records: Vec<haven_core::config_server::Record>,
    persisted: Vec<Input>,
}

impl<T: Transport> Effects for CsEffects<T> {
    type M = ConfigServer;
    type T = T;
    type Extra = CommandMsg;

    fn net(&mut self) -> &mut Net<T> {
        &mut self.net
    }

    fn extra(&mut self, (command, reply): CommandMsg) -> Input {
        let id = self.next_command;
        self.next_command += 1;
        tracing::info!("command {id}: {command:?}");
        self.replies.insert(id, reply);
        Input::Command { id, command }
    }

    /// Commands wait in their channel (the API's backpressure) while the core holds
    /// `COMMANDS_PENDING_MAX` unanswered.
    fn extra_room(&self, core: &ConfigServer, queued: usize) -> bool {
        core.commands_pending() + queued < COMMANDS_PENDING_MAX
    }

    fn execute(&mut self, out: Output, _inputs: &mut VecDeque<Input>) -> Result<(), RoleError> {
        match out {
            Output::Net(cmd) => self.net.execute(cmd),
            Output::Persist { id, records } => {
                log_events(&records);
                self.records.extend(records);
                self.persisted.push(Input::Persisted { id });
            }
            Output::CommandDone { id, result } => {
                match &result {
                    Ok(text) => tracing::info!("command {id} done: {text}"),
                    Err(e) => tracing::warn!("command {id} refused: {e}"),
                }
                if let Some(tx) = self.replies.remove(&id) {
                    let _ = tx.send(result);
                }
            }
        }
        Ok(())
    }

    /// Every persist of the round in one redb transaction.
    fn commit(&mut self, inputs: &mut VecDeque<Input>) -> Result<(), RoleError> {
        if !self.records.is_empty() {
            self.meta
                .persist_config(&self.records)
                .map_err(|e| fail(format!("saving the configuration state failed: {e}")))?;
            self.records.clear();
        }
        inputs.extend(self.persisted.drain(..));
        Ok(())
    }

    fn after_round(&mut self, core: &ConfigServer, _now: haven_core::time::Timestamp) {
        self.status.send_replace(Arc::new(core.status()));
    }
}

/// The event log also goes to the log: a component going offline is a warning there too.
fn log_events(records: &[haven_core::config_server::Record]) {
    for r in records {
        if let haven_core::config_server::Record::Event(e) = r {
            match e.level.as_str() {
                "info" => tracing::info!("{}", e.text),
                "warning" => tracing::warn!("{}", e.text),
                _ => tracing::error!("{}", e.text),
            }
        }
    }
}

//! The configuration server's driver: registrations and heartbeats over the Haven protocol,
//! operators' commands from the REST API, and the durable state in redb.
//!
//! A round takes every ready input (network events, commands while fewer than
//! `COMMANDS_PENDING_MAX` wait, or a tick), handles each, carries out the outputs, writes every
//! `Persist` of the round in one redb transaction (`Durability::Immediate`), feeds the
//! `Persisted` answers back, and finally publishes a fresh status snapshot that the API reads.

use super::{next_round, Clock, Host, RoleError, EVENTS_PER_TURN_MAX, EVENT_CHANNEL_DEPTH};
use crate::meta::MetaStore;
use crate::net::{Net, NetInbound};
use crate::transport::Transport;
use crate::vfs::Vfs;
use haven_core::config_server::{
    Command, CommandError, CommandId, CommandResult, ConfigServer, ConfigServerSettings, Input,
    Output, StatusView, COMMANDS_PENDING_MAX,
};
use haven_core::ids::{ComponentId, Epoch};
use haven_core::protocol::{Hello, Role, PROTOCOL_VERSION};
use haven_core::Machine;
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
    let driver = Driver {
        core,
        net,
        meta,
        clock,
        status: status_tx,
        replies: BTreeMap::new(),
        next_command: 1,
        inputs: VecDeque::new(),
    };
    let task = tokio::spawn(driver.run(ev_rx, cmd_rx));
    Ok(ConfigServerHandle {
        addr,
        api_addr,
        client,
        task,
    })
}

struct Driver<T: Transport> {
    core: ConfigServer,
    net: Net<T>,
    meta: MetaStore,
    clock: Clock,
    status: watch::Sender<Arc<StatusView>>,
    replies: BTreeMap<CommandId, oneshot::Sender<CommandResult>>,
    next_command: CommandId,
    inputs: VecDeque<Input>,
}

impl<T: Transport> Driver<T> {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<NetInbound>,
        mut commands: mpsc::Receiver<CommandMsg>,
    ) -> Result<(), RoleError> {
        loop {
            let room = self.core.commands_pending() < COMMANDS_PENDING_MAX;
            tokio::select! {
                biased;
                cmd = commands.recv(), if room => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => return Ok(()),
                },
                round = next_round(&mut self.net, &mut events, &self.clock, self.core.poll_timeout()) => {
                    let Some(round) = round else { return Ok(()) };
                    if round.is_empty() {
                        self.inputs.push_back(Input::Tick);
                    }
                    self.inputs.extend(round.into_iter().map(Input::Net));
                }
            }
            for _ in 0..EVENTS_PER_TURN_MAX {
                if self.core.commands_pending() + self.inputs.len() >= COMMANDS_PENDING_MAX {
                    break;
                }
                match commands.try_recv() {
                    Ok(cmd) => self.command(cmd),
                    Err(_) => break,
                }
            }
            super::blocking(|| self.run_inputs())?;
            self.status.send_replace(Arc::new(self.core.status()));
        }
    }

    fn command(&mut self, (command, reply): CommandMsg) {
        let id = self.next_command;
        self.next_command += 1;
        tracing::info!("command {id}: {command:?}");
        self.replies.insert(id, reply);
        self.inputs.push_back(Input::Command { id, command });
    }

    /// Handles every queued input; each round's persists are one transaction.
    fn run_inputs(&mut self) -> Result<(), RoleError> {
        while !self.inputs.is_empty() {
            let mut records = vec![];
            let mut persisted = vec![];
            while let Some(input) = self.inputs.pop_front() {
                self.core.handle(self.clock.now(), input);
                while let Some(out) = self.core.poll_output() {
                    match out {
                        Output::Net(cmd) => self.net.execute(cmd),
                        Output::Persist { id, records: r } => {
                            log_events(&r);
                            records.extend(r);
                            persisted.push(Input::Persisted { id });
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
                }
            }
            if !records.is_empty() {
                self.meta
                    .persist_config(&records)
                    .map_err(|e| fail(format!("saving the configuration state failed: {e}")))?;
            }
            self.inputs.extend(persisted);
        }
        Ok(())
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

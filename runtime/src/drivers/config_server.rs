//! The configuration server's driver: registrations and heartbeats over the Haven protocol, and
//! the REST API over HTTP.

use super::{next_round, Clock, Host, RoleError, EVENT_CHANNEL_DEPTH};
use crate::net::{Net, NetInbound};
use crate::transport::Transport;
use crate::vfs::Vfs;
use haven_core::config_server::{ConfigServer, ConfigServerSettings, Input, Output};
use haven_core::ids::{ComponentId, Epoch};
use haven_core::protocol::{Hello, Role, PROTOCOL_VERSION};
use haven_core::Machine;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

#[derive(Clone, Debug)]
pub struct ConfigServerConfig {
    pub component: ComponentId,
    pub settings: ConfigServerSettings,
    /// Where components connect.
    pub listen: String,
    /// Where the REST API listens.
    pub api_listen: String,
}

pub struct ConfigServerHandle {
    pub addr: String,
    pub api_addr: String,
    pub core: Arc<Mutex<ConfigServer>>,
    pub task: tokio::task::JoinHandle<Result<(), RoleError>>,
}

fn fail(e: impl std::fmt::Display) -> RoleError {
    RoleError::new("config-server", e)
}

pub async fn start<T: Transport, V: Vfs + Clone>(
    host: Host<T, V>,
    cfg: ConfigServerConfig,
) -> Result<ConfigServerHandle, RoleError> {
    let (listener, addr) = super::bind(&host.transport, &cfg.listen, "protocol")
        .await
        .map_err(fail)?;
    let (api, api_addr) = super::bind(&host.transport, &cfg.api_listen, "API")
        .await
        .map_err(fail)?;
    let clock = host.clock();
    let core = Arc::new(Mutex::new(ConfigServer::new(
        cfg.settings.clone(),
        clock.now(),
    )));
    let handler = Arc::new(crate::api::config_server::CsApi { core: core.clone() });
    super::spawn_http_api::<T, _>(api, "configuration server API", handler);
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
    let task = tokio::spawn(run(core.clone(), net, clock, ev_rx));
    Ok(ConfigServerHandle {
        addr,
        api_addr,
        core,
        task,
    })
}

async fn run<T: Transport>(
    core: Arc<Mutex<ConfigServer>>,
    mut net: Net<T>,
    clock: Clock,
    mut events: mpsc::Receiver<NetInbound>,
) -> Result<(), RoleError> {
    loop {
        let deadline = core.lock().expect("core lock").poll_timeout();
        let Some(round) = next_round(&mut net, &mut events, &clock, deadline).await else {
            return Ok(());
        };
        let mut core = core.lock().expect("core lock");
        let feed = std::iter::once(Input::Tick).chain(round.into_iter().map(Input::Net));
        for input in feed {
            core.handle(clock.now(), input);
            while let Some(Output::Net(cmd)) = core.poll_output() {
                net.execute(cmd);
            }
        }
    }
}

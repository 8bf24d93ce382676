//! A lone configuration server driven by hand: peers that connect and register, operators'
//! commands, and its outputs drained with every persist answered at once.

use super::*;
use haven_core::config_server::{
    self as cs, Command, CommandId, CommandResult, ConfigServer, ConfigServerSettings, ConfigState,
    Record,
};
use haven_core::net::{NetCommand, NetEvent};
use haven_core::protocol::{DiskInfo, Hello, Message, Registration, Role, PROTOCOL_VERSION};
use haven_core::Machine;
use haven_core::{ComponentId, ConnId, DiskId, Epoch, Timestamp};

/// More outputs than this from one drain: the server never settles (each answer makes more).
const OUTPUTS_MAX: usize = 10_000;

/// What the server emitted until it settled.
#[derive(Debug, Default)]
pub struct Drained {
    pub net: Vec<NetCommand>,
    /// The records of every persist, in order.
    pub records: Vec<Record>,
    pub done: Vec<(CommandId, CommandResult)>,
}

impl Drained {
    /// The messages sent, with their connections.
    pub fn sent(&self) -> Vec<(ConnId, Message)> {
        self.net
            .iter()
            .filter_map(|c| match c {
                NetCommand::Send { conn, msg, .. } => Some((*conn, msg.clone())),
                _ => None,
            })
            .collect()
    }
}

/// Drains the server's outputs, answering every persist at once.
pub fn drain(s: &mut ConfigServer, now: Timestamp) -> Drained {
    let mut d = Drained::default();
    let mut n = 0;
    while let Some(o) = s.poll_output() {
        n += 1;
        assert!(n <= OUTPUTS_MAX, "the server never settles ({n} outputs)");
        match o {
            cs::Output::Net(cmd) => d.net.push(cmd),
            cs::Output::Persist { id, records } => {
                d.records.extend(records);
                s.handle(now, cs::Input::Persisted { id });
            }
            cs::Output::CommandDone { id, result } => d.done.push((id, result)),
        }
    }
    d
}

/// Drains the server's outputs, answering every persist at once; returns the messages sent.
pub fn sends(s: &mut ConfigServer, now: Timestamp) -> Vec<(ConnId, Message)> {
    drain(s, now).sent()
}

/// Drains the server's outputs, answering every persist at once; returns the network commands.
pub fn net_out(s: &mut ConfigServer, now: Timestamp) -> Vec<NetCommand> {
    drain(s, now).net
}

pub fn hello(role: Role, id: &str) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        role,
        component: ComponentId::new(id).unwrap(),
        epoch: Epoch(0),
    }
}

pub fn disk_info(disk: &str, size_bytes: u64, source_path: &str) -> DiskInfo {
    DiskInfo {
        disk: DiskId::new(disk).unwrap(),
        size_bytes,
        source_path: source_path.into(),
    }
}

pub fn registration(data_addr: &str, disks: Vec<DiskInfo>) -> Registration {
    Registration {
        data_addr: data_addr.into(),
        api_addr: String::new(),
        disks,
    }
}

/// `msg` arrives on `conn`; what the server does.
pub fn receive(s: &mut ConfigServer, now: Timestamp, conn: u64, msg: Message) -> Drained {
    let conn = ConnId(conn);
    let data = vec![];
    s.handle(now, cs::Input::Net(NetEvent::Received { conn, msg, data }));
    drain(s, now)
}

/// A component connects on `conn` as `id` and registers; what the server does.
pub fn connect(
    s: &mut ConfigServer,
    now: Timestamp,
    conn: u64,
    (role, id): (Role, &str),
    reg: Registration,
) -> Drained {
    let peer = hello(role, id);
    s.handle(
        now,
        cs::Input::Net(NetEvent::Accepted {
            conn: ConnId(conn),
            peer,
        }),
    );
    receive(s, now, conn, Message::Register(reg))
}

/// A server with an agent (disk0, disk1) on conn 1, process servers ps1 and ps2 on conns 2
/// and 3, master targets mt1 and mt2 on conns 4 and 5, all registered in that order; and the
/// durable state its records make.
pub fn registered_with(settings: ConfigServerSettings) -> (ConfigServer, Timestamp, ConfigState) {
    let now = Timestamp::from_millis(5);
    let mut s = ConfigServer::new(settings, Default::default(), now);
    let mut state = ConfigState::default();
    let peers = [
        (1, Role::Agent, "agent1", ""),
        (2, Role::ProcessServer, "ps1", "ps1:7001"),
        (3, Role::ProcessServer, "ps2", "ps2:7001"),
        (4, Role::MasterTarget, "mt1", "mt1:7002"),
        (5, Role::MasterTarget, "mt2", "mt2:7002"),
    ];
    for (conn, role, id, addr) in peers {
        let disks = match role {
            Role::Agent => ["disk0", "disk1"]
                .iter()
                .map(|d| disk_info(d, DISK_BYTES as u64, ""))
                .collect(),
            _ => vec![],
        };
        let d = connect(&mut s, now, conn, (role, id), registration(addr, disks));
        state.apply(&d.records);
    }
    (s, now, state)
}

/// `registered_with` the test settings and `auto_protect`.
pub fn registered(auto_protect: bool) -> (ConfigServer, Timestamp) {
    let mut settings = cs_settings();
    settings.auto_protect = auto_protect;
    let (s, now, _) = registered_with(settings);
    (s, now)
}

/// Runs a command; returns its answer and the records it persisted (answered at once).
pub fn run(s: &mut ConfigServer, now: Timestamp, command: Command) -> (CommandResult, Vec<Record>) {
    s.handle(now, cs::Input::Command { id: 7, command });
    let mut records = vec![];
    let mut answer = None;
    let mut persists = vec![];
    while let Some(o) = s.poll_output() {
        match o {
            cs::Output::Persist { id, records: r } => {
                records.extend(r);
                persists.push(id);
            }
            cs::Output::CommandDone { id: 7, result } => answer = Some(result),
            _ => {}
        }
    }
    assert!(
        answer.is_none() || persists.is_empty(),
        "a command that changed state answered before its persist"
    );
    for id in persists {
        s.handle(now, cs::Input::Persisted { id });
        while let Some(o) = s.poll_output() {
            if let cs::Output::CommandDone { id: 7, result } = o {
                answer = Some(result);
            }
        }
    }
    (answer.expect("every command is answered"), records)
}

pub fn protect(agent: &str, disk: &str) -> Command {
    Command::Protect {
        agent: ComponentId::new(agent).unwrap(),
        disk: DiskId::new(disk).unwrap(),
        process_server: None,
        master_target: None,
    }
}

/// The ids of the components the status calls online.
pub fn online(s: &ConfigServer) -> Vec<String> {
    s.status()
        .components
        .iter()
        .filter(|c| c.online)
        .map(|c| c.id.to_string())
        .collect()
}

/// The reason `conn` was refused with, if it was (a refusal also closes the connection).
pub fn refused(out: &[NetCommand], conn: u64) -> Option<String> {
    let reason = out.iter().find_map(|c| match c {
        NetCommand::Send {
            conn: c,
            msg: Message::Reject { reason },
            ..
        } if *c == ConnId(conn) => Some(reason.clone()),
        _ => None,
    })?;
    let closed = out
        .iter()
        .any(|c| matches!(c, NetCommand::Close { conn: c } if *c == ConnId(conn)));
    assert!(closed, "a refusal closes the connection: {out:?}");
    Some(reason)
}

/// The texts of the events of `level` in the status, oldest first.
pub fn events(s: &ConfigServer, level: &str) -> Vec<String> {
    let st = s.status();
    st.events
        .into_iter()
        .filter(|e| e.level == level)
        .map(|e| e.text)
        .collect()
}

//! The configuration server: it assigns disks to registered process servers and master targets,
//! and wires the cluster.

mod common;

use common::cs::*;
use common::mt_alone::open;
use common::*;
use haven_core::config_server::{
    self as cs, Command, CommandErrorKind, ConfigServer, ConfigState, PolicyChange, ProtectionState,
};
use haven_core::net::{NetCommand, NetEvent};
use haven_core::protocol::{DiskInfo, Hello, Message, Registration, Role, PROTOCOL_VERSION};
use haven_core::Machine;
use haven_core::{ComponentId, ConnId, DiskId, Epoch, Timestamp};

// ---------------------------------------------------------------------------------------------
// (g) configuration server

#[test]
fn config_server_assigns_the_disk_to_the_registered_process_server_and_master_target() {
    let now = Timestamp::from_millis(5);
    let mut s = ConfigServer::new(cs_settings(), Default::default(), now);
    let (ca, cp, cm) = (ConnId(1), ConnId(2), ConnId(3));
    for (conn, node) in [(ca, Node::Agent), (cp, Node::Ps), (cm, Node::Mt)] {
        s.handle(
            now,
            cs::Input::Net(NetEvent::Accepted {
                conn,
                peer: node.hello(),
            }),
        );
    }
    let reg = |data: &str, disks: Vec<DiskInfo>| {
        Message::Register(Registration {
            data_addr: data.into(),
            api_addr: format!("{data}-api"),
            disks,
        })
    };
    let recv = |s: &mut ConfigServer, conn: ConnId, msg: Message| {
        s.handle(
            now,
            cs::Input::Net(NetEvent::Received {
                conn,
                msg,
                data: vec![],
            }),
        );
        sends(s, now)
    };
    // The agent first: nothing to place it on yet.
    let out = recv(
        &mut s,
        ca,
        reg(
            "",
            vec![DiskInfo {
                disk: disk_id(),
                size_bytes: DISK_BYTES as u64,
                source_path: "/srv/disks/disk0.img".into(),
            }],
        ),
    );
    assert!(out.is_empty(), "{out:?}");
    let out = recv(&mut s, cp, reg("ps:7001", vec![]));
    assert!(out.is_empty(), "no master target yet: {out:?}");
    let out = recv(&mut s, cm, reg("mt:7002", vec![]));
    let assign = out
        .iter()
        .find(|(c, m)| *c == ca && matches!(m, Message::Assign(_)))
        .expect("Assign to the agent");
    let Message::Assign(a) = &assign.1 else {
        unreachable!()
    };
    assert_eq!(a.len(), 1);
    assert_eq!((a[0].disk.clone(), a[0].epoch), (disk_id(), Epoch(1)));
    assert_eq!(
        (
            a[0].process_server.as_str(),
            a[0].process_server_addr.as_str()
        ),
        ("ps1", "ps:7001")
    );
    let routes = out
        .iter()
        .find(|(c, m)| *c == cp && matches!(m, Message::Routes(_)))
        .expect("Routes to the process server");
    let Message::Routes(r) = &routes.1 else {
        unreachable!()
    };
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].disk.clone(), r[0].epoch, r[0].size_bytes),
        (disk_id(), Epoch(1), DISK_BYTES as u64)
    );
    assert_eq!(
        (
            r[0].master_target.as_str(),
            r[0].master_target_addr.as_str()
        ),
        ("mt1", "mt:7002")
    );
    assert!(
        out.iter().all(|(c, _)| *c != cm),
        "the master target gets nothing"
    );

    let st = s.status();
    assert_eq!(st.components.len(), 3);
    assert_eq!(
        st.disks[0].master_target_api.as_deref(),
        Some("mt:7002-api")
    );
    // The agent's path of the disk, for `haven export` to refuse writing over it.
    assert_eq!(
        st.disks[0].source_path.as_deref(),
        Some("/srv/disks/disk0.img")
    );

    // A message on an unknown connection closes it.
    s.handle(
        now,
        cs::Input::Net(NetEvent::Received {
            conn: ConnId(99),
            msg: open(1, 1),
            data: vec![],
        }),
    );
    assert!(matches!(
        s.poll_output(),
        Some(cs::Output::Net(NetCommand::Close { conn: ConnId(99) }))
    ));
}

#[test]
fn the_cluster_is_wired_by_the_config_server() {
    let c = Cluster::new(agent_settings(), true);
    assert_eq!(c.delivered_to(Node::Agent, "Assign").len(), 1);
    assert_eq!(c.delivered_to(Node::Ps, "Routes").len(), 1);
    assert_eq!(
        c.delivered_to(Node::Ps, "OpenStream").len(),
        1,
        "agent -> process server stream"
    );
    assert_eq!(
        c.delivered_to(Node::Mt, "OpenStream").len(),
        1,
        "process server -> master target stream"
    );
    assert!(c.agent.stats().disks[0].connected);
    assert!(c.ps.as_ref().unwrap().stats().disks[0].master_target_connected);
}

#[test]
fn protect_places_on_the_least_loaded_and_survives_a_restart() {
    let (mut s, now) = registered(false);
    let st = s.status();
    assert!(st
        .disks
        .iter()
        .all(|d| d.state == ProtectionState::Unprotected));
    let mut state = ConfigState::default();
    let (r, recs) = run(&mut s, now, protect("agent1", "disk0"));
    assert!(r.unwrap().contains("protected"));
    state.apply(&recs);
    let (r, recs) = run(&mut s, now, protect("agent1", "disk1"));
    r.unwrap();
    state.apply(&recs);
    let st = s.status();
    let placed: Vec<_> = st
        .disks
        .iter()
        .map(|d| {
            (
                d.process_server.clone().unwrap(),
                d.master_target.clone().unwrap(),
            )
        })
        .collect();
    assert_ne!(
        placed[0].0, placed[1].0,
        "the two disks spread over both process servers"
    );
    assert_ne!(placed[0].1, placed[1].1, "and over both master targets");
    assert!(st.disks.iter().all(|d| d.epoch == Epoch(1)));

    // The durable records alone rebuild the same protections.
    let s2 = ConfigServer::new(cs_settings(), state, now);
    let st2 = s2.status();
    for (a, b) in st.disks.iter().zip(&st2.disks) {
        assert_eq!((&a.disk, a.state, a.epoch), (&b.disk, b.state, b.epoch));
        assert_eq!(
            (&a.process_server, &a.master_target),
            (&b.process_server, &b.master_target)
        );
    }
    assert!(
        st2.components.iter().all(|c| !c.online),
        "offline until they reconnect"
    );
}

#[test]
fn commands_refuse_with_reasons_and_change_nothing() {
    let (mut s, now) = registered(true);
    let cases = [
        (
            protect("agent9", "disk0"),
            CommandErrorKind::Unknown,
            "no agent agent9",
        ),
        (
            protect("agent1", "disk7"),
            CommandErrorKind::Unknown,
            "its disks: disk0, disk1",
        ),
        (
            protect("ps1", "disk0"),
            CommandErrorKind::Invalid,
            "is a process-server",
        ),
        (
            Command::Unprotect {
                disk: DiskId::new("disk7").unwrap(),
                keep_replica: false,
            },
            CommandErrorKind::Unknown,
            "no disk disk7",
        ),
        (
            Command::Settings {
                disk: DiskId::new("disk0").unwrap(),
                change: PolicyChange {
                    batch_delay_ms: Some(0),
                    ..Default::default()
                },
            },
            CommandErrorKind::Invalid,
            "out of range",
        ),
        (
            Command::Settings {
                disk: DiskId::new("disk0").unwrap(),
                change: PolicyChange::default(),
            },
            CommandErrorKind::Invalid,
            "no setting given",
        ),
    ];
    for (cmd, kind, text) in cases {
        let (r, recs) = run(&mut s, now, cmd.clone());
        let e = r.expect_err(&format!("{cmd:?} must be refused"));
        assert_eq!(e.kind, kind, "{cmd:?}: {e}");
        assert!(e.message.contains(text), "{cmd:?}: {e}");
        assert!(recs.is_empty(), "{cmd:?} changed state: {recs:?}");
    }
}

#[test]
fn unprotect_retires_the_disk_everywhere_and_a_new_protection_bumps_the_epoch() {
    let (mut s, now) = registered(true);
    let disk = DiskId::new("disk0").unwrap();
    let mt = s.status().disks[0].master_target.clone().unwrap();
    s.handle(
        now,
        cs::Input::Command {
            id: 1,
            command: Command::Unprotect {
                disk: disk.clone(),
                keep_replica: false,
            },
        },
    );
    let mut retires = vec![];
    let mut persisted = vec![];
    while let Some(o) = s.poll_output() {
        match o {
            cs::Output::Net(NetCommand::Send {
                msg: Message::Retire(_),
                ..
            }) => {
                panic!("Retire sent before the unprotect is durable")
            }
            cs::Output::Persist { id, .. } => persisted.push(id),
            _ => {}
        }
    }
    for id in persisted {
        s.handle(now, cs::Input::Persisted { id });
    }
    retires.extend(
        sends(&mut s, now)
            .into_iter()
            .filter(|(_, m)| matches!(m, Message::Retire(_))),
    );
    let to: Vec<ConnId> = retires.iter().map(|(c, _)| *c).collect();
    assert!(to.contains(&ConnId(1)), "the agent hears of it: {to:?}");
    let mt_conn = if mt.as_str() == "mt1" {
        ConnId(4)
    } else {
        ConnId(5)
    };
    assert!(
        to.contains(&mt_conn),
        "its master target removes the replica: {to:?}"
    );
    assert_eq!(s.status().disks[0].state, ProtectionState::Unprotected);
    // Protecting again waits for the replica's removal, then bumps the epoch.
    let (r, _) = run(&mut s, now, protect("agent1", "disk0"));
    assert_eq!(r.unwrap_err().kind, CommandErrorKind::Refused);
    let hb = Message::MasterTargetHeartbeat(Default::default());
    s.handle(
        now,
        cs::Input::Net(NetEvent::Received {
            conn: mt_conn,
            msg: hb,
            data: vec![],
        }),
    );
    sends(&mut s, now);
    let (r, _) = run(&mut s, now, protect("agent1", "disk0"));
    r.unwrap();
    assert_eq!(s.status().disks[0].epoch, Epoch(2));
}

#[test]
fn a_paused_server_does_not_call_everyone_offline_but_silence_after_it_does() {
    let (mut s, now) = registered(false);
    assert_eq!(online(&s).len(), 5);
    let timeout = cs_settings().heartbeat_timeout_ms;
    // Woken at its half-timeout deadlines, without heartbeats: still online until the timeout.
    let t1 = now.plus_millis(timeout / 2);
    s.handle(t1, cs::Input::Tick);
    assert_eq!(online(&s).len(), 5);
    // Stopped for three timeouts (the heartbeats of that time still unread): nobody is lost.
    let t2 = t1.plus_millis(3 * timeout);
    s.handle(t2, cs::Input::Tick);
    assert_eq!(
        online(&s).len(),
        5,
        "a pause of the server itself proves nothing"
    );
    let warned = s
        .status()
        .events
        .iter()
        .any(|e| e.text.contains("did not run for"));
    assert!(warned, "the pause is an event");
    // Real silence after it, checked at the usual deadlines: all offline.
    let mut t = t2;
    for _ in 0..3 {
        t = t.plus_millis(timeout / 2);
        s.handle(t, cs::Input::Tick);
    }
    assert!(online(&s).is_empty(), "{:?}", online(&s));
}

/// A process server that connects on `conn` as ps1 and registers; what the server does.
fn second_ps1(s: &mut ConfigServer, now: Timestamp, conn: u64) -> Vec<NetCommand> {
    let peer = Hello {
        version: PROTOCOL_VERSION,
        role: Role::ProcessServer,
        component: ComponentId::new("ps1").unwrap(),
        epoch: Epoch(0),
    };
    let conn = ConnId(conn);
    s.handle(now, cs::Input::Net(NetEvent::Accepted { conn, peer }));
    let reg = Registration {
        data_addr: "other:7001".into(),
        api_addr: String::new(),
        disks: vec![],
    };
    let msg = Message::Register(reg);
    let data = vec![];
    s.handle(now, cs::Input::Net(NetEvent::Received { conn, msg, data }));
    net_out(s, now)
}

fn warnings(s: &ConfigServer) -> usize {
    let st = s.status();
    st.events.iter().filter(|e| e.level == "warning").count()
}

#[test]
fn a_second_component_with_an_online_id_is_refused() {
    let (mut s, now) = registered(true);
    let before = warnings(&s);
    let out = second_ps1(&mut s, now, 20);
    let reason = refused(&out, 20).expect("the second ps1 is refused");
    assert!(
        reason.contains("component id ps1 is already online at ps1:7001")
            && reason.contains("give each component its own id"),
        "{reason}"
    );
    assert!(
        !out.iter()
            .any(|c| matches!(c, NetCommand::Close { conn } if *conn == ConnId(2))),
        "the first ps1 keeps its connection: {out:?}"
    );
    let st = s.status();
    let ps1 = st
        .components
        .iter()
        .find(|c| c.id.as_str() == "ps1")
        .unwrap();
    assert_eq!((ps1.online, ps1.data_addr.as_str()), (true, "ps1:7001"));
    assert_eq!(warnings(&s), before + 1, "{:?}", st.events);
    // It retries: refused again, without another event within the minute.
    let later = now.plus_millis(500);
    let again = refused(&second_ps1(&mut s, later, 21), 21);
    assert_eq!(
        again,
        Some(reason),
        "the same text, so that logs can tell a repeat"
    );
    assert_eq!(warnings(&s), before + 1);
    // What the refused connection sends after the refusal does not count.
    let msg = Message::ProcessServerHeartbeat(Default::default());
    let data = vec![];
    s.handle(
        later,
        cs::Input::Net(NetEvent::Received {
            conn: ConnId(21),
            msg,
            data,
        }),
    );
    let out = net_out(&mut s, later);
    assert!(
        matches!(out[..], [NetCommand::Close { conn: ConnId(21) }]),
        "{out:?}"
    );

    // The first ps1's connection closes (it stopped, or restarted): the next one gets in.
    let reason = "peer closed the connection".to_string();
    s.handle(
        later,
        cs::Input::Net(NetEvent::Closed {
            conn: ConnId(2),
            reason,
        }),
    );
    net_out(&mut s, later);
    let out = second_ps1(&mut s, later, 22);
    assert_eq!(refused(&out, 22), None, "{out:?}");
    let st = s.status();
    let ps1 = st
        .components
        .iter()
        .find(|c| c.id.as_str() == "ps1")
        .unwrap();
    assert_eq!(ps1.data_addr, "other:7001");
}

#[test]
fn a_component_whose_old_connection_went_silent_gets_in() {
    let (mut s, now) = registered(true);
    assert!(refused(&second_ps1(&mut s, now, 20), 20).is_some());
    // No heartbeat from the first ps1 past the timeout (the server woken at its deadlines, as
    // a driver does): offline, so the new one is let in and the old connection closed.
    let timeout = cs_settings().heartbeat_timeout_ms;
    s.handle(now.plus_millis(timeout / 2), cs::Input::Tick);
    let later = now.plus_millis(timeout + 1);
    s.handle(later, cs::Input::Tick);
    net_out(&mut s, later);
    let out = second_ps1(&mut s, later, 21);
    assert_eq!(refused(&out, 21), None, "{out:?}");
    assert!(
        out.iter()
            .any(|c| matches!(c, NetCommand::Close { conn } if *conn == ConnId(2))),
        "{out:?}"
    );
}

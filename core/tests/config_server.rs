//! The configuration server: it assigns disks to registered process servers and master targets,
//! and wires the cluster.

mod common;

use common::mt_alone::open;
use common::*;
use haven_core::config_server::{self as cs, ConfigServer};
use haven_core::net::{NetCommand, NetEvent};
use haven_core::protocol::{DiskInfo, Message, Registration};
use haven_core::Machine;
use haven_core::{ConnId, Epoch, Timestamp};

// ---------------------------------------------------------------------------------------------
// (g) configuration server

/// Drains the server's outputs, answering every persist at once; returns the messages sent.
fn sends(s: &mut ConfigServer, now: Timestamp) -> Vec<(ConnId, Message)> {
    let mut out = vec![];
    while let Some(o) = s.poll_output() {
        match o {
            cs::Output::Net(NetCommand::Send { conn, msg, .. }) => out.push((conn, msg)),
            cs::Output::Persist { id, .. } => s.handle(now, cs::Input::Persisted { id }),
            _ => {}
        }
    }
    out
}

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

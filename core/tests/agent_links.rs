//! The agent's links: which connection a message may come from, which disk it concerns, and
//! what an assignment or a retirement changes (killing cargo-mutants' missed mutants in
//! core/src/agent/net.rs; docs/testing.md).

mod common;

use common::agent_alone::*;
use common::*;
use haven_core::agent::{self, Agent};
use haven_core::net::{NetCommand, NetEvent};
use haven_core::protocol::{Message, Retired};
use haven_core::{ConnId, DiskId, Epoch, Machine, Timestamp};

fn disk1() -> DiskId {
    DiskId::new("disk1").unwrap()
}

fn stream_state(disk: DiskId, epoch: Epoch) -> Message {
    Message::StreamState {
        disk,
        epoch,
        cached_seq: 0,
        applied_seq: 0,
    }
}

/// An agent with disk0 and disk1, both assigned to ps1 and streaming, disk0 on `PS` and disk1
/// on the second process-server connection (returned).
fn two_streaming() -> (A, ConnId) {
    two_streaming_with(haven_core::batch::BLOCK_BYTES)
}

fn two_streaming_with(batch_bytes_max: u64) -> (A, ConnId) {
    let mut settings = agent_settings();
    settings.batch_bytes_max = batch_bytes_max;
    let size = DISK_BYTES as u64;
    let disks = vec![
        copied_disk(disk_id(), size, 0),
        copied_disk(disk1(), size, 0),
    ];
    let mut a = A::new(settings, disks);
    let list = vec![
        assignment(disk_id(), EPOCH, Node::Ps.addr()),
        assignment(disk1(), EPOCH, Node::Ps.addr()),
    ];
    a.recv(CS, Message::Assign(list));
    assert_eq!(a.ps_conns.len(), 2, "{:?}", a.ps_conns);
    let c1 = a.ps_conns[1];
    a.recv(PS, stream_state(disk_id(), EPOCH));
    a.recv(c1, stream_state(disk1(), EPOCH));
    a.to_ps.clear();
    a.ps_sends.clear();
    (a, c1)
}

/// The batches sent on `conn`: their disks and first seqs.
fn batches_on(a: &A, conn: ConnId) -> Vec<(String, u64)> {
    a.ps_sends
        .iter()
        .filter(|(c, _)| *c == conn)
        .filter_map(|(_, m)| match m {
            Message::Batch(h) => Some((h.disk.to_string(), h.first_seq)),
            _ => None,
        })
        .collect()
}

#[test]
fn each_disk_streams_on_its_own_connection() {
    let (mut a, c1) = two_streaming();
    a.write_block_on(1, 3);
    a.write_block_on(0, 4);
    a.advance(20);
    assert_eq!(batches_on(&a, c1), [("disk1".to_string(), 1)]);
    assert_eq!(batches_on(&a, PS), [("disk0".to_string(), 1)]);
}

/// Each disk's batch delay is its own timer: `poll_timeout` is the earliest of them, and a tick
/// at it closes that disk's batch alone (the deadline index files every disk's timer).
#[test]
fn each_disks_batch_deadline_is_kept_and_fired_on_its_own() {
    let (mut a, c1) = two_streaming_with(64 * haven_core::batch::BLOCK_BYTES);
    let start = a.now;
    a.write_block_on(1, 3); // disk1's batch closes 10 ms from now
    a.now = a.now.plus_millis(4);
    a.write_block_on(0, 4); // disk0's at 14 ms
    let heartbeat = start.plus_millis(1000);
    assert_eq!(a.agent.poll_timeout(), Some(start.plus_millis(10)));
    a.now = start.plus_millis(10);
    a.input(agent::Input::Tick);
    assert_eq!(batches_on(&a, c1), [("disk1".to_string(), 1)]);
    assert!(batches_on(&a, PS).is_empty(), "{:?}", a.ps_sends);
    let t = a.agent.poll_timeout();
    assert_eq!(t, Some(start.plus_millis(14)), "heartbeat at {heartbeat:?}");
    a.now = start.plus_millis(14);
    a.input(agent::Input::Tick);
    assert_eq!(batches_on(&a, PS), [("disk0".to_string(), 1)]);
    // Nothing else is due before the heartbeat (the sent batches' stall deadlines are 10 s
    // away), acked or not.
    assert_eq!(a.agent.poll_timeout(), Some(heartbeat));
    a.recv(PS, ack_of(disk_id(), 1));
    a.recv(c1, ack_of(disk1(), 1));
    assert_eq!(a.agent.poll_timeout(), Some(heartbeat));
}

fn ack_of(disk: DiskId, seq: u64) -> Message {
    Message::BatchAck {
        disk,
        epoch: EPOCH,
        cached_seq: seq,
        applied_seq: seq,
    }
}

/// Two connects are outstanding at once and complete in the other order: each connection goes
/// to the disk whose connect it answers (the driver matches them by token).
#[test]
fn connects_answered_out_of_order_reach_their_own_disks() {
    let now = Timestamp::from_millis(1_000);
    let size = DISK_BYTES as u64;
    let disks = vec![
        copied_disk(disk_id(), size, 0),
        copied_disk(disk1(), size, 0),
    ];
    let mut agent = Agent::new(agent_settings(), disks, now);
    let mut connects = vec![];
    let drain = |agent: &mut Agent, connects: &mut Vec<u64>| {
        let mut opens = vec![];
        while let Some(o) = agent.poll_output() {
            match o {
                agent::Output::Reserve { disk, reserved } => {
                    agent.handle(now, agent::Input::Reserved { disk, reserved })
                }
                agent::Output::Net(NetCommand::Connect { token, .. }) => connects.push(token),
                agent::Output::Net(NetCommand::Send {
                    conn,
                    msg: Message::OpenStream { disk, .. },
                    ..
                }) => opens.push((conn, disk.to_string())),
                _ => {}
            }
        }
        opens
    };
    drain(&mut agent, &mut connects);
    let cs_token = connects[0];
    let connected =
        |token, conn, peer| agent::Input::Net(NetEvent::Connected { token, conn, peer });
    agent.handle(now, connected(cs_token, CS, Node::Cs.hello()));
    let list = vec![
        assignment(disk_id(), EPOCH, Node::Ps.addr()),
        assignment(disk1(), EPOCH, Node::Ps.addr()),
    ];
    let assign = Message::Assign(list);
    let data = vec![];
    let received = NetEvent::Received {
        conn: CS,
        msg: assign,
        data,
    };
    agent.handle(now, agent::Input::Net(received));
    drain(&mut agent, &mut connects);
    assert_eq!(connects.len(), 3, "{connects:?}");
    let mut unique = connects.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        3,
        "every connect has its own token: {connects:?}"
    );
    // disk1's connect completes first.
    agent.handle(now, connected(connects[2], ConnId(21), Node::Ps.hello()));
    let opens = drain(&mut agent, &mut connects);
    assert_eq!(opens, [(ConnId(21), "disk1".to_string())]);
}

#[test]
fn an_assignment_from_anyone_but_the_configuration_server_closes_that_connection() {
    let mut a = A::streaming();
    let moved = assignment(disk_id(), Epoch(2), "ps2:7001");
    a.recv(PS, Message::Assign(vec![moved]));
    assert_eq!(a.closed, [PS], "the process server's connection is closed");
    assert_eq!(a.ps_addrs, [Node::Ps.addr()], "and nothing was reassigned");
}

#[test]
fn a_retirement_from_anyone_but_the_configuration_server_closes_that_connection() {
    let mut a = A::streaming();
    let r = Retired {
        disk: disk_id(),
        epoch: EPOCH,
    };
    a.recv(PS, Message::Retire(vec![r]));
    assert!(a.retired.is_empty(), "{:?}", a.retired);
    assert_eq!(a.closed, [PS]);
}

#[test]
fn a_retirement_stops_only_its_disk_and_only_once() {
    let (mut a, c1) = two_streaming();
    let r = Retired {
        disk: disk1(),
        epoch: EPOCH,
    };
    a.recv(CS, Message::Retire(vec![r.clone()]));
    assert_eq!(a.retired, [1], "disk1 retired");
    assert_eq!(a.closed, [c1], "its stream closed, no other");
    a.recv(CS, Message::Retire(vec![r]));
    assert_eq!(a.retired, [1], "a repeated retirement changes nothing");
    a.write_block_on(0, 2);
    a.write_block_on(1, 2);
    a.advance(20);
    assert_eq!(
        batches_on(&a, PS),
        [("disk0".to_string(), 1)],
        "disk0 streams on"
    );
    assert_eq!(a.ps_conns.len(), 2, "disk1 is not reconnected");
}

#[test]
fn a_retirement_of_an_older_protection_is_ignored() {
    let mut a = A::streaming();
    let old = Retired {
        disk: disk_id(),
        epoch: Epoch(EPOCH.0 - 1),
    };
    a.recv(CS, Message::Retire(vec![old]));
    assert!(a.retired.is_empty(), "{:?}", a.retired);
    assert!(a.closed.is_empty(), "{:?}", a.closed);
    let newer = Retired {
        disk: disk_id(),
        epoch: Epoch(EPOCH.0 + 1),
    };
    a.recv(CS, Message::Retire(vec![newer]));
    assert_eq!(
        a.retired,
        [0],
        "a newer protection's retirement is honoured"
    );
}

#[test]
fn a_stale_assignment_is_ignored() {
    let mut a = A::streaming();
    let stale = assignment(disk_id(), Epoch(EPOCH.0 - 1), "ps2:7001");
    a.recv(CS, Message::Assign(vec![stale]));
    assert!(a.closed.is_empty(), "{:?}", a.closed);
    assert_eq!(a.ps_addrs, [Node::Ps.addr()]);
}

/// The same epoch and process server with new batch bounds: the bounds apply at once, the
/// stream stays open.
#[test]
fn new_batch_bounds_in_the_same_epoch_apply_without_a_reconnect() {
    let mut a = A::streaming();
    let mut same = assignment(disk_id(), EPOCH, Node::Ps.addr());
    same.batch_bytes_max = Some(8 * haven_core::batch::BLOCK_BYTES);
    a.recv(CS, Message::Assign(vec![same]));
    assert!(a.closed.is_empty(), "no reconnect: {:?}", a.closed);
    for block in 0..4 {
        a.write_block(block);
    }
    a.advance(20);
    assert_eq!(
        a.batches_sent(),
        [1],
        "four writes, one batch: {:?}",
        a.to_ps
    );
}

#[test]
fn a_new_process_server_address_or_epoch_reopens_the_stream() {
    let mut a = A::streaming();
    let moved = assignment(disk_id(), EPOCH, "ps2:7001");
    a.recv(CS, Message::Assign(vec![moved]));
    assert_eq!(a.closed, [PS], "the old stream is closed");
    assert_eq!(a.ps_addrs, [Node::Ps.addr(), "ps2:7001"]);
    let next = Epoch(EPOCH.0 + 1);
    a.recv(
        CS,
        Message::Assign(vec![assignment(disk_id(), next, "ps2:7001")]),
    );
    assert_eq!(a.closed.len(), 2, "a new epoch reopens too: {:?}", a.closed);
    assert_eq!(a.ps_conns.len(), 3);
    let opens: Vec<Epoch> = a
        .to_ps
        .iter()
        .filter_map(|m| match m {
            Message::OpenStream { epoch, .. } => Some(*epoch),
            _ => None,
        })
        .collect();
    assert_eq!(opens, [EPOCH, next]);
}

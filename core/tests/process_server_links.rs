//! The process server driven alone: its heartbeat, its links to the configuration server and
//! the master target (failures, reconnects, connect tokens, the seq a reopened stream starts
//! at), who may send `Routes` and `Retire`, `OpenStream` (fencing, what is saved, gaps),
//! refused batches, resent batches, the cache quota and its counters, `poll_timeout`.

mod common;

use common::ps_alone::*;
use common::*;
use haven_core::batch::Encoding;
use haven_core::net::{NetCommand, NetEvent};
use haven_core::process_server::{self as ps, CacheLoc};
use haven_core::protocol::{self, Message, Retired, Route};
use haven_core::{ComponentId, ConnId, DiskId, Epoch, Machine, Seq};

const LOC: CacheLoc = CacheLoc {
    segment: 0,
    offset: 0,
};

fn tick(p: &mut Ps, ms: u64) -> Vec<ps::Output> {
    p.now = p.now.plus_millis(ms);
    p.ps.handle(p.now, ps::Input::Tick);
    p.outputs()
}

fn net(p: &mut Ps, ev: NetEvent) -> Vec<ps::Output> {
    p.ps.handle(p.now, ps::Input::Net(ev));
    p.outputs()
}

fn closed(p: &mut Ps, conn: ConnId) -> Vec<ps::Output> {
    let reason = "gone".into();
    net(p, NetEvent::Closed { conn, reason })
}

fn connected(p: &mut Ps, token: u64, conn: ConnId) -> Vec<ps::Output> {
    let peer = Node::Mt.hello();
    net(p, NetEvent::Connected { token, conn, peer })
}

fn failed(p: &mut Ps, token: u64) -> Vec<ps::Output> {
    let reason = "refused".into();
    net(p, NetEvent::ConnectFailed { token, reason })
}

/// The `Connect`s among the outputs, to `addr`: their tokens.
fn connects(out: &[ps::Output], addr: &str) -> Vec<u64> {
    out.iter()
        .filter_map(|o| match o {
            ps::Output::Net(NetCommand::Connect { token, addr: a, .. }) if a == addr => {
                Some(*token)
            }
            _ => None,
        })
        .collect()
}

/// Whether the outputs connect to the master target under `epoch`.
fn connects_under(out: &[ps::Output], epoch: Epoch) -> bool {
    out.iter().any(|o| {
        matches!(
            o,
            ps::Output::Net(NetCommand::Connect { epoch: e, addr, .. }) if addr == Node::Mt.addr() && *e == epoch
        )
    })
}

/// disk0's route to mt1 under `epoch`.
fn mt1_route(epoch: u64) -> Route {
    Route {
        disk: disk_id(),
        epoch: Epoch(epoch),
        size_bytes: DISK_BYTES as u64,
        master_target: ComponentId::new("mt1").unwrap(),
        master_target_addr: Node::Mt.addr().into(),
    }
}

fn closes(out: &[ps::Output]) -> Vec<ConnId> {
    out.iter()
        .filter_map(|o| match o {
            ps::Output::Net(NetCommand::Close { conn }) => Some(*conn),
            _ => None,
        })
        .collect()
}

/// The ids of the saves a stream waits for.
fn saves(out: &[ps::Output]) -> Vec<u64> {
    out.iter()
        .filter_map(|o| match o {
            ps::Output::SaveDisk { save, .. } => *save,
            _ => None,
        })
        .collect()
}

fn refused(out: &[ps::Output], conn: ConnId) -> bool {
    matches!(sent(out, conn)[..], [Message::Reject { .. }]) && closes(out) == [conn]
}

/// The agent's batch `seq` appended and persisted; returns the outputs of the persist.
fn cache(p: &mut Ps, seq: Seq) -> Vec<ps::Output> {
    let out = p.batch(seq);
    let (id, bytes) = appended(&out);
    p.ps.handle(
        p.now,
        ps::Input::CachePersisted {
            id,
            loc: LOC,
            bytes,
        },
    );
    p.outputs()
}

fn open(epoch: u64, size_bytes: u64, first_seq: Seq) -> Message {
    Message::OpenStream {
        disk: disk_id(),
        epoch: Epoch(epoch),
        size_bytes,
        first_seq,
    }
}

/// `OpenStream` on `conn`, accepted first as a connection made for `epoch`.
fn open_on(
    p: &mut Ps,
    conn: ConnId,
    epoch: u64,
    size_bytes: u64,
    first_seq: Seq,
) -> Vec<ps::Output> {
    let peer = Node::Agent.hello_at(Epoch(epoch));
    net(p, NetEvent::Accepted { conn, peer });
    p.recv(conn, open(epoch, size_bytes, first_seq), vec![])
}

fn frame_of(seq: Seq) -> u64 {
    let (h, d) = one_block_batch(seq);
    protocol::encode(&Message::Batch(h), &d).unwrap().len() as u64
}

#[test]
fn the_process_server_heartbeats_every_interval() {
    let mut p = Ps::new(ps_settings(), 0, 1);
    let beats = |out: &[ps::Output]| {
        sent(out, CS)
            .iter()
            .filter(|m| matches!(m, Message::ProcessServerHeartbeat(_)))
            .count()
    };
    assert_eq!(p.ps.poll_timeout(), Some(p.now.plus_millis(1000)));
    assert_eq!(beats(&tick(&mut p, 999)), 0);
    assert_eq!(beats(&tick(&mut p, 1)), 1, "heartbeat_interval_ms is 1000");
    assert_eq!(p.ps.poll_timeout(), Some(p.now.plus_millis(1000)));
    assert_eq!(beats(&tick(&mut p, 500)), 0);
    assert_eq!(beats(&tick(&mut p, 500)), 1);
}

/// The master target's connection closes: reconnect after `reconnect_delay_ms`, and meanwhile
/// the agent still hears what is cached. The agent's connection closes: no more answers to it.
#[test]
fn a_closed_master_target_link_reconnects_and_the_agent_is_still_acked() {
    let mut p = Ps::new(ps_settings(), 0, 1);
    p.recv(MT, stream_state(0), vec![]);
    let out = closed(&mut p, MT);
    assert!(connects(&out, Node::Mt.addr()).is_empty());
    assert_eq!(
        p.ps.poll_timeout(),
        Some(p.now.plus_millis(50)),
        "the backoff"
    );
    assert!(connects(&tick(&mut p, 49), Node::Mt.addr()).is_empty());
    assert_eq!(connects(&tick(&mut p, 1), Node::Mt.addr()).len(), 1);
    let out = cache(&mut p, 1);
    assert!(
        matches!(
            sent(&out, AGENT)[..],
            [Message::BatchAck { cached_seq: 1, .. }]
        ),
        "{out:?}"
    );
    closed(&mut p, AGENT);
    let out = cache_after_close(&mut p);
    assert!(sent(&out, AGENT).is_empty(), "{out:?}");
}

/// The master target refuses the disk's stream: the process server reports why in its stats
/// (the operator's status shows it) through the close and every retry, until a master target
/// takes the stream again. A refusal on a link of no disk marks nothing.
#[test]
fn a_refused_stream_is_reported_until_the_master_target_takes_it() {
    let mut p = Ps::new(ps_settings(), 0, 1);
    let refused_of = |p: &Ps| p.ps.stats().disks[0].refused.clone();
    assert_eq!(refused_of(&p), None);
    p.recv(
        ConnId(77),
        Message::Reject {
            reason: "not ours".into(),
        },
        vec![],
    );
    assert_eq!(refused_of(&p), None);
    let reason = "disk disk0: source is 2 bytes but the replica is 1; resize is not supported";
    p.recv(
        MT,
        Message::Reject {
            reason: reason.into(),
        },
        vec![],
    );
    assert_eq!(refused_of(&p).as_deref(), Some(reason));
    closed(&mut p, MT);
    let token = connects(&tick(&mut p, 50), Node::Mt.addr())[0];
    let mt2 = ConnId(40);
    connected(&mut p, token, mt2);
    assert_eq!(
        refused_of(&p).as_deref(),
        Some(reason),
        "still refused while reopening"
    );
    p.recv(mt2, stream_state(0), vec![]);
    assert_eq!(refused_of(&p), None);
}

/// A batch appending when the agent's connection closes: persisted, nothing sent to the agent.
fn cache_after_close(p: &mut Ps) -> Vec<ps::Output> {
    // The agent reconnects on another connection, sends batch 2 and goes away before it is
    // persisted.
    let agent2 = ConnId(30);
    open_on(p, agent2, 1, DISK_BYTES as u64, 2);
    let (h, d) = one_block_batch(2);
    let out = p.recv(agent2, Message::Batch(h), d);
    let (id, bytes) = appended(&out);
    closed(p, agent2);
    p.ps.handle(
        p.now,
        ps::Input::CachePersisted {
            id,
            loc: LOC,
            bytes,
        },
    );
    let out = p.outputs();
    assert!(sent(&out, agent2).is_empty(), "{out:?}");
    out
}

#[test]
fn failed_connects_back_off_and_retry_each_link() {
    let mut p = Ps::new(ps_settings(), 0, 1);
    // The master target: refused, retried after the delay; the configuration server untouched.
    closed(&mut p, MT);
    let token = connects(&tick(&mut p, 50), Node::Mt.addr())[0];
    let out = failed(&mut p, token);
    assert!(out.is_empty(), "{out:?}");
    let out = tick(&mut p, 50);
    assert_eq!(connects(&out, Node::Mt.addr()).len(), 1, "{out:?}");
    assert!(connects(&out, Node::Cs.addr()).is_empty(), "{out:?}");
    // The configuration server: the same.
    closed(&mut p, CS);
    let out = tick(&mut p, 50);
    let token = connects(&out, Node::Cs.addr())[0];
    failed(&mut p, token);
    let out = tick(&mut p, 49);
    assert!(connects(&out, Node::Cs.addr()).is_empty());
    let out = tick(&mut p, 1);
    assert_eq!(connects(&out, Node::Cs.addr()).len(), 1, "{out:?}");
}

/// After a restart, a disk whose metadata was never durable is known only from its cached
/// batches (no size): the route gives its size, which is saved durably before the master
/// target is asked to open the stream with it.
#[test]
fn a_route_completes_a_disk_known_only_from_its_cached_batches() {
    let now = p_now();
    let cached = vec![ps::CachedBatch {
        disk: disk_id(),
        epoch: Epoch(2),
        first_seq: 1,
        last_seq: 1,
        loc: LOC,
        bytes: frame_of(1),
    }];
    let ps = ps::ProcessServer::new(ps_settings(), vec![], cached, now);
    let route = mt1_route(2);
    let mut p = Ps { ps, now };
    let out = p.outputs();
    connected(&mut p, connect_token(&out, Node::Cs.addr()), CS);
    let out = p.recv(CS, Message::Routes(vec![route]), vec![]);
    let saved: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            ps::Output::SaveDisk {
                save: Some(id),
                meta,
            } => Some((*id, meta.size_bytes, meta.epoch)),
            _ => None,
        })
        .collect();
    assert_eq!(saved.len(), 1, "{out:?}");
    assert_eq!((saved[0].1, saved[0].2), (DISK_BYTES as u64, Epoch(2)));
    assert!(connects(&out, Node::Mt.addr()).is_empty(), "{out:?}");
    p.ps.handle(p.now, ps::Input::DiskSaved { save: saved[0].0 });
    let token = connects(&p.outputs(), Node::Mt.addr())[0];
    let out = connected(&mut p, token, ConnId(40));
    assert!(
        matches!(
            &sent(&out, ConnId(40))[..],
            [Message::OpenStream { size_bytes, epoch: Epoch(2), first_seq: 1, .. }] if *size_bytes == DISK_BYTES as u64
        ),
        "{out:?}"
    );
}

/// The process server was away while its disk was unprotected and protected again: it comes
/// back with batches of the old epoch cached, and hears the new epoch's route before the old
/// one's retirement. The old batches are released, never forwarded (the master target would
/// refuse them, and the stream would be refused again at every reconnect).
#[test]
fn a_newer_epoch_releases_what_is_cached_of_older_ones() {
    let now = p_now();
    let meta = ps::CacheDiskMeta {
        disk: disk_id(),
        epoch: EPOCH,
        size_bytes: DISK_BYTES as u64,
        applied_seq: 0,
    };
    let cached = (1..=2)
        .map(|seq| ps::CachedBatch {
            disk: disk_id(),
            epoch: EPOCH,
            first_seq: seq,
            last_seq: seq,
            loc: LOC,
            bytes: frame_of(seq),
        })
        .collect();
    let mut p = Ps {
        ps: ps::ProcessServer::new(ps_settings(), vec![meta], cached, now),
        now,
    };
    assert_eq!(p.ps.cache_bytes(), frame_of(1) + frame_of(2));
    let out = p.outputs();
    connected(&mut p, connect_token(&out, Node::Cs.addr()), CS);
    let route = mt1_route(2);
    let out = p.recv(CS, Message::Routes(vec![route]), vec![]);
    assert!(
        out.iter()
            .any(|o| matches!(o, ps::Output::CacheRelease { through: 2, .. })),
        "{out:?}"
    );
    assert_eq!(p.ps.cache_bytes(), 0);
    let save = saves(&out);
    p.ps.handle(p.now, ps::Input::DiskSaved { save: save[0] });
    let token = connects(&p.outputs(), Node::Mt.addr())[0];
    let out = connected(&mut p, token, ConnId(40));
    assert!(
        matches!(
            &sent(&out, ConnId(40))[..],
            [Message::OpenStream {
                epoch: Epoch(2),
                first_seq: 3,
                ..
            }]
        ),
        "{out:?}"
    );
    let out = p.recv(ConnId(40), stream_state(0), vec![]);
    assert!(
        !out.iter().any(|o| matches!(o, ps::Output::Forward { .. })),
        "an old epoch's batch forwarded: {out:?}"
    );
}

/// An agent's stream for a disk the process server has never heard of (its route is still on
/// the way): the disk's metadata is saved durably before the agent is told where it stands.
#[test]
fn a_stream_for_a_disk_new_here_is_answered_once_the_disk_is_saved() {
    let mut p = Ps {
        ps: ps::ProcessServer::new(ps_settings(), vec![], vec![], p_now()),
        now: p_now(),
    };
    p.outputs();
    let out = open_on(&mut p, AGENT, 1, DISK_BYTES as u64, 1);
    let save = saves(&out);
    assert_eq!(save.len(), 1, "{out:?}");
    assert!(
        sent(&out, AGENT).is_empty(),
        "answered before the save: {out:?}"
    );
    p.ps.handle(p.now, ps::Input::DiskSaved { save: save[0] });
    assert!(
        matches!(sent(&p.outputs(), AGENT)[..], [Message::StreamState { .. }]),
        "answered once saved"
    );
}

fn p_now() -> haven_core::Timestamp {
    haven_core::Timestamp::from_millis(1_000_000)
}

/// Every connection attempt has its own token, so that each `Connected` reaches the stream
/// that asked for it.
#[test]
fn connect_tokens_are_never_reused() {
    let mut p = Ps::new(ps_settings(), 0, 1);
    let disk1 = DiskId::new("disk1").unwrap();
    let route = Route {
        disk: disk1.clone(),
        epoch: EPOCH,
        size_bytes: DISK_BYTES as u64,
        master_target: ComponentId::new("mt2").unwrap(),
        master_target_addr: "mt2:7002".into(),
    };
    let out = p.recv(CS, Message::Routes(vec![route]), vec![]);
    // A disk new here is saved durably before its master target hears of it.
    let save = saves(&out);
    assert_eq!(save.len(), 1, "{out:?}");
    assert!(connects(&out, "mt2:7002").is_empty(), "{out:?}");
    p.ps.handle(p.now, ps::Input::DiskSaved { save: save[0] });
    let token1 = connects(&p.outputs(), "mt2:7002")[0];
    closed(&mut p, MT);
    let token0 = connects(&tick(&mut p, 50), Node::Mt.addr())[0];
    assert_ne!(token0, token1);
    let out = connected(&mut p, token1, ConnId(40));
    assert!(
        matches!(&sent(&out, ConnId(40))[..], [Message::OpenStream { disk, .. }] if *disk == disk1),
        "{out:?}"
    );
    let out = connected(&mut p, token0, ConnId(41));
    assert!(
        matches!(&sent(&out, ConnId(41))[..], [Message::OpenStream { disk, .. }] if *disk == disk_id()),
        "{out:?}"
    );
}

/// The master target's stream reopens while a batch is being appended: it starts at that
/// batch (the first seq not yet cached), not past it, which would read as a gap.
#[test]
fn a_reopened_stream_starts_at_a_batch_still_appending() {
    let mut p = Ps::new(ps_settings(), 0, 1);
    p.recv(MT, stream_state(0), vec![]);
    appended(&p.batch(1));
    closed(&mut p, MT);
    let token = connects(&tick(&mut p, 50), Node::Mt.addr())[0];
    let out = connected(&mut p, token, ConnId(12));
    assert!(
        matches!(
            sent(&out, ConnId(12))[..],
            [Message::OpenStream { first_seq: 1, .. }]
        ),
        "{out:?}"
    );
}

#[test]
fn routes_and_retire_only_from_the_configuration_server() {
    let mut p = Ps::new(ps_settings(), 0, 1);
    let route = Route {
        disk: disk_id(),
        epoch: EPOCH,
        size_bytes: DISK_BYTES as u64,
        master_target: ComponentId::new("mt2").unwrap(),
        master_target_addr: "mt2:7002".into(),
    };
    let out = p.recv(AGENT, Message::Routes(vec![route]), vec![]);
    assert!(refused(&out, AGENT), "{out:?}");
    assert!(connects(&out, "mt2:7002").is_empty());
    let mut p = Ps::new(ps_settings(), 0, 1);
    let retire = |epoch| {
        Message::Retire(vec![Retired {
            disk: disk_id(),
            epoch: Epoch(epoch),
        }])
    };
    let out = p.recv(AGENT, retire(1), vec![]);
    assert!(refused(&out, AGENT), "{out:?}");
    assert_eq!(p.ps.stats().disks.len(), 1);
    // From the configuration server: an older protection's retirement leaves the disk alone.
    let out = p.recv(CS, retire(0), vec![]);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(p.ps.stats().disks.len(), 1);
    for epoch in [1, 2] {
        let mut p = Ps::new(ps_settings(), 0, 1);
        cache(&mut p, 1);
        let out = p.recv(CS, retire(epoch), vec![]);
        let mut c = closes(&out);
        c.sort();
        assert_eq!(c, [MT, AGENT], "{out:?}");
        assert!(out.iter().any(|o| matches!(
            o,
            ps::Output::CacheRelease {
                through: Seq::MAX,
                ..
            }
        )));
        assert!(out
            .iter()
            .any(|o| matches!(o, ps::Output::ForgetDisk(d) if *d == disk_id())));
        assert!(p.ps.stats().disks.is_empty());
        assert_eq!(p.ps.cache_bytes(), 0);
    }
}

#[test]
fn open_stream_fences_older_epochs_and_saves_what_changed() {
    let size = DISK_BYTES as u64;
    let mut p = Ps::new(ps_settings(), 0, 1);
    let (agent0, agent1, agent2) = (ConnId(19), ConnId(20), ConnId(22));
    let out = open_on(&mut p, agent0, 0, size, 1);
    assert!(refused(&out, agent0), "an older epoch: {out:?}");
    // Unchanged: nothing to save.
    let out = open_on(&mut p, agent1, 1, size, 1);
    assert!(
        matches!(sent(&out, agent1)[..], [Message::StreamState { .. }]),
        "{out:?}"
    );
    assert_eq!(saves(&out), [0u64; 0], "{out:?}");
    // A new size (on the same connection: the epoch is the same), then a new epoch (on a
    // connection made for it): saved, and the stream is answered only once the save is
    // durable (a batch before that is refused: the stream is not open).
    let out = p.recv(agent1, open(1, 2 * size, 1), vec![]);
    let first = saves(&out);
    assert_eq!(first.len(), 1, "{out:?}");
    assert!(
        sent(&out, agent1).is_empty(),
        "answered before its save: {out:?}"
    );
    let out = open_on(&mut p, agent2, 2, 2 * size, 1);
    let second = saves(&out);
    assert_eq!(second.len(), 1, "{out:?}");
    assert!(
        sent(&out, agent2).is_empty(),
        "answered before its save: {out:?}"
    );
    // The new epoch closed the master-target link (made for epoch 1); no new one is made
    // before the epoch is durable here.
    assert_eq!(closes(&out), [MT], "{out:?}");
    closed(&mut p, MT);
    assert!(connects(&tick(&mut p, 10_000), Node::Mt.addr()).is_empty());
    let (h, d) = one_block_batch(1);
    let out = p.recv(agent2, Message::Batch(h), d);
    assert!(refused(&out, agent2), "a batch before StreamState: {out:?}");
    let out = p.recv(agent2, open(2, 2 * size, 1), vec![]);
    assert!(sent(&out, agent2).is_empty(), "still waiting: {out:?}");
    // The older save alone does not open the stream; the newer does, and the master target
    // is reconnected under the new epoch.
    p.ps.handle(p.now, ps::Input::DiskSaved { save: first[0] });
    assert!(sent(&p.outputs(), agent2).is_empty());
    p.ps.handle(p.now, ps::Input::DiskSaved { save: second[0] });
    let out = p.outputs();
    assert!(
        matches!(
            sent(&out, agent2)[..],
            [Message::StreamState {
                epoch: Epoch(2),
                ..
            }]
        ),
        "{out:?}"
    );
    assert!(connects_under(&out, Epoch(2)), "{out:?}");
}

/// A connection is made for one epoch: an `OpenStream` under another, or on a connection never
/// accepted, is refused before anything changes.
#[test]
fn open_stream_only_under_the_epoch_of_its_connections_hello() {
    let mut p = Ps::new(ps_settings(), 0, 1); // AGENT was accepted for epoch 1.
    let out = p.recv(AGENT, open(2, DISK_BYTES as u64, 1), vec![]);
    assert!(refused(&out, AGENT), "{out:?}");
    assert!(saves(&out).is_empty(), "{out:?}");
    match &sent(&out, AGENT)[..] {
        [Message::Reject { reason }] => assert!(reason.contains("made for epoch e1"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // The refused connection is closing: what else arrives on it is stale and ignored.
    let (h, d) = one_block_batch(1);
    assert!(p.recv(AGENT, Message::Batch(h), d).is_empty());
    let out = p.recv(ConnId(30), open(1, DISK_BYTES as u64, 1), vec![]);
    assert!(refused(&out, ConnId(30)), "{out:?}");
    // The disk is still at epoch 1: a connection made for it opens at once, nothing to save.
    let out = open_on(&mut p, ConnId(31), 1, DISK_BYTES as u64, 1);
    assert!(saves(&out).is_empty(), "{out:?}");
    assert!(
        matches!(
            sent(&out, ConnId(31))[..],
            [Message::StreamState { epoch: EPOCH, .. }]
        ),
        "{out:?}"
    );
}

/// The agent lost writes (it crashed): its stream resumes past a gap with nothing cached, so
/// the master target's stream is reopened at once to carry the gap.
#[test]
fn a_gap_with_nothing_cached_reopens_the_master_target_stream() {
    let mut p = Ps::new(ps_settings(), 0, 1);
    p.recv(MT, stream_state(0), vec![]);
    let agent2 = ConnId(20);
    let out = open_on(&mut p, agent2, 1, DISK_BYTES as u64, 10);
    assert_eq!(closes(&out), [MT], "{out:?}");
    let token = connects(&out, Node::Mt.addr())[0]; // reconnected at once
                                                    // The master target's answer that was on its way on the old link is stale: ignored, not
                                                    // refused (no Reject, no warning in the log).
    let out = p.recv(MT, stream_state(0), vec![]);
    assert!(out.is_empty(), "{out:?}");
    closed(&mut p, MT);
    let out = connected(&mut p, token, ConnId(12));
    assert!(
        matches!(
            sent(&out, ConnId(12))[..],
            [Message::OpenStream { first_seq: 10, .. }]
        ),
        "{out:?}"
    );
    // A stream resuming where it was is no gap.
    let out = open_on(&mut p, ConnId(21), 1, DISK_BYTES as u64, 10);
    assert!(closes(&out).is_empty(), "{out:?}");
}

#[test]
fn batches_not_matching_their_stream_are_refused() {
    let mut bad = vec![];
    let (mut h, d) = one_block_batch(1);
    h.epoch = Epoch(2);
    bad.push((h, d));
    let (mut h, d) = one_block_batch(1);
    h.encoding = Encoding::Zstd;
    bad.push((h, d));
    let (h, mut d) = one_block_batch(1);
    d.push(0);
    bad.push((h, d));
    for (h, d) in bad {
        let what = format!("{h:?} {}", d.len());
        let mut p = Ps::new(ps_settings(), 0, 1);
        let out = p.recv(AGENT, Message::Batch(h), d);
        assert!(refused(&out, AGENT), "{what}: {out:?}");
        assert!(
            !out.iter()
                .any(|o| matches!(o, ps::Output::CacheAppend { .. })),
            "{what}"
        );
    }
}

/// A resent batch is acknowledged once it is cached; while its append runs, it is only dropped.
#[test]
fn a_resent_batch_is_acknowledged_only_once_cached() {
    let mut p = Ps::new(ps_settings(), 0, 1);
    let out = p.batch(1);
    let (id, bytes) = appended(&out);
    let out = p.batch(1);
    assert!(out.is_empty(), "appending: {out:?}");
    p.ps.handle(
        p.now,
        ps::Input::CachePersisted {
            id,
            loc: LOC,
            bytes,
        },
    );
    p.outputs();
    let out = p.batch(1);
    assert!(
        matches!(
            sent(&out, AGENT)[..],
            [Message::BatchAck { cached_seq: 1, .. }]
        ),
        "{out:?}"
    );
    assert!(!out
        .iter()
        .any(|o| matches!(o, ps::Output::CacheAppend { .. })));
}

/// An empty cache takes a batch larger than its quota (or the stream would stall); a batch that
/// fills the cache exactly is taken; appends count whole frames while they run; the counters
/// follow what comes in, goes out and is applied.
#[test]
fn the_cache_quota_bounds_and_counters() {
    let frame = frame_of(1);
    let mut settings = ps_settings();
    settings.cache_bytes_max = frame - 1;
    let mut p = Ps::new(settings, 0, 1);
    let out = p.batch(1);
    appended(&out);
    assert_eq!(
        p.ps.cache_bytes(),
        frame,
        "an append counts its whole frame"
    );

    let mut settings = ps_settings();
    settings.cache_bytes_max = 2 * frame;
    let mut p = Ps::new(settings, 0, 1);
    cache(&mut p, 1);
    assert_eq!(p.ps.cache_bytes(), frame);
    let out = p.batch(2);
    appended(&out);
    assert_eq!(p.ps.cache_bytes(), 2 * frame, "filled exactly");
    let stats = p.ps.stats();
    assert_eq!((stats.bytes_in, stats.bytes_out), (2 * B as u64, 0));

    // Forwarded once the master target's stream is up, then applied.
    let out = p.recv(MT, stream_state(0), vec![]);
    let forwards = out
        .iter()
        .filter(|o| matches!(o, ps::Output::Forward { conn: MT, .. }))
        .count();
    assert_eq!(forwards, 1, "{out:?}");
    assert_eq!(p.ps.stats().bytes_out, frame);
    let applied = Message::Applied {
        disk: disk_id(),
        epoch: EPOCH,
        applied_seq: 1,
    };
    p.recv(MT, applied, vec![]);
    assert_eq!(p.ps.cache_bytes(), frame, "batch 2 still appending");
    assert_eq!(p.ps.stats().disks[0].cached_bytes, 0);
}

#[test]
fn poll_timeout_is_the_heartbeat_or_a_backoff() {
    let mut p = Ps::new(ps_settings(), 0, 1);
    tick(&mut p, 200);
    assert_eq!(p.ps.poll_timeout(), Some(p.now.plus_millis(800)));
    closed(&mut p, MT);
    assert_eq!(p.ps.poll_timeout(), Some(p.now.plus_millis(50)));
    // Reconnected; then the configuration server's link backs off the same way.
    let token = connects(&tick(&mut p, 50), Node::Mt.addr())[0];
    connected(&mut p, token, ConnId(12));
    closed(&mut p, CS);
    assert_eq!(p.ps.poll_timeout(), Some(p.now.plus_millis(50)));
}

/// A route with a newer epoch for a disk the process server knows: saved durably, the master
/// target's link (made for the old epoch) closed, and a new one made for the new epoch once the
/// save is durable. A route of an older epoch changes nothing.
#[test]
fn a_route_with_a_new_epoch_reconnects_the_master_target_under_it() {
    let mut p = Ps::new(ps_settings(), 0, 1);
    let route = mt1_route;
    let out = p.recv(CS, Message::Routes(vec![route(0)]), vec![]);
    assert!(out.is_empty(), "an older route: {out:?}");
    let out = p.recv(CS, Message::Routes(vec![route(2)]), vec![]);
    let save = saves(&out);
    assert_eq!(save.len(), 1, "{out:?}");
    assert_eq!(closes(&out), [MT], "{out:?}");
    assert!(connects(&out, Node::Mt.addr()).is_empty(), "{out:?}");
    closed(&mut p, MT);
    p.ps.handle(p.now, ps::Input::DiskSaved { save: save[0] });
    let out = p.outputs();
    assert!(connects_under(&out, Epoch(2)), "{out:?}");
}

/// A master-target stream idle for longer than the stall bound is not stalled: the first batch
/// forwarded after the quiet starts the clock, the stream is not closed at once.
#[test]
fn a_batch_forwarded_after_a_long_idle_is_not_a_stall() {
    let mut p = Ps::new(ps_settings(), 0, 1);
    p.recv(MT, stream_state(0), vec![]);
    for _ in 0..20 {
        tick(&mut p, 1000);
    }
    let out = cache(&mut p, 1);
    assert!(
        out.iter()
            .any(|o| matches!(o, ps::Output::Forward { conn: MT, .. })),
        "{out:?}"
    );
    assert!(closes(&out).is_empty(), "{out:?}");
    let out = tick(&mut p, 100);
    assert!(closes(&out).is_empty(), "{out:?}");
    assert_eq!(
        p.ps.poll_timeout(),
        Some(p.now.plus_millis(900)),
        "the heartbeat, before the stall bound"
    );
}

/// Ticks `ms` milliseconds, one tick each 100 ms; returns the connections closed meanwhile.
fn closes_within(p: &mut Ps, ms: u64) -> Vec<ConnId> {
    (0..ms / 100).flat_map(|_| closes(&tick(p, 100))).collect()
}

/// The master target goes silent with a batch outstanding (its packets are lost in a
/// partition): the stream is closed after `STREAM_STALL_MS` and reconnected; one opening but
/// never answered is closed the same way. A stream with nothing outstanding stays open.
#[test]
fn a_master_target_stream_silent_while_waiting_is_closed_after_the_stall_bound() {
    let stall = ps::STREAM_STALL_MS;
    // Opening, unanswered (`Ps::new` leaves the master target's OpenStream unanswered).
    let mut p = Ps::new(ps_settings(), 0, 1);
    assert_eq!(
        p.ps.poll_timeout(),
        Some(p.now.plus_millis(1000)),
        "the heartbeat comes first"
    );
    assert!(closes_within(&mut p, stall - 200).is_empty());
    assert_eq!(closes_within(&mut p, 300), [MT], "an unanswered open");

    // Ready, a batch forwarded, no answer.
    let mut p = Ps::new(ps_settings(), 0, 1);
    p.recv(MT, stream_state(0), vec![]);
    assert!(
        closes_within(&mut p, 2 * stall).is_empty(),
        "idle is not stalled"
    );
    cache(&mut p, 1);
    assert!(closes_within(&mut p, stall - 200).is_empty());
    let out: Vec<_> = (0..4).flat_map(|_| tick(&mut p, 100)).collect();
    assert_eq!(closes(&out), [MT], "a batch unanswered: {out:?}");
    assert_eq!(
        connects(&out, Node::Mt.addr()).len(),
        1,
        "reconnects: {out:?}"
    );
}

/// A retired disk's streams both close: the agent's and the master target's.
#[test]
fn a_retired_disk_closes_the_agent_stream_and_the_master_target_stream() {
    let mut p = Ps::new(ps_settings(), 0, 1);
    p.recv(MT, stream_state(0), vec![]);
    let r = Retired {
        disk: disk_id(),
        epoch: EPOCH,
    };
    let out = p.recv(CS, Message::Retire(vec![r]), vec![]);
    let mut closed = closes(&out);
    closed.sort();
    let mut both = vec![AGENT, MT];
    both.sort();
    assert_eq!(closed, both, "{out:?}");
}

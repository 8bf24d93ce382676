//! The process server driven alone, message by message, for the orderings the cluster harness
//! cannot pin down: the simulation found these (docs/simulation.md, "Core bugs found"), and each
//! test here fails when its fix is reverted.

mod common;

use common::ps_alone::*;
use common::*;
use haven_core::net::{NetCommand, NetEvent};
use haven_core::process_server::{self as ps, CacheLoc};
use haven_core::protocol::{self, Message};
use haven_core::{ConnId, Machine};

/// Swarm seed 9461: a process server that released its cache through a seq but was stopped
/// before saving that the master target had applied it restarts with a stale `applied_seq`; the
/// agent, whose ack was lost, resends the batch; while its append runs, the master target's
/// `StreamState` says it is applied. When the append completes the batch must be released, not
/// queued for forwarding (it would be forwarded again and again and never leave the cache: the
/// master target's later `Applied` is no news).
///
/// Checked 2026-12-03 by reverting the fix (`on_persisted` in core/src/process_server/handle.rs
/// queuing the batch whatever `applied_seq` says): this test fails with "a batch the master
/// target already applied was forwarded", while `batch_applied_during_its_append_is_not_forwarded`
/// in sim/tests/regressions.rs (seed 9461) no longer reaches this ordering and passes.

#[test]
fn a_batch_found_applied_when_its_append_completes_is_released_not_forwarded() {
    let mut p = Ps::new(ps_settings(), 0, 1);
    let out = p.batch(1);
    let (id, bytes) = appended(&out);
    // The master target answers the stream's OpenStream while the append runs: it has seq 1.
    let state = stream_state(1);
    p.recv(MT, state, vec![]);
    let loc = CacheLoc {
        segment: 0,
        offset: 0,
    };
    p.ps.handle(p.now, ps::Input::CachePersisted { id, loc, bytes });
    let out = p.outputs();
    assert!(
        !out.iter().any(|o| matches!(o, ps::Output::Forward { .. })),
        "a batch the master target already applied was forwarded: {out:?}"
    );
    assert!(
        out.iter().any(|o| matches!(
            o,
            ps::Output::CacheRelease { through, .. } if *through >= 1
        )),
        "its record is released: {out:?}"
    );
    assert_eq!(p.ps.cache_bytes(), 0, "nothing stays cached");
    assert!(
        sent(&out, AGENT)
            .iter()
            .any(|m| matches!(m, Message::BatchAck { cached_seq: 1, .. })),
        "the agent still hears the batch is cached: {out:?}"
    );
}

/// The cache quota counts whole frames (header + control part + data), which is what the cache
/// holds, not the batch's raw data (swarm seeds 3 and 6 held a frame header over the bound).
/// Here the bound is one cached frame plus one block of raw data: the second batch fits by its
/// raw data but not by its frame, so it is refused with a `Busy` that says wait.
///
/// Checked 2026-12-03 by reverting the fix (the quota check in `on_batch`,
/// core/src/process_server/handle.rs, on the raw data length): this test fails with "the cache
/// took a batch past its bound".
#[test]
fn the_cache_quota_counts_whole_frames() {
    let (h, d) = one_block_batch(1);
    let frame = protocol::encode(&Message::Batch(h), &d).unwrap().len() as u64;
    let mut settings = ps_settings();
    settings.cache_bytes_max = frame + B as u64;
    settings.busy_retry_ms = 20;
    let mut p = Ps::new(settings.clone(), 0, 1);
    let out = p.batch(1);
    let (id, bytes) = appended(&out);
    assert_eq!(bytes, frame);
    let loc = CacheLoc {
        segment: 0,
        offset: 0,
    };
    p.ps.handle(p.now, ps::Input::CachePersisted { id, loc, bytes });
    p.outputs();
    assert_eq!(p.ps.cache_bytes(), frame);

    let out = p.batch(2);
    assert!(
        !out.iter()
            .any(|o| matches!(o, ps::Output::CacheAppend { .. })),
        "the cache took a batch past its bound ({} bytes cached or appending, bound {}): {out:?}",
        p.ps.cache_bytes(),
        settings.cache_bytes_max
    );
    let busy = sent(&out, AGENT);
    assert!(
        matches!(
            busy[..],
            [Message::Busy {
                first_seq: 2,
                retry_after_ms: 20,
                ..
            }]
        ),
        "{busy:?}"
    );
    assert!(p.ps.cache_bytes() <= settings.cache_bytes_max);
}

/// A master-target stream with batches forwarded and no answer (its packets lost in a
/// partition, which TCP alone does not notice) is closed after `STREAM_STALL_MS` and reopened
/// (found by the turmoil level, where such a stream hung forever).
///
/// Checked 2026-12-03 by reverting the fix (`on_timers` in core/src/process_server/handle.rs no
/// longer closing a stalled stream): this test fails with "the stalled master-target stream is
/// not closed".
#[test]
fn a_master_target_stream_that_goes_silent_is_reopened() {
    let mut p = Ps::new(ps_settings(), 0, 1);
    let state = stream_state(0);
    p.recv(MT, state, vec![]);
    let out = p.batch(1);
    let (id, bytes) = appended(&out);
    let loc = CacheLoc {
        segment: 0,
        offset: 0,
    };
    p.ps.handle(p.now, ps::Input::CachePersisted { id, loc, bytes });
    let out = p.outputs();
    assert!(
        out.iter()
            .any(|o| matches!(o, ps::Output::Forward { conn: MT, .. })),
        "{out:?}"
    );
    // No answer at all. (The agent's stream stays quiet too: it has nothing outstanding.)
    let tick = |p: &mut Ps, ms: u64| {
        p.now = p.now.plus_millis(ms);
        p.ps.handle(p.now, ps::Input::Tick);
        p.outputs()
    };
    let closes = |out: &[ps::Output]| -> Vec<ConnId> {
        out.iter()
            .filter_map(|o| match o {
                ps::Output::Net(NetCommand::Close { conn }) => Some(*conn),
                _ => None,
            })
            .collect()
    };
    let out = tick(&mut p, ps::STREAM_STALL_MS - 100);
    assert!(
        closes(&out).is_empty(),
        "closed before the stall bound: {out:?}"
    );
    let out = tick(&mut p, 200);
    assert_eq!(
        closes(&out),
        [MT],
        "the stalled master-target stream is not closed: {out:?}"
    );
    p.ps.handle(
        p.now,
        ps::Input::Net(NetEvent::Closed {
            conn: MT,
            reason: "closed".into(),
        }),
    );
    p.outputs();
    let out = tick(&mut p, 100); // past the reconnect delay
    connect_token(&out, Node::Mt.addr());
}

//! Operators' commands to the configuration server: their answers and when they come, protect
//! and its placement, unprotect and the removal of a replica, and the settings' ranges.

mod common;

use common::cs::*;
use common::*;
use haven_core::config_server::{
    self as cs, Command, CommandErrorKind, CommandResult, ConfigServer, PolicyChange,
    ProtectionRule, Record,
};
use haven_core::protocol::{Message, Role};
use haven_core::stats::{CacheDiskStats, MasterTargetStats, ProcessServerStats, ReplicaStats};
use haven_core::Machine;
use haven_core::{ComponentId, ConnId, DiskId, Epoch, Timestamp};

fn id(name: &str) -> ComponentId {
    ComponentId::new(name).unwrap()
}

fn disk(name: &str) -> DiskId {
    DiskId::new(name).unwrap()
}

fn settings(change: PolicyChange) -> Command {
    Command::Settings {
        disk: disk("disk0"),
        change,
    }
}

fn rpo(ms: u64) -> Command {
    settings(PolicyChange {
        rpo_threshold_ms: Some(ms),
        ..Default::default()
    })
}

/// Runs a command, answering its persists; its answer and everything the server emitted.
fn command(s: &mut ConfigServer, now: Timestamp, command: Command) -> (CommandResult, Drained) {
    s.handle(now, cs::Input::Command { id: 8, command });
    let mut d = drain(s, now);
    assert_eq!(d.done.len(), 1, "{d:?}");
    (d.done.remove(0).1, d)
}

/// Each disk's process server and master target, in the status.
fn placements(s: &ConfigServer) -> Vec<(String, Option<String>, Option<String>)> {
    let name = |c: &Option<ComponentId>| c.as_ref().map(|c| c.to_string());
    s.status()
        .disks
        .iter()
        .map(|d| {
            let (ps, mt) = (name(&d.process_server), name(&d.master_target));
            (d.disk.to_string(), ps, mt)
        })
        .collect()
}

fn placed(disk: &str, ps: &str, mt: &str) -> (String, Option<String>, Option<String>) {
    (disk.into(), Some(ps.into()), Some(mt.into()))
}

#[test]
fn commands_wait_for_their_own_persists_and_an_input_that_changes_nothing_persists_nothing() {
    let (mut s, now) = registered(true);
    assert_eq!(s.commands_pending(), 0);
    s.handle(
        now,
        cs::Input::Command {
            id: 1,
            command: rpo(2_000),
        },
    );
    s.handle(
        now,
        cs::Input::Command {
            id: 2,
            command: rpo(3_000),
        },
    );
    let mut persists = vec![];
    while let Some(o) = s.poll_output() {
        match o {
            cs::Output::Persist { id, .. } => persists.push(id),
            cs::Output::CommandDone { id, .. } => panic!("command {id} answered before durable"),
            cs::Output::Net(_) => {}
        }
    }
    assert_eq!(persists.len(), 2);
    assert_ne!(persists[0], persists[1], "each persist has its own id");
    assert_eq!(s.commands_pending(), 2);
    // The second persist is durable first: only the second command is answered.
    let answered = |s: &mut ConfigServer, persist| {
        s.handle(now, cs::Input::Persisted { id: persist });
        let d = drain(s, now);
        assert!(d.records.is_empty(), "{d:?}");
        d.done
            .into_iter()
            .map(|(id, r)| (id, r.unwrap()))
            .collect::<Vec<_>>()
    };
    let done = answered(&mut s, persists[1]);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].0, 2);
    assert!(done[0].1.contains("rpo_threshold 3000 ms"), "{done:?}");
    assert_eq!(s.commands_pending(), 1);
    let done = answered(&mut s, persists[0]);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].0, 1);
    assert!(done[0].1.contains("rpo_threshold 2000 ms"), "{done:?}");
    assert_eq!(s.commands_pending(), 0);
    // A command that changes nothing is answered at once; a tick changes nothing either.
    s.handle(
        now,
        cs::Input::Command {
            id: 3,
            command: rpo(1),
        },
    );
    let first = s.poll_output();
    assert!(
        matches!(
            first,
            Some(cs::Output::CommandDone {
                id: 3,
                result: Err(_)
            })
        ),
        "{first:?}"
    );
    assert!(s.poll_output().is_none());
    s.handle(now, cs::Input::Tick);
    let out = s.poll_output();
    assert!(out.is_none(), "{out:?}");
}

#[test]
fn protect_answers_with_the_placement_and_refuses_to_move_a_protection() {
    let (mut s, now) = registered(false);
    let (r, _) = run(&mut s, now, protect("agent1", "disk0"));
    let at = "(epoch 1, process server ps1, master target mt1)";
    assert_eq!(r.unwrap(), format!("disk disk0 is protected {at}"));
    let again = |ps: Option<&str>, mt: Option<&str>| Command::Protect {
        agent: id("agent1"),
        disk: disk("disk0"),
        process_server: ps.map(id),
        master_target: mt.map(id),
    };
    let (r, recs) = run(&mut s, now, again(Some("ps1"), Some("mt1")));
    assert_eq!(r.unwrap(), format!("disk disk0 is already protected {at}"));
    assert!(recs.is_empty(), "{recs:?}");
    for (ps, mt) in [
        (Some("ps2"), None),
        (None, Some("mt2")),
        (Some("ps1"), Some("mt2")),
    ] {
        let (r, recs) = run(&mut s, now, again(ps, mt));
        let e = r.expect_err(&format!("moving to {ps:?} {mt:?}"));
        assert_eq!(e.kind, CommandErrorKind::Refused);
        assert_eq!(
            e.message,
            format!(
                "disk disk0 is already protected {at}; moving a protection is not supported \
                 yet: unprotect it first"
            )
        );
        assert!(recs.is_empty(), "{recs:?}");
    }
    assert_eq!(placements(&s)[0], placed("disk0", "ps1", "mt1"));
}

#[test]
fn a_protection_with_only_a_process_server_online_names_it_and_waits_for_a_master_target() {
    let now = Timestamp::from_millis(5);
    let mut settings = cs_settings();
    settings.auto_protect = false;
    let mut s = ConfigServer::new(settings, Default::default(), now);
    let disks = vec![disk_info("disk0", DISK_BYTES as u64, "")];
    connect(
        &mut s,
        now,
        1,
        (Role::Agent, "agent1"),
        registration("", disks),
    );
    let ps1 = registration("ps1:7001", vec![]);
    connect(&mut s, now, 2, (Role::ProcessServer, "ps1"), ps1);
    let (r, _) = run(&mut s, now, protect("agent1", "disk0"));
    assert_eq!(
        r.unwrap(),
        "disk disk0 is protected (epoch 1, process server ps1, master target none online yet)"
    );
    assert_eq!(
        placements(&s),
        [("disk0".to_string(), Some("ps1".to_string()), None)]
    );
    let mt1 = registration("mt1:7002", vec![]);
    let d = connect(&mut s, now, 3, (Role::MasterTarget, "mt1"), mt1);
    assert_eq!(placements(&s), [placed("disk0", "ps1", "mt1")]);
    let routed = d.sent().into_iter().any(|(c, m)| {
        c == ConnId(2) && matches!(&m, Message::Routes(r) if r[0].master_target.as_str() == "mt1")
    });
    assert!(routed, "{d:?}");
}

#[test]
fn a_rule_places_its_disk_on_the_components_it_names() {
    let mut settings = cs_settings();
    settings.rules = vec![ProtectionRule {
        disk: disk("disk0"),
        process_server: Some(id("ps2")),
        master_target: Some(id("mt2")),
    }];
    let (s, _, _) = registered_with(settings);
    // disk1 has no rule: the least loaded, ps1 and mt1 (ps2 and mt2 serve disk0).
    assert_eq!(
        placements(&s),
        [placed("disk0", "ps2", "mt2"), placed("disk1", "ps1", "mt1")]
    );
}

#[test]
fn unprotecting_a_disk_that_is_not_protected_says_what_it_already_is() {
    let (mut s, now) = registered(false);
    let unprotect = |keep_replica| Command::Unprotect {
        disk: disk("disk0"),
        keep_replica,
    };
    let (r, recs) = run(&mut s, now, unprotect(false));
    assert_eq!(r.unwrap(), "disk disk0 is already unprotected");
    assert!(recs.is_empty());
    run(&mut s, now, protect("agent1", "disk0")).0.unwrap();
    let (r, _) = run(&mut s, now, unprotect(true));
    assert_eq!(
        r.unwrap(),
        "disk disk0 is unprotected; its replica is kept on master target mt1 (its points stay \
         listed)"
    );
    let (r, recs) = run(&mut s, now, unprotect(false));
    assert_eq!(
        r.unwrap(),
        "disk disk0 is already unprotected (replica kept)"
    );
    assert!(recs.is_empty());
}

#[test]
fn settings_accept_the_edges_of_their_ranges_and_reach_the_agent() {
    let (mut s, now) = registered(true);
    let week = 7 * 24 * 3_600_000;
    let (r, _) = run(&mut s, now, rpo(week));
    assert_eq!(
        r.unwrap(),
        "disk disk0: rpo_threshold 604800000 ms, batch_bytes_max agent default, batch_delay \
         agent default"
    );
    let e = run(&mut s, now, rpo(week + 1)).0.unwrap_err();
    assert_eq!(e.kind, CommandErrorKind::Invalid);
    assert_eq!(
        e.message,
        "rpo_threshold = 604800001 ms is out of range: allowed 1000..=604800000 ms"
    );
    let batch = |bytes| PolicyChange {
        batch_bytes_max: Some(bytes),
        batch_delay_ms: Some(25),
        ..Default::default()
    };
    let (r, d) = command(&mut s, now, settings(batch(8192)));
    assert_eq!(
        r.unwrap(),
        "disk disk0: rpo_threshold 604800000 ms, batch_bytes_max 8192 bytes, batch_delay 25 ms"
    );
    let assign = d.sent().into_iter().find_map(|(c, m)| match m {
        Message::Assign(a) if c == ConnId(1) => Some(a),
        _ => None,
    });
    let a = &assign.expect("the agent hears of its new bounds")[0];
    assert_eq!(
        (a.batch_bytes_max, a.batch_delay_ms),
        (Some(8192), Some(25))
    );
    let e = run(&mut s, now, settings(batch(8193))).0.unwrap_err();
    assert_eq!(e.kind, CommandErrorKind::Invalid);
    assert_eq!(
        e.message,
        "batch_bytes_max must be a multiple of 4096 bytes"
    );
    assert_eq!(s.status().disks[0].policy.batch_bytes_max, Some(8192));
}

/// `registered(false)` with disk0 protected on ps1 and mt1, disk1 on ps2 and mt2.
fn two_protected() -> (ConfigServer, Timestamp) {
    let (mut s, now) = registered(false);
    run(&mut s, now, protect("agent1", "disk0")).0.unwrap();
    run(&mut s, now, protect("agent1", "disk1")).0.unwrap();
    assert_eq!(
        placements(&s),
        [placed("disk0", "ps1", "mt1"), placed("disk1", "ps2", "mt2")]
    );
    (s, now)
}

fn replicas(disks: &[&str]) -> Message {
    let replicas = disks
        .iter()
        .map(|d| ReplicaStats {
            disk: disk(d),
            epoch: Epoch(1),
            size_bytes: DISK_BYTES as u64,
            applied_seq: 0,
            points: 1,
            journal_bytes: 0,
            inconsistent: None,
        })
        .collect();
    Message::MasterTargetHeartbeat(MasterTargetStats { replicas })
}

#[test]
fn a_replica_is_removed_only_once_its_own_master_target_stops_listing_it() {
    let (mut s, now) = two_protected();
    let (r, _) = run(
        &mut s,
        now,
        Command::Unprotect {
            disk: disk("disk0"),
            keep_replica: false,
        },
    );
    assert!(r.unwrap().contains("being removed from master target mt1"));
    let removing = [
        ("disk0".to_string(), None, Some("mt1".to_string())),
        placed("disk1", "ps2", "mt2"),
    ];
    // mt1 still lists it; mt2 never had it (with disk1's replica, and before it has one).
    for (conn, msg) in [
        (4, replicas(&["disk0"])),
        (5, replicas(&["disk1"])),
        (5, replicas(&[])),
    ] {
        let d = receive(&mut s, now, conn, msg);
        assert_eq!(placements(&s), removing, "{d:?}");
        assert!(d.records.is_empty(), "{:?}", d.records);
    }
    let (r, _) = run(&mut s, now, protect("agent1", "disk0"));
    assert!(r
        .unwrap_err()
        .message
        .contains("is still being removed from master target mt1"));
    // mt1 no longer lists it: removed, persisted, and the disk can be protected again.
    let d = receive(&mut s, now, 4, replicas(&[]));
    let saved = d.records.iter().any(|r| {
        matches!(r, Record::Protection { disk, record }
            if disk.as_str() == "disk0" && record.master_target.is_none())
    });
    assert!(saved, "{:?}", d.records);
    let info = events(&s, "info");
    assert_eq!(
        info.last().unwrap(),
        "the replica of disk disk0 is removed from master target mt1"
    );
    assert!(run(&mut s, now, protect("agent1", "disk0"))
        .0
        .unwrap()
        .contains("epoch 2"));
}

fn cache(disks: &[&str]) -> Message {
    let disks = disks
        .iter()
        .map(|d| CacheDiskStats {
            disk: disk(d),
            cached_seq: 3,
            applied_seq: 2,
            cached_batches: 1,
            cached_bytes: 4096,
            master_target_connected: true,
            refused: None,
        })
        .collect();
    Message::ProcessServerHeartbeat(ProcessServerStats {
        disks,
        ..Default::default()
    })
}

#[test]
fn an_unprotected_disk_is_retired_on_the_process_servers_that_cache_it_only() {
    let (mut s, now) = two_protected();
    receive(&mut s, now, 2, cache(&["disk0"]));
    receive(&mut s, now, 3, cache(&["disk1"]));
    let unprotect = Command::Unprotect {
        disk: disk("disk0"),
        keep_replica: false,
    };
    let (r, d) = command(&mut s, now, unprotect);
    r.unwrap();
    let mut retired: Vec<u64> = d
        .sent()
        .into_iter()
        .filter(|(_, m)| matches!(m, Message::Retire(r) if r.iter().any(|r| r.disk.as_str() == "disk0")))
        .map(|(c, _)| c.0)
        .collect();
    retired.sort();
    // The agent, ps1 (which caches it) and mt1 (which holds its replica); not ps2 nor mt2.
    assert_eq!(retired, [1, 2, 4]);
}

/// A disk's stream refused by its master target shows in the status, as its own process server
/// reports it (another process server's word about it does not count), and clears with it.
#[test]
fn a_refused_stream_shows_in_the_status_of_its_disk_only() {
    let (mut s, now) = two_protected();
    let refused = |disks: &[&str], why: Option<&str>| {
        let Message::ProcessServerHeartbeat(mut stats) = cache(disks) else {
            unreachable!()
        };
        for d in &mut stats.disks {
            d.refused = why.map(String::from);
        }
        Message::ProcessServerHeartbeat(stats)
    };
    let of = |s: &ConfigServer, d: &str| {
        s.status()
            .disks
            .iter()
            .find(|v| v.disk.as_str() == d)
            .and_then(|v| v.refused.clone())
    };
    receive(&mut s, now, 3, refused(&["disk0", "disk1"], Some("fenced")));
    assert_eq!(of(&s, "disk0"), None, "ps2 does not carry disk0");
    assert_eq!(of(&s, "disk1").as_deref(), Some("fenced"));
    receive(
        &mut s,
        now,
        2,
        refused(&["disk0"], Some("resize is not supported")),
    );
    assert_eq!(of(&s, "disk0").as_deref(), Some("resize is not supported"));
    receive(&mut s, now, 2, refused(&["disk0"], None));
    assert_eq!(of(&s, "disk0"), None);
}

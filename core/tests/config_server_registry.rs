//! The configuration server's registry: registrations and what they persist, heartbeats of each
//! role, liveness at its edges, the disks agents report, and the event log's ring.

mod common;

use common::cs::*;
use common::*;
use haven_core::config_server::{
    self as cs, Command, ConfigServer, PolicyChange, Record, DISKS_MAX, EVENTS_MAX,
};
use haven_core::protocol::{Message, Role};
use haven_core::stats::{
    AgentDiskStats, AgentStats, MasterTargetStats, ProcessServerStats, ReplicaStats,
    ReplicationMode,
};
use haven_core::Machine;
use haven_core::{ConnId, DiskId, Epoch, Timestamp};

fn agent_disk(disk: &str, bytes_written: u64) -> AgentDiskStats {
    AgentDiskStats {
        disk: DiskId::new(disk).unwrap(),
        mode: ReplicationMode::Data,
        size_bytes: DISK_BYTES as u64,
        seq_written: 9,
        seq_cached: 8,
        seq_applied: 7,
        rpo_ms: 12,
        bytes_written,
        buffered_bytes: 0,
        connected: true,
    }
}

fn replica(disk: &str, points: u64) -> ReplicaStats {
    ReplicaStats {
        disk: DiskId::new(disk).unwrap(),
        epoch: Epoch(1),
        size_bytes: DISK_BYTES as u64,
        applied_seq: 7,
        points,
        journal_bytes: 0,
        inconsistent: None,
    }
}

fn mt_heartbeat(replicas: Vec<ReplicaStats>) -> Message {
    Message::MasterTargetHeartbeat(MasterTargetStats { replicas })
}

#[test]
fn the_server_asks_to_be_woken_every_half_heartbeat_timeout() {
    let (mut s, now) = registered(true);
    let half = cs_settings().heartbeat_timeout_ms / 2;
    assert_eq!(s.poll_timeout(), Some(now.plus_millis(half)));
    let later = now.plus_millis(1234);
    s.handle(later, cs::Input::Tick);
    drain(&mut s, later);
    assert_eq!(s.poll_timeout(), Some(later.plus_millis(half)));
}

#[test]
fn a_component_goes_offline_only_once_silent_for_longer_than_the_timeout() {
    let (mut s, now) = registered(true);
    let timeout = cs_settings().heartbeat_timeout_ms;
    // Woken exactly one timeout after the registrations: late, but not a pause of the server,
    // and silent for the timeout, not longer: everyone still online.
    let t1 = now.plus_millis(timeout);
    s.handle(t1, cs::Input::Tick);
    drain(&mut s, t1);
    assert_eq!(online(&s).len(), 5);
    assert_eq!(events(&s, "warning"), Vec::<String>::new());
    // One millisecond more: offline, a warning for each.
    let t2 = t1.plus_millis(1);
    s.handle(t2, cs::Input::Tick);
    drain(&mut s, t2);
    assert_eq!(online(&s), Vec::<String>::new());
    let warnings = events(&s, "warning");
    assert_eq!(warnings.len(), 5, "{warnings:?}");
    for text in [
        "agent agent1 is offline: no heartbeat for 10000 ms",
        "process-server ps2 is offline: no heartbeat for 10000 ms",
        "master-target mt1 is offline: no heartbeat for 10000 ms",
    ] {
        assert!(warnings.iter().any(|w| w == text), "{text}: {warnings:?}");
    }
}

#[test]
fn a_heartbeat_after_silence_brings_a_component_back_with_an_event_and_its_assignment() {
    let (mut s, now) = registered(true);
    let late = now.plus_millis(cs_settings().heartbeat_timeout_ms / 2);
    s.handle(late, cs::Input::Tick);
    let late = now.plus_millis(cs_settings().heartbeat_timeout_ms + 1);
    s.handle(late, cs::Input::Tick);
    drain(&mut s, late);
    assert!(online(&s).is_empty());
    let hb = Message::AgentHeartbeat(AgentStats::default());
    let d = receive(&mut s, late, 1, hb);
    assert_eq!(online(&s), ["agent1"]);
    assert!(
        events(&s, "info").contains(&"agent agent1 is online again".to_string()),
        "{:?}",
        s.status().events
    );
    let assigned = d
        .sent()
        .into_iter()
        .any(|(c, m)| c == ConnId(1) && matches!(m, Message::Assign(a) if a.len() == 2));
    assert!(assigned, "the agent is told its assignments again: {d:?}");
    // Coming back by registering again is a registration, not an "online again".
    let d = connect(
        &mut s,
        late,
        2,
        (Role::ProcessServer, "ps1"),
        registration("ps1:7001", vec![]),
    );
    assert_eq!(refused(&d.net, 2), None);
    let info = events(&s, "info");
    assert_eq!(info.last().unwrap(), "process-server ps1 registered");
    assert!(!info
        .iter()
        .any(|t| t.starts_with("process-server ps1 is online again")));
}

#[test]
fn a_heartbeat_of_another_role_is_refused_with_the_reason() {
    let (mut s, now) = registered(true);
    let cases = [
        (
            2,
            Message::AgentHeartbeat(AgentStats::default()),
            "AgentHeartbeat",
        ),
        (
            4,
            Message::AgentHeartbeat(AgentStats::default()),
            "AgentHeartbeat",
        ),
        (
            1,
            Message::ProcessServerHeartbeat(ProcessServerStats::default()),
            "ProcessServerHeartbeat",
        ),
        (3, mt_heartbeat(vec![]), "MasterTargetHeartbeat"),
    ];
    for (conn, msg, kind) in cases {
        let d = receive(&mut s, now, conn, msg);
        let reason = refused(&d.net, conn).unwrap_or_else(|| panic!("{kind} on {conn}: {d:?}"));
        let ok = ["an agent", "a process-server", "a master-target"]
            .iter()
            .any(|who| reason == format!("unexpected {kind} from {who}"));
        assert!(ok, "{reason}");
    }
    let st = s.status();
    assert_eq!(st.process_servers.len(), 0, "{:?}", st.process_servers);
    assert!(st.disks.iter().all(|d| d.source.is_none()));
}

#[test]
fn each_roles_heartbeat_shows_in_the_status_of_its_own_disks() {
    let (mut s, now) = registered(false);
    run(&mut s, now, protect("agent1", "disk0")).0.unwrap();
    run(&mut s, now, protect("agent1", "disk1")).0.unwrap();
    let agent = AgentStats {
        disks: vec![agent_disk("disk0", 100), agent_disk("disk1", 200)],
    };
    let hbs = [
        (1, Message::AgentHeartbeat(agent)),
        (2, Message::ProcessServerHeartbeat(Default::default())),
        (4, mt_heartbeat(vec![replica("disk0", 3)])),
        (5, mt_heartbeat(vec![replica("disk1", 4)])),
    ];
    for (conn, msg) in hbs {
        let d = receive(&mut s, now, conn, msg);
        assert_eq!(refused(&d.net, conn), None, "{d:?}");
    }
    let st = s.status();
    assert_eq!(st.process_servers.keys().next().unwrap().as_str(), "ps1");
    let seen: Vec<_> = st
        .disks
        .iter()
        .map(|d| {
            let source = d.source.as_ref().expect("the agent's stats of the disk");
            let replica = d.replica.as_ref().expect("its master target's stats of it");
            (
                d.disk.as_str(),
                d.master_target.as_ref().unwrap().as_str(),
                source.disk.as_str(),
                source.bytes_written,
                replica.disk.as_str(),
                replica.points,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("disk0", "mt1", "disk0", 100, "disk0", 3),
            ("disk1", "mt2", "disk1", 200, "disk1", 4)
        ]
    );
}

#[test]
fn a_disk_another_agent_already_reported_is_ignored_with_a_warning() {
    let (mut s, now) = registered(true);
    let disks = vec![
        disk_info("disk0", 2 * DISK_BYTES as u64, ""),
        disk_info("disk9", DISK_BYTES as u64, ""),
    ];
    let d = connect(
        &mut s,
        now,
        6,
        (Role::Agent, "agent2"),
        registration("", disks),
    );
    assert_eq!(refused(&d.net, 6), None);
    assert_eq!(
        events(&s, "warning"),
        [
            "agent agent2 reports disk disk0 which belongs to agent agent1; ignored (give the \
          disk another id)"
        ]
    );
    let st = s.status();
    let owners: Vec<_> = st
        .disks
        .iter()
        .map(|d| (d.disk.as_str(), d.agent.as_str(), d.size_bytes))
        .collect();
    let size = DISK_BYTES as u64;
    assert_eq!(
        owners,
        [
            ("disk0", "agent1", size),
            ("disk1", "agent1", size),
            ("disk9", "agent2", size)
        ]
    );
}

#[test]
fn an_agent_that_registers_a_grown_disk_updates_its_size_and_route() {
    let (mut s, now) = registered(true);
    let grown = 2 * DISK_BYTES as u64;
    let disks = vec![
        disk_info("disk0", grown, ""),
        disk_info("disk1", DISK_BYTES as u64, ""),
    ];
    let d = receive(&mut s, now, 1, Message::Register(registration("", disks)));
    assert_eq!(events(&s, "warning"), Vec::<String>::new());
    let sizes: Vec<_> = s.status().disks.iter().map(|d| d.size_bytes).collect();
    assert_eq!(sizes, [grown, DISK_BYTES as u64]);
    let saved = d.records.iter().any(|r| {
        matches!(r, Record::Protection { disk, record }
            if disk.as_str() == "disk0" && record.size_bytes == grown)
    });
    assert!(saved, "the new size is persisted: {:?}", d.records);
    let routes = d
        .sent()
        .into_iter()
        .find_map(|(c, m)| match m {
            Message::Routes(r) if c == ConnId(2) => Some(r),
            _ => None,
        })
        .expect("routes to ps1");
    let route = routes.iter().find(|r| r.disk.as_str() == "disk0").unwrap();
    assert_eq!(route.size_bytes, grown);
}

#[test]
fn disks_beyond_the_limit_are_ignored_with_a_warning() {
    let now = Timestamp::from_millis(5);
    let mut settings = cs_settings();
    settings.auto_protect = false;
    let mut s = ConfigServer::new(settings, Default::default(), now);
    let disks = (0..=DISKS_MAX)
        .map(|i| disk_info(&format!("d{i:06}"), DISK_BYTES as u64, ""))
        .collect();
    let d = connect(
        &mut s,
        now,
        1,
        (Role::Agent, "agent1"),
        registration("", disks),
    );
    let known = d
        .records
        .iter()
        .filter(|r| matches!(r, Record::Protection { .. }))
        .count();
    assert_eq!(known, DISKS_MAX);
    let warned = d.records.iter().any(|r| {
        matches!(r, Record::Event(e) if e.level == "warning"
            && e.text == format!("disk d{DISKS_MAX} ignored: too many disks (limit {DISKS_MAX})"))
    });
    assert!(warned, "the disk beyond the limit is an event");
}

#[test]
fn a_restart_from_the_records_knows_every_component_disk_and_event() {
    let (s, now, state) = registered_with(cs_settings());
    let st = s.status();
    let ids: Vec<u64> = st.events.iter().map(|e| e.id).collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>(), "{ids:?}");
    assert_eq!(ids.len(), 7, "{:?}", st.events);

    let later = now.plus_millis(1);
    let mut s2 = ConfigServer::new(cs_settings(), state, later);
    let st2 = s2.status();
    let comps: Vec<_> = st2
        .components
        .iter()
        .map(|c| {
            (
                c.id.as_str(),
                c.role.as_str(),
                c.data_addr.as_str(),
                c.online,
            )
        })
        .collect();
    assert_eq!(
        comps,
        [
            ("agent1", "agent", "", false),
            ("mt1", "master-target", "mt1:7002", false),
            ("mt2", "master-target", "mt2:7002", false),
            ("ps1", "process-server", "ps1:7001", false),
            ("ps2", "process-server", "ps2:7001", false),
        ]
    );
    let disks = |st: &cs::StatusView| -> Vec<_> {
        st.disks
            .iter()
            .map(|d| (d.disk.clone(), d.state, d.epoch, d.process_server.clone()))
            .collect()
    };
    assert_eq!(disks(&st2), disks(&st));
    assert_eq!(st2.events, st.events);
    // The event ids go on from the last one.
    connect(
        &mut s2,
        later,
        1,
        (Role::Agent, "agent1"),
        registration("", vec![]),
    );
    let last = s2.status().events.last().unwrap().clone();
    assert_eq!(
        (last.id, last.text.as_str()),
        (8, "agent agent1 registered")
    );
}

#[test]
fn an_unchanged_registration_persists_no_component_record() {
    let (mut s, now) = registered(true);
    let component = |d: &Drained| {
        d.records
            .iter()
            .filter_map(|r| match r {
                Record::Component { id, record } => {
                    Some((id.to_string(), record.reg.data_addr.clone()))
                }
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let same = registration("ps1:7001", vec![]);
    let d = receive(&mut s, now, 2, Message::Register(same));
    assert_eq!(component(&d), []);
    let moved = registration("ps1:7009", vec![]);
    let d = receive(&mut s, now, 2, Message::Register(moved));
    assert_eq!(component(&d), [("ps1".to_string(), "ps1:7009".to_string())]);
}

#[test]
fn the_event_log_keeps_the_newest_events_max_across_a_restart() {
    let (mut s, now, mut state) = registered_with(cs_settings());
    let n = EVENTS_MAX + 5;
    for i in 0..n {
        let change = PolicyChange {
            rpo_threshold_ms: Some(1_000 + i),
            ..Default::default()
        };
        let disk = DiskId::new("disk0").unwrap();
        let (r, records) = run(&mut s, now, Command::Settings { disk, change });
        r.unwrap();
        state.apply(&records);
    }
    let mut ids: Vec<u64> = state.events.iter().map(|e| e.id).collect();
    ids.sort();
    let last = 7 + n;
    assert_eq!(ids, (last - EVENTS_MAX + 1..=last).collect::<Vec<_>>());
    let s2 = ConfigServer::new(cs_settings(), state, now);
    let (st, st2) = (s.status(), s2.status());
    assert_eq!(st2.events.len() as u64, EVENTS_MAX);
    assert_eq!(
        st2.events, st.events,
        "the same newest events, oldest first"
    );
    assert_eq!(
        st2.events.last().unwrap().text,
        format!("settings changed: disk disk0: rpo_threshold {} ms, batch_bytes_max agent default, batch_delay agent default", n + 999)
    );
}

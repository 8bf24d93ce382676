//! The log policy of the network layer, unit by unit and through a real `Net` over loopback.

use super::*;
use crate::net::{Net, NetInbound};
use crate::transport::{Tcp, Transport};
use haven_core::ids::{ComponentId, Epoch};
use haven_core::net::{NetCommand, NetEvent};
use haven_core::protocol::{Message, PROTOCOL_VERSION};
use std::io::Write;
use tokio::sync::mpsc;

#[test]
fn the_first_failure_counts_and_success_resets() {
    let u = Unreachable::default();
    assert!(u.failed("a:1"));
    assert!(!u.failed("a:1"));
    assert!(u.failed("b:1"));
    assert_eq!(u.reached("a:1"), Some(2));
    assert_eq!(u.reached("a:1"), None);
    assert!(u.failed("a:1"));
}

#[test]
fn repeats_are_quiet_for_a_minute() {
    let t0 = Instant::now();
    let mut r = Repeats::default();
    assert!(r.fresh("x", t0));
    assert!(!r.fresh("x", t0 + Duration::from_secs(59)));
    assert!(r.fresh("y", t0 + Duration::from_secs(59)));
    assert!(!r.fresh("y", t0 + Duration::from_secs(60)));
    assert!(r.fresh("x", t0 + Duration::from_secs(60)));
    assert!(!r.fresh("x", t0 + Duration::from_secs(61)));
    assert!(r.fresh("x", t0 + Duration::from_secs(120)));
}

/// A log sink the test reads back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_string).collect()
    }
}

fn hello(role: Role, id: &str) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        role,
        component: ComponentId::new(id).unwrap(),
        epoch: Epoch(0),
    }
}

async fn next(net: &mut Net<Tcp>, rx: &mut mpsc::Receiver<NetInbound>) -> NetEvent {
    let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a network event in time")
        .expect("the network layer is up");
    net.inbound(ev)
}

/// Three failed attempts log one WARN and two DEBUG lines; reaching the peer again is a WARN;
/// losing a process server is a WARN; a refusal heard is an ERROR once, then DEBUG; the close
/// that follows a refusal is not reported as a loss.
#[tokio::test]
async fn unreachable_lost_and_refused_peers_are_logged_once() {
    let log = Captured::default();
    let sink = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let free = Tcp.bind("127.0.0.1:0").await.unwrap();
    let addr = Tcp::local_addr(&free).unwrap();
    drop(free);
    let (tx, mut rx) = mpsc::channel(16);
    let mut agent = Net::new(Tcp, hello(Role::Agent, "a1"), vec![], tx);
    for token in 1..=3 {
        agent.execute(NetCommand::Connect {
            token,
            addr: addr.clone(),
            epoch: Epoch(1),
        });
        let ev = next(&mut agent, &mut rx).await;
        assert!(matches!(ev, NetEvent::ConnectFailed { .. }), "{ev:?}");
    }
    let listener = Tcp.bind(&addr).await.unwrap();
    let (stx, mut srx) = mpsc::channel(16);
    let mut ps = Net::new(
        Tcp,
        hello(Role::ProcessServer, "ps1"),
        vec![Role::Agent],
        stx,
    );
    ps.listen(listener);
    for round in 0..2 {
        agent.execute(NetCommand::Connect {
            token: 10 + round,
            addr: addr.clone(),
            epoch: Epoch(7 + round),
        });
        let NetEvent::Connected { conn, .. } = next(&mut agent, &mut rx).await else {
            panic!("not connected");
        };
        let theirs = loop {
            // The close of the last round's connection may come first.
            if let NetEvent::Accepted { conn, peer } = next(&mut ps, &mut srx).await {
                // The connection's Hello carries the epoch it was made for.
                assert_eq!(peer.epoch, Epoch(7 + round));
                break conn;
            }
        };
        if round == 0 {
            // The process server goes away: its side of the connection closes.
            ps.execute(NetCommand::Close { conn: theirs });
        } else {
            for cmd in NetCommand::refusal(theirs, "component id a1 is taken") {
                ps.execute(cmd);
            }
            let ev = next(&mut agent, &mut rx).await;
            assert!(matches!(
                ev,
                NetEvent::Received {
                    msg: Message::Reject { .. },
                    ..
                }
            ));
        }
        let ev = next(&mut agent, &mut rx).await;
        assert!(
            matches!(ev, NetEvent::Closed { conn: c, .. } if c == conn),
            "{ev:?}"
        );
    }
    let lines = log.lines();
    let with = |level: &str, text: &str| {
        lines
            .iter()
            .filter(|l| l.contains(level) && l.contains(text))
            .count()
    };
    assert_eq!(with("WARN", "cannot reach"), 1, "{lines:#?}");
    assert_eq!(with("DEBUG", "still cannot reach"), 2, "{lines:#?}");
    assert_eq!(with("WARN", "after 3 failed attempts"), 1, "{lines:#?}");
    assert_eq!(
        with("WARN", "lost the connection to process-server ps1"),
        1,
        "{lines:#?}"
    );
    assert_eq!(
        with(
            "ERROR",
            "process-server ps1 refused us: component id a1 is taken"
        ),
        1
    );
    assert_eq!(
        with("WARN", "refused agent a1: component id a1 is taken"),
        1,
        "{lines:#?}"
    );
}

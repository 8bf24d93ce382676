//! The simulated network: connections with per-direction order (as TCP gives it), seeded delay,
//! partitions, slow and lossy links, and connection resets.
//!
//! TCP never loses, reorders or duplicates a frame within a connection, so neither does this
//! model. Loss shows up as what it does to a TCP connection: a reset (both ends hear `Closed`,
//! frames not yet delivered are gone), after which the roles reconnect and resend: that resend
//! is where duplicates come from. A partition stalls the connections that cross it; if it lasts
//! longer than the detection delay they reset, and new connections across it fail.

use crate::rng::Rng;
use haven_core::net::{ConnectToken, NetEvent};
use haven_core::protocol::{self, Hello, Message, Role, PROTOCOL_VERSION};
use haven_core::{ComponentId, ConnId, Epoch, Timestamp};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A simulated process. Process servers, master targets and agents are numbered from 0 here
/// and from 1 in names: `Node::Ps(1)` is `ps2` (scripts also call the first one `ps`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    Cs,
    Ps(u8),
    Mt(u8),
    Agent(u8),
}

impl Node {
    /// The four roles of the smallest topology (one of each).
    pub const ALL: [Node; 4] = [Node::Cs, Node::Ps(0), Node::Mt(0), Node::Agent(0)];

    /// The address the node listens on (agents listen on none).
    pub fn addr(self) -> String {
        match self {
            Node::Cs => "cs.sim:7000".into(),
            Node::Ps(i) => format!("ps{}.sim:{}", i + 1, 7001 + 10 * i as u32),
            Node::Mt(i) => format!("mt{}.sim:{}", i + 1, 7002 + 10 * i as u32),
            Node::Agent(i) => format!("agent{}.sim:-", i + 1),
        }
    }

    /// The component id: `cs`, `ps1`, `mt2`, `agent3`...
    pub fn component(self) -> String {
        match self {
            Node::Cs => "cs".into(),
            Node::Ps(i) => format!("ps{}", i + 1),
            Node::Mt(i) => format!("mt{}", i + 1),
            Node::Agent(i) => format!("agent{}", i + 1),
        }
    }

    /// The name scenario scripts use: the first of each role is plain `ps`, `mt`, `agent`.
    pub fn name(self) -> String {
        let (role, i) = match self {
            Node::Cs => return "cs".into(),
            Node::Ps(i) => ("ps", i),
            Node::Mt(i) => ("mt", i),
            Node::Agent(i) => ("agent", i),
        };
        if i == 0 {
            role.into()
        } else {
            format!("{role}{}", i + 1)
        }
    }

    /// `cs`, `ps` (= `ps1`), `ps2`, `mt`, `mt3`, `agent`, `agent2`...
    pub fn parse(s: &str) -> Option<Node> {
        if s == "cs" {
            return Some(Node::Cs);
        }
        let (make, rest): (fn(u8) -> Node, &str) = if let Some(r) = s.strip_prefix("agent") {
            (Node::Agent, r)
        } else if let Some(r) = s.strip_prefix("ps") {
            (Node::Ps, r)
        } else if let Some(r) = s.strip_prefix("mt") {
            (Node::Mt, r)
        } else {
            return None;
        };
        if rest.is_empty() {
            return Some(make(0));
        }
        if rest.starts_with('0') || !rest.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u8 = rest.parse().ok()?;
        Some(make(n - 1))
    }

    pub fn hello(self) -> Hello {
        let role = match self {
            Node::Cs => Role::ConfigServer,
            Node::Ps(_) => Role::ProcessServer,
            Node::Mt(_) => Role::MasterTarget,
            Node::Agent(_) => Role::Agent,
        };
        Hello {
            version: PROTOCOL_VERSION,
            role,
            component: ComponentId::new(self.component()).expect("valid"),
            epoch: Epoch(0),
        }
    }

    /// A small number unique per node (the trace digest hashes it): 0 to 3 for the first of
    /// each role, as before there were several.
    pub fn index(self) -> usize {
        match self {
            Node::Cs => 0,
            Node::Ps(i) => 1 + 3 * i as usize,
            Node::Mt(i) => 2 + 3 * i as usize,
            Node::Agent(i) => 3 + 3 * i as usize,
        }
    }
}

/// Delay and loss of the link between two nodes (both directions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkParams {
    pub delay_min_ms: u64,
    pub delay_max_ms: u64,
    /// Chance per frame, in thousandths, that the connection resets instead.
    pub reset_per_mille: u64,
}

impl Default for LinkParams {
    fn default() -> Self {
        LinkParams {
            delay_min_ms: 0,
            delay_max_ms: 2,
            reset_per_mille: 0,
        }
    }
}

fn pair(a: Node, b: Node) -> (Node, Node) {
    (a.min(b), a.max(b))
}

struct Conn {
    /// (connector, acceptor)
    ends: (Node, Node),
    token: ConnectToken,
    open: bool,
    /// Whether each end has heard of the connection (Connected / Accepted delivered).
    known: [bool; 2],
    /// When a connection stalled by a partition resets.
    reset_at: Option<Timestamp>,
}

struct Item {
    at: Timestamp,
    /// Crosses the network (stalls in a partition); local events (our own close) do not.
    remote: bool,
    ev: NetEvent,
}

#[derive(Default)]
struct Wire {
    q: VecDeque<Item>,
    last: Timestamp,
}

/// Something the network can deliver now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ready {
    Wire(ConnId, Node),
    Loose,
}

pub struct Net {
    rng: Rng,
    conns: BTreeMap<ConnId, Conn>,
    next_conn: u64,
    wires: BTreeMap<(ConnId, Node), Wire>,
    loose: VecDeque<(Timestamp, Node, NetEvent)>,
    partitions: BTreeSet<(Node, Node)>,
    links: BTreeMap<(Node, Node), LinkParams>,
    pub default_link: LinkParams,
    /// How long a stalled connection lasts before it resets, and a connect across a
    /// partition before it fails: (min, max) ms.
    pub detect_ms: (u64, u64),
    /// Nodes that are not running (a down node refuses connections).
    down: BTreeSet<Node>,
    /// Listening nodes by address.
    addrs: BTreeMap<String, Node>,
    pub resets: u64,
}

impl Net {
    /// A network between `nodes`.
    pub fn new(rng: Rng, nodes: &[Node]) -> Net {
        let addrs = nodes
            .iter()
            .filter(|n| !matches!(n, Node::Agent(_)))
            .map(|n| (n.addr(), *n))
            .collect();
        Net {
            rng,
            conns: BTreeMap::new(),
            next_conn: 1,
            wires: BTreeMap::new(),
            loose: VecDeque::new(),
            partitions: BTreeSet::new(),
            links: BTreeMap::new(),
            default_link: LinkParams::default(),
            detect_ms: (200, 1500),
            down: BTreeSet::new(),
            addrs,
            resets: 0,
        }
    }

    pub fn link(&self, a: Node, b: Node) -> LinkParams {
        *self.links.get(&pair(a, b)).unwrap_or(&self.default_link)
    }

    pub fn set_link(&mut self, a: Node, b: Node, p: Option<LinkParams>) {
        match p {
            Some(p) => self.links.insert(pair(a, b), p),
            None => self.links.remove(&pair(a, b)),
        };
    }

    pub fn partitioned(&self, a: Node, b: Node) -> bool {
        self.partitions.contains(&pair(a, b))
    }

    pub fn faulty(&self) -> bool {
        !self.partitions.is_empty() || !self.links.is_empty()
    }

    fn delay(&mut self, a: Node, b: Node) -> u64 {
        let p = self.link(a, b);
        self.rng.range(p.delay_min_ms, p.delay_max_ms)
    }

    fn detect(&mut self) -> u64 {
        self.rng.range(self.detect_ms.0, self.detect_ms.1)
    }

    fn push(&mut self, conn: ConnId, to: Node, at: Timestamp, remote: bool, ev: NetEvent) {
        let w = self.wires.entry((conn, to)).or_default();
        let at = at.max(w.last);
        w.last = at;
        w.q.push_back(Item { at, remote, ev });
    }

    pub fn connect(
        &mut self,
        from: Node,
        token: ConnectToken,
        addr: &str,
        epoch: Epoch,
        now: Timestamp,
    ) {
        let to = self.addrs.get(addr).copied();
        let fail = |reason: &str| NetEvent::ConnectFailed {
            token,
            reason: reason.into(),
        };
        let Some(to) = to else {
            self.loose.push_back((now, from, fail("no such host")));
            return;
        };
        if self.partitioned(from, to) {
            let at = now.plus_millis(self.detect());
            self.loose.push_back((at, from, fail("timed out")));
            return;
        }
        let d = self.delay(from, to);
        if self.down.contains(&to) {
            self.loose
                .push_back((now.plus_millis(d), from, fail("refused")));
            return;
        }
        let p = self.link(from, to);
        if self.rng.chance_per_mille(p.reset_per_mille) {
            self.loose
                .push_back((now.plus_millis(d), from, fail("reset")));
            return;
        }
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.conns.insert(
            conn,
            Conn {
                ends: (from, to),
                token,
                open: true,
                known: [false; 2],
                reset_at: None,
            },
        );
        // The acceptor hears of the connection before any frame on it; the connector once the
        // handshake has gone there and back.
        let at = now.plus_millis(d);
        self.push(
            conn,
            to,
            at,
            true,
            NetEvent::Accepted {
                conn,
                peer: Hello {
                    epoch,
                    ..from.hello()
                },
            },
        );
        let back = at.plus_millis(self.delay(from, to));
        let peer = to.hello();
        self.push(
            conn,
            from,
            back,
            true,
            NetEvent::Connected { token, conn, peer },
        );
    }

    fn peer(&self, conn: ConnId, me: Node) -> Option<Node> {
        let c = self.conns.get(&conn).filter(|c| c.open)?;
        let (a, b) = c.ends;
        Some(if a == me { b } else { a })
    }

    /// Sends a frame; it goes through the real framing. Frames on a closed connection vanish,
    /// as they would in a socket buffer that is torn down.
    pub fn send(
        &mut self,
        from: Node,
        conn: ConnId,
        msg: &Message,
        data: &[u8],
        now: Timestamp,
    ) -> Result<(), String> {
        let Some(to) = self.peer(conn, from) else {
            return Ok(());
        };
        let frame = protocol::encode(msg, data).map_err(|e| format!("encode: {e}"))?;
        let (msg, data, _) = protocol::decode(&frame)
            .map_err(|e| format!("decode: {e}"))?
            .ok_or("a whole frame does not decode")?;
        self.deliver_frame(from, to, conn, msg, data, now);
        Ok(())
    }

    /// Sends a frame that is already encoded (the process server forwards cached frames as
    /// they are).
    pub fn send_frame(
        &mut self,
        from: Node,
        conn: ConnId,
        frame: &[u8],
        now: Timestamp,
    ) -> Result<(), String> {
        let Some(to) = self.peer(conn, from) else {
            return Ok(());
        };
        let (msg, data, _) = protocol::decode(frame)
            .map_err(|e| format!("decode: {e}"))?
            .ok_or("a whole frame does not decode")?;
        self.deliver_frame(from, to, conn, msg, data, now);
        Ok(())
    }

    fn deliver_frame(
        &mut self,
        from: Node,
        to: Node,
        conn: ConnId,
        msg: Message,
        data: Vec<u8>,
        now: Timestamp,
    ) {
        let p = self.link(from, to);
        if self.rng.chance_per_mille(p.reset_per_mille) {
            return self.reset(conn, now);
        }
        let at = now.plus_millis(self.delay(from, to));
        self.push(conn, to, at, true, NetEvent::Received { conn, msg, data });
    }

    pub fn close(&mut self, from: Node, conn: ConnId, now: Timestamp) {
        let Some(to) = self.peer(conn, from) else {
            return;
        };
        self.conns.get_mut(&conn).expect("open").open = false;
        let reason = format!("closed by {}", from.name());
        // Our side is done at once; the peer hears the FIN after the frames before it.
        let w = self.wires.entry((conn, from)).or_default();
        w.q.clear();
        self.push(
            conn,
            from,
            now,
            false,
            NetEvent::Closed {
                conn,
                reason: reason.clone(),
            },
        );
        let at = now.plus_millis(self.delay(from, to));
        self.push(conn, to, at, true, NetEvent::Closed { conn, reason });
    }

    /// Tears a connection down: both ends lose what was not delivered and hear `Closed` (or
    /// `ConnectFailed`, if the connector had not heard of it yet).
    pub fn reset(&mut self, conn: ConnId, now: Timestamp) {
        let Some(c) = self.conns.get_mut(&conn).filter(|c| c.open) else {
            return;
        };
        c.open = false;
        c.reset_at = None;
        let (ends, known, token) = ([c.ends.0, c.ends.1], c.known, c.token);
        self.resets += 1;
        for (i, node) in ends.into_iter().enumerate() {
            self.wires.remove(&(conn, node));
            if self.down.contains(&node) {
                continue;
            }
            if known[i] {
                let ev = NetEvent::Closed {
                    conn,
                    reason: "connection reset".into(),
                };
                self.push(conn, node, now, false, ev);
            } else if i == 0 {
                let ev = NetEvent::ConnectFailed {
                    token,
                    reason: "connection reset".into(),
                };
                self.loose.push_back((now, node, ev));
            }
        }
    }

    pub fn partition(&mut self, a: Node, b: Node, now: Timestamp) {
        self.partitions.insert(pair(a, b));
        let crossing: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.open && pair(c.ends.0, c.ends.1) == pair(a, b))
            .map(|(k, _)| *k)
            .collect();
        for conn in crossing {
            let at = now.plus_millis(self.detect());
            self.conns.get_mut(&conn).expect("listed").reset_at = Some(at);
        }
    }

    pub fn heal(&mut self, a: Node, b: Node) {
        self.partitions.remove(&pair(a, b));
        for c in self.conns.values_mut() {
            if pair(c.ends.0, c.ends.1) == pair(a, b) {
                c.reset_at = None;
            }
        }
    }

    pub fn heal_all(&mut self) {
        self.partitions.clear();
        self.links.clear();
        for c in self.conns.values_mut() {
            c.reset_at = None;
        }
    }

    /// A node stops: its connections reset (its kernel answers with RST; across a partition
    /// the peer finds out only when the connection times out).
    pub fn crash(&mut self, node: Node, now: Timestamp) {
        self.down.insert(node);
        self.loose.retain(|(_, n, _)| *n != node);
        let mine: Vec<(ConnId, Node, Node)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.open && (c.ends.0 == node || c.ends.1 == node))
            .map(|(k, c)| (*k, c.ends.0, c.ends.1))
            .collect();
        for (conn, a, b) in mine {
            self.wires.remove(&(conn, node));
            let peer = if a == node { b } else { a };
            if self.partitioned(a, b) {
                if self.conns[&conn].reset_at.is_none() {
                    let at = now.plus_millis(self.detect());
                    self.conns.get_mut(&conn).expect("listed").reset_at = Some(at);
                }
            } else {
                let d = self.delay(a, b);
                self.reset(conn, now.plus_millis(d));
            }
            let _ = peer;
        }
    }

    pub fn restart(&mut self, node: Node) {
        self.down.remove(&node);
    }

    /// Resets connections whose partition outlasted the detection delay.
    pub fn on_time(&mut self, now: Timestamp) {
        let due: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.open && c.reset_at.is_some_and(|t| t <= now))
            .map(|(k, _)| *k)
            .collect();
        for conn in due {
            self.reset(conn, now);
        }
        // Forget connections that are closed and fully delivered.
        let wires = &self.wires;
        self.conns.retain(|k, c| {
            c.open || wires.contains_key(&(*k, c.ends.0)) || wires.contains_key(&(*k, c.ends.1))
        });
    }

    fn stalled(&self, conn: ConnId, item: &Item) -> bool {
        item.remote
            && self
                .conns
                .get(&conn)
                .is_some_and(|c| self.partitioned(c.ends.0, c.ends.1))
    }

    /// What can be delivered now, in a deterministic order.
    pub fn ready(&self, now: Timestamp, out: &mut Vec<Ready>) {
        for ((conn, node), w) in &self.wires {
            if let Some(h) = w.q.front() {
                if h.at <= now && !self.stalled(*conn, h) {
                    out.push(Ready::Wire(*conn, *node));
                }
            }
        }
        if self.loose.iter().any(|(t, _, _)| *t <= now) {
            out.push(Ready::Loose);
        }
    }

    /// The next instant something happens on the network.
    pub fn next_due(&self) -> Option<Timestamp> {
        let mut t: Option<Timestamp> = None;
        let mut min = |x: Timestamp| t = Some(t.map_or(x, |t| t.min(x)));
        for ((conn, _), w) in &self.wires {
            if let Some(h) = w.q.front() {
                if !self.stalled(*conn, h) {
                    min(h.at);
                }
            }
        }
        for (at, _, _) in &self.loose {
            min(*at);
        }
        for c in self.conns.values() {
            if let Some(at) = c.reset_at {
                min(at);
            }
        }
        t
    }

    pub fn pop(&mut self, r: Ready, now: Timestamp) -> Option<(Node, NetEvent)> {
        match r {
            Ready::Wire(conn, node) => {
                let w = self.wires.get_mut(&(conn, node))?;
                let item = w.q.pop_front()?;
                if w.q.is_empty() && !self.conns.get(&conn).is_some_and(|c| c.open) {
                    self.wires.remove(&(conn, node));
                }
                if let Some(c) = self.conns.get_mut(&conn) {
                    match &item.ev {
                        NetEvent::Connected { .. } => c.known[0] = true,
                        NetEvent::Accepted { .. } => c.known[1] = true,
                        _ => {}
                    }
                }
                Some((node, item.ev))
            }
            Ready::Loose => {
                let i = self.loose.iter().position(|(t, _, _)| *t <= now)?;
                let (_, node, ev) = self.loose.remove(i)?;
                Some((node, ev))
            }
        }
    }

    /// Connections open now (for the trace and for tests).
    pub fn open_conns(&self) -> usize {
        self.conns.values().filter(|c| c.open).count()
    }
}

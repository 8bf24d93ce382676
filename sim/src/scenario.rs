//! Scenario scripts: topology, workload, timed faults and expected outcomes, in plain text
//! (documented in docs/scenarios.md). `Scenario::parse` reads one, `Scenario::to_script` writes
//! one back (swarm runs and shrunk proptest failures print theirs).

use crate::net::{LinkParams, Node};
use crate::workload::WorkloadParams;
use std::fmt::Write as _;

/// Most agents, disks per agent, process servers or master targets a topology may have.
pub const ROLE_COUNT_MAX: u8 = 8;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// Agents, each with `disks` protected disks.
    pub agents: u8,
    pub disks: u8,
    /// Process servers and master targets.
    pub ps: u8,
    pub mt: u8,
    pub disk_blocks: u64,
    pub buffer_blocks: u64,
    pub cache_blocks: u64,
    pub batch_blocks: u64,
    pub batch_delay_ms: u64,
    pub window: usize,
    pub ps_window: usize,
    /// Time a store takes to answer (sync), (min, max) ms.
    pub store_latency_ms: (u64, u64),
    /// The agents start this long after the servers (0: all at once, so that agents may
    /// register before some servers have, and their disks are placed on those that have).
    pub agent_start_ms: u64,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            agents: 1,
            disks: 1,
            ps: 1,
            mt: 1,
            disk_blocks: 64,
            buffer_blocks: 32,
            cache_blocks: 64,
            batch_blocks: 4,
            batch_delay_ms: 5,
            window: 4,
            ps_window: 3,
            store_latency_ms: (0, 1),
            agent_start_ms: 0,
        }
    }
}

impl Topology {
    /// Every node: the configuration server, the process servers, the master targets, the
    /// agents (for one of each, `Node::ALL`).
    pub fn nodes(&self) -> Vec<Node> {
        let mut v = vec![Node::Cs];
        v.extend((0..self.ps).map(Node::Ps));
        v.extend((0..self.mt).map(Node::Mt));
        v.extend((0..self.agents).map(Node::Agent));
        v
    }

    /// The nodes with a store that can fail: agents, process servers, master targets.
    pub fn store_nodes(&self) -> Vec<Node> {
        let mut v: Vec<Node> = (0..self.agents).map(Node::Agent).collect();
        v.extend((0..self.ps).map(Node::Ps));
        v.extend((0..self.mt).map(Node::Mt));
        v
    }

    /// Pairs of nodes that may talk to each other: every agent with every process server,
    /// every process server with every master target (placement decides who does), and each
    /// of them with the configuration server.
    pub fn links(&self) -> Vec<(Node, Node)> {
        let (agents, pss, mts) = (0..self.agents, 0..self.ps, 0..self.mt);
        let mut v = vec![];
        for a in agents.clone() {
            v.extend(pss.clone().map(|p| (Node::Agent(a), Node::Ps(p))));
        }
        for p in pss.clone() {
            v.extend(mts.clone().map(|m| (Node::Ps(p), Node::Mt(m))));
        }
        v.extend(agents.map(|a| (Node::Agent(a), Node::Cs)));
        v.extend(pss.map(|p| (Node::Ps(p), Node::Cs)));
        v.extend(mts.map(|m| (Node::Mt(m), Node::Cs)));
        v
    }

    pub fn has(&self, n: Node) -> bool {
        match n {
            Node::Cs => true,
            Node::Ps(i) => i < self.ps,
            Node::Mt(i) => i < self.mt,
            Node::Agent(i) => i < self.agents,
        }
    }

    /// Protected disks in all.
    pub fn disk_count(&self) -> usize {
        self.agents as usize * self.disks as usize
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Partition(Node, Node),
    Heal(Node, Node),
    /// Heals partitions and links, clears store faults, restarts stopped roles.
    HealAll,
    Crash(Node),
    Restart(Node),
    /// A slow or lossy link; None puts it back to the network default.
    Link(Node, Node, Option<LinkParams>),
    DiskFull(Node),
    IoError(Node),
    Clear(Node),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaExpect {
    /// Equal to the source unless an agent crash lost writes (then marked inconsistent).
    Auto,
    Equal,
    Gap,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    pub converge_within_ms: u64,
    pub rpo_below_ms: Option<u64>,
    pub replica: ReplicaExpect,
    pub busy: bool,
    pub stopped: Vec<Node>,
}

impl Default for Expect {
    fn default() -> Self {
        Expect {
            converge_within_ms: 60_000,
            rpo_below_ms: None,
            replica: ReplicaExpect::Auto,
            busy: false,
            stopped: vec![],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    pub name: String,
    pub topology: Topology,
    pub workload: WorkloadParams,
    pub link: LinkParams,
    pub detect_ms: (u64, u64),
    /// (time in ms, action), in time order (stable for equal times).
    pub events: Vec<(u64, Action)>,
    pub expect: Expect,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            name: "unnamed".into(),
            topology: Topology::default(),
            workload: WorkloadParams::default(),
            link: LinkParams::default(),
            detect_ms: (200, 1500),
            events: vec![],
            expect: Expect::default(),
        }
    }
}

fn dur(s: &str) -> Result<u64, String> {
    let bad = || format!("bad duration {s:?} (use 250ms, 2s or 1.5s)");
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse().map_err(|_| bad());
    }
    let secs = s.strip_suffix('s').ok_or_else(bad)?;
    let (whole, frac) = secs.split_once('.').unwrap_or((secs, ""));
    let whole: u64 = whole.parse().map_err(|_| bad())?;
    let mut ms = whole * 1000;
    if !frac.is_empty() {
        if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        ms += format!("{frac:0<3}").parse::<u64>().map_err(|_| bad())?;
    }
    Ok(ms)
}

fn fmt_ms(ms: u64) -> String {
    if ms.is_multiple_of(1000) && ms > 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn dur_range(s: &str) -> Result<(u64, u64), String> {
    match s.split_once("..") {
        Some((a, b)) => {
            // "0..2ms": the unit of the upper bound applies to a bare lower bound.
            let unit = b.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
            let a = if a.bytes().all(|c| c.is_ascii_digit()) {
                format!("{a}{unit}")
            } else {
                a.to_string()
            };
            let (a, b) = (dur(&a)?, dur(b)?);
            if a > b {
                return Err(format!("empty range {s:?}"));
            }
            Ok((a, b))
        }
        None => dur(s).map(|d| (d, d)),
    }
}

fn per_mille(s: &str) -> Result<u64, String> {
    let bad = || format!("bad rate {s:?} (use 2% or 5/1000)");
    if let Some(p) = s.strip_suffix('%') {
        return p.parse::<u64>().map(|p| p * 10).map_err(|_| bad());
    }
    let n = s.strip_suffix("/1000").ok_or_else(bad)?;
    n.parse().map_err(|_| bad())
}

fn num<T: std::str::FromStr>(k: &str, v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("bad number for {k}: {v:?}"))
}

fn node(s: &str) -> Result<Node, String> {
    Node::parse(s)
        .ok_or_else(|| format!("unknown role {s:?} (cs, agent, agent2, ps, ps2, mt, mt2...)"))
}

fn kv(words: &[&str]) -> Result<Vec<(String, String)>, String> {
    words
        .iter()
        .map(|w| {
            w.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("expected key=value, got {w:?}"))
        })
        .collect()
}

fn link_params(base: LinkParams, words: &[&str]) -> Result<Option<LinkParams>, String> {
    if words == ["normal"] {
        return Ok(None);
    }
    let mut p = base;
    for (k, v) in kv(words)? {
        match k.as_str() {
            "delay" => (p.delay_min_ms, p.delay_max_ms) = dur_range(&v)?,
            "loss" => p.reset_per_mille = per_mille(&v)?,
            _ => return Err(format!("unknown link setting {k:?} (delay, loss)")),
        }
    }
    Ok(Some(p))
}

impl Scenario {
    pub fn parse(text: &str) -> Result<Scenario, String> {
        let mut s = Scenario::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            s.parse_line(line)
                .map_err(|e| format!("line {}: {e}: {line}", i + 1))?;
        }
        s.events.sort_by_key(|(t, _)| *t);
        s.check_nodes()?;
        Ok(s)
    }

    /// Every node a fault or expectation names is in the topology.
    fn check_nodes(&self) -> Result<(), String> {
        let mut named = self.expect.stopped.clone();
        for (_, a) in &self.events {
            match *a {
                Action::Partition(x, y) | Action::Heal(x, y) | Action::Link(x, y, _) => {
                    named.extend([x, y])
                }
                Action::Crash(x)
                | Action::Restart(x)
                | Action::DiskFull(x)
                | Action::IoError(x)
                | Action::Clear(x) => named.push(x),
                Action::HealAll => {}
            }
        }
        match named.into_iter().find(|n| !self.topology.has(*n)) {
            Some(n) => Err(format!(
                "{} is not in the topology ({} agents, {} ps, {} mt)",
                n.name(),
                self.topology.agents,
                self.topology.ps,
                self.topology.mt
            )),
            None => Ok(()),
        }
    }

    fn parse_line(&mut self, line: &str) -> Result<(), String> {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w[0] {
            "name" => self.name = w[1..].join(" "),
            "topology" => self.parse_topology(&w[1..])?,
            "workload" => {
                let p = &mut self.workload;
                for (k, v) in kv(&w[1..])? {
                    match k.as_str() {
                        "writes" => p.writes = num(&k, &v)?,
                        "rate" => p.rate = num(&k, &v)?,
                        "depth" => p.depth = num(&k, &v)?,
                        "flush" => p.flush = num(&k, &v)?,
                        "max_blocks" => p.max_blocks = num(&k, &v)?,
                        _ => return Err(format!("unknown workload setting {k:?}")),
                    }
                }
                if p.depth == 0 || p.max_blocks == 0 {
                    return Err("depth and max_blocks must be > 0".into());
                }
            }
            "network" => {
                for (k, v) in kv(&w[1..])? {
                    match k.as_str() {
                        "delay" => {
                            (self.link.delay_min_ms, self.link.delay_max_ms) = dur_range(&v)?
                        }
                        "loss" => self.link.reset_per_mille = per_mille(&v)?,
                        "detect" => self.detect_ms = dur_range(&v)?,
                        _ => return Err(format!("unknown network setting {k:?}")),
                    }
                }
            }
            "at" => {
                let t = dur(w.get(1).ok_or("at TIME ACTION")?)?;
                let a = self.parse_action(&w[2..])?;
                self.events.push((t, a));
            }
            "expect" => self.parse_expect(&w[1..])?,
            other => return Err(format!("unknown statement {other:?}")),
        }
        Ok(())
    }

    fn parse_topology(&mut self, w: &[&str]) -> Result<(), String> {
        let t = &mut self.topology;
        for (k, v) in kv(w)? {
            match k.as_str() {
                "agents" => t.agents = num(&k, &v)?,
                "disks" => t.disks = num(&k, &v)?,
                "ps" => t.ps = num(&k, &v)?,
                "mt" => t.mt = num(&k, &v)?,
                "disk_blocks" => t.disk_blocks = num(&k, &v)?,
                "buffer_blocks" => t.buffer_blocks = num(&k, &v)?,
                "cache_blocks" => t.cache_blocks = num(&k, &v)?,
                "batch_blocks" => t.batch_blocks = num(&k, &v)?,
                "batch_delay" => t.batch_delay_ms = dur(&v)?,
                "window" => t.window = num(&k, &v)?,
                "ps_window" => t.ps_window = num(&k, &v)?,
                "store_latency" => t.store_latency_ms = dur_range(&v)?,
                "agent_start" => t.agent_start_ms = dur(&v)?,
                _ => return Err(format!("unknown topology setting {k:?}")),
            }
        }
        if t.disk_blocks < 4 || t.batch_blocks == 0 || t.window == 0 || t.ps_window == 0 {
            return Err("disk_blocks >= 4, batch_blocks, window, ps_window > 0".into());
        }
        let counts = [t.agents, t.disks, t.ps, t.mt];
        if counts.iter().any(|c| !(1..=ROLE_COUNT_MAX).contains(c)) {
            return Err(format!(
                "agents, disks, ps and mt must be 1 to {ROLE_COUNT_MAX}"
            ));
        }
        Ok(())
    }

    fn parse_action(&self, w: &[&str]) -> Result<Action, String> {
        let arg = |i: usize| w.get(i).copied().ok_or("missing argument");
        Ok(match *w.first().ok_or("missing action")? {
            "partition" => Action::Partition(node(arg(1)?)?, node(arg(2)?)?),
            "heal" if arg(1)? == "all" => Action::HealAll,
            "heal" => Action::Heal(node(arg(1)?)?, node(arg(2)?)?),
            "crash" => Action::Crash(node(arg(1)?)?),
            "restart" => Action::Restart(node(arg(1)?)?),
            "link" => {
                let (a, b) = (node(arg(1)?)?, node(arg(2)?)?);
                Action::Link(a, b, link_params(self.link, &w[3..])?)
            }
            "diskfull" => Action::DiskFull(node(arg(1)?)?),
            "ioerror" => Action::IoError(node(arg(1)?)?),
            "clear" => Action::Clear(node(arg(1)?)?),
            other => return Err(format!("unknown action {other:?}")),
        })
    }

    fn parse_expect(&mut self, w: &[&str]) -> Result<(), String> {
        let e = &mut self.expect;
        match w {
            ["converge", "within", d] => e.converge_within_ms = dur(d)?,
            ["rpo", "below", d] => e.rpo_below_ms = Some(dur(d)?),
            ["replica", "equal"] => e.replica = ReplicaExpect::Equal,
            ["replica", "gap"] => e.replica = ReplicaExpect::Gap,
            ["replica", "auto"] => e.replica = ReplicaExpect::Auto,
            ["busy"] => e.busy = true,
            ["stop", n] => e.stopped.push(node(n)?),
            _ => return Err("unknown expectation".into()),
        }
        Ok(())
    }

    /// The script that parses back to this scenario.
    pub fn to_script(&self) -> String {
        let mut s = String::new();
        let t = &self.topology;
        let p = &self.workload;
        let l = &self.link;
        let _ = writeln!(s, "name {}", self.name);
        let _ = writeln!(
            s,
            "topology agents={} disks={} ps={} mt={} disk_blocks={} buffer_blocks={} cache_blocks={} batch_blocks={} batch_delay={}ms window={} ps_window={} store_latency={}..{}ms agent_start={}ms",
            t.agents, t.disks, t.ps, t.mt, t.disk_blocks, t.buffer_blocks, t.cache_blocks, t.batch_blocks, t.batch_delay_ms,
            t.window, t.ps_window, t.store_latency_ms.0, t.store_latency_ms.1, t.agent_start_ms
        );
        let _ = writeln!(
            s,
            "workload writes={} rate={} depth={} flush={} max_blocks={}",
            p.writes, p.rate, p.depth, p.flush, p.max_blocks
        );
        let _ = writeln!(
            s,
            "network delay={}..{}ms loss={}/1000 detect={}..{}ms",
            l.delay_min_ms, l.delay_max_ms, l.reset_per_mille, self.detect_ms.0, self.detect_ms.1
        );
        for (at, a) in &self.events {
            let what = match a {
                Action::Partition(x, y) => format!("partition {} {}", x.name(), y.name()),
                Action::Heal(x, y) => format!("heal {} {}", x.name(), y.name()),
                Action::HealAll => "heal all".into(),
                Action::Crash(x) => format!("crash {}", x.name()),
                Action::Restart(x) => format!("restart {}", x.name()),
                Action::Link(x, y, None) => format!("link {} {} normal", x.name(), y.name()),
                Action::Link(x, y, Some(p)) => format!(
                    "link {} {} delay={}..{}ms loss={}/1000",
                    x.name(),
                    y.name(),
                    p.delay_min_ms,
                    p.delay_max_ms,
                    p.reset_per_mille
                ),
                Action::DiskFull(x) => format!("diskfull {}", x.name()),
                Action::IoError(x) => format!("ioerror {}", x.name()),
                Action::Clear(x) => format!("clear {}", x.name()),
            };
            let _ = writeln!(s, "at {} {what}", fmt_ms(*at));
        }
        let e = &self.expect;
        let _ = writeln!(s, "expect converge within {}ms", e.converge_within_ms);
        if let Some(r) = e.rpo_below_ms {
            let _ = writeln!(s, "expect rpo below {r}ms");
        }
        match e.replica {
            ReplicaExpect::Auto => {}
            ReplicaExpect::Equal => s.push_str("expect replica equal\n"),
            ReplicaExpect::Gap => s.push_str("expect replica gap\n"),
        }
        if e.busy {
            s.push_str("expect busy\n");
        }
        for n in &e.stopped {
            let _ = writeln!(s, "expect stop {}", n.name());
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(dur("250ms"), Ok(250));
        assert_eq!(dur("2s"), Ok(2000));
        assert_eq!(dur("1.5s"), Ok(1500));
        assert_eq!(dur_range("0..2ms"), Ok((0, 2)));
        assert_eq!(dur_range("1s..3s"), Ok((1000, 3000)));
        assert!(dur("5").is_err());
    }

    #[test]
    fn a_script_round_trips() {
        let text = "name t\nworkload writes=10 rate=100\nat 1s partition agent ps\nat 2.5s link ps mt delay=10..50ms loss=2%\nat 3s heal all\nexpect rpo below 2s\nexpect busy\nexpect stop mt\n";
        let s = Scenario::parse(text).unwrap();
        assert_eq!(s.events.len(), 3);
        assert_eq!(Scenario::parse(&s.to_script()).unwrap(), s);
    }

    #[test]
    fn several_of_each_role() {
        let text = "topology agents=3 disks=2 ps=2 mt=2 agent_start=20ms\nat 1s crash ps2\nat 2s partition agent3 ps1\nat 3s heal agent3 ps\n";
        let s = Scenario::parse(text).unwrap();
        assert_eq!(s.topology.disk_count(), 6);
        assert_eq!(s.events[0].1, Action::Crash(Node::Ps(1)));
        assert_eq!(
            s.events[1].1,
            Action::Partition(Node::Agent(2), Node::Ps(0))
        );
        assert_eq!(Scenario::parse(&s.to_script()).unwrap(), s);
        assert!(
            Scenario::parse("at 1s crash ps2\n").is_err(),
            "ps2 needs ps=2"
        );
        assert!(Scenario::parse("topology ps=0\n").is_err());
        assert_eq!(Node::parse("ps0"), None);
        assert_eq!(Topology::default().nodes(), Node::ALL.to_vec());
    }
}

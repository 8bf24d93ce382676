//! The scheduler: each step, a seeded PRNG picks one of the things that can happen now —
//! deliver the next event of some connection direction, answer the oldest pending request of
//! some store, or submit a request of some disk's workload; now and then (and whenever nothing
//! can happen) the clock jumps to the next instant something is due, firing timers and
//! scenario faults. Drivers obey the core contract: outputs drained after every input, carried
//! out in order, storage answered in emission order.

use crate::cluster::{Cluster, R};
use crate::net::{Node, Ready};
use crate::scenario::Action;
use crate::stores::{AgentAnswer, MtWork, PsWork};
use haven_core::agent;
use haven_core::config_server as cs;
use haven_core::machine::tick_if_due;
use haven_core::master_target as mt;
use haven_core::net::NetEvent;
use haven_core::process_server as ps;
use haven_core::protocol::Message;
use haven_core::{Machine, Timestamp};

#[derive(Clone, Copy)]
enum Choice {
    Net(Ready),
    Store(Node),
}

/// Keeps the earliest of the instants it is shown.
#[derive(Default)]
struct Earliest(Option<Timestamp>);

impl Earliest {
    fn see(&mut self, x: Option<Timestamp>) {
        if let Some(x) = x {
            self.0 = Some(self.0.map_or(x, |t| t.min(x)));
        }
    }
}

impl Cluster {
    /// Stores with an answer due now, agents first, then process servers, master targets and
    /// the configuration server.
    fn ready_stores(&self, now: Timestamp, out: &mut Vec<Choice>) {
        for (i, s) in self.agent_stores.iter().enumerate() {
            if self.agents[i].is_some() && s.pending.ready(now) {
                out.push(Choice::Store(Node::Agent(i as u8)));
            }
        }
        for (i, s) in self.ps_stores.iter().enumerate() {
            if self.pss[i].is_some() && s.pending.ready(now) {
                out.push(Choice::Store(Node::Ps(i as u8)));
            }
        }
        for (i, s) in self.mt_stores.iter().enumerate() {
            if self.mts[i].is_some() && s.pending.ready(now) {
                out.push(Choice::Store(Node::Mt(i as u8)));
            }
        }
        if self.cs.is_some() && self.cs_store.pending.ready(now) {
            out.push(Choice::Store(Node::Cs));
        }
    }

    /// One scheduler step.
    pub fn step(&mut self) -> R {
        self.counters.steps += 1;
        let now = self.now;
        let mut ready = Vec::new();
        self.net.ready(now, &mut ready);
        let mut choices: Vec<Choice> = ready.into_iter().map(Choice::Net).collect();
        self.ready_stores(now, &mut choices);
        let submittable: Vec<usize> = (0..self.disks.len())
            .filter(|&d| {
                let disk = &self.disks[d];
                self.agents[disk.agent].is_some() && disk.wl.can_submit(now)
            })
            .collect();
        let can_submit = !submittable.is_empty();
        if choices.is_empty() && !can_submit || self.rng.chance(3) {
            return self.advance(!choices.is_empty() || can_submit);
        }
        if can_submit && (choices.is_empty() || self.rng.chance(15)) {
            let d = match submittable.len() {
                1 => submittable[0],
                n => submittable[self.rng.below(n as u64) as usize],
            };
            return self.submit(d);
        }
        match choices[self.rng.below(choices.len() as u64) as usize] {
            Choice::Net(r) => {
                let Some((to, ev)) = self.net.pop(r, now) else {
                    return Ok(());
                };
                self.deliver(to, ev)
            }
            Choice::Store(n) => self.answer(n),
        }
    }

    /// The next instant something is due: the agents' start, a scenario action, the network, a
    /// store answer, a workload request, a role's timer, or the liveness deadline.
    fn next_due(&self) -> Option<Timestamp> {
        let mut t = Earliest::default();
        t.see(self.agents_start_at.map(|ms| self.start.plus_millis(ms)));
        t.see(
            self.events
                .front()
                .map(|(ms, _)| self.start.plus_millis(*ms)),
        );
        t.see(self.net.next_due());
        for (i, a) in self.agents.iter().enumerate() {
            if a.is_some() {
                t.see(self.agent_stores[i].pending.next_due());
                for d in self.disks_of(i) {
                    t.see(self.disks[d].wl.next_due());
                }
            }
        }
        for (i, p) in self.pss.iter().enumerate() {
            if p.is_some() {
                t.see(self.ps_stores[i].pending.next_due());
            }
        }
        for (i, m) in self.mts.iter().enumerate() {
            if m.is_some() {
                t.see(self.mt_stores[i].pending.next_due());
            }
        }
        if self.cs.is_some() {
            t.see(self.cs_store.pending.next_due());
        }
        for a in self.agents.iter().flatten() {
            t.see(a.poll_timeout());
        }
        for p in self.pss.iter().flatten() {
            t.see(p.poll_timeout());
        }
        for m in self.mts.iter().flatten() {
            t.see(m.poll_timeout());
        }
        t.see(self.cs.as_ref().and_then(|c| c.poll_timeout()));
        // Never jump past the liveness deadline.
        t.see(Some(self.start.plus_millis(self.liveness_deadline() + 1)));
        t.0
    }

    /// Lets time pass: to the next instant something is due (1 ms if something is due now).
    fn advance(&mut self, busy: bool) -> R {
        let mut next = self.now.plus_millis(1);
        if !busy {
            next = next.max(self.next_due().unwrap_or(next));
        }
        self.now = next;
        let now = next;
        while self
            .events
            .front()
            .is_some_and(|(ms, _)| self.start.plus_millis(*ms) <= now)
        {
            let (_, a) = self.events.pop_front().expect("front");
            self.apply(a)?;
            if self.events.is_empty() && self.faulty() {
                // The schedule is over: heal everything; the liveness phase starts.
                self.apply(Action::HealAll)?;
            }
        }
        self.start_agents_if_due()?;
        self.net.on_time(now);
        // Each role whose deadline is due gets its tick.
        for m in self.agents.iter_mut().flatten() {
            tick_if_due(m, now);
        }
        for m in self.pss.iter_mut().flatten() {
            tick_if_due(m, now);
        }
        for m in self.mts.iter_mut().flatten() {
            tick_if_due(m, now);
        }
        self.cs.as_mut().map(|m| tick_if_due(m, now));
        self.drain()?;
        self.check_limits()
    }

    /// The next request of disk `d`'s workload.
    fn submit(&mut self, d: usize) -> R {
        let input = self.disks[d].wl.next_request(self.now);
        let now = self.now;
        let a = self.disks[d].agent;
        self.agents[a].as_mut().expect("up").handle(now, input);
        self.drain()
    }

    fn deliver(&mut self, to: Node, ev: NetEvent) -> R {
        let (what, detail) = match &ev {
            NetEvent::Received { msg, conn, .. } => {
                self.counters.delivered += 1;
                if matches!(msg, Message::Busy { .. }) {
                    self.counters.busy += 1;
                }
                (msg.kind(), conn.0)
            }
            NetEvent::Connected { conn, .. } => ("Connected", conn.0),
            NetEvent::Accepted { conn, .. } => ("Accepted", conn.0),
            NetEvent::Closed { conn, .. } => ("Closed", conn.0),
            NetEvent::ConnectFailed { token, .. } => ("ConnectFailed", *token),
        };
        self.note(to, what, detail);
        let now = self.now;
        fn feed<M: Machine>(m: Option<&mut M>, now: Timestamp, ev: NetEvent) {
            if let Some(m) = m {
                m.handle(now, M::net(ev));
            }
        }
        match to {
            Node::Cs => feed(self.cs.as_mut(), now, ev),
            Node::Ps(i) => feed(self.pss[i as usize].as_mut(), now, ev),
            Node::Mt(i) => feed(self.mts[i as usize].as_mut(), now, ev),
            Node::Agent(i) => feed(self.agents[i as usize].as_mut(), now, ev),
        }
        self.drain()
    }

    /// A store answers its oldest pending request: what it stands for is now durable.
    fn answer(&mut self, n: Node) -> R {
        self.counters.store_answers += 1;
        let now = self.now;
        match n {
            Node::Agent(a) => self.answer_agent(a as usize)?,
            Node::Ps(i) => {
                let input = match self.ps_stores[i as usize].complete().expect("ready") {
                    PsWork::Append(id, loc, bytes) => {
                        self.note(n, "CachePersisted", id);
                        ps::Input::CachePersisted { id, loc, bytes }
                    }
                    PsWork::Save(None, _) => return self.drain(),
                    PsWork::Save(Some(save), _) => {
                        self.note(n, "DiskSaved", save);
                        ps::Input::DiskSaved { save }
                    }
                };
                self.pss[i as usize]
                    .as_mut()
                    .expect("up")
                    .handle(now, input);
            }
            Node::Mt(i) => {
                let i = i as usize;
                let input = match self.mt_stores[i].pending.pop().expect("ready") {
                    MtWork::Append(id, header, data, point) => {
                        let (disk, journal_bytes, index) =
                            self.mt_stores[i].complete_append(header, data, point)?;
                        self.note(n, "JournalPersisted", id);
                        self.check_point(i, &disk, index)?;
                        mt::Input::JournalPersisted { id, journal_bytes }
                    }
                    MtWork::Save { save, meta, create } => {
                        self.note(n, "ReplicaSaved", save);
                        self.replica_saved(i, meta, create)?;
                        mt::Input::ReplicaSaved { save }
                    }
                };
                self.mts[i].as_mut().expect("up").handle(now, input);
            }
            Node::Cs => {
                let id = self.cs_store.complete().expect("ready");
                self.note(n, "Persisted", id);
                let input = cs::Input::Persisted { id };
                self.cs.as_mut().expect("up").handle(now, input);
            }
        }
        self.drain()
    }

    fn answer_agent(&mut self, a: usize) -> R {
        let now = self.now;
        let n = Node::Agent(a as u8);
        let answer = self.agent_stores[a].complete().expect("ready");
        let agent = self.agents[a].as_mut().expect("up");
        match answer {
            AgentAnswer::SourceDone {
                io,
                disk,
                version,
                data,
            } => {
                agent.handle(now, agent::Input::SourceDone { io, data });
                let seq = agent.seqs(disk).0;
                let d = self.disks_of(a).start + disk;
                if self.disks[d].wl.seq_version.insert(seq, version).is_some() {
                    let id = &self.disks[d].id;
                    return Err(format!("the agent assigned seq {seq} of {id} twice"));
                }
                self.note(n, "SourceDone", seq);
            }
            AgentAnswer::SourceFailed { io, error } => {
                agent.handle(now, agent::Input::SourceFailed { io, error });
                self.note(n, "SourceFailed", io);
            }
            AgentAnswer::Synced { io } => {
                agent.handle(now, agent::Input::Synced { io });
                self.note(n, "Synced", io);
            }
            AgentAnswer::Reserved { disk, reserved } => {
                agent.handle(now, agent::Input::Reserved { disk, reserved });
                self.note(n, "Reserved", reserved);
            }
        }
        Ok(())
    }

    /// Carries out every output of every role until none is left.
    pub(crate) fn drain(&mut self) -> R {
        loop {
            let mut any = false;
            for i in 0..self.agents.len() {
                while let Some(o) = self.agents[i].as_mut().and_then(|r| r.poll_output()) {
                    any = true;
                    self.agent_output(i, o)?;
                }
            }
            for i in 0..self.pss.len() {
                while let Some(o) = self.pss[i].as_mut().and_then(|r| r.poll_output()) {
                    any = true;
                    self.ps_output(i, o)?;
                }
            }
            for i in 0..self.mts.len() {
                while let Some(o) = self.mts[i].as_mut().and_then(|r| r.poll_output()) {
                    any = true;
                    self.mt_output(i, o)?;
                }
            }
            while let Some(o) = self.cs.as_mut().and_then(|r| r.poll_output()) {
                any = true;
                self.cs_output(o)?;
            }
            if !any {
                return Ok(());
            }
        }
    }
}

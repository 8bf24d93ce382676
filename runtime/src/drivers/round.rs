//! The one driver loop every role runs. A role supplies its [`Effects`]: how each output of its
//! core is carried out, and the round's group commit. The loop is the same for all four:
//!
//! 1. wait for a network event, a request from the role's other source (the agent's NBD
//!    requests, the configuration server's commands) or the core's deadline;
//! 2. take every other input that is ready (at most [`EVENTS_PER_TURN_MAX`] per source);
//! 3. on a blocking-safe thread: handle each input, carry out its outputs in order (completions
//!    that need no commit are fed back at once), then the group commit (one fsync of each file
//!    touched, one metadata commit) and feed the completions it releases; repeat until nothing
//!    is queued;
//! 4. publish what the role's API reads (status, stats).
//!
//! So every FUA write and flush of one round shares one fsync per disk, every cache append of
//! one round one fsync, every configuration change of one round one redb transaction.

use super::{blocking, sleep_until, Clock, RoleError, EVENTS_PER_TURN_MAX};
use crate::net::{Net, NetInbound};
use crate::transport::Transport;
use haven_core::time::{earliest, Timestamp};
use haven_core::Machine;
use std::collections::VecDeque;
use tokio::sync::mpsc;

pub type In<E> = <<E as Effects>::M as Machine>::Input;
pub type Out<E> = <<E as Effects>::M as Machine>::Output;

/// What one role does around its core.
pub trait Effects: Send + 'static {
    type M: Machine + Send + 'static;
    type T: Transport;
    /// Requests from the role's second source (none: `std::convert::Infallible`).
    type Extra: Send + 'static;

    /// Whether a whole round runs under `block_in_place` (the default: the process server's
    /// and master target's appends are direct I/O that waits for the disk). A role whose
    /// rounds are mostly page-cache work says false and guards its waits itself, since handing
    /// the worker's other tasks to another thread costs more than a page-cache write.
    const ROUND_BLOCKS: bool = true;

    fn net(&mut self) -> &mut Net<Self::T>;

    /// Carries out one output. A completion that needs no commit is pushed to `inputs` at once
    /// (it is handled before the next queued input, in the order pushed).
    fn execute(&mut self, out: Out<Self>, inputs: &mut VecDeque<In<Self>>)
        -> Result<(), RoleError>;

    /// The round's group commit; pushes the completions it releases to `inputs`.
    fn commit(&mut self, inputs: &mut VecDeque<In<Self>>) -> Result<(), RoleError>;

    /// The input a request of the second source becomes.
    fn extra(&mut self, x: Self::Extra) -> In<Self>;

    /// Whether the loop may take more requests of the second source now (`queued` inputs are
    /// waiting to be handled).
    fn extra_room(&self, _m: &Self::M, _queued: usize) -> bool {
        true
    }

    /// Work before the loop waits (the agent feeds initial-copy chunks); returns an earlier
    /// deadline than the core's, if the role needs one.
    fn before_wait(
        &mut self,
        _m: &mut Self::M,
        _inputs: &mut VecDeque<In<Self>>,
        _now: Timestamp,
    ) -> Result<Option<Timestamp>, RoleError> {
        Ok(None)
    }

    /// After each round: publish what the API reads.
    fn after_round(&mut self, _m: &Self::M, _now: Timestamp) {}

    /// True when the role has stopped itself (the agent's clean stop): the loop ends before it
    /// takes another input.
    fn finished(&self) -> bool {
        false
    }
}

/// A source of requests: a bounded or an unbounded channel.
pub trait Inbox<X>: Send {
    fn recv(&mut self) -> impl std::future::Future<Output = Option<X>> + Send;
    fn try_recv(&mut self) -> Option<X>;
}

impl<X: Send> Inbox<X> for mpsc::Receiver<X> {
    async fn recv(&mut self) -> Option<X> {
        mpsc::Receiver::recv(self).await
    }
    fn try_recv(&mut self) -> Option<X> {
        mpsc::Receiver::try_recv(self).ok()
    }
}

impl<X: Send> Inbox<X> for mpsc::UnboundedReceiver<X> {
    async fn recv(&mut self) -> Option<X> {
        mpsc::UnboundedReceiver::recv(self).await
    }
    fn try_recv(&mut self) -> Option<X> {
        mpsc::UnboundedReceiver::try_recv(self).ok()
    }
}

/// No second source.
pub struct NoInbox;

impl<X: Send> Inbox<X> for NoInbox {
    async fn recv(&mut self) -> Option<X> {
        std::future::pending().await
    }
    fn try_recv(&mut self) -> Option<X> {
        None
    }
}

/// A role's core, its effects and the inputs queued for the next round.
pub struct Driver<E: Effects> {
    pub machine: E::M,
    pub effects: E,
    clock: Clock,
    inputs: VecDeque<In<E>>,
}

impl<E: Effects> Driver<E>
where
    In<E>: Send,
{
    pub fn new(machine: E::M, effects: E, clock: Clock) -> Self {
        Driver {
            machine,
            effects,
            clock,
            inputs: VecDeque::new(),
        }
    }

    /// Runs until the network layer or the second source goes away (the role shuts down), or
    /// a storage error stops the role.
    pub async fn run<I: Inbox<E::Extra>>(
        mut self,
        mut events: mpsc::Receiver<NetInbound>,
        mut extra: I,
    ) -> Result<(), RoleError> {
        loop {
            let now = self.clock.now();
            let early = self
                .effects
                .before_wait(&mut self.machine, &mut self.inputs, now)?;
            if self.effects.finished() {
                return Ok(());
            }
            let deadline = if self.inputs.is_empty() {
                earliest(self.machine.poll_timeout(), early)
            } else {
                Some(now)
            };
            let room = self.effects.extra_room(&self.machine, self.inputs.len());
            tokio::select! {
                biased;
                ev = events.recv() => match ev {
                    Some(ev) => self.net_input(ev),
                    None => return Ok(()),
                },
                x = extra.recv(), if room => match x {
                    Some(x) => {
                        let input = self.effects.extra(x);
                        self.inputs.push_back(input);
                    }
                    None => return Ok(()),
                },
                _ = sleep_until(&self.clock, deadline) => self.inputs.push_back(E::M::tick()),
            }
            self.take_ready(&mut events, &mut extra);
            if E::ROUND_BLOCKS {
                blocking(|| self.run_inputs())?;
            } else {
                self.run_inputs()?;
            }
            self.effects.after_round(&self.machine, self.clock.now());
        }
    }

    fn net_input(&mut self, ev: NetInbound) {
        let ev = self.effects.net().inbound(ev);
        self.inputs.push_back(E::M::net(ev));
    }

    /// Everything else that is ready, so that one round carries many inputs (group commit).
    fn take_ready<I: Inbox<E::Extra>>(
        &mut self,
        events: &mut mpsc::Receiver<NetInbound>,
        extra: &mut I,
    ) {
        for _ in 0..EVENTS_PER_TURN_MAX {
            match events.try_recv() {
                Ok(ev) => self.net_input(ev),
                Err(_) => break,
            }
        }
        for _ in 0..EVENTS_PER_TURN_MAX {
            if !self.effects.extra_room(&self.machine, self.inputs.len()) {
                break;
            }
            match extra.try_recv() {
                Some(x) => {
                    let input = self.effects.extra(x);
                    self.inputs.push_back(input);
                }
                None => break,
            }
        }
    }

    /// Handles every queued input and everything it causes; one group commit per pass. A
    /// completion that needs no commit (a source write's) is handled right after the input
    /// that caused it, before the next queued input, so that its request is answered at once
    /// (fio and qemu refill their queue while the rest of the round runs).
    fn run_inputs(&mut self) -> Result<(), RoleError> {
        let mut done = VecDeque::new();
        while !self.inputs.is_empty() {
            while let Some(input) = self.inputs.pop_front() {
                self.handle_one(input, &mut done)?;
                while let Some(d) = done.pop_front() {
                    self.handle_one(d, &mut done)?;
                }
            }
            self.effects.commit(&mut self.inputs)?;
        }
        Ok(())
    }

    fn handle_one(&mut self, input: In<E>, done: &mut VecDeque<In<E>>) -> Result<(), RoleError> {
        self.machine.handle(self.clock.now(), input);
        while let Some(out) = self.machine.poll_output() {
            self.effects.execute(out, done)?;
        }
        Ok(())
    }
}

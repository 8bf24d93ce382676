//! Carrying out operators' commands on the configuration server's state. Each handler checks
//! everything before it changes anything, so a refused command changes nothing.

use super::*;
use crate::ids::Epoch;

impl ConfigServer {
    pub(super) fn command(&mut self, command: Command) -> CommandResult {
        match command {
            Command::Protect {
                agent,
                disk,
                process_server,
                master_target,
            } => self.protect(agent, disk, process_server, master_target),
            Command::Unprotect { disk, keep_replica } => self.unprotect(disk, keep_replica),
            Command::Settings { disk, change } => self.settings(disk, change),
        }
    }

    fn known_disk(&self, disk: &DiskId) -> Result<&ProtectionRecord, CommandError> {
        self.protections.get(disk).ok_or_else(|| {
            CommandError::unknown(format!(
                "no disk {disk} is known: `haven status` lists the disks agents registered"
            ))
        })
    }

    fn check_component(&self, id: &ComponentId, role: Role) -> Result<(), CommandError> {
        match self.components.get(id) {
            Some(c) if c.record.role == role => Ok(()),
            Some(c) => Err(CommandError::invalid(format!(
                "{id} is a {}, not a {}",
                c.record.role.name(),
                role.name()
            ))),
            None => Err(CommandError::unknown(format!(
                "no {} {id} is registered: `haven components` lists them",
                role.name()
            ))),
        }
    }

    fn protect(
        &mut self,
        agent: ComponentId,
        disk: DiskId,
        ps: Option<ComponentId>,
        mt: Option<ComponentId>,
    ) -> CommandResult {
        self.check_component(&agent, Role::Agent)?;
        let p = self.protections.get(&disk).ok_or_else(|| {
            let disks = self.components[&agent]
                .record
                .reg
                .disks
                .iter()
                .map(|d| d.disk.to_string())
                .collect::<Vec<_>>();
            CommandError::unknown(format!(
                "agent {agent} has no disk {disk} (its disks: {})",
                if disks.is_empty() {
                    "none".to_string()
                } else {
                    disks.join(", ")
                }
            ))
        })?;
        if p.agent != agent {
            return Err(CommandError::refused(format!(
                "disk {disk} belongs to agent {}, not {agent}",
                p.agent
            )));
        }
        if let Some(ps) = &ps {
            self.check_component(ps, Role::ProcessServer)?;
        }
        if let Some(mt) = &mt {
            self.check_component(mt, Role::MasterTarget)?;
        }
        match p.state {
            ProtectionState::Protected => {
                let moved = ps
                    .as_ref()
                    .is_some_and(|x| p.process_server.as_ref() != Some(x))
                    || mt
                        .as_ref()
                        .is_some_and(|x| p.master_target.as_ref() != Some(x));
                if moved {
                    return Err(CommandError::refused(format!(
                        "disk {disk} is already protected{}; moving a protection is not \
                         supported yet: unprotect it first",
                        self.placement_text(&disk)
                    )));
                }
                return Ok(format!(
                    "disk {disk} is already protected{}",
                    self.placement_text(&disk)
                ));
            }
            ProtectionState::UnprotectedKeptReplica => {
                return Err(CommandError::refused(format!(
                    "the replica of disk {disk} from its last protection is kept on master \
                     target {}; remove it first with `haven unprotect {disk}` (without \
                     --keep-replica)",
                    p.master_target.as_ref().map_or("?", |m| m.as_str())
                )));
            }
            ProtectionState::Unprotected if p.master_target.is_some() => {
                return Err(CommandError::refused(format!(
                    "the replica of disk {disk} is still being removed from master target {}; \
                     try again once it is online and done",
                    p.master_target.as_ref().map_or("?", |m| m.as_str())
                )));
            }
            ProtectionState::Unprotected => {}
        }
        let p = self.protections.get_mut(&disk).expect("checked");
        if ps.is_some() {
            p.pinned_process_server = ps;
        }
        if mt.is_some() {
            p.pinned_master_target = mt;
        }
        self.start_protection(&disk);
        Ok(format!(
            "disk {disk} is protected{}",
            self.placement_text(&disk)
        ))
    }

    /// Makes a known disk protected under a new epoch and places it (persisted with the input).
    pub(super) fn start_protection(&mut self, disk: &DiskId) {
        let p = self.protections.get_mut(disk).expect("known disk");
        p.epoch = Epoch(p.epoch.0 + 1);
        p.state = ProtectionState::Protected;
        p.process_server = None;
        p.master_target = None;
        let text = format!("disk {disk} is protected (epoch {})", p.epoch.0);
        self.place(disk);
        self.event("info", text);
        self.save_protection(disk);
    }

    fn placement_text(&self, disk: &DiskId) -> String {
        let p = &self.protections[disk];
        let name = |c: &Option<ComponentId>| {
            c.as_ref()
                .map_or("none online yet".to_string(), |c| c.to_string())
        };
        format!(
            " (epoch {}, process server {}, master target {})",
            p.epoch.0,
            name(&p.process_server),
            name(&p.master_target)
        )
    }

    fn unprotect(&mut self, disk: DiskId, keep_replica: bool) -> CommandResult {
        let p = self.known_disk(&disk)?;
        if p.state != ProtectionState::Protected {
            return Ok(format!("disk {disk} is already {}", p.state.name()));
        }
        let p = self.protections.get_mut(&disk).expect("checked");
        p.process_server = None;
        let text = match (&p.master_target, keep_replica) {
            (Some(mt), true) => {
                p.state = ProtectionState::UnprotectedKeptReplica;
                format!(
                    "disk {disk} is unprotected; its replica is kept on master target {mt} \
                     (its points stay listed)"
                )
            }
            (Some(mt), false) => {
                p.state = ProtectionState::Unprotected;
                format!(
                    "disk {disk} is unprotected; its replica is being removed from master \
                     target {mt}"
                )
            }
            (None, _) => {
                p.state = ProtectionState::Unprotected;
                format!("disk {disk} is unprotected (it had no replica yet)")
            }
        };
        self.event("info", text.clone());
        self.save_protection(&disk);
        Ok(text)
    }

    fn settings(&mut self, disk: DiskId, change: PolicyChange) -> CommandResult {
        self.known_disk(&disk)?;
        change.validate()?;
        let p = self.protections.get_mut(&disk).expect("checked");
        let policy = &mut p.policy;
        if let Some(v) = change.rpo_threshold_ms {
            policy.rpo_threshold_ms = v;
        }
        if change.batch_bytes_max.is_some() {
            policy.batch_bytes_max = change.batch_bytes_max;
        }
        if change.batch_delay_ms.is_some() {
            policy.batch_delay_ms = change.batch_delay_ms;
        }
        let text = format!(
            "disk {disk}: rpo_threshold {} ms, batch_bytes_max {}, batch_delay {}",
            policy.rpo_threshold_ms,
            policy
                .batch_bytes_max
                .map_or("agent default".into(), |b| format!("{b} bytes")),
            policy
                .batch_delay_ms
                .map_or("agent default".into(), |d| format!("{d} ms")),
        );
        self.event("info", format!("settings changed: {text}"));
        self.save_protection(&disk);
        Ok(text)
    }

    /// A master target's heartbeat no longer lists a replica being removed: it is gone.
    pub(super) fn retire_done(&mut self, mt: &ComponentId, stats: &MasterTargetStats) {
        let done: Vec<DiskId> = self
            .protections
            .iter()
            .filter(|(disk, p)| {
                p.state == ProtectionState::Unprotected
                    && p.master_target.as_ref() == Some(mt)
                    && !stats.replicas.iter().any(|r| &r.disk == *disk)
            })
            .map(|(d, _)| d.clone())
            .collect();
        for disk in done {
            self.protections
                .get_mut(&disk)
                .expect("listed")
                .master_target = None;
            self.event(
                "info",
                format!("the replica of disk {disk} is removed from master target {mt}"),
            );
            self.save_protection(&disk);
        }
    }
}

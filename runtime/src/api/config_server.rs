//! The configuration server's REST API (see docs/api.md).
//!
//! - `GET /api/status` — components, disks (state, placement, policy, progress, RPO), events
//! - `GET /api/components` — the registered components
//! - `GET /api/disks/{disk}/points` — the disk's recovery points, from its master target
//! - `POST /api/protect` `{"agent", "disk", "process_server"?, "master_target"?}`
//! - `POST /api/unprotect` `{"disk", "keep_replica"?}`
//! - `POST /api/disks/{disk}/settings` — a `PolicyChange` in base units
//!
//! Reads come from the driver's last status snapshot; commands go to the core through the
//! driver and are answered once their changes are durable: 200 `{"result": text}`, or 400
//! (invalid), 404 (unknown) or 409 (refused) with `{"error": text}`.

use super::segments;
use crate::drivers::config_server::CsClient;
use crate::http::{self, Handler, Request, Response};
use haven_core::config_server::{Command, CommandErrorKind, CommandResult, PolicyChange};
use haven_core::ids::{ComponentId, DiskId};
use serde::Deserialize;

pub struct CsApi {
    pub cs: CsClient,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProtectBody {
    agent: ComponentId,
    disk: DiskId,
    #[serde(default)]
    process_server: Option<ComponentId>,
    #[serde(default)]
    master_target: Option<ComponentId>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnprotectBody {
    disk: DiskId,
    #[serde(default)]
    keep_replica: bool,
}

impl Handler for CsApi {
    async fn handle(&self, req: Request) -> Response {
        let segs = segments(&req.path);
        match (req.method.as_str(), segs.as_slice()) {
            ("GET", ["api", "status"]) => Response::json(200, &*self.cs.status()),
            ("GET", ["api", "components"]) => Response::json(200, &self.cs.status().components),
            ("GET", ["api", "disks", disk, "points"]) => self.points(disk).await,
            ("POST", ["api", "protect"]) => match body::<ProtectBody>(&req) {
                Ok(b) => {
                    let cmd = Command::Protect {
                        agent: b.agent,
                        disk: b.disk,
                        process_server: b.process_server,
                        master_target: b.master_target,
                    };
                    answer(self.cs.command(cmd).await)
                }
                Err(r) => r,
            },
            ("POST", ["api", "unprotect"]) => match body::<UnprotectBody>(&req) {
                Ok(b) => {
                    let cmd = Command::Unprotect {
                        disk: b.disk,
                        keep_replica: b.keep_replica,
                    };
                    answer(self.cs.command(cmd).await)
                }
                Err(r) => r,
            },
            ("POST", ["api", "disks", disk, "settings"]) => {
                let disk = match DiskId::new(*disk) {
                    Ok(d) => d,
                    Err(e) => return Response::error(400, &e.to_string()),
                };
                match body::<PolicyChange>(&req) {
                    Ok(change) => answer(self.cs.command(Command::Settings { disk, change }).await),
                    Err(r) => r,
                }
            }
            (_, ["api", "status" | "components"]) | (_, ["api", "disks", _, "points"]) => {
                Response::error(405, "use GET for this resource; see docs/api.md")
            }
            (_, ["api", "protect" | "unprotect"]) | (_, ["api", "disks", _, "settings"]) => {
                Response::error(405, "use POST for this resource; see docs/api.md")
            }
            _ => Response::error(404, "no such resource; see docs/api.md"),
        }
    }
}

/// Decodes a JSON body; the error response names what is wrong with it.
fn body<T: serde::de::DeserializeOwned>(req: &Request) -> Result<T, Response> {
    serde_json::from_slice(&req.body).map_err(|e| {
        Response::error(
            400,
            &format!("request body is not the expected JSON: {e}; see docs/api.md"),
        )
    })
}

fn answer(result: CommandResult) -> Response {
    match result {
        Ok(text) => Response::json(200, &serde_json::json!({ "result": text })),
        Err(e) => {
            let status = match e.kind {
                CommandErrorKind::Invalid => 400,
                CommandErrorKind::Unknown => 404,
                CommandErrorKind::Refused => 409,
            };
            Response::error(status, &e.message)
        }
    }
}

impl CsApi {
    async fn points(&self, disk: &str) -> Response {
        let disk = match DiskId::new(disk) {
            Ok(d) => d,
            Err(e) => return Response::error(400, &e.to_string()),
        };
        let api = {
            let status = self.cs.status();
            match status.disks.iter().find(|d| d.disk == disk) {
                Some(d) => d.master_target_api.clone(),
                None => {
                    return Response::error(
                        404,
                        &format!("no disk {disk} is known; see `haven status`"),
                    )
                }
            }
        };
        let Some(api) = api.filter(|a| !a.is_empty()) else {
            return Response::error(
                503,
                &format!("disk {disk} has no master target with an API yet"),
            );
        };
        match http::get_json::<serde_json::Value>(&api, &format!("/replicas/{disk}/points")).await {
            Ok(v) => Response::json(200, &v),
            Err(e) => Response::error(502, &format!("master target at {api}: {e}")),
        }
    }
}

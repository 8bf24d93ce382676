//! The configuration server's REST API (see docs/api.md).
//!
//! - `GET /api/status` — components, protected disks (source and replica progress, RPO), events
//! - `GET /api/disks/{disk}/points` — the disk's recovery points, from its master target

use super::segments;
use crate::http::{self, Handler, Request, Response};
use haven_core::config_server::ConfigServer;
use haven_core::ids::DiskId;
use std::sync::{Arc, Mutex};

pub struct CsApi {
    pub core: Arc<Mutex<ConfigServer>>,
}

impl Handler for CsApi {
    async fn handle(&self, req: Request) -> Response {
        if req.method != "GET" {
            return Response::error(405, "only GET is supported in this version of the API");
        }
        let segs = segments(&req.path);
        match segs.as_slice() {
            ["api", "status"] => {
                let status = self.core.lock().expect("core lock").status();
                Response::json(200, &status)
            }
            ["api", "disks", disk, "points"] => self.points(disk).await,
            _ => Response::error(404, "no such resource; see docs/api.md"),
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
            let status = self.core.lock().expect("core lock").status();
            match status.disks.iter().find(|d| d.disk == disk) {
                Some(d) => d.master_target_api.clone(),
                None => {
                    return Response::error(
                        404,
                        &format!("disk {disk} is not protected; see `haven status`"),
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

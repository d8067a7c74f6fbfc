//! The admin API's actions (POST, parameters in the query string; answers are JSON
//! `{"done": "..."}` or `{"error": "..."}`), carried out by the core (`Host::admin`):
//! - `/api/groups/reset?topic=T&group=G&to=earliest|latest|<id>`: the group starts again
//!   there (what it held is let go of; the first delivery after carries `prev` 0).
//! - `/api/groups/drop?topic=T&group=G`: its members get `not_subscribed`; the group is gone.
//! - `/api/topics/redrive?topic=T`: copies the dead letters of `T.dlq` back into `T`.
//! - `/api/connections/disconnect?id=N`: closes client connection N (close code 1008).
//! - `/api/groups/pause?topic=T&group=G&paused=true|false`: pauses (resumes) deliveries of a
//!   group; without `group`, of every group of the topic.
//! - `/api/topics/publishes?topic=T&refused=true|false`: refuses (accepts again) publishes.
//!
//! Pauses and refusals hold on the node that carries them out while it runs (in a cluster,
//! send them to the shard's leader; a restart or a new leader starts without them).
//!
//! 404: no such topic, group or connection; 409: in a cluster, this node does not lead the
//! shard (ask the leader); 503: the node cannot do it now.

use crate::http::{Context, Request};
use ferry_core::ids::ConnId;
use ferry_core::node::admin::{AdminAction, AdminRefusal};
use ferry_core::protocol::StartFrom;
use serde_json::{json, Value};

/// Runs the action `request` names: its JSON answer, or (HTTP status, why).
pub fn run(request: &Request, context: &mut Context<'_>) -> Result<Value, (u16, String)> {
    let action = match request.path.as_str() {
        "/api/groups/reset" => {
            let to = match text(request, "to")? {
                "earliest" => StartFrom::Earliest,
                "latest" => StartFrom::Latest,
                other => StartFrom::Id(other.parse().map_err(|_| (400, format!("parameter 'to' is earliest, latest or an id, not '{other}'")))?),
            };
            AdminAction::ResetGroup { topic: text(request, "topic")?.to_string(), group: text(request, "group")?.to_string(), to }
        }
        "/api/groups/drop" => AdminAction::DropGroup { topic: text(request, "topic")?.to_string(), group: text(request, "group")?.to_string() },
        "/api/topics/redrive" => AdminAction::Redrive { topic: text(request, "topic")?.to_string() },
        "/api/groups/pause" => {
            AdminAction::PauseDeliveries { topic: text(request, "topic")?.to_string(), group: request.param("group").map(str::to_string), paused: flag(request, "paused")? }
        }
        "/api/topics/publishes" => AdminAction::RefusePublishes { topic: text(request, "topic")?.to_string(), refused: flag(request, "refused")? },
        "/api/connections/disconnect" => {
            let id = text(request, "id")?;
            AdminAction::Disconnect { conn: ConnId(id.parse().map_err(|_| (400, format!("parameter 'id' must be a connection id, not '{id}'")))?) }
        }
        _ => return Err((404, format!("no admin action at POST {}", request.path))),
    };
    tracing::info!("admin action: {action:?}");
    match context.host.admin(context.now_ns, &action) {
        Ok(done) => Ok(json!({ "done": done })),
        Err(AdminRefusal::NotFound(why)) => Err((404, why)),
        Err(AdminRefusal::NotLeader(why)) => Err((409, why)),
        Err(AdminRefusal::Unavailable(why)) => Err((503, why)),
    }
}

/// Query parameter `name`; its absence is a 400 naming it.
fn text<'a>(request: &'a Request, name: &str) -> Result<&'a str, (u16, String)> {
    request.param(name).ok_or_else(|| (400, format!("parameter '{name}' is required")))
}

/// Query parameter `name` as `true` or `false`.
fn flag(request: &Request, name: &str) -> Result<bool, (u16, String)> {
    match text(request, name)? {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err((400, format!("parameter '{name}' is true or false, not '{other}'"))),
    }
}

//! The admin API's actions (POST, parameters in the query string; answers are JSON):
//! - `/api/connections/disconnect?id=N`: closes client connection N (close code 1008).

use crate::http::{Context, Request};
use ferry_core::ids::ConnId;
use serde_json::{json, Value};

/// Runs the action `request` names: its JSON answer, or (HTTP status, why).
pub fn run(request: &Request, context: &mut Context<'_>) -> Result<Value, (u16, String)> {
    match request.path.as_str() {
        "/api/connections/disconnect" => {
            let id: u64 = number(request, "id")?;
            let conn = ConnId(id);
            if !context.host.connections_view().iter().any(|view| view.conn == conn) {
                return Err((404, format!("no connection {id}")));
            }
            context.disconnects.push(conn);
            Ok(json!({ "disconnected": id }))
        }
        _ => Err((404, format!("no admin action at POST {}", request.path))),
    }
}

/// Query parameter `name` as a number; its absence or another value is a 400 naming it.
fn number(request: &Request, name: &str) -> Result<u64, (u16, String)> {
    let text = request.param(name).ok_or_else(|| (400, format!("parameter '{name}' is required")))?;
    text.parse().map_err(|_| (400, format!("parameter '{name}' must be a number, not '{text}'")))
}

//! The agent API over HTTP: thin handlers under [`AGENT_API_PREFIX`], bearer-token auth,
//! JSON errors ([`nimbus_agent_api::AgentErrorBody`]) with stable codes.

mod cold;
mod console;
mod disk_export;
mod firewall;
mod migration;
mod snapshot_move;
mod snapshots;
mod vms;

use crate::agent::Agent;
use crate::error::Error;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post, put};
use axum::Router;
use nimbus_agent_api::AGENT_API_PREFIX;

/// The agent's routes, ready to serve (no socket needed: tests call it directly).
pub fn router(agent: Agent) -> Router {
    // The benchmark's stand-in (see `crate::fake_vms`) answers a VM's lifecycle instead of
    // QEMU; every other route stays the real one.
    let lifecycle = match crate::fake_vms::active() {
        Some(_) => crate::fake_vms::routes(),
        None => vm_lifecycle_routes(),
    };
    let api = Router::new()
        .route("/host", get(vms::host))
        .route("/firewall", axum::routing::put(firewall::set))
        .merge(lifecycle)
        .route("/vms/{id}/exec", post(vms::exec))
        .route("/vms/{id}/console", get(console::websocket))
        .route("/vms/{id}/console/log", get(console::log))
        .route("/vms/{id}/migration", get(migration::progress))
        .route("/vms/{id}/migration/incoming", post(migration::incoming))
        .route("/vms/{id}/migration/start", post(migration::start))
        .route("/vms/{id}/migration/cancel", post(migration::cancel))
        .route("/vms/{id}/snapshots", post(snapshots::take))
        .route("/vms/{id}/snapshots/{sid}", delete(snapshots::delete))
        .route(
            "/vms/{id}/snapshots/{sid}/restore",
            post(snapshots::restore),
        )
        .route("/vms/{id}/clone", post(snapshots::clone))
        .route("/vms/{id}/cold", put(cold::incoming))
        .route("/vms/{id}/disk", get(cold::export).put(cold::import))
        .route("/vms/{id}/disk/flattened", get(disk_export::export))
        .route(
            "/vms/{id}/snapshot-set",
            get(snapshot_move::inventory).put(snapshot_move::import),
        )
        .route("/vms/{id}/snapshot-set/export", post(snapshot_move::export))
        .route(
            "/chunks/missing",
            // A digest list of a large guest's memory is bigger than the default limit.
            post(snapshot_move::missing).layer(axum::extract::DefaultBodyLimit::max(64 << 20)),
        )
        .fallback(|| async { Error::NoRoute })
        .route_layer(middleware::from_fn_with_state(agent.clone(), auth))
        .with_state(agent);
    Router::new().nest(AGENT_API_PREFIX, api)
}

/// Define, start, stop, reboot, delete, show and list of the VMs run by QEMU.
fn vm_lifecycle_routes() -> Router<Agent> {
    Router::new()
        .route("/vms", get(vms::list))
        .route(
            "/vms/{id}",
            get(vms::show).put(vms::define).delete(vms::delete),
        )
        .route("/vms/{id}/start", post(vms::start))
        .route("/vms/{id}/stop", post(vms::stop))
        .route("/vms/{id}/reboot", post(vms::reboot))
}

/// Rejects requests without `Authorization: Bearer <token>`.
async fn auth(State(agent): State<Agent>, req: Request, next: Next) -> Result<Response, Error> {
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Over TLS the listener let only the controller's certificate in; without TLS (tests)
    // the token is the credential.
    if let Some(token) = agent.token() {
        if !constant_time_eq(presented.as_bytes(), token.as_bytes()) {
            return Err(Error::Unauthorized);
        }
    }
    Ok(next.run(req).await)
}

/// Compares secrets without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `axum::Json` whose rejection is the agent's JSON error.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(Error))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Path` whose rejection is the agent's JSON error.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Error))]
pub struct Path<T>(pub T);

/// `axum::extract::Query` whose rejection is the agent's JSON error.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Error))]
pub struct Query<T>(pub T);

impl From<QueryRejection> for Error {
    fn from(r: QueryRejection) -> Self {
        Error::BadRequest(r.body_text())
    }
}

impl From<JsonRejection> for Error {
    fn from(r: JsonRejection) -> Self {
        Error::BadRequest(r.body_text())
    }
}

impl From<PathRejection> for Error {
    fn from(r: PathRejection) -> Self {
        Error::BadRequest(r.body_text())
    }
}

#[cfg(test)]
mod tests;

//! `/v1/hosts` and `/v1/orphans`.

use super::error::{ApiPath, ApiQuery};
use super::paging::{page_request, Paged};
use super::ApiError;
use crate::app::{App, Caller};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use nimbus_api::{
    CreateJoinToken, ErrorBody, EvacuateResult, HostView, JoinTokenView, OrphanView, PageParams,
};

/// Lists hosts with capacity and allocation (admin).
#[utoipa::path(get, path = "/v1/hosts", tag = "hosts", params(PageParams), responses((status = 200, body = [HostView]), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageParams>,
) -> Result<Paged<HostView>, ApiError> {
    caller.require_admin()?;
    let page = page_request("hosts", &q)?;
    Ok(Paged::new("hosts", app.list_hosts_page(&page).await?))
}

/// Shows a host (admin).
#[utoipa::path(get, path = "/v1/hosts/{host}", tag = "hosts",
    responses((status = 200, body = HostView), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(app): State<App>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<HostView>, ApiError> {
    caller.require_admin()?;
    Ok(Json(app.get_host(&name).await?))
}

/// A one-time token a new host enrols with: `nimbus agent --join TOKEN` (admin).
#[utoipa::path(post, path = "/v1/hosts/join-tokens", tag = "hosts", request_body = CreateJoinToken,
    responses((status = 201, body = JoinTokenView), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn create_join_token(
    State(app): State<App>,
    caller: Caller,
    super::error::ApiJson(req): super::error::ApiJson<CreateJoinToken>,
) -> Result<(StatusCode, Json<JoinTokenView>), ApiError> {
    let token = app.create_join_token(&caller, req.expires_in_secs).await?;
    Ok((StatusCode::CREATED, Json(token)))
}

/// Removes a host without instances and revokes its certificate: its agent is refused from
/// then on (admin).
#[utoipa::path(delete, path = "/v1/hosts/{host}", tag = "hosts",
    params(("host" = String, Path, description = "Host name")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn remove(
    State(app): State<App>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    app.remove_host(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Returns a host to the pool (admin).
#[utoipa::path(post, path = "/v1/hosts/{host}/enable", tag = "hosts",
    responses((status = 200, body = HostView), (status = 404, body = ErrorBody)))]
pub async fn enable(
    State(app): State<App>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<HostView>, ApiError> {
    caller.require_admin()?;
    Ok(Json(app.set_host_enabled(&name, true).await?))
}

/// Takes a host out of placement; its VMs keep running (admin).
#[utoipa::path(post, path = "/v1/hosts/{host}/disable", tag = "hosts",
    responses((status = 200, body = HostView), (status = 404, body = ErrorBody)))]
pub async fn disable(
    State(app): State<App>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<HostView>, ApiError> {
    caller.require_admin()?;
    Ok(Json(app.set_host_enabled(&name, false).await?))
}

/// Filter of the orphan list.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct OrphanQuery {
    /// Only this host's orphans (default: every host's).
    pub host: Option<String>,
}

/// Lists orphans: VMs hosts run that the store does not account for; nimbus leaves them
/// running (admin).
#[utoipa::path(get, path = "/v1/orphans", tag = "hosts", params(OrphanQuery, PageParams),
    responses((status = 200, body = [OrphanView]), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn orphans(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(q): ApiQuery<OrphanQuery>,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Paged<OrphanView>, ApiError> {
    caller.require_admin()?;
    let page = page_request("orphans", &p)?;
    let orphans = app.list_orphans(q.host.as_deref(), &page).await?;
    Ok(Paged::new("orphans", orphans))
}

/// Deletes an orphan VM of a host: its QEMU, its files, and its disk unless its instance
/// may use that disk from another host (admin).
#[utoipa::path(delete, path = "/v1/hosts/{host}/orphans/{vm}", tag = "hosts",
    params(("host" = String, Path, description = "host name"), ("vm" = uuid::Uuid, Path, description = "the orphan VM's id")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_orphan(
    State(app): State<App>,
    caller: Caller,
    ApiPath((host, vm)): ApiPath<(String, uuid::Uuid)>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    app.delete_orphan(&host, vm).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Restarts the instances of a dead (down) host on other hosts, HA or not, where their disk
/// is on shared storage (admin).
#[utoipa::path(post, path = "/v1/hosts/{host}/evacuate", tag = "hosts",
    responses((status = 202, body = EvacuateResult), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn evacuate(
    State(app): State<App>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<(StatusCode, Json<EvacuateResult>), ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        Json(app.evacuate_host(&caller, &name).await?),
    ))
}

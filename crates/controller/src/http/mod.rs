//! HTTP layer: thin handlers that parse, authenticate and call one `app/` function.

mod audit;
mod audit_log;
mod auth;
mod console;
mod controllers;
mod error;
mod flavors;
mod floating_ips;
mod groups;
mod ha;
mod hosts;
mod images;
mod instances;
mod internal;
mod keypairs;
mod metrics;
mod migrations;
mod networks;
pub mod openapi;
mod operations;
mod paging;
pub mod peer;
mod placement_groups;
mod projects;
mod secgroups;
mod snapshots;
mod tokens;
mod usage;

pub use error::ApiError;

use crate::app::App;
use axum::routing::{get, post};
use axum::Router;

/// Largest request body accepted (JSON bodies are small); larger ones get 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The whole API, ready to serve (tests call it without a socket).
pub fn router(app: App) -> Router {
    let v1 = Router::new()
        .route("/instances", get(instances::list).post(instances::create))
        .route(
            "/instances/{instance}",
            get(instances::show).delete(instances::delete),
        )
        .route("/instances/{instance}/start", post(instances::start))
        .route("/instances/{instance}/stop", post(instances::stop))
        .route("/instances/{instance}/reboot", post(instances::reboot))
        .route("/instances/{instance}/exec", post(instances::exec))
        .route("/instances/{instance}/migrate", post(migrations::migrate))
        .route("/migrations/{migration}", get(migrations::show))
        .route("/hosts/{host}/drain", post(migrations::drain))
        .route(
            "/instances/{instance}/console/log",
            get(instances::console_log),
        )
        .route("/instances/{instance}/console", get(console::attach))
        .route("/groups", get(groups::list).post(groups::create))
        .route(
            "/placement-groups",
            get(placement_groups::list).post(placement_groups::create),
        )
        .route(
            "/placement-groups/{group}",
            axum::routing::delete(placement_groups::delete),
        )
        .route(
            "/groups/{group}",
            get(groups::show)
                .patch(groups::update)
                .delete(groups::delete),
        )
        .route("/networks", get(networks::list).post(networks::create))
        .route(
            "/floating-ips",
            get(floating_ips::list).post(floating_ips::allocate),
        )
        .route(
            "/floating-ips/{address}",
            axum::routing::delete(floating_ips::release),
        )
        .route(
            "/floating-ips/{address}/attach",
            axum::routing::post(floating_ips::attach),
        )
        .route(
            "/floating-ips/{address}/detach",
            axum::routing::post(floating_ips::detach),
        )
        .route(
            "/networks/{network}",
            get(networks::show).delete(networks::delete),
        )
        .route("/secgroups", get(secgroups::list).post(secgroups::create))
        .route(
            "/secgroups/{secgroup}",
            get(secgroups::show).delete(secgroups::delete),
        )
        .route("/secgroups/{secgroup}/rules", post(secgroups::add_rule))
        .route(
            "/secgroups/{secgroup}/rules/{rule}",
            axum::routing::delete(secgroups::delete_rule),
        )
        .route(
            "/instances/{instance}/ha",
            axum::routing::put(ha::set_instance),
        )
        .route(
            "/instances/{instance}/secgroups",
            axum::routing::put(secgroups::set_instance),
        )
        .route("/flavors", get(flavors::list).post(flavors::create))
        .route(
            "/flavors/{flavor}",
            get(flavors::show).delete(flavors::delete),
        )
        .route("/images", get(images::list).post(images::import))
        .route("/images/{image}", get(images::show).delete(images::delete))
        .route("/images/{image}/upload", post(images::upload))
        .route("/images/{image}/upload-check", post(images::upload_check))
        .route("/images/{image}/from-instance", post(images::from_instance))
        .route("/keypairs", get(keypairs::list).post(keypairs::create))
        .route(
            "/keypairs/{keypair}",
            get(keypairs::show).delete(keypairs::delete),
        )
        .route("/controllers", get(controllers::list))
        .route("/hosts", get(hosts::list))
        .route("/hosts/join-tokens", post(hosts::create_join_token))
        .route("/hosts/{host}", get(hosts::show).delete(hosts::remove))
        .route("/hosts/{host}/enable", post(hosts::enable))
        .route("/hosts/{host}/disable", post(hosts::disable))
        .route("/orphans", get(hosts::orphans))
        .route(
            "/hosts/{host}/orphans/{vm}",
            axum::routing::delete(hosts::delete_orphan),
        )
        .route("/hosts/{host}/evacuate", post(hosts::evacuate))
        .route("/snapshots", get(snapshots::list).post(snapshots::create))
        .route(
            "/snapshots/{snapshot}",
            get(snapshots::show).delete(snapshots::delete),
        )
        .route("/snapshots/{snapshot}/restore", post(snapshots::restore))
        .route("/operations", get(operations::list))
        .route("/operations/{operation}", get(operations::show))
        .route("/operations/{operation}/cancel", post(operations::cancel))
        .route("/projects", get(projects::list).post(projects::create))
        .route(
            "/projects/{project}",
            get(projects::show).delete(projects::delete),
        )
        .route(
            "/projects/{project}/quota",
            get(projects::show_quota).put(projects::set_quota),
        )
        .route("/tokens", get(tokens::list).post(tokens::create))
        .route("/tokens/{token}", axum::routing::delete(tokens::revoke))
        .route("/audit", get(audit_log::list))
        .route("/usage", get(usage::report))
        .route("/internal/ca", get(internal::ca_certificate))
        .route("/internal/enrol", post(internal::enrol))
        .route("/internal/hosts/register", post(internal::register_host))
        .route("/internal/usage/samples", post(internal::usage_samples))
        .route("/internal/images/{digest}", get(internal::image_blob))
        .route(
            "/internal/peers/images/{digest}",
            get(internal::peer_image_blob),
        )
        .route(
            "/internal/peers/replicas/{vm}/{snapshot}",
            get(internal::peer_replica_inventory)
                .post(internal::peer_replica)
                // The list of chunks a peer lacks: as large as a manifest may be.
                .layer(axum::extract::DefaultBodyLimit::max(
                    crate::app::replicas::receive::MAX_MANIFEST as usize,
                )),
        )
        .route("/openapi.json", get(openapi::serve))
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            audit::record,
        ));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::serve))
        .fallback(error::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            error::panicked,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(app)
}

/// Liveness: the process serves requests and its database answers.
async fn healthz(
    axum::extract::State(app): axum::extract::State<App>,
) -> Result<&'static str, ApiError> {
    sqlx_ping(&app).await?;
    Ok("ok\n")
}

async fn sqlx_ping(app: &App) -> Result<(), ApiError> {
    app.store()
        .list_flavors()
        .await
        .map(|_| ())
        .map_err(|e| ApiError::from(crate::app::AppError::from(e)))
}

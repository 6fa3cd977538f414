//! The OpenAPI document of `/v1`. A committed copy lives in `docs/openapi.json`; a test fails
//! when it is stale.

use super::{
    audit_log, flavors, groups, hosts, images, instances, migrations, networks, operations,
    projects, secgroups, snapshots, tokens, usage,
};
use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "nimbus", description = "The nimbus IaaS cloud API. Every route needs `Authorization: Bearer <token>`; errors are `ErrorBody` with a stable `code`; long actions answer 202 with an operation. Every route takes `?project=P`: the project the call acts in (default: the token's; another project needs an admin token). Another project's resources answer 404. Readers may only read; members act in their own project; admins everywhere. Repeated authentication failures from one address answer 429 with `Retry-After`; bodies over 1 MiB answer 413. See docs/tenancy.md."),
    paths(
        instances::list, instances::create, instances::show, instances::delete,
        instances::start, instances::stop, instances::reboot, instances::exec, instances::console_log,
        flavors::list, flavors::create, flavors::show, flavors::delete,
        images::list, images::import, images::show, images::delete,
        hosts::list, hosts::show, hosts::enable, hosts::disable,
        operations::list, operations::show, operations::cancel,
        migrations::migrate, migrations::show, migrations::drain,
        snapshots::create, snapshots::list, snapshots::show, snapshots::restore, snapshots::delete,
        projects::list, projects::create, projects::show, projects::delete,
        projects::show_quota, projects::set_quota,
        tokens::list, tokens::create, tokens::revoke,
        audit_log::list,
        usage::report,
        groups::list, groups::create, groups::show, groups::update, groups::delete,
        networks::list, networks::create, networks::show, networks::delete,
        secgroups::list, secgroups::create, secgroups::show, secgroups::delete,
        secgroups::add_rule, secgroups::delete_rule, secgroups::set_instance,
    ),
    components(schemas(nimbus_api::SnapshotRestored, nimbus_api::SnapshotDeleted)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as pretty JSON (what `docs/openapi.json` holds).
pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// `GET /v1/openapi.json` (no auth: the API's description is public).
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    /// Fails when the committed document is stale; regenerate with
    /// `NIMBUS_UPDATE_OPENAPI=1 cargo test -p nimbus-controller openapi`.
    #[test]
    fn committed_openapi_document_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let current = super::document();
        if std::env::var_os("NIMBUS_UPDATE_OPENAPI").is_some() {
            std::fs::write(path, &current).expect("write docs/openapi.json");
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == current,
            "docs/openapi.json is stale: run NIMBUS_UPDATE_OPENAPI=1 cargo test -p nimbus-controller openapi"
        );
    }
}

//! The OpenAPI document of `/v1`. A committed copy lives in `docs/openapi.json`; a test fails
//! when it is stale.

use super::paging::PagedAnswers;
use super::{
    audit_log, controllers, flavors, floating_ips, groups, ha, hosts, images, instances, keypairs,
    migrations, networks, operations, placement_groups, projects, secgroups, snapshots, tokens,
    usage,
};
use axum::Json;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Required, ResponseBuilder};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "nimbus", description = "The nimbus IaaS cloud API. Every route needs `Authorization: Bearer <token>`; errors are `ErrorBody` with a stable `code`; long actions answer 202 with an operation. Every route takes `?project=P`: the project the call acts in (default: the token's; another project needs an admin token). Another project's resources answer 404. Readers may only read; members act in their own project; admins everywhere. Repeated authentication failures from one address answer 429 with `Retry-After`; bodies over 1 MiB answer 413 (except image uploads, which stream). See docs/tenancy.md."),
    paths(
        instances::list, instances::create, instances::show, instances::delete,
        instances::start, instances::stop, instances::reboot, instances::exec, instances::console_log,
        ha::set_instance,
        flavors::list, flavors::create, flavors::show, flavors::delete,
        images::list, images::import, images::upload, images::upload_check, images::from_instance,
        images::show, images::delete,
        keypairs::create, keypairs::list, keypairs::show, keypairs::delete,
        hosts::list, hosts::show, hosts::enable, hosts::disable, hosts::evacuate,
        hosts::create_join_token, hosts::remove,
        hosts::orphans, hosts::delete_orphan,
        controllers::list,
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
        floating_ips::list, floating_ips::allocate, floating_ips::attach, floating_ips::detach,
        floating_ips::release,
        placement_groups::list, placement_groups::create, placement_groups::delete,
        secgroups::list, secgroups::create, secgroups::show, secgroups::delete,
        secgroups::add_rule, secgroups::delete_rule, secgroups::set_instance,
    ),
    components(schemas(nimbus_api::SnapshotRestored, nimbus_api::SnapshotDeleted)),
    modifiers(&BearerAuth, &EdgeAnswers, &PagedAnswers),
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

/// What the edge answers on every route, declared on every operation so that generated
/// clients know them: 401 (no or a bad token), 403 (the token's role or project does not
/// allow it), 429 (too many failed authentications from the client's address); and every
/// `{parameter}` of a path declared as a path parameter (a string unless the handler says
/// more).
struct EdgeAnswers;

const EDGE_ANSWERS: &[(&str, &str)] = &[
    (
        "401",
        "No token, or one that is unknown, revoked or expired.",
    ),
    ("403", "The token's role or project does not allow this."),
    (
        "429",
        "Too many failed authentications from this address; see `Retry-After`.",
    ),
];

impl Modify for EdgeAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let names = path_parameters(path);
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                declare_edge_answers(op);
                declare_path_parameters(op, &names);
            }
        }
    }
}

/// The `{name}`s of a path template.
fn path_parameters(path: &str) -> Vec<String> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(str::to_string)
        .collect()
}

fn declare_edge_answers(op: &mut Operation) {
    for (status, text) in EDGE_ANSWERS {
        if op.responses.responses.contains_key(*status) {
            continue;
        }
        let body = ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build();
        let answer = ResponseBuilder::new()
            .description(*text)
            .content("application/json", body)
            .build();
        op.responses
            .responses
            .insert(status.to_string(), RefOr::T(answer));
    }
}

fn declare_path_parameters(op: &mut Operation, names: &[String]) {
    let params = op.parameters.get_or_insert_with(Vec::new);
    for name in names {
        let declared = params
            .iter()
            .any(|p| p.name == *name && p.parameter_in == ParameterIn::Path);
        if declared {
            continue;
        }
        params.push(
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some(format!("the {name}'s name or id")))
                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                .build(),
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
    use utoipa::OpenApi;

    /// A client generated from the document knows every answer of the edge and can fill
    /// every path parameter.
    #[test]
    fn every_operation_declares_edge_answers_and_path_parameters() {
        let doc = super::ApiDoc::openapi();
        let mut checked = 0;
        for (path, item) in &doc.paths.paths {
            let ops = [&item.get, &item.put, &item.post, &item.delete, &item.patch];
            for op in ops.into_iter().flatten() {
                for status in ["401", "403", "429"] {
                    assert!(
                        op.responses.responses.contains_key(status),
                        "{path} lacks {status}"
                    );
                }
                let declared: Vec<&str> = op
                    .parameters
                    .iter()
                    .flatten()
                    .filter(|p| p.parameter_in == super::ParameterIn::Path)
                    .map(|p| p.name.as_str())
                    .collect();
                for name in super::path_parameters(path) {
                    assert!(
                        declared.contains(&name.as_str()),
                        "{path}: {{{name}}} undeclared"
                    );
                }
                checked += 1;
            }
        }
        assert!(checked > 40, "only {checked} operations");
    }

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

//! The OpenAPI document, generated from the handlers and wire types so it cannot drift from them.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Ferry API", description = "Ferry's control-plane API: jobs, nodes, tokens and the agent protocol."),
    paths(
        super::health, super::metrics::metrics,
        super::jobs::submit, super::jobs::list, super::jobs::queue, super::jobs::show, super::jobs::wait, super::jobs::cancel, super::jobs::logs, super::jobs::diff, super::jobs::metrics,
        super::code::head, super::code::put, super::code::get,
        super::nodes::list, super::nodes::pools,
        super::series::query, super::series::metrics, super::usage::usage,
        super::sweeps::submit, super::sweeps::list, super::sweeps::show, super::sweeps::cancel,
        super::tokens::create, super::tokens::list, super::tokens::revoke, super::tokens::authority,
        super::agent::register, super::agent::work, super::agent::reports, super::agent::telemetry, super::agent::upload_log,
    ),
    modifiers(&BearerAuth),
    security(("token" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[utoipa::path(get, path = "/api/v1/openapi.json", responses((status = 200, description = "This document")))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

//! The OpenAPI document (generated from the handlers), health, readiness and the 404 answer.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::AppState;
use crate::problem::Problem;
use crate::registry;

/// The API, as OpenAPI 3.1. `crates/kiln-server/openapi.json` is this document, kept current
/// by a test.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "kiln server",
        description = "The component registry of a shared kiln server. Errors are \
                       `application/problem+json` with a stable `code`.",
        license(name = "Apache-2.0"),
    ),
    paths(
        registry::list_components,
        registry::show_component,
        registry::put_version,
        registry::show_version,
        registry::delete_version,
        registry::get_content,
        registry::put_tag,
        crate::blobs::missing,
        crate::blobs::put_blob,
        crate::blobs::get_blob,
        crate::blobs::put_tree,
        crate::runs::submit,
        crate::runs::list_runs,
        crate::runs::show_run,
        crate::runs::cancel_run,
        crate::runs::events,
        healthz,
        readyz,
    ),
    components(schemas(
        Problem,
        Health,
        registry::ComponentVersion,
        registry::ComponentSummary,
        registry::ComponentList,
        registry::ComponentDetail,
        registry::TagRequest,
        registry::TagState,
        crate::blobs::MissingRequest,
        crate::blobs::MissingResponse,
        crate::blobs::BlobStored,
        crate::runs::Submission,
        crate::runs::Submitted,
        crate::runs::RunState,
        crate::runs::StepState,
    )),
    modifiers(&BearerAuth),
    tags((name = "registry", description = "Components by name and version"),
         (name = "blobs", description = "Content by digest, uploaded before the runs that read it"),
         (name = "runs", description = "Pinned plans run by the server, their state and their events"),
         (name = "operations", description = "Health and readiness")),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from the server's token file; its scope (read, write, admin) \
                         decides what it may do. A server without tokens needs none.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document as pretty JSON, as committed.
pub fn openapi_document() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let mut text = doc
        .to_pretty_json()
        .expect("the OpenAPI document serialises");
    text.push('\n');
    text
}

pub(crate) async fn openapi_json() -> Response {
    let mut response = openapi_document().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// What health and readiness report.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or what is wrong.
    pub status: String,
    /// The database (`sqlite` or `postgres`).
    pub database: String,
    /// The store (`local` or `object`).
    pub store: String,
}

fn backend_name(state: &AppState) -> String {
    match state.db.backend() {
        crate::Backend::Sqlite => "sqlite".into(),
        crate::Backend::Postgres => "postgres".into(),
    }
}

fn store_name(state: &AppState) -> String {
    if state.store.local().is_some() {
        "local".into()
    } else {
        "object".into()
    }
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    description = "The process answers (it checks nothing else).",
    responses((status = 200, description = "Alive", body = Health)),
)]
pub(crate) async fn healthz(State(state): State<Arc<AppState>>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        database: backend_name(&state),
        store: store_name(&state),
    })
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    description = "The database and the store answer.",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "`unavailable`: what does not answer", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn readyz(State(state): State<Arc<AppState>>) -> Result<Json<Health>, Problem> {
    state
        .db
        .ping()
        .await
        .map_err(|e| Problem::unavailable(format!("the database does not answer: {e}")))?;
    // Any digest will do: the store is asked, and must answer yes or no.
    state
        .store
        .contains(&kiln_cas::Digest::of_bytes(b""))
        .await
        .map_err(|e| Problem::unavailable(format!("the store does not answer: {e}")))?;
    Ok(Json(Health {
        status: "ok".into(),
        database: backend_name(&state),
        store: store_name(&state),
    }))
}

pub(crate) async fn not_found(uri: Uri) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "no-route",
        "No such route",
        format!("this server has no route {}", uri.path()),
    )
}

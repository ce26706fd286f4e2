//! The component registry: `PUT` a version's bytes, list, show, download, tag, delete.
//!
//! An upload is streamed to a file under the state folder while it is hashed (blake3 for
//! the store, sha256 for OCI registries later) and counted against the size limit; only a
//! complete body that validates as a component of a world kiln runs
//! ([`crate::validate`]) is stored, and only then is the version recorded. A refused upload
//! leaves nothing in the store or the database. Versions never change: the same bytes again
//! answer 200, other bytes 409 with both digests. Tags move, and are resolved to a version
//! whenever a reference is.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use futures_util::StreamExt;
use kiln_cas::Digest;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tokio::io::AsyncWriteExt;
use utoipa::ToSchema;

use crate::auth::Scope;
use crate::db::{Inserted, VersionRow};
use crate::problem::Problem;
use crate::validate::Rejection;
use crate::{AppState, db};

type Shared = State<Arc<AppState>>;

/// The registry's routes.
pub(crate) fn routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route("/v1/components", get(list_components))
        .route("/v1/components/{name}", get(show_component))
        .route(
            "/v1/components/{name}/versions/{version}",
            put(put_version).get(show_version).delete(delete_version),
        )
        .route(
            "/v1/components/{name}/versions/{version}/content",
            get(get_content),
        )
        .route("/v1/components/{name}/tags/{tag}", put(put_tag))
}

/// One version of a component.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ComponentVersion {
    /// The component's name.
    pub name: String,
    /// The version.
    pub version: String,
    /// The tag this version was found by, when the request named a tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_from: Option<String>,
    /// `blake3:<hex>`: what a pinned plan names it by.
    pub digest: String,
    /// `sha256:<hex>` of the same bytes.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// `kiln-step` or `wasi-command`.
    pub world: String,
    /// Its top-level imports.
    pub imports: Vec<String>,
    /// Its top-level exports (the interface a step offers).
    pub exports: Vec<String>,
    /// Who uploaded it.
    pub uploaded_by: String,
    /// When (RFC 3339, UTC).
    pub uploaded_at: String,
    /// The tags on it now.
    pub tags: Vec<String>,
}

impl ComponentVersion {
    fn of(row: VersionRow, tags: &[db::TagRow]) -> Self {
        let list = |json: &str| serde_json::from_str::<Vec<String>>(json).unwrap_or_default();
        Self {
            tags: tags
                .iter()
                .filter(|t| t.version == row.version)
                .map(|t| t.tag.clone())
                .collect(),
            imports: list(&row.imports),
            exports: list(&row.exports),
            name: row.name,
            version: row.version,
            resolved_from: None,
            digest: row.digest,
            sha256: row.sha256,
            size: u64::try_from(row.size).unwrap_or(0),
            world: row.world,
            uploaded_by: row.uploaded_by,
            uploaded_at: row.uploaded_at,
        }
    }
}

/// A component, in a list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ComponentSummary {
    /// Its name.
    pub name: String,
    /// Its versions, oldest first.
    pub versions: Vec<String>,
    /// Its tags and the versions they name.
    pub tags: BTreeMap<String, String>,
}

/// Every component.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ComponentList {
    /// By name.
    pub components: Vec<ComponentSummary>,
}

/// A component with all its versions.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ComponentDetail {
    /// Its name.
    pub name: String,
    /// Its versions, oldest first.
    pub versions: Vec<ComponentVersion>,
    /// Its tags and the versions they name.
    pub tags: BTreeMap<String, String>,
}

/// Where a tag should point.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TagRequest {
    /// An existing version.
    pub version: String,
}

/// A tag, where it points now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TagState {
    /// The component.
    pub name: String,
    /// The tag.
    pub tag: String,
    /// The version it names.
    pub version: String,
    /// That version's digest.
    pub digest: String,
    /// The version it named before, if it was there already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn check_name(name: &str) -> Result<(), Problem> {
    kiln_spec::check_component_name(name).map_err(Problem::invalid_name)
}

/// A version or a tag, resolved to a version row; `None` when there is none.
async fn resolve(
    state: &AppState,
    name: &str,
    reference: &str,
) -> Result<Option<(VersionRow, Option<String>)>, Problem> {
    check_name(name)?;
    if kiln_spec::check_component_version(reference).is_ok() {
        return Ok(state.db.version(name, reference).await?.map(|r| (r, None)));
    }
    kiln_spec::check_component_tag(reference).map_err(|_| {
        Problem::invalid_name(format!(
            "`{reference}` is neither a version (`1.2.0`) nor a tag (`stable`)"
        ))
    })?;
    let Some(version) = state.db.tag(name, reference).await? else {
        return Ok(None);
    };
    Ok(state
        .db
        .version(name, &version)
        .await?
        .map(|r| (r, Some(reference.to_owned()))))
}

fn no_such(name: &str, reference: &str) -> Problem {
    Problem::not_found(format!(
        "the registry has no component `{name}@{reference}`"
    ))
}

/// A body received into a file beside the store: its bytes' digests and size.
pub(crate) struct Received {
    pub(crate) path: tempfile::TempPath,
    pub(crate) digest: Digest,
    pub(crate) sha256: String,
    pub(crate) size: u64,
}

pub(crate) fn too_large(limit: u64) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too-large",
        "Too large",
        format!("the upload is larger than this server's limit of {limit} bytes"),
    )
    .with("limit", limit)
}

/// How much of a body over the limit is read and thrown away before the answer, so that a
/// client still sending gets the 413 rather than a broken connection.
const DRAIN_BYTES: u64 = 64 << 20;

/// Reads and discards up to [`DRAIN_BYTES`] more of a body.
pub(crate) async fn drain(stream: &mut axum::body::BodyDataStream) {
    let mut drained = 0u64;
    while drained < DRAIN_BYTES {
        match stream.next().await {
            Some(Ok(chunk)) => drained += chunk.len() as u64,
            _ => break,
        }
    }
}

/// Streams a body of at most `limit` bytes into a new file under the server's upload folder,
/// hashing it as it comes.
pub(crate) async fn receive(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    limit: u64,
) -> Result<Received, Problem> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Far beyond the limit: answered at once (the connection closes under the sender).
    if declared.is_some_and(|n| n > limit.saturating_add(DRAIN_BYTES)) {
        return Err(too_large(limit));
    }
    let mut stream = body.into_data_stream();
    if declared.is_some_and(|n| n > limit) {
        drain(&mut stream).await;
        return Err(too_large(limit));
    }
    let file = tempfile::Builder::new()
        .prefix("upload-")
        .tempfile_in(&state.tmp_dir)
        .map_err(|e| Problem::internal(format_args!("upload folder: {e}")))?;
    let (file, path) = file.into_parts();
    let mut file = tokio::fs::File::from_std(file);
    let mut blake = blake3::Hasher::new();
    let mut sha = sha2::Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "incomplete-body",
                "Incomplete body",
                format!("the upload ended early: {e}"),
            )
        })?;
        size += chunk.len() as u64;
        if size > limit {
            drop(file);
            drain(&mut stream).await;
            return Err(too_large(limit));
        }
        blake.update(&chunk);
        sha.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| Problem::internal(format_args!("writing the upload: {e}")))?;
    }
    file.flush()
        .await
        .map_err(|e| Problem::internal(format_args!("writing the upload: {e}")))?;
    drop(file);
    Ok(Received {
        path,
        digest: Digest::from(blake),
        sha256: format!("sha256:{:x}", sha.finalize()),
        size,
    })
}

fn version_exists(name: &str, version: &str, existing: &str, uploaded: &Digest) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "version-exists",
        "Version exists",
        format!(
            "`{name}@{version}` is already {existing}; these bytes are {uploaded}. Versions never \
             change: publish these under a new version"
        ),
    )
    .with("existing_digest", existing)
    .with("uploaded_digest", uploaded.to_string())
}

#[utoipa::path(
    put,
    path = "/v1/components/{name}/versions/{version}",
    tag = "registry",
    description = "Uploads a component version: the body is the component's bytes, streamed, \
                   hashed and validated before anything is stored. Versions are immutable.",
    params(
        ("name" = String, Path, description = "The component's name (lowercase letters, digits, `_`, `-`)"),
        ("version" = String, Path, description = "The version (`1.2.0`)"),
    ),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "The component"),
    responses(
        (status = 201, description = "Stored as a new version", body = ComponentVersion),
        (status = 200, description = "This version already holds these bytes", body = ComponentVersion),
        (status = 400, description = "`invalid-name` or `incomplete-body`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: the token cannot write", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`version-exists` with other bytes: both digests given", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`too-large`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`not-wasm`, `not-a-component`, `malformed-component` or `unknown-world`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["write"]), ()),
)]
pub(crate) async fn put_version(
    State(state): Shared,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let answer = upload(&state, &name, &version, &headers, body).await;
    let outcome = match &answer {
        Ok((StatusCode::CREATED, _)) => "stored",
        Ok(_) => "unchanged",
        Err(problem) => problem.code,
    };
    state.metrics.upload(outcome);
    match answer {
        Ok((status, version)) => {
            let location = format!(
                "/v1/components/{}/versions/{}",
                version.name, version.version
            );
            let mut response = (status, Json(version)).into_response();
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            response
        }
        Err(problem) => problem.into_response(),
    }
}

async fn upload(
    state: &Arc<AppState>,
    name: &str,
    version: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<(StatusCode, ComponentVersion), Problem> {
    let caller = state.tokens.authorize(headers, Scope::Write)?;
    check_name(name)?;
    kiln_spec::check_component_version(version).map_err(Problem::invalid_name)?;
    let received = receive(state, headers, body, state.max_upload_bytes).await?;
    let bytes = tokio::fs::read(&received.path)
        .await
        .map_err(|e| Problem::internal(format_args!("reading the upload back: {e}")))?;
    let inspected = tokio::task::spawn_blocking(move || crate::validate::inspect(&bytes))
        .await
        .map_err(Problem::internal)?
        .map_err(|rejection: Rejection| {
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                rejection.code(),
                "Not a kiln component",
                rejection.detail(),
            )
        })?;
    let existing_tags = || async { state.db.tags(name).await.map_err(Problem::from) };
    if let Some(existing) = state.db.version(name, version).await? {
        if existing.digest != received.digest.to_string() {
            return Err(version_exists(
                name,
                version,
                &existing.digest,
                &received.digest,
            ));
        }
        let tags = existing_tags().await?;
        return Ok((StatusCode::OK, ComponentVersion::of(existing, &tags)));
    }
    let stored = state.store.put_file_owned(&received.path).await?;
    if stored != received.digest {
        return Err(Problem::internal(format_args!(
            "the store kept the upload as {stored}, but it arrived as {}",
            received.digest
        )));
    }
    let row = VersionRow {
        name: name.to_owned(),
        version: version.to_owned(),
        digest: received.digest.to_string(),
        sha256: received.sha256,
        size: i64::try_from(received.size).unwrap_or(i64::MAX),
        world: inspected.world.name().to_owned(),
        imports: serde_json::to_string(&inspected.imports).unwrap_or_default(),
        exports: serde_json::to_string(&inspected.exports).unwrap_or_default(),
        uploaded_by: caller.name,
        uploaded_at: now(),
    };
    let status = match state.db.insert_version(&row).await? {
        Inserted::New => {
            tracing::info!(component = %name, %version, digest = %row.digest, world = %row.world, by = %row.uploaded_by, "component version stored");
            if let Some(hook) = state.on_component.clone() {
                let digest = received.digest;
                // After the answer: nothing in the request path waits for a compiler.
                tokio::spawn(async move {
                    tokio::task::yield_now().await;
                    hook(digest);
                });
            }
            StatusCode::CREATED
        }
        // Another upload of this version won the race.
        Inserted::Exists(other) if other.digest == row.digest => StatusCode::OK,
        Inserted::Exists(other) => {
            return Err(version_exists(
                name,
                version,
                &other.digest,
                &received.digest,
            ));
        }
    };
    let row = state.db.version(name, version).await?.unwrap_or(row);
    let tags = existing_tags().await?;
    Ok((status, ComponentVersion::of(row, &tags)))
}

#[utoipa::path(
    get,
    path = "/v1/components/{name}/versions/{version}",
    tag = "registry",
    description = "One version of a component; a tag (`stable`) in place of the version is \
                   resolved to the version it names now.",
    params(
        ("name" = String, Path, description = "The component's name"),
        ("version" = String, Path, description = "A version, or a tag"),
    ),
    responses(
        (status = 200, description = "The version", body = ComponentVersion),
        (status = 404, description = "`not-found`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]), ()),
)]
pub(crate) async fn show_version(
    State(state): Shared,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<ComponentVersion>, Problem> {
    state.tokens.authorize(&headers, Scope::Read)?;
    let (row, tag) = resolve(&state, &name, &version)
        .await?
        .ok_or_else(|| no_such(&name, &version))?;
    let tags = state.db.tags(&name).await?;
    let mut shown = ComponentVersion::of(row, &tags);
    shown.resolved_from = tag;
    Ok(Json(shown))
}

#[utoipa::path(
    get,
    path = "/v1/components/{name}/versions/{version}/content",
    tag = "registry",
    description = "The component's bytes, verified against their digest as they are read. \
                   The `ETag` is the digest; `If-None-Match` with it answers 304.",
    params(
        ("name" = String, Path, description = "The component's name"),
        ("version" = String, Path, description = "A version, or a tag"),
    ),
    responses(
        (status = 200, description = "The component", content_type = "application/wasm", body = Vec<u8>),
        (status = 304, description = "The client has these bytes"),
        (status = 404, description = "`not-found`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]), ()),
)]
pub(crate) async fn get_content(
    State(state): Shared,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    state.tokens.authorize(&headers, Scope::Read)?;
    let (row, _) = resolve(&state, &name, &version)
        .await?
        .ok_or_else(|| no_such(&name, &version))?;
    let digest: Digest = row
        .digest
        .parse()
        .map_err(|e| Problem::internal(format_args!("a stored digest: {e}")))?;
    crate::blobs::download(&state, &digest, &headers, "application/wasm").await
}

#[utoipa::path(
    delete,
    path = "/v1/components/{name}/versions/{version}",
    tag = "registry",
    description = "Deletes a version and the tags on it (admin). Its bytes stay in the store \
                   for the runs that used them.",
    params(
        ("name" = String, Path, description = "The component's name"),
        ("version" = String, Path, description = "The version"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "`forbidden`: the token is not an admin's", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not-found`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["admin"]), ()),
)]
pub(crate) async fn delete_version(
    State(state): Shared,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, Problem> {
    let caller = state.tokens.authorize(&headers, Scope::Admin)?;
    check_name(&name)?;
    kiln_spec::check_component_version(&version).map_err(Problem::invalid_name)?;
    if !state.db.delete_version(&name, &version).await? {
        return Err(no_such(&name, &version));
    }
    tracing::info!(component = %name, %version, by = %caller.name, "component version deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    put,
    path = "/v1/components/{name}/tags/{tag}",
    tag = "registry",
    description = "Points a tag at an existing version, made or moved. Runs pin the version a \
                   tag names when they are submitted, so moving it changes later runs only.",
    params(
        ("name" = String, Path, description = "The component's name"),
        ("tag" = String, Path, description = "The tag (`latest`, `stable`)"),
    ),
    request_body = TagRequest,
    responses(
        (status = 200, description = "Where the tag points now", body = TagState),
        (status = 400, description = "`invalid-name` or `bad-request`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not-found`: no such version", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["write"]), ()),
)]
pub(crate) async fn put_tag(
    State(state): Shared,
    Path((name, tag)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Json<TagRequest>, JsonRejection>,
) -> Result<Json<TagState>, Problem> {
    let caller = state.tokens.authorize(&headers, Scope::Write)?;
    check_name(&name)?;
    kiln_spec::check_component_tag(&tag).map_err(Problem::invalid_name)?;
    let Json(request) = body.map_err(|e| Problem::bad_request(e.body_text()))?;
    kiln_spec::check_component_version(&request.version).map_err(Problem::invalid_name)?;
    let row = state
        .db
        .version(&name, &request.version)
        .await?
        .ok_or_else(|| no_such(&name, &request.version))?;
    let previous = state.db.tag(&name, &tag).await?;
    state
        .db
        .set_tag(&name, &tag, &request.version, &caller.name, &now())
        .await?;
    tracing::info!(component = %name, %tag, version = %request.version, by = %caller.name, "tag moved");
    Ok(Json(TagState {
        name,
        tag,
        version: request.version,
        digest: row.digest,
        previous,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/components",
    tag = "registry",
    description = "Every component, its versions and its tags.",
    responses((status = 200, description = "The registry", body = ComponentList)),
    security(("bearer" = ["read"]), ()),
)]
pub(crate) async fn list_components(
    State(state): Shared,
    headers: HeaderMap,
) -> Result<Json<ComponentList>, Problem> {
    state.tokens.authorize(&headers, Scope::Read)?;
    let mut components: Vec<ComponentSummary> = Vec::new();
    for row in state.db.all_versions().await? {
        match components.last_mut() {
            Some(last) if last.name == row.name => last.versions.push(row.version),
            _ => components.push(ComponentSummary {
                name: row.name,
                versions: vec![row.version],
                tags: BTreeMap::new(),
            }),
        }
    }
    for component in &mut components {
        component.tags = state
            .db
            .tags(&component.name)
            .await?
            .into_iter()
            .map(|t| (t.tag, t.version))
            .collect();
    }
    Ok(Json(ComponentList { components }))
}

#[utoipa::path(
    get,
    path = "/v1/components/{name}",
    tag = "registry",
    description = "A component: every version in full, and its tags.",
    params(("name" = String, Path, description = "The component's name")),
    responses(
        (status = 200, description = "The component", body = ComponentDetail),
        (status = 404, description = "`not-found`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]), ()),
)]
pub(crate) async fn show_component(
    State(state): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<ComponentDetail>, Problem> {
    state.tokens.authorize(&headers, Scope::Read)?;
    check_name(&name)?;
    let rows = state.db.versions(&name).await?;
    if rows.is_empty() {
        return Err(Problem::not_found(format!(
            "the registry has no component `{name}`"
        )));
    }
    let tags = state.db.tags(&name).await?;
    Ok(Json(ComponentDetail {
        versions: rows
            .into_iter()
            .map(|r| ComponentVersion::of(r, &tags))
            .collect(),
        tags: tags.into_iter().map(|t| (t.tag, t.version)).collect(),
        name,
    }))
}

//! Blobs by digest: what a client uploads before it submits a run that reads them. A client
//! asks which of its digests the server lacks (`POST /v1/blobs/missing`), then sends only
//! those (`PUT /v1/blobs/{digest}`), each streamed to a file while hashed and stored only if
//! its bytes have the digest its path names.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{StreamExt, TryStreamExt};
use kiln_cas::Digest;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Scope;
use crate::problem::Problem;
use crate::registry::{drain, receive};

/// The most digests one `missing` request may ask about.
pub const MAX_DIGESTS: usize = 100_000;

pub(crate) fn routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route("/v1/blobs/missing", post(missing))
        .route("/v1/blobs/{digest}", get(get_blob).put(put_blob))
        .route("/v1/trees/{digest}", axum::routing::put(put_tree))
}

/// The largest tree manifest taken: 64 MiB (about half a million entries).
const MAX_MANIFEST_BYTES: usize = 64 << 20;

#[utoipa::path(
    put,
    path = "/v1/trees/{digest}",
    tag = "blobs",
    description = "Uploads a folder's manifest (kiln's tree encoding): stored only if it \
                   encodes to the digest the path names and every entry it names (files, \
                   folders) is stored already; upload those first.",
    params(("digest" = String, Path, description = "`blake3:<hex>` of the manifest")),
    request_body(content = Vec<u8>, content_type = "application/json"),
    responses(
        (status = 201, description = "Stored", body = BlobStored),
        (status = 200, description = "The store had it", body = BlobStored),
        (status = 422, description = "`bad-tree`, `digest-mismatch`, or `missing-blobs` (`missing`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["write"]), ()),
)]
pub(crate) async fn put_tree(
    State(state): State<Arc<AppState>>,
    Path(digest): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<BlobStored>), Problem> {
    state.tokens.authorize(&headers, Scope::Write)?;
    let digest = parse_digest(&digest)?;
    let bytes = axum::body::to_bytes(body, MAX_MANIFEST_BYTES)
        .await
        .map_err(|e| Problem::bad_request(format!("the manifest cannot be read: {e}")))?;
    let answer = |status| {
        Ok((
            status,
            Json(BlobStored {
                digest: digest.to_string(),
                size: bytes.len() as u64,
            }),
        ))
    };
    if state.store.kind(&digest).await? == Some(kiln_cas::ObjectKind::Tree) {
        return answer(StatusCode::OK);
    }
    let tree = kiln_cas::Tree::decode(&bytes).map_err(|e| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad-tree",
            "Bad tree",
            format!("the body is not a tree manifest: {e}"),
        )
    })?;
    if tree.digest() != digest {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "digest-mismatch",
            "Digest mismatch",
            format!(
                "the manifest sent for {digest} is {}; nothing was stored",
                tree.digest()
            ),
        ));
    }
    let mut missing = Vec::new();
    for entry in tree.entries() {
        let want = match entry.kind {
            kiln_cas::EntryKind::Folder => kiln_cas::ObjectKind::Tree,
            _ => kiln_cas::ObjectKind::Blob,
        };
        if state.store.kind(&entry.digest).await? != Some(want) {
            missing.push(entry.digest.to_string());
        }
    }
    if !missing.is_empty() {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing-blobs",
            "Missing blobs",
            format!(
                "the store lacks {} of the tree's entries: upload them first",
                missing.len()
            ),
        )
        .with("missing", missing));
    }
    let stored = state.store.put_manifest(&tree).await?;
    if stored != digest {
        return Err(Problem::internal(format_args!(
            "the store kept tree {digest} as {stored}"
        )));
    }
    answer(StatusCode::CREATED)
}

/// Digests a client holds.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MissingRequest {
    /// `blake3:<hex>` each.
    pub digests: Vec<String>,
}

/// The digests the server lacks, in the order they were asked about.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MissingResponse {
    /// `blake3:<hex>` each.
    pub missing: Vec<String>,
}

/// A stored blob.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BlobStored {
    /// Its digest.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
}

fn parse_digest(text: &str) -> Result<Digest, Problem> {
    text.parse().map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-digest",
            "Bad digest",
            format!("`{text}` is not a digest (`blake3:` and 64 hex digits): {e}"),
        )
    })
}

#[utoipa::path(
    post,
    path = "/v1/blobs/missing",
    tag = "blobs",
    description = "Which of these digests the server's store lacks: upload only those.",
    request_body = MissingRequest,
    responses(
        (status = 200, description = "The missing ones", body = MissingResponse),
        (status = 400, description = "`bad-digest` or `bad-request`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["write"]), ()),
)]
pub(crate) async fn missing(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<MissingRequest>, JsonRejection>,
) -> Result<Json<MissingResponse>, Problem> {
    state.tokens.authorize(&headers, Scope::Write)?;
    let Json(request) = body.map_err(|e| Problem::bad_request(e.body_text()))?;
    if request.digests.len() > MAX_DIGESTS {
        return Err(Problem::bad_request(format!(
            "{} digests in one request; ask about at most {MAX_DIGESTS} at a time",
            request.digests.len()
        )));
    }
    let digests: Vec<Digest> = request
        .digests
        .iter()
        .map(|d| parse_digest(d))
        .collect::<Result<_, _>>()?;
    let present: Vec<bool> = futures_util::stream::iter(digests.clone())
        .map(|d| {
            let store = state.store.clone();
            async move { store.contains(&d).await }
        })
        .buffered(16)
        .try_collect()
        .await?;
    Ok(Json(MissingResponse {
        missing: digests
            .iter()
            .zip(present)
            .filter(|(_, there)| !there)
            .map(|(d, _)| d.to_string())
            .collect(),
    }))
}

#[utoipa::path(
    put,
    path = "/v1/blobs/{digest}",
    tag = "blobs",
    description = "Uploads one blob: stored only if its bytes have the digest the path names.",
    params(("digest" = String, Path, description = "`blake3:<hex>`")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, description = "Stored", body = BlobStored),
        (status = 200, description = "The store had it", body = BlobStored),
        (status = 400, description = "`bad-digest` or `incomplete-body`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`too-large`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`digest-mismatch`: the bytes are not the digest's; nothing stored", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["write"]), ()),
)]
pub(crate) async fn put_blob(
    State(state): State<Arc<AppState>>,
    Path(digest): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<BlobStored>), Problem> {
    state.tokens.authorize(&headers, Scope::Write)?;
    let digest = parse_digest(&digest)?;
    if let Some(size) = state.store.blob_size(&digest).await? {
        drain(&mut body.into_data_stream()).await;
        return Ok((
            StatusCode::OK,
            Json(BlobStored {
                digest: digest.to_string(),
                size,
            }),
        ));
    }
    let received = receive(&state, &headers, body, state.max_blob_bytes).await?;
    if received.digest != digest {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "digest-mismatch",
            "Digest mismatch",
            format!(
                "the bytes sent for {digest} are {}; nothing was stored",
                received.digest
            ),
        )
        .with("expected_digest", digest.to_string())
        .with("received_digest", received.digest.to_string()));
    }
    let stored = state.store.put_file_owned(&received.path).await?;
    if stored != digest {
        return Err(Problem::internal(format_args!(
            "the store kept {digest} as {stored}"
        )));
    }
    Ok((
        StatusCode::CREATED,
        Json(BlobStored {
            digest: digest.to_string(),
            size: received.size,
        }),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/blobs/{digest}",
    tag = "blobs",
    description = "A blob's bytes, verified against the digest as they are read; the ETag is \
                   the digest.",
    params(("digest" = String, Path, description = "`blake3:<hex>`")),
    responses(
        (status = 200, description = "The bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 304, description = "The client has them"),
        (status = 404, description = "`not-found`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]), ()),
)]
pub(crate) async fn get_blob(
    State(state): State<Arc<AppState>>,
    Path(digest): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    state.tokens.authorize(&headers, Scope::Read)?;
    let digest = parse_digest(&digest)?;
    if !state.store.contains(&digest).await? {
        return Err(Problem::not_found(format!(
            "the store has no blob {digest}"
        )));
    }
    download(&state, &digest, &headers, "application/octet-stream").await
}

/// A stored object's bytes, verified as they are read, with its digest as the `ETag`; 304
/// when `If-None-Match` names it already.
pub(crate) async fn download(
    state: &AppState,
    digest: &Digest,
    headers: &HeaderMap,
    content_type: &'static str,
) -> Result<Response, Problem> {
    let etag = format!("\"{digest}\"");
    let etag_value = HeaderValue::from_str(&etag).map_err(Problem::internal)?;
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        response.headers_mut().insert(header::ETAG, etag_value);
        return Ok(response);
    }
    let bytes = state.store.read_verified(digest).await?;
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::ETAG, etag_value);
    Ok(response)
}

//! A client of a kiln server's component registry: what `kiln push`, `kiln components` and
//! the pinning of `name@version` references use.
//!
//! A reference is resolved to a version (a tag to the version it names now) and its digest;
//! the component's bytes are downloaded only when the local store lacks them, checked against
//! the digest before they are kept. A server's errors are problem documents; their `code` and
//! `detail` become the error's text.

use std::path::Path;
use std::time::Duration;

use kiln_cas::{BlobStore, Digest};
use serde::{Deserialize, Serialize};

/// The environment variable naming the server (`http://host:8600`).
pub const SERVER_ENV: &str = "KILN_SERVER";
/// The environment variable holding the bearer token.
pub const TOKEN_ENV: &str = "KILN_TOKEN";

/// A version as the registry describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentVersion {
    /// The component's name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The tag it was found by, if a tag was asked for.
    #[serde(default)]
    pub resolved_from: Option<String>,
    /// Its digest (`blake3:<hex>`).
    pub digest: String,
    /// `sha256:<hex>`.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
    /// `kiln-step` or `wasi-command`.
    pub world: String,
    /// Top-level imports.
    #[serde(default)]
    pub imports: Vec<String>,
    /// Top-level exports.
    #[serde(default)]
    pub exports: Vec<String>,
    /// Who uploaded it.
    pub uploaded_by: String,
    /// When.
    pub uploaded_at: String,
    /// Its tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A component in the registry's list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentSummary {
    /// Its name.
    pub name: String,
    /// Its versions, oldest first.
    pub versions: Vec<String>,
    /// Its tags.
    pub tags: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct ComponentList {
    components: Vec<ComponentSummary>,
}

/// Where a tag points after it was moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagState {
    /// The component.
    pub name: String,
    /// The tag.
    pub tag: String,
    /// The version it names.
    pub version: String,
    /// That version's digest.
    pub digest: String,
    /// Where it pointed before.
    #[serde(default)]
    pub previous: Option<String>,
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// A new version.
    Created(ComponentVersion),
    /// The version held these bytes already.
    Unchanged(ComponentVersion),
}

/// A server's problem document, or a failure to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryError {
    /// The problem's code (`version-exists`, `unauthorized`...), or `unreachable` and
    /// `bad-answer` for what the client saw.
    pub code: String,
    /// What went wrong.
    pub message: String,
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for RegistryError {}

/// A client of one server.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl RegistryClient {
    /// A client of the server at `url` (`http://host:port`), with a bearer token if given.
    pub fn new(url: &str, token: Option<String>) -> Result<Self, String> {
        let base = url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!(
                "`{url}` is not a server URL: write http://HOST:PORT (or https://)"
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
        Ok(Self {
            base,
            token: token.filter(|t| !t.is_empty()),
            http,
        })
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RegistryError> {
        let response = request.send().await.map_err(|e| RegistryError {
            code: "unreachable".into(),
            message: format!("cannot reach the kiln server at {}: {e}", self.base),
        })?;
        if response.status().is_success() || response.status() == reqwest::StatusCode::NOT_MODIFIED
        {
            return Ok(response);
        }
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let problem: Option<serde_json::Value> = serde_json::from_str(&text).ok();
        let field = |name: &str| {
            problem
                .as_ref()
                .and_then(|p| p.get(name))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        Err(RegistryError {
            code: field("code").unwrap_or_else(|| format!("http-{}", status.as_u16())),
            message: field("detail")
                .unwrap_or_else(|| format!("the server answered {status}: {}", text.trim())),
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, RegistryError> {
        let response = self.send(request).await?;
        let text = response.text().await.map_err(|e| bad_answer(&e))?;
        serde_json::from_str(&text).map_err(|e| bad_answer(&e))
    }

    /// Uploads the component in `file` as `name@version`.
    pub async fn push(
        &self,
        file: &Path,
        name: &str,
        version: &str,
    ) -> Result<Pushed, RegistryError> {
        let bytes = tokio::fs::read(file).await.map_err(|e| RegistryError {
            code: "unreadable".into(),
            message: format!("cannot read {}: {e}", file.display()),
        })?;
        let request = self
            .request(
                reqwest::Method::PUT,
                &format!("/v1/components/{name}/versions/{version}"),
            )
            .header(reqwest::header::CONTENT_TYPE, "application/wasm")
            .body(bytes);
        let response = self.send(request).await?;
        let created = response.status() == reqwest::StatusCode::CREATED;
        let text = response.text().await.map_err(|e| bad_answer(&e))?;
        let version: ComponentVersion = serde_json::from_str(&text).map_err(|e| bad_answer(&e))?;
        Ok(if created {
            Pushed::Created(version)
        } else {
            Pushed::Unchanged(version)
        })
    }

    /// Points `tag` at `version`.
    pub async fn tag(
        &self,
        name: &str,
        tag: &str,
        version: &str,
    ) -> Result<TagState, RegistryError> {
        let request = self
            .request(
                reqwest::Method::PUT,
                &format!("/v1/components/{name}/tags/{tag}"),
            )
            .json(&serde_json::json!({ "version": version }));
        self.json(request).await
    }

    /// One version, or the version a tag names.
    pub async fn show(
        &self,
        name: &str,
        reference: &str,
    ) -> Result<ComponentVersion, RegistryError> {
        let request = self.request(
            reqwest::Method::GET,
            &format!("/v1/components/{name}/versions/{reference}"),
        );
        self.json(request).await
    }

    /// Every version of a component.
    pub async fn versions(&self, name: &str) -> Result<Vec<ComponentVersion>, RegistryError> {
        #[derive(Deserialize)]
        struct Detail {
            versions: Vec<ComponentVersion>,
        }
        let request = self.request(reqwest::Method::GET, &format!("/v1/components/{name}"));
        Ok(self.json::<Detail>(request).await?.versions)
    }

    /// Every component.
    pub async fn list(&self) -> Result<Vec<ComponentSummary>, RegistryError> {
        let request = self.request(reqwest::Method::GET, "/v1/components");
        Ok(self.json::<ComponentList>(request).await?.components)
    }

    /// Resolves `name@reference` and makes sure `store` holds the component: downloaded when
    /// it does not, and kept only if its bytes have the digest the registry gave.
    pub async fn fetch_into(
        &self,
        store: &dyn BlobStore,
        name: &str,
        reference: &str,
    ) -> Result<(ComponentVersion, Digest), RegistryError> {
        let version = self.show(name, reference).await?;
        let digest: Digest = version.digest.parse().map_err(|e| bad_answer(&e))?;
        if store.contains(&digest).await.unwrap_or(false) {
            return Ok((version, digest));
        }
        let request = self.request(
            reqwest::Method::GET,
            &format!("/v1/components/{name}/versions/{}/content", version.version),
        );
        let bytes = self
            .send(request)
            .await?
            .bytes()
            .await
            .map_err(|e| bad_answer(&e))?;
        let got = Digest::of_bytes(&bytes);
        if got != digest {
            return Err(RegistryError {
                code: "digest-mismatch".into(),
                message: format!(
                    "the server sent {name}@{} as {got}, but lists it as {digest}; nothing was kept",
                    version.version
                ),
            });
        }
        store.put_bytes(bytes).await.map_err(|e| RegistryError {
            code: "store".into(),
            message: format!("cannot keep {name}@{}: {e}", version.version),
        })?;
        Ok((version, digest))
    }
}

/// What [`RegistryClient::upload_missing`] sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Uploaded {
    /// Objects (blobs and trees) the run needs.
    pub needed: usize,
    /// Those the server lacked and was sent.
    pub sent: usize,
    /// Bytes sent.
    pub bytes: u64,
}

/// One event of a remote run's stream: `record` (a record event as JSON, with its position),
/// `end` (how the run ended) or `error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStreamEvent {
    /// Its position in the record (`record` events only).
    pub id: Option<u64>,
    /// `record`, `end` or `error`.
    pub kind: String,
    /// Its data (JSON for `record` and `end`).
    pub data: String,
}

impl RegistryClient {
    /// Sends the server every blob and tree under `roots` that it lacks: folders' manifests
    /// after what they hold. Files are streamed from a local store, not read whole.
    pub async fn upload_missing(
        &self,
        store: &dyn BlobStore,
        roots: &[Digest],
    ) -> Result<Uploaded, RegistryError> {
        // Every object under the roots, folders after their contents.
        let mut order: Vec<(Digest, bool)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut stack: Vec<(Digest, bool)> = roots.iter().map(|d| (*d, false)).collect();
        while let Some((digest, expanded)) = stack.pop() {
            if expanded {
                order.push((digest, true));
                continue;
            }
            if !seen.insert(digest) {
                continue;
            }
            match store.kind(&digest).await.map_err(store_error)? {
                Some(kiln_cas::ObjectKind::Tree) => {
                    stack.push((digest, true));
                    let tree = store.get_tree(&digest).await.map_err(store_error)?;
                    for entry in tree.entries() {
                        stack.push((entry.digest, false));
                    }
                }
                Some(kiln_cas::ObjectKind::Blob) => order.push((digest, false)),
                None => {
                    return Err(RegistryError {
                        code: "store".into(),
                        message: format!("{digest} is not in the local store"),
                    });
                }
            }
        }
        let mut done = Uploaded {
            needed: order.len(),
            ..Uploaded::default()
        };
        let mut missing = std::collections::HashSet::new();
        for chunk in order.chunks(10_000) {
            let digests: Vec<String> = chunk.iter().map(|(d, _)| d.to_string()).collect();
            #[derive(Deserialize)]
            struct Missing {
                missing: Vec<String>,
            }
            let request = self
                .request(reqwest::Method::POST, "/v1/blobs/missing")
                .json(&serde_json::json!({ "digests": digests }));
            missing.extend(self.json::<Missing>(request).await?.missing);
        }
        for (digest, is_tree) in order {
            if !missing.contains(&digest.to_string()) {
                continue;
            }
            let request = if is_tree {
                let tree = store.get_tree(&digest).await.map_err(store_error)?;
                let bytes = tree.encode();
                done.bytes += bytes.len() as u64;
                self.request(reqwest::Method::PUT, &format!("/v1/trees/{digest}"))
                    .body(bytes)
            } else {
                let size = store
                    .blob_size(&digest)
                    .await
                    .map_err(store_error)?
                    .unwrap_or(0);
                done.bytes += size;
                let body = match store.local() {
                    Some(local) => {
                        let file = tokio::fs::File::open(local.blob_path(&digest))
                            .await
                            .map_err(|e| RegistryError {
                                code: "store".into(),
                                message: format!("cannot read {digest}: {e}"),
                            })?;
                        reqwest::Body::from(file)
                    }
                    None => reqwest::Body::from(
                        store.read_verified(&digest).await.map_err(store_error)?,
                    ),
                };
                self.request(reqwest::Method::PUT, &format!("/v1/blobs/{digest}"))
                    .header(reqwest::header::CONTENT_LENGTH, size)
                    .body(body)
            };
            self.send(request).await?;
            done.sent += 1;
        }
        Ok(done)
    }

    /// Submits a pinned plan (`submission`: the JSON `POST /v1/runs` takes) with an
    /// idempotency key; the run's id.
    pub async fn submit(
        &self,
        submission: &serde_json::Value,
        idempotency_key: &str,
    ) -> Result<String, RegistryError> {
        #[derive(Deserialize)]
        struct Submitted {
            run_id: String,
        }
        let mut last = None;
        // A dropped connection is retried with the same key: the server makes one run.
        for _ in 0..3 {
            let request = self
                .request(reqwest::Method::POST, "/v1/runs")
                .header("idempotency-key", idempotency_key)
                .json(submission);
            match self.json::<Submitted>(request).await {
                Ok(done) => return Ok(done.run_id),
                Err(e) if e.code == "unreachable" => last = Some(e),
                Err(e) => return Err(e),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(last.expect("a try failed"))
    }

    /// Follows a run's events to their `end`, calling `on_event` for each; reconnects after
    /// the last event seen when the connection drops.
    pub async fn follow(
        &self,
        run_id: &str,
        on_event: &mut (dyn FnMut(RunStreamEvent) + Send),
    ) -> Result<(), RegistryError> {
        use eventsource_stream::Eventsource;
        use futures::StreamExt;
        let mut after: Option<u64> = None;
        let mut failures = 0;
        loop {
            let mut request =
                self.request(reqwest::Method::GET, &format!("/v1/runs/{run_id}/events"));
            if let Some(after) = after {
                request = request.header("last-event-id", after.to_string());
            }
            let response = match self.send(request).await {
                Ok(response) => response,
                Err(e) if e.code == "unreachable" && failures < 10 => {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut events = response.bytes_stream().eventsource();
            while let Some(event) = events.next().await {
                let Ok(event) = event else {
                    break;
                };
                let id = event.id.parse::<u64>().ok();
                if id.is_some() {
                    after = id;
                }
                let end = event.event == "end" || event.event == "error";
                on_event(RunStreamEvent {
                    id,
                    kind: event.event,
                    data: event.data,
                });
                if end {
                    return Ok(());
                }
            }
            failures += 1;
            if failures > 10 {
                return Err(RegistryError {
                    code: "unreachable".into(),
                    message: format!("the event stream of run {run_id} keeps dropping"),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A run's state as the server gives it (`GET /v1/runs/{id}`).
    pub async fn run_state(&self, run_id: &str) -> Result<serde_json::Value, RegistryError> {
        let request = self.request(reqwest::Method::GET, &format!("/v1/runs/{run_id}"));
        self.json(request).await
    }

    /// Asks the server to cancel a run.
    pub async fn cancel(&self, run_id: &str) -> Result<(), RegistryError> {
        let request = self.request(reqwest::Method::POST, &format!("/v1/runs/{run_id}/cancel"));
        self.send(request).await.map(drop)
    }
}

fn store_error(e: kiln_cas::CasError) -> RegistryError {
    RegistryError {
        code: "store".into(),
        message: format!("the local store: {e}"),
    }
}

fn bad_answer(e: &dyn std::fmt::Display) -> RegistryError {
    RegistryError {
        code: "bad-answer".into(),
        message: format!("the server's answer cannot be read: {e}"),
    }
}

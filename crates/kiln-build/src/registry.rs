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

fn bad_answer(e: &dyn std::fmt::Display) -> RegistryError {
    RegistryError {
        code: "bad-answer".into(),
        message: format!("the server's answer cannot be read: {e}"),
    }
}

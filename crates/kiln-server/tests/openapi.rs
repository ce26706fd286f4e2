//! `openapi.json` (committed beside this crate's Cargo.toml) is the document the handlers
//! generate: a change to the API shows in review. `KILN_BLESS=1` rewrites it.

#[test]
fn the_committed_openapi_document_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let generated = kiln_server::api::openapi_document();
    if std::env::var_os("KILN_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let diff = similar::TextDiff::from_lines(&committed, &generated)
            .unified_diff()
            .header("openapi.json (committed)", "generated")
            .to_string();
        panic!(
            "crates/kiln-server/openapi.json is not what the handlers generate; review and \
             run `KILN_BLESS=1 cargo test -p kiln-server --test openapi`:\n{diff}"
        );
    }
    // Every route the router serves under /v1 is in the document.
    let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
    for path in [
        "/v1/components",
        "/v1/components/{name}",
        "/v1/components/{name}/versions/{version}",
        "/v1/components/{name}/versions/{version}/content",
        "/v1/components/{name}/tags/{tag}",
        "/v1/blobs/missing",
        "/v1/blobs/{digest}",
        "/v1/runs",
        "/v1/runs/{id}",
        "/v1/runs/{id}/cancel",
        "/v1/runs/{id}/events",
        "/healthz",
        "/readyz",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is not documented");
    }
}

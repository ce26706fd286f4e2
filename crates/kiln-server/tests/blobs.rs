//! Blobs by digest against a real server, on a local store and on S3: only what is missing is
//! asked for, bytes are stored only under their own digest, and a refused upload leaves
//! nothing behind.

mod common;

use common::*;
use kiln_cas::Digest;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn missing(server: &TestServer, digests: &[String]) -> (StatusCode, Value) {
    let response = server
        .client
        .post(server.at("/v1/blobs/missing"))
        .bearer_auth(WRITE)
        .json(&json!({ "digests": digests }))
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

async fn put_blob(
    server: &TestServer,
    digest: &str,
    token: &str,
    bytes: Vec<u8>,
) -> (StatusCode, Value) {
    let response = server
        .client
        .put(server.at(&format!("/v1/blobs/{digest}")))
        .bearer_auth(token)
        .body(bytes)
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

async fn suite(setting: Setting) {
    let Some(server) = TestServer::start(setting).await else {
        return;
    };
    let a = b"id,x\n1,2\n".to_vec();
    let b = vec![7u8; 100_000];
    let (da, db) = (
        Digest::of_bytes(&a).to_string(),
        Digest::of_bytes(&b).to_string(),
    );

    let (status, body) = missing(&server, &[da.clone(), db.clone()]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "missing": [da, db] }));

    let (status, body) = put_blob(&server, &da, WRITE, a.clone()).await;
    assert_eq!(
        (status, &body["size"]),
        (StatusCode::CREATED, &json!(a.len())),
        "{body}"
    );
    let (status, _) = put_blob(&server, &da, WRITE, a.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = missing(&server, &[da.clone(), db.clone()]).await;
    assert_eq!(body, json!({ "missing": [db] }));

    // Bytes that are not the digest's: refused, nothing stored.
    let (status, body) = put_blob(&server, &db, WRITE, a.clone()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("digest-mismatch")),
        "{body}"
    );
    assert_eq!(body["received_digest"], da);
    assert!(!server.store.contains(&db.parse().unwrap()).await.unwrap());
    // Over the limit, a bad digest, a read token: refused too.
    let mut big = b.clone();
    big.resize(LIMIT as usize + 1, 1);
    let big_digest = Digest::of_bytes(&big).to_string();
    let (status, body) = put_blob(&server, &big_digest, WRITE, big).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too-large"))
    );
    let (status, body) = put_blob(&server, "blake3:abc", WRITE, b.clone()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad-digest"))
    );
    let (status, body) = put_blob(&server, &db, READ, b.clone()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let (status, body) = missing(&server, &["sha1:00".to_owned()]).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad-digest"))
    );
    assert_eq!(
        std::fs::read_dir(server.state_dir.join("tmp/uploads"))
            .unwrap()
            .count(),
        0,
        "an upload file was left behind"
    );

    // The right bytes, then read back with the digest as ETag.
    let (status, _) = put_blob(&server, &db, WRITE, b.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    let response = server
        .client
        .get(server.at(&format!("/v1/blobs/{db}")))
        .bearer_auth(READ)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["etag"].to_str().unwrap(),
        format!("\"{db}\"")
    );
    assert_eq!(response.bytes().await.unwrap().as_ref(), b.as_slice());
    // A folder: its manifest is refused until what it holds is stored, and must be its digest.
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(folder.path().join("a.csv"), &a).unwrap();
    std::fs::create_dir(folder.path().join("deep")).unwrap();
    std::fs::write(folder.path().join("deep/c.txt"), b"only in the folder").unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let local = kiln_cas::LocalStore::new(scratch.path().join("store"));
    let tree_digest = local.put_tree(folder.path()).unwrap();
    let tree = local.get_tree(&tree_digest).unwrap();
    let deep = tree.get("deep").unwrap().digest;
    let put_tree = |digest: Digest, bytes: Vec<u8>| {
        server
            .client
            .put(server.at(&format!("/v1/trees/{digest}")))
            .bearer_auth(WRITE)
            .body(bytes)
            .send()
    };
    let response = put_tree(tree_digest, tree.encode()).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "missing-blobs");
    assert_eq!(
        body["missing"],
        json!([deep.to_string()]),
        "a.csv is there already"
    );
    let response = put_tree(deep, tree.encode()).await.unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "digest-mismatch");
    let deep_tree = local.get_tree(&deep).unwrap();
    let c = deep_tree.get("c.txt").unwrap().digest;
    let (status, _) = put_blob(
        &server,
        &c.to_string(),
        WRITE,
        b"only in the folder".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        put_tree(deep, deep_tree.encode()).await.unwrap().status(),
        StatusCode::CREATED
    );
    assert_eq!(
        put_tree(tree_digest, tree.encode()).await.unwrap().status(),
        StatusCode::CREATED
    );
    assert_eq!(
        put_tree(tree_digest, tree.encode()).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        server.store.kind(&tree_digest).await.unwrap(),
        Some(kiln_cas::ObjectKind::Tree)
    );

    let response = server
        .client
        .get(server.at(&format!("/v1/blobs/{big_digest}")))
        .bearer_auth(READ)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_on_a_local_store() {
    suite(Setting::SqliteLocal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_on_s3() {
    suite(Setting::SqliteS3).await;
}

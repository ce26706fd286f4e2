//! The registry against a real server: uploads, immutability, tags, downloads, deletes, bad
//! uploads (each refused with its own code and nothing stored), tokens, problem documents,
//! health and metrics. The same suite on SQLite and PostgreSQL, on a local store and on S3.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use kiln_cas::Digest;
use reqwest::StatusCode;
use serde_json::Value;

/// What the store, the database and the upload folder hold, to show a refused upload left
/// nothing behind.
async fn footprint(server: &TestServer, digest: &Digest) -> (bool, i64, usize) {
    let stored = server.store.contains(digest).await.unwrap();
    let versions = server.db.version_count().await.unwrap();
    let uploads = std::fs::read_dir(server.state_dir.join("tmp/uploads"))
        .unwrap()
        .count();
    (stored, versions, uploads)
}

async fn put(
    server: &TestServer,
    path: &str,
    token: &str,
    bytes: Vec<u8>,
) -> (StatusCode, Value, Option<String>) {
    let response = server
        .client
        .put(server.at(path))
        .bearer_auth(token)
        .header("content-type", "application/wasm")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = response.json().await.unwrap();
    (status, body, content_type)
}

async fn get_json(server: &TestServer, path: &str, token: &str) -> (StatusCode, Value) {
    let response = server
        .client
        .get(server.at(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

async fn suite(setting: Setting) {
    let Some(server) = TestServer::start(setting).await else {
        return;
    };
    let step = step_component();
    let command = command_component();
    let step_digest = Digest::of_bytes(&step);
    let command_digest = Digest::of_bytes(&command);

    // A new version: stored, recorded, answered 201 with its facts.
    let (status, body, _) = put(
        &server,
        "/v1/components/pick/versions/1.0.0",
        WRITE,
        step.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["digest"], step_digest.to_string());
    assert_eq!(body["size"], step.len());
    assert_eq!(body["world"], "kiln-step");
    assert_eq!(body["uploaded_by"], "ci");
    assert!(body["sha256"].as_str().unwrap().starts_with("sha256:"));
    assert!(
        body["exports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "run"),
        "{body}"
    );
    assert!(server.store.contains(&step_digest).await.unwrap());
    // The hook (a server compiles there) ran once, after the answer.
    for _ in 0..100 {
        if server.hooked.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(server.hooked.load(Ordering::SeqCst), 1);

    // The same bytes again: 200, nothing new.
    let (status, body, _) = put(
        &server,
        "/v1/components/pick/versions/1.0.0",
        WRITE,
        step.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["digest"], step_digest.to_string());
    assert_eq!(server.hooked.load(Ordering::SeqCst), 1);

    // Other bytes under that version: 409 naming both digests, and the other bytes are not
    // stored.
    let (status, body, content_type) = put(
        &server,
        "/v1/components/pick/versions/1.0.0",
        WRITE,
        command.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    assert_eq!(body["code"], "version-exists");
    assert_eq!(body["existing_digest"], step_digest.to_string());
    assert_eq!(body["uploaded_digest"], command_digest.to_string());
    assert_eq!(footprint(&server, &command_digest).await, (false, 1, 0));

    // A command component is a version too.
    let (status, body, _) = put(
        &server,
        "/v1/components/pick/versions/2.0.0",
        WRITE,
        command.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["world"], "wasi-command");
    assert!(
        body["exports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().unwrap().starts_with("wasi:cli/run@")),
        "{body}"
    );

    // Tags move; a reference by tag resolves to the version it names now.
    let tag = |version: &str| {
        server
            .client
            .put(server.at("/v1/components/pick/tags/stable"))
            .bearer_auth(WRITE)
            .json(&serde_json::json!({ "version": version }))
            .send()
    };
    let moved: Value = tag("1.0.0").await.unwrap().json().await.unwrap();
    assert_eq!(moved["digest"], step_digest.to_string());
    assert_eq!(moved["previous"], Value::Null);
    let (status, body) = get_json(&server, "/v1/components/pick/versions/stable", READ).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["version"].as_str(), body["resolved_from"].as_str()),
        (Some("1.0.0"), Some("stable"))
    );
    let moved: Value = tag("2.0.0").await.unwrap().json().await.unwrap();
    assert_eq!(moved["previous"], "1.0.0");
    let (_, body) = get_json(&server, "/v1/components/pick/versions/stable", READ).await;
    assert_eq!(body["digest"], command_digest.to_string());
    let response = tag("9.9.9").await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // Downloads, by version or tag, with the digest as ETag.
    let response = server
        .client
        .get(server.at("/v1/components/pick/versions/1.0.0/content"))
        .bearer_auth(READ)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{step_digest}\""));
    assert_eq!(response.bytes().await.unwrap().as_ref(), step.as_slice());
    let response = server
        .client
        .get(server.at("/v1/components/pick/versions/1.0.0/content"))
        .bearer_auth(READ)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
    let response = server
        .client
        .get(server.at("/v1/components/pick/versions/stable/content"))
        .bearer_auth(READ)
        .send()
        .await
        .unwrap();
    assert_eq!(response.bytes().await.unwrap().as_ref(), command.as_slice());

    // Lists and shows.
    let (_, list) = get_json(&server, "/v1/components", READ).await;
    assert_eq!(
        list,
        serde_json::json!({"components": [
            {"name": "pick", "versions": ["1.0.0", "2.0.0"], "tags": {"stable": "2.0.0"}}
        ]})
    );
    let (_, detail) = get_json(&server, "/v1/components/pick", READ).await;
    assert_eq!(detail["versions"][1]["tags"], serde_json::json!(["stable"]));
    let (status, body) = get_json(&server, "/v1/components/nothing", READ).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not-found"))
    );

    // Bad uploads: each its own code, and nothing stored anywhere.
    let mut truncated = step.clone();
    truncated.truncate(step.len() / 2);
    let mut too_big = step.clone();
    too_big.resize(LIMIT as usize + 1, 0);
    let cases: Vec<(&str, &str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "not wasm",
            WRITE,
            b"#!/bin/sh\necho hello\n".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "not-wasm",
        ),
        (
            "a core module",
            WRITE,
            core_module(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "not-a-component",
        ),
        (
            "another world",
            WRITE,
            other_world_component(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown-world",
        ),
        (
            "truncated",
            WRITE,
            truncated,
            StatusCode::UNPROCESSABLE_ENTITY,
            "malformed-component",
        ),
        (
            "over the limit",
            WRITE,
            too_big,
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
        ),
        (
            "a wrong token",
            "wrong-token-0123456789",
            step.clone(),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "a read token",
            READ,
            step.clone(),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
    ];
    for (what, token, bytes, want_status, want_code) in cases {
        let digest = Digest::of_bytes(&bytes);
        let before = footprint(&server, &digest).await;
        let (status, body, content_type) =
            put(&server, "/v1/components/bad/versions/1.0.0", token, bytes).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (want_status, Some(want_code)),
            "{what}: {body}"
        );
        assert_eq!(
            content_type.as_deref(),
            Some("application/problem+json"),
            "{what}"
        );
        assert_eq!(body["status"], want_status.as_u16(), "{what}");
        let after = footprint(&server, &digest).await;
        // The wrong and the read token sent bytes the store has as pick@1.0.0 already.
        assert_eq!(after, before, "{what}: something was left behind");
        assert_eq!(after.2, 0, "{what}: an upload file was left behind");
        let (status, _) = get_json(&server, "/v1/components/bad/versions/1.0.0", READ).await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{what}: a version was recorded"
        );
    }
    for (path, code) in [
        ("/v1/components/Bad/versions/1.0.0", "invalid-name"),
        ("/v1/components/bad/versions/latest", "invalid-name"),
    ] {
        let (status, body, _) = put(&server, path, WRITE, step.clone()).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{path}: {body}"
        );
    }
    // Reading needs a token too.
    let response = server
        .client
        .get(server.at("/v1/components"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(
        response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );

    // Deleting is an admin's.
    let delete = |token: &'static str| {
        server
            .client
            .delete(server.at("/v1/components/pick/versions/2.0.0"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(delete(WRITE).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(
        delete(ADMIN).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(delete(ADMIN).await.unwrap().status(), StatusCode::NOT_FOUND);
    let (status, _) = get_json(&server, "/v1/components/pick/versions/stable", READ).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the tag went with its version"
    );
    let (_, list) = get_json(&server, "/v1/components", READ).await;
    assert_eq!(
        list["components"][0]["versions"],
        serde_json::json!(["1.0.0"])
    );

    // Operations: health, readiness, metrics by route template, a problem for no route.
    let (status, health) = get_json(&server, "/readyz", READ).await;
    assert_eq!(status, StatusCode::OK, "{health}");
    let expected_db = match setting {
        Setting::PostgresLocal | Setting::PostgresS3 => "postgres",
        _ => "sqlite",
    };
    assert_eq!(health["database"], expected_db);
    let metrics = server
        .client
        .get(server.at("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"route="/v1/components/{name}/versions/{version}",status="201""#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"kiln_component_uploads_total{outcome="not-a-component"} 1"#),
        "{metrics}"
    );
    assert!(!metrics.contains("pick"), "a name in a label: {metrics}");
    let (status, body) = get_json(&server, "/v2/nothing", READ).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("no-route"))
    );

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_on_sqlite_and_a_local_store() {
    suite(Setting::SqliteLocal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_on_postgres_and_a_local_store() {
    suite(Setting::PostgresLocal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_on_sqlite_and_s3() {
    suite(Setting::SqliteS3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_on_postgres_and_s3() {
    suite(Setting::PostgresS3).await;
}

/// `bytes` with one more custom section named `note` holding `payload`: other bytes, the same
/// component.
fn with_note(bytes: &[u8], payload: &str) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let mut section = vec![4u8];
    section.extend_from_slice(b"note");
    section.extend_from_slice(payload.as_bytes());
    assert!(section.len() < 128, "one LEB128 byte of size");
    out.push(0);
    out.push(section.len() as u8);
    out.extend_from_slice(&section);
    out
}

/// 10 clients upload 50 times at once: 25 versions each sent twice with the same bytes, and
/// two clients racing with other bytes for version 9.0.0. Every version ends with one digest,
/// each pair answered once 201 and once 200, the race answered 201 once and 409 (naming both
/// digests) for the other bytes.
async fn concurrent(setting: Setting) {
    let Some(server) = TestServer::start(setting).await else {
        return;
    };
    let base = command_component();
    let mut uploads: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..25 {
        let bytes = with_note(&base, &format!("v{i}"));
        uploads.push((format!("1.0.{i}"), bytes.clone()));
        uploads.push((format!("1.0.{i}"), bytes));
    }
    let (first, second) = (with_note(&base, "first"), with_note(&base, "second"));
    for _ in 0..5 {
        uploads.push(("9.0.0".into(), first.clone()));
        uploads.push(("9.0.0".into(), second.clone()));
    }
    let clients: Vec<reqwest::Client> = (0..10).map(|_| reqwest::Client::new()).collect();
    let tasks: Vec<_> = uploads
        .iter()
        .enumerate()
        .map(|(i, (version, bytes))| {
            let client = clients[i % clients.len()].clone();
            let url = server.at(&format!("/v1/components/race/versions/{version}"));
            let bytes = bytes.clone();
            tokio::spawn(async move {
                let response = client
                    .put(url)
                    .bearer_auth(WRITE)
                    .body(bytes)
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                (status, response.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    for i in 0..25 {
        let mut statuses: Vec<u16> = answers[2 * i..2 * i + 2]
            .iter()
            .map(|(s, _)| s.as_u16())
            .collect();
        statuses.sort();
        assert_eq!(
            statuses,
            [200, 201],
            "1.0.{i}: {:?}",
            &answers[2 * i..2 * i + 2]
        );
        let (_, shown) = get_json(
            &server,
            &format!("/v1/components/race/versions/1.0.{i}"),
            READ,
        )
        .await;
        assert_eq!(
            shown["digest"],
            Digest::of_bytes(&uploads[2 * i].1).to_string()
        );
    }
    let race = &answers[50..];
    assert_eq!(
        race.iter()
            .filter(|(s, _)| *s == StatusCode::CREATED)
            .count(),
        1,
        "{race:?}"
    );
    let (_, shown) = get_json(&server, "/v1/components/race/versions/9.0.0", READ).await;
    let winner = shown["digest"].as_str().unwrap().to_owned();
    for (status, body) in race {
        let sent_winner = *status != StatusCode::CONFLICT;
        if sent_winner {
            assert!(matches!(status.as_u16(), 200 | 201), "{body}");
            assert_eq!(body["digest"], winner);
        } else {
            assert_eq!(body["code"], "version-exists");
            assert_eq!(body["existing_digest"], winner);
            assert_ne!(body["uploaded_digest"], winner);
        }
    }
    // Five of each were sent; the loser's five were all refused.
    assert_eq!(
        race.iter()
            .filter(|(s, _)| *s == StatusCode::CONFLICT)
            .count(),
        5,
        "{race:?}"
    );
    assert_eq!(server.db.version_count().await.unwrap(), 26);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uploads_on_sqlite() {
    concurrent(Setting::SqliteLocal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uploads_on_postgres() {
    concurrent(Setting::PostgresLocal).await;
}

//! External inputs against a real S3-compatible server (moto's, on 127.0.0.1, started here):
//! an `s3://` input is fetched when the run is pinned and kept by content, so an unchanged
//! object is a cache hit without a download, changed bytes are a miss, and the same bytes
//! uploaded again are a hit although the object was replaced.

mod support;

use std::path::Path;
use std::process::Output;

use kiln_test_support::s3::{S3Server, s3_server_or_skip};
use support::{kiln, text};

const PIPELINE: &str = r#"apiVersion: kiln/v1
name: external
steps:
  count:
    container:
      image: busybox
      command: [sh, -c, "wc -l < {{inputs.data}} | tr -d ' ' > {{outputs.rows}}"]
    inputs:
      data: s3://datasets/train/part-0.csv
    outputs: [rows]
"#;

fn run(dir: &Path, server: &S3Server) -> (Output, serde_json::Value) {
    let out = kiln()
        .args(["run", "pipeline.yaml", "--output", "json"])
        .envs(server.env())
        .current_dir(dir)
        .output()
        .expect("kiln runs");
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out, json)
}

fn status(json: &serde_json::Value, step: &str) -> String {
    json["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["id"] == step))
        .map(|s| s["status"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

fn rows(dir: &Path) -> String {
    let out = kiln()
        .args(["artifact", "get", "latest", "count", "rows", "-o", "-"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

#[test]
fn an_s3_input_is_a_hit_when_unchanged_and_a_miss_when_its_bytes_change() {
    let Some(server) = s3_server_or_skip("external inputs from S3") else {
        return;
    };
    server.create_bucket("datasets").unwrap();
    let key = "train/part-0.csv";
    server.put_object("datasets", key, b"a,b\n1,2\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pipeline.yaml"), PIPELINE).unwrap();

    let (out, json) = run(dir.path(), &server);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(status(&json, "count"), "succeeded");
    assert!(
        stderr.contains("s3://datasets/train/part-0.csv: fetched"),
        "{stderr}"
    );
    assert_eq!(rows(dir.path()), "2");

    // Unchanged: the HEAD request's ETag is the one remembered, so nothing is downloaded.
    let (out, json) = run(dir.path(), &server);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(status(&json, "count"), "cached");
    assert!(
        stderr.contains("unchanged since it was fetched"),
        "{stderr}"
    );

    // Other bytes under the same key: downloaded, a miss, and explain names the object.
    server
        .put_object("datasets", key, b"a,b\n1,2\n3,4\n")
        .unwrap();
    let (out, json) = run(dir.path(), &server);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(status(&json, "count"), "succeeded");
    assert_eq!(rows(dir.path()), "3");
    let explain = kiln()
        .args(["explain", "latest", "count"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        text(&explain.stdout).contains("the object at `s3://datasets/train/part-0.csv` changed"),
        "{}{}",
        text(&explain.stdout),
        text(&explain.stderr)
    );

    // The first bytes again: the object was replaced (downloaded again), but its content is
    // what the cache knows, so the step is a hit.
    server.put_object("datasets", key, b"a,b\n1,2\n").unwrap();
    let (out, json) = run(dir.path(), &server);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("fetched"), "{stderr}");
    assert_eq!(status(&json, "count"), "cached");

    // A missing object stops the run before anything runs, saying so.
    server.delete_object("datasets", key).unwrap();
    let (out, _) = run(dir.path(), &server);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("s3://datasets/train/part-0.csv: no such object"),
        "{stderr}"
    );
    // Nothing half-downloaded is left beside the store.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join(".kiln/external"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

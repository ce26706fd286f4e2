//! `exports:` against a real S3-compatible server (moto's, on 127.0.0.1, started here): after
//! the steps, a file output lands as one object and a folder output as objects under a
//! prefix, byte for byte; an object that holds the bytes already is not uploaded again; new
//! bytes arrive; a big object goes up in parts; an export to a bucket that does not exist
//! fails the run saying so, and an export whose step failed is reported, not exported.

mod support;

use std::path::Path;
use std::process::Output;

use kiln_cas::Digest;
use kiln_test_support::s3::{S3Server, s3_server_or_skip};
use support::{kiln, text};

const PIPELINE: &str = r#"apiVersion: kiln/v1
name: exports
params:
  version: {type: string, default: v1, description: The model version.}
steps:
  train:
    container:
      image: busybox
      command:
        - sh
        - -c
        - |
          cat {{inputs.data}} > {{outputs.model}}
          echo weights >> {{outputs.model}}
          mkdir -p {{outputs.plots}}/deep
          cp {{inputs.data}} "{{outputs.plots}}/loss curve.txt"
          echo 0.9 > {{outputs.plots}}/deep/acc.txt
    inputs: {data: ./data.txt}
    outputs:
      model: model.bin
      plots: plots
exports:
  - from: train.model
    to: "s3://models/digits/{{params.version}}/model.bin"
  - from: train.plots
    to: s3://models/digits/{{params.version}}/plots/
"#;

fn run(dir: &Path, server: &S3Server, args: &[&str]) -> (Output, serde_json::Value) {
    let out = kiln()
        .args(["run", "pipeline.yaml", "--output", "json"])
        .args(args)
        .envs(server.env())
        .current_dir(dir)
        .output()
        .expect("kiln runs");
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out, json)
}

/// The last run's exports, as `kiln show --output json` gives them.
fn shown_exports(dir: &Path) -> Vec<serde_json::Value> {
    let out = kiln()
        .args(["show", "latest", "--output", "json"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["exports"].as_array().cloned().unwrap_or_default()
}

fn status_of(exports: &[serde_json::Value], from: &str) -> String {
    exports
        .iter()
        .find(|e| e["from"] == from)
        .map(|e| e["status"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

fn step_status(json: &serde_json::Value, step: &str) -> String {
    json["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["id"] == step))
        .map(|s| s["status"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

#[test]
fn outputs_are_exported_skipped_when_unchanged_and_replaced_when_changed() {
    let Some(server) = s3_server_or_skip("exports to S3") else {
        return;
    };
    server.create_bucket("models").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pipeline.yaml"), PIPELINE).unwrap();
    std::fs::write(dir.path().join("data.txt"), "a,b\n1,2\n").unwrap();

    let (out, json) = run(dir.path(), &server, &[]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(step_status(&json, "train"), "succeeded");
    assert!(
        stderr.contains("exported  train.model to s3://models/digits/v1/model.bin"),
        "{stderr}"
    );
    let model = server.get_object("models", "digits/v1/model.bin").unwrap();
    assert_eq!(model, b"a,b\n1,2\nweights\n");
    // The object is the step's output, digest for digest, and the record says so.
    let exports = json["exports"].as_array().unwrap();
    assert_eq!(exports.len(), 2, "{json}");
    assert_eq!(
        exports[0]["digest"],
        Digest::of_bytes(&model).to_string(),
        "{json}"
    );
    assert_eq!(
        json["steps"][0]["outputs"]["model"],
        Digest::of_bytes(&model).to_string()
    );
    assert_eq!(exports[0]["size"], model.len());
    // A folder: one object per file, under the prefix, names as they are.
    assert_eq!(
        server
            .get_object("models", "digits/v1/plots/loss curve.txt")
            .unwrap(),
        b"a,b\n1,2\n"
    );
    assert_eq!(
        server
            .get_object("models", "digits/v1/plots/deep/acc.txt")
            .unwrap(),
        b"0.9\n"
    );
    assert_eq!(exports[1]["objects"], 2, "{json}");
    assert_eq!(exports[1]["url"], "s3://models/digits/v1/plots/");
    let shown = shown_exports(dir.path());
    assert_eq!(status_of(&shown, "train.model"), "uploaded");
    assert_eq!(status_of(&shown, "train.plots"), "uploaded");

    // Again: the step comes from the cache, and each object holds these bytes already.
    let (out, json) = run(dir.path(), &server, &[]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(step_status(&json, "train"), "cached");
    assert!(stderr.contains("not uploaded again"), "{stderr}");
    let shown = shown_exports(dir.path());
    assert_eq!(status_of(&shown, "train.model"), "unchanged", "{shown:?}");
    assert_eq!(status_of(&shown, "train.plots"), "unchanged", "{shown:?}");
    assert!(shown.iter().all(|e| e["uploaded"] == 0), "{shown:?}");
    let table = kiln()
        .args(["show", "latest"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let table = text(&table.stdout);
    assert!(
        table.contains("train.model") && table.contains("unchanged"),
        "{table}"
    );

    // Something else wrote the object: it no longer holds kiln's bytes, so they go up again.
    server
        .put_object("models", "digits/v1/model.bin", b"tampered")
        .unwrap();
    let (out, _) = run(dir.path(), &server, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = shown_exports(dir.path());
    assert_eq!(status_of(&shown, "train.model"), "uploaded", "{shown:?}");
    assert_eq!(status_of(&shown, "train.plots"), "unchanged", "{shown:?}");
    assert_eq!(
        server.get_object("models", "digits/v1/model.bin").unwrap(),
        b"a,b\n1,2\nweights\n"
    );

    // New input bytes: the step runs, and the new bytes arrive.
    std::fs::write(dir.path().join("data.txt"), "a,b\n3,4\n").unwrap();
    let (out, json) = run(dir.path(), &server, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(step_status(&json, "train"), "succeeded");
    assert_eq!(
        server.get_object("models", "digits/v1/model.bin").unwrap(),
        b"a,b\n3,4\nweights\n"
    );
    let shown = shown_exports(dir.path());
    assert_eq!(status_of(&shown, "train.model"), "uploaded");
    // Of the folder, only the file that changed went up.
    let plots = shown.iter().find(|e| e["from"] == "train.plots").unwrap();
    assert_eq!(plots["uploaded"], 1, "{shown:?}");

    // Another version: another key, the old one kept.
    let (out, _) = run(dir.path(), &server, &["-p", "version=v2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        server.get_object("models", "digits/v2/model.bin").unwrap(),
        b"a,b\n3,4\nweights\n"
    );
}

#[test]
fn a_big_output_goes_up_in_parts_with_progress() {
    let Some(server) = s3_server_or_skip("a multipart export to S3") else {
        return;
    };
    server.create_bucket("big").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pipeline.yaml"),
        r#"apiVersion: kiln/v1
name: big-export
steps:
  make:
    container:
      image: busybox
      command: [sh, -c, "yes kiln | head -c 20000000 > {{outputs.blob}}"]
    outputs: [blob]
exports:
  - from: make.blob
    to: s3://big/blobs/
"#,
    )
    .unwrap();
    let (out, json) = run(dir.path(), &server, &[]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Not a terminal: progress comes as lines.
    assert!(
        stderr.contains("exporting s3://big/blobs/blob:"),
        "{stderr}"
    );
    let blob = server.get_object("big", "blobs/blob").unwrap();
    assert_eq!(blob.len(), 20_000_000);
    assert_eq!(
        json["exports"][0]["digest"],
        Digest::of_bytes(&blob).to_string()
    );
    assert_eq!(json["exports"][0]["url"], "s3://big/blobs/blob");

    // The digest kiln wrote with the parts is read back: nothing goes up again.
    let (out, _) = run(dir.path(), &server, &[]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("exporting s3://"), "{stderr}");
    assert_eq!(
        status_of(&shown_exports(dir.path()), "make.blob"),
        "unchanged"
    );
}

#[test]
fn a_missing_bucket_fails_the_run_and_a_failed_step_is_not_exported() {
    let Some(server) = s3_server_or_skip("a failed export to S3") else {
        return;
    };
    server.create_bucket("models").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pipeline.yaml"),
        r#"apiVersion: kiln/v1
name: failed-exports
steps:
  train:
    container:
      image: busybox
      command: [sh, -c, "echo w > {{outputs.model}}"]
    outputs: [model]
  broken:
    container:
      image: busybox
      command: [sh, -c, "exit 3"]
    outputs: [model]
exports:
  - from: train.model
    to: s3://no-such-bucket/model.bin
  - from: broken.model
    to: s3://models/broken.bin
  - from: train.model
    to: s3://models/model.bin
"#,
    )
    .unwrap();
    let (out, json) = run(dir.path(), &server, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(json["status"], "failed");
    assert_eq!(step_status(&json, "train"), "succeeded");
    assert!(
        stderr.contains(
            "export of train.model failed: s3://no-such-bucket/model.bin: no such bucket"
        ),
        "{stderr}"
    );
    assert!(
        stderr
            .contains("not exported broken.model to s3://models/broken.bin: step `broken` failed"),
        "{stderr}"
    );
    // The export after the failed one still ran.
    assert_eq!(server.get_object("models", "model.bin").unwrap(), b"w\n");
    let shown = shown_exports(dir.path());
    let statuses: Vec<&str> = shown
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["failed", "not-exported", "uploaded"],
        "{shown:?}"
    );

    // Only the export fails: the run still fails, with exit code 1, saying which URL.
    std::fs::write(
        dir.path().join("pipeline.yaml"),
        r#"apiVersion: kiln/v1
name: failed-export
steps:
  train:
    container:
      image: busybox
      command: [sh, -c, "echo w > {{outputs.model}}"]
    outputs: [model]
exports:
  - from: train.model
    to: s3://no-such-bucket/model.bin
"#,
    )
    .unwrap();
    let out = kiln()
        .args(["run", "pipeline.yaml"])
        .envs(server.env())
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("s3://no-such-bucket/model.bin"), "{stderr}");
    assert!(stderr.contains("failed"), "{stderr}");
}

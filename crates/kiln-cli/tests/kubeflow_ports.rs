//! The ported Kubeflow Pipelines / Argo samples in `examples/from-kubeflow/` run, each in a copy
//! of its folder, and do what their README says.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use support::{kiln, repo, text};

/// A copy of `examples/from-kubeflow/NAME` in a temporary folder.
fn copy_of(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let from = repo().join("examples/from-kubeflow").join(name);
    let to = dir.path().join(name);
    std::fs::create_dir(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    (dir, to)
}

fn kiln_in(dir: &Path, args: &[&str], env: &[(String, String)]) -> Output {
    kiln()
        .args(args)
        .envs(env.iter().cloned())
        .current_dir(dir)
        .output()
        .expect("kiln runs")
}

fn artifact(dir: &Path, step: &str, output: &str) -> String {
    let out = kiln_in(
        dir,
        &["artifact", "get", "latest", step, output, "-o", "-"],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn the_exit_handler_posts_a_summary_whatever_happened() {
    let (_keep, dir) = copy_of("exit-handler");
    let out = kiln_in(&dir, &["run", "pipeline.yaml", "-p", "fail=true"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        artifact(&dir, "post-summary", "message"),
        "pipeline exit-handler failed; failed: train\n"
    );
    let out = kiln_in(&dir, &["run", "pipeline.yaml"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        artifact(&dir, "post-summary", "message"),
        "pipeline exit-handler succeeded; failed: nothing\n"
    );
}

#[test]
fn the_dynamic_fan_out_runs_once_per_shard_the_first_step_listed() {
    let (_keep, dir) = copy_of("dynamic-fan-out");
    let out = kiln_in(&dir, &["run", "pipeline.yaml", "--output", "json"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("fans out to 4 instances"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        artifact(&dir, "total", "summary"),
        "1000 rows in 4 shards\n"
    );
    assert_eq!(artifact(&dir, "count[part-003]", "rows").trim(), "100");
    // Shards of 250 rows: a new list, four new instances.
    let out = kiln_in(
        &dir,
        &[
            "run",
            "pipeline.yaml",
            "-p",
            "shard_size=250",
            "--output",
            "json",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        artifact(&dir, "total", "summary"),
        "1000 rows in 4 shards\n"
    );
    assert_eq!(artifact(&dir, "count[part-003]", "rows").trim(), "250");
    // Back to 300: the same list as the first run, every step from the cache.
    let out = kiln_in(&dir, &["run", "pipeline.yaml", "--output", "json"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let steps = summary["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 6, "{summary}");
    assert!(steps.iter().all(|s| s["status"] == "cached"), "{summary}");
}

#[test]
fn the_secrets_reach_the_step_and_the_log_shows_them_redacted() {
    let (_keep, dir) = copy_of("secrets");
    let env = [
        (
            "KILN_SECRET_API_TOKEN".to_owned(),
            "t0ps3cret-port".to_owned(),
        ),
        ("KILN_SECRET_HF_TOKEN".to_owned(), "hf-abc-port".to_owned()),
    ];
    let out = kiln_in(&dir, &["run", "pipeline.yaml"], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        artifact(&dir, "login", "session"),
        "token of 14 characters; token file of 11 bytes\n"
    );
    let log = kiln_in(&dir, &["logs", "latest", "login"], &[]);
    assert!(
        text(&log.stdout).contains("authenticating with [secret:api-token]"),
        "{}",
        text(&log.stdout)
    );
}

#[test]
fn the_s3_input_is_fetched_once_while_unchanged() {
    let Some(server) = kiln_test_support::s3::s3_server_or_skip("the s3-input example") else {
        return;
    };
    server.create_bucket("kiln-examples").unwrap();
    server
        .put_object(
            "kiln-examples",
            "sales/2026-11.csv",
            b"region,amount\nnorth,120\nsouth,80\n",
        )
        .unwrap();
    let (_keep, dir) = copy_of("s3-input");
    let out = kiln_in(&dir, &["run", "pipeline.yaml"], &server.env());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(artifact(&dir, "count", "total"), "200\n");
    let out = kiln_in(&dir, &["run", "pipeline.yaml"], &server.env());
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("not downloaded again"), "{stderr}");
}

#[test]
fn the_join_reads_whichever_branch_ran() {
    let (_keep, dir) = copy_of("condition-join");
    let out = kiln_in(&dir, &["run", "pipeline.yaml", "--output", "json"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let status = |id: &str| {
        summary["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .map(|s| s["status"].as_str().unwrap().to_owned())
    };
    assert_eq!(status("heads").as_deref(), Some("succeeded"), "{summary}");
    assert_eq!(status("tails").as_deref(), Some("skipped"), "{summary}");
    assert_eq!(
        artifact(&dir, "announce", "message"),
        "it was heads (the coin said heads)\n"
    );
    // An even seed: the other branch runs, and `announce` reads it instead.
    let out = kiln_in(&dir, &["run", "pipeline.yaml", "-p", "seed=2"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        artifact(&dir, "announce", "message"),
        "it was tails (the coin said tails)\n"
    );
}

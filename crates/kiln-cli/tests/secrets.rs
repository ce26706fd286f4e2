//! Secrets reach the step that names them and nowhere else: two planted values, one from a
//! `--secrets` file and one from `KILN_SECRET_<NAME>`, one handed over as a variable and one
//! as a file, are searched for in everything kiln writes or prints: the state folder (plan,
//! records, cache entries, logs, store), a bundle of the run once replayed, and the output of
//! every command.

mod support;

use std::path::Path;
use std::process::Output;

use support::{kiln, text};

const PIPELINE: &str = r#"apiVersion: kiln/v1
name: secrets
params:
  fail:
    type: int
    default: 0
    description: The step's exit code.
steps:
  login:
    container:
      image: localhost/kiln-busybox:test
      command:
        - sh
        - -c
        - |
          echo "token is $API_TOKEN"
          echo "file says $(cat "$HF_TOKEN_FILE")" >&2
          printf %s "$API_TOKEN" | sha256sum | cut -c1-64 > {{outputs.token_digest}}
          cat "$HF_TOKEN_FILE" | sha256sum | cut -c1-64 > {{outputs.hf_digest}}
          exit {{params.fail}}
    secrets:
      API_TOKEN: api-token
      HF_TOKEN_FILE: {name: hf-token, as: file}
    outputs: [token_digest, hf_digest]
    cache: false
"#;

/// Every command's output, kept to be searched at the end.
struct Session<'a> {
    dir: &'a Path,
    printed: Vec<u8>,
    hf_token: String,
    backend: &'a str,
}

impl Session<'_> {
    fn kiln(&mut self, args: &[&str], secrets: bool) -> Output {
        let mut command = kiln();
        command.args(args).current_dir(self.dir);
        if secrets {
            command.env("KILN_SECRET_HF_TOKEN", &self.hf_token);
        } else {
            command.env_remove("KILN_SECRET_HF_TOKEN");
        }
        command.env_remove("KILN_SECRET_API_TOKEN");
        let out = command.output().expect("kiln runs");
        self.printed.extend_from_slice(&out.stdout);
        self.printed.extend_from_slice(&out.stderr);
        out
    }

    fn run(&mut self, extra: &[&str], secrets: bool) -> Output {
        let mut args = vec![
            "run",
            "pipeline.yaml",
            "--state",
            ".kiln",
            "--containers",
            self.backend,
        ];
        if secrets {
            args.extend(["--secrets", "secrets.yaml"]);
        }
        args.extend(extra);
        self.kiln(&args, secrets)
    }
}

fn sha256_hex(text: &str) -> String {
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            "printf %s \"$1\" | sha256sum | cut -c1-64",
            "sh",
            text,
        ])
        .output()
        .unwrap();
    text_trimmed(&out.stdout)
}

fn text_trimmed(bytes: &[u8]) -> String {
    text(bytes).trim().to_owned()
}

/// Every file under `dir` holding `needle`, with where.
fn files_containing(dir: &Path, needle: &[u8], found: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            files_containing(&path, needle, found);
        } else if meta.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path.display().to_string());
            }
        }
    }
}

fn planted(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("kiln-planted-{what}-{}-{nanos:09}", std::process::id())
}

fn a_secret_reaches_the_step_and_nowhere_else(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let api_token = planted("api");
    let hf_token = planted("hf");
    std::fs::write(dir.path().join("pipeline.yaml"), PIPELINE).unwrap();
    std::fs::write(
        dir.path().join("secrets.yaml"),
        format!("api-token: {api_token}\n"),
    )
    .unwrap();
    let mut s = Session {
        dir: dir.path(),
        printed: Vec::new(),
        hf_token: hf_token.clone(),
        backend,
    };

    // Without the secrets nothing runs, and kiln says how to provide them.
    let out = s.run(&[], false);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "step `login` needs secret `api-token` is not set: export `KILN_SECRET_API_TOKEN`"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("`KILN_SECRET_HF_TOKEN`"), "{stderr}");

    // With them, the step gets both values: it writes their digests.
    let out = s.run(&[], true);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for (output, value) in [("token_digest", &api_token), ("hf_digest", &hf_token)] {
        let got = s.kiln(
            &[
                "artifact", "get", "latest", "login", output, "-o", "-", "--state", ".kiln",
            ],
            false,
        );
        assert!(got.status.success(), "{}", text(&got.stderr));
        assert_eq!(text_trimmed(&got.stdout), sha256_hex(value), "{output}");
    }

    // What the step printed is in its log, with the values redacted.
    let logs = s.kiln(&["logs", "latest", "login", "--state", ".kiln"], false);
    let log = text(&logs.stdout);
    assert!(log.contains("token is [secret:api-token]"), "{log}");
    assert!(log.contains("file says [secret:hf-token]"), "{log}");

    // A failing step's message quotes the end of its log: redacted too.
    let out = s.run(&["-p", "fail=3", "--output", "json"], true);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let json = text(&out.stdout);
    assert!(json.contains("[secret:api-token]"), "{json}");

    for args in [
        &["show", "latest", "--output", "json", "--state", ".kiln"][..],
        &["runs", "--state", ".kiln"],
        &["explain", "latest", "login", "--state", ".kiln"],
        &["export", "latest", "-o", "run.kiln", "--state", ".kiln"],
        &["replay", "run.kiln", "--work", "replayed"],
    ] {
        let out = s.kiln(args, false);
        assert!(
            out.status.code().is_some_and(|c| c <= 1),
            "kiln {args:?}: {}",
            text(&out.stderr)
        );
    }
    assert!(dir.path().join("replayed").is_dir());

    let mut found = Vec::new();
    for value in [&api_token, &hf_token] {
        // `secrets.yaml` is the user's own file, and holds one of them by design.
        std::fs::remove_file(dir.path().join("secrets.yaml")).ok();
        files_containing(dir.path(), value.as_bytes(), &mut found);
        if s.printed
            .windows(value.len())
            .any(|w| w == value.as_bytes())
        {
            found.push("what kiln printed".to_owned());
        }
    }
    assert!(found.is_empty(), "a secret leaked into {found:?}");
}

#[test]
fn with_the_process_backend() {
    a_secret_reaches_the_step_and_nowhere_else("process");
}

#[test]
fn with_podman() {
    if !kiln_test_support::podman_or_skip("secrets with podman") {
        return;
    }
    a_secret_reaches_the_step_and_nowhere_else("podman");
}

//! The docker backend where, as on kiln's development machines, the docker client is
//! installed but no Docker daemon runs: docker must be reported unusable, with the daemon's
//! absence as the reason, and preflight must say so before any step runs.

mod common;

use common::container_step;
use kiln_container::{ContainerEngine, ContainerError, EngineExecutor, detect, probe};
use kiln_engine::Executor;

#[tokio::test]
async fn docker_without_a_daemon_is_unusable_with_a_reason() {
    match probe(ContainerEngine::Docker).await {
        Err(ContainerError::EngineUnusable { engine, reason }) => {
            assert_eq!(engine, "docker");
            assert!(
                reason.contains("Cannot connect to the Docker daemon"),
                "unexpected reason: {reason}"
            );
            let step = container_step("train", "python:3.11-slim", &["python3"], &[]);
            let problems = EngineExecutor::new(ContainerEngine::Docker)
                .preflight(&[&step])
                .await
                .unwrap_err();
            assert_eq!(problems.len(), 1);
            assert!(
                problems[0].starts_with("`docker` is installed but not usable: Cannot connect"),
                "{}",
                problems[0]
            );
        }
        Err(error @ ContainerError::EngineMissing { .. }) => {
            assert_eq!(
                error.to_string(),
                "`docker` is not installed (not found on PATH); install it (in kiln's repository: scripts/setup-containers.sh) or use `--containers process`"
            );
            eprintln!(
                "SKIPPED: the docker client is not installed, so there is no daemon-less client to probe"
            );
        }
        Err(other) => panic!("unexpected probe error: {other}"),
        Ok(version) => {
            eprintln!(
                "SKIPPED: a docker daemon answers here (version {version}); nothing to check"
            );
        }
    }
}

#[tokio::test]
async fn detect_reports_both_engines_in_order() {
    let found = detect().await;
    let engines: Vec<ContainerEngine> = found.iter().map(|p| p.engine).collect();
    assert_eq!(engines, [ContainerEngine::Podman, ContainerEngine::Docker]);
    for probe in &found {
        match &probe.result {
            Ok(version) => assert!(probe.usable() && !version.is_empty()),
            Err(reason) => assert!(!probe.usable() && !reason.to_string().is_empty()),
        }
    }
}

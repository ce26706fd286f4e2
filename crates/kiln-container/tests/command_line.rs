//! The exact `podman run` and `docker run` command lines, and what docker's own flag parser
//! makes of them.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::{container_step, paper_task, plan_mut, wasm_step};
use kiln_container::{ContainerEngine, command_line, container_name};

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

/// A training step with everything set: inputs, outputs, env, cpu, memory, a GPU.
fn training_task() -> kiln_engine::StagedTask {
    let mut step = container_step(
        "train[0]",
        "localhost/trainer:1",
        &["python3", "train.py"],
        &[
            "--data={{inputs.data}}",
            "--config",
            "{{inputs.cfg}}",
            "--out",
            "{{outputs.model}}",
        ],
    );
    let plan = plan_mut(&mut step);
    plan.env = [
        ("LR".to_owned(), "0.1".to_owned()),
        ("METRICS".to_owned(), "{{outputs.metrics}}".to_owned()),
    ]
    .into();
    plan.cpu_millis = Some(1500);
    plan.memory_bytes = Some(2 * 1024 * 1024 * 1024);
    plan.gpu = 1;
    paper_task(step)
}

const COMMON: &str = "run --rm --pull never --network none \
    --ulimit nofile=1024:1024 --ulimit nproc=1000:1000 --name kiln-r1-train-0-2 \
    --mount type=bind,src=/s/work/in/cfg,dst=/kiln/inputs/cfg,ro=true \
    --mount type=bind,src=/s/work/in/data,dst=/kiln/inputs/data,ro=true \
    --mount type=bind,src=/s/work/out,dst=/kiln/outputs \
    --mount type=bind,src=/s/work,dst=/kiln/work -w /kiln/work \
    --mount type=bind,src=/s/work/in,dst=/kiln/work/in,ro=true \
    --env LR=0.1 --env METRICS=/kiln/outputs/metrics \
    --env KILN_RUN_ID=r1 --env KILN_STEP=train[0] --env KILN_ATTEMPT=2 \
    --cpus 1.5 --memory 2147483648";

const COMMAND: &str = "--entrypoint python3 localhost/trainer:1 train.py \
    --data=/kiln/inputs/data --config /kiln/inputs/cfg --out /kiln/outputs/model";

#[test]
fn podman_command_line() {
    let expected = words(&format!(
        "podman --runtime runc {COMMON} --device nvidia.com/gpu=all {COMMAND}"
    ));
    assert_eq!(
        command_line(ContainerEngine::Podman, &training_task(), &BTreeMap::new()).unwrap(),
        expected
    );
}

#[test]
fn docker_command_line() {
    let expected = words(&format!("docker {COMMON} --gpus 1 {COMMAND}"));
    assert_eq!(
        command_line(ContainerEngine::Docker, &training_task(), &BTreeMap::new()).unwrap(),
        expected
    );
}

#[test]
fn without_a_command_the_image_entrypoint_runs_with_the_args() {
    let step = container_step("serve", "localhost/app:2", &[], &["--port", "80"]);
    let mut task = paper_task(step);
    task.inputs.clear();
    task.outputs.clear();
    assert_eq!(
        command_line(ContainerEngine::Podman, &task, &BTreeMap::new()).unwrap(),
        words(
            "podman --runtime runc run --rm --pull never --network none \
             --ulimit nofile=1024:1024 --ulimit nproc=1000:1000 --name kiln-r1-serve-2 \
             --mount type=bind,src=/s/work,dst=/kiln/work -w /kiln/work \
             --env KILN_RUN_ID=r1 --env KILN_STEP=serve --env KILN_ATTEMPT=2 \
             localhost/app:2 --port 80"
        )
    );
    let docker = command_line(ContainerEngine::Docker, &task, &BTreeMap::new()).unwrap();
    assert_eq!(docker[0], "docker");
    assert!(!docker.contains(&"--entrypoint".to_owned()));
    assert!(!docker.contains(&"--gpus".to_owned()));
    assert_eq!(
        docker[docker.len() - 3..],
        words("localhost/app:2 --port 80")
    );
}

#[test]
fn an_output_outside_the_outputs_folder_gets_its_own_mount() {
    let step = container_step("s", "img", &["sh", "-c", "{{outputs.report}}"], &[]);
    let mut task = paper_task(step);
    task.inputs.clear();
    task.outputs
        .insert("report".into(), PathBuf::from("/elsewhere/report.txt"));
    let argv = command_line(ContainerEngine::Podman, &task, &BTreeMap::new()).unwrap();
    let mounts: Vec<&str> = argv
        .windows(2)
        .filter(|w| w[0] == "--mount")
        .map(|w| w[1].as_str())
        .collect();
    assert_eq!(
        mounts,
        [
            "type=bind,src=/s/work/out,dst=/kiln/outputs",
            "type=bind,src=/elsewhere,dst=/kiln/extra-outputs/report",
            "type=bind,src=/s/work,dst=/kiln/work",
        ]
    );
    assert_eq!(
        argv.last().unwrap(),
        "/kiln/extra-outputs/report/report.txt"
    );
}

#[test]
fn container_names_are_sanitised() {
    let mut task = paper_task(container_step("tune[12]", "img", &["true"], &[]));
    task.run_id = "20260101-000000-000-ab12".into();
    task.attempt = 3;
    assert_eq!(
        container_name(&task),
        "kiln-20260101-000000-000-ab12-tune-12-3"
    );
}

#[test]
fn a_comma_in_a_path_is_refused() {
    let mut task = paper_task(container_step("s", "img", &["true"], &[]));
    task.inputs
        .insert("odd".into(), PathBuf::from("/s/work/in/a,b"));
    assert_eq!(
        command_line(ContainerEngine::Podman, &task, &BTreeMap::new())
            .unwrap_err()
            .to_string(),
        "path `/s/work/in/a,b` contains a comma or a double quote, which a container engine's `--mount` cannot express"
    );
}

#[test]
fn a_wasm_step_has_no_command_line() {
    let task = paper_task(wasm_step("prep"));
    assert_eq!(
        command_line(ContainerEngine::Docker, &task, &BTreeMap::new())
            .unwrap_err()
            .to_string(),
        "step `prep` is not a container step"
    );
}

/// docker parses every flag on the client before it calls the daemon, so where the client is
/// installed without a daemon (as here), the command line must get as far as "cannot connect".
#[test]
fn the_docker_client_accepts_the_command_line() {
    let argv = command_line(ContainerEngine::Docker, &training_task(), &BTreeMap::new()).unwrap();
    let output = match std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .output()
    {
        Ok(output) => output,
        Err(error) => {
            eprintln!("SKIPPED: the docker client is not installed here ({error})");
            return;
        }
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("Cannot connect to the Docker daemon") {
        return;
    }
    if stderr.contains("No such image") || stderr.contains("Unable to find image") {
        // A daemon answered: it got past the flags too.
        eprintln!("note: a docker daemon answers here; it rejected only the made-up image");
        return;
    }
    panic!("docker did not accept the command line: {stderr}");
}

#[test]
fn requests_become_shares_and_a_reservation_and_secrets_never_appear_with_values() {
    let mut step = container_step("train", "img", &["python3", "train.py"], &[]);
    let plan = plan_mut(&mut step);
    plan.cpu_millis = Some(4000);
    plan.cpu_request_millis = Some(1500);
    plan.memory_bytes = Some(8 << 30);
    plan.memory_request_bytes = Some(2 << 30);
    plan.secrets.insert(
        "API_TOKEN".into(),
        kiln_plan::SecretRef {
            name: "api".into(),
            file: false,
        },
    );
    plan.secrets.insert(
        "HF_TOKEN_FILE".into(),
        kiln_plan::SecretRef {
            name: "hf".into(),
            file: true,
        },
    );
    let task = paper_task(step);
    let files = BTreeMap::from([("HF_TOKEN_FILE".to_owned(), PathBuf::from("/private/hf"))]);
    let argv = command_line(ContainerEngine::Podman, &task, &files).unwrap();
    let line = argv.join(" ");
    for flag in [
        "--cpus 4",
        "--memory 8589934592",
        "--cpu-shares 1536",
        "--memory-reservation 2147483648",
        "--env API_TOKEN --mount",
        "--mount type=bind,src=/private/hf,dst=/kiln/secrets/hf,ro=true --env HF_TOKEN_FILE=/kiln/secrets/hf",
    ] {
        assert!(line.contains(flag), "{flag} not in {line}");
    }
}

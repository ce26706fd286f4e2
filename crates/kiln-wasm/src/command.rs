//! What a guest sees of its step: the folders mapped into it and, for plain
//! `wasi:cli/command` steps, the arguments of the calling convention (see the crate
//! documentation); step-world components get the same folders and a typed context instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_engine::{StagedTask, fill_paths};
use kiln_plan::{CommandLine, StepKind};
use kiln_spec::Value;

use crate::WasmError;

/// Where the guest finds its inputs (read-only).
pub const GUEST_IN: &str = "/in";
/// Where the guest writes its outputs.
pub const GUEST_OUT: &str = "/out";

/// The folders, artifacts and arguments of one guest run.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestLayout {
    /// Host folder preopened read-only at [`GUEST_IN`].
    pub in_dir: PathBuf,
    /// Host folder preopened read-write at [`GUEST_OUT`].
    pub out_dir: PathBuf,
    /// The step's id (`evaluate[1]`).
    pub step: String,
    /// Inputs by name with their guest paths (`/in/NAME`), in name order.
    pub inputs: Vec<(String, String)>,
    /// Outputs by name with their guest paths (`/out/NAME`), in name order.
    pub outputs: Vec<(String, String)>,
    /// The step's params.
    pub params: BTreeMap<String, Value>,
    /// A command guest's argv, program name first: kiln's convention, or the step's own
    /// `args` with guest paths filled in.
    pub args: Vec<String>,
    /// Whether `args` are the step's own (`args:` in the pipeline), not the convention.
    pub own_args: bool,
    /// The guest's environment (the step's `env`, guest paths filled in), sorted by name.
    pub env: Vec<(String, String)>,
    /// The input read as stdin: its name and host path.
    pub stdin: Option<(String, PathBuf)>,
    /// The output stdout is written to: its name and host path.
    pub stdout: Option<(String, PathBuf)>,
}

impl GuestLayout {
    /// The layout of a step attempt: `task.workdir/in` and `task.workdir/out`, where the
    /// engine materialises inputs and expects outputs, and the argv of the convention.
    pub fn for_task(task: &StagedTask) -> Result<Self, WasmError> {
        let in_dir = task.workdir.join("in");
        let out_dir = task.workdir.join("out");
        let mut args = vec![task.step.step.clone()];
        let mut inputs = Vec::with_capacity(task.inputs.len());
        let mut outputs = Vec::with_capacity(task.outputs.len());
        for (name, path) in &task.inputs {
            let guest = guest_path(&in_dir, GUEST_IN, path).ok_or_else(|| WasmError::Layout {
                step: task.step.id.to_string(),
                what: format!("input `{name}`"),
                path: path.clone(),
                dir: in_dir.clone(),
            })?;
            args.push("--in".to_owned());
            args.push(format!("{name}={guest}"));
            inputs.push((name.clone(), guest));
        }
        for (name, path) in &task.outputs {
            let guest = guest_path(&out_dir, GUEST_OUT, path).ok_or_else(|| WasmError::Layout {
                step: task.step.id.to_string(),
                what: format!("output `{name}`"),
                path: path.clone(),
                dir: out_dir.clone(),
            })?;
            args.push("--out".to_owned());
            args.push(format!("{name}={guest}"));
            outputs.push((name.clone(), guest));
        }
        let command = match &task.step.kind {
            StepKind::Wasm { command, .. } => command.clone(),
            StepKind::Container(_) => CommandLine::default(),
        };
        let guest_inputs: BTreeMap<String, String> = inputs.iter().cloned().collect();
        let guest_outputs: BTreeMap<String, String> = outputs.iter().cloned().collect();
        let fill = |text: &str| fill_paths(text, &guest_inputs, &guest_outputs);
        let own_args = command.args.is_some();
        match &command.args {
            Some(own) => {
                args.truncate(1);
                args.extend(own.iter().map(|a| fill(a)));
            }
            None => args.extend(param_args(&task.step.params)),
        }
        let env = command
            .env
            .iter()
            .map(|(k, v)| (k.clone(), fill(v)))
            .collect();
        let stream = |name: &Option<String>, paths: &BTreeMap<String, PathBuf>, what: &str| {
            name.as_ref()
                .map(|name| {
                    paths
                        .get(name)
                        .map(|path| (name.clone(), path.clone()))
                        .ok_or_else(|| WasmError::CommandLine {
                            step: task.step.id.to_string(),
                            message: format!("{what} `{name}`, which the step does not have"),
                        })
                })
                .transpose()
        };
        let stdin = stream(&command.stdin, &task.inputs, "stdin reads input")?;
        let stdout = stream(&command.stdout, &task.outputs, "stdout writes output")?;
        Ok(Self {
            in_dir,
            out_dir,
            step: task.step.id.to_string(),
            inputs,
            outputs,
            params: task.step.params.clone(),
            args,
            own_args,
            env,
            stdin,
            stdout,
        })
    }
}

/// `--param NAME=VALUE` pairs in name order: strings as they are, numbers and bools in their
/// plain form (`3`, `0.5`, `1.0`, `true`), lists comma-joined (`0.01,0.1,1.0`).
pub fn param_args(params: &BTreeMap<String, Value>) -> Vec<String> {
    let mut args = Vec::with_capacity(params.len() * 2);
    for (name, value) in params {
        args.push("--param".to_owned());
        args.push(format!("{name}={}", param_text(value)));
    }
    args
}

fn param_text(value: &Value) -> String {
    match value {
        Value::List(items) => items.iter().map(param_text).collect::<Vec<_>>().join(","),
        other => other.to_template_string(),
    }
}

/// The guest path of `path` when it lies under `host_dir` (`/in/name`), `None` otherwise.
fn guest_path(host_dir: &Path, guest_dir: &str, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(host_dir).ok()?;
    let mut guest = guest_dir.to_owned();
    let mut any = false;
    for part in rel.components() {
        let std::path::Component::Normal(part) = part else {
            return None;
        };
        guest.push('/');
        guest.push_str(part.to_str()?);
        any = true;
    }
    any.then_some(guest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_paths_under_the_folder() {
        let dir = Path::new("/w/in");
        assert_eq!(
            guest_path(dir, "/in", Path::new("/w/in/table")),
            Some("/in/table".into())
        );
        assert_eq!(
            guest_path(dir, "/in", Path::new("/w/in/a/b.csv")),
            Some("/in/a/b.csv".into())
        );
        assert_eq!(guest_path(dir, "/in", Path::new("/w/in")), None);
        assert_eq!(guest_path(dir, "/in", Path::new("/w/out/x")), None);
        assert_eq!(guest_path(dir, "/in", Path::new("/w/in/../x")), None);
    }

    #[test]
    fn params_in_plain_text_sorted() {
        let params = BTreeMap::from([
            ("seed".to_owned(), Value::Int(0)),
            ("fraction".to_owned(), Value::Float(0.2)),
            ("whole".to_owned(), Value::Float(1.0)),
            ("name".to_owned(), Value::String("a b".into())),
            ("on".to_owned(), Value::Bool(true)),
            (
                "lrs".to_owned(),
                Value::List(vec![Value::Float(0.01), Value::Float(0.1), Value::Int(1)]),
            ),
        ]);
        assert_eq!(
            param_args(&params),
            [
                "--param",
                "fraction=0.2",
                "--param",
                "lrs=0.01,0.1,1",
                "--param",
                "name=a b",
                "--param",
                "on=true",
                "--param",
                "seed=0",
                "--param",
                "whole=1.0",
            ]
        );
    }
}

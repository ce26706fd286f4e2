//! `kiln graph`: the DAG as Graphviz dot or Mermaid.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::ValueEnum;
use kiln_plan::{InputSource, Plan, StepKind};

/// Draw a pipeline's DAG.
///
/// Wasm steps are rounded and green, container steps square and blue, fan-out steps are
/// stacked and say how many instances they expand to, workspace files are notes. An edge is
/// labelled with the output it carries; a thick edge collects every fan-out instance; a
/// dotted edge is an `after` without data.
///
/// Render dot with `kiln graph p.yaml | dot -Tsvg > p.svg`; Mermaid renders in GitHub
/// Markdown and at mermaid.live.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pipeline file
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Output format
    #[arg(long, short, value_enum, default_value_t = Format::Dot)]
    format: Format,
    /// Set a param (it can change how many instances a fan-out has): NAME=VALUE
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE", value_parser = crate::parse_param)]
    params: Vec<(String, String)>,
}

/// Picture formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Graphviz dot.
    Dot,
    /// Mermaid flowchart.
    Mermaid,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (source, compiled) = kiln_plan::plan_file(&args.file, &args.params)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let Some(plan) = compiled.plan else {
        eprint!(
            "{}",
            source.render(&compiled.diagnostics, crate::stderr_color())
        );
        return Ok(ExitCode::FAILURE);
    };
    let graph = StepGraph::from_plan(&plan);
    print!(
        "{}",
        match args.format {
            Format::Dot => graph.dot(&plan.pipeline),
            Format::Mermaid => graph.mermaid(),
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// A node of the picture: one step (all its fan-out instances) or one workspace file.
struct Node {
    label: String,
    kind: NodeKind,
    fan_out: bool,
}

#[derive(PartialEq)]
enum NodeKind {
    Wasm,
    Container,
    File,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum EdgeKind {
    Data,
    Collect,
    After,
}

struct StepGraph {
    nodes: Vec<Node>,
    edges: BTreeSet<(usize, usize, EdgeKind, String)>,
}

impl StepGraph {
    /// Folds fan-out instances back into one node per step.
    fn from_plan(plan: &Plan) -> Self {
        let mut names: Vec<&str> = Vec::new();
        for step in &plan.steps {
            if !names.contains(&step.step.as_str()) {
                names.push(&step.step);
            }
        }
        let node_of = |name: &str| names.iter().position(|n| *n == name).expect("planned step");
        let mut nodes: Vec<Node> = names
            .iter()
            .map(|name| {
                let instances: Vec<_> = plan.steps.iter().filter(|s| s.step == *name).collect();
                let first = instances[0];
                let fan_out = first.instance.is_some();
                let mut label = (*name).to_owned();
                if fan_out {
                    label.push_str(&format!(" ×{}", instances.len()));
                }
                let kind = match &first.kind {
                    StepKind::Wasm { .. } => {
                        label.push_str("\nwasm");
                        NodeKind::Wasm
                    }
                    StepKind::Container(c) => {
                        label.push_str("\ncontainer");
                        if c.gpu > 0 {
                            label.push_str(&format!(" · gpu {}", c.gpu));
                        }
                        NodeKind::Container
                    }
                };
                if let Some(when) = &first.when {
                    label.push_str(&format!("\nwhen {when}"));
                }
                Node {
                    label,
                    kind,
                    fan_out,
                }
            })
            .collect();
        // Workspace files and external objects become nodes after the steps.
        let mut files: Vec<&str> = Vec::new();
        for step in &plan.steps {
            for source in step.inputs.values() {
                if let InputSource::Workspace { path: file } | InputSource::External { url: file } =
                    source
                    && !files.contains(&file.as_str())
                {
                    files.push(file);
                }
            }
        }
        let base = nodes.len();
        nodes.extend(files.iter().map(|file| Node {
            label: (*file).to_owned(),
            kind: NodeKind::File,
            fan_out: false,
        }));
        let mut edges = BTreeSet::new();
        for step in &plan.steps {
            let to = node_of(&step.step);
            let mut fed_by = BTreeSet::new();
            for (input, source) in &step.inputs {
                match source {
                    InputSource::Step { step: id, output } => {
                        let producer = &plan.step(id).expect("planned producer").step;
                        let from = node_of(producer);
                        fed_by.insert(from);
                        let per_item = plan.step(id).is_some_and(|p| p.instance.is_some());
                        let label = if per_item {
                            format!("{output} (per item)")
                        } else {
                            output.clone()
                        };
                        edges.insert((from, to, EdgeKind::Data, label));
                    }
                    InputSource::Collect {
                        step: producer,
                        output,
                        instances,
                    } => {
                        let from = node_of(producer);
                        fed_by.insert(from);
                        edges.insert((
                            from,
                            to,
                            EdgeKind::Collect,
                            format!("{output} (all {})", instances.len()),
                        ));
                    }
                    InputSource::Workspace { path } | InputSource::External { url: path } => {
                        let file = base + files.iter().position(|f| f == path).expect("listed");
                        edges.insert((file, to, EdgeKind::Data, input.clone()));
                    }
                    InputSource::Param { .. } | InputSource::RunStatus => {}
                }
            }
            for dep in &step.depends_on {
                let from = node_of(&plan.step(dep).expect("planned dependency").step);
                if !fed_by.contains(&from) {
                    edges.insert((from, to, EdgeKind::After, String::new()));
                }
            }
        }
        Self { nodes, edges }
    }

    fn dot(&self, name: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "digraph {} {{", quote(name));
        out.push_str("  rankdir=LR;\n  node [fontname=\"Helvetica\", fontsize=11];\n  edge [fontname=\"Helvetica\", fontsize=10];\n");
        for (i, node) in self.nodes.iter().enumerate() {
            let style = match (&node.kind, node.fan_out) {
                (NodeKind::Wasm, false) => {
                    "shape=box, style=\"rounded,filled\", fillcolor=\"#dff5e1\", color=\"#2e7d32\""
                }
                (NodeKind::Wasm, true) => {
                    "shape=box3d, style=filled, fillcolor=\"#dff5e1\", color=\"#2e7d32\""
                }
                (NodeKind::Container, false) => {
                    "shape=box, style=filled, fillcolor=\"#dde8fb\", color=\"#1565c0\""
                }
                (NodeKind::Container, true) => {
                    "shape=box3d, style=filled, fillcolor=\"#dde8fb\", color=\"#1565c0\""
                }
                (NodeKind::File, _) => "shape=note, color=\"#777777\"",
            };
            let _ = writeln!(out, "  n{i} [label={}, {style}];", quote(&node.label));
        }
        for (from, to, kind, label) in &self.edges {
            let style = match kind {
                EdgeKind::Data => "",
                EdgeKind::Collect => ", style=bold, penwidth=2",
                EdgeKind::After => ", style=dotted, label=\"after\"",
            };
            if label.is_empty() {
                let _ = writeln!(
                    out,
                    "  n{from} -> n{to} [{}];",
                    style.trim_start_matches(", ")
                );
            } else {
                let _ = writeln!(out, "  n{from} -> n{to} [label={}{style}];", quote(label));
            }
        }
        out.push_str("}\n");
        out
    }

    fn mermaid(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        for (i, node) in self.nodes.iter().enumerate() {
            let label = mermaid_text(&node.label);
            let shape = match (&node.kind, node.fan_out) {
                (NodeKind::File, _) => format!("n{i}[/\"{label}\"/]"),
                (_, true) => format!("n{i}[[\"{label}\"]]"),
                (NodeKind::Wasm, false) => format!("n{i}(\"{label}\")"),
                (NodeKind::Container, false) => format!("n{i}[\"{label}\"]"),
            };
            let _ = writeln!(out, "  {shape}");
        }
        for (from, to, kind, label) in &self.edges {
            let arrow = match kind {
                EdgeKind::Data => "-->",
                EdgeKind::Collect => "==>",
                EdgeKind::After => "-.->",
            };
            let label = if *kind == EdgeKind::After {
                "after"
            } else {
                label.as_str()
            };
            if label.is_empty() {
                let _ = writeln!(out, "  n{from} {arrow} n{to}");
            } else {
                let _ = writeln!(out, "  n{from} {arrow}|\"{}\"| n{to}", mermaid_text(label));
            }
        }
        out.push_str("  classDef wasm fill:#dff5e1,stroke:#2e7d32\n");
        out.push_str("  classDef container fill:#dde8fb,stroke:#1565c0\n");
        out.push_str("  classDef file fill:#ffffff,stroke:#777777\n");
        for (class, kind) in [
            ("wasm", NodeKind::Wasm),
            ("container", NodeKind::Container),
            ("file", NodeKind::File),
        ] {
            let members: Vec<String> = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.kind == kind)
                .map(|(i, _)| format!("n{i}"))
                .collect();
            if !members.is_empty() {
                let _ = writeln!(out, "  class {} {class}", members.join(","));
            }
        }
        out
    }
}

fn quote(s: &str) -> String {
    format!(
        "\"{}\"",
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    )
}

fn mermaid_text(s: &str) -> String {
    s.replace('"', "#quot;").replace('\n', "<br/>")
}

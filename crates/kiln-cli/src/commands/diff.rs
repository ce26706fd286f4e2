//! `kiln diff`: what changed between two runs.

use std::collections::BTreeSet;
use std::process::ExitCode;

use kiln_engine::{
    AttemptStatus, KeyParts, RunView, StepRecord, StepView, diff_keys, list_changes,
};

use super::state::{StateArgs, metric_text, read_view, run_params, run_status, short_digest};
use crate::Output;

/// Say what changed between two runs: params, metrics, outputs, and why steps re-ran
///
/// From run A to run B: params, each step's outcome, metrics (with the delta) and output
/// digests, the steps only one of them has, why each step that B ran did not reuse A's
/// result (what differs in its cache key), and which steps B took from the cache.
///
/// Steps are matched by id (`train[0]`) and printed by label (`train[lr=0.1]`). Only what
/// differs is printed unless `--all`; the JSON carries every param and metric, with
/// `changed`. The exit status is 0 whatever differs.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The earlier run: an id, a unique prefix of it, or `latest`
    #[arg(value_name = "RUN_A")]
    a: String,
    /// The later run, in the same forms
    #[arg(value_name = "RUN_B")]
    b: String,
    /// Print unchanged params and metrics too
    #[arg(long)]
    all: bool,
    /// Print the differences as JSON on stdout
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    state: StateArgs,
}

/// One run of the two.
struct Side {
    id: String,
    view: RunView,
}

/// A param in A and B.
struct ParamDiff {
    name: String,
    before: Option<kiln_spec::Value>,
    after: Option<kiln_spec::Value>,
}

/// A step of both runs whose outcome differs.
struct StatusDiff {
    id: String,
    before: String,
    after: String,
}

/// A metric of a step in A and B.
struct MetricDiff {
    id: String,
    metric: String,
    before: Option<f64>,
    after: Option<f64>,
}

/// An output of a step whose digest differs.
struct OutputDiff {
    id: String,
    output: String,
    before: Option<String>,
    after: Option<String>,
}

/// Why B ran a step that A has.
struct Rerun {
    id: String,
    /// What differs in the cache key.
    changes: Vec<Change>,
    /// Why it ran when nothing in the key differs.
    reason: Option<String>,
}

/// One difference in a cache key, as people read it.
struct Change {
    what: String,
    before: String,
    after: String,
}

/// Everything that differs from A to B.
struct RunDiff {
    params: Vec<ParamDiff>,
    statuses: Vec<StatusDiff>,
    metrics: Vec<MetricDiff>,
    outputs: Vec<OutputDiff>,
    only_a: Vec<String>,
    only_b: Vec<String>,
    reruns: Vec<Rerun>,
    /// Steps B took from the cache, with the run they came from.
    cached: Vec<(String, Option<String>)>,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let state = args.state.existing()?;
    let side = |query: &str| -> anyhow::Result<Side> {
        let id = state.resolve_run(query).map_err(anyhow::Error::msg)?;
        if !state.record_path(&id).is_file() {
            anyhow::bail!("run {id} has no record");
        }
        let view = read_view(&state, &id);
        Ok(Side { id, view })
    };
    let (a, b) = (side(&args.a)?, side(&args.b)?);
    let diff = compare(&a, &b);
    match args.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&diff_json(&a, &b, &diff))?
        ),
        Output::Text => print!("{}", diff_text(&a, &b, &diff, args.all)),
    }
    Ok(ExitCode::SUCCESS)
}

fn compare(a: &Side, b: &Side) -> RunDiff {
    let (params_a, params_b) = (run_params(&a.view).1, run_params(&b.view).1);
    let names: BTreeSet<&String> = params_a
        .into_iter()
        .chain(params_b)
        .flat_map(|p| p.keys())
        .collect();
    let params = names
        .into_iter()
        .map(|name| ParamDiff {
            name: name.clone(),
            before: params_a.and_then(|p| p.get(name)).cloned(),
            after: params_b.and_then(|p| p.get(name)).cloned(),
        })
        .collect();
    let mut diff = RunDiff {
        params,
        statuses: Vec::new(),
        metrics: Vec::new(),
        outputs: Vec::new(),
        only_a: Vec::new(),
        only_b: Vec::new(),
        reruns: Vec::new(),
        cached: Vec::new(),
    };
    for (id, _) in &a.view.steps {
        if b.view.step(id).is_none() {
            diff.only_a.push(id.clone());
        }
    }
    for (id, step_b) in &b.view.steps {
        if let Some(record) = step_b
            .last
            .as_ref()
            .filter(|r| r.status == AttemptStatus::Cached)
        {
            diff.cached.push((id.clone(), record.reused_from.clone()));
        }
        let Some(step_a) = a.view.step(id) else {
            diff.only_b.push(id.clone());
            continue;
        };
        let (before, after) = (outcome(step_a), outcome(step_b));
        if kind_of(before) != kind_of(after) {
            let failure = |s: &StepView| match &s.last {
                Some(r) if r.status == AttemptStatus::Failed => {
                    r.failure_kind.map_or(String::new(), |k| format!(" ({k})"))
                }
                _ => String::new(),
            };
            diff.statuses.push(StatusDiff {
                id: id.clone(),
                before: format!("{before}{}", failure(step_a)),
                after: format!("{after}{}", failure(step_b)),
            });
        }
        let (ra, rb) = (step_a.last.as_ref(), step_b.last.as_ref());
        let no_metrics = Default::default();
        let (ma, mb) = (
            ra.map_or(&no_metrics, |r| &r.metrics),
            rb.map_or(&no_metrics, |r| &r.metrics),
        );
        for metric in ma.keys().chain(mb.keys()).collect::<BTreeSet<_>>() {
            diff.metrics.push(MetricDiff {
                id: id.clone(),
                metric: metric.clone(),
                before: ma.get(metric).copied(),
                after: mb.get(metric).copied(),
            });
        }
        // A failed attempt has no outputs: its status says so, every output `→ none` would
        // only repeat it.
        if let (Some(ra), Some(rb)) = (ra, rb)
            && ra.status != AttemptStatus::Failed
            && rb.status != AttemptStatus::Failed
        {
            for output in ra
                .outputs
                .keys()
                .chain(rb.outputs.keys())
                .collect::<BTreeSet<_>>()
            {
                let (before, after) = (ra.outputs.get(output), rb.outputs.get(output));
                if before != after {
                    diff.outputs.push(OutputDiff {
                        id: id.clone(),
                        output: output.clone(),
                        before: before.map(|d| d.to_string()),
                        after: after.map(|d| d.to_string()),
                    });
                }
            }
        }
        if let Some(rb) = rb.filter(|r| r.status != AttemptStatus::Cached) {
            diff.reruns.push(why_rerun(id, step_a, rb));
        }
    }
    diff
}

/// A step's outcome in a run, as `kiln show` names it.
fn outcome(step: &StepView) -> &'static str {
    let skipped = step
        .skipped
        .as_ref()
        .is_some_and(|reason| step.last.is_none() || reason.starts_with("cancelled"));
    match &step.last {
        _ if skipped => "skipped",
        Some(r) => match r.status {
            AttemptStatus::Succeeded => "succeeded",
            AttemptStatus::Cached => "cached",
            AttemptStatus::Failed => "failed",
        },
        None => "unfinished",
    }
}

/// Outcomes that differ only in where the outputs came from are the same outcome.
fn kind_of(outcome: &str) -> &str {
    if outcome == "cached" {
        "succeeded"
    } else {
        outcome
    }
}

/// Why B ran step `id` (its attempt `after`) rather than reuse what A had.
fn why_rerun(id: &str, in_a: &StepView, after: &StepRecord) -> Rerun {
    let rerun = |changes, reason: String| Rerun {
        id: id.to_owned(),
        changes,
        reason: Some(reason),
    };
    let Some(before) = &in_a.last else {
        let reason = in_a.skipped.as_deref().unwrap_or("it had not finished");
        return rerun(Vec::new(), format!("it did not run in A: {reason}"));
    };
    let keys = serde_json::from_value::<KeyParts>(before.key.clone()).and_then(|before| {
        serde_json::from_value::<KeyParts>(after.key.clone()).map(|after| (before, after))
    });
    let (key_a, key_b) = match keys {
        Ok(keys) => keys,
        Err(e) => return rerun(Vec::new(), format!("a cache key cannot be read: {e}")),
    };
    let changes: Vec<Change> = diff_keys(&key_a, &key_b)
        .iter()
        .flat_map(|c| readable_changes(&c.what, &c.before, &c.after))
        .collect();
    if !changes.is_empty() {
        return Rerun {
            id: id.to_owned(),
            changes,
            reason: None,
        };
    }
    rerun(
        Vec::new(),
        if before.status == AttemptStatus::Failed {
            "same key; it failed in A, and failures are not cached".to_owned()
        } else {
            "same key; caching was off (`--no-cache` or `cache: false`) or the cached outputs were gone from the store".to_owned()
        },
    )
}

/// A key change as people read it: `param epochs` for a step param, and for a list of the
/// same length (a container's args) only the items that differ, each named by the flag
/// before it: `container.args[3] (--epochs): "20" → "30"`.
fn readable_changes(what: &str, before: &str, after: &str) -> Vec<Change> {
    let what = match what.strip_prefix("params.") {
        Some(name) => format!("param {name}"),
        None => what.to_owned(),
    };
    let lists = serde_json::from_str::<Vec<serde_json::Value>>(before)
        .and_then(|b| serde_json::from_str::<Vec<serde_json::Value>>(after).map(|a| (b, a)));
    if let Ok((b, a)) = lists
        && b.len() == a.len()
    {
        let side = |v: Option<serde_json::Value>| v.map_or("none".to_owned(), |v| v.to_string());
        return list_changes(&b, &a)
            .into_iter()
            .map(|item| Change {
                what: format!(
                    "{what}[{}]{}",
                    item.index,
                    item.flag.map_or(String::new(), |flag| format!(" ({flag})"))
                ),
                before: side(item.before),
                after: side(item.after),
            })
            .collect();
    }
    vec![Change {
        what,
        before: before.to_owned(),
        after: after.to_owned(),
    }]
}

/// How a step of both runs is printed: B's label, and A's where it reads otherwise (a
/// fan-out over other items pairs other items under one id).
fn step_name(a: &Side, b: &Side, id: &str) -> String {
    let (la, lb) = (a.view.label(id), b.view.label(id));
    if la == lb || a.view.step(id).is_none() {
        lb.to_owned()
    } else {
        format!("{lb} (was {la})")
    }
}

/// A digest as a table shows it; other values as they are.
fn short(value: &str) -> &str {
    if value.starts_with("blake3:") {
        short_digest(value)
    } else {
        value
    }
}

fn or_none(value: Option<String>) -> String {
    value.unwrap_or_else(|| "none".to_owned())
}

fn delta_text(before: Option<f64>, after: Option<f64>) -> String {
    match (before, after) {
        (Some(b), Some(a)) if a == b => "(=)".to_owned(),
        (Some(b), Some(a)) => {
            let delta = a - b;
            let sign = if delta > 0.0 { "+" } else { "" };
            format!("({sign}{})", metric_text(delta))
        }
        _ => String::new(),
    }
}

fn diff_text(a: &Side, b: &Side, diff: &RunDiff, all: bool) -> String {
    let mut out = String::new();
    for (name, side) in [("A", a), ("B", b)] {
        out.push_str(&aligned(
            &[vec![
                name.to_owned(),
                side.id.clone(),
                run_params(&side.view).0.to_owned(),
                run_status(&side.view),
            ]],
            "",
        ));
    }
    let mut section = |title: &str, body: String| {
        if !body.is_empty() {
            out.push_str(&format!("\n{title}\n{body}"));
        }
    };
    let value = |v: &Option<kiln_spec::Value>| or_none(v.as_ref().map(ToString::to_string));
    let params: Vec<Vec<String>> = diff
        .params
        .iter()
        .filter(|p| all || p.before != p.after)
        .map(|p| {
            let text = if p.before == p.after {
                value(&p.after)
            } else {
                format!("{} → {}", value(&p.before), value(&p.after))
            };
            vec![format!("{}: {text}", p.name)]
        })
        .collect();
    section("params", aligned(&params, "  "));
    let statuses: Vec<Vec<String>> = diff
        .statuses
        .iter()
        .map(|s| {
            vec![
                step_name(a, b, &s.id),
                format!("{} → {}", s.before, s.after),
            ]
        })
        .collect();
    section("steps", aligned(&statuses, "  "));
    let number = |v: Option<f64>| or_none(v.map(metric_text));
    let metrics: Vec<Vec<String>> = diff
        .metrics
        .iter()
        .filter(|m| all || m.before != m.after)
        .map(|m| {
            vec![
                step_name(a, b, &m.id),
                m.metric.clone(),
                format!("{} → {}", number(m.before), number(m.after)),
                delta_text(m.before, m.after),
            ]
        })
        .collect();
    section("metrics", aligned(&metrics, "  "));
    let digest = |d: &Option<String>| or_none(d.as_deref().map(|d| short(d).to_owned()));
    let outputs: Vec<Vec<String>> = diff
        .outputs
        .iter()
        .map(|o| {
            vec![
                step_name(a, b, &o.id),
                o.output.clone(),
                format!("{} → {}", digest(&o.before), digest(&o.after)),
            ]
        })
        .collect();
    section("outputs", aligned(&outputs, "  "));
    let labels = |side: &Side, ids: &[String]| -> Vec<Vec<String>> {
        ids.iter()
            .map(|id| vec![side.view.label(id).to_owned()])
            .collect()
    };
    section("only in A", aligned(&labels(a, &diff.only_a), "  "));
    section("only in B", aligned(&labels(b, &diff.only_b), "  "));
    let mut reruns = String::new();
    for rerun in &diff.reruns {
        reruns.push_str(&format!("  {}\n", step_name(a, b, &rerun.id)));
        let rows: Vec<Vec<String>> = rerun
            .changes
            .iter()
            .map(|c| {
                vec![format!(
                    "{}: {} → {}",
                    c.what,
                    short(&c.before),
                    short(&c.after)
                )]
            })
            .collect();
        reruns.push_str(&aligned(&rows, "    "));
        if let Some(reason) = &rerun.reason {
            reruns.push_str(&format!("    {reason}\n"));
        }
    }
    section("re-ran in B", reruns);
    let cached: Vec<Vec<String>> = diff
        .cached
        .iter()
        .map(|(id, from)| {
            vec![
                b.view.label(id).to_owned(),
                match from.as_deref() {
                    Some(from) if from == a.id => "from A".to_owned(),
                    Some(from) => format!("from run {from}"),
                    None => String::new(),
                },
            ]
        })
        .collect();
    section("cached in B", aligned(&cached, "  "));
    out
}

/// Rows as left-aligned columns after `indent`, without a header.
fn aligned(rows: &[Vec<String>], indent: &str) -> String {
    let mut widths = Vec::new();
    for row in rows {
        widths.resize(widths.len().max(row.len()), 0);
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = indent.to_owned();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn diff_json(a: &Side, b: &Side, diff: &RunDiff) -> serde_json::Value {
    use serde_json::json;
    let step = |id: &str| {
        let mut value = json!({"step": id, "label": b.view.label(id)});
        if a.view.step(id).is_some() && a.view.label(id) != b.view.label(id) {
            value["label_in_a"] = json!(a.view.label(id));
        }
        value
    };
    let with = |mut value: serde_json::Value, fields: serde_json::Value| {
        if let (Some(value), serde_json::Value::Object(fields)) = (value.as_object_mut(), fields) {
            value.extend(fields);
        }
        value
    };
    let run = |side: &Side| {
        let (pipeline, params) = run_params(&side.view);
        json!({
            "run_id": side.id, "pipeline": pipeline, "status": run_status(&side.view),
            "params": params,
        })
    };
    json!({
        "a": run(a),
        "b": run(b),
        "params": diff.params.iter().map(|p| json!({
            "name": p.name, "before": p.before, "after": p.after,
            "changed": p.before != p.after,
        })).collect::<Vec<_>>(),
        "steps": diff.statuses.iter().map(|s| with(step(&s.id), json!({
            "before": s.before, "after": s.after,
        }))).collect::<Vec<_>>(),
        "metrics": diff.metrics.iter().map(|m| with(step(&m.id), json!({
            "metric": m.metric, "before": m.before, "after": m.after,
            "delta": m.before.zip(m.after).map(|(b, a)| a - b),
            "changed": m.before != m.after,
        }))).collect::<Vec<_>>(),
        "outputs": diff.outputs.iter().map(|o| with(step(&o.id), json!({
            "output": o.output, "before": o.before, "after": o.after,
        }))).collect::<Vec<_>>(),
        "only_in_a": diff.only_a.iter().map(|id| json!({"step": id, "label": a.view.label(id)})).collect::<Vec<_>>(),
        "only_in_b": diff.only_b.iter().map(|id| step(id)).collect::<Vec<_>>(),
        "reran": diff.reruns.iter().map(|r| with(step(&r.id), json!({
            "changes": r.changes.iter().map(|c| json!({
                "what": c.what, "before": c.before, "after": c.after,
            })).collect::<Vec<_>>(),
            "reason": r.reason,
        }))).collect::<Vec<_>>(),
        "cached": diff.cached.iter().map(|(id, from)| with(step(id), json!({
            "reused_from": from,
        }))).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::{delta_text, readable_changes};

    fn lines(what: &str, before: &str, after: &str) -> Vec<String> {
        readable_changes(what, before, after)
            .iter()
            .map(|c| format!("{}: {} → {}", c.what, c.before, c.after))
            .collect()
    }

    #[test]
    fn key_changes_name_the_param_and_the_items_of_a_list() {
        assert_eq!(
            lines("params.epochs", "20", "30"),
            ["param epochs: 20 → 30"]
        );
        assert_eq!(
            lines(
                "container.args",
                r#"["--lr","0.1","--epochs","20","-v"]"#,
                r#"["--lr","0.1","--epochs","30","-q"]"#
            ),
            [
                r#"container.args[3] (--epochs): "20" → "30""#,
                r#"container.args[4]: "-v" → "-q""#
            ]
        );
        // Lists of other lengths are shown whole.
        assert_eq!(
            lines("container.args", r#"["a"]"#, r#"["a","b"]"#),
            [r#"container.args: ["a"] → ["a","b"]"#]
        );
        assert_eq!(
            lines("input `data`", "blake3:aa", "blake3:bb"),
            ["input `data`: blake3:aa → blake3:bb"]
        );
    }

    #[test]
    fn deltas_have_a_sign_and_six_decimals() {
        assert_eq!(delta_text(Some(0.912), Some(0.934)), "(+0.022)");
        assert_eq!(delta_text(Some(0.5), Some(0.25)), "(-0.25)");
        assert_eq!(delta_text(Some(1.0), Some(1.0)), "(=)");
        assert_eq!(delta_text(None, Some(1.0)), "");
    }
}

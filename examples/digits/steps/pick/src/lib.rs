//! `pick`: chooses the best of the fanned-out training instances by test accuracy.
//!
//! ```text
//! pick --in candidates=CANDIDATES_DIR --out best=best.json [--param min_accuracy=0.9]
//! ```
//!
//! With `min_accuracy`, a winner below it fails the step: no model is kept.
//!
//! # The expected layout of `candidates`
//!
//! One entry per training instance, named by the instance's index in the fan-out (`0`, `1`,
//! ..., `10`, ...: plain decimal, no leading zeros): the `metrics` file that `evaluate` wrote
//! for that instance — which is how kiln collects a fan-out step's output — or a folder
//! holding it as `metrics.json`:
//!
//! ```text
//! candidates/
//!   0                  {"accuracy":0.927778,"n":360,...}
//!   1
//!   2/metrics.json     (a folder works too)
//! ```
//!
//! Names starting with `.` are ignored; any other entry, a missing `metrics.json` or one
//! without an `accuracy` in [0, 1] is an error (exit 1), and so is an empty folder.
//!
//! # Output
//!
//! The highest accuracy wins; on a tie the lowest index. `best` is
//! `{"instance":"1","accuracy":0.972222,"train":{...},"candidates":[{"instance":"0",
//! "accuracy":0.927778},...]}` — `train` (the winner's `lr`, `epochs`, `seed`) only when its
//! metrics carry it, `candidates` in index order.

use std::path::Path;

use digits_common::{Args, Json, ParamSpec, StepError, StepSpec, table};

/// The step's inputs, outputs and params.
pub const SPEC: StepSpec = StepSpec {
    name: "pick",
    about: "pick the training instance with the highest test accuracy",
    inputs: &[(
        "candidates",
        "a folder with one entry per instance (0, 1, ...): its metrics file, or a folder holding metrics.json",
    )],
    outputs: &[("best", "best.json: the winning instance and its accuracy")],
    params: &[ParamSpec {
        name: "min_accuracy",
        default: Some("0"),
        help: "the least test accuracy a winner must reach",
    }],
};

/// The metrics file's name inside each instance's folder.
const METRICS: &str = "metrics.json";

/// Runs the step; returns its metrics (the winner's `accuracy`).
pub fn run(args: &Args) -> Result<Vec<(String, f64)>, StepError> {
    let candidates = read_candidates(args.input("candidates"))?;
    let best = pick(&candidates).map_err(StepError::failed)?;
    let min_accuracy: f64 = args.param("min_accuracy")?;
    let accuracy = best
        .get("accuracy")
        .and_then(Json::as_f64)
        .unwrap_or(f64::NAN);
    if !(accuracy >= min_accuracy) {
        return Err(StepError::failed(format!(
            "the best model's accuracy {accuracy} is below min_accuracy {min_accuracy}"
        )));
    }
    table::write_file(args.output("best"), &best.to_line())?;
    println!("pick: {best}");
    Ok(vec![("accuracy".to_owned(), accuracy)])
}

/// One instance's results.
#[derive(Debug, Clone, PartialEq)]
struct Candidate {
    index: u64,
    accuracy: f64,
    train: Option<Json>,
}

/// Reads every `<index>/metrics.json`, sorted by index.
fn read_candidates(dir: &Path) -> Result<Vec<Candidate>, StepError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| StepError::failed(format!("cannot list {}: {e}", dir.display())))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| StepError::failed(format!("cannot list {}: {e}", dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let index = parse_index(&name).ok_or_else(|| {
            StepError::failed(format!(
                "{}: unexpected entry `{name}` (expected entries named 0, 1, 2, ...)",
                dir.display()
            ))
        })?;
        let path = if entry.path().is_dir() {
            entry.path().join(METRICS)
        } else {
            entry.path()
        };
        let text = table::read_text(&path)?;
        let (accuracy, train) = parse_metrics(&text)
            .map_err(|e| StepError::failed(format!("{}: {e}", path.display())))?;
        out.push(Candidate {
            index,
            accuracy,
            train,
        });
    }
    out.sort_by_key(|c| c.index);
    Ok(out)
}

/// The index a folder name stands for: plain decimal, no sign, no leading zeros.
fn parse_index(name: &str) -> Option<u64> {
    let i = name.parse::<u64>().ok()?;
    (i.to_string() == name).then_some(i)
}

/// The accuracy (and the training info, if any) of a metrics.json.
fn parse_metrics(text: &str) -> Result<(f64, Option<Json>), String> {
    let v = Json::parse(text)?;
    let accuracy = v
        .get("accuracy")
        .and_then(Json::as_f64)
        .ok_or("no numeric `accuracy`")?;
    if !(0.0..=1.0).contains(&accuracy) {
        return Err(format!("accuracy {accuracy} is not in [0, 1]"));
    }
    Ok((accuracy, v.get("train").cloned()))
}

/// The report for the best candidate; `candidates` must be sorted by index.
fn pick(candidates: &[Candidate]) -> Result<Json, String> {
    let mut best: Option<&Candidate> = None;
    for c in candidates {
        // Strictly greater: on a tie the earlier (lower) index stays.
        if best.is_none_or(|b| c.accuracy > b.accuracy) {
            best = Some(c);
        }
    }
    let best = best.ok_or("no candidates (the folder is empty)")?;
    let mut pairs = vec![
        ("instance".to_string(), Json::str(best.index.to_string())),
        ("accuracy".to_string(), Json::Num(best.accuracy)),
    ];
    if let Some(train) = &best.train {
        pairs.push(("train".to_string(), train.clone()));
    }
    pairs.push((
        "candidates".to_string(),
        Json::Arr(
            candidates
                .iter()
                .map(|c| {
                    Json::obj([
                        ("instance", Json::str(c.index.to_string())),
                        ("accuracy", Json::Num(c.accuracy)),
                    ])
                })
                .collect(),
        ),
    ));
    Ok(Json::Obj(pairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(index: u64, accuracy: f64) -> Candidate {
        Candidate {
            index,
            accuracy,
            train: None,
        }
    }

    #[test]
    fn highest_accuracy_wins_ties_go_to_the_lowest_index() {
        let best = pick(&[cand(0, 0.9), cand(1, 0.95), cand(2, 0.95), cand(3, 0.5)]).unwrap();
        assert_eq!(
            best.to_line(),
            "{\"instance\":\"1\",\"accuracy\":0.950000,\"candidates\":[\
             {\"instance\":\"0\",\"accuracy\":0.900000},{\"instance\":\"1\",\"accuracy\":0.950000},\
             {\"instance\":\"2\",\"accuracy\":0.950000},{\"instance\":\"3\",\"accuracy\":0.500000}]}\n"
        );
        assert!(pick(&[]).unwrap_err().contains("no candidates"));
    }

    #[test]
    fn metrics_and_names() {
        let (a, t) =
            parse_metrics("{\"accuracy\":0.961111,\"n\":360,\"train\":{\"lr\":0.1}}").unwrap();
        assert_eq!(a, 0.961111);
        assert_eq!(t.unwrap().get("lr").and_then(Json::as_f64), Some(0.1));
        assert!(
            parse_metrics("{\"n\":3}")
                .unwrap_err()
                .contains("no numeric `accuracy`")
        );
        assert!(
            parse_metrics("{\"accuracy\":1.5}")
                .unwrap_err()
                .contains("not in [0, 1]")
        );
        assert!(parse_metrics("{").is_err());
        assert_eq!(parse_index("0"), Some(0));
        assert_eq!(parse_index("12"), Some(12));
        assert_eq!(parse_index("01"), None);
        assert_eq!(parse_index("+1"), None);
        assert_eq!(parse_index("a"), None);
    }

    #[test]
    fn reads_a_candidates_folder_in_numeric_order() {
        let dir = std::env::temp_dir().join(format!("digits-pick-test-{}", std::process::id()));
        for (i, acc) in [(0, "0.5"), (2, "0.9"), (10, "0.9"), (1, "0.8")] {
            let d = dir.join(i.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(METRICS), format!("{{\"accuracy\":{acc}}}")).unwrap();
        }
        std::fs::write(dir.join(".hidden"), "x").unwrap();
        let c = read_candidates(&dir).unwrap();
        assert_eq!(
            c.iter().map(|c| c.index).collect::<Vec<_>>(),
            vec![0, 1, 2, 10]
        );
        let best = pick(&c).unwrap();
        assert_eq!(best.get("instance"), Some(&Json::str("2")));

        std::fs::write(dir.join("notes.txt"), "x").unwrap();
        let e = read_candidates(&dir).unwrap_err();
        assert!(e.message().contains("unexpected entry `notes.txt`"), "{e}");
        std::fs::remove_file(dir.join("notes.txt")).unwrap();
        std::fs::create_dir_all(dir.join("3")).unwrap();
        let e = read_candidates(&dir).unwrap_err();
        assert!(e.message().contains("cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// The step as a component of the kiln step world (`cargo build --target wasm32-wasip2 --lib
/// --features component`).
#[cfg(feature = "component")]
mod component {
    struct Step;

    impl kiln_step::Step for Step {
        fn run(ctx: kiln_step::Context) -> Result<kiln_step::Success, kiln_step::StepError> {
            digits_common::component::run(&super::SPEC, &ctx, super::run)
        }
    }

    // The params `kiln validate` checks each `with:` against (the same as SPEC's).
    kiln_step::export!(Step, params = [
        kiln_step::Param::float("min_accuracy")
            .default("0")
            .describe("the least test accuracy a winner must reach"),
    ]);
}

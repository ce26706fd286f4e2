//! `evaluate`: measures a trained softmax-regression model on the test set.
//!
//! ```text
//! evaluate --in model=MODEL_DIR_OR_FILE --in test=test.csv --out metrics=metrics.json
//! ```
//!
//! `model` is the folder written by `train/train.py` (the step reads `weights.csv` in it, and
//! `train_log.json` when present) or a `weights.csv` file itself.
//!
//! # The model format: `weights.csv`
//!
//! A CSV table of 65 rows × 11 columns:
//!
//! ```text
//! feature,class_0,class_1,...,class_9
//! pixel_0,w[0][0],...,w[0][9]
//! ...
//! pixel_63,w[63][0],...,w[63][9]
//! bias,b[0],...,b[9]
//! ```
//!
//! The score of class `c` for a scaled image `x` (pixels / 16, as written by `preprocess`) is
//! `b[c] + Σ_k x[k]·w[k][c]`, summed in order k = 0..63; the prediction is the class with the
//! highest score (the lowest class on a tie). Softmax is monotonic, so it is not needed.
//!
//! # Output
//!
//! `{"accuracy":0.961111,"n":360,"correct":346,"confusion":[[...],...]}` where
//! `confusion[true][predicted]` counts test rows. When the model folder has a
//! `train_log.json`, its `lr`, `epochs` and `seed` are copied under `"train"` so that `pick`
//! can report them.

use std::path::Path;

use digits_common::{
    Args, Json, N_CLASSES, N_PIXELS, NumTable, StepError, StepSpec, TextTable, digits_header, table,
};

/// The step's inputs, outputs and params.
pub const SPEC: StepSpec = StepSpec {
    name: "evaluate",
    about: "accuracy and confusion matrix of a softmax-regression model on the test set",
    inputs: &[
        (
            "model",
            "the folder written by train.py (weights.csv inside), or weights.csv",
        ),
        ("test", "test.csv written by preprocess"),
    ],
    outputs: &[(
        "metrics",
        "metrics.json: accuracy, n, confusion[true][predicted]",
    )],
    params: &[],
};

/// The model file's name inside a model folder.
const WEIGHTS: &str = "weights.csv";
/// The training log's name inside a model folder (optional).
const TRAIN_LOG: &str = "train_log.json";

/// Runs the step; returns its metrics (`accuracy`).
pub fn run(args: &Args) -> Result<Vec<(String, f64)>, StepError> {
    let model_in = args.input("model");
    let (weights_path, log_path) = if model_in.is_dir() {
        (model_in.join(WEIGHTS), Some(model_in.join(TRAIN_LOG)))
    } else {
        (model_in.to_path_buf(), None)
    };
    let model = Model::read(&weights_path)?;
    let test_path = args.input("test");
    let test = NumTable::read(test_path)?;
    let m = evaluate(&model, &test)
        .map_err(|e| StepError::failed(format!("{}: {e}", test_path.display())))?;
    let mut metrics = m.to_json();
    if let Some(train) = log_path
        .filter(|p| p.is_file())
        .map(|p| train_info(&p))
        .transpose()?
        && let Json::Obj(pairs) = &mut metrics
    {
        pairs.push(("train".to_string(), train));
    }
    table::write_file(args.output("metrics"), &metrics.to_line())?;
    println!(
        "evaluate: accuracy {:.6} on {} test rows",
        m.accuracy(),
        m.n
    );
    Ok(vec![("accuracy".to_owned(), m.accuracy())])
}

/// A softmax-regression model: `w[k][c]` for pixel k and class c, and `b[c]`.
#[derive(Debug, Clone, PartialEq)]
struct Model {
    w: Vec<[f64; N_CLASSES]>,
    b: [f64; N_CLASSES],
}

impl Model {
    fn read(path: &Path) -> Result<Model, StepError> {
        let t = TextTable::read(path)?;
        Model::from_table(&t)
            .map_err(|e| StepError::failed(format!("{}: not a digits model: {e}", path.display())))
    }

    fn from_table(t: &TextTable) -> Result<Model, String> {
        let mut header = vec!["feature".to_string()];
        header.extend((0..N_CLASSES).map(|c| format!("class_{c}")));
        t.check_header(&header)?;
        let mut names: Vec<String> = digits_header()[..N_PIXELS].to_vec();
        names.push("bias".to_string());
        if t.rows.len() != names.len() {
            return Err(format!("{} rows, expected {}", t.rows.len(), names.len()));
        }
        let mut rows = Vec::with_capacity(names.len());
        for (r, want) in t.rows.iter().zip(&names) {
            let at = format!("line {}", r.line);
            if r.cells.len() != N_CLASSES + 1 {
                return Err(format!(
                    "{at} has {} columns, expected {}",
                    r.cells.len(),
                    N_CLASSES + 1
                ));
            }
            if &r.cells[0] != want {
                return Err(format!("{at} is for `{}`, expected `{want}`", r.cells[0]));
            }
            let mut row = [0.0; N_CLASSES];
            for (c, cell) in r.cells[1..].iter().enumerate() {
                row[c] = cell
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| format!("{at}, class_{c}: `{cell}` is not a number"))?;
            }
            rows.push(row);
        }
        let b = rows.pop().unwrap_or([0.0; N_CLASSES]);
        Ok(Model { w: rows, b })
    }

    /// The predicted class of one scaled image.
    fn predict(&self, x: &[f64]) -> usize {
        let mut best = 0;
        let mut best_score = f64::NEG_INFINITY;
        for c in 0..N_CLASSES {
            let mut score = self.b[c];
            for (xk, wk) in x.iter().zip(&self.w) {
                score += xk * wk[c];
            }
            if score > best_score {
                best = c;
                best_score = score;
            }
        }
        best
    }
}

/// Accuracy and confusion matrix.
#[derive(Debug, Clone, PartialEq)]
struct Metrics {
    n: usize,
    correct: usize,
    confusion: [[usize; N_CLASSES]; N_CLASSES],
}

impl Metrics {
    fn accuracy(&self) -> f64 {
        self.correct as f64 / self.n as f64
    }

    fn to_json(&self) -> Json {
        Json::obj([
            ("accuracy", Json::Num(self.accuracy())),
            ("n", Json::Int(self.n as i64)),
            ("correct", Json::Int(self.correct as i64)),
            (
                "confusion",
                Json::Arr(
                    self.confusion
                        .iter()
                        .map(|row| Json::Arr(row.iter().map(|&v| Json::Int(v as i64)).collect()))
                        .collect(),
                ),
            ),
        ])
    }
}

fn evaluate(model: &Model, test: &NumTable) -> Result<Metrics, String> {
    if test.header != digits_header() {
        return Err("the header is not pixel_0..pixel_63,label".into());
    }
    if test.rows.is_empty() {
        return Err("the test set is empty".into());
    }
    let mut m = Metrics {
        n: test.rows.len(),
        correct: 0,
        confusion: [[0; N_CLASSES]; N_CLASSES],
    };
    for (i, r) in test.rows.iter().enumerate() {
        let label = r[N_PIXELS];
        if label.fract() != 0.0 || !(0.0..N_CLASSES as f64).contains(&label) {
            return Err(format!("row {}: label {label} is not in 0..=9", i + 1));
        }
        let truth = label as usize;
        let predicted = model.predict(&r[..N_PIXELS]);
        m.confusion[truth][predicted] += 1;
        if truth == predicted {
            m.correct += 1;
        }
    }
    Ok(m)
}

/// `lr`, `epochs` and `seed` from a training log, for the report.
fn train_info(path: &Path) -> Result<Json, StepError> {
    let text = table::read_text(path)?;
    let log =
        Json::parse(&text).map_err(|e| StepError::failed(format!("{}: {e}", path.display())))?;
    Ok(Json::obj(["lr", "epochs", "seed"].into_iter().filter_map(
        |k| {
            log.get(k)
                .filter(|v| v.as_f64().is_some())
                .map(|v| (k, v.clone()))
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model whose class c scores pixel c: it predicts the brightest of pixels 0..9.
    fn diagonal_model_csv() -> String {
        let mut s = "feature".to_string();
        for c in 0..N_CLASSES {
            s.push_str(&format!(",class_{c}"));
        }
        s.push('\n');
        for k in 0..=N_PIXELS {
            s.push_str(&if k < N_PIXELS {
                format!("pixel_{k}")
            } else {
                "bias".into()
            });
            for c in 0..N_CLASSES {
                s.push_str(if k == c { ",1.0" } else { ",0" });
            }
            s.push('\n');
        }
        s
    }

    fn row(bright: usize, label: usize) -> Vec<f64> {
        let mut r = vec![0.0; N_PIXELS];
        r[bright] = 1.0;
        r.push(label as f64);
        r
    }

    #[test]
    fn reads_the_model_format() {
        let m = Model::from_table(&TextTable::parse(&diagonal_model_csv()).unwrap()).unwrap();
        assert_eq!(m.w.len(), N_PIXELS);
        assert_eq!(m.w[3][3], 1.0);
        assert_eq!(m.w[3][4], 0.0);
        assert_eq!(m.b, [0.0; N_CLASSES]);
        assert_eq!(m.predict(&row(7, 0)[..N_PIXELS]), 7);
        assert_eq!(
            m.predict(&[0.0; N_PIXELS]),
            0,
            "ties go to the lowest class"
        );
    }

    #[test]
    fn rejects_broken_models() {
        let good = diagonal_model_csv();
        for (bad, want) in [
            (good.replace("class_3", "class_x"), "header column 5"),
            (
                good.replace("bias", "pixel_64"),
                "is for `pixel_64`, expected `bias`",
            ),
            (
                good.replacen(",1.0", ",oops", 1),
                "class_0: `oops` is not a number",
            ),
            (
                good.lines().take(10).collect::<Vec<_>>().join("\n"),
                "9 rows, expected 65",
            ),
        ] {
            let e = Model::from_table(&TextTable::parse(&bad).unwrap()).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn accuracy_and_confusion() {
        let m = Model::from_table(&TextTable::parse(&diagonal_model_csv()).unwrap()).unwrap();
        let test = NumTable {
            header: digits_header(),
            rows: vec![row(1, 1), row(2, 2), row(3, 5), row(9, 9)],
        };
        let metrics = evaluate(&m, &test).unwrap();
        assert_eq!(metrics.n, 4);
        assert_eq!(metrics.correct, 3);
        assert_eq!(metrics.confusion[5][3], 1);
        let json = metrics.to_json().to_line();
        assert!(json.starts_with("{\"accuracy\":0.750000,\"n\":4,\"correct\":3,\"confusion\":[["));
        assert!(json.contains("[0,0,0,1,0,0,0,0,0,0]"), "row 5: {json}");
        let empty = NumTable {
            header: digits_header(),
            rows: vec![],
        };
        assert_eq!(evaluate(&m, &empty).unwrap_err(), "the test set is empty");
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

    kiln_step::export!(Step);
}

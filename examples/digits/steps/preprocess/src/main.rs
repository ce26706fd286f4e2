//! `preprocess`: scales the pixels to [0, 1] and splits the table into train and test sets.
//!
//! ```text
//! preprocess --in table=table.csv --out train=train.csv --out test=test.csv \
//!            [--param seed=0] [--param test_fraction=0.2]
//! ```
//!
//! * every pixel is divided by 16 and written with 6 decimals (`0.062500`), the label stays
//!   an integer; the header stays `pixel_0,...,pixel_63,label`;
//! * the rows are shuffled by Fisher–Yates driven by SplitMix64 seeded with `seed`; the
//!   first `ceil(rows × test_fraction)` shuffled rows form the test set, the rest (in shuffled
//!   order) the training set;
//! * `test_fraction` must be in (0, 1) and leave at least one row on each side (exit 1
//!   otherwise).
//!
//! Same input bytes and params → same output bytes.

use std::process::ExitCode;

use digits_common::{
    Args, MAX_PIXEL, N_CLASSES, N_PIXELS, NumTable, ParamSpec, SplitMix64, StepError, StepSpec,
    digits_header, fmt_f6, fmt_num, table,
};

const SPEC: StepSpec = StepSpec {
    name: "preprocess",
    about: "scale pixels to [0,1], shuffle with a seed and split into train and test sets",
    inputs: &[("table", "the validated table")],
    outputs: &[
        ("train", "train.csv: scaled features, label last"),
        ("test", "test.csv: scaled features, label last"),
    ],
    params: &[
        ParamSpec {
            name: "seed",
            default: Some("0"),
            help: "seed of the shuffle (u64)",
        },
        ParamSpec {
            name: "test_fraction",
            default: Some("0.2"),
            help: "share of the rows held out for testing, in (0, 1)",
        },
    ],
};

fn main() -> ExitCode {
    digits_common::main_with(&SPEC, run)
}

fn run(args: &Args) -> Result<(), StepError> {
    let seed: u64 = args.param("seed")?;
    let test_fraction: f64 = args.param("test_fraction")?;
    if !(test_fraction > 0.0 && test_fraction < 1.0) {
        return Err(StepError::usage(format!(
            "param `test_fraction`: {test_fraction} is not in (0, 1)"
        )));
    }
    let path = args.input("table");
    let t = NumTable::read(path)?;
    let (train, test) = split(&t, seed, test_fraction)
        .map_err(|e| StepError::failed(format!("{}: {e}", path.display())))?;
    table::write_file(args.output("train"), &to_csv(&train))?;
    table::write_file(args.output("test"), &to_csv(&test))?;
    println!(
        "preprocess: {} train rows, {} test rows (seed {seed}, test_fraction {test_fraction})",
        train.rows.len(),
        test.rows.len()
    );
    Ok(())
}

/// Scales, shuffles and splits; `(train, test)`.
fn split(t: &NumTable, seed: u64, test_fraction: f64) -> Result<(NumTable, NumTable), String> {
    let header = digits_header();
    if t.header != header {
        return Err("the header is not pixel_0..pixel_63,label (run validate first)".into());
    }
    let n = t.rows.len();
    // The small epsilon keeps e.g. 1000 × 0.3 = 300.00000000000006 at 300.
    let n_test = (n as f64 * test_fraction - 1e-9).ceil().max(0.0) as usize;
    if n_test == 0 || n_test >= n {
        return Err(format!(
            "{n} rows with test_fraction {test_fraction} give {n_test} test and {} train rows; \
             both must be at least 1",
            n.saturating_sub(n_test)
        ));
    }
    let mut scaled = Vec::with_capacity(n);
    for (i, r) in t.rows.iter().enumerate() {
        let label = r[N_PIXELS];
        if label.fract() != 0.0 || !(0.0..N_CLASSES as f64).contains(&label) {
            return Err(format!(
                "row {}: label {label} is not in 0..=9 (run validate first)",
                i + 1
            ));
        }
        let mut row: Vec<f64> = r[..N_PIXELS].iter().map(|p| p / MAX_PIXEL).collect();
        row.push(label);
        scaled.push(row);
    }
    let mut order: Vec<usize> = (0..n).collect();
    SplitMix64::new(seed).shuffle(&mut order);
    let pick = |idx: &[usize]| NumTable {
        header: header.clone(),
        rows: idx.iter().map(|&i| scaled[i].clone()).collect(),
    };
    Ok((pick(&order[n_test..]), pick(&order[..n_test])))
}

fn to_csv(t: &NumTable) -> String {
    t.to_csv(|col, v| {
        if col < N_PIXELS {
            fmt_f6(v)
        } else {
            fmt_num(v)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(n: usize) -> NumTable {
        NumTable {
            header: digits_header(),
            rows: (0..n)
                .map(|i| {
                    let mut r = vec![(i % 17) as f64; N_PIXELS];
                    r.push((i % 10) as f64);
                    r
                })
                .collect(),
        }
    }

    #[test]
    fn splits_by_fraction_and_keeps_every_row() {
        let t = table(1797);
        let (train, test) = split(&t, 0, 0.2).unwrap();
        assert_eq!(test.rows.len(), 360, "ceil(1797 × 0.2)");
        assert_eq!(train.rows.len(), 1437);
        let mut labels: Vec<f64> = train
            .rows
            .iter()
            .chain(&test.rows)
            .map(|r| r[N_PIXELS])
            .collect();
        labels.sort_by(f64::total_cmp);
        let mut want: Vec<f64> = t.rows.iter().map(|r| r[N_PIXELS]).collect();
        want.sort_by(f64::total_cmp);
        assert_eq!(labels, want);
        assert!(
            train
                .rows
                .iter()
                .all(|r| r[..N_PIXELS].iter().all(|p| (0.0..=1.0).contains(p)))
        );
        let (_, t2) = split(&table(1000), 0, 0.3).unwrap();
        assert_eq!(t2.rows.len(), 300);
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_order() {
        let t = table(200);
        let (a_train, a_test) = split(&t, 7, 0.25).unwrap();
        let (b_train, b_test) = split(&t, 7, 0.25).unwrap();
        assert_eq!(to_csv(&a_train), to_csv(&b_train));
        assert_eq!(to_csv(&a_test), to_csv(&b_test));
        let (c_train, _) = split(&t, 8, 0.25).unwrap();
        assert_ne!(to_csv(&a_train), to_csv(&c_train));
    }

    #[test]
    fn writes_fixed_decimals() {
        let t = NumTable {
            header: digits_header(),
            rows: vec![
                {
                    let mut r = vec![1.0; N_PIXELS];
                    r[1] = 16.0;
                    r.push(4.0);
                    r
                },
                {
                    let mut r = vec![0.0; N_PIXELS];
                    r.push(5.0);
                    r
                },
            ],
        };
        let (train, test) = split(&t, 0, 0.5).unwrap();
        let csv = to_csv(&train) + &to_csv(&test);
        assert!(csv.contains("0.062500,1.000000,0.062500"), "{csv}");
        assert!(csv.contains(",0.062500,4\n"));
        assert!(csv.contains(",0.000000,5\n"));
    }

    #[test]
    fn refuses_empty_sides() {
        assert!(
            split(&table(1), 0, 0.2)
                .unwrap_err()
                .contains("both must be at least 1")
        );
        assert!(
            split(&table(10), 0, 0.95)
                .unwrap_err()
                .contains("10 test and 0 train")
        );
        assert_eq!(split(&table(10), 0, 0.05).unwrap().1.rows.len(), 1);
        let mut t = table(10);
        t.rows[3][N_PIXELS] = 11.0;
        assert!(split(&t, 0, 0.2).unwrap_err().contains("row 4: label 11"));
    }
}

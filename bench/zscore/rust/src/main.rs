//! `zscore`: replaces one column of a CSV by its z-scores, `(x - mean) / sd`, with the
//! population standard deviation; every other cell is copied as it is.
//!
//! ```text
//! zscore --in data=in.csv --out data=out.csv --param column=x0 [--param salt=N]
//! ```
//!
//! kiln's calling convention for command steps: one input and one output, both named `data`.
//! The CSV has a header line, `\n` line endings and no quoting (what `make_data.py` writes);
//! z-scores are written with 6 decimals, as `zscore.py` writes them. Params other than
//! `column` (the benchmark's `salt`) are accepted and ignored: they only make cache keys
//! differ. Exit code 2 for a bad command line, 1 for a bad table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("zscore: {message}");
            ExitCode::from(code)
        }
    }
}

/// What went wrong: the exit code and the message.
type Failure = (u8, String);

fn run() -> Result<(), Failure> {
    let args = Args::parse(std::env::args().skip(1))?;
    let (input, output) = (args.get("--in", "data")?, args.get("--out", "data")?);
    let column = args.get("--param", "column")?;
    let text = std::fs::read_to_string(input).map_err(|e| (1, format!("{input}: {e}")))?;
    let (csv, rows) = zscore(&text, column).map_err(|e| (1, format!("{input}: {e}")))?;
    std::fs::write(output, csv).map_err(|e| (1, format!("{output}: {e}")))?;
    println!("zscore: column {column}, {rows} rows");
    Ok(())
}

/// The `--in`, `--out` and `--param` pairs, by flag and name.
struct Args(BTreeMap<(String, String), String>);

impl Args {
    fn parse(mut argv: impl Iterator<Item = String>) -> Result<Self, Failure> {
        let mut pairs = BTreeMap::new();
        while let Some(flag) = argv.next() {
            if !matches!(flag.as_str(), "--in" | "--out" | "--param") {
                return Err((2, format!("unknown argument `{flag}`")));
            }
            let pair = argv
                .next()
                .ok_or_else(|| (2, format!("`{flag}` needs NAME=VALUE")))?;
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| (2, format!("`{flag} {pair}`: expected NAME=VALUE")))?;
            pairs.insert((flag, name.to_owned()), value.to_owned());
        }
        Ok(Self(pairs))
    }

    fn get(&self, flag: &str, name: &str) -> Result<&str, Failure> {
        self.0
            .get(&(flag.to_owned(), name.to_owned()))
            .map(String::as_str)
            .ok_or_else(|| (2, format!("missing `{flag} {name}=...`")))
    }
}

/// The table with `column` z-scored, and its number of rows.
fn zscore(text: &str, column: &str) -> Result<(String, usize), String> {
    let mut lines = text.lines();
    let header = lines.next().ok_or("the table is empty")?;
    let names: Vec<&str> = header.split(',').collect();
    let col = names
        .iter()
        .position(|n| *n == column)
        .ok_or_else(|| format!("no column `{column}` (the header is `{header}`)"))?;
    let rows: Vec<Vec<&str>> = lines
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').collect())
        .collect();
    let mut values = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        if row.len() != names.len() {
            return Err(format!(
                "row {}: {} cells, the header has {}",
                i + 1,
                row.len(),
                names.len()
            ));
        }
        let v: f64 = row[col]
            .parse()
            .map_err(|_| format!("row {}: `{}` is not a number", i + 1, row[col]))?;
        values.push(v);
    }
    if values.is_empty() {
        return Err("the table has no rows".into());
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let sd = (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt();
    if sd == 0.0 || !sd.is_finite() {
        return Err(format!("column `{column}` has no spread (sd = {sd})"));
    }
    let mut out = String::with_capacity(text.len() + rows.len() * 4);
    out.push_str(header);
    out.push('\n');
    for (row, v) in rows.iter().zip(&values) {
        for (j, cell) in row.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            if j == col {
                write!(out, "{:.6}", (v - mean) / sd).expect("writing to a String");
            } else {
                out.push_str(cell);
            }
        }
        out.push('\n');
    }
    Ok((out, rows.len()))
}

#[cfg(test)]
mod tests {
    use super::zscore;

    #[test]
    fn scores_one_column_and_copies_the_rest() {
        let (csv, rows) = zscore("a,b\n1,x\n3,y\n", "a").unwrap();
        assert_eq!(rows, 2);
        assert_eq!(csv, "a,b\n-1.000000,x\n1.000000,y\n");
    }

    #[test]
    fn names_a_missing_column() {
        let err = zscore("a,b\n1,2\n", "c").unwrap_err();
        assert!(err.contains("no column `c`"), "{err}");
    }
}

//! `ingest`: reads the raw digits CSV and writes it back in canonical form.
//!
//! ```text
//! ingest --in raw=digits.csv --out table=table.csv
//! ```
//!
//! Normalisation only — the content checks are `validate`'s job:
//! * a UTF-8 byte-order mark, `\r\n` line endings, spaces around cells and blank lines are
//!   dropped;
//! * the header must be exactly `pixel_0,...,pixel_63,label` (exit 1 otherwise);
//! * a cell holding an integer-valued number is written as an integer (`16.0` → `16`, `+3` →
//!   `3`); any other cell is kept as it is (trimmed), rows of the wrong width too, so that
//!   `validate` can name them.
//!
//! The output has `\n` line endings and ends with a newline.

use std::process::ExitCode;

use digits_common::{Args, StepError, StepSpec, TextTable, digits_header, fmt_num, table};

const SPEC: StepSpec = StepSpec {
    name: "ingest",
    about: "normalise the raw digits CSV (trim cells, drop blank lines, check the header)",
    inputs: &[("raw", "the raw CSV: pixel_0..pixel_63,label")],
    outputs: &[("table", "the normalised CSV")],
    params: &[],
};

fn main() -> ExitCode {
    digits_common::main_with(&SPEC, run)
}

fn run(args: &Args) -> Result<(), StepError> {
    let raw = args.input("raw");
    let text = table::read_text(raw)?;
    let (csv, rows) =
        normalise(&text).map_err(|e| StepError::failed(format!("{}: {e}", raw.display())))?;
    table::write_file(args.output("table"), &csv)?;
    println!("ingest: {rows} rows");
    Ok(())
}

/// The canonical text of a raw table and its number of rows.
fn normalise(text: &str) -> Result<(String, usize), String> {
    let mut t = TextTable::parse(text)?;
    t.check_header(&digits_header())?;
    for row in &mut t.rows {
        for cell in &mut row.cells {
            if let Ok(v) = cell.parse::<f64>()
                && v.is_finite()
                && v.fract() == 0.0
            {
                *cell = fmt_num(v);
            }
        }
    }
    Ok((t.to_csv(), t.rows.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> String {
        digits_header().join(",")
    }

    fn row(pixel: &str, label: &str) -> String {
        let mut cells = vec![pixel.to_string(); 64];
        cells.push(label.to_string());
        cells.join(" , ")
    }

    #[test]
    fn normalises_layout_and_numbers() {
        let text = format!(
            "\u{feff}{}\r\n\r\n{}\r\n   \n{}",
            header(),
            row("16.0", "+3"),
            row("0", "9")
        );
        let (csv, rows) = normalise(&text).unwrap();
        assert_eq!(rows, 2);
        let want = format!(
            "{}\n{},3\n{},9\n",
            header(),
            vec!["16"; 64].join(","),
            vec!["0"; 64].join(",")
        );
        assert_eq!(csv, want);
        assert_eq!(normalise(&csv).unwrap().0, csv, "idempotent");
    }

    #[test]
    fn keeps_bad_cells_for_validate() {
        let text = format!("{}\n{}\n1,2\n", header(), row("x", "2.5"));
        let (csv, rows) = normalise(&text).unwrap();
        assert_eq!(rows, 2);
        assert!(csv.contains("x,x,"));
        assert!(csv.contains(",2.5\n1,2\n"));
    }

    #[test]
    fn rejects_a_wrong_header() {
        assert!(normalise("").unwrap_err().contains("empty"));
        let e = normalise("pixel_0,pixel_1\n").unwrap_err();
        assert!(e.contains("`pixel_2` is missing"), "{e}");
        let bad = header().replace("label", "target");
        assert_eq!(
            normalise(&bad).unwrap_err(),
            "header column 65 is `target`, expected `label`"
        );
    }
}

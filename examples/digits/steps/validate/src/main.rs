//! `validate`: checks the digits table and writes a small report.
//!
//! ```text
//! validate --in table=table.csv --out report=report.json [--param min_rows=1]
//! ```
//!
//! Checks, in this order, stopping at the first failure (exit 1, the message names the row,
//! its line in the file and the column):
//! * the header is `pixel_0,...,pixel_63,label` (65 columns);
//! * every row has 65 cells;
//! * every pixel is an integer in 0..=16, every label an integer in 0..=9;
//! * there are at least `min_rows` rows.
//!
//! On success writes `report` (nothing is written on failure):
//! `{"ok":true,"rows":1797,"columns":65,"classes":{"0":178,...,"9":180}}` (every class
//! 0..=9 is listed, with 0 where absent).

use std::process::ExitCode;

use digits_common::{
    Args, Json, N_CLASSES, N_PIXELS, ParamSpec, StepError, StepSpec, TextTable, digits_header,
    table,
};

const SPEC: StepSpec = StepSpec {
    name: "validate",
    about: "check the digits table (65 columns, pixels 0..=16, labels 0..=9, enough rows)",
    inputs: &[("table", "the table written by ingest")],
    outputs: &[("report", "report.json: row count and rows per class")],
    params: &[ParamSpec {
        name: "min_rows",
        default: Some("1"),
        help: "the least number of rows accepted",
    }],
};

fn main() -> ExitCode {
    digits_common::main_with(&SPEC, run)
}

fn run(args: &Args) -> Result<(), StepError> {
    let min_rows: usize = args.param("min_rows")?;
    let path = args.input("table");
    let t = TextTable::read(path)?;
    let report =
        check(&t, min_rows).map_err(|e| StepError::failed(format!("{}: {e}", path.display())))?;
    table::write_file(args.output("report"), &report.to_line())?;
    println!("validate: ok, {} rows", t.rows.len());
    Ok(())
}

/// Checks the table; the report on success, the first problem otherwise.
fn check(t: &TextTable, min_rows: usize) -> Result<Json, String> {
    t.check_header(&digits_header())?;
    let mut classes = [0usize; N_CLASSES];
    for (i, r) in t.rows.iter().enumerate() {
        let at = format!("row {} (line {})", i + 1, r.line);
        if r.cells.len() != N_PIXELS + 1 {
            return Err(format!(
                "{at} has {} columns, expected {}",
                r.cells.len(),
                N_PIXELS + 1
            ));
        }
        for (j, (cell, name)) in r.cells.iter().zip(&t.header).enumerate() {
            let max = if j < N_PIXELS {
                16
            } else {
                N_CLASSES as i64 - 1
            };
            let v = integer(cell)
                .ok_or_else(|| format!("{at}, column `{name}`: `{cell}` is not an integer"))?;
            if !(0..=max).contains(&v) {
                return Err(format!(
                    "{at}, column `{name}`: value {v} is outside 0..={max}"
                ));
            }
            if j == N_PIXELS {
                classes[v as usize] += 1;
            }
        }
    }
    if t.rows.len() < min_rows {
        return Err(format!(
            "only {} rows, expected at least {min_rows} (param min_rows)",
            t.rows.len()
        ));
    }
    Ok(Json::obj([
        ("ok", Json::Bool(true)),
        ("rows", Json::Int(t.rows.len() as i64)),
        ("columns", Json::Int(t.header.len() as i64)),
        (
            "classes",
            Json::obj(
                classes
                    .iter()
                    .enumerate()
                    .map(|(c, n)| (c.to_string(), Json::Int(*n as i64))),
            ),
        ),
    ]))
}

/// The value of a cell holding an integer (`3`, `-1`, or an integer-valued float like `3.0`).
fn integer(cell: &str) -> Option<i64> {
    if let Ok(v) = cell.parse::<i64>() {
        return Some(v);
    }
    let v = cell.parse::<f64>().ok()?;
    (v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15).then_some(v as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rows: &[(&str, &str)]) -> TextTable {
        let mut text = digits_header().join(",");
        text.push('\n');
        for (pixel, label) in rows {
            let mut cells = vec![pixel.to_string(); 64];
            cells.push(label.to_string());
            text.push_str(&cells.join(","));
            text.push('\n');
        }
        TextTable::parse(&text).unwrap()
    }

    #[test]
    fn reports_rows_and_classes() {
        let t = table(&[("0", "3"), ("16", "3"), ("7", "0")]);
        let r = check(&t, 3).unwrap();
        assert_eq!(
            r.to_line(),
            "{\"ok\":true,\"rows\":3,\"columns\":65,\"classes\":{\"0\":1,\"1\":0,\"2\":0,\
             \"3\":2,\"4\":0,\"5\":0,\"6\":0,\"7\":0,\"8\":0,\"9\":0}}\n"
        );
    }

    #[test]
    fn names_the_first_bad_row_and_column() {
        let t = table(&[("0", "1"), ("17", "1"), ("x", "1")]);
        assert_eq!(
            check(&t, 1).unwrap_err(),
            "row 2 (line 3), column `pixel_0`: value 17 is outside 0..=16"
        );
        let t = table(&[("0", "10")]);
        assert_eq!(
            check(&t, 1).unwrap_err(),
            "row 1 (line 2), column `label`: value 10 is outside 0..=9"
        );
        let t = table(&[("1.5", "1")]);
        assert_eq!(
            check(&t, 1).unwrap_err(),
            "row 1 (line 2), column `pixel_0`: `1.5` is not an integer"
        );
        let t = table(&[("-1", "1")]);
        assert!(check(&t, 1).unwrap_err().contains("value -1 is outside"));
        let mut t = table(&[("0", "1")]);
        t.rows[0].cells.pop();
        assert_eq!(
            check(&t, 1).unwrap_err(),
            "row 1 (line 2) has 64 columns, expected 65"
        );
    }

    #[test]
    fn checks_header_and_row_count() {
        let mut t = table(&[("0", "1")]);
        assert_eq!(
            check(&t, 2).unwrap_err(),
            "only 1 rows, expected at least 2 (param min_rows)"
        );
        t.header[5] = "px".into();
        assert!(
            check(&t, 1)
                .unwrap_err()
                .contains("header column 6 is `px`")
        );
    }

    #[test]
    fn integers() {
        assert_eq!(integer("3"), Some(3));
        assert_eq!(integer("3.0"), Some(3));
        assert_eq!(integer("-2"), Some(-2));
        assert_eq!(integer("3.5"), None);
        assert_eq!(integer("inf"), None);
        assert_eq!(integer(""), None);
    }
}

//! The CSV tables the steps pass to each other.
//!
//! The format is deliberately small: one header line, then one record per line, cells
//! separated by `,`, no quoting (every cell is a name or a number). Reading is lenient about
//! layout — a UTF-8 byte-order mark, `\r\n` line endings, spaces around cells and blank
//! lines are accepted — and strict about content: [`NumTable`] needs every row to have as
//! many cells as the header and every cell to be a finite number, and names the first
//! offending row and column otherwise. Writing is canonical: `\n` line endings, a final
//! newline, no spaces, numbers through [`fmt_f6`] or integers.

use std::path::Path;

use crate::StepError;

/// The digits table's header: `pixel_0,...,pixel_63,label`.
pub fn digits_header() -> Vec<String> {
    let mut h: Vec<String> = (0..crate::N_PIXELS).map(|i| format!("pixel_{i}")).collect();
    h.push("label".to_string());
    h
}

/// A record of a [`TextTable`], with the line it came from (1-based, counting blank lines).
#[derive(Debug, Clone, PartialEq)]
pub struct TextRow {
    /// The line number in the source text.
    pub line: usize,
    /// The trimmed cells.
    pub cells: Vec<String>,
}

/// A CSV table as text: trimmed header names and trimmed cells, blank lines dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct TextTable {
    /// The header's names.
    pub header: Vec<String>,
    /// The records, in order.
    pub rows: Vec<TextRow>,
}

impl TextTable {
    /// Parses CSV text. Fails only when there is no header line at all.
    pub fn parse(text: &str) -> Result<TextTable, String> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut lines = text
            .split('\n')
            .enumerate()
            .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
            .filter(|(_, l)| !l.trim().is_empty());
        let (_, header) = lines.next().ok_or("the table is empty (no header line)")?;
        let header = split_cells(header);
        let rows = lines
            .map(|(line, l)| TextRow {
                line,
                cells: split_cells(l),
            })
            .collect();
        Ok(TextTable { header, rows })
    }

    /// Reads and parses a CSV file.
    pub fn read(path: &Path) -> Result<TextTable, StepError> {
        let text = read_text(path)?;
        TextTable::parse(&text).map_err(|e| StepError::failed(format!("{}: {e}", path.display())))
    }

    /// Checks that the header is exactly `expected`; the error names the first difference.
    pub fn check_header(&self, expected: &[String]) -> Result<(), String> {
        for (i, want) in expected.iter().enumerate() {
            match self.header.get(i) {
                Some(got) if got == want => {}
                Some(got) => {
                    return Err(format!(
                        "header column {} is `{got}`, expected `{want}`",
                        i + 1
                    ));
                }
                None => {
                    return Err(format!(
                        "header has {} columns, expected {} (`{}` is missing)",
                        self.header.len(),
                        expected.len(),
                        want
                    ));
                }
            }
        }
        if self.header.len() > expected.len() {
            return Err(format!(
                "header has {} columns, expected {} (unexpected `{}`)",
                self.header.len(),
                expected.len(),
                self.header[expected.len()]
            ));
        }
        Ok(())
    }

    /// The table as canonical CSV text (cells written as they are).
    pub fn to_csv(&self) -> String {
        let mut out = self.header.join(",");
        out.push('\n');
        for r in &self.rows {
            out.push_str(&r.cells.join(","));
            out.push('\n');
        }
        out
    }
}

fn split_cells(line: &str) -> Vec<String> {
    line.split(',').map(|c| c.trim().to_string()).collect()
}

/// A CSV table of numbers (`f64`), every row as wide as the header.
#[derive(Debug, Clone, PartialEq)]
pub struct NumTable {
    /// The header's names.
    pub header: Vec<String>,
    /// The values, row by row.
    pub rows: Vec<Vec<f64>>,
}

impl NumTable {
    /// Converts a [`TextTable`]; the error names the first row (1-based data row and source
    /// line) and column that is not a finite number or the first row of the wrong width.
    pub fn from_text(t: &TextTable) -> Result<NumTable, String> {
        let width = t.header.len();
        let mut rows = Vec::with_capacity(t.rows.len());
        for (i, r) in t.rows.iter().enumerate() {
            let at = format!("row {} (line {})", i + 1, r.line);
            if r.cells.len() != width {
                return Err(format!(
                    "{at} has {} columns, expected {width}",
                    r.cells.len()
                ));
            }
            let mut values = Vec::with_capacity(width);
            for (cell, name) in r.cells.iter().zip(&t.header) {
                match cell.parse::<f64>() {
                    Ok(v) if v.is_finite() => values.push(v),
                    _ => return Err(format!("{at}, column `{name}`: `{cell}` is not a number")),
                }
            }
            rows.push(values);
        }
        Ok(NumTable {
            header: t.header.clone(),
            rows,
        })
    }

    /// Reads a numeric CSV file.
    pub fn read(path: &Path) -> Result<NumTable, StepError> {
        let t = TextTable::read(path)?;
        NumTable::from_text(&t).map_err(|e| StepError::failed(format!("{}: {e}", path.display())))
    }

    /// The table as canonical CSV text; `format(column, value)` renders each cell.
    pub fn to_csv(&self, format: impl Fn(usize, f64) -> String) -> String {
        let mut out = self.header.join(",");
        out.push('\n');
        for r in &self.rows {
            for (j, v) in r.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                out.push_str(&format(j, *v));
            }
            out.push('\n');
        }
        out
    }
}

/// Formats a float with exactly 6 decimals (`0.062500`), never `-0.000000`.
pub fn fmt_f6(v: f64) -> String {
    let s = format!("{v:.6}");
    if s == "-0.000000" {
        "0.000000".to_string()
    } else {
        s
    }
}

/// Formats an integer-valued float as an integer (`16`), anything else with [`fmt_f6`].
pub fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        fmt_f6(v)
    }
}

/// Reads a UTF-8 text file; the error names the path.
pub fn read_text(path: &Path) -> Result<String, StepError> {
    let bytes = std::fs::read(path)
        .map_err(|e| StepError::failed(format!("cannot read {}: {e}", path.display())))?;
    String::from_utf8(bytes)
        .map_err(|e| StepError::failed(format!("{} is not UTF-8 text: {e}", path.display())))
}

/// Writes a file, creating its parent folders; the error names the path.
pub fn write_file(path: &Path, contents: &str) -> Result<(), StepError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            StepError::failed(format!("cannot create folder {}: {e}", parent.display()))
        })?;
    }
    std::fs::write(path, contents)
        .map_err(|e| StepError::failed(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_is_lenient_about_layout() {
        let t = TextTable::parse("\u{feff} a , b\r\n\r\n1, 2\r\n  \n3,4").unwrap();
        assert_eq!(t.header, vec!["a", "b"]);
        assert_eq!(
            t.rows,
            vec![
                TextRow {
                    line: 3,
                    cells: vec!["1".into(), "2".into()]
                },
                TextRow {
                    line: 5,
                    cells: vec!["3".into(), "4".into()]
                },
            ]
        );
        assert_eq!(t.to_csv(), "a,b\n1,2\n3,4\n");
    }

    #[test]
    fn empty_text_has_no_header() {
        assert!(TextTable::parse("").is_err());
        assert!(TextTable::parse("\n \r\n").is_err());
    }

    #[test]
    fn header_check_names_the_difference() {
        let t = TextTable::parse("a,x,c\n").unwrap();
        let want: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            t.check_header(&want).unwrap_err(),
            "header column 2 is `x`, expected `b`"
        );
        let t = TextTable::parse("a,b\n").unwrap();
        assert!(
            t.check_header(&want)
                .unwrap_err()
                .contains("`c` is missing")
        );
        let t = TextTable::parse("a,b,c,d\n").unwrap();
        assert!(
            t.check_header(&want)
                .unwrap_err()
                .contains("unexpected `d`")
        );
        let t = TextTable::parse("a,b,c\n").unwrap();
        assert!(t.check_header(&want).is_ok());
    }

    #[test]
    fn digits_header_shape() {
        let h = digits_header();
        assert_eq!(h.len(), 65);
        assert_eq!(h[0], "pixel_0");
        assert_eq!(h[63], "pixel_63");
        assert_eq!(h[64], "label");
    }

    #[test]
    fn numbers_and_errors() {
        let t = TextTable::parse("a,b\n1,2.5\n\n-3,1e2\n").unwrap();
        let n = NumTable::from_text(&t).unwrap();
        assert_eq!(n.rows, vec![vec![1.0, 2.5], vec![-3.0, 100.0]]);
        assert_eq!(n.to_csv(|_, v| fmt_num(v)), "a,b\n1,2.500000\n-3,100\n");

        let t = TextTable::parse("a,b\n1,2\n\n3,x\n").unwrap();
        assert_eq!(
            NumTable::from_text(&t).unwrap_err(),
            "row 2 (line 4), column `b`: `x` is not a number"
        );
        let t = TextTable::parse("a,b\n1\n").unwrap();
        assert_eq!(
            NumTable::from_text(&t).unwrap_err(),
            "row 1 (line 2) has 1 columns, expected 2"
        );
        let t = TextTable::parse("a\nNaN\n").unwrap();
        assert!(NumTable::from_text(&t).is_err(), "NaN is not accepted");
        let t = TextTable::parse("a\n\n").unwrap();
        assert!(NumTable::from_text(&t).unwrap().rows.is_empty());
    }

    #[test]
    fn float_formatting_is_fixed() {
        assert_eq!(fmt_f6(0.0625), "0.062500");
        assert_eq!(fmt_f6(1.0 / 3.0), "0.333333");
        assert_eq!(fmt_f6(-0.0), "0.000000");
        assert_eq!(fmt_f6(-1e-9), "0.000000");
        assert_eq!(fmt_f6(2.0), "2.000000");
        assert_eq!(fmt_num(16.0), "16");
        assert_eq!(fmt_num(-0.0), "0");
        assert_eq!(fmt_num(0.5), "0.500000");
    }

    #[test]
    fn files_round_trip() {
        let dir = std::env::temp_dir().join(format!("digits-common-test-{}", std::process::id()));
        let path = dir.join("sub").join("t.csv");
        write_file(&path, "a,b\n1,2\n").unwrap();
        let n = NumTable::read(&path).unwrap();
        assert_eq!(n.rows, vec![vec![1.0, 2.0]]);
        std::fs::remove_dir_all(&dir).unwrap();
        let e = NumTable::read(&path).unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert!(e.message().starts_with("cannot read "), "{}", e.message());
    }
}

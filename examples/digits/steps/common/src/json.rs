//! A very small JSON value: enough to write the steps' reports deterministically and to read
//! the few numbers a step needs back (an accuracy, a learning rate). No dependencies.
//!
//! Writing is compact (no spaces), keeps object keys in insertion order, writes [`Json::Int`]
//! as an integer, [`Json::Num`] with exactly 6 decimals and [`Json::Float`] in the shortest
//! form that reads back to the same `f64` (non-finite numbers as `null`), so the same value
//! always gives the same bytes. Parsing gives `Int` for integers and `Float` for other
//! numbers, so a parsed value is written back unchanged.

use std::fmt::Write as _;

use crate::table::fmt_f6;

/// A JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// An integer, written as such.
    Int(i64),
    /// A float, written with exactly 6 decimals (`0.950000`): for measured values.
    Num(f64),
    /// A float, written in the shortest form that reads back to the same value (`0.001`):
    /// for values passed through, such as a learning rate.
    Float(f64),
    /// A string.
    Str(String),
    /// An array.
    Arr(Vec<Json>),
    /// An object; keys keep their order.
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// Builds an object from `(key, value)` pairs.
    pub fn obj<K: Into<String>>(pairs: impl IntoIterator<Item = (K, Json)>) -> Json {
        Json::Obj(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// Builds a string value.
    pub fn str(s: impl Into<String>) -> Json {
        Json::Str(s.into())
    }

    /// The value of `key` when this is an object that has it (the first one if repeated).
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(pairs) => pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The number, when this is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Json::Int(i) => Some(*i as f64),
            Json::Num(f) | Json::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The compact text of the value, followed by a newline (the form written to files).
    pub fn to_line(&self) -> String {
        let mut s = self.to_string();
        s.push('\n');
        s
    }

    fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Json::Num(f) if f.is_finite() => out.push_str(&fmt_f6(*f)),
            Json::Float(f) if f.is_finite() => {
                let _ = write!(out, "{f}");
            }
            Json::Num(_) | Json::Float(_) => out.push_str("null"),
            Json::Str(s) => write_str(out, s),
            Json::Arr(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write(out);
                }
                out.push(']');
            }
            Json::Obj(pairs) => {
                out.push('{');
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_str(out, k);
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }

    /// Parses JSON text (the whole text must be one value, surrounded by optional spaces).
    pub fn parse(text: &str) -> Result<Json, String> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
            depth: 0,
        };
        p.ws();
        let v = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(p.err("unexpected text after the value"));
        }
        Ok(v)
    }
}

impl std::fmt::Display for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::new();
        self.write(&mut s);
        f.write_str(&s)
    }
}

fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

const MAX_DEPTH: usize = 64;

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
}

impl Parser<'_> {
    fn err(&self, msg: &str) -> String {
        format!("invalid JSON at byte {}: {msg}", self.i)
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    fn eat(&mut self, lit: &str) -> Result<(), String> {
        if self.s[self.i..].starts_with(lit.as_bytes()) {
            self.i += lit.len();
            Ok(())
        } else {
            Err(self.err(&format!("expected `{lit}`")))
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        match self.s.get(self.i) {
            None => Err(self.err("unexpected end of text")),
            Some(b'n') => self.eat("null").map(|_| Json::Null),
            Some(b't') => self.eat("true").map(|_| Json::Bool(true)),
            Some(b'f') => self.eat("false").map(|_| Json::Bool(false)),
            Some(b'"') => self.string().map(Json::Str),
            Some(b'[') => {
                self.nest()?;
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                } else {
                    loop {
                        self.ws();
                        items.push(self.value()?);
                        self.ws();
                        match self.s.get(self.i) {
                            Some(b',') => self.i += 1,
                            Some(b']') => {
                                self.i += 1;
                                break;
                            }
                            _ => return Err(self.err("expected `,` or `]`")),
                        }
                    }
                }
                self.depth -= 1;
                Ok(Json::Arr(items))
            }
            Some(b'{') => {
                self.nest()?;
                self.i += 1;
                let mut pairs = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                } else {
                    loop {
                        self.ws();
                        if self.s.get(self.i) != Some(&b'"') {
                            return Err(self.err("expected a string key"));
                        }
                        let k = self.string()?;
                        self.ws();
                        self.eat(":")?;
                        self.ws();
                        let v = self.value()?;
                        pairs.push((k, v));
                        self.ws();
                        match self.s.get(self.i) {
                            Some(b',') => self.i += 1,
                            Some(b'}') => {
                                self.i += 1;
                                break;
                            }
                            _ => return Err(self.err("expected `,` or `}`")),
                        }
                    }
                }
                self.depth -= 1;
                Ok(Json::Obj(pairs))
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.err("unexpected character")),
        }
    }

    fn nest(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        Ok(())
    }

    fn number(&mut self) -> Result<Json, String> {
        let start = self.i;
        let mut float = false;
        while let Some(&c) = self.s.get(self.i) {
            match c {
                b'0'..=b'9' | b'-' | b'+' => {}
                b'.' | b'e' | b'E' => float = true,
                _ => break,
            }
            self.i += 1;
        }
        // The bytes are ASCII by construction.
        let text = std::str::from_utf8(&self.s[start..self.i]).unwrap_or_default();
        if !float && let Ok(i) = text.parse::<i64>() {
            return Ok(Json::Int(i));
        }
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Json::Float(f)),
            _ => {
                self.i = start;
                Err(self.err(&format!("`{text}` is not a number")))
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.i += 1; // the opening quote
        let mut out = String::new();
        loop {
            let start = self.i;
            while let Some(&c) = self.s.get(self.i) {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.i += 1;
            }
            out.push_str(
                std::str::from_utf8(&self.s[start..self.i])
                    .map_err(|_| self.err("invalid UTF-8 in a string"))?,
            );
            match self.s.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.i += 1;
                    let c = match self.s.get(self.i) {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            let hex = self
                                .s
                                .get(self.i + 1..self.i + 5)
                                .and_then(|h| std::str::from_utf8(h).ok())
                                .and_then(|h| u32::from_str_radix(h, 16).ok())
                                .ok_or_else(|| self.err("bad \\u escape"))?;
                            self.i += 4;
                            // Surrogate pairs are not needed here: map them to U+FFFD.
                            char::from_u32(hex).unwrap_or('\u{fffd}')
                        }
                        _ => return Err(self.err("bad escape")),
                    };
                    self.i += 1;
                    out.push(c);
                }
                Some(_) => return Err(self.err("control character in a string")),
                None => return Err(self.err("unterminated string")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_compact_and_in_order() {
        let v = Json::obj([
            ("ok", Json::Bool(true)),
            ("rows", Json::Int(1797)),
            ("acc", Json::Num(0.95)),
            ("nan", Json::Num(f64::NAN)),
            ("lr", Json::Float(0.001)),
            ("inf", Json::Float(f64::INFINITY)),
            ("s", Json::str("a\"b\\c\n\u{1}")),
            (
                "arr",
                Json::Arr(vec![Json::Int(1), Json::Null, Json::Arr(vec![])]),
            ),
            ("empty", Json::obj::<String>([])),
        ]);
        assert_eq!(
            v.to_line(),
            "{\"ok\":true,\"rows\":1797,\"acc\":0.950000,\"nan\":null,\"lr\":0.001,\"inf\":null,\
             \"s\":\"a\\\"b\\\\c\\n\\u0001\",\"arr\":[1,null,[]],\"empty\":{}}\n"
        );
    }

    #[test]
    fn parses_what_it_writes() {
        let v = Json::obj([
            ("a", Json::Int(-3)),
            ("b", Json::Float(0.5)),
            ("b2", Json::Float(1e-7)),
            ("b3", Json::Float(-2.5e21)),
            ("c", Json::str("x\ty\u{e9}")),
            ("d", Json::Arr(vec![Json::Bool(false), Json::Null])),
        ]);
        assert_eq!(Json::parse(&v.to_line()).unwrap(), v);
    }

    #[test]
    fn parses_other_writers() {
        let v = Json::parse(
            " { \"accuracy\" : 9.5e-1, \"n\": 360, \"lr\": 0.1, \"log\": [1.5, 2], \"u\": \"\\u00e9\\/\" }\n",
        )
        .unwrap();
        assert_eq!(v.get("accuracy").and_then(Json::as_f64), Some(0.95));
        assert_eq!(v.get("n"), Some(&Json::Int(360)));
        assert_eq!(v.get("n").and_then(Json::as_f64), Some(360.0));
        assert_eq!(v.get("u"), Some(&Json::str("\u{e9}/")));
        assert_eq!(v.get("missing"), None);
        assert_eq!(Json::Int(1).get("x"), None);
    }

    #[test]
    fn rejects_bad_text() {
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\" 1}",
            "{a:1}",
            "tru",
            "1 2",
            "\"abc",
            "-",
            "1e999",
            "[\"\\x\"]",
            "{\"a\":1,}",
        ] {
            assert!(Json::parse(bad).is_err(), "{bad:?} should not parse");
        }
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(
            Json::parse(&deep)
                .unwrap_err()
                .contains("nested too deeply")
        );
    }
}

//! Command-line conventions shared by every step program.
//!
//! ```text
//! <step> --in NAME=PATH ... --out NAME=PATH ... --param NAME=VALUE ...
//! ```
//!
//! * `--in NAME=PATH`: an input (file or folder) the step reads; repeatable.
//! * `--out NAME=PATH`: an output the step writes; repeatable.
//! * `--param NAME=VALUE`: a small typed value; repeatable. Params the step declares with a
//!   default may be left out.
//! * `--flag=NAME=VALUE` is accepted as well as `--flag NAME=VALUE`.
//! * `-h` / `--help` prints the step's usage on stdout and exits 0.
//!
//! Every input and output the step declares is required. An unknown flag, an undeclared
//! name, a name given twice, a missing value, or a param that does not parse is a usage
//! error: a message on stderr and exit code 2 (see [`StepError`]).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

use crate::StepError;

/// A param a step accepts.
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    /// The name after `--param`.
    pub name: &'static str,
    /// The value used when the param is not given; `None` makes it required.
    pub default: Option<&'static str>,
    /// One line for `--help`.
    pub help: &'static str,
}

/// What a step program accepts on its command line.
#[derive(Debug, Clone, Copy)]
pub struct StepSpec {
    /// The program's name, used in messages (argv\[0\] is not reliable under wasm).
    pub name: &'static str,
    /// One line saying what the step does.
    pub about: &'static str,
    /// The names of the inputs (`--in NAME=PATH`), each with a one-line description.
    pub inputs: &'static [(&'static str, &'static str)],
    /// The names of the outputs (`--out NAME=PATH`), each with a one-line description.
    pub outputs: &'static [(&'static str, &'static str)],
    /// The params (`--param NAME=VALUE`).
    pub params: &'static [ParamSpec],
}

impl StepSpec {
    /// The usage text printed by `--help` and after a usage error.
    pub fn usage(&self) -> String {
        let mut s = format!("{}: {}\n\nusage: {}", self.name, self.about, self.name);
        for (name, _) in self.inputs {
            let _ = write!(s, " --in {name}=PATH");
        }
        for (name, _) in self.outputs {
            let _ = write!(s, " --out {name}=PATH");
        }
        for p in self.params {
            match p.default {
                Some(_) => {
                    let _ = write!(s, " [--param {}=VALUE]", p.name);
                }
                None => {
                    let _ = write!(s, " --param {}=VALUE", p.name);
                }
            }
        }
        s.push('\n');
        if !self.inputs.is_empty() {
            s.push_str("\ninputs:\n");
            for (name, help) in self.inputs {
                let _ = writeln!(s, "  {name:<12} {help}");
            }
        }
        if !self.outputs.is_empty() {
            s.push_str("\noutputs:\n");
            for (name, help) in self.outputs {
                let _ = writeln!(s, "  {name:<12} {help}");
            }
        }
        if !self.params.is_empty() {
            s.push_str("\nparams:\n");
            for p in self.params {
                let default = match p.default {
                    Some(d) => format!(" (default {d})"),
                    None => " (required)".to_string(),
                };
                let _ = writeln!(s, "  {:<12} {}{}", p.name, p.help, default);
            }
        }
        s
    }

    /// Parses the arguments after the program name. `Ok(None)` means help was asked for.
    pub fn parse<I>(&self, args: I) -> Result<Option<Args>, StepError>
    where
        I: IntoIterator<Item = OsString>,
    {
        let mut args = args.into_iter();
        let mut out = Args {
            step: self.name,
            inputs: BTreeMap::new(),
            outputs: BTreeMap::new(),
            params: BTreeMap::new(),
        };
        while let Some(arg) = args.next() {
            let arg = arg
                .into_string()
                .map_err(|a| StepError::usage(format!("argument {a:?} is not valid UTF-8")))?;
            if arg == "-h" || arg == "--help" {
                return Ok(None);
            }
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (arg.clone(), None),
            };
            let kind = match flag.as_str() {
                "--in" => Kind::In,
                "--out" => Kind::Out,
                "--param" => Kind::Param,
                _ => {
                    return Err(StepError::usage(format!(
                        "unknown argument `{arg}` (expected --in, --out or --param)"
                    )));
                }
            };
            let value = match inline {
                Some(v) => v,
                None => args
                    .next()
                    .ok_or_else(|| {
                        StepError::usage(format!("`{flag}` needs a NAME=VALUE after it"))
                    })?
                    .into_string()
                    .map_err(|a| StepError::usage(format!("argument {a:?} is not valid UTF-8")))?,
            };
            let (name, val) = value.split_once('=').ok_or_else(|| {
                StepError::usage(format!("`{flag} {value}`: expected NAME=VALUE"))
            })?;
            if name.is_empty() {
                return Err(StepError::usage(format!("`{flag} {value}`: empty NAME")));
            }
            match kind {
                Kind::In => {
                    if !self.inputs.iter().any(|(n, _)| *n == name) {
                        return Err(StepError::usage(format!(
                            "unknown input `{name}` (this step reads: {})",
                            list(self.inputs.iter().map(|(n, _)| *n))
                        )));
                    }
                    if val.is_empty() {
                        return Err(StepError::usage(format!("input `{name}`: empty path")));
                    }
                    insert_once(&mut out.inputs, "input", name, PathBuf::from(val))?;
                }
                Kind::Out => {
                    if !self.outputs.iter().any(|(n, _)| *n == name) {
                        return Err(StepError::usage(format!(
                            "unknown output `{name}` (this step writes: {})",
                            list(self.outputs.iter().map(|(n, _)| *n))
                        )));
                    }
                    if val.is_empty() {
                        return Err(StepError::usage(format!("output `{name}`: empty path")));
                    }
                    insert_once(&mut out.outputs, "output", name, PathBuf::from(val))?;
                }
                Kind::Param => {
                    if !self.params.iter().any(|p| p.name == name) {
                        return Err(StepError::usage(format!(
                            "unknown param `{name}` (this step takes: {})",
                            list(self.params.iter().map(|p| p.name))
                        )));
                    }
                    insert_once(&mut out.params, "param", name, val.to_string())?;
                }
            }
        }
        for (name, _) in self.inputs {
            if !out.inputs.contains_key(*name) {
                return Err(StepError::usage(format!("missing input: --in {name}=PATH")));
            }
        }
        for (name, _) in self.outputs {
            if !out.outputs.contains_key(*name) {
                return Err(StepError::usage(format!(
                    "missing output: --out {name}=PATH"
                )));
            }
        }
        for p in self.params {
            if !out.params.contains_key(p.name) {
                match p.default {
                    Some(d) => {
                        out.params.insert(p.name.to_string(), d.to_string());
                    }
                    None => {
                        return Err(StepError::usage(format!(
                            "missing param: --param {}=VALUE",
                            p.name
                        )));
                    }
                }
            }
        }
        Ok(Some(out))
    }
}

enum Kind {
    In,
    Out,
    Param,
}

fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = names.collect();
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

fn insert_once<V>(
    map: &mut BTreeMap<String, V>,
    what: &str,
    name: &str,
    value: V,
) -> Result<(), StepError> {
    if map.insert(name.to_string(), value).is_some() {
        return Err(StepError::usage(format!(
            "{what} `{name}` given more than once"
        )));
    }
    Ok(())
}

/// Parsed and checked arguments: every declared input and output is present, every param
/// has a value (given or default).
#[derive(Debug, Clone)]
pub struct Args {
    step: &'static str,
    inputs: BTreeMap<String, PathBuf>,
    outputs: BTreeMap<String, PathBuf>,
    params: BTreeMap<String, String>,
}

impl Args {
    /// The path of a declared input.
    ///
    /// # Panics
    /// If `name` is not one of the step's declared inputs (a bug in the step).
    pub fn input(&self, name: &str) -> &Path {
        self.inputs
            .get(name)
            .unwrap_or_else(|| panic!("{}: input `{name}` is not declared", self.step))
    }

    /// The path of a declared output.
    ///
    /// # Panics
    /// If `name` is not one of the step's declared outputs (a bug in the step).
    pub fn output(&self, name: &str) -> &Path {
        self.outputs
            .get(name)
            .unwrap_or_else(|| panic!("{}: output `{name}` is not declared", self.step))
    }

    /// The raw text of a declared param.
    ///
    /// # Panics
    /// If `name` is not one of the step's declared params (a bug in the step).
    pub fn param_str(&self, name: &str) -> &str {
        self.params
            .get(name)
            .unwrap_or_else(|| panic!("{}: param `{name}` is not declared", self.step))
    }

    /// A declared param parsed as `T`; a value that does not parse is a usage error.
    pub fn param<T: FromStr>(&self, name: &str) -> Result<T, StepError> {
        let raw = self.param_str(name);
        raw.trim().parse::<T>().map_err(|_| {
            StepError::usage(format!(
                "param `{name}`: `{raw}` is not a valid {}",
                short_type_name::<T>()
            ))
        })
    }
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// Runs a step: parses `std::env::args_os()` against `spec`, calls `run`, prints any error on
/// stderr as `<step>: error: <message>` and turns it into the exit code (2 for usage errors,
/// 1 for failed checks and I/O errors).
pub fn main_with(spec: &StepSpec, run: impl FnOnce(&Args) -> Result<(), StepError>) -> ExitCode {
    let result = match spec.parse(std::env::args_os().skip(1)) {
        Ok(None) => {
            print!("{}", spec.usage());
            return ExitCode::SUCCESS;
        }
        Ok(Some(args)) => run(&args),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: error: {}", spec.name, e.message());
            if e.is_usage() {
                eprintln!("run `{} --help` for usage", spec.name);
            }
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: StepSpec = StepSpec {
        name: "demo",
        about: "a demo step",
        inputs: &[("table", "the table")],
        outputs: &[("report", "the report")],
        params: &[
            ParamSpec {
                name: "min_rows",
                default: Some("1"),
                help: "minimum rows",
            },
            ParamSpec {
                name: "seed",
                default: None,
                help: "the seed",
            },
        ],
    };

    fn parse(args: &[&str]) -> Result<Option<Args>, StepError> {
        SPEC.parse(args.iter().map(OsString::from))
    }

    fn usage_err(args: &[&str]) -> String {
        let e = parse(args).expect_err("should fail");
        assert!(e.is_usage(), "{e:?}");
        assert_eq!(e.exit_code(), 2);
        e.message().to_string()
    }

    #[test]
    fn parses_separate_and_inline_forms() {
        let a = parse(&[
            "--in",
            "table=a.csv",
            "--out=report=r.json",
            "--param",
            "seed=7",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(a.input("table"), Path::new("a.csv"));
        assert_eq!(a.output("report"), Path::new("r.json"));
        assert_eq!(a.param::<u64>("seed").unwrap(), 7);
        assert_eq!(a.param::<usize>("min_rows").unwrap(), 1, "default applies");
    }

    #[test]
    fn value_may_contain_equals() {
        let a = parse(&[
            "--in",
            "table=a=b.csv",
            "--out",
            "report=r",
            "--param",
            "seed=1",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(a.input("table"), Path::new("a=b.csv"));
    }

    #[test]
    fn help_is_not_an_error() {
        assert!(parse(&["--help"]).unwrap().is_none());
        assert!(SPEC.usage().contains("--in table=PATH"));
        assert!(SPEC.usage().contains("(default 1)"));
    }

    #[test]
    fn usage_errors() {
        assert!(usage_err(&["--bogus", "x=y"]).contains("unknown argument `--bogus`"));
        assert!(usage_err(&["table.csv"]).contains("unknown argument"));
        assert!(usage_err(&["--in"]).contains("needs a NAME=VALUE"));
        assert!(usage_err(&["--in", "table"]).contains("expected NAME=VALUE"));
        assert!(usage_err(&["--in", "other=x"]).contains("unknown input `other`"));
        assert!(usage_err(&["--out", "x=y"]).contains("unknown output `x`"));
        assert!(usage_err(&["--param", "lr=1"]).contains("unknown param `lr`"));
        assert!(usage_err(&["--in", "table=a", "--in", "table=b"]).contains("more than once"));
        assert!(usage_err(&["--out", "report=r", "--param", "seed=1"]).contains("missing input"));
        assert!(usage_err(&["--in", "table=a", "--param", "seed=1"]).contains("missing output"));
        assert!(usage_err(&["--in", "table=a", "--out", "report=r"]).contains("missing param"));
    }

    #[test]
    fn bad_param_value_is_a_usage_error() {
        let a = parse(&["--in", "table=a", "--out", "report=r", "--param", "seed=x"])
            .unwrap()
            .unwrap();
        let e = a.param::<u64>("seed").unwrap_err();
        assert!(e.is_usage());
        assert_eq!(e.message(), "param `seed`: `x` is not a valid u64");
    }
}

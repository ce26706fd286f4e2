//! Write a kiln step in Rust: implement [`Step`] and export it with [`export!`].
//!
//! ```ignore
//! use kiln_step::{Context, Step, StepError, Success};
//!
//! struct Double;
//!
//! impl Step for Double {
//!     fn run(ctx: Context) -> Result<Success, StepError> {
//!         let x = ctx.param("x")?.as_f64()?;
//!         kiln_step::log::info(&format!("doubling {x}"));
//!         Ok(Success::new()
//!             .metric("x2", 2.0 * x)
//!             .output("result", format!("{}\n", 2.0 * x)))
//!     }
//! }
//!
//! kiln_step::export!(Double, params = [kiln_step::Param::float("x").describe("what to double")]);
//! ```
//!
//! The crate is a `cdylib` built for `wasm32-wasip2`; `cargo build --target wasm32-wasip2`
//! then writes a component of the kiln step world. Inputs are plain files and folders under
//! `/in` ([`Context::input`] gives the path), outputs are written under `/out`
//! ([`Context::output`]) or returned as bytes ([`Success::output`]). The params declared in
//! [`export!`] are checked by `kiln validate` against each step's `with:`. See
//! `wit/step.wit` and docs/rust-steps.md.

#![allow(unsafe_code)] // the glue wit-bindgen generates

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "kiln:step/step",
        pub_export_macro: true,
        export_macro_name: "export_step",
        default_bindings_module: "kiln_step::bindings",
    });
}

pub use bindings::Guest as Step;
pub use bindings::kiln::step::types::{
    Artifact, Context, ErrorKind, Metric, StepError, Success, Value,
};

/// Exports a type implementing [`Step`] as the component's `run`, optionally with the params
/// it reads, declared so that `kiln validate` and `kiln run` check each step's `with:` against
/// them before anything runs (an unknown name, with a suggestion; a missing required param;
/// a value of the wrong type) and give the step the declared defaults:
///
/// ```ignore
/// kiln_step::export!(Pick, params = [
///     kiln_step::Param::float("min_accuracy")
///         .default("0.5")
///         .describe("The accuracy below which the best model is refused"),
///     kiln_step::Param::new("layers", "list[int]"),
/// ]);
/// ```
///
/// The declaration is a custom section of the component named `kiln:params`, written at
/// compile time from these values.
#[macro_export]
macro_rules! export {
    ($ty:ident) => {
        $crate::bindings::export_step!($ty);
    };
    ($ty:ident, params = [$($param:expr),* $(,)?]) => {
        $crate::bindings::export_step!($ty);
        const _: () = {
            const PARAMS: &[$crate::Param] = &[$($param),*];
            const LEN: usize = $crate::Param::declaration_len(PARAMS);
            #[used]
            #[unsafe(link_section = "kiln:params")]
            static DECLARATION: [u8; LEN] = $crate::Param::declaration::<LEN>(PARAMS);
        };
    };
}

/// A param a step declares in [`export!`]: its name, type, default and description.
///
/// Everything is known at compile time, so the declaration costs nothing at run time.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    name: &'static str,
    ty: &'static str,
    default: Option<&'static str>,
    description: &'static str,
}

impl Param {
    /// A param of type `ty`: `string`, `int`, `float`, `bool` or `list[...]` of one of these
    /// (kiln checks the spelling when it reads the declaration).
    pub const fn new(name: &'static str, ty: &'static str) -> Self {
        Self {
            name,
            ty,
            default: None,
            description: "",
        }
    }

    /// A `string` param.
    pub const fn string(name: &'static str) -> Self {
        Self::new(name, "string")
    }

    /// An `int` param.
    pub const fn int(name: &'static str) -> Self {
        Self::new(name, "int")
    }

    /// A `float` param.
    pub const fn float(name: &'static str) -> Self {
        Self::new(name, "float")
    }

    /// A `bool` param.
    pub const fn bool(name: &'static str) -> Self {
        Self::new(name, "bool")
    }

    /// The value used when a step's `with:` does not set it, in the text form `kiln run -p`
    /// takes (`"0.5"`, `"true"`, `"1,2,3"`); without one the param is required.
    pub const fn default(mut self, text: &'static str) -> Self {
        self.default = Some(text);
        self
    }

    /// What the param means, for people (shown in kiln's errors).
    pub const fn describe(mut self, text: &'static str) -> Self {
        self.description = text;
        self
    }

    /// The length of [`Param::declaration`] for `params`.
    #[doc(hidden)]
    pub const fn declaration_len(params: &[Param]) -> usize {
        let mut out = Json::<0>::measure();
        out = out.declaration(params);
        out.len
    }

    /// The declaration's JSON bytes (`{"version":1,"params":[...]}`), built at compile time.
    #[doc(hidden)]
    pub const fn declaration<const N: usize>(params: &[Param]) -> [u8; N] {
        let out = Json::<N>::write().declaration(params);
        assert!(out.len == N, "declaration length");
        out.bytes
    }
}

/// A JSON writer usable in `const`: it measures (`N` = 0) or writes.
#[doc(hidden)]
pub struct Json<const N: usize> {
    bytes: [u8; N],
    len: usize,
    writing: bool,
}

impl<const N: usize> Json<N> {
    const fn measure() -> Self {
        Self {
            bytes: [0; N],
            len: 0,
            writing: false,
        }
    }

    const fn write() -> Self {
        Self {
            bytes: [0; N],
            len: 0,
            writing: true,
        }
    }

    const fn byte(mut self, b: u8) -> Self {
        if self.writing {
            self.bytes[self.len] = b;
        }
        self.len += 1;
        self
    }

    const fn raw(mut self, s: &str) -> Self {
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            self = self.byte(b[i]);
            i += 1;
        }
        self
    }

    /// A JSON string: quotes, backslashes and control characters escaped.
    const fn string(mut self, s: &str) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self = self.byte(b'"');
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            if c == b'"' || c == b'\\' {
                self = self.byte(b'\\').byte(c);
            } else if c < 0x20 {
                self = self
                    .raw("\\u00")
                    .byte(HEX[(c >> 4) as usize])
                    .byte(HEX[(c & 0xf) as usize]);
            } else {
                self = self.byte(c);
            }
            i += 1;
        }
        self.byte(b'"')
    }

    const fn declaration(mut self, params: &[Param]) -> Self {
        self = self.raw("{\"version\":1,\"params\":[");
        let mut i = 0;
        while i < params.len() {
            let p = &params[i];
            if i > 0 {
                self = self.byte(b',');
            }
            self = self.raw("{\"name\":").string(p.name);
            self = self.raw(",\"type\":").string(p.ty);
            if let Some(default) = p.default {
                self = self.raw(",\"default\":").string(default);
            }
            if !p.description.is_empty() {
                self = self.raw(",\"description\":").string(p.description);
            }
            self = self.byte(b'}');
            i += 1;
        }
        self.raw("]}")
    }
}

/// The step's log: lines go to the same log as stdout and stderr (`kiln logs`).
pub mod log {
    use crate::bindings::kiln::step::log::{Level, log};

    /// A debugging detail.
    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }

    /// Progress worth seeing.
    pub fn info(message: &str) {
        log(Level::Info, message);
    }

    /// Something suspicious that did not stop the step.
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }

    /// Something that is about to fail the step.
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}

impl Context {
    /// The guest path of input `name` (under `/in`).
    pub fn input(&self, name: &str) -> Result<&str, StepError> {
        find(&self.inputs, name)
            .ok_or_else(|| StepError::invalid_input(format!("the step has no input `{name}`")))
    }

    /// The guest path of output `name` (under `/out`).
    pub fn output(&self, name: &str) -> Result<&str, StepError> {
        find(&self.outputs, name)
            .ok_or_else(|| StepError::failed(format!("the step has no output `{name}`")))
    }

    /// Param `name`.
    pub fn param(&self, name: &str) -> Result<&Value, StepError> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .ok_or_else(|| {
                let given: Vec<&str> = self.params.iter().map(|(n, _)| n.as_str()).collect();
                let given = if given.is_empty() {
                    "none".to_owned()
                } else {
                    given.join(", ")
                };
                StepError::invalid_params(format!(
                    "param `{name}` is missing (the step was given: {given})"
                ))
            })
    }
}

fn find<'a>(artifacts: &'a [Artifact], name: &str) -> Option<&'a str> {
    artifacts
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.path.as_str())
}

impl Value {
    /// The value as a float (integers convert; a string must parse).
    pub fn as_f64(&self) -> Result<f64, StepError> {
        match self {
            Value::Number(x) => Ok(*x),
            Value::Integer(i) => Ok(*i as f64),
            Value::Text(s) => s
                .trim()
                .parse()
                .map_err(|_| StepError::invalid_params(format!("`{s}` is not a number"))),
            other => Err(StepError::invalid_params(format!(
                "{other:?} is not a number"
            ))),
        }
    }

    /// The value as an integer (a string must parse).
    pub fn as_i64(&self) -> Result<i64, StepError> {
        match self {
            Value::Integer(i) => Ok(*i),
            Value::Text(s) => s
                .trim()
                .parse()
                .map_err(|_| StepError::invalid_params(format!("`{s}` is not an integer"))),
            other => Err(StepError::invalid_params(format!(
                "{other:?} is not an integer"
            ))),
        }
    }

    /// The value in its plain text form (`0.5`, `true`, lists comma-joined).
    pub fn to_text(&self) -> String {
        fn join<T: ToString>(items: &[T]) -> String {
            items.iter().map(T::to_string).collect::<Vec<_>>().join(",")
        }
        match self {
            Value::Text(s) => s.clone(),
            Value::Integer(i) => i.to_string(),
            Value::Number(x) => x.to_string(),
            Value::Boolean(b) => b.to_string(),
            Value::Texts(v) => v.join(","),
            Value::Integers(v) => join(v),
            Value::Numbers(v) => join(v),
            Value::Booleans(v) => join(v),
        }
    }
}

impl StepError {
    /// A param is missing or unusable.
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::InvalidParams,
            message: message.into(),
        }
    }

    /// An input is missing, malformed or fails a check.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::InvalidInput,
            message: message.into(),
        }
    }

    /// Anything else.
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Failed,
            message: message.into(),
        }
    }
}

impl Success {
    /// No metrics, no returned outputs.
    pub fn new() -> Self {
        Self {
            metrics: Vec::new(),
            outputs: Vec::new(),
        }
    }

    /// Adds a metric.
    pub fn metric(mut self, name: &str, value: f64) -> Self {
        self.metrics.push(Metric {
            name: name.to_owned(),
            value,
        });
        self
    }

    /// Returns output `name` as bytes (kiln writes it; do not also write the file).
    pub fn output(mut self, name: &str, bytes: impl Into<Vec<u8>>) -> Self {
        self.outputs.push((name.to_owned(), bytes.into()));
        self
    }
}

impl Default for Success {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::{Context, ErrorKind, Param, Value};

    #[test]
    fn a_missing_param_names_the_ones_given() {
        let ctx = |params: Vec<(String, Value)>| Context {
            step: "pick".into(),
            params,
            inputs: Vec::new(),
            outputs: Vec::new(),
        };
        let e = ctx(vec![
            ("min_acuracy".into(), Value::Number(0.8)),
            ("seed".into(), Value::Integer(1)),
        ])
        .param("min_accuracy")
        .unwrap_err();
        assert!(matches!(e.kind, ErrorKind::InvalidParams));
        assert_eq!(
            e.message,
            "param `min_accuracy` is missing (the step was given: min_acuracy, seed)"
        );
        let e = ctx(Vec::new()).param("x").unwrap_err();
        assert!(e.message.ends_with("(the step was given: none)"), "{}", e.message);
    }

    const PARAMS: &[Param] = &[
        Param::float("min_accuracy")
            .default("0.5")
            .describe("refuse \"bad\" models\\\n"),
        Param::new("layers", "list[int]"),
    ];

    #[test]
    fn the_declaration_is_the_json_kiln_reads() {
        const LEN: usize = Param::declaration_len(PARAMS);
        const BYTES: [u8; LEN] = Param::declaration::<LEN>(PARAMS);
        assert_eq!(
            std::str::from_utf8(&BYTES).unwrap(),
            r#"{"version":1,"params":[{"name":"min_accuracy","type":"float","default":"0.5","description":"refuse \"bad\" models\\\u000a"},{"name":"layers","type":"list[int]"}]}"#
        );
        const EMPTY: usize = Param::declaration_len(&[]);
        assert_eq!(Param::declaration::<EMPTY>(&[]), *br#"{"version":1,"params":[]}"#);
    }
}

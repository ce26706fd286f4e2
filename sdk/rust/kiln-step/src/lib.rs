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
//! kiln_step::export!(Double);
//! ```
//!
//! The crate is a `cdylib` built for `wasm32-wasip2`; `cargo build --target wasm32-wasip2`
//! then writes a component of the kiln step world. Inputs are plain files and folders under
//! `/in` ([`Context::input`] gives the path), outputs are written under `/out`
//! ([`Context::output`]) or returned as bytes ([`Success::output`]). See `wit/step.wit`.

#![allow(unsafe_code)] // the glue wit-bindgen generates

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
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

/// Exports a type implementing [`Step`] as the component's `run`.
#[macro_export]
macro_rules! export {
    ($ty:ident) => {
        $crate::bindings::export_step!($ty);
    };
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
            .ok_or_else(|| StepError::invalid_params(format!("param `{name}` is missing")))
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

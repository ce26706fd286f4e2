//! A step program as a component of the kiln step world: the context kiln passes becomes the
//! same [`Args`] the CLI parses, the step's metrics become the result's, and its errors
//! become typed ones.

use std::ffi::OsString;

use crate::{Args, StepError, StepSpec};

/// Runs `run` with the arguments in `ctx`: what an `impl kiln_step::Step` calls.
pub fn run(
    spec: &StepSpec,
    ctx: &kiln_step::Context,
    run: impl FnOnce(&Args) -> Result<Vec<(String, f64)>, StepError>,
) -> Result<kiln_step::Success, kiln_step::StepError> {
    let mut argv: Vec<OsString> = Vec::new();
    for (flag, artifacts) in [("--in", &ctx.inputs), ("--out", &ctx.outputs)] {
        for a in artifacts {
            argv.push(flag.into());
            argv.push(format!("{}={}", a.name, a.path).into());
        }
    }
    for (name, value) in &ctx.params {
        argv.push("--param".into());
        argv.push(format!("{name}={}", value.to_text()).into());
    }
    let args = spec
        .parse(argv)
        .map_err(typed)?
        .ok_or_else(|| kiln_step::StepError::failed("the context asked for help"))?;
    let metrics = run(&args).map_err(typed)?;
    Ok(metrics
        .into_iter()
        .fold(kiln_step::Success::new(), |s, (name, value)| {
            s.metric(&name, value)
        }))
}

/// A usage error is a params error; anything else failed a check of the inputs or could not
/// read or write them.
fn typed(e: StepError) -> kiln_step::StepError {
    match e {
        StepError::Usage(m) => kiln_step::StepError::invalid_params(m),
        StepError::Failed(m) => kiln_step::StepError::invalid_input(m),
    }
}

//! `evaluate` as a plain CLI program (native, or a `wasi:cli/command` component); the step
//! itself is in the library.

fn main() -> std::process::ExitCode {
    digits_common::main_with(&evaluate_step::SPEC, |args| {
        evaluate_step::run(args).map(|_| ())
    })
}

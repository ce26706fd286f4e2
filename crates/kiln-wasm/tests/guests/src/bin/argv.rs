//! A program that knows nothing of kiln's convention: prints its arguments and environment
//! to stdout, then stdin upper-cased; `--size PATH` prints a file's size, `--touch PATH`
//! writes a file, and `--say TEXT` writes TEXT to stderr.
use std::io::{Read, Write};

fn main() {
    let mut out = std::io::stdout().lock();
    let mut args = std::env::args();
    writeln!(out, "argv0: {}", args.next().unwrap_or_default()).unwrap();
    while let Some(arg) = args.next() {
        writeln!(out, "arg: {arg}").unwrap();
        let mut value = || args.next().expect("a value after the flag");
        match arg.as_str() {
            "--size" => {
                let path = value();
                let size = std::fs::metadata(&path).expect("stat").len();
                writeln!(out, "size of {path}: {size}").unwrap();
            }
            "--touch" => std::fs::write(value(), b"touched\n").expect("write"),
            "--say" => eprintln!("{}", value()),
            _ => {}
        }
    }
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    env.sort();
    for (k, v) in env {
        writeln!(out, "env: {k}={v}").unwrap();
    }
    let mut stdin = String::new();
    std::io::stdin().read_to_string(&mut stdin).unwrap();
    write!(out, "stdin: {}", stdin.to_uppercase()).unwrap();
}

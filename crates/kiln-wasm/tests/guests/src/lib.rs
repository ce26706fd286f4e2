//! The `--in NAME=PATH --out NAME=PATH --param NAME=VALUE` convention, parsed the simple way.

use std::collections::BTreeMap;

/// Arguments after argv[0], by flag.
#[derive(Debug, Default)]
pub struct Args {
    /// `--in` pairs.
    pub inputs: BTreeMap<String, String>,
    /// `--out` pairs.
    pub outputs: BTreeMap<String, String>,
    /// `--param` pairs.
    pub params: BTreeMap<String, String>,
}

/// Parses `std::env::args()`; panics on anything unexpected (these are test guests).
pub fn args() -> Args {
    let mut out = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().expect("flag without value");
        let (k, v) = value.split_once('=').expect("NAME=VALUE");
        let map = match flag.as_str() {
            "--in" => &mut out.inputs,
            "--out" => &mut out.outputs,
            "--param" => &mut out.params,
            other => panic!("unknown flag {other}"),
        };
        map.insert(k.to_owned(), v.to_owned());
    }
    out
}

//! Writes to stdout without end.
use std::io::Write;

fn main() {
    let line = [b'x'; 1023];
    let mut out = std::io::stdout().lock();
    loop {
        out.write_all(&line).expect("stdout");
        out.write_all(b"\n").expect("stdout");
    }
}

//! Tries what a sandboxed step must not be able to do and writes one line per attempt to
//! output `report`: `NAME: ok ...` or `NAME: denied (...)`. With `--param keep_links=1` it
//! leaves the symbolic links it made in `/out` behind.
use std::fmt::Write as _;
use std::io::Read;

fn line<T: std::fmt::Debug, E: std::fmt::Display>(
    report: &mut String,
    name: &str,
    r: Result<T, E>,
) {
    match r {
        Ok(v) => writeln!(report, "{name}: ok {v:?}").unwrap(),
        Err(e) => writeln!(report, "{name}: denied ({e})").unwrap(),
    }
}

fn main() {
    let args = kiln_wasm_test_guests::args();
    let mut r = String::new();
    let input = &args.inputs["data"];
    line(&mut r, "read-input", std::fs::read_to_string(input));
    line(
        &mut r,
        "read-etc-passwd",
        std::fs::read_to_string("/etc/passwd"),
    );
    line(
        &mut r,
        "read-dotdot",
        std::fs::read_to_string("/in/../../etc/passwd"),
    );
    line(
        &mut r,
        "read-dotdot-out",
        std::fs::read_to_string("/out/../../../etc/passwd"),
    );
    line(&mut r, "write-in", std::fs::write("/in/new-file", b"x"));
    line(&mut r, "overwrite-input", std::fs::write(input, b"x"));
    line(&mut r, "write-root", std::fs::write("/evil", b"x"));
    line(
        &mut r,
        "hard-link-in-to-out",
        std::fs::hard_link(input, "/out/linked"),
    );
    #[allow(deprecated)]
    let symlink = std::fs::soft_link("/etc/passwd", "/out/passwd")
        .and_then(|()| std::fs::read_to_string("/out/passwd"));
    line(&mut r, "symlink-out-to-host", symlink);
    #[allow(deprecated)]
    let relative = std::fs::soft_link("../../../../../../etc/passwd", "/out/rel");
    line(&mut r, "symlink-out-relative", relative);
    #[allow(deprecated)]
    let inside = std::fs::soft_link("report", "/out/inside");
    line(&mut r, "symlink-out-inside", inside);
    line(
        &mut r,
        "list-root",
        std::fs::read_dir("/").map(|d| {
            let mut v: Vec<String> = d
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }),
    );
    line(
        &mut r,
        "env",
        Ok::<_, String>(std::env::vars().collect::<Vec<_>>()),
    );
    line(&mut r, "cwd", std::env::current_dir());
    line(
        &mut r,
        "tcp-connect",
        std::net::TcpStream::connect("127.0.0.1:22").map(|_| ()),
    );
    line(
        &mut r,
        "tcp-bind",
        std::net::TcpListener::bind("127.0.0.1:0").map(|_| ()),
    );
    line(
        &mut r,
        "udp-bind",
        std::net::UdpSocket::bind("127.0.0.1:0").map(|_| ()),
    );
    line(
        &mut r,
        "resolve",
        std::net::ToSocketAddrs::to_socket_addrs("localhost:80").map(|a| a.count()),
    );
    let mut stdin = String::new();
    line(
        &mut r,
        "stdin",
        std::io::stdin()
            .read_to_string(&mut stdin)
            .map(|n| (n, stdin.clone())),
    );
    std::fs::write(&args.outputs["report"], r).expect("write report");
    // Links left in /out make the host refuse the outputs; tidy up unless asked not to.
    if !args.params.contains_key("keep_links") {
        let _ = std::fs::remove_file("/out/rel");
        let _ = std::fs::remove_file("/out/inside");
    }
}

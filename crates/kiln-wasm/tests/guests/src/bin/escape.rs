//! Tries to create files, folders and links outside `/out` (in `/in`, at `/`, in `/tmp`,
//! through `..`), and to move a file of `/out` out of it. Writes one line per attempt to
//! output `report` (`NAME: denied (...)` or `NAME: ALLOWED`) and to stdout, then exits 0 if
//! every attempt failed and 2 otherwise (which `wasm32-wasip2` std reports as 1).
use std::fmt::Write as _;
use std::fs;

/// The name used for everything it tries to create, so the host side can look for it.
const NAME: &str = "kiln-escape-probe";

fn main() {
    let args = kiln_wasm_test_guests::args();
    let mut report = String::new();
    let mut escaped = 0;
    let mut attempt = |what: &str, result: std::io::Result<()>| match result {
        Ok(()) => {
            escaped += 1;
            writeln!(report, "{what}: ALLOWED").unwrap();
        }
        Err(e) => writeln!(report, "{what}: denied ({e})").unwrap(),
    };
    for path in [
        format!("/in/{NAME}"),
        format!("/in/data/{NAME}"),
        format!("/tmp/{NAME}"),
        format!("/{NAME}"),
        format!("/out/../{NAME}"),
        format!("/out/../../{NAME}"),
        format!("/out/../in/{NAME}"),
        format!("/in/../{NAME}"),
        NAME.to_owned(),
    ] {
        attempt(&format!("write {path}"), fs::write(&path, b"x"));
        attempt(
            &format!("mkdir {path}.d"),
            fs::create_dir(format!("{path}.d")),
        );
        attempt(
            &format!("create-new {path}.new"),
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(format!("{path}.new"))
                .map(drop),
        );
    }
    attempt("append /in/data", {
        fs::OpenOptions::new()
            .append(true)
            .open("/in/data")
            .map(drop)
    });
    attempt("truncate /in/data", {
        fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open("/in/data")
            .map(drop)
    });
    attempt("remove /in/data", fs::remove_file("/in/data"));
    // An input may be the store's own object, linked in: it must not be touched, moved or
    // linked to where writing is allowed.
    attempt("set-times /in/data", {
        fs::File::open("/in/data").and_then(|f| {
            f.set_times(fs::FileTimes::new().set_modified(std::time::SystemTime::UNIX_EPOCH))
        })
    });
    attempt(
        "hard-link /in/data /out/linked",
        fs::hard_link("/in/data", "/out/linked"),
    );
    attempt(
        "rename /in/data /out/moved",
        fs::rename("/in/data", "/out/moved"),
    );
    // A file made where writing is allowed, then moved or linked out.
    fs::write("/out/movable", b"x").expect("write /out/movable");
    for to in [
        format!("/in/{NAME}"),
        format!("/{NAME}"),
        format!("/out/../{NAME}"),
    ] {
        attempt(
            &format!("rename /out/movable {to}"),
            fs::rename("/out/movable", &to),
        );
        attempt(&format!("hard-link /out/movable {to}.link"), {
            fs::hard_link("/out/movable", format!("{to}.link"))
        });
        #[allow(deprecated)]
        let symlink = fs::soft_link("/out/movable", format!("{to}.symlink"));
        attempt(&format!("symlink {to}.symlink"), symlink);
    }
    fs::remove_file("/out/movable").expect("remove /out/movable");
    print!("{report}");
    fs::write(&args.outputs["report"], &report).expect("write report");
    std::process::exit(if escaped == 0 { 0 } else { 2 });
}

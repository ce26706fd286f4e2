//! Reads everything a guest could tell two runs apart by and writes it, line by line, to
//! output `report`: wall and monotonic clock readings, values drawn from the random-seeded
//! hasher, a `HashMap`'s iteration order, and the metadata (sizes, times in nanoseconds since
//! the Unix epoch, link counts, inode numbers) of input `data` (a folder), of everything in it
//! listed in the order the guest gets it, of `/in`, `/out`, and of a file it writes itself.
use std::collections::HashMap;
use std::ffi::{CString, c_char, c_int};
use std::fmt::Write as _;
use std::hash::{BuildHasher, RandomState};
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

fn nanos(t: std::io::Result<SystemTime>) -> String {
    match t {
        Ok(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_nanos().to_string(),
            Err(e) => format!("-{}", e.duration().as_nanos()),
        },
        Err(e) => format!("error ({e})"),
    }
}

/// wasi-libc's `struct stat` (linked into every `wasm32-wasip2` program); std's wasi
/// `MetadataExt`, which has the link count and change time, is unstable.
#[repr(C)]
#[derive(Default)]
struct Stat {
    dev: u64,
    ino: u64,
    nlink: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    pad: u32,
    rdev: u64,
    size: i64,
    blksize: i32,
    blocks: i64,
    atime: Timespec,
    mtime: Timespec,
    ctime: Timespec,
    reserved: [i64; 3],
}

#[repr(C)]
#[derive(Default)]
struct Timespec {
    sec: i64,
    nsec: i32,
}

unsafe extern "C" {
    fn lstat(path: *const c_char, buf: *mut Stat) -> c_int;
}

fn lstat_of(path: &Path) -> Stat {
    let c = CString::new(path.to_str().expect("utf-8")).expect("no NUL");
    let mut st = Stat::default();
    // SAFETY: `c` is a NUL-terminated path and `st` has wasi-libc's `struct stat` layout.
    let rc = unsafe { lstat(c.as_ptr(), &mut st) };
    assert_eq!(
        rc,
        0,
        "lstat {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    st
}

/// `KIND LABEL size=.. mtime=.. atime=.. ctime=.. nlink=..` for one path.
fn describe(report: &mut String, label: &str, path: &Path) {
    let meta = std::fs::symlink_metadata(path).expect("stat");
    let st = lstat_of(path);
    let kind = if meta.is_dir() { "dir" } else { "file" };
    writeln!(
        report,
        "{kind} {label} size={} mtime={} atime={} ctime={} nlink={} lstat-size={} ino={}",
        meta.len(),
        nanos(meta.modified()),
        nanos(meta.accessed()),
        i128::from(st.ctime.sec) * 1_000_000_000 + i128::from(st.ctime.nsec),
        st.nlink,
        st.size,
        st.ino,
    )
    .unwrap();
}

/// Describes a folder and, in the order `read_dir` gives them, everything in it.
fn walk(report: &mut String, label: &str, path: &Path) {
    describe(report, label, path);
    let names: Vec<String> = std::fs::read_dir(path)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    writeln!(report, "list {label} {}", names.join(" ")).unwrap();
    for name in names {
        let child = path.join(&name);
        let child_label = format!("{label}/{name}");
        if child.is_dir() {
            walk(report, &child_label, &child);
        } else {
            describe(report, &child_label, &child);
        }
    }
}

fn main() {
    let args = kiln_wasm_test_guests::args();
    let mut r = String::new();

    let walls: Vec<String> = (0..4).map(|_| nanos(Ok(SystemTime::now()))).collect();
    writeln!(r, "wall {}", walls.join(" ")).unwrap();
    let origin = Instant::now();
    let monos: Vec<String> = (0..4)
        .map(|_| Instant::now().duration_since(origin).as_nanos().to_string())
        .collect();
    writeln!(r, "mono-since-first {}", monos.join(" ")).unwrap();

    let hashes: Vec<String> = (0..4)
        .map(|_| RandomState::new().hash_one(42u64).to_string())
        .collect();
    writeln!(r, "random {}", hashes.join(" ")).unwrap();
    let map: HashMap<u32, ()> = (0..16).map(|k| (k, ())).collect();
    let order: Vec<String> = map.keys().map(u32::to_string).collect();
    writeln!(r, "hashmap-order {}", order.join(" ")).unwrap();

    walk(&mut r, "data", Path::new(&args.inputs["data"]));
    describe(&mut r, "/in", Path::new("/in"));
    describe(&mut r, "/out", Path::new("/out"));
    std::fs::write("/out/scratch", b"written by the guest").expect("write scratch");
    describe(&mut r, "/out/scratch", Path::new("/out/scratch"));
    std::fs::remove_file("/out/scratch").expect("remove scratch");

    print!("{r}");
    std::fs::write(&args.outputs["report"], r).expect("write report");
}

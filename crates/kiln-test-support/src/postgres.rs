//! A real PostgreSQL server for the tests, from Debian's packages (`postgresql`, installed by
//! `scripts/setup.sh`), started by the tests themselves: `initdb` into a temporary folder and
//! `postgres` on a free port of 127.0.0.1, with trust authentication for the `postgres` user
//! (nothing outside this machine can reach it). As root, both run as the `postgres` system
//! user, which PostgreSQL requires.
//!
//! A Python launcher owns the server: it stops it and removes the folder when its standard
//! input closes, which is what dropping [`Postgres`] does, and also what happens when the test
//! process dies without dropping it. Databases are made with the package's `psql`.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::s3::{free_port, unique_temp_dir};

/// How long the server may take to accept connections before the start is given up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Makes the cluster in `data/` under its working directory (owned by the server's user),
/// starts `postgres` on 127.0.0.1 and the port in argv, and when its standard input closes,
/// stops the server (fast shutdown) and removes the working directory.
const LAUNCHER: &str = r#"
import os, pwd, shutil, signal, subprocess, sys, threading
bindir, port = sys.argv[1:3]
here = os.getcwd()
def demote():
    if os.getuid() == 0:
        user = pwd.getpwnam("postgres")
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
if os.getuid() == 0:
    user = pwd.getpwnam("postgres")
    os.chown(here, user.pw_uid, user.pw_gid)
data = os.path.join(here, "data")
subprocess.run([os.path.join(bindir, "initdb"), "-D", data, "-U", "postgres", "--auth=trust",
                "-E", "UTF8", "--no-sync", "--no-instructions"],
               preexec_fn=demote, check=True, stdout=subprocess.DEVNULL)
server = subprocess.Popen([os.path.join(bindir, "postgres"), "-D", data, "-p", port,
                           "-h", "127.0.0.1", "-k", here, "-c", "max_connections=300",
                           "-c", "fsync=off"], preexec_fn=demote)
def stop_when_closed():
    sys.stdin.buffer.read()
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    shutil.rmtree(here, ignore_errors=True)
    os._exit(0)
threading.Thread(target=stop_when_closed, daemon=True).start()
code = server.wait()
shutil.rmtree(here, ignore_errors=True)
os._exit(code if code else 1)
"#;

/// A running PostgreSQL server on `127.0.0.1`; dropping it stops the server and removes its
/// folder.
#[derive(Debug)]
pub struct Postgres {
    child: Option<Child>,
    port: u16,
    bindir: PathBuf,
}

/// The newest installed server's `bin` folder (`/usr/lib/postgresql/<major>/bin`).
fn bindir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

impl Postgres {
    /// Starts a server on a free port and waits until it accepts connections. `Err` only when
    /// PostgreSQL is not installed (the message says to run `scripts/setup.sh`); a server
    /// that is installed but does not start within 60 s is a panic with what it printed.
    pub fn start() -> Result<Postgres, String> {
        let bindir = bindir().ok_or_else(|| {
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres; run \
             scripts/setup.sh, which installs Debian's postgresql)"
                .to_owned()
        })?;
        for _ in 0..5 {
            if let Some(server) = Self::start_on(&bindir, free_port()) {
                return Ok(server);
            }
        }
        panic!("PostgreSQL found its port taken 5 times in a row");
    }

    /// One try on `port`: `None` when the port was taken meanwhile.
    fn start_on(bindir: &std::path::Path, port: u16) -> Option<Postgres> {
        let dir = unique_temp_dir();
        // The log lives beside the server's folder, which the launcher removes.
        let log_path = dir.with_extension("log");
        let log = File::create(&log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let log_err = log.try_clone().expect("cannot duplicate the log's handle");
        let child = Command::new("python3")
            .args(["-c", LAUNCHER])
            .arg(bindir)
            .arg(port.to_string())
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start python3 for PostgreSQL: {e}"));
        let mut server = Postgres {
            child: Some(child),
            port,
            bindir: bindir.to_owned(),
        };
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let child = server.child.as_mut().expect("the launcher");
            if let Some(status) = child.try_wait().expect("cannot wait for the launcher") {
                let printed = log();
                let _ = std::fs::remove_file(&log_path);
                if printed.contains("Address already in use") {
                    return None;
                }
                panic!("PostgreSQL exited before accepting connections ({status}):\n{printed}");
            }
            if server.ready() {
                let _ = std::fs::remove_file(&log_path);
                return Some(server);
            }
            if Instant::now() > deadline {
                panic!(
                    "PostgreSQL did not accept connections on 127.0.0.1:{port} within {} s:\n{}",
                    START_TIMEOUT.as_secs(),
                    log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ready(&self) -> bool {
        Command::new(self.bindir.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The URL of database `name`: `postgres://postgres@127.0.0.1:PORT/NAME`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs one SQL statement with `psql` in the `postgres` database.
    pub fn execute(&self, sql: &str) -> Result<(), String> {
        let output = Command::new(self.bindir.join("psql"))
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .args(["-p", &self.port.to_string(), "-d", "postgres", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "psql -c {sql:?} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    /// A new, empty database with a name no other call gave; its URL.
    pub fn new_database(&self) -> String {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "kiln_{}_{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        self.execute(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("{e}"));
        self.url(&name)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Closing its standard input tells the launcher to stop the server and clean up.
        drop(child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A [`Postgres`] for `what`, in the manner of [`crate::s3::s3_server_or_skip`]: `None`
/// when PostgreSQL is not installed here, after saying so on stderr; where `CI` is set, a
/// missing PostgreSQL is a panic, because CI must not skip.
pub fn postgres_or_skip(what: &str) -> Option<Postgres> {
    match Postgres::start() {
        Ok(server) => Some(server),
        Err(reason) => {
            if crate::in_ci() {
                panic!("{what}: {reason}; CI is set, so it may not be skipped");
            }
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "skipping {what}: {reason}");
            None
        }
    }
}

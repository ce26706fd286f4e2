//! A real S3-compatible server for the tests, started by the tests themselves: moto's server
//! (`python3 -m moto.server`, from `moto[server]`, pinned in `scripts/requirements-s3.txt` and
//! installed by `scripts/setup.sh`). It keeps everything in memory, accepts any credentials,
//! and binds 127.0.0.1 only, on a free port, so nothing outside this machine can reach it.
//!
//! Each [`S3Server`] is its own process with its own buckets; dropping it kills the process.
//! Should the test process die without dropping it, the server notices that its standard
//! input has closed and exits too. Buckets and objects are made and read with boto3 (which
//! `moto[server]` brings), run as `python3 -c`, so that this crate needs no dependency.
//! moto refuses unsigned requests for objects (403), so reading back goes through boto3 too.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the server may take to answer HTTP before the start is given up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The exit code of [`LAUNCHER`] when moto or boto3 cannot be imported.
const NOT_INSTALLED: i32 = 3;

/// Starts moto's server on 127.0.0.1 and the port in argv, after checking what it needs can
/// be imported, and ends it when its standard input closes (the test process is gone, killed
/// before it could drop the server), removing its folder (the working directory) first.
const LAUNCHER: &str = r#"
import os, shutil, sys, threading
try:
    import boto3, moto.server
except ImportError as e:
    sys.stderr.write(f"cannot import it: {e}\n")
    sys.exit(3)
def exit_when_orphaned():
    sys.stdin.buffer.read()
    shutil.rmtree(os.getcwd(), ignore_errors=True)
    os._exit(0)
threading.Thread(target=exit_when_orphaned, daemon=True).start()
moto.server.main(["-H", "127.0.0.1", "-p", sys.argv[1]])
"#;

/// One S3 operation with boto3; what it works on comes in argv (operation, endpoint, bucket,
/// key), the credentials and region in the environment, an object's bytes on stdin/stdout.
const CLIENT: &str = r#"
import os, sys
import boto3
from botocore.config import Config
op, endpoint, bucket = sys.argv[1:4]
key = sys.argv[4] if len(sys.argv) > 4 else None
s3 = boto3.client(
    "s3",
    endpoint_url=endpoint,
    region_name=os.environ["AWS_REGION"],
    aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
    aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
    config=Config(
        s3={"addressing_style": "path"},
        connect_timeout=10,
        read_timeout=60,
        retries={"max_attempts": 2},
    ),
)
if op == "create_bucket":
    s3.create_bucket(Bucket=bucket)
elif op == "put_object":
    s3.put_object(Bucket=bucket, Key=key, Body=sys.stdin.buffer.read())
elif op == "get_object":
    sys.stdout.buffer.write(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
elif op == "delete_object":
    s3.delete_object(Bucket=bucket, Key=key)
else:
    sys.exit(f"unknown operation {op}")
"#;

/// A running S3-compatible server (moto's) on `127.0.0.1`, with its own temporary folder for
/// its log; dropping it kills and reaps the process and removes the folder.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl S3Server {
    /// Starts a server on a free port of 127.0.0.1 and waits until it answers HTTP. `Err`
    /// only when the server is not installed (the message says to run `scripts/setup.sh`);
    /// a server that is installed but fails to start, or does not answer within 30 s, is a
    /// panic that shows what it printed.
    pub fn start() -> Result<S3Server, String> {
        // The port is free when it is picked, but another process may take it before the
        // server binds it: then the server says so and exits, and another port is tried.
        for _ in 0..5 {
            if let Some(server) = Self::start_on(free_port())? {
                return Ok(server);
            }
        }
        panic!("the S3 server (moto) found its port taken 5 times in a row");
    }

    /// One try on `port`: `Ok(None)` when the port was taken meanwhile.
    fn start_on(port: u16) -> Result<Option<S3Server>, String> {
        let dir = unique_temp_dir();
        let log_path = dir.join("server.log");
        let log = File::create(&log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let log_err = log.try_clone().expect("cannot duplicate the log's handle");
        let spawned = Command::new("python3")
            .args(["-c", LAUNCHER, &port.to_string()])
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(log_err)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(match e.kind() {
                    std::io::ErrorKind::NotFound => {
                        "python3 is not installed (not found on PATH), so the S3 server \
                         (moto[server]) cannot run (run scripts/setup.sh)"
                            .to_owned()
                    }
                    _ => format!("python3 cannot be started for the S3 server: {e}"),
                });
            }
        };
        // From here on, dropping `server` (on return or panic) kills the process.
        let mut server = S3Server { child, port, dir };
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = server.child.try_wait().expect("cannot wait for the server") {
                let printed = log();
                if status.code() == Some(NOT_INSTALLED) {
                    return Err(format!(
                        "the S3 server, moto[server] with boto3, is not installed for python3 \
                         (run scripts/setup.sh): {}",
                        printed.trim()
                    ));
                }
                if printed.contains("Address already in use") {
                    return Ok(None);
                }
                panic!(
                    "the S3 server (moto) exited before answering ({status}); it printed:\n{printed}"
                );
            }
            if answers_http(port) {
                return Ok(Some(server));
            }
            if Instant::now() > deadline {
                panic!(
                    "the S3 server (moto) did not answer HTTP on 127.0.0.1:{port} within {} s; \
                     it printed:\n{}",
                    START_TIMEOUT.as_secs(),
                    log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's URL: `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The access key id to sign with (moto accepts any).
    pub fn access_key(&self) -> &'static str {
        "kiln-test-access-key"
    }

    /// The secret access key to sign with (moto accepts any).
    pub fn secret_key(&self) -> &'static str {
        "kiln-test-secret-key"
    }

    /// The region the buckets are in: `us-east-1`.
    pub fn region(&self) -> &'static str {
        "us-east-1"
    }

    /// The environment a client reads to use this server: `AWS_ENDPOINT_URL`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` (and `AWS_DEFAULT_REGION`,
    /// which older AWS SDKs read), and `AWS_ALLOW_HTTP=true`, without which the `object_store`
    /// crate refuses a plain `http://` endpoint.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", self.access_key().to_owned()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key().to_owned()),
            ("AWS_REGION", self.region().to_owned()),
            ("AWS_DEFAULT_REGION", self.region().to_owned()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Creates the bucket `name`.
    pub fn create_bucket(&self, name: &str) -> Result<(), String> {
        self.boto3(&["create_bucket", name], None).map(drop)
    }

    /// Stores `bytes` as `key` in `bucket`.
    pub fn put_object(&self, bucket: &str, key: &str, bytes: &[u8]) -> Result<(), String> {
        self.boto3(&["put_object", bucket, key], Some(bytes))
            .map(drop)
    }

    /// The bytes of `key` in `bucket`.
    pub fn get_object(&self, bucket: &str, key: &str) -> Result<Vec<u8>, String> {
        self.boto3(&["get_object", bucket, key], None)
    }

    /// Deletes `key` from `bucket`.
    pub fn delete_object(&self, bucket: &str, key: &str) -> Result<(), String> {
        self.boto3(&["delete_object", bucket, key], None).map(drop)
    }

    /// Runs [`CLIENT`] with `op_args` (the operation, then bucket and key) and `stdin`; its
    /// stdout, or an error with its stderr. Bounded by boto3's own timeouts and retries.
    fn boto3(&self, op_args: &[&str], stdin: Option<&[u8]>) -> Result<Vec<u8>, String> {
        let (op, rest) = op_args.split_first().expect("an operation");
        let endpoint = self.endpoint();
        let mut child = Command::new("python3")
            .args(["-c", CLIENT, op, &endpoint])
            .args(rest)
            .envs(self.env())
            .env_remove("AWS_PROFILE")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run python3 for {op} (run scripts/setup.sh): {e}"))?;
        let output = std::thread::scope(|scope| {
            if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
                // A writer of its own, so that a large object cannot block on a full pipe
                // while the client's output waits to be read. A client that dies early
                // closes the pipe; its stderr then says why.
                scope.spawn(move || {
                    let _ = pipe.write_all(bytes);
                });
            }
            child.wait_with_output()
        })
        .map_err(|e| format!("cannot wait for python3 running {op}: {e}"))?;
        if output.status.success() {
            return Ok(output.stdout);
        }
        Err(format!(
            "{op} {} on {endpoint} failed ({}): {}",
            rest.join("/"),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An [`S3Server`] for `what` (a test, a case), in the manner of [`crate::podman_or_skip`]:
/// `None` when the server is not installed here, after printing `skipping <what>: ...` on
/// stderr; but where `CI` is set a missing server is a panic, because CI must not skip.
pub fn s3_server_or_skip(what: &str) -> Option<S3Server> {
    match S3Server::start() {
        Ok(server) => Some(server),
        Err(reason) => {
            if crate::in_ci() {
                panic!("{what}: {reason}; CI is set, so it may not be skipped");
            }
            // Straight to stderr, which libtest does not capture: a skip must be seen.
            let _ = writeln!(std::io::stderr(), "skipping {what}: {reason}");
            None
        }
    }
}

/// A port of 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("cannot bind a port of 127.0.0.1")
        .port()
}

/// A new, empty folder under the system's temporary folder.
pub(crate) fn unique_temp_dir() -> PathBuf {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "kiln-s3-{}-{}-{nanos}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// Whether something on 127.0.0.1:`port` answers a plain `GET /` with an HTTP status line.
fn answers_http(port: u16) -> bool {
    let (status, _) = http_get(port, "/");
    status.is_some()
}

/// A plain, unsigned HTTP/1.1 GET of `path` on 127.0.0.1:`port`: the status code (`None`
/// when nothing answered) and the whole response.
fn http_get(port: u16, path: &str) -> (Option<u16>, Vec<u8>) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return (None, Vec::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return (None, Vec::new());
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let status = std::str::from_utf8(&response[..response.len().min(12)])
        .ok()
        .and_then(|line| line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok());
    (status, response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_put_comes_back_and_a_deleted_one_is_gone() {
        let Some(server) = s3_server_or_skip("the S3 server's round trip") else {
            return;
        };
        assert!(server.endpoint().starts_with("http://127.0.0.1:"));
        let env = server.env();
        for name in [
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_REGION",
            "AWS_ALLOW_HTTP",
        ] {
            assert!(env.iter().any(|(k, _)| k == name), "{name} missing");
        }
        assert!(env.contains(&("AWS_ENDPOINT_URL".to_owned(), server.endpoint())));
        let bytes: Vec<u8> = (0..=255u8).cycle().take(200_000).collect();
        server.create_bucket("kiln-test").unwrap();
        server
            .put_object("kiln-test", "some dir/a file.bin", &bytes)
            .unwrap();
        assert_eq!(
            server
                .get_object("kiln-test", "some dir/a file.bin")
                .unwrap(),
            bytes
        );
        // A plain, unsigned GET reaches the same server: moto refuses it for an object that
        // exists (403) and says a missing one is missing (404).
        let (status, _) = http_get(server.port, "/kiln-test/some%20dir/a%20file.bin");
        assert_eq!(status, Some(403));
        let (status, _) = http_get(server.port, "/kiln-test/missing");
        assert_eq!(status, Some(404));

        server
            .delete_object("kiln-test", "some dir/a file.bin")
            .unwrap();
        let gone = server
            .get_object("kiln-test", "some dir/a file.bin")
            .unwrap_err();
        assert!(gone.contains("NoSuchKey"), "{gone}");

        let pid = server.child.id();
        let dir = server.dir.clone();
        drop(server);
        assert!(!dir.exists(), "{} is left", dir.display());
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "the server's process {pid} is left"
        );
    }
}

//! Running a process to its end and reading its peak resident memory, as the kernel counts
//! it (`ru_maxrss` from `wait4`): what "kiln stays in the tens of MB" is checked against.

use std::io::{self, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How a process ended, what it printed, and how much memory it held at most.
#[derive(Debug)]
pub struct Measured {
    /// Its exit status and what it printed.
    pub output: Output,
    /// The peak resident set size in bytes of the process, or of its largest descendant
    /// that it waited for, whichever is larger (how Linux reports `ru_maxrss` to `wait4`).
    pub peak_rss: u64,
    /// Wall time from spawn to exit.
    pub wall: Duration,
}

/// Runs `command` to its end with stdout and stderr captured (stdin empty) and measures it.
pub fn run_measured(command: &mut Command) -> io::Result<Measured> {
    let start = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let (status, peak_rss) = wait_with_peak_rss(&child)?;
    let wall = start.elapsed();
    let output = Output {
        status,
        stdout: stdout.join().expect("the stdout reader does not panic")?,
        stderr: stderr.join().expect("the stderr reader does not panic")?,
    };
    Ok(Measured {
        output,
        peak_rss,
        wall,
    })
}

/// Reads a pipe to its end on a thread of its own, so that neither pipe fills up.
fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<io::Result<Vec<u8>>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(mut pipe) = pipe {
            pipe.read_to_end(&mut out)?;
        }
        Ok(out)
    })
}

/// Waits for `child` with `wait4`, which reaps it: the `Child` must not be waited for again.
#[allow(unsafe_code)]
fn wait_with_peak_rss(child: &Child) -> io::Result<(ExitStatus, u64)> {
    let pid = libc::pid_t::try_from(child.id()).map_err(io::Error::other)?;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero `rusage` is a valid value of that plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid, writable and live for the whole call; `pid`
        // is our own child, not reaped yet (std reaps only through `wait`, never called here).
        let got = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if got == pid {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    // Linux reports `ru_maxrss` in KiB.
    let peak = u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024;
    Ok((ExitStatus::from_raw(status), peak))
}

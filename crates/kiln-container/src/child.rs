//! Runs one child process for a step: its own process group, stdout and stderr appended to the
//! step log under a cap, the end of the output kept for the failure message, and everything
//! killed when the future is dropped.

use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe::Receiver;
use tokio::process::Command;

use crate::ContainerError;
use crate::secrets::Redactor;

/// How many bytes of the end of the output are kept for the failure message.
const TAIL_BYTES: usize = 8 * 1024;
/// How many lines of the log a failure message quotes.
pub(crate) const TAIL_LINES: usize = 10;
/// How long to keep reading the pipes once the child has exited and its group was killed.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// How long a `rm -f` of a container may take when a step is dropped.
const REMOVE_LIMIT: Duration = Duration::from_secs(20);

/// A container to force-remove if the step is dropped: `program args...`.
#[derive(Debug, Clone)]
pub(crate) struct ContainerRemoval {
    /// The command line that removes the container (`podman ... rm -f -t 0 NAME`).
    pub command: Vec<String>,
}

impl ContainerRemoval {
    /// Runs the removal and waits for it, within [`REMOVE_LIMIT`]; failures are ignored (the
    /// container may never have been created).
    async fn run(&self) {
        let Some((program, args)) = self.command.split_first() else {
            return;
        };
        let spawned = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let Ok(mut child) = spawned else {
            return;
        };
        if tokio::time::timeout(REMOVE_LIMIT, child.wait())
            .await
            .is_err()
        {
            tracing::warn!(command = ?self.command, "removing a container took too long; giving up");
            let _ = child.kill().await;
        }
    }
}

/// Container removals still going on after their steps were dropped.
fn cleanups() -> &'static tokio_util::task::TaskTracker {
    static CLEANUPS: std::sync::OnceLock<tokio_util::task::TaskTracker> =
        std::sync::OnceLock::new();
    CLEANUPS.get_or_init(tokio_util::task::TaskTracker::new)
}

/// Waits until every container of a dropped (cancelled, timed-out) step is removed. A
/// program that cancels steps calls this before it exits, so that no container outlives it.
pub async fn cleanups_done() {
    let tracker = cleanups();
    tracker.close();
    tracker.wait().await;
    tracker.reopen();
}

/// Kills the child's whole process group (and removes its container) unless disarmed.
///
/// Dropping a future is synchronous, and removing a container takes a while (about 0.1 s for
/// podman), so the removal runs as a task of its own, tracked: [`cleanups_done`] waits for
/// it, so that kiln exiting right after a Ctrl-C does not cut it short.
struct KillGuard {
    group: Option<Pid>,
    removal: Option<ContainerRemoval>,
}

impl KillGuard {
    fn kill_group(&mut self) {
        kill_group(self.group.take());
    }
}

fn kill_group(group: Option<Pid>) {
    if let Some(group) = group {
        // ESRCH (the group is already gone) is the expected case after a clean exit.
        let _ = kill_process_group(group, Signal::KILL);
    }
}

impl Drop for KillGuard {
    fn drop(&mut self) {
        let Some(removal) = self.removal.take() else {
            self.kill_group();
            return;
        };
        // Remove first, so the engine's client sees its container end and exits by itself;
        // then kill the client; then remove again, in case the client was still creating the
        // container when the first removal ran.
        let group = self.group.take();
        let cleanup = async move {
            removal.run().await;
            kill_group(group);
            removal.run().await;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                cleanups().spawn_on(cleanup, &handle);
            }
            // Dropped outside any runtime: clean up here, on a small runtime of its own.
            Err(_) => match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(cleanup),
                Err(e) => tracing::warn!(error = %e, "cannot remove a dropped step's container"),
            },
        }
    }
}

/// The step log: the step's output appended up to a cap, and the end of it kept in memory.
struct LogSink {
    file: tokio::fs::File,
    path: String,
    written: u64,
    cap: u64,
    truncated: bool,
    tail: Vec<u8>,
}

impl LogSink {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), ContainerError> {
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > 2 * TAIL_BYTES {
            let cut = self.tail.len() - TAIL_BYTES;
            self.tail.drain(..cut);
        }
        if self.truncated {
            return Ok(());
        }
        let room = self.cap.saturating_sub(self.written);
        let keep = bytes.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        self.append(&bytes[..keep]).await?;
        self.written += keep as u64;
        if keep < bytes.len() {
            self.truncated = true;
            let note = format!(
                "\n[kiln: the log reached its cap of {} bytes; further output is dropped]\n",
                self.cap
            );
            self.append(note.as_bytes()).await?;
        }
        Ok(())
    }

    async fn append(&mut self, bytes: &[u8]) -> Result<(), ContainerError> {
        self.file
            .write_all(bytes)
            .await
            .map_err(|source| ContainerError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// The last [`TAIL_LINES`] lines of the output, each cut to a readable length.
    fn tail_lines(&self) -> String {
        let text = String::from_utf8_lossy(&self.tail);
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(TAIL_LINES);
        lines[start..]
            .iter()
            .map(|line| {
                if line.chars().count() > 300 {
                    format!("{}…", line.chars().take(300).collect::<String>())
                } else {
                    (*line).to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// How a supervised child ended.
pub(crate) enum Ended {
    /// It ran and exited.
    Exited {
        /// The child's exit status.
        status: ExitStatus,
        /// The last lines of its output (stdout and stderr interleaved as they came).
        tail: String,
    },
    /// It could not be started (the program is missing or not executable).
    NotStarted(std::io::Error),
}

/// Opens (appends to) a step log, creating its folder.
pub(crate) async fn open_log(path: &Path) -> Result<tokio::fs::File, ContainerError> {
    let io = |source| ContainerError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent).await.map_err(io)?;
    }
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(io)
}

/// Runs `command` to its end: `header` first in the log, then the child's output, with the
/// values `redactor` knows replaced before they reach the log or the failure message.
///
/// The child gets its own process group; when it exits, whatever it left running in that group
/// is killed (a container's processes end with its main process too), and when this future is
/// dropped the whole group is killed and `removal` (if any) is run.
pub(crate) async fn run_logged(
    mut command: Command,
    program: &str,
    log: &Path,
    header: &str,
    log_cap: u64,
    removal: Option<ContainerRemoval>,
    mut redactor: Option<Redactor>,
) -> Result<Ended, ContainerError> {
    let mut sink = LogSink {
        file: open_log(log).await?,
        path: log.display().to_string(),
        written: 0,
        cap: log_cap,
        truncated: false,
        tail: Vec::new(),
    };
    sink.append(header.as_bytes()).await?;

    // One pipe for both streams, as `2>&1` would do: the log keeps the order in which the
    // step wrote, and the failure message quotes the true last lines.
    let pipe_error = |source| ContainerError::Io {
        path: format!("a pipe for `{program}`"),
        source,
    };
    let (reader, writer) = std::io::pipe().map_err(pipe_error)?;
    let writer_too = writer.try_clone().map_err(pipe_error)?;
    command
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer_too)
        .process_group(0)
        .kill_on_drop(true);
    let spawned = command.spawn();
    // The command holds the pipe's write ends: drop them, or the reader never sees its end.
    drop(command);
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            let note = format!("[kiln: could not start `{program}`: {error}]\n");
            sink.append(note.as_bytes()).await?;
            sink.file.flush().await.ok();
            return Ok(Ended::NotStarted(error));
        }
    };
    let mut guard = KillGuard {
        group: child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(Pid::from_raw),
        removal,
    };
    let mut output = Some(Receiver::from_owned_fd(OwnedFd::from(reader)).map_err(pipe_error)?);
    let mut buf = vec![0u8; 64 * 1024];
    let mut status = None;
    let mut drain_until: Option<tokio::time::Instant> = None;

    while status.is_none() || output.is_some() {
        tokio::select! {
            read = read_some(&mut output, &mut buf), if output.is_some() => match read {
                Some(n) => match &mut redactor {
                    Some(redactor) => sink.write(&redactor.push(&buf[..n])).await?,
                    None => sink.write(&buf[..n]).await?,
                },
                None => output = None,
            },
            waited = child.wait(), if status.is_none() => {
                let exit = waited.map_err(|source| ContainerError::Io {
                    path: format!("the `{program}` child process"),
                    source,
                })?;
                // Background processes the step left behind would keep the pipe open.
                guard.kill_group();
                if exit.signal().is_none() {
                    // The client ran to its end, so its `--rm` removed the container.
                    guard.removal = None;
                }
                status = Some(exit);
                drain_until = Some(tokio::time::Instant::now() + DRAIN_LIMIT);
            },
            () = tokio::time::sleep_until(drain_until.unwrap_or_else(tokio::time::Instant::now)),
                if drain_until.is_some() => {
                // Something outside the group still holds the pipe: stop waiting for it.
                break;
            },
        }
    }
    if let Some(redactor) = &mut redactor {
        sink.write(&redactor.finish()).await?;
    }
    sink.file
        .flush()
        .await
        .map_err(|source| ContainerError::Io {
            path: sink.path.clone(),
            source,
        })?;
    // Dropping the guard now kills nothing (the group is gone) but still removes the container
    // if the client was killed by a signal from outside.
    drop(guard);
    let status = status.expect("the loop ends only after the child has exited");
    Ok(Ended::Exited {
        status,
        tail: sink.tail_lines(),
    })
}

/// Reads once from a pipe: `Some(n)` bytes, or `None` at its end (or on an error).
async fn read_some<R: AsyncReadExt + Unpin>(pipe: &mut Option<R>, buf: &mut [u8]) -> Option<usize> {
    let pipe = pipe.as_mut()?;
    match pipe.read(buf).await {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(n),
    }
}

/// `SIGKILL`-style name of a signal number, for messages.
pub(crate) fn signal_name(signal: i32) -> String {
    let name = match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        _ => return format!("signal {signal}"),
    };
    format!("signal {signal} ({name})")
}

/// The log tail as a message suffix.
pub(crate) fn quote_tail(tail: &str) -> String {
    if tail.trim().is_empty() {
        " (the step printed nothing)".to_owned()
    } else {
        format!("; last lines of the log:\n{tail}")
    }
}

/// A command line as a person would type it (single quotes where a shell needs them).
pub(crate) fn shell_line<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|word| {
            let word = word.as_ref();
            let plain = !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%{}[]".contains(c));
            if plain {
                word.to_owned()
            } else {
                format!("'{}'", word.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_for_a_shell() {
        assert_eq!(
            shell_line(&["sh", "-c", "echo 'hi' > out", "a=b"]),
            r"sh -c 'echo '\''hi'\'' > out' a=b"
        );
        assert_eq!(shell_line(&[""]), "''");
    }

    #[test]
    fn names_signals() {
        assert_eq!(signal_name(9), "signal 9 (SIGKILL)");
        assert_eq!(signal_name(63), "signal 63");
    }
}

//! The guest's stdout and stderr: written straight to the step's log file (so nothing is lost
//! when a run is stopped), up to a cap. The write that crosses the cap writes what fits, adds
//! a note and traps the guest with [`LogLimitExceeded`].

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// How much of the end of stderr is kept for failure messages.
const STDERR_TAIL_BYTES: usize = 2048;

/// How many bytes a guest may hand over in one write.
const WRITE_PERMIT: usize = 64 * 1024;

/// The trap raised when a guest writes more than the log may hold.
#[derive(Debug, thiserror::Error)]
#[error("the step wrote more than {limit} bytes to stdout and stderr")]
pub(crate) struct LogLimitExceeded {
    /// The cap, in bytes.
    pub(crate) limit: u64,
}

struct LogState {
    file: File,
    written: u64,
    limit: u64,
    limit_hit: bool,
    stderr_tail: VecDeque<u8>,
    write_error: Option<String>,
}

/// The log of one run, shared by the guest's stdout and stderr.
#[derive(Clone)]
pub(crate) struct RunLog {
    state: Arc<Mutex<LogState>>,
}

impl RunLog {
    /// Opens (appending) the log file, creating it and its folder if needed.
    pub(crate) fn open(path: &Path, limit: u64) -> std::io::Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            state: Arc::new(Mutex::new(LogState {
                file,
                written: 0,
                limit,
                limit_hit: false,
                stderr_tail: VecDeque::with_capacity(STDERR_TAIL_BYTES),
                write_error: None,
            })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        // A panic while holding the lock cannot leave the state inconsistent in a way that
        // matters for a log; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The guest's stdout.
    pub(crate) fn stdout(&self) -> LogSink {
        LogSink {
            log: self.clone(),
            is_stderr: false,
        }
    }

    /// The guest's stderr.
    pub(crate) fn stderr(&self) -> LogSink {
        LogSink {
            log: self.clone(),
            is_stderr: true,
        }
    }

    /// Whether the guest hit the cap.
    pub(crate) fn limit_hit(&self) -> bool {
        self.lock().limit_hit
    }

    /// The last lines of stderr (at most a couple of KiB), trimmed.
    pub(crate) fn stderr_tail(&self) -> String {
        let state = self.lock();
        let (a, b) = state.stderr_tail.as_slices();
        let mut bytes = Vec::with_capacity(a.len() + b.len());
        bytes.extend_from_slice(a);
        bytes.extend_from_slice(b);
        let text = String::from_utf8_lossy(&bytes);
        // Drop a partial first line when the tail was cut.
        let text = if state.stderr_tail.len() == STDERR_TAIL_BYTES {
            text.split_once('\n').map_or(&*text, |(_, rest)| rest)
        } else {
            &text
        };
        text.trim().to_owned()
    }

    /// The first error the log file gave, if any (the guest is not told).
    pub(crate) fn write_error(&self) -> Option<String> {
        self.lock().write_error.clone()
    }

    /// Appends a line of kiln's own to the log (not counted against the cap).
    pub(crate) fn note(&self, text: &str) {
        let mut state = self.lock();
        let _ = writeln!(state.file, "[kiln] {text}");
    }

    /// Writes one message of the step world's logger as a line `LEVEL message`, counted
    /// against the cap like stdout and stderr (warnings and errors count as stderr).
    pub(crate) fn message(&self, level: &str, text: &str) -> Result<(), LogLimitExceeded> {
        let is_stderr = matches!(level, "WARN" | "ERROR");
        self.write(format!("{level} {text}\n").as_bytes(), is_stderr)
    }

    fn write(&self, bytes: &[u8], is_stderr: bool) -> Result<(), LogLimitExceeded> {
        let mut state = self.lock();
        if state.limit_hit {
            return Err(LogLimitExceeded { limit: state.limit });
        }
        let room = state.limit.saturating_sub(state.written);
        let fits = bytes.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let (kept, over) = bytes.split_at(fits);
        if let Err(e) = state.file.write_all(kept) {
            state.write_error.get_or_insert_with(|| e.to_string());
        }
        state.written += kept.len() as u64;
        if is_stderr {
            let tail = &mut state.stderr_tail;
            for &b in kept.iter().rev().take(STDERR_TAIL_BYTES).rev() {
                if tail.len() == STDERR_TAIL_BYTES {
                    tail.pop_front();
                }
                tail.push_back(b);
            }
        }
        if over.is_empty() {
            return Ok(());
        }
        state.limit_hit = true;
        let limit = state.limit;
        let _ = writeln!(
            state.file,
            "\n[kiln] log limit of {limit} bytes reached: the step was stopped"
        );
        Err(LogLimitExceeded { limit })
    }
}

/// One of the guest's output streams (stdout or stderr) writing into the [`RunLog`].
#[derive(Clone)]
pub(crate) struct LogSink {
    log: RunLog,
    is_stderr: bool,
}

impl IsTerminal for LogSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogSink {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogSink {
    async fn ready(&mut self) {}
}

impl OutputStream for LogSink {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.log
            .write(&bytes, self.is_stderr)
            .map_err(|e| StreamError::Trap(e.into()))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        if self.log.limit_hit() {
            let limit = self.log.lock().limit;
            return Err(StreamError::Trap(LogLimitExceeded { limit }.into()));
        }
        Ok(WRITE_PERMIT)
    }
}

impl tokio::io::AsyncWrite for LogSink {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(
            self.log
                .write(buf, self.is_stderr)
                .map(|()| buf.len())
                .map_err(std::io::Error::other),
        )
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_up_to_the_cap_then_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/step.log");
        let log = RunLog::open(&path, 10).unwrap();
        log.write(b"hello ", false).unwrap();
        assert!(!log.limit_hit());
        assert!(log.write(b"world!", true).is_err());
        assert!(log.limit_hit());
        assert!(log.write(b"more", false).is_err());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("hello worl\n[kiln] log limit of 10 bytes"),
            "{text}"
        );
        assert_eq!(log.stderr_tail(), "worl");
    }

    #[test]
    fn keeps_the_end_of_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let log = RunLog::open(&dir.path().join("l"), u64::MAX).unwrap();
        for i in 0..1000 {
            log.write(format!("line {i}\n").as_bytes(), true).unwrap();
        }
        log.write(b"ignored on stdout\n", false).unwrap();
        let tail = log.stderr_tail();
        assert!(tail.ends_with("line 999"), "{tail}");
        assert!(tail.starts_with("line "), "{tail}");
        assert!(tail.len() <= STDERR_TAIL_BYTES);
    }
}

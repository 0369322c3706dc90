//! Child processes that cannot outlive the test that started them.
//!
//! [`Child`] owns a spawned process; dropping it (including during a panic's unwind) sends
//! SIGTERM, waits a short grace period, then SIGKILLs it by PID and reaps it. Its stderr is
//! read by a background thread into a bounded tail buffer, so error messages can say why the
//! process failed without the pipe ever filling up and blocking it.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tokio::time::Instant;

use anyhow::{Context as _, bail};

/// How many bytes of stderr a [`Child`] keeps.
const STDERR_TAIL_BYTES: usize = 16 * 1024;
/// Grace between SIGTERM and SIGKILL when a [`Child`] is dropped while still running.
pub const DROP_GRACE: Duration = Duration::from_millis(1000);
const POLL: Duration = Duration::from_millis(5);

/// A running child process that is killed on drop.
///
/// stdin is `/dev/null`, stdout is `/dev/null` (use [`run`] to capture stdout), stderr is
/// captured into a tail buffer (see [`Child::stderr_tail`]).
#[derive(Debug)]
pub struct Child {
    inner: std::process::Child,
    program: String,
    stderr: Arc<Mutex<VecDeque<u8>>>,
    stderr_reader: Option<JoinHandle<()>>,
    stdout_reader: Option<JoinHandle<Vec<u8>>>,
    status: Option<ExitStatus>,
}

impl Child {
    /// Spawns `cmd` with stdin and stdout at `/dev/null` and stderr captured.
    pub fn spawn(cmd: &mut Command) -> anyhow::Result<Child> {
        Self::spawn_inner(cmd, false)
    }

    fn spawn_inner(cmd: &mut Command, capture_stdout: bool) -> anyhow::Result<Child> {
        let program = describe(cmd);
        cmd.stdin(Stdio::null())
            .stdout(if capture_stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped());
        let mut inner = cmd.spawn().with_context(|| format!("spawning {program}"))?;
        let stderr = Arc::new(Mutex::new(VecDeque::with_capacity(1024)));
        let stderr_reader = inner.stderr.take().map(|mut pipe| {
            let tail = Arc::clone(&stderr);
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                    tail.extend(&buf[..n]);
                    let excess = tail.len().saturating_sub(STDERR_TAIL_BYTES);
                    tail.drain(..excess);
                }
            })
        });
        let stdout_reader = inner.stdout.take().map(|mut pipe| {
            thread::spawn(move || {
                let mut out = Vec::new();
                let _ = pipe.read_to_end(&mut out);
                out
            })
        });
        Ok(Child {
            inner,
            program,
            stderr,
            stderr_reader,
            stdout_reader,
            status: None,
        })
    }

    /// The child's PID.
    pub fn id(&self) -> u32 {
        self.inner.id()
    }

    /// The command line this child was started with (for messages).
    pub fn program(&self) -> &str {
        &self.program
    }

    /// Exit status if the process has exited, without blocking.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.inner.try_wait().ok().flatten();
        }
        self.status
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Waits up to `timeout` for the process to exit. `None` if it is still running (it is
    /// left running; drop or [`Child::kill`] it).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            thread::sleep(POLL.min(deadline - now));
        }
    }

    /// Waits up to `timeout` for a successful exit. On timeout the process is killed. Errors
    /// carry the command line, the exit status and the stderr tail.
    pub fn wait_success(&mut self, timeout: Duration) -> anyhow::Result<()> {
        match self.wait_timeout(timeout) {
            Some(status) if status.success() => Ok(()),
            Some(status) => bail!(
                "{} failed ({status}); stderr:\n{}",
                self.program,
                self.stderr_tail()
            ),
            None => {
                self.kill();
                bail!(
                    "{} still running after {timeout:?}, killed; stderr:\n{}",
                    self.program,
                    self.stderr_tail()
                )
            }
        }
    }

    /// Sends SIGTERM, waits up to `grace`, then SIGKILLs. Returns the exit status.
    pub fn terminate(&mut self, grace: Duration) -> ExitStatus {
        if let Some(status) = self.try_wait() {
            return status;
        }
        signal(self.id(), libc::SIGTERM);
        match self.wait_timeout(grace) {
            Some(status) => status,
            None => self.kill(),
        }
    }

    /// SIGKILLs the process (by PID) and reaps it. Returns the exit status.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.try_wait() {
            return status;
        }
        let _ = self.inner.kill();
        let status = self.inner.wait().expect("waiting for a killed child");
        self.status = Some(status);
        status
    }

    /// The last (up to 16 KiB) bytes the process wrote to stderr, lossily decoded.
    pub fn stderr_tail(&self) -> String {
        // Once the process has exited the reader drains the pipe promptly; give it a moment so
        // the tail is complete when it is used in an error message.
        if self.status.is_some()
            && let Some(reader) = &self.stderr_reader
        {
            let deadline = Instant::now() + Duration::from_millis(200);
            while !reader.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
        }
        let tail = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        let (a, b) = tail.as_slices();
        let mut bytes = Vec::with_capacity(tail.len());
        bytes.extend_from_slice(a);
        bytes.extend_from_slice(b);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn take_stdout(&mut self) -> Vec<u8> {
        match self.stdout_reader.take() {
            Some(reader) => reader.join().unwrap_or_default(),
            None => Vec::new(),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.terminate(DROP_GRACE);
    }
}

#[allow(unsafe_code)]
fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and has no memory-safety preconditions. The PID is
    // our own unreaped child, so it cannot have been recycled for another process.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Runs `cmd` to completion with a deadline, capturing stdout fully and stderr's tail.
/// On timeout the process is killed and an error returned. A non-zero exit is an error too
/// (carrying the stderr tail).
pub fn run(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    let mut child = Child::spawn_inner(cmd, true)?;
    child.wait_success(timeout)?;
    let stdout = child.take_stdout();
    let stderr = child.stderr_tail().into_bytes();
    let status = child.status.expect("exited");
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Starts `ffmpeg [-re] -i <fixture> -c copy <extra_args> -f flv <url>` at log level error.
///
/// `realtime` adds `-re` (read at native rate, like a live encoder). `extra_args` are output
/// options (placed after `-c copy`). `url` may be `rtmp://…` or a file path. Use
/// [`crate::tools::ffmpeg_modern`] for HEVC/AV1/Opus fixtures (it writes enhanced FLV tags);
/// [`crate::tools::ffmpeg5`] writes legacy FLV only. Panics if ffmpeg cannot be started.
pub fn publish(
    ffmpeg: &Path,
    fixture: &Path,
    url: &str,
    realtime: bool,
    extra_args: &[&str],
) -> Child {
    publish_inner(ffmpeg, fixture, url, realtime, false, extra_args)
}

/// Like [`publish`] with `-re -stream_loop -1`: publishes the fixture in a loop, in real time,
/// until the returned [`Child`] is dropped or killed. For tests that need a live stream that
/// lasts (viewers joining mid-stream, GOP cache, pulls).
pub fn publish_looped(ffmpeg: &Path, fixture: &Path, url: &str, extra_args: &[&str]) -> Child {
    publish_inner(ffmpeg, fixture, url, true, true, extra_args)
}

fn publish_inner(
    ffmpeg: &Path,
    fixture: &Path,
    url: &str,
    realtime: bool,
    looped: bool,
    extra_args: &[&str],
) -> Child {
    let mut cmd = Command::new(ffmpeg);
    cmd.args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"]);
    if realtime {
        cmd.arg("-re");
    }
    if looped {
        cmd.args(["-stream_loop", "-1"]);
    }
    cmd.arg("-i")
        .arg(fixture)
        .args(["-c", "copy"])
        .args(extra_args)
        .args(["-f", "flv", url]);
    Child::spawn(&mut cmd).unwrap_or_else(|e| panic!("cannot start publisher: {e:#}"))
}

/// `program arg arg …` for messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut parts: Vec<OsString> = vec![cmd.get_program().to_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_owned()));
    parts
        .iter()
        .map(|p| p.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

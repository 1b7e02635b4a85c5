//! Logs go to stderr through `tracing`, one line per event; stdout belongs to the child.
//!
//! Lines are handed to a thread of their own that writes them to stderr: a stderr that blocks (a pipe
//! nobody reads, a stuck terminal) must never stop the run loop, whose timers renew the lease and stop
//! the child at the renew deadline. When that thread falls behind by `QUEUE` lines, further lines are
//! dropped and counted, and the count is written once the queue drains.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use tracing::Level;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

use crate::cli::LogFormat;

/// Lines that may wait for stderr before new ones are dropped.
const QUEUE: usize = 1024;
/// How long `flush` waits for the queue to drain at exit.
const FLUSH_WAIT: Duration = Duration::from_secs(1);

static SINK: OnceLock<Sink> = OnceLock::new();

struct Sink {
    lines: SyncSender<Vec<u8>>,
    dropped: AtomicU64,
    /// Lines sent minus lines written: what `flush` waits for.
    pending: AtomicU64,
}

/// Default level is warn: quiet in scripts, like flock(1). `-v` info, `-vv` debug, `-vvv` trace;
/// `-q` errors only; `-qq` nothing (fatal errors are still printed by `main`).
///
/// Only mpsync's own events are shown: they carry lease, identity and token, and say what mpsync does
/// about a failure. The libraries' events (the Kubernetes client's "failed with status 500" for a call
/// mpsync is simply retrying) would only repeat them without that context; `-vvv` shows them too.
pub fn init(format: LogFormat, verbose: u8, quiet: u8) {
    let level = match (verbose as i16) - (quiet as i16) {
        i16::MIN..=-2 => None,
        -1 => Some(Level::ERROR),
        0 => Some(Level::WARN),
        1 => Some(Level::INFO),
        2 => Some(Level::DEBUG),
        _ => Some(Level::TRACE),
    };
    let Some(level) = level else { return };
    if SINK.get().is_none() && start_writer().is_err() {
        return;
    }
    let libraries = if level == Level::TRACE { LevelFilter::DEBUG } else { LevelFilter::OFF };
    let filter = Targets::new().with_target("mpsync", level).with_default(libraries);
    let layer = tracing_subscriber::fmt::layer().with_writer(Queued).with_target(false);
    match format {
        LogFormat::Json => {
            tracing_subscriber::registry()
                .with(layer.json().flatten_event(true).with_current_span(true).with_filter(filter))
                .init();
        }
        LogFormat::Text => tracing_subscriber::registry().with(layer.with_ansi(false).with_filter(filter)).init(),
    }
}

/// Print mpsync's final error (`mpsync: ...`) through the same thread, so that a blocked stderr cannot hold
/// up the exit either; then wait briefly for it to be written.
pub fn print_error(message: &str) {
    if SINK.get().is_none() && start_writer().is_err() {
        write_all(format!("mpsync: {message}\n").as_bytes());
        return;
    }
    if let Some(sink) = SINK.get() {
        sink.pending.fetch_add(1, Ordering::SeqCst);
        if sink.lines.try_send(format!("mpsync: {message}\n").into_bytes()).is_err() {
            sink.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }
    flush();
}

/// Wait (briefly) until the lines logged so far are written: call before the process exits.
pub fn flush() {
    let Some(sink) = SINK.get() else { return };
    let deadline = Instant::now() + FLUSH_WAIT;
    while sink.pending.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn start_writer() -> std::io::Result<()> {
    let (lines, receiver) = sync_channel(QUEUE);
    std::thread::Builder::new().name("mpsync-log".into()).spawn(move || write_lines(receiver))?;
    let _ = SINK.set(Sink { lines, dropped: AtomicU64::new(0), pending: AtomicU64::new(0) });
    Ok(())
}

fn write_lines(receiver: Receiver<Vec<u8>>) {
    // Its writes to a terminal never stop mpsync, in the background under `stty tostop` either (the kernel
    // lets a thread that blocks SIGTTOU write): this thread starts before the supervisor blocks them for the
    // threads it starts (found by review, helper-202: mpsync stopped itself for its own log line, or its
    // group's SIGTTOU storm stopped the child before its exec). SIGTSTP and SIGCONT too: only the signal
    // thread takes the job-control signals.
    use crate::supervise::signals::{JOB_CONTROL, set_of};
    let set = set_of(&JOB_CONTROL);
    let _ = nix::sys::signal::pthread_sigmask(nix::sys::signal::SigmaskHow::SIG_BLOCK, Some(&set), None);
    while let Ok(line) = receiver.recv() {
        write_all(&line);
        let Some(sink) = SINK.get() else { continue };
        sink.pending.fetch_sub(1, Ordering::SeqCst);
        let dropped = sink.dropped.swap(0, Ordering::SeqCst);
        if dropped > 0 {
            write_all(format!("mpsync: {dropped} log lines dropped: stderr was not being read\n").as_bytes());
        }
    }
}

/// Write to file descriptor 2 directly, not through `std::io::stderr()`, whose lock a blocked write would
/// hold: nothing else in mpsync must ever wait for it.
fn write_all(mut bytes: &[u8]) {
    // SAFETY: fd 2 is mpsync's stderr for its whole life; borrowing it for one write closes nothing.
    let stderr = unsafe { std::os::fd::BorrowedFd::borrow_raw(2) };
    while !bytes.is_empty() {
        match nix::unistd::write(stderr, bytes) {
            Ok(0) => return,
            Ok(n) => bytes = &bytes[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// The writer `tracing` formats each event into: one line, queued whole.
struct Queued;

struct Line(Vec<u8>);

impl<'a> MakeWriter<'a> for Queued {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(Vec::with_capacity(256))
    }
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let Some(sink) = SINK.get() else { return };
        if self.0.is_empty() {
            return;
        }
        sink.pending.fetch_add(1, Ordering::SeqCst);
        match sink.lines.try_send(std::mem::take(&mut self.0)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                sink.pending.fetch_sub(1, Ordering::SeqCst);
                sink.dropped.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

//! An interactive shell on a pseudo-terminal of its own, driven as a user drives it: type lines and control
//! keys (Ctrl-Z, Ctrl-C), read what the terminal shows, ask which process group has its foreground.
//!
//! The shell is bash, as a login terminal runs it: session leader, the pty its controlling terminal, job
//! control on. No rc files, no line editing, no echo (the test's typing would show in the output).

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::PATIENCE;

pub const CTRL_C: u8 = 0x03;
pub const CTRL_Z: u8 = 0x1a;

pub struct Terminal {
    master: Option<File>,
    shell: Child,
    /// Everything the terminal showed so far.
    output: Arc<Mutex<Vec<u8>>>,
    /// How far `expect` has read.
    seen: usize,
    reader: Option<std::thread::JoinHandle<()>>,
    closing: Arc<AtomicBool>,
}

impl Terminal {
    /// `bash -i` on a new terminal, with `env` added to its environment and mpsync's directory first on PATH.
    pub fn bash<K: AsRef<OsStr>, V: AsRef<OsStr>>(env: impl IntoIterator<Item = (K, V)>) -> Terminal {
        let mut command = Command::new("bash");
        command.args(["--norc", "--noprofile", "--noediting", "-i"]);
        super::scrub(&mut command);
        let bin = std::path::Path::new(env!("CARGO_BIN_EXE_mpsync")).parent().unwrap().to_path_buf();
        let path = std::env::join_paths(
            std::iter::once(bin).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
        )
        .unwrap();
        command.env("PATH", path).env("PS1", "$ ").env("TERM", "dumb").env("HISTFILE", "/dev/null");
        command.envs(env);
        let mut terminal = Terminal::spawn(command);
        terminal.type_line("stty -echo; echo shell-$((6 * 7))");
        terminal.expect("shell-42");
        terminal
    }

    /// Run `command` as the session leader of a new terminal, the terminal its controlling one.
    pub fn spawn(mut command: Command) -> Terminal {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        // Close-on-exec, both sides: a process that inherited the master side (the shell, or mpsync under
        // nohup) would keep the terminal from ever hanging up. (Stdio duplicates the slave side for the shell.)
        for fd in [&pty.master, &pty.slave] {
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC)).unwrap();
        }
        let slave = || Stdio::from(pty.slave.try_clone().unwrap());
        command.stdin(slave()).stdout(slave()).stderr(slave());
        // SAFETY: setsid, ioctl(TIOCSCTTY) and signal(SIG_DFL) are async-signal-safe: a new session, the pty
        // its terminal, and the signals a login shell starts with at their defaults (a test run started with
        // `&` by a shell without job control, or under nohup, has SIGINT, SIGQUIT or SIGHUP ignored).
        unsafe {
            command.pre_exec(|| {
                for signal in [nix::libc::SIGINT, nix::libc::SIGQUIT, nix::libc::SIGHUP] {
                    nix::libc::signal(signal, nix::libc::SIG_DFL);
                }
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if nix::libc::ioctl(0, nix::libc::TIOCSCTTY as _, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let shell = command.spawn().expect("spawn the shell");
        drop(pty.slave);
        let master = File::from(pty.master);
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = Arc::clone(&output);
        let closing = Arc::new(AtomicBool::new(false));
        let close = Arc::clone(&closing);
        let reader = std::thread::spawn(move || {
            use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
            let mut buffer = [0u8; 4096];
            // Polled, so that `hang_up` can make it let go of its descriptor: the terminal hangs up only when
            // the last descriptor of its master side is closed.
            while !close.load(Ordering::Relaxed) {
                let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(&reader), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::from(50u16)) {
                    Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                    Ok(_) => {}
                    Err(_) => break,
                }
                // EIO once the last process holding the slave side is gone.
                match reader.read(&mut buffer) {
                    Ok(n) if n > 0 => sink.lock().unwrap().extend_from_slice(&buffer[..n]),
                    _ => break,
                }
            }
        });
        Terminal { master: Some(master), shell, output, seen: 0, reader: Some(reader), closing }
    }

    /// Type `line` and Enter.
    pub fn type_line(&mut self, line: &str) {
        self.write(format!("{line}\n").as_bytes());
    }

    /// Press a control key (`CTRL_C`, `CTRL_Z`).
    pub fn key(&mut self, key: u8) {
        self.write(&[key]);
    }

    fn write(&mut self, bytes: &[u8]) {
        let master = self.master.as_mut().expect("the terminal is open");
        master.write_all(bytes).unwrap();
        master.flush().unwrap();
    }

    /// Wait (within PATIENCE) for `needle` to show after what earlier calls saw; return the text up to and
    /// including it.
    #[track_caller]
    pub fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = self.text_since(self.seen);
            if let Some(at) = text.find(needle) {
                let upto = at + needle.len();
                self.seen += text[..upto].len();
                return text[..upto].to_string();
            }
            assert!(Instant::now() < deadline, "the terminal never showed {needle:?}; it showed:\n{}", self.text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait until `condition` holds; fail with the terminal's text.
    #[track_caller]
    pub fn wait_until(&self, what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}; the terminal showed:\n{}", self.text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything the terminal has shown.
    pub fn text(&self) -> String {
        self.text_since(0)
    }

    fn text_since(&self, start: usize) -> String {
        let output = self.output.lock().unwrap();
        // `seen` counts bytes of lossy text; the output is ASCII in these tests. Without carriage returns,
        // which would overwrite lines when a failure prints the text.
        String::from_utf8_lossy(&output).replace('\r', "").get(start..).unwrap_or_default().to_string()
    }

    /// The terminal's foreground process group.
    pub fn foreground(&self) -> i32 {
        nix::unistd::tcgetpgrp(self.master.as_ref().unwrap()).map(Pid::as_raw).unwrap_or(-1)
    }

    /// The shell's pid, which is also its process group and session.
    pub fn shell(&self) -> i32 {
        self.shell.id() as i32
    }

    /// Close the terminal, as when its window is closed: the kernel hangs up the session.
    pub fn hang_up(&mut self) {
        drop(self.master.take());
        self.closing.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    /// Wait for the shell to exit (after `exit`, or a hang-up).
    pub fn wait_for_shell(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.shell.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the shell did not exit; the terminal showed:\n{}", self.text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The terminal's modes now.
    pub fn modes(&self) -> nix::sys::termios::Termios {
        nix::sys::termios::tcgetattr(self.master.as_ref().expect("the terminal is open")).unwrap()
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.shell.id() as i32), Signal::SIGKILL);
        let _ = self.shell.wait();
        self.closing.store(true, Ordering::Relaxed);
    }
}

/// The state letter of process `pid` in /proc (`T` stopped, `S` sleeping, `R` running, `Z` zombie).
pub fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.get(stat.rfind(')')? + 1..)?.split_whitespace().next()?.chars().next()
}

/// Field `index` (1-based, as in proc(5)) of /proc/PID/stat, as a number: 4 ppid, 5 pgrp, 6 session.
pub fn stat_field(pid: i32, index: usize) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.get(stat.rfind(')')? + 1..)?.split_whitespace().nth(index - 3)?.parse().ok()
}

//! The command line: clap derive for the raw flags, then `Cli::into_config` turns them, once, into a
//! validated `Config`. Nothing past this module sees a raw flag; every check that can be made without
//! the API server is made here, so bad input exits 125 before any API call.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use nix::sys::signal::Signal;

use crate::error::{Error, Result};
use crate::lease::Timing;
use crate::validate;
pub use crate::validate::is_dns1123_subdomain;

/// The variable that sets `--identity`. Deliberately not `MPSYNC_IDENTITY`, which the child receives
/// (for its information): a nested mpsync must never inherit its parent's identity. It is also removed
/// from the environment the child inherits.
pub const IDENTITY_ENV: &str = "MPSYNC_HOLDER_IDENTITY";

/// The variable that sets `--slots`. Removed from the environment the child inherits, as `IDENTITY_ENV`
/// is: a nested `mpsync lock NAME` (a mutex, as written) must not become a semaphore of its parent's count
/// (found by review, helper-141: under `MPSYNC_SLOTS=2 mpsync lock pool -- script`, the script's
/// `mpsync lock inner` ran two children at once, and marked `inner` a semaphore for every plain user).
pub const SLOTS_ENV: &str = "MPSYNC_SLOTS";

#[derive(Parser, Debug)]
#[command(
    name = "mpsync",
    version,
    about = "Run a process under a Kubernetes Lease: locks, leader election and semaphores",
    after_help = "Exit codes: the child's code (128+N if it died of signal N); 123 lease lost; \
                  124 not acquired; 125 mpsync failed; 126 not executable; 127 not found; \
                  128+N mpsync stopped by signal N before the child started."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: CommandArgs,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, env = "MPSYNC_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    /// More logging (-v: info, -vv: debug, -vvv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Less logging (-q: errors only, -qq: nothing but the final error).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum CommandArgs {
    /// Run COMMAND once, while holding the lease NAME.
    Lock(LockArgs),
    /// Campaign for the lease NAME; run COMMAND while this process is the leader.
    Elect(ElectArgs),
    /// Show who holds the lease NAME; without NAME, list the namespace's leases.
    Status(StatusArgs),
    /// Print one line per change of holder of the lease NAME, until interrupted.
    Observe(QueryArgs),
    /// Serve the metaparticle elector HTTP protocol (/locks/NAME), one Lease per lock.
    Sidecar(SidecarArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell) or the man page (man).
    Completions(CompletionsArgs),
}

#[derive(Args, Debug, Clone)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish, powershell, or man for the man page (roff).
    #[arg(value_enum)]
    pub shell: CompletionTarget,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompletionTarget {
    Bash,
    Zsh,
    Fish,
    Elvish,
    Powershell,
    Man,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// coordination.k8s.io/v1 Leases on a Kubernetes API server.
    Kube,
    /// Lease records in files under --lock-dir, for one machine.
    File,
}

/// Where leases live: shared by every lease command.
#[derive(Args, Debug, Clone)]
pub struct BackendArgs {
    /// Namespace of the Lease [default: the kubeconfig context's namespace; in a pod, POD_NAMESPACE,
    /// then the service account's namespace; then "default". With --backend file: POD_NAMESPACE, then
    /// "default"].
    #[arg(long, short = 'n', env = "MPSYNC_NAMESPACE")]
    pub namespace: Option<String>,

    /// Path to a kubeconfig file (otherwise $KUBECONFIG, ~/.kube/config, or in-cluster).
    // An empty one is unset, as for kubectl (`MPSYNC_KUBECONFIG=`): clap's own PathBuf parser refuses it.
    #[arg(long, env = "MPSYNC_KUBECONFIG", value_name = "PATH",
          value_parser = clap::builder::OsStringValueParser::new().map(PathBuf::from))]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig context to use.
    #[arg(long, env = "MPSYNC_CONTEXT")]
    pub context: Option<String>,

    /// Where leases live: a Kubernetes API server, or files on this machine.
    #[arg(long, value_enum, env = "MPSYNC_BACKEND", default_value = "kube")]
    pub backend: BackendKind,

    /// Directory for --backend file [default: /tmp/mpsync-$UID, the same for cron, shells and services
    /// of one user; emptied at reboot]. It must be yours, mode 0700. For fencing tokens that survive a
    /// reboot, use a persistent one: ~/.local/state/mpsync, or /var/lib/mpsync for system services.
    #[arg(long, env = "MPSYNC_LOCK_DIR", value_name = "DIR")]
    pub lock_dir: Option<PathBuf>,
}

/// Options shared by `lock` and `elect`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Name of the Lease (a DNS-1123 subdomain).
    pub name: String,

    #[command(flatten)]
    pub backend: BackendArgs,

    /// Identity written as holderIdentity [default: <POD_NAME or hostname>_<random>, unique per process].
    /// Not passed on to the child: a nested mpsync gets an identity of its own.
    #[arg(long, env = IDENTITY_ENV)]
    pub identity: Option<String>,

    /// How long a holder's lease stays valid without renewal (whole seconds).
    #[arg(long, env = "MPSYNC_LEASE_DURATION", value_parser = parse_duration, default_value = "15s", value_name = "DURATION")]
    pub lease_duration: Duration,

    /// The lease counts as lost when no renewal succeeded for this long.
    #[arg(long, env = "MPSYNC_RENEW_DEADLINE", value_parser = parse_duration, default_value = "10s", value_name = "DURATION")]
    pub renew_deadline: Duration,

    /// How often the holder renews, and how often waiters poll while the watch is down (at least 10ms).
    #[arg(long, env = "MPSYNC_RETRY_PERIOD", value_parser = parse_duration, default_value = "2s", value_name = "DURATION")]
    pub retry_period: Duration,

    /// How long the child gets between --kill-signal and SIGKILL [default: lease-duration - renew-deadline - 1s].
    #[arg(long, env = "MPSYNC_GRACE", value_parser = parse_duration, value_name = "DURATION")]
    pub grace: Option<Duration>,

    /// Signal sent to the child's process group when the lease is lost.
    #[arg(long, env = "MPSYNC_KILL_SIGNAL", value_parser = parse_signal, default_value = "SIGTERM", value_name = "SIGNAL")]
    pub kill_signal: Signal,

    /// Reap orphaned processes as PID 1 does, even when not PID 1.
    #[arg(long, env = "MPSYNC_SUBREAPER", value_parser = clap::builder::BoolishValueParser::new())]
    pub subreaper: bool,

    /// Up to N holders at once: one Lease per slot, NAME-0 .. NAME-(N-1).
    #[arg(long, env = SLOTS_ENV, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::validate::MAX_SLOTS)), value_name = "N")]
    pub slots: Option<u32>,

    /// Serve /healthz, /leader and /metrics on this address (e.g. :8080, every address of both families).
    #[arg(long, env = "MPSYNC_HEALTH_ADDR", value_name = "ADDR")]
    pub health_addr: Option<crate::health::ProbeAddr>,

    /// The command to run, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

#[derive(Args, Debug, Clone)]
pub struct LockArgs {
    #[command(flatten)]
    pub run: RunArgs,

    /// Stop waiting for the lease after this long (exit 124, or --conflict-exit-code). `--no-wait` wins
    /// over it, as `flock -n` over `-w`.
    #[arg(long, env = "MPSYNC_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,

    /// Try once; if the lease is held, exit 124 (or --conflict-exit-code) at once.
    #[arg(long)]
    pub no_wait: bool,

    /// Exit code for "not acquired" (0 lets a CronJob skip quietly).
    #[arg(long, env = "MPSYNC_CONFLICT_EXIT_CODE", default_value_t = crate::exit::NOT_ACQUIRED, value_parser = clap::value_parser!(i32).range(0..=255), value_name = "N")]
    pub conflict_exit_code: i32,
}

#[derive(Args, Debug, Clone)]
pub struct ElectArgs {
    #[command(flatten)]
    pub run: RunArgs,

    /// When leadership is lost, exit 123 instead of campaigning again.
    #[arg(long, env = "MPSYNC_EXIT_ON_LOSS", value_parser = clap::builder::BoolishValueParser::new())]
    pub exit_on_loss: bool,
}

#[derive(Args, Debug, Clone)]
pub struct QueryArgs {
    /// Name of the Lease (or of a semaphore: every slot is shown).
    pub name: String,

    #[command(flatten)]
    pub backend: BackendArgs,

    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    pub output: OutputFormat,

    /// Treat NAME as a semaphore of N slots (found from its marker Lease when not given).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::validate::MAX_SLOTS)), value_name = "N")]
    pub slots: Option<u32>,
}

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// Name of the Lease (or of a semaphore: every slot is shown); without it, one line per Lease in the
    /// namespace.
    pub name: Option<String>,

    #[command(flatten)]
    pub backend: BackendArgs,

    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    pub output: OutputFormat,

    /// Treat NAME as a semaphore of N slots (found from its marker Lease when not given).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::validate::MAX_SLOTS)), value_name = "N")]
    pub slots: Option<u32>,

    /// Without NAME: list only the Leases whose labels match, e.g. `team=infra,!canary` (Kubernetes label
    /// selector syntax; --backend file understands key=value, key!=value, key and !key).
    #[arg(long, short = 'l', value_name = "SELECTOR")]
    pub selector: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct SidecarArgs {
    /// Address to serve the protocol on; repeat for more (port 0: any free port; the addresses are
    /// printed at start) [default: 127.0.0.1:13131 and [::1]:13131, the latter where the host has IPv6].
    #[arg(long, env = "MPSYNC_LISTEN", value_name = "ADDR", value_delimiter = ',')]
    pub listen: Vec<SocketAddr>,

    /// How long a lock stays held without a heartbeat (whole seconds).
    #[arg(long, env = "MPSYNC_TTL", value_parser = parse_duration, default_value = "30s", value_name = "DURATION")]
    pub ttl: Duration,

    /// Identity written as holderIdentity of every lock this side-car takes [default: POD_NAME, else in a
    /// pod the hostname: the pod's, so that a restarted side-car keeps its clients' locks; outside a pod,
    /// <hostname>_<random>].
    #[arg(long, env = IDENTITY_ENV)]
    pub identity: Option<String>,

    /// Keep lock NAME in the Lease PREFIX+NAME, so that the side-car touches only Leases it owns.
    #[arg(long, env = "MPSYNC_LEASE_PREFIX", value_name = "PREFIX", default_value = "")]
    pub lease_prefix: String,

    /// On SIGTERM: how long to keep answering heartbeats, releasing each lock once its client stops,
    /// before exiting.
    #[arg(long, env = "MPSYNC_DRAIN", value_parser = parse_duration, default_value = "20s", value_name = "DURATION")]
    pub drain: Duration,

    /// Also serve /healthz and /metrics on this address, for probes (e.g. :9090, every address).
    #[arg(long, env = "MPSYNC_HEALTH_ADDR", value_name = "ADDR")]
    pub health_addr: Option<crate::health::ProbeAddr>,

    #[command(flatten)]
    pub backend: BackendArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// The validated configuration: what the rest of mpsync works from.
#[derive(Debug, Clone)]
pub enum Config {
    Run(RunConfig),
    Status(QueryConfig),
    List(ListConfig),
    Observe(QueryConfig),
    Completions(CompletionTarget),
    Sidecar(SidecarConfig),
}

#[derive(Debug, Clone)]
pub enum Backend {
    Kube { kubeconfig: Option<PathBuf>, context: Option<String>, namespace: Option<String> },
    File { lock_dir: PathBuf, namespace: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Forever,
    NoWait,
    Timeout(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Lock { wait: Wait, conflict_exit_code: i32 },
    Elect { exit_on_loss: bool },
}

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub name: String,
    pub backend: Backend,
    pub identity: String,
    pub timing: Timing,
    pub grace: Duration,
    pub kill_signal: Signal,
    pub subreaper: bool,
    /// `None`: one plain lease NAME. `Some(n)`: n leases NAME-0 .. NAME-(n-1).
    pub slots: Option<u32>,
    pub health_addr: Option<crate::health::ProbeAddr>,
    pub mode: Mode,
    pub program: OsString,
    pub args: Vec<OsString>,
}

#[derive(Debug, Clone)]
pub struct QueryConfig {
    pub name: String,
    pub backend: Backend,
    pub output: OutputFormat,
    /// `--slots`: the semaphore's count, when its marker cannot tell.
    pub slots: Option<u32>,
}

/// `status` without NAME: the leases of the namespace.
#[derive(Debug, Clone)]
pub struct ListConfig {
    pub backend: Backend,
    pub output: OutputFormat,
    /// `--selector`: for the file backend, checked to be one it understands.
    pub label_selector: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// Empty: the default, both loopback addresses on port 13131.
    pub listen: Vec<SocketAddr>,
    pub backend: Backend,
    pub identity: String,
    /// A lock's lease duration: how long it stays held without a heartbeat.
    pub ttl: Duration,
    /// Prepended to every lock name to make its Lease name.
    pub lease_prefix: String,
    /// How long the side-car drains on SIGTERM.
    pub drain: Duration,
    pub health_addr: Option<crate::health::ProbeAddr>,
}

impl Cli {
    /// Parse the process's arguments. Help and version print and exit 0; usage errors print one or two
    /// lines and exit 125 (not clap's 2: 125 is mpsync's own failure in the exit-code table).
    pub fn parse_args() -> std::result::Result<Cli, Error> {
        // An empty variable counts as unset, as an empty `KUBECONFIG` does for kubectl (found by review:
        // `MPSYNC_LOCK_DIR=""` from a template was an error).
        for name in env_options() {
            if std::env::var_os(&name).is_some_and(|value| value.is_empty()) {
                // SAFETY: called first thing in main, while the process is single-threaded (as below).
                unsafe { std::env::remove_var(&name) };
            }
        }
        let matches = <Cli as clap::CommandFactory>::command().try_get_matches_from(std::env::args_os());
        let matches = matches.map_err(usage_error)?;
        let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).map_err(usage_error)?;
        if let Some((_, command)) = matches.subcommand() {
            other_backends_options(command)?;
        }
        // SAFETY: called first thing in main, while the process is single-threaded (no runtime, no
        // supervisor threads yet), so nothing reads the environment concurrently.
        unsafe { std::env::remove_var(IDENTITY_ENV) };
        // SAFETY: as above.
        unsafe { std::env::remove_var(SLOTS_ENV) };
        // A semaphore's child is given its slot; a nested plain lock's child must not inherit the outer one
        // (found by review, helper-147). Nothing reads it as an option.
        // SAFETY: as above.
        unsafe { std::env::remove_var("MPSYNC_SLOT") };
        // An address can be served by one process: a nested run that inherited it failed to listen, 125,
        // and never ran its child (found by review, helper-163: a container that sets it for its probes).
        // SAFETY: as above.
        unsafe { std::env::remove_var("MPSYNC_HEALTH_ADDR") };
        Ok(cli)
    }

    pub fn try_parse_from<I, T>(args: I) -> std::result::Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        <Cli as Parser>::try_parse_from(args)
    }

    /// Turn the raw flags into the one validated `Config`.
    pub fn into_config(self) -> Result<Config> {
        // Before anything draws a random number or makes a `HashMap` (an identity's suffix is the first).
        crate::retry::check_randomness()
            .map_err(|err| Error::Internal(format!("no randomness to be had: {err}; mpsync needs one of them")))?;
        match self.command {
            CommandArgs::Lock(lock) => {
                let wait = match (lock.no_wait, lock.timeout) {
                    // `--timeout 0` is one attempt, as `flock -w 0` makes it.
                    (true, _) => Wait::NoWait,
                    (false, Some(timeout)) if timeout.is_zero() => Wait::NoWait,
                    (false, Some(timeout)) => Wait::Timeout(timeout),
                    (false, None) => Wait::Forever,
                };
                let mode = Mode::Lock { wait, conflict_exit_code: lock.conflict_exit_code };
                Ok(Config::Run(run_config(lock.run, mode, "lock")?))
            }
            CommandArgs::Elect(elect) => {
                let mode = Mode::Elect { exit_on_loss: elect.exit_on_loss };
                Ok(Config::Run(run_config(elect.run, mode, "elect")?))
            }
            CommandArgs::Status(status) => status_config(status),
            CommandArgs::Observe(query) => Ok(Config::Observe(query_config(query)?)),
            CommandArgs::Completions(args) => Ok(Config::Completions(args.shell)),
            CommandArgs::Sidecar(sidecar) => Ok(Config::Sidecar(sidecar_config(sidecar)?)),
        }
    }
}

/// The environment variables that options read (`MPSYNC_TIMEOUT`, ...), for every subcommand.
fn env_options() -> Vec<OsString> {
    use clap::CommandFactory;
    let command = Cli::command();
    let mut names = Vec::new();
    for sub in std::iter::once(&command).chain(command.get_subcommands()) {
        names.extend(sub.get_arguments().filter_map(|arg| arg.get_env().map(OsString::from)));
    }
    names.sort();
    names.dedup();
    names
}

/// Write shell completions or the man page to `out`.
pub fn write_completions(target: CompletionTarget, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    use clap::CommandFactory;
    use clap_complete::Shell;
    let mut command = Cli::command();
    let shell = match target {
        CompletionTarget::Man => return write_man_page(command, out),
        CompletionTarget::Bash => Shell::Bash,
        CompletionTarget::Zsh => Shell::Zsh,
        CompletionTarget::Fish => Shell::Fish,
        CompletionTarget::Elvish => Shell::Elvish,
        CompletionTarget::Powershell => Shell::PowerShell,
    };
    clap_complete::generate(shell, &mut command, "mpsync", out);
    Ok(())
}

/// The man page: clap_mangen's page of the top command, then each subcommand's own options in a section
/// of its own (clap_mangen renders one command per page, and users look for `lock`'s flags in `man
/// mpsync`).
fn write_man_page(command: clap::Command, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    // The top page, with two repairs: its SUBCOMMANDS entries name pages `mpsync-lock(1)` etc. that
    // are not installed (the subcommands' options are sections of this page), and clap_mangen heads
    // the after-help (the exit codes) EXTRA, where man pages say EXIT STATUS.
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut page)?;
    for line in String::from_utf8_lossy(&page).lines() {
        let sub = line.strip_prefix("mpsync\\-").and_then(|rest| rest.strip_suffix("(1)"));
        match (line, sub) {
            (".SH EXTRA", _) => writeln!(out, ".SH \"EXIT STATUS\"")?,
            (_, Some(name)) => writeln!(out, "\\fBmpsync {name}\\fR")?,
            _ => writeln!(out, "{line}")?,
        }
    }
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        let mut section = Vec::new();
        clap_mangen::Man::new(sub.clone()).render_options_section(&mut section)?;
        let heading = format!(".SH \"OPTIONS OF MPSYNC {}\"", sub.get_name().to_uppercase());
        // Each rendering starts with the page's preamble (the quote string), given once above.
        for line in String::from_utf8_lossy(&section)
            .lines()
            .filter(|line| !line.starts_with(".ie ") && !line.starts_with(".el "))
        {
            writeln!(out, "{}", if line == ".SH OPTIONS" { heading.as_str() } else { line })?;
        }
    }
    Ok(())
}

/// Render a clap error as mpsync's usage error: help and version are not errors.
/// An option of the backend not chosen, given on the command line, is an error: taken as meant, it would
/// have been ignored without a word (found by review, helper-165: `lock NAME --lock-dir D` without
/// `--backend file` locked on the API server, beside a holder of NAME in D). From the environment (a
/// profile that sets `MPSYNC_LOCK_DIR` for every run) it is left unused.
fn other_backends_options(command: &clap::ArgMatches) -> Result<()> {
    let given = |id: &str| {
        command.try_contains_id(id).unwrap_or(false)
            && command.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
    };
    let Ok(Some(backend)) = command.try_get_one::<BackendKind>("backend") else { return Ok(()) };
    // Named as it was given (found by review, helper-173: "leave out --backend file" of a backend that
    // came from MPSYNC_BACKEND).
    let from_env = command.value_source("backend") == Some(clap::parser::ValueSource::EnvVariable);
    let (others, theirs, ours, fix) = match (backend, from_env) {
        (BackendKind::Kube, _) => (&["lock_dir"][..], "--backend file", "the kube backend", "add --backend file"),
        (BackendKind::File, false) => {
            (&["kubeconfig", "context"][..], "the kube backend", "--backend file", "leave out --backend file")
        }
        (BackendKind::File, true) => {
            (&["kubeconfig", "context"][..], "the kube backend", "MPSYNC_BACKEND=file", "unset MPSYNC_BACKEND")
        }
    };
    match others.iter().find(|id| given(id)) {
        Some(id) => Err(Error::Usage(format!(
            "--{} is an option of {theirs}, and this run uses {ours}: {fix}, or leave the option out",
            id.replace('_', "-")
        ))),
        None => Ok(()),
    }
}

fn usage_error(err: clap::Error) -> Error {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // Help that cannot be written is no success (found by review: `--help >/dev/full` exited 0).
            if let Err(write) = err.print() {
                if write.kind() == std::io::ErrorKind::BrokenPipe {
                    std::process::exit(141);
                }
                // Not `eprintln!`, which panics on a stderr that cannot be written (`mpsync 2>/dev/full`:
                // clap writes the usage for a missing subcommand to stderr).
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "mpsync: cannot write the help: {write}");
                std::process::exit(125);
            }
            let code = if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand { 125 } else { 0 };
            std::process::exit(code);
        }
        _ => {
            // clap's first paragraph, on one line: it lists what is missing (or the possible values)
            // on the lines under its first, which alone would end in a bare "not provided:".
            let rendered = err.render().to_string();
            let mut paragraph = rendered.trim_start().lines().map(str::trim).take_while(|line| !line.is_empty());
            let head = paragraph.next().unwrap_or("invalid arguments").trim_start_matches("error: ");
            let listed: Vec<&str> = paragraph.collect();
            let first = match (listed.is_empty(), head.ends_with(':')) {
                (true, _) => head.to_string(),
                (false, true) => format!("{head} {}", listed.join(", ")),
                (false, false) => format!("{head} {}", listed.join(" ")),
            };
            let second = match err.get(clap::error::ContextKind::Usage) {
                Some(usage) => usage.to_string().trim().replacen("Usage:", "usage:", 1),
                None => "(see 'mpsync --help')".to_string(),
            };
            Error::Usage(format!("{first}\n{second}"))
        }
    }
}

fn run_config(run: RunArgs, mode: Mode, verb: &str) -> Result<RunConfig> {
    let usage = format!("usage: mpsync {verb} NAME [OPTIONS] -- COMMAND [ARGS...]");
    validate::name(&run.name)?;
    let backend = backend(run.backend)?;
    let Some((program, args)) = run.command.split_first() else {
        return Err(Error::Usage(format!("no command given after `--`\n{usage}")));
    };
    if program.is_empty() {
        return Err(Error::Usage(format!("the command after `--` is empty\n{usage}")));
    }

    let timing = Timing {
        lease_duration: run.lease_duration,
        renew_deadline: run.renew_deadline,
        retry_period: run.retry_period,
    };
    let grace = validate_timing(timing, run.grace)?;

    validate::slot_names(&run.name, run.slots)?;
    let identity = identity(run.identity)?;

    Ok(RunConfig {
        name: run.name,
        backend,
        identity,
        timing,
        grace,
        kill_signal: run.kill_signal,
        subreaper: run.subreaper,
        slots: run.slots,
        health_addr: run.health_addr,
        mode,
        program: program.clone(),
        args: args.to_vec(),
    })
}

/// The shortest `--ttl` of the side-car.
const MIN_TTL: Duration = Duration::from_secs(3);

fn sidecar_config(sidecar: SidecarArgs) -> Result<SidecarConfig> {
    let ttl = sidecar.ttl;
    if ttl.subsec_nanos() != 0 || ttl < Duration::from_secs(1) {
        return Err(Error::Usage(format!(
            "--ttl must be a whole number of seconds, at least 1s (got {}): Leases store it in seconds",
            humantime::format_duration(ttl)
        )));
    }
    // The renew deadline is half the TTL, and renewals count once a second, as client-go sees them (found by
    // review, rv246: with `--ttl 1s` every hold lapsed between heartbeats).
    if ttl < MIN_TTL {
        return Err(Error::Usage(format!(
            "--ttl must be at least {} (got {}): renewals count once a second, as client-go sees them, and the \
             renew deadline is half the TTL",
            humantime::format_duration(MIN_TTL),
            humantime::format_duration(ttl)
        )));
    }
    // As --lease-duration's (found by review, helper-120: the message above was given for this too).
    if ttl.as_secs() > i32::MAX as u64 {
        return Err(Error::Usage(format!("--ttl {} is too long", humantime::format_duration(ttl))));
    }
    let prefix = sidecar.lease_prefix;
    if !prefix.is_empty() && !is_dns1123_subdomain(&format!("{prefix}x")) {
        return Err(Error::Usage(format!(
            "invalid --lease-prefix {prefix:?}: PREFIX+NAME must be a Lease name (lowercase letters, digits, '-' \
             and '.', starting with a letter or digit), e.g. --lease-prefix myapp-"
        )));
    }
    let identity = match sidecar.identity {
        Some(identity) => validate::identity(identity)?,
        None => validate::identity_from(pod_identity(), "the identity from POD_NAME (or the host name)")?,
    };
    Ok(SidecarConfig {
        listen: sidecar.listen,
        backend: backend(sidecar.backend)?,
        identity,
        ttl,
        lease_prefix: prefix,
        drain: sidecar.drain,
        health_addr: sidecar.health_addr,
    })
}

/// The side-car's default identity: the pod's (`POD_NAME`, else in a pod the hostname, which is the
/// pod's name there), the same after a restart of the side-car, so that it adopts the locks its pod's
/// clients hold. Unlike `lock`'s default, there is no random part: the side-car is the pod's one holder.
/// Outside a pod (no `KUBERNETES_SERVICE_HOST`) and without `POD_NAME`, the identity is unique to this
/// process, as `lock`'s: two side-cars on one machine share its hostname, and under one identity each
/// would adopt the other's locks and both answer 200 (found by review). Such a side-car keeps no lock
/// across a restart.
fn pod_identity() -> String {
    let set = |name: &str| std::env::var(name).ok().filter(|value| !value.trim().is_empty());
    if let Some(name) = set("POD_NAME") {
        return name;
    }
    if set("KUBERNETES_SERVICE_HOST").is_some()
        && let Some(host) = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).filter(|h| !h.is_empty())
    {
        return host;
    }
    let identity = validate::default_identity();
    tracing::info!(
        identity = %identity,
        "not in a pod and POD_NAME is not set: this side-car's identity is its own, and its locks are not kept \
         across a restart"
    );
    identity
}

/// `--identity` if given (not blank), else a default unique to this process.
fn identity(given: Option<String>) -> Result<String> {
    match given {
        Some(identity) => validate::identity(identity),
        None => {
            validate::identity_from(validate::default_identity(), "the identity made from POD_NAME (or the host name)")
        }
    }
}

fn query_config(query: QueryArgs) -> Result<QueryConfig> {
    validate::name(&query.name)?;
    validate::slot_names(&query.name, query.slots)?;
    Ok(QueryConfig { name: query.name, backend: backend(query.backend)?, output: query.output, slots: query.slots })
}

fn status_config(status: StatusArgs) -> Result<Config> {
    let StatusArgs { name, backend: backend_args, output, slots, selector } = status;
    if let Some(name) = name {
        if selector.is_some() {
            return Err(Error::Usage(format!(
                "--selector lists leases: give it without NAME (not with {name:?})\nusage: mpsync status -l SELECTOR"
            )));
        }
        return Ok(Config::Status(query_config(QueryArgs { name, backend: backend_args, output, slots })?));
    }
    if slots.is_some() {
        return Err(Error::Usage("--slots needs the semaphore's NAME\nusage: mpsync status NAME --slots N".into()));
    }
    let backend = backend(backend_args)?;
    // An empty selector selects everything, as with kubectl.
    let label_selector = selector.filter(|text| !text.trim().is_empty());
    if let (Backend::File { .. }, Some(text)) = (&backend, &label_selector) {
        crate::store::selector::parse(text)?;
    }
    Ok(Config::List(ListConfig { backend, output, label_selector }))
}

fn backend(args: BackendArgs) -> Result<Backend> {
    // An empty --namespace (MPSYNC_NAMESPACE=) is unset, as kubectl's `-n ""`.
    let namespace = args.namespace.filter(|ns| !ns.is_empty());
    if let Some(namespace) = &namespace {
        validate::namespace(namespace)?;
    }
    Ok(match args.backend {
        // Otherwise the context's namespace, or in a pod POD_NAMESPACE, as client-go (`backend::connect`).
        BackendKind::Kube => Backend::Kube {
            kubeconfig: args.kubeconfig.filter(|path| !path.as_os_str().is_empty()),
            context: args.context,
            namespace,
        },
        BackendKind::File => {
            let namespace = match namespace {
                Some(namespace) => Some(namespace),
                None => match std::env::var("POD_NAMESPACE").ok().filter(|ns| !ns.is_empty()) {
                    // Named as its source, as the kube backend names it (`backend::connect`).
                    Some(namespace) => {
                        validate::namespace(&namespace)
                            .map_err(|err| Error::Config(format!("the namespace from POD_NAMESPACE: {err}")))?;
                        Some(namespace)
                    }
                    None => None,
                },
            };
            Backend::File {
                lock_dir: args.lock_dir.unwrap_or_else(default_lock_dir),
                namespace: namespace.unwrap_or_else(|| "default".into()),
            }
        }
    })
}

/// The least margin (`lease_duration − renew_deadline − grace`) the CLI accepts.
pub const MIN_MARGIN: Duration = Duration::from_millis(100);

/// Check the timing invariants and work out the grace period. With clocks that run at the same rate,
/// they make the old child dead before any other process can see the lease as expired:
/// `renew_deadline + grace + MIN_MARGIN <= lease_duration`, and `retry_period * 1.2 < renew_deadline` (room for at
/// least one retry, as client-go requires).
pub fn validate_timing(timing: Timing, grace: Option<Duration>) -> Result<Duration> {
    timing.validate()?;
    let Timing { lease_duration, renew_deadline, .. } = timing;
    let show = |d: Duration| humantime::format_duration(d).to_string();
    let given = grace.is_some();
    let grace = match grace {
        Some(grace) => grace,
        None => lease_duration.saturating_sub(renew_deadline).saturating_sub(Duration::from_secs(1)),
    };
    // A grace nobody gave is not named as the culprit (found by review, helper-136: "--grace (0s)").
    if !given && renew_deadline.checked_add(MIN_MARGIN).is_none_or(|total| total > lease_duration) {
        return Err(Error::Usage(format!(
            "--renew-deadline ({}) must be at least {} less than --lease-duration ({}), \
             so a lost child is dead before anyone else can take the lease",
            show(renew_deadline),
            show(MIN_MARGIN),
            show(lease_duration)
        )));
    }
    // A margin, not just an order: the guard kills at half of it before the lease expires, and a kill
    // takes time (found by review, helper-132: 1 ns was accepted).
    if renew_deadline
        .checked_add(grace)
        .and_then(|total| total.checked_add(MIN_MARGIN))
        .is_none_or(|t| t > lease_duration)
    {
        return Err(Error::Usage(format!(
            "--renew-deadline ({}) + --grace ({}) must be at least {} less than --lease-duration ({}), \
             so a lost child is dead before anyone else can take the lease",
            show(renew_deadline),
            show(grace),
            show(MIN_MARGIN),
            show(lease_duration)
        )));
    }
    Ok(grace)
}

fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(text).map_err(|err| format!("{err} (examples: 500ms, 15s, 2m)"))
}

fn parse_signal(text: &str) -> std::result::Result<Signal, String> {
    // Real-time signals end a process too, but the child's supervision carries only the standard ones
    // (found by review, helper-143: 34 was refused as "no signal number 34").
    let real_time =
        |what: &str| format!("real-time signal {what} is not supported as a kill signal (examples: TERM, INT, 9)");
    let signal = match text.parse::<i32>() {
        Ok(number @ 32..=64) => return Err(real_time(&number.to_string())),
        Ok(number) => Signal::try_from(number).map_err(|_| format!("no signal number {number}"))?,
        Err(_) => {
            let upper = text.to_ascii_uppercase();
            if upper.contains("RTMIN") || upper.contains("RTMAX") {
                return Err(real_time(text));
            }
            let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
            name.parse::<Signal>().map_err(|_| format!("unknown signal {text:?} (examples: TERM, SIGINT, 9)"))?
        }
    };
    // A signal whose default action neither ends nor dumps a process would end nothing: the child would
    // run on until SIGKILL after --grace (found by review, helper-113).
    match signal {
        Signal::SIGSTOP
        | Signal::SIGTSTP
        | Signal::SIGTTIN
        | Signal::SIGTTOU
        | Signal::SIGCONT
        | Signal::SIGCHLD
        | Signal::SIGURG
        | Signal::SIGWINCH => Err(format!("{signal} does not end a process (examples: TERM, INT, 9)")),
        _ => Ok(signal),
    }
}

/// `/tmp/mpsync-$EUID`: it depends on the user alone, never on session variables (a cron job has no
/// `XDG_RUNTIME_DIR`, an ssh shell of the same user has one, and logind removes that directory at the
/// last logout), so every process of one user meets every other there, as with tmux's `/tmp/tmux-UID`.
fn default_lock_dir() -> PathBuf {
    PathBuf::from(format!("/tmp/mpsync-{}", nix::unistd::geteuid()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Result<Config> {
        let cli = Cli::try_parse_from(std::iter::once("mpsync").chain(args.iter().copied())).map_err(usage_error)?;
        cli.into_config()
    }

    fn run(args: &[&str]) -> RunConfig {
        match config(args) {
            Ok(Config::Run(run)) => run,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn options_work_before_and_after_the_name() {
        let before = run(&["lock", "--lease-duration", "20s", "job", "--", "true"]);
        let after = run(&["lock", "job", "--lease-duration", "20s", "--", "true"]);
        assert_eq!(before.timing.lease_duration, Duration::from_secs(20));
        assert_eq!(after.timing.lease_duration, Duration::from_secs(20));
        assert_eq!(after.name, "job");
    }

    #[test]
    fn default_grace_is_lease_minus_deadline_minus_one_second() {
        assert_eq!(run(&["lock", "job", "--", "true"]).grace, Duration::from_secs(4));
    }

    #[test]
    fn command_keeps_its_own_flags() {
        let config = run(&["lock", "job", "--", "ls", "-l", "--timeout", "x"]);
        assert_eq!(config.program, "ls");
        assert_eq!(config.args, vec![OsString::from("-l"), "--timeout".into(), "x".into()]);
    }

    /// `--timeout 0` is one attempt, as `flock -w 0` makes it (found by review: it never tried).
    #[test]
    fn a_timeout_of_zero_is_one_attempt() {
        let Mode::Lock { wait, .. } = run(&["lock", "job", "--timeout", "0s", "--", "true"]).mode else { panic!() };
        assert_eq!(wait, Wait::NoWait);
    }

    #[test]
    fn bad_inputs_are_usage_errors() {
        let cases: &[(&[&str], &str)] = &[
            (&["lock", "Bad_Name", "--", "true"], "invalid lease name"),
            (&["lock", "job", "--lease-duration", "soon", "--", "true"], "--lease-duration"),
            (&["lock", "job", "--renew-deadline", "15s", "--", "true"], "must be less than --lease-duration"),
            (&["lock", "job", "--retry-period", "9s", "--", "true"], "--retry-period"),
            (&["lock", "job", "--retry-period", "1ns", "--", "true"], "--retry-period must be at least 10ms"),
            (&["lock", "job", "--identity", "a\u{1b}[2J", "--", "true"], "control, bidi or invisible characters"),
            (&["lock", "job", "--grace", "5s", "--", "true"], "--grace (5s)"),
            (
                &[
                    "lock",
                    "job",
                    "--lease-duration",
                    "3s",
                    "--renew-deadline",
                    "2950ms",
                    "--retry-period",
                    "1s",
                    "--",
                    "true",
                ],
                "--renew-deadline (2s 950ms) must be at least 100ms less than --lease-duration (3s)",
            ),
            // A margin of 1 ns was accepted (found by review, helper-132).
            (
                &[
                    "lock",
                    "job",
                    "--lease-duration",
                    "4s",
                    "--renew-deadline",
                    "2s",
                    "--retry-period",
                    "500ms",
                    "--grace",
                    "1999999999ns",
                    "--",
                    "true",
                ],
                "must be at least 100ms less than --lease-duration (4s)",
            ),
            (&["lock", "job", "--lease-duration", "1500ms", "--", "true"], "whole number of seconds"),
            (&["sidecar", "--ttl", "99999999999s"], "--ttl 3168years 9months 21days 10h 44m 15s is too long"),
            (&["lock", "job", "--"], "no command given"),
            (&["lock", "job"], "no command given"),
            (&["lock", "job", "--kill-signal", "NOPE", "--", "true"], "unknown signal"),
            (&["lock", "job", "--slots", "0", "--", "true"], "--slots"),
            (&["lock", "job", "-n", "Bad", "--", "true"], "invalid namespace"),
            (&["lock", "job", "--conflict-exit-code", "300", "--", "true"], "300"),
            (&["lock", "job", "--retry-period", "500000000y", "--", "true"], "--retry-period"),
            (&["lock", "job", "--grace", "500000000y", "--", "true"], "--grace"),
            (&["lock", "job", "--lease-duration", "500000000y", "--", "true"], "--lease-duration"),
            (&["lock"], "not provided: <NAME>\nusage: mpsync lock <NAME> [-- <COMMAND>...]"),
            (&["elect", "--", "true"], "not provided: <NAME>"),
            (&["completions"], "not provided: <SHELL>"),
            (
                &["lock", "--log-format", "yaml", "job"],
                "'yaml' for '--log-format <LOG_FORMAT>' [possible values: text, json]",
            ),
            (&["lock", "job", "--bogus"], "unexpected argument '--bogus' found\nusage: mpsync lock"),
        ];
        for (args, expected) in cases {
            let err = config(args).expect_err(&format!("{args:?} should fail"));
            assert!(matches!(err, Error::Usage(_)), "{args:?}: {err:?}");
            let message = err.to_string();
            assert!(message.contains(expected), "{args:?}: {message}");
            assert!(message.lines().count() <= 2, "{args:?}: {message}");
        }
    }

    #[test]
    fn status_without_name_lists_and_checks_the_selector_for_the_file_backend() {
        let Ok(Config::List(list)) = config(&["status", "-l", "team=infra,!canary", "-o", "json"]) else { panic!() };
        assert_eq!(list.label_selector.as_deref(), Some("team=infra,!canary"));
        assert_eq!(list.output, OutputFormat::Json);
        // The API server understands set-based selectors; the file backend does not.
        assert!(matches!(config(&["status", "-l", "team in (a,b)"]), Ok(Config::List(_))));
        for (args, expected) in [
            (&["status", "--backend", "file", "-l", "team in (a,b)"][..], "key=value, key!=value, key and !key"),
            (&["status", "job", "-l", "team=infra"], "without NAME"),
            (&["status", "--slots", "3"], "--slots needs"),
        ] {
            let err = config(args).expect_err(&format!("{args:?} should fail"));
            assert!(matches!(err, Error::Usage(_)), "{args:?}: {err:?}");
            assert!(err.to_string().contains(expected), "{args:?}: {err}");
        }
    }

    #[test]
    fn signals_parse_by_name_or_number() {
        assert_eq!(parse_signal("TERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("sigint"), Ok(Signal::SIGINT));
        assert_eq!(parse_signal("9"), Ok(Signal::SIGKILL));
        for ends_nothing in ["STOP", "SIGCHLD", "cont", "19", "WINCH"] {
            assert!(parse_signal(ends_nothing).unwrap_err().contains("does not end a process"), "{ends_nothing}");
        }
        for real_time in ["34", "64", "SIGRTMIN+3", "rtmax"] {
            assert!(parse_signal(real_time).unwrap_err().contains("real-time signal"), "{real_time}");
        }
    }

    #[test]
    fn sidecar_defaults_to_the_original_port_and_ttl() {
        let Ok(Config::Sidecar(sidecar)) = config(&["sidecar", "--identity", "pod-a"]) else { panic!() };
        assert!(sidecar.listen.is_empty(), "the default: both loopback addresses");
        assert_eq!(sidecar.ttl, Duration::from_secs(30));
        assert_eq!(sidecar.identity, "pod-a");
        assert_eq!(sidecar.lease_prefix, "");
        assert_eq!(sidecar.drain, Duration::from_secs(20));
        let Ok(Config::Sidecar(sidecar)) =
            config(&["sidecar", "--listen", "127.0.0.1:8080", "--listen", "[::1]:8080", "--lease-prefix", "app-"])
        else {
            panic!()
        };
        assert_eq!(sidecar.listen.len(), 2);
        assert_eq!(sidecar.listen[1].to_string(), "[::1]:8080");
        assert_eq!(sidecar.lease_prefix, "app-");
        // The pod's identity (POD_NAME, or in a pod the hostname), with no random part: the same after a
        // restart; outside a pod without POD_NAME, one of its own.
        let Ok(Config::Sidecar(sidecar)) = config(&["sidecar"]) else { panic!() };
        assert!(!sidecar.identity.is_empty());
        let set = |name: &str| std::env::var(name).ok().filter(|value| !value.trim().is_empty());
        match (set("POD_NAME"), set("KUBERNETES_SERVICE_HOST")) {
            (Some(name), _) => assert_eq!(sidecar.identity, name),
            (None, Some(_)) => assert_eq!(sidecar.identity, pod_identity()),
            (None, None) => assert_ne!(sidecar.identity, pod_identity()),
        }
        for (args, expected) in [
            (&["sidecar", "--ttl", "1500ms"][..], "--ttl"),
            (&["sidecar", "--listen", "nowhere"], "--listen"),
            (&["sidecar", "--lease-prefix=-bad"], "--lease-prefix"),
            (&["sidecar", "--lease-prefix", "Bad-"], "--lease-prefix"),
        ] {
            let err = config(args).expect_err(&format!("{args:?} should fail"));
            assert!(err.to_string().contains(expected), "{args:?}: {err}");
        }
    }
}

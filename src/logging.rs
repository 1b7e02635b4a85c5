//! Logs go to stderr through `tracing`, one line per event; stdout belongs to the child.

use tracing::Level;

use crate::cli::LogFormat;

/// Default level is warn: quiet in scripts, like flock(1). `-v` info, `-vv` debug, `-vvv` trace;
/// `-q` errors only; `-qq` nothing (fatal errors are still printed by `main`).
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
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}

//! Logs go to stderr through `tracing`, one line per event; stdout belongs to the child.

use tracing::Level;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

use crate::cli::LogFormat;

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
    let libraries = if level == Level::TRACE { LevelFilter::DEBUG } else { LevelFilter::OFF };
    let filter = Targets::new().with_target("mpsync", level).with_default(libraries);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false);
    match format {
        LogFormat::Json => {
            tracing_subscriber::registry()
                .with(layer.json().flatten_event(true).with_current_span(true).with_filter(filter))
                .init();
        }
        LogFormat::Text => tracing_subscriber::registry().with(layer.with_ansi(false).with_filter(filter)).init(),
    }
}

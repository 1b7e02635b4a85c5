//! `mpsync status` and `mpsync observe`: who holds a lease, for scripts and people.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::json;

use crate::backend::{open_store, runtime};
use crate::cli::{OutputFormat, QueryConfig};
use crate::error::{Error, Result};
use crate::exit::Exit;
use crate::lease::Versioned;
use crate::store::StoreError;
use crate::store::WatchUpdate;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Print the lease record once. Exits 0 when the lease could be read (whether or not it exists).
pub fn status(config: QueryConfig) -> Result<Exit> {
    runtime()?.block_on(async {
        let store = open_store(&config.backend, CALL_TIMEOUT).await?;
        let current = store.get(&config.name).await.map_err(fatal)?;
        let report = Report::new(&config.name, store.namespace(), current.as_ref(), Timestamp::now());
        match config.output {
            OutputFormat::Json => println!("{}", report.json()),
            OutputFormat::Text => print!("{}", report.text()),
        }
        Ok(Exit::Success)
    })
}

/// Print one line per change of holder until SIGINT or SIGTERM (then exit 0). The watch reconnects
/// on its own; a lease that does not exist yet is reported, then waited for.
pub fn observe(config: QueryConfig) -> Result<Exit> {
    use tokio::signal::unix::{SignalKind, signal};
    runtime()?.block_on(async {
        let store = open_store(&config.backend, CALL_TIMEOUT).await?;
        // Fail fast on what will never work (forbidden, namespace missing) before settling in.
        if let Err(StoreError::Fatal(err)) = store.get(&config.name).await {
            return Err(err);
        }
        let mut interrupt = signal(SignalKind::interrupt()).map_err(internal)?;
        let mut terminate = signal(SignalKind::terminate()).map_err(internal)?;
        let mut watch = store.watch(&config.name, Duration::from_secs(2));
        let mut last: Option<(String, i32, bool)> = None;
        loop {
            tokio::select! {
                _ = interrupt.recv() => return Ok(Exit::Success),
                _ = terminate.recv() => return Ok(Exit::Success),
                update = watch.updates.recv() => {
                    let current = match update {
                        None => return Ok(Exit::Success),
                        Some(WatchUpdate::Present(current)) => Some(current),
                        Some(WatchUpdate::Absent { .. } | WatchUpdate::Deleted { .. }) => None,
                    };
                    let report = Report::new(&config.name, store.namespace(), current.as_ref(), Timestamp::now());
                    let key = (report.holder.clone(), report.transitions, report.exists);
                    if last.as_ref() == Some(&key) {
                        continue;
                    }
                    last = Some(key);
                    match config.output {
                        OutputFormat::Json => println!("{}", report.change_json()),
                        OutputFormat::Text => println!("{}", report.change_line()),
                    }
                }
            }
        }
    })
}

fn fatal(err: StoreError) -> Error {
    match err {
        StoreError::Fatal(err) => err,
        other => Error::Api(format!("cannot read the lease: {other}")),
    }
}

fn internal(err: std::io::Error) -> Error {
    Error::Internal(format!("cannot handle signals: {err}"))
}

/// A lease record in the words `status` and `observe` print.
struct Report {
    name: String,
    namespace: String,
    exists: bool,
    holder: String,
    held: bool,
    acquire_time: Option<Timestamp>,
    renew_time: Option<Timestamp>,
    duration_seconds: Option<i32>,
    transitions: i32,
    resource_version: Option<String>,
    expires: Option<Timestamp>,
    now: Timestamp,
}

impl Report {
    fn new(name: &str, namespace: &str, current: Option<&Versioned>, now: Timestamp) -> Report {
        let record = current.map(|v| v.record.clone()).unwrap_or_default();
        let holder = record.holder_identity.clone().unwrap_or_default();
        let renew_time = record.renew_time.as_ref().map(|t| t.0);
        let expires = match (renew_time, record.lease_duration_seconds) {
            (Some(renewed), Some(seconds)) if seconds > 0 && !holder.is_empty() => {
                renewed.checked_add(SignedDuration::from_secs(seconds as i64)).ok()
            }
            _ => None,
        };
        // "held" is for display and scripts: a holder is named and, by its own timestamps judged on
        // this machine's clock, has not expired. mpsync itself never decides anything this way.
        let held = !holder.is_empty() && expires.is_none_or(|expires| expires > now);
        Report {
            name: name.to_string(),
            namespace: namespace.to_string(),
            exists: current.is_some(),
            holder,
            held,
            acquire_time: record.acquire_time.as_ref().map(|t| t.0),
            renew_time,
            duration_seconds: record.lease_duration_seconds,
            transitions: record.lease_transitions.unwrap_or(0),
            resource_version: current.map(|v| v.resource_version.clone()),
            expires,
            now,
        }
    }

    fn text(&self) -> String {
        if !self.exists {
            return format!("lease {}/{} does not exist (no one has taken it yet)\n", self.namespace, self.name);
        }
        let holder = if self.holder.is_empty() { "(none: free)".to_string() } else { self.holder.clone() };
        let expires = match self.expires {
            Some(at) if at > self.now => format!("{} (in {})", micro(at), self.ago(at)),
            Some(at) => format!("{} ({} ago: expired unless renewed since)", micro(at), self.ago(at)),
            None => "-".into(),
        };
        let mut out = String::new();
        out.push_str(&format!("lease:        {}/{}\n", self.namespace, self.name));
        out.push_str(&format!("holder:       {holder}\n"));
        out.push_str(&format!("held:         {}\n", if self.held { "yes" } else { "no" }));
        out.push_str(&format!("acquired:     {}\n", self.when(self.acquire_time)));
        out.push_str(&format!("renewed:      {}\n", self.when(self.renew_time)));
        out.push_str(&format!(
            "duration:     {}\n",
            self.duration_seconds.map_or("-".to_string(), |s| format!("{s}s"))
        ));
        out.push_str(&format!("expires:      {expires}\n"));
        out.push_str(&format!("transitions:  {}\n", self.transitions));
        out
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "name": self.name,
            "namespace": self.namespace,
            "exists": self.exists,
            "holderIdentity": self.holder,
            "held": self.held,
            "acquireTime": self.acquire_time.map(micro),
            "renewTime": self.renew_time.map(micro),
            "leaseDurationSeconds": self.duration_seconds,
            "leaseTransitions": self.transitions,
            "expiresAt": self.expires.map(micro),
            "resourceVersion": self.resource_version,
        })
    }

    fn change_line(&self) -> String {
        let holder = match (self.exists, self.holder.is_empty()) {
            (false, _) => "(no lease)".to_string(),
            (true, true) => "(none)".to_string(),
            (true, false) => self.holder.clone(),
        };
        format!("{} holder={holder} transitions={}", micro(self.now), self.transitions)
    }

    fn change_json(&self) -> serde_json::Value {
        json!({
            "time": micro(self.now),
            "name": self.name,
            "namespace": self.namespace,
            "exists": self.exists,
            "holderIdentity": self.holder,
            "held": !self.holder.is_empty(),
            "leaseTransitions": self.transitions,
        })
    }

    fn when(&self, at: Option<Timestamp>) -> String {
        match at {
            Some(at) if at <= self.now => format!("{} ({} ago)", micro(at), self.ago(at)),
            Some(at) => format!("{} (in {})", micro(at), self.ago(at)),
            None => "-".into(),
        }
    }

    fn ago(&self, at: Timestamp) -> String {
        let seconds = self.now.duration_since(at).as_secs().unsigned_abs();
        humantime::format_duration(Duration::from_secs(seconds)).to_string()
    }
}

fn micro(at: Timestamp) -> String {
    k8s_openapi::jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%S%.6fZ", at).unwrap_or_else(|_| at.to_string())
}

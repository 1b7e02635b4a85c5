//! `mpsync status` and `mpsync observe`: who holds a lease (or each slot of a semaphore), for scripts and
//! people.
//!
//! One definition of `held`, for both: a holder is named and its record has not expired by its own
//! timestamps (`renewTime + leaseDurationSeconds`) judged on this machine's clock, at the moment of the
//! report. It is for people and scripts; mpsync itself never decides anything this way.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::json;

use crate::backend::{block_on, open_store};
use crate::cli::{OutputFormat, QueryConfig};
use crate::error::{Error, Result};
use crate::exit::Exit;
use crate::lease::{SLOTS_ANNOTATION, Versioned};
use crate::store::{Store, StoreError, WatchUpdate};

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The leases a query is about: the lease NAME, or each slot of the semaphore NAME.
struct Target {
    /// For a semaphore: its slot count.
    slots: Option<u32>,
    names: Vec<String>,
}

/// A semaphore is recognised by its marker (the Lease NAME annotated with its slot count), or named by
/// `--slots N`; anything else is one lease.
async fn target(store: &Store, config: &QueryConfig) -> Result<(Target, Option<Versioned>)> {
    let current = store.get(&config.name).await.map_err(fatal)?;
    let recorded = current
        .as_ref()
        .and_then(|v| v.metadata.annotations.as_ref()?.get(SLOTS_ANNOTATION)?.parse::<u32>().ok())
        .filter(|n| *n > 1);
    match config.slots.filter(|n| *n > 1).or(recorded) {
        Some(n) => {
            if let (Some(given), Some(recorded)) = (config.slots, recorded)
                && given != recorded
            {
                tracing::warn!(lease = %config.name, "--slots {given}, but the semaphore records {recorded} slots");
            }
            let names = crate::validate::slot_names(&config.name, Some(n))?;
            Ok((Target { slots: Some(n), names }, None))
        }
        None => Ok((Target { slots: None, names: vec![config.name.clone()] }, current)),
    }
}

/// Print the lease record (or every slot) once. Exits 0 when it could be read (whether or not it exists).
pub fn status(config: QueryConfig) -> Result<Exit> {
    block_on(async {
        let store = open_store(&config.backend, CALL_TIMEOUT).await?;
        let (target, single) = target(&store, &config).await?;
        let now = Timestamp::now();
        let Some(slots) = target.slots else {
            let report = Report::new(&config.name, None, store.namespace(), single.as_ref(), now);
            match config.output {
                OutputFormat::Json => println!("{}", report.json()),
                OutputFormat::Text => print!("{}", report.text()),
            }
            return Ok(Exit::Success);
        };
        let mut reports = Vec::new();
        for (slot, name) in target.names.iter().enumerate() {
            let current = store.get(name).await.map_err(fatal)?;
            reports.push(Report::new(name, Some(slot), store.namespace(), current.as_ref(), now));
        }
        let held = reports.iter().filter(|r| r.held).count();
        match config.output {
            OutputFormat::Json => {
                println!("{}", serde_json::Value::Array(reports.iter().map(Report::json).collect()))
            }
            OutputFormat::Text => {
                println!("semaphore:    {}/{} ({held} of {slots} held)", store.namespace(), config.name);
                for report in &reports {
                    println!("{}", report.slot_line());
                }
            }
        }
        Ok(Exit::Success)
    })
}

/// Print one line per change of holder (of every slot, for a semaphore) until SIGINT or SIGTERM (then
/// exit 0). The watches reconnect on their own; a lease that does not exist yet is reported, then waited
/// for.
pub fn observe(config: QueryConfig) -> Result<Exit> {
    use tokio::signal::unix::{SignalKind, signal};
    block_on(async {
        let store = open_store(&config.backend, CALL_TIMEOUT).await?;
        // Fail fast on what will never work (forbidden, namespace missing) before settling in.
        let (target, _) = target(&store, &config).await?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(internal)?;
        let mut terminate = signal(SignalKind::terminate()).map_err(internal)?;
        let mut watches: Vec<_> = target.names.iter().map(|name| store.watch(name, Duration::from_secs(2))).collect();
        let mut last: Vec<Option<(String, i32, bool, bool)>> = vec![None; watches.len()];
        loop {
            let updates = watches
                .iter_mut()
                .enumerate()
                .map(|(index, watch)| Box::pin(async move { (index, watch.updates.recv().await) }));
            tokio::select! {
                _ = interrupt.recv() => return Ok(Exit::Success),
                _ = terminate.recv() => return Ok(Exit::Success),
                ((index, update), _, _) = futures::future::select_all(updates) => {
                    let current = match update {
                        None => return Ok(Exit::Success),
                        Some(WatchUpdate::Present(current)) => Some(current),
                        Some(WatchUpdate::Absent { .. } | WatchUpdate::Deleted { .. }) => None,
                    };
                    let slot = target.slots.map(|_| index);
                    let name = &target.names[index];
                    let report = Report::new(name, slot, store.namespace(), current.as_ref(), Timestamp::now());
                    let key = (report.holder.clone(), report.transitions, report.exists, report.held);
                    if last[index].as_ref() == Some(&key) {
                        continue;
                    }
                    last[index] = Some(key);
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
    slot: Option<usize>,
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
    fn new(name: &str, slot: Option<usize>, namespace: &str, current: Option<&Versioned>, now: Timestamp) -> Report {
        let record = current.map(|v| v.record.clone()).unwrap_or_default();
        let holder = record.holder_identity.clone().unwrap_or_default();
        let renew_time = record.renew_time.as_ref().map(|t| t.0);
        let expires = match (renew_time, record.lease_duration_seconds) {
            (Some(renewed), Some(seconds)) if seconds > 0 && !holder.is_empty() => {
                renewed.checked_add(SignedDuration::from_secs(seconds as i64)).ok()
            }
            _ => None,
        };
        // The one definition of "held" (see the module docs).
        let held = !holder.is_empty() && expires.is_none_or(|expires| expires > now);
        Report {
            name: name.to_string(),
            slot,
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

    /// One line per slot of a semaphore.
    fn slot_line(&self) -> String {
        let slot = self.slot.unwrap_or(0);
        if !self.exists {
            return format!("slot {slot}:  {}  free (never taken)", self.name);
        }
        let state = match (self.held, self.holder.is_empty()) {
            (true, _) => format!("held by {}", self.holder),
            (false, true) => "free".to_string(),
            (false, false) => format!("free (expired: {})", self.holder),
        };
        let renewed = self.renew_time.map_or("-".to_string(), |at| format!("{} ago", self.ago(at)));
        format!("slot {slot}:  {}  {state}  renewed {renewed}  transitions {}", self.name, self.transitions)
    }

    fn json(&self) -> serde_json::Value {
        let mut value = json!({
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
        });
        if let Some(slot) = self.slot {
            value["slot"] = json!(slot);
        }
        value
    }

    fn change_line(&self) -> String {
        let holder = match (self.exists, self.holder.is_empty()) {
            (false, _) => "(no lease)".to_string(),
            (true, true) => "(none)".to_string(),
            (true, false) => self.holder.clone(),
        };
        let slot = self.slot.map_or(String::new(), |slot| format!(" slot={slot}"));
        format!("{}{slot} holder={holder} held={} transitions={}", micro(self.now), self.held, self.transitions)
    }

    fn change_json(&self) -> serde_json::Value {
        let mut value = json!({
            "time": micro(self.now),
            "name": self.name,
            "namespace": self.namespace,
            "exists": self.exists,
            "holderIdentity": self.holder,
            "held": self.held,
            "leaseTransitions": self.transitions,
        });
        if let Some(slot) = self.slot {
            value["slot"] = json!(slot);
        }
        value
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn report(holder: &str, renewed_ago: i64, duration: i32) -> Report {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let record = LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(duration),
            renew_time: Some(MicroTime(Timestamp::from_second(1_800_000_000 - renewed_ago).unwrap())),
            ..LeaseSpec::default()
        };
        Report::new("job", None, "default", Some(&Versioned::new("1", record)), now)
    }

    #[test]
    fn held_means_named_and_unexpired_by_its_own_timestamps_in_status_and_observe_alike() {
        let fresh = report("a", 5, 15);
        assert!(fresh.held);
        assert_eq!(fresh.json()["held"], true);
        assert_eq!(fresh.change_json()["held"], true);
        let expired = report("a", 20, 15);
        assert!(!expired.held);
        assert_eq!(expired.json()["held"], false);
        assert_eq!(expired.change_json()["held"], false, "observe says the same as status");
        assert!(!report("", 0, 1).held);
    }
}

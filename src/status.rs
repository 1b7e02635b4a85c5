//! `mpsync status` and `mpsync observe`: who holds a lease (or each slot of a semaphore), or every lease of
//! the namespace (`status` without NAME), for scripts and people.
//!
//! One definition of `held`, for both: a holder is named and its record has not expired by its own
//! timestamps (`renewTime + leaseDurationSeconds`) judged on this machine's clock, at the moment of the
//! report. It is for people and scripts; mpsync itself never decides anything this way.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::json;

use crate::backend::{block_on, open_store_for_reading};
use crate::cli::{ListConfig, OutputFormat, QueryConfig};
use crate::error::{Error, Result};
use crate::exit::Exit;
use crate::lease::{Versioned, shown, slot_count, slot_parent};
use crate::store::{Store, StoreError, WatchUpdate};
use crate::supervise::signals::Stops;
use nix::sys::signal::Signal;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The leases a query is about: the lease NAME, or each slot of the semaphore NAME.
struct Target {
    /// For a semaphore: its slot count.
    slots: Option<u32>,
    names: Vec<String>,
}

/// A semaphore is recognised by its marker (the Lease NAME annotated with its slot count), or named by
/// `--slots N` when there is none; anything else is one lease. A slot carries the count too: NAME is one
/// when it is `P-i` and `P` records a count above `i` (then it is reported as the lease it is).
async fn target(store: &Store, config: &QueryConfig) -> Result<(Target, Option<Versioned>)> {
    let current = store.get(&config.name).await.map_err(fatal)?;
    let mut recorded = current.as_ref().and_then(slot_count);
    // A parent that fails to answer now fails the query (`observe` retries it); one this process may not
    // read makes NAME no slot (found by review: a 503 on the parent made a slot a semaphore of slots that
    // do not exist).
    if let Some(n) = recorded
        && let Some((_, _, slots)) = crate::engine::semaphore_of(store, &config.name).await.map_err(fatal)?
        && slots == n
    {
        recorded = None;
        if config.slots.is_none() {
            return Ok((Target { slots: None, names: vec![config.name.clone()] }, current));
        }
    }
    // `--slots` names a semaphore only where no record can tell: a record without a count (a plain
    // lease, or a slot of another semaphore) is reported as the lease it is, as `lock --slots` refuses
    // it (found by review, helper-136: a held plain lease was shown as a semaphore "0 of N held").
    if recorded.is_none()
        && current.is_some()
        && let Some(given) = config.slots.filter(|n| *n > 1)
    {
        tracing::warn!(lease = %config.name, "--slots {given} ignored: {} is a lease of its own, not a semaphore's marker", config.name);
        return Ok((Target { slots: None, names: vec![config.name.clone()] }, current));
    }
    supported(&config.name, recorded)?;
    // The count the marker records wins over `--slots` (a different one would leave slots out).
    match recorded.or(config.slots.filter(|n| *n > 1)) {
        Some(n) => {
            if let (Some(given), Some(recorded)) = (config.slots, recorded)
                && given != recorded
            {
                tracing::warn!(lease = %config.name, "--slots {given} ignored: the semaphore records {recorded} slots");
            }
            // A count the marker records is named so, not blamed on a --slots never given (found by review,
            // helper-172).
            let names = crate::validate::slot_names(&config.name, Some(n)).map_err(|err| match recorded {
                Some(n) => Error::Usage(err.to_string().replacen(
                    &format!("for --slots {n}"),
                    &format!("for the {n} slots that semaphore {} records", config.name),
                    1,
                )),
                None => err,
            })?;
            Ok((Target { slots: Some(n), names }, None))
        }
        None => Ok((Target { slots: None, names: vec![config.name.clone()] }, current)),
    }
}

/// A count recorded by a marker that mpsync cannot watch the slots of is said as such, not blamed on a
/// `--slots` never given (found by review, helper-162: "--slots must be between 1 and 1000, not 5000").
fn supported(name: &str, recorded: Option<u32>) -> Result<()> {
    match recorded {
        Some(n) if n > crate::validate::MAX_SLOTS => Err(Error::Api(format!(
            "semaphore {name} records {n} slots (annotation {}), more than mpsync supports ({})",
            crate::lease::SLOTS_ANNOTATION,
            crate::validate::MAX_SLOTS
        ))),
        _ => Ok(()),
    }
}

/// Print the lease record (or every slot) once. Exits 0 when it could be read (whether or not it exists).
pub fn status(config: QueryConfig) -> Result<Exit> {
    until_stopped(signaled, async {
        let store = open_store_for_reading(&config.backend, CALL_TIMEOUT).await?;
        let (target, single) = target(&store, &config).await?;
        let now = Timestamp::now();
        let Some(slots) = target.slots else {
            let report = Report::new(&config.name, None, store.namespace(), single.as_ref(), now);
            match config.output {
                OutputFormat::Json => out(format_args!("{}\n", report.json()))?,
                OutputFormat::Text => out(format_args!("{}", report.text()))?,
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
                out(format_args!("{}\n", serde_json::Value::Array(reports.iter().map(Report::json).collect())))?
            }
            OutputFormat::Text => {
                out(format_args!("semaphore:    {}/{} ({held} of {slots} held)\n", store.namespace(), config.name))?;
                for report in &reports {
                    out(format_args!("{}\n", report.slot_line()))?;
                }
            }
        }
        Ok(Exit::Success)
    })
}

/// Print every lease of the namespace whose labels match the selector, one line each (a JSON array with
/// `-o json`). Exits 0 when they could be listed, whether or not there are any; none is said on stderr, so
/// that stdout is only the table (the header alone) or the array (empty).
pub fn list(config: ListConfig) -> Result<Exit> {
    until_stopped(signaled, async {
        let store = open_store_for_reading(&config.backend, CALL_TIMEOUT).await?;
        let leases = store.list(config.label_selector.as_deref()).await.map_err(|err| match err {
            StoreError::Fatal(err) => err,
            other => Error::Api(format!("cannot list the leases: {other}")),
        })?;
        let now = Timestamp::now();
        let mut reports: Vec<Report> = leases
            .iter()
            .map(|lease| {
                let name = lease.metadata.name.as_deref().unwrap_or_default();
                Report::new(name, None, store.namespace(), Some(lease), now)
            })
            .collect();
        mark_semaphores(&mut reports, &leases);
        match config.output {
            OutputFormat::Json => {
                out(format_args!("{}\n", serde_json::Value::Array(reports.iter().map(Report::json).collect())))?
            }
            OutputFormat::Text if reports.is_empty() => {
                let matching =
                    config.label_selector.map_or(String::new(), |selector| format!(" matching {selector:?}"));
                // Not `eprintln!`, which panics on a stderr that cannot be written (found by review).
                let _ = std::io::Write::write_fmt(
                    &mut std::io::stderr(),
                    format_args!("No leases{matching} in namespace {}.\n", store.namespace()),
                );
            }
            OutputFormat::Text => out(format_args!("{}", table(&reports)))?,
        }
        Ok(Exit::Success)
    })
}

/// Semaphores in the listing: a lease annotated with a slot count N > 1 is a slot if it is named `P-i`
/// (i < N) after a lease P annotated alike, and otherwise the marker P, whose row says how many of its
/// slots are held.
fn mark_semaphores(reports: &mut [Report], leases: &[Versioned]) {
    let counts: std::collections::HashMap<&str, u32> =
        leases.iter().filter_map(|lease| Some((lease.metadata.name.as_deref()?, slot_count(lease)?))).collect();
    let slot_of = |name: &str, n: u32| {
        let (semaphore, index) = slot_parent(name).filter(|(_, index)| *index < n as usize)?;
        (counts.get(semaphore) == Some(&n)).then(|| (semaphore.to_string(), index))
    };
    for report in reports.iter_mut() {
        if let Some(&n) = counts.get(report.name.as_str())
            && let Some((semaphore, index)) = slot_of(&report.name, n)
        {
            report.slot = Some(index);
            report.semaphore = Some(semaphore);
        }
    }
    let held: Vec<(String, bool)> = reports.iter().filter_map(|r| Some((r.semaphore.clone()?, r.held))).collect();
    for report in reports.iter_mut() {
        if let (None, Some(&n)) = (&report.semaphore, counts.get(report.name.as_str())) {
            let taken = held.iter().filter(|(semaphore, held)| *semaphore == report.name && *held).count();
            report.slots = Some((taken, n));
        }
    }
}

/// A table with a header, columns padded as kubectl pads them.
fn table(reports: &[Report]) -> String {
    let header = ["NAME", "HOLDER", "STATE", "RENEWED", "TRANSITIONS"].map(String::from);
    let rows: Vec<[String; 5]> = std::iter::once(header).chain(reports.iter().map(Report::row)).collect();
    let mut widths = [0; 5];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row.iter().zip(widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// Print one line per change of holder (of every slot, for a semaphore) until SIGINT or SIGTERM (then
/// exit 0; SIGHUP exits 129). The watches reconnect on their own; a lease that does not exist yet is
/// reported, then waited for.
pub fn observe(config: QueryConfig) -> Result<Exit> {
    let stopped = |signal| match signal {
        Signal::SIGINT | Signal::SIGTERM => Exit::Success,
        other => signaled(other),
    };
    until_stopped(stopped, async {
        let store = open_store_for_reading(&config.backend, CALL_TIMEOUT).await?;
        // Fail fast on what will never work (forbidden, namespace missing) before settling in.
        let (mut target, _) = target(&store, &config).await?;
        while let Some(semaphore) = observe_target(&store, &config, &target).await? {
            target = semaphore;
        }
        Ok(Exit::Success)
    })
}

/// Print the changes of `target`'s leases until a plain lease turns out to be a semaphore's marker (it was
/// watched before the semaphore's first use), or a semaphore's marker records another count than the one
/// watched: then the semaphore, to watch from then on. `None` when the watches end.
async fn observe_target(store: &Store, config: &QueryConfig, target: &Target) -> Result<Option<Target>> {
    let mut watches: Vec<_> = target.names.iter().map(|name| store.watch(name, Duration::from_secs(2))).collect();
    // A semaphore's marker is watched too: the count it records wins, also over `--slots` given before the
    // semaphore's first use, and over the count of a semaphore deleted and made again (found by review,
    // helper-162: slots beyond the count chosen at the start were never reported).
    let mut marker = target.slots.map(|_| store.watch(&config.name, Duration::from_secs(2)));
    let mut last: Vec<Option<(String, i32, bool, bool)>> = vec![None; watches.len()];
    // The record each lease was last seen with: a held record turns free when its own expiry passes,
    // with no event to say so (its holder died), and that is reported too.
    let mut seen: Vec<Option<Option<Versioned>>> = vec![None; watches.len()];
    // The count a plain lease's record was last seen with (a slot of another semaphore carries one too).
    let mut count_seen = None;
    // Whether each lease's last record came from a read at its expiry (see below), not from its watch.
    let mut read_last = vec![false; watches.len()];
    // When a read at an expiry failed: it is made again then, and the expiry is not reported meanwhile
    // (found by review, helper-161: one 503 to that read, while the watch was stuck, reported a renewed
    // lease free, and nothing read it again while the watch stayed stuck).
    let mut read_again: Option<tokio::time::Instant> = None;
    // Leases whose check of an older event (below) failed: read again with the expiries', and their older
    // events passed over meanwhile.
    let mut check_again = vec![false; watches.len()];
    loop {
        let updates = watches
            .iter_mut()
            .enumerate()
            .map(|(index, watch)| Box::pin(async move { (index, watch.updates.recv().await) }));
        let now = Timestamp::now();
        let next_expiry = seen
            .iter()
            .flatten()
            .flatten()
            .filter(|current| crate::lease::held_at(&current.record, now))
            .filter_map(|current| crate::lease::expiry(&current.record))
            .min();
        let expired = async {
            let at_expiry = next_expiry.map(|at| {
                let wait: Duration = at.duration_since(now).try_into().unwrap_or(Duration::ZERO);
                tokio::time::Instant::now() + wait + Duration::from_millis(1)
            });
            match at_expiry.into_iter().chain(read_again).min() {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let has_marker = marker.is_some();
        let marker_update = async { marker.as_mut().expect("guarded").updates.recv().await };
        let (index, update) = tokio::select! {
            ((index, update), _, _) = futures::future::select_all(updates) => (index, update),
            update = marker_update, if has_marker => {
                match update {
                    // As for a slot's watch (below): its reads were refused.
                    None => {
                        if let Err(err @ StoreError::Fatal(_)) = store.get(&config.name).await {
                            return Err(fatal(err));
                        }
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        marker = Some(store.watch(&config.name, Duration::from_secs(2)));
                    }
                    Some(WatchUpdate::Present(current)) if slot_count(&current).is_some_and(|n| Some(n) != target.slots) => {
                        supported(&config.name, slot_count(&current))?;
                        if let Some(semaphore) = semaphore_now(store, config).await?
                            && semaphore.slots != target.slots
                        {
                            let n = semaphore.names.len();
                            tracing::info!(lease = %config.name, "the semaphore's marker records {n} slots now: watching them");
                            return Ok(Some(semaphore));
                        }
                    }
                    // NAME made a lease of its own (the semaphore deleted, and NAME taken by a plain `lock`):
                    // watched as that lease from then on, as a new `observe` would (found by review, rv237: the
                    // old semaphore's slots were watched on, and NAME's holder never reported).
                    Some(WatchUpdate::Present(current)) if slot_count(&current).is_none() => {
                        let now = target_now(store, config).await?;
                        if now.slots.is_none() {
                            tracing::info!(lease = %config.name, "a lease of its own now, not a semaphore's marker: watching it");
                            return Ok(Some(now));
                        }
                    }
                    Some(_) => {}
                }
                continue;
            }
            () = expired => {
                let now = Timestamp::now();
                read_again = None;
                for index in 0..seen.len() {
                    let Some(mut current) = seen[index].clone() else { continue };
                    // A record that expired by its timestamps, as the watch showed it last: the watch may
                    // be stuck (open and silent while the holder renews), so the lease is read before it
                    // is reported free (found by review, helper-133: a renewed lease reported free).
                    // And a lease whose check of an older event failed.
                    if check_again[index] || current.as_ref().is_some_and(|c| {
                        !crate::lease::held_at(&c.record, now)
                            && last[index].as_ref().is_some_and(|(_, _, _, held)| *held)
                    }) {
                        match store.get(&target.names[index]).await {
                            Ok(read) => {
                                // A read older than the record known: versions went back (an etcd restored,
                                // a lock directory put back), and the read is the record now (found by review,
                                // rv231: the stale record was reported, then every event skipped, below).
                                if read.as_ref().zip(current.as_ref()).is_some_and(|(read, known)| {
                                    crate::lease::is_older(&read.resource_version, &known.resource_version)
                                }) {
                                    crate::lease::warn_versions_went_back(&target.names[index]);
                                }
                                current = read;
                                seen[index] = Some(current.clone());
                                read_last[index] = true;
                                check_again[index] = false;
                                // What a read shows is checked as any record (below): a plain lease made a
                                // semaphore's marker is followed from here too.
                                if let Some(semaphore) =
                                    became_a_semaphore(store, config, target, &mut count_seen, current.as_ref()).await?
                                {
                                    return Ok(Some(semaphore));
                                }
                            }
                            Err(err @ StoreError::Fatal(_)) => return Err(fatal(err)),
                            Err(err) => {
                                tracing::debug!(lease = %target.names[index], error = %err, "reading the lease at its expiry failed; reading again");
                                read_again = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                                continue;
                            }
                        }
                    }
                    let slot = target.slots.map(|_| index);
                    let report = Report::new(&target.names[index], slot, store.namespace(), current.as_ref(), Timestamp::now());
                    print_change(config, &mut last[index], &report)?;
                }
                continue;
            }
        };
        let mut from_read = false;
        let current = match update {
            // A watch ends on its own only when its reads are refused in a way retrying will not fix
            // (credentials refused, get forbidden): read, to report that refusal (exit 125), not end as
            // if all were well.
            // A refusal that has passed by the time of this read (a token refreshed, one replica of
            // several that refused it) ends nothing: watch again (found by review, helper-148: observe
            // ended with 0, silently, after one 401 to the watch's fallback get).
            // Any other failure of that read (a 503 right then) ends nothing either (found by review,
            // helper-161: observe ended with 125 on one 503 after a passing 401).
            None => {
                if let Err(err @ StoreError::Fatal(_)) = store.get(&target.names[index]).await {
                    return Err(fatal(err));
                }
                // Paced: a refusal that comes and goes must not spin list/get/get without pause.
                tokio::time::sleep(Duration::from_secs(2)).await;
                watches[index] = store.watch(&target.names[index], Duration::from_secs(2));
                continue;
            }
            // An event older than a read of the lease's since (see the expiry above): a read tells whether it
            // changes anything (see `read_behind_an_older_event`).
            // A deletion too (found by review, rv232: a stale deletion was reported after the newer record read).
            // After a read that found no lease, any record (found by review, rv234: a lagging watch's stale
            // holder was reported after the read had found the lease deleted). A deletion or an absence then
            // changes nothing, and is passed over with the check kept (found by review, rv236: a stale
            // deletion ended the check, and the stale holder after it was reported).
            Some(WatchUpdate::Absent { .. } | WatchUpdate::Deleted { .. })
                if read_last[index] && matches!(seen[index], Some(None)) =>
            {
                continue;
            }
            Some(event)
                if read_last[index]
                    && match seen[index].as_ref() {
                        Some(Some(known)) => crate::lease::is_older(event.resource_version(), &known.resource_version),
                        Some(None) => matches!(event, WatchUpdate::Present(_)),
                        None => false,
                    } =>
            {
                // A check already due (its read failed) is made with the expiries', not for each event.
                if check_again[index] {
                    continue;
                }
                let known = seen[index].clone().flatten().map(|known| known.resource_version).unwrap_or_default();
                let name = &target.names[index];
                // One attempt: a read that fails is made again with the expiries' (above), and the other
                // leases' changes are reported meanwhile (found by review, rv237: a read retried here until
                // it answered held up every other slot's reports for as long).
                match store.get(name).await {
                    // The record read is the record now, and it goes the way of any record (below), the
                    // check for a marker too (found by review, rv236: a plain lease made a semaphore's marker,
                    // first seen here, was never watched as one); it stays a read's.
                    Ok(read) => match crate::lock::behind_an_older_event(name, read, &known) {
                        Some(read) => {
                            from_read = true;
                            read
                        }
                        None => continue,
                    },
                    Err(err @ StoreError::Fatal(_)) => return Err(fatal(err)),
                    Err(err) => {
                        tracing::debug!(lease = %name, error = %err, "reading the lease failed; reading again");
                        check_again[index] = true;
                        read_again.get_or_insert(tokio::time::Instant::now() + Duration::from_secs(2));
                        continue;
                    }
                }
            }
            Some(WatchUpdate::Present(current)) => Some(current),
            Some(WatchUpdate::Absent { .. } | WatchUpdate::Deleted { .. }) => None,
        };
        if let Some(semaphore) = became_a_semaphore(store, config, target, &mut count_seen, current.as_ref()).await? {
            return Ok(Some(semaphore));
        }
        read_last[index] = from_read;
        check_again[index] = false;
        let slot = target.slots.map(|_| index);
        let name = &target.names[index];
        let report = Report::new(name, slot, store.namespace(), current.as_ref(), Timestamp::now());
        seen[index] = Some(current);
        print_change(config, &mut last[index], &report)?;
    }
}

/// The semaphore to watch from now on, if `current` (the record of the plain lease `target` watches) makes
/// it a semaphore's marker: a count it carries that was not seen before (`count_seen`).
async fn became_a_semaphore(
    store: &Store,
    config: &QueryConfig,
    target: &Target,
    count_seen: &mut Option<u32>,
    current: Option<&Versioned>,
) -> Result<Option<Target>> {
    let count = current.and_then(slot_count);
    if target.slots.is_none() && count.is_some() && std::mem::replace(count_seen, count) != count {
        supported(&config.name, count)?;
        if let Some(semaphore) = semaphore_now(store, config).await? {
            let n = semaphore.names.len();
            tracing::info!(lease = %config.name, "now the marker of a semaphore of {n} slots: watching them");
            return Ok(Some(semaphore));
        }
    }
    Ok(None)
}

/// Print `report` if it differs from the last one printed for its lease.
fn print_change(config: &QueryConfig, last: &mut Option<(String, i32, bool, bool)>, report: &Report) -> Result<()> {
    let key = (report.holder.clone(), report.transitions, report.exists, report.held);
    if last.as_ref() == Some(&key) {
        return Ok(());
    }
    *last = Some(key);
    match config.output {
        OutputFormat::Json => out(format_args!("{}\n", report.change_json())),
        OutputFormat::Text => out(format_args!("{}\n", report.change_line())),
    }
}

/// The semaphore NAME is now, if it is one. Failures are retried with backoff until an answer (found by
/// review: one 503 here ended `observe`; the marker does not change again, so the next change of its
/// record cannot be waited for).
async fn semaphore_now(store: &Store, config: &QueryConfig) -> Result<Option<Target>> {
    let now = target_now(store, config).await?;
    Ok(now.slots.is_some().then_some(now))
}

/// What NAME is now (a semaphore or a lease of its own), with failures retried as by `semaphore_now`.
async fn target_now(store: &Store, config: &QueryConfig) -> Result<Target> {
    let mut log = crate::retry::FailureLog::new(&config.name, "finding whether it is a semaphore now");
    let mut failures: u32 = 0;
    loop {
        match target(store, config).await {
            Ok((target, _)) => {
                log.recovered();
                return Ok(target);
            }
            // A semaphore whose slots cannot be watched (their names too long) is said, not retried for
            // ever without a word on stdout (found by review, helper-172).
            Err(err @ Error::Usage(_)) => return Err(err),
            Err(err) => {
                log.failed(&err.to_string());
                failures = failures.saturating_add(1);
                tokio::time::sleep(crate::retry::backoff(Duration::from_secs(2), failures)).await;
            }
        }
    }
}

/// Write to stdout, flushed (`observe` reports as changes come). A reader that has gone (EPIPE:
/// `mpsync observe NAME | head -3`) ends mpsync quietly with 141, as SIGPIPE ends `cat` and kubectl
/// (mpsync ignores SIGPIPE, which its sockets must never raise); another failure (a full disk) is an
/// error; never a panic, as `println!` made it (found by review).
pub(crate) fn out(text: std::fmt::Arguments) -> Result<()> {
    out_bytes(text.to_string().as_bytes())
}

/// [`out`], for bytes.
pub(crate) fn out_bytes(bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => {
            crate::logging::flush();
            crate::exit::exit_process(Exit::Signaled(Signal::SIGPIPE as i32))
        }
        Err(err) => Err(Error::Internal(format!("cannot write to stdout: {err}"))),
    }
}

fn fatal(err: StoreError) -> Error {
    match err {
        StoreError::Fatal(err) => err,
        other => Error::Api(format!("cannot read the lease: {other}")),
    }
}

/// Stopped by `signal`: 128+N, as its default action would give.
fn signaled(signal: Signal) -> Exit {
    Exit::Signaled(signal as i32)
}

/// Run a query until a stop signal (SIGTERM, SIGINT, SIGHUP unless ignored), at any point: while the
/// client is set up (an exec credential plugin may take long: it is killed with the set-up), or while it
/// reads or waits. The exit is `stopped(signal)`.
fn until_stopped(
    stopped: impl Fn(Signal) -> Exit + Send + Copy + 'static,
    query: impl Future<Output = Result<Exit>>,
) -> Result<Exit> {
    block_on(async {
        let mut stops = Stops::new()?;
        stop_even_when_blocked(stopped);
        tokio::select! {
            exit = query => exit,
            signal = stops.next() => {
                tracing::debug!(signal = %signal, "stopped");
                Ok(stopped(signal))
            }
        }
    })
}

/// A stop signal that the query cannot serve within a second ends the process from a thread of its own: the
/// query's thread may be blocked writing to a stdout nobody reads (a full pipe; found by review, rv258: SIGTERM
/// and SIGINT were never served, only SIGKILL ended `status` and `observe`). Nothing is held to give back.
fn stop_even_when_blocked(stopped: impl Fn(Signal) -> Exit + Send + 'static) {
    // The very signals `Stops` serves (found by review, rv260: ALRM, PWR, a real-time STOPSIGNAL were caught,
    // never acted on).
    let stops = crate::supervise::signals::stop_numbers();
    let Ok(mut signals) = signal_hook::iterator::Signals::new(stops.iter().map(|(_, number)| *number)) else {
        return;
    };
    let _ = std::thread::Builder::new().name("mpsync-stop".into()).stack_size(64 * 1024).spawn(move || {
        let number = signals.forever().next();
        if let Some((signal, _)) = stops.iter().find(|(_, stop)| Some(*stop) == number) {
            std::thread::sleep(std::time::Duration::from_secs(1));
            crate::exit::exit_process_unflushed(stopped(*signal));
        }
    });
}

/// A lease record in the words `status` and `observe` print.
struct Report {
    name: String,
    slot: Option<usize>,
    /// In the listing: the semaphore this lease is a slot of.
    semaphore: Option<String>,
    /// In the listing, for a semaphore's marker: how many of its slots are held, of how many.
    slots: Option<(usize, u32)>,
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
        let expires = crate::lease::expiry(&record);
        // The one definition of "held" (see the module docs).
        let held = crate::lease::held_at(&record, now);
        Report {
            name: name.to_string(),
            slot,
            semaphore: None,
            slots: None,
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
        let holder = if self.holder.is_empty() { "(none: free)".to_string() } else { shown(&self.holder) };
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
            (true, _) => format!("held by {}", shown(&self.holder)),
            (false, true) => "free".to_string(),
            (false, false) => format!("free (expired: {})", shown(&self.holder)),
        };
        let renewed = self.renew_time.map_or("-".to_string(), |at| format!("{} ago", self.ago(at)));
        format!("slot {slot}:  {}  {state}  renewed {renewed}  transitions {}", self.name, self.transitions)
    }

    /// One row of the listing: name, holder (`-` for none), held or free, age of the last renewal,
    /// transitions.
    fn row(&self) -> [String; 5] {
        let holder = if self.holder.is_empty() { "-".to_string() } else { shown(&self.holder) };
        let state = match self.slots {
            Some((held, n)) => format!("semaphore: {held} of {n} held"),
            None if self.held => "held".to_string(),
            None => "free".to_string(),
        };
        let renewed = self.renew_time.map_or("-".to_string(), |at| age(self.now.duration_since(at)));
        [self.name.clone(), holder, state, renewed, self.transitions.to_string()]
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
        if let Some(semaphore) = &self.semaphore {
            value["semaphore"] = json!(semaphore);
        }
        if let Some((held, n)) = self.slots {
            value["slots"] = json!(n);
            value["heldSlots"] = json!(held);
        }
        value
    }

    fn change_line(&self) -> String {
        let holder = match (self.exists, self.holder.is_empty()) {
            (false, _) => "(no lease)".to_string(),
            (true, true) => "(none)".to_string(),
            (true, false) => shown(&self.holder),
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

/// An age as kubectl prints one (`45s`, `3m20s`, `2h`, `5d`): short, and precise where it matters. A time
/// in the future (a clock ahead of ours) is `<future>`.
fn age(since: SignedDuration) -> String {
    if since.is_negative() {
        return "<future>".to_string();
    }
    let seconds = since.as_secs();
    let (minutes, hours, days) = (seconds / 60, seconds / 3600, seconds / 86400);
    // kubectl's HumanDuration: the second unit only where it adds something worth reading.
    let pair = |big: i64, big_unit: &str, small: i64, small_unit: &str| match small {
        0 => format!("{big}{big_unit}"),
        _ => format!("{big}{big_unit}{small}{small_unit}"),
    };
    if seconds < 120 {
        format!("{seconds}s")
    } else if seconds < 600 {
        pair(minutes, "m", seconds % 60, "s")
    } else if hours < 3 {
        format!("{minutes}m")
    } else if hours < 8 {
        pair(hours, "h", minutes % 60, "m")
    } else if hours < 48 {
        format!("{hours}h")
    } else if days < 8 {
        pair(days, "d", hours % 24, "h")
    } else {
        format!("{days}d")
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

    #[test]
    fn the_listing_is_a_table_whose_held_column_is_the_one_definition() {
        let reports = [report("a-long-holder", 5, 15), report("b", 20, 15), report("", 0, 1)];
        let text = table(&reports);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "NAME   HOLDER          STATE   RENEWED   TRANSITIONS");
        assert_eq!(lines[1], "job    a-long-holder   held    5s        0");
        assert_eq!(lines[2], "job    b               free    20s       0");
        assert_eq!(lines[3], "job    -               free    0s        0");
        for (report, line) in reports.iter().zip(&lines[1..]) {
            assert_eq!(line.contains(" held "), report.json()["held"] == true, "{line}");
        }
    }

    #[test]
    fn ages_are_short_like_kubectl() {
        let cases = [
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (200, "3m20s"),
            (3599, "59m"),
            (7200, "120m"),
            (10_800, "3h"),
            (12_000, "3h20m"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(age(SignedDuration::from_secs(seconds)), expected, "{seconds}s");
        }
        assert_eq!(age(SignedDuration::from_secs(90_000)), "25h");
        assert_eq!(age(SignedDuration::from_secs(200_000)), "2d7h");
        assert_eq!(age(SignedDuration::from_secs(1_000_000)), "11d");
        assert_eq!(age(SignedDuration::from_secs(-5)), "<future>");
    }
}

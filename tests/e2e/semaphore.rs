//! `--slots N` as a semaphore that processes agree on: the count is recorded (on a marker Lease NAME and
//! on every slot), processes told another count are refused before they acquire anything, `--slots 1` is
//! the plain lease, and slot names cannot be confused with plain leases.

use std::fs;

use crate::support::*;

both_backends!(
    a_process_told_another_slot_count_is_refused_naming_both,
    slots_one_is_the_plain_lease,
    slot_leases_and_plain_leases_never_mix,
    the_slot_count_can_change_once_every_user_has_stopped,
    a_deleted_marker_is_not_taken_over_by_another_slot_count,
    status_and_observe_show_every_slot_of_a_partly_held_semaphore,
    status_and_observe_agree_on_held_for_an_expired_holder,
    status_of_a_slot_by_its_own_name_reports_its_holder,
    a_semaphore_is_never_marked_on_another_semaphores_slot,
    observe_started_before_the_semaphore_exists_reports_its_slots,
    status_given_another_slot_count_than_the_marker_shows_every_recorded_slot,
    a_semaphore_below_a_slot_is_not_refused_as_another_semaphores_slot,
    a_slot_three_levels_down_is_refused_as_a_marker,
    a_semaphore_eight_levels_down_under_a_slot_is_not_refused,
);

fn held_until(gate: &std::path::Path) -> String {
    until_exists(gate)
}

fn a_process_told_another_slot_count_is_refused_naming_both(env: &TestEnv) {
    let name = env.lease_name("pool");
    let gate = env.path("gate");
    let log = env.path("log");
    let holder =
        env.spawn(fast(&["lock", &name, "--slots", "2"], &["sh", "-c", &stamp_script(&log, &held_until(&gate))]));
    wait_for_file(&log, "start");
    let ran = env.path("ran");
    let other = env.run(fast(&["lock", &name, "--slots", "3"], &["touch", ran.to_str().unwrap()]));
    other.assert_code(125);
    assert!(!ran.exists(), "refused before anything runs");
    assert!(other.stderr.contains("2 slots") && other.stderr.contains("not 3"), "{}", other.stderr);
    assert!(other.stderr.lines().count() <= 2, "{}", other.stderr);
    // The same count works beside it: the second slot.
    env.run(fast(&["lock", &name, "--slots", "2", "--no-wait"], &["true"])).assert_code(0);
    fs::write(&gate, "").unwrap();
    holder.finish().assert_code(0);
}

fn slots_one_is_the_plain_lease(env: &TestEnv) {
    let name = env.lease_name("single");
    let gate = env.path("gate");
    let log = env.path("log");
    let holder = env.spawn(fast(&["lock", &name], &["sh", "-c", &stamp_script(&log, &held_until(&gate))]));
    wait_for_file(&log, "start");
    env.run(fast(&["lock", &name, "--slots", "1", "--no-wait"], &["true"])).assert_code(124);
    fs::write(&gate, "").unwrap();
    holder.finish().assert_code(0);
    let slot = env.path("slot");
    let script = format!("echo $MPSYNC_SLOT $MPSYNC_LEASE > {}", slot.display());
    env.run(fast(&["lock", &name, "--slots", "1"], &["sh", "-c", &script])).assert_code(0);
    assert_eq!(fs::read_to_string(&slot).unwrap().trim(), format!("0 {name}"));
}

fn slot_leases_and_plain_leases_never_mix(env: &TestEnv) {
    let name = env.lease_name("mix");
    let gate = env.path("gate");
    let log = env.path("log");
    // A semaphore in use: its slot 0 and its marker refuse plain locks (its slot 1, never written yet, too:
    // semaphore_faults).
    let holder =
        env.spawn(fast(&["lock", &name, "--slots", "2"], &["sh", "-c", &stamp_script(&log, &held_until(&gate))]));
    wait_for_file(&log, "start");
    for (plain, why) in [
        (format!("{name}-0"), format!("slot 0 of the semaphore {name} (2 slots)")),
        (name.clone(), "belongs to a semaphore of 2 slots".to_string()),
    ] {
        let done = env.run(fast(&["lock", &plain, "--no-wait"], &["true"]));
        done.assert_code(125);
        assert!(done.stderr.contains(&why), "{plain}: {}", done.stderr);
    }
    fs::write(&gate, "").unwrap();
    holder.finish().assert_code(0);

    // A plain lease that is held (and renewed), named like a slot: the semaphore refuses rather than share
    // it.
    let other = env.lease_name("mix2");
    let plain_gate = env.path("plain-gate");
    let plain_log = env.path("plain-log");
    let plain = env.spawn(fast(
        &["lock", &format!("{other}-1")],
        &["sh", "-c", &stamp_script(&plain_log, &held_until(&plain_gate))],
    ));
    wait_for_file(&plain_log, "start");
    let done = env.run(fast(&["lock", &other, "--slots", "2"], &["true"]));
    done.assert_code(125);
    assert!(done.stderr.contains("plain lease of that name is held"), "{}", done.stderr);
    fs::write(&plain_gate, "").unwrap();
    plain.finish().assert_code(0);
}

fn the_slot_count_can_change_once_every_user_has_stopped(env: &TestEnv) {
    let name = env.lease_name("resize");
    env.run(fast(&["lock", &name, "--slots", "2"], &["true"])).assert_code(0);
    env.run(fast(&["lock", &name, "--slots", "3"], &["true"])).assert_code(125);
    // As the README says: with nobody using it, delete the marker and the slots.
    for lease in [name.clone(), format!("{name}-0"), format!("{name}-1")] {
        env.delete(&lease);
    }
    env.run(fast(&["lock", &name, "--slots", "3"], &["true"])).assert_code(0);

    // Found by review (helper-72): the same after a user crashed (SIGKILL) while it held a slot. The file
    // backend puts a deleted record back while its holder may live (for its tokens); it kept the old count
    // on it, and every user of the new count was refused, for good.
    let name = env.lease_name("resize-crashed");
    let started = env.path(&env.lease_name("started"));
    let crashed = env.spawn(fast(
        &["lock", &name, "--slots", "2"],
        &["sh", "-c", &format!("echo up > {}; sleep 1000", started.display())],
    ));
    wait_for_file(&started, "up");
    crashed.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = crashed.finish();
    for lease in [name.clone(), format!("{name}-0"), format!("{name}-1")] {
        env.delete(&lease);
    }
    let done = env.run(fast(&["lock", &name, "--slots", "3"], &["true"]));
    done.assert_code(0);
    // And with every slot taken but the crashed one's: that one is waited out.
    let gate = env.path(&env.lease_name("gate"));
    let holders: Vec<Proc> = (0..2)
        .map(|_| {
            let log = env.path(&env.lease_name("log"));
            let holder = env
                .spawn(fast(&["lock", &name, "--slots", "3"], &["sh", "-c", &stamp_script(&log, &held_until(&gate))]));
            wait_for_file(&log, "start");
            holder
        })
        .collect();
    env.run(fast(&["lock", &name, "--slots", "3"], &["true"])).assert_code(0);
    fs::write(&gate, "").unwrap();
    for holder in holders {
        holder.finish().assert_code(0);
    }
}

/// Only the marker deleted (the README's procedure done halfway): its slots still record the count, so a
/// process with another count is refused before it writes a marker that would lock the others out.
fn a_deleted_marker_is_not_taken_over_by_another_slot_count(env: &TestEnv) {
    let name = env.lease_name("marker");
    env.run(fast(&["lock", &name, "--slots", "3"], &["true"])).assert_code(0);
    env.delete(&name);
    let refused = env.run(fast(&["lock", &name, "--slots", "2"], &["true"]));
    refused.assert_code(125);
    assert!(refused.stderr.contains("3 slots"), "{}", refused.stderr);
    env.run(fast(&["lock", &name, "--slots", "3"], &["true"])).assert_code(0);
    // The marker and slot 0 deleted, slot 1 left: its count still decides.
    env.put_slot(&format!("{name}-1"), 3, TestEnv::foreign_record("", 1));
    env.delete(&name);
    env.delete(&format!("{name}-0"));
    let refused = env.run(fast(&["lock", &name, "--slots", "2"], &["true"]));
    refused.assert_code(125);
    assert!(refused.stderr.contains("3 slots"), "{}", refused.stderr);
}

fn status_and_observe_show_every_slot_of_a_partly_held_semaphore(env: &TestEnv) {
    let name = env.lease_name("shown");
    let gate = env.path("gate");
    let log = env.path("log");
    let observe = env.spawn(["observe", &name, "--slots", "3", "-o", "json"]);
    let holder =
        env.spawn(fast(&["lock", &name, "--slots", "3"], &["sh", "-c", &stamp_script(&log, &held_until(&gate))]));
    wait_for_file(&log, "start");
    let text = env.run(["status", &name]);
    text.assert_code(0);
    assert!(text.stdout.contains("1 of 3 held"), "{}", text.stdout);
    assert_eq!(text.stdout.lines().filter(|l| l.starts_with("slot ")).count(), 3, "{}", text.stdout);
    let json = env.run(["status", &name, "-o", "json"]);
    json.assert_code(0);
    let slots: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let slots = slots.as_array().expect("an array, one object per slot");
    assert_eq!(slots.len(), 3);
    assert_eq!(slots.iter().filter(|s| s["held"] == true).count(), 1, "{slots:?}");
    assert!(slots.iter().all(|s| s["slot"].is_u64()));
    // observe prints the slot with every change.
    wait_until("observe to see the holder", || {
        observe.stdout().lines().any(|l| l.contains("\"held\":true") && l.contains("\"slot\""))
    });
    fs::write(&gate, "").unwrap();
    holder.finish().assert_code(0);
    observe.signal(nix::sys::signal::Signal::SIGTERM);
    observe.finish().assert_code(0);
}

fn status_and_observe_agree_on_held_for_an_expired_holder(env: &TestEnv) {
    let name = env.lease_name("expired");
    let mut record = TestEnv::foreign_record("gone", 1);
    let long_ago = k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap();
    record.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(long_ago));
    env.put(&name, record);
    let status = env.run(["status", &name, "-o", "json"]);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["held"], false);
    let observe = env.spawn(["observe", &name, "-o", "json"]);
    wait_until("observe's first line", || observe.stdout().lines().next().is_some());
    let line: serde_json::Value = serde_json::from_str(observe.stdout().lines().next().unwrap()).unwrap();
    assert_eq!(line["held"], false, "observe says what status says");
    observe.signal(nix::sys::signal::Signal::SIGTERM);
    observe.finish().assert_code(0);
}

/// `mpsync status pool-0`, where pool-0 is a held slot of the 3-slot semaphore `pool`: the slot carries
/// `mpsync.io/slots: "3"` as a marker does, but it is reported as the held lease it is, not as a
/// semaphore `pool-0` of three slots that do not exist (found by review, helper-79).
fn status_of_a_slot_by_its_own_name_reports_its_holder(env: &TestEnv) {
    let name = env.lease_name("pool");
    let (gate, log) = (env.path("gate"), env.path("log"));
    let holder =
        env.spawn(fast(&["lock", &name, "--slots", "3"], &["sh", "-c", &stamp_script(&log, &held_until(&gate))]));
    wait_for_file(&log, "start");
    let slot = format!("{name}-0");
    let done = env.run(["status", &slot, "-o", "json"]);
    fs::write(&gate, "").unwrap();
    holder.finish().assert_code(0);
    done.assert_code(0);
    let value: serde_json::Value = serde_json::from_str(&done.stdout).unwrap();
    assert!(
        value.is_object() && value["name"] == slot.as_str() && value["held"] == true,
        "status of the held slot {slot} does not say it is held: {}",
        done.stdout
    );
}

/// `mpsync lock pool-0 --slots 3` while pool-0 is a held slot of the 3-slot semaphore `pool`: the slot's
/// annotation is no marker of a semaphore `pool-0`; refused with 125 before anything runs, as a plain
/// `lock pool-0` is (found by review, helper-79).
fn a_semaphore_is_never_marked_on_another_semaphores_slot(env: &TestEnv) {
    let name = env.lease_name("pool");
    let (gate, log) = (env.path("gate"), env.path("log"));
    let holder =
        env.spawn(fast(&["lock", &name, "--slots", "3"], &["sh", "-c", &stamp_script(&log, &held_until(&gate))]));
    wait_for_file(&log, "start");
    let ran = env.path("ran");
    let script = format!("echo $MPSYNC_LEASE > {}", ran.display());
    let done = env.run(fast(&["lock", &format!("{name}-0"), "--slots", "3", "--no-wait"], &["sh", "-c", &script]));
    fs::write(&gate, "").unwrap();
    holder.finish().assert_code(0);
    assert!(
        !ran.exists(),
        "ran as a semaphore whose marker is another semaphore's held slot (lease {}), exit {:?}",
        fs::read_to_string(&ran).unwrap_or_default().trim(),
        done.code
    );
    done.assert_code(125);
}

/// `mpsync observe pool` started before anyone used the semaphore `pool` (a dashboard, a script that waits
/// for a holder): once the marker appears it watches the slots, and reports the held one (found by
/// review, helper-79: it reported only the marker, never held).
fn observe_started_before_the_semaphore_exists_reports_its_slots(env: &TestEnv) {
    let name = env.lease_name("pool");
    let observe = env.spawn(["observe", &name, "-o", "json"]);
    wait_until("observe's first line", || observe.stdout().lines().next().is_some());
    let (gate, log) = (env.path("gate"), env.path("log"));
    let holder =
        env.spawn(fast(&["lock", &name, "--slots", "3"], &["sh", "-c", &stamp_script(&log, &held_until(&gate))]));
    wait_for_file(&log, "start");
    let saw_holder = within_patience(|| observe.stdout().contains("\"held\":true"));
    fs::write(&gate, "").unwrap();
    holder.finish().assert_code(0);
    observe.signal(nix::sys::signal::Signal::SIGTERM);
    let observed = observe.finish();
    assert!(saw_holder, "observe never reported the held slot:\n{}", observed.stdout);
}

/// `status pool --slots 2` against a semaphore whose marker records 3: `--slots` is for when "its marker
/// cannot tell"; the marker's count wins, so no held slot is left out (found by review, helper-79: it
/// showed two slots, which a script reads as free).
fn status_given_another_slot_count_than_the_marker_shows_every_recorded_slot(env: &TestEnv) {
    let name = env.lease_name("pool");
    let gate = env.path("gate");
    let mut holders = Vec::new();
    for i in 0..3 {
        let log = env.path(&format!("log{i}"));
        holders.push(
            env.spawn(fast(&["lock", &name, "--slots", "3"], &["sh", "-c", &stamp_script(&log, &held_until(&gate))])),
        );
        wait_for_file(&log, "start");
    }
    let done = env.run(["status", &name, "--slots", "2", "-o", "json"]);
    fs::write(&gate, "").unwrap();
    for holder in holders {
        holder.finish().assert_code(0);
    }
    done.assert_code(0);
    let slots: serde_json::Value = serde_json::from_str(&done.stdout).unwrap();
    let held = slots.as_array().unwrap().iter().filter(|s| s["held"] == true).count();
    assert_eq!(held, 3, "three slots are held; status says {held}:\n{}\n{}", done.stdout, done.stderr);
}

/// `lock pool --slots 2 --timeout 3s` while the API server keeps failing: like a plain lease, a semaphore
/// still settling its marker gives up at the timeout with 124, and `--no-wait` with its conflict exit code
/// (found by review, helper-79: both exited 125, so a CronJob meant to skip quietly failed).
#[test]
fn a_semaphore_under_a_failing_api_server_is_not_acquired_as_a_plain_lease_is() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else {
        eprintln!("SKIPPED: needs the test server's fault injection");
        return;
    };
    server.fail_next(100_000, 503);
    let plain = env.run(["lock", "job", "--timeout", "3s", "--", "true"]);
    let done = env.run(["lock", "pool", "--slots", "2", "--timeout", "3s", "--", "true"]);
    let skip = env.run(fast(&["lock", "pool", "--slots", "2", "--no-wait", "--conflict-exit-code", "0"], &["true"]));
    server.fail_next(0, 503);
    plain.assert_code(124);
    done.assert_code(124);
    skip.assert_code(0);
}

/// As for a plain lease (helper-92): a marker write refused as a conflict again and again, while the
/// lease stays as it was, is no race: it is retried with backoff, not sent again at once until the
/// timeout.
#[test]
fn a_marker_write_refused_every_time_is_retried_with_backoff() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else {
        eprintln!("SKIPPED: needs the test server's fault injection");
        return;
    };
    let name = env.lease_name("pool409");
    env.run(["lock", &name, "--", "true"]).assert_code(0);
    server.fail_next_on(&format!("update:{name}"), 1_000_000, 409);
    let done = env.run(["lock", &name, "--slots", "2", "--timeout", "3s", "--", "true"]);
    server.fail_next_on(&format!("update:{name}"), 0, 409);
    let refused = server.requests().iter().filter(|r| r.verb == "update" && r.status == 409).count();
    assert!(
        done.code == Some(124) && refused < 50,
        "exit {:?} after {refused} refused marks\n{}",
        done.code,
        done.stderr
    );
}

/// Found by review (helper-81): `X` is a 2-slot semaphore, so `X-0` is a slot (annotated 2) and no
/// marker, hence `X-0-1` is nobody's slot; `lock X-0-1 --slots 2` was refused as "slot 1 of the semaphore
/// X-0" (a slot was taken for a marker).
fn a_semaphore_below_a_slot_is_not_refused_as_another_semaphores_slot(env: &TestEnv) {
    let name = env.lease_name("x");
    env.run(fast(&["lock", &name, "--slots", "2"], &["true"])).assert_code(0);
    let below = format!("{name}-0-1");
    env.run(fast(&["lock", &below, "--slots", "2", "--no-wait"], &["true"])).assert_code(0);
    let status = env.run(["status", &below, "-o", "json"]);
    status.assert_code(0);
    assert!(status.stdout.trim_start().starts_with('['), "{below} is a semaphore: {}", status.stdout);
}

/// Found by review (helper-81): `observe` started before the semaphore's first use ended with 125 on one
/// 503 as the marker appeared (the marker does not change again: it retries until it can tell).
#[test]
fn observe_rides_through_a_failure_as_the_marker_appears() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else {
        eprintln!("SKIPPED: needs the test server's fault injection");
        return;
    };
    let name = env.lease_name("pool");
    let observe = env.spawn(["observe", &name, "-o", "json", "-v"]);
    wait_until("observe's first line", || observe.stdout().lines().next().is_some());
    env.put_slot(&name, 2, Default::default());
    // The next request is observe's read as the marker's event comes (usually).
    server.fail_next(1, 503);
    wait_until("observe to watch the slots", || observe.stderr().contains("watching them"));
    let (gate, log) = (env.path("gate"), env.path("log"));
    let holder =
        env.spawn(fast(&["lock", &name, "--slots", "2"], &["sh", "-c", &stamp_script(&log, &held_until(&gate))]));
    wait_for_file(&log, "start");
    wait_until("observe to report the held slot", || observe.stdout().contains("\"held\":true"));
    fs::write(&gate, "").unwrap();
    holder.finish().assert_code(0);
    observe.signal(nix::sys::signal::Signal::SIGTERM);
    observe.finish().assert_code(0);
}

/// Found by review (helper-81): with every write held by the API server (each create's outcome unknown
/// at its timeout) and reads answered, the marker was looked at again at once, for ever: `--timeout`
/// was not kept. It is: 124.
#[test]
fn a_semaphore_keeps_its_timeout_while_marker_writes_hang() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else {
        eprintln!("SKIPPED: needs the test server's fault injection");
        return;
    };
    let name = env.lease_name("pool");
    server.set_commit_delay(std::time::Duration::from_secs(60));
    let done = env.run(["lock", &name, "--slots", "2", "--timeout", "3s", "--", "true"]);
    server.set_commit_delay(std::time::Duration::ZERO);
    done.assert_code(124);
}

/// Found by review (helper-81): RBAC confined to the names a semaphore uses, as deploy/rbac.yaml shows
/// (`resourceNames: NAME, NAME-0 .. NAME-(N-1)`): `lock job-1 --slots 2` also reads the Lease `job`, to
/// tell whether `job-1` is another semaphore's slot; a 403 there means it is not (it was a 125).
#[test]
fn a_semaphore_under_rbac_by_resource_name_is_not_refused() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else {
        eprintln!("SKIPPED: needs the test server's fault injection");
        return;
    };
    let parent = env.lease_name("job");
    let name = format!("{parent}-1");
    server.forbid(&format!("get:{parent}"));
    let done = env.run(fast(&["lock", &name, "--slots", "2"], &["true"]));
    let status = env.run(["status", &name]);
    server.allow(&format!("get:{parent}"));
    done.assert_code(0);
    status.assert_code(0);
}

/// Found by review (helper-83): X is a 2-slot semaphore, so X-0 is its slot and X-0-1 may be a semaphore
/// of its own; then X-0-1-1 is slot 1 of X-0-1. Looking two levels up only, `lock X-0-1-1 --slots 3` was
/// accepted and wrote its marker on X-0-1's slot, and every later `lock X-0-1 --slots 2` was refused.
fn a_slot_three_levels_down_is_refused_as_a_marker(env: &TestEnv) {
    let x = env.lease_name("x");
    env.put_slot(&x, 2, Default::default());
    env.put_slot(&format!("{x}-0"), 2, Default::default());
    let mid = format!("{x}-0-1");
    env.run(fast(&["lock", &mid, "--slots", "2"], &["true"])).assert_code(0);
    let deep = format!("{mid}-1");
    let wrong = env.run(fast(&["lock", &deep, "--slots", "3"], &["true"]));
    let again = env.run(fast(&["lock", &mid, "--slots", "2"], &["true"]));
    assert_eq!(again.code, Some(0), "semaphore {mid} broken after `lock {deep} --slots 3`: {}", again.stderr);
    assert_eq!(wrong.code, Some(125), "{deep} is slot 1 of the semaphore {mid}: {}", wrong.stderr);
}

/// Found by review (helper-83): `status X-0`, a slot of X, while the read of X fails (503): the failure
/// was dropped and X-0 reported as a semaphore of two slots that do not exist, exit 0. It fails as
/// `status` fails on its other reads: 125.
#[test]
fn status_of_a_slot_whose_semaphore_cannot_be_read_now_reports_no_phantom_slots() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else {
        eprintln!("SKIPPED: needs the test server's fault injection");
        return;
    };
    let name = env.lease_name("pool");
    env.put_slot(&name, 2, Default::default());
    let slot = format!("{name}-0");
    env.put_slot(&slot, 2, Default::default());
    server.fail_next_on(&format!("get:{name}"), 1, 503);
    let status = env.run(["status", &slot, "-o", "json"]);
    server.fail_next_on(&format!("get:{name}"), 0, 503);
    assert!(!status.stdout.contains(&format!("{slot}-0")), "phantom slots: {}\n{}", status.stdout, status.stderr);
    status.assert_code(125);
}

/// Found by review (helper-86): x, x-0, ..., x-0-0-0-0-0-0-0 (eight names, each with a count; x is no slot
/// of anything): x, x-0-0, ... are markers and x-0, x-0-0-0, ... slots, so x-0-0-0-0-0-0-0 is a slot and
/// x-0-0-0-0-0-0-0-0 a semaphore of its own. The depth cut-off refused it, though nothing was left unread.
fn a_semaphore_eight_levels_down_under_a_slot_is_not_refused(env: &TestEnv) {
    let mut name = format!("{}-top", env.lease_name("x"));
    for _ in 0..8 {
        env.put_slot(&name, 2, Default::default());
        name.push_str("-0");
    }
    env.run(fast(&["lock", &name, "--slots", "2"], &["true"])).assert_code(0);
}

both_backends!(status_with_slots_reports_a_held_plain_lease_as_the_lease_it_is);

/// Found by review (helper-136). README: `--slots N` makes `status`/`observe` treat NAME as a semaphore "when its
/// marker cannot tell". A held plain lease can tell: `lock NAME --slots 3` does not take it (refused if its
/// holder renews it), yet `status NAME --slots 3` reported "semaphore … (0 of 3 held)" with three
/// free slots, and `held` nowhere, while the plain lease ran its child.
fn status_with_slots_reports_a_held_plain_lease_as_the_lease_it_is(env: &TestEnv) {
    let name = env.lease_name("rv136-plain");
    env.put(&name, TestEnv::foreign_record("plain-holder", 60));
    // Held by another: `--no-wait` does not wait it out (helper-162: refused at sight, 125, a dead holder's
    // record refused the semaphore for ever; a holder that renews it is refused).
    let refused = env.run(fast(&["lock", &name, "--slots", "3", "--no-wait"], &["true"]));
    refused.assert_code(124);
    let text = env.run(["status", &name, "--slots", "3"]);
    text.assert_code(0);
    assert!(text.stdout.contains("plain-holder"), "the holder of the plain lease is shown:\n{}", text.stdout);
    assert!(!text.stdout.contains("0 of 3 held"), "not reported as a free semaphore:\n{}", text.stdout);
    let json = env.run(["status", &name, "--slots", "3", "-o", "json"]);
    json.assert_code(0);
    let value: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(value["held"], true, "{}", json.stdout);
    assert_eq!(value["holderIdentity"], "plain-holder", "{}", json.stdout);
}

/// Found by review (helper-141): `--slots` given by its variable (`MPSYNC_SLOTS=2 mpsync lock pool -- script`)
/// reached the child, and the script's own `mpsync lock inner` became a 2-slot semaphore: two such nested
/// children ran at once, and `inner` was marked a semaphore, refusing every plain `lock inner` (125) after.
fn slots_given_by_the_environment_do_not_reach_a_nested_lock(env: &TestEnv) {
    let outer = env.lease_name("env-outer");
    let inner = env.lease_name("env-inner");
    let log = env.path("log");
    let body = env.path("body.sh");
    fs::write(&body, stamp_script(&log, "echo \"slots=[$MPSYNC_SLOTS]\"; sleep 1")).unwrap();
    let timings = FAST.join(" ");
    let script = format!("\"$MPSYNC_BIN\" lock {inner} {timings} -- sh {}", body.display());
    let outers: Vec<Proc> = (0..2)
        .map(|_| {
            let mut command = env.mpsync(fast(&["lock", &outer], &["sh", "-c", &script]));
            command.env("MPSYNC_BIN", env!("CARGO_BIN_EXE_mpsync")).env("MPSYNC_SLOTS", "2");
            Proc::spawn(command, &env.dir)
        })
        .collect();
    for outer in outers {
        let done = outer.finish();
        done.assert_code(0);
        assert!(done.stdout.contains("slots=[]"), "MPSYNC_SLOTS reached the child: {}", done.stdout);
    }
    let stamps = read_stamps(&log);
    assert_eq!(stamps.len(), 4, "two inner children ran: {stamps:?}");
    assert_eq!(max_concurrency(&log), 1, "the nested plain locks ran at once: {stamps:?}");
    assert!(env.metadata(&inner).and_then(|m| m.annotations).is_none_or(|a| !a.contains_key("mpsync.io/slots")));
    env.run(fast(&["lock", &inner, "--no-wait"], &["true"])).assert_code(0);
}
both_backends!(slots_given_by_the_environment_do_not_reach_a_nested_lock);

/// Found by review (helper-147): under a semaphore's child (`MPSYNC_SLOT=0` set for it), a nested plain
/// `mpsync lock inner` gave its own child that same `MPSYNC_SLOT`, though README gives it only "with
/// --slots": the inner child took itself for slot 0 of a semaphore `inner`, which has none.
fn a_nested_plain_lock_gives_its_child_no_slot(env: &TestEnv) {
    let outer = env.lease_name("slot-outer");
    let inner = env.lease_name("slot-inner");
    let timings = FAST.join(" ");
    let script = format!("\"$MPSYNC_BIN\" lock {inner} {timings} -- sh -c 'echo \"inner-slot=[$MPSYNC_SLOT]\"'");
    let mut command = env.mpsync(fast(&["lock", &outer, "--slots", "2"], &["sh", "-c", &script]));
    command.env("MPSYNC_BIN", env!("CARGO_BIN_EXE_mpsync"));
    let done = Proc::spawn(command, &env.dir).finish();
    done.assert_code(0);
    assert!(
        done.stdout.contains("inner-slot=[]"),
        "the outer slot reached the nested plain lock's child: {}",
        done.stdout
    );
}
both_backends!(a_nested_plain_lock_gives_its_child_no_slot);

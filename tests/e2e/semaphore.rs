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
);

fn held_until(gate: &std::path::Path) -> String {
    format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display())
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
    // A semaphore in use: its slot 0 and its marker refuse plain locks. (Its slot 1, never written yet, is a
    // plain lease to whoever takes it first; the semaphore then refuses to share it: below.)
    let holder =
        env.spawn(fast(&["lock", &name, "--slots", "2"], &["sh", "-c", &stamp_script(&log, &held_until(&gate))]));
    wait_for_file(&log, "start");
    for plain in [format!("{name}-0"), name.clone()] {
        let done = env.run(fast(&["lock", &plain, "--no-wait"], &["true"]));
        done.assert_code(125);
        assert!(done.stderr.contains("belongs to a semaphore of 2 slots"), "{plain}: {}", done.stderr);
    }
    fs::write(&gate, "").unwrap();
    holder.finish().assert_code(0);

    // A plain lease that is held, named like a slot: the semaphore refuses rather than share it.
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
}

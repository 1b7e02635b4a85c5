//! `elect --slots N`: up to N leaders at once, one per slot, and a slot's standby taking over (from
//! review, helper-150: no e2e test ran `elect --slots` before).

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::elect_faults::get;
use crate::support::*;

/// start/end stamps with token and slot; TERM stamps end and exits 0; writes "$PPID $$" to `leader`.
fn script(log: &std::path::Path, leader: &std::path::Path) -> String {
    format!(
        "echo start $(date +%s%N) $MPSYNC_FENCING_TOKEN ${{MPSYNC_SLOT:-x}} >> {log}; trap 'echo end $(date +%s%N) $MPSYNC_FENCING_TOKEN ${{MPSYNC_SLOT:-x}} >> {log}; exit 0' TERM; echo $PPID $$ >> {leader}; while :; do sleep 0.05; done",
        log = log.display(),
        leader = leader.display()
    )
}

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
}

fn count(log: &std::path::Path, word: &str) -> usize {
    lines(log).iter().filter(|l| l.starts_with(word)).count()
}

/// Per slot: no overlap, tokens increase.
fn check_per_slot(log: &std::path::Path) {
    let all = lines(log);
    let slots: std::collections::BTreeSet<String> =
        all.iter().filter_map(|l| l.split_whitespace().nth(3).map(str::to_string)).collect();
    for slot in slots {
        let mut events: Vec<(u128, i32, i64)> = all
            .iter()
            .filter(|l| l.split_whitespace().nth(3) == Some(slot.as_str()))
            .map(|l| {
                let p: Vec<&str> = l.split_whitespace().collect();
                (p[1].parse().unwrap(), if p[0] == "start" { 1 } else { -1 }, p[2].parse().unwrap())
            })
            .collect();
        let tokens: Vec<i64> = events.iter().filter(|e| e.1 == 1).map(|e| e.2).collect();
        assert!(tokens.windows(2).all(|w| w[0] < w[1]), "slot {slot}: tokens must increase: {tokens:?}");
        events.sort_by_key(|e| (e.0, e.1));
        let (mut running, mut most) = (0, 0);
        for e in events {
            running += e.1;
            most = most.max(running);
        }
        assert!(most <= 1, "slot {slot}: children overlapped");
    }
}

/// `elect --slots 2` with three replicas: two children at once, one per slot; the leader of a slot
/// SIGKILLed: the standby takes its slot over; per slot no overlap and tokens increase.
#[test]
fn three_replicas_of_two_slots_and_a_sigkill() {
    let env = TestEnv::kube();
    let name = env.lease_name("elect-slots");
    let log = env.path("log");
    let leader = env.path("leader");
    let s = script(&log, &leader);
    let mut reps: Vec<(Proc, u16)> = (0..3)
        .map(|_| {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            (env.spawn(fast(&["elect", &name, "--slots", "2", "--health-addr", &addr], &["sh", "-c", &s])), port)
        })
        .collect();
    wait_until("two children", || count(&log, "start") == 2);
    wait_until("two /leader 200", || reps.iter().filter(|r| get(r.1, "/leader") == Some(200)).count() == 2);
    // The third replica stands by. On a loaded machine a leader may miss its 2 s renew deadline and its
    // slot pass to the standby (a child ended, then another started in that slot): never two per slot.
    std::thread::sleep(Duration::from_secs(1));
    check_per_slot(&log);
    let before = count(&log, "start");
    assert!(before == 2 || lines(&log).iter().any(|l| l.starts_with("end")), "log:\n{}", lines(&log).join("\n"));
    // SIGKILL a leader: its standby takes the slot over.
    let idx = reps.iter().position(|r| get(r.1, "/leader") == Some(200)).expect("a leader");
    let (mut victim, _) = reps.remove(idx);
    victim.signal(Signal::SIGKILL);
    victim.wait_for(PATIENCE);
    wait_until("another child", || count(&log, "start") > before);
    wait_until("two /leader 200", || reps.iter().filter(|r| get(r.1, "/leader") == Some(200)).count() == 2);
    for (p, _) in reps {
        p.signal(Signal::SIGTERM);
        let f = p.finish();
        assert_eq!(f.code, Some(0), "{}", f.stderr);
    }
    // The killed replica's child has no end stamp (SIGKILL of its group); give it an end at the kill.
    check_per_slot_ignoring_unended(&log);
}

fn check_per_slot_ignoring_unended(log: &std::path::Path) {
    // Children killed by SIGKILL left no end: treat their end as the next start in the same slot.
    let all = lines(log);
    let mut fixed = Vec::new();
    let mut open: std::collections::HashMap<String, (String, String)> = Default::default();
    let mut sorted = all.clone();
    sorted.sort_by_key(|l| l.split_whitespace().nth(1).unwrap().parse::<u128>().unwrap());
    for l in sorted {
        let p: Vec<&str> = l.split_whitespace().collect();
        if p[0] == "start" {
            if let Some((tok, _)) = open.remove(p[3]) {
                fixed.push(format!("end {} {} {}", p[1], tok, p[3]));
            }
            open.insert(p[3].to_string(), (p[2].to_string(), p[1].to_string()));
        } else {
            open.remove(p[3]);
        }
        fixed.push(l.clone());
    }
    let path = log.with_extension("fixed");
    std::fs::write(&path, fixed.join("\n") + "\n").unwrap();
    check_per_slot(&path);
}

use super::*;

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::time::Instant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

/// Generous, for a loaded machine: only reached when something is wrong.
const PATIENCE: Duration = Duration::from_secs(30);

/// The stores' call timeout in these tests: an fsync on a busy shared disk can take seconds, which is not
/// what they test.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_nanos())
            .unwrap_or_default();
        TempDir(std::env::temp_dir().join(format!("mpsync-filestore-{test}-{}-{nanos}", std::process::id())))
    }

    fn path(&self) -> PathBuf {
        self.0.clone()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime")
}

fn open(dir: &TempDir) -> FileStore {
    FileStore::open(dir.path(), "default".to_string())
        .expect("the lock directory opens")
        .with_call_timeout(CALL_TIMEOUT)
}

fn held_by(holder: &str) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(holder.to_string()),
        lease_duration_seconds: Some(15),
        lease_transitions: Some(0),
        acquire_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
        renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
        ..LeaseSpec::default()
    }
}

fn file_error(result: Result<impl std::fmt::Debug, StoreError>) -> String {
    match result {
        Err(StoreError::Fatal(Error::File(message))) => message,
        other => panic!("expected a fatal file error, got {other:?}"),
    }
}

fn transient(result: Result<impl std::fmt::Debug, StoreError>) -> String {
    match result {
        Err(StoreError::Transient(message) | StoreError::Unreadable(message)) => message,
        other => panic!("expected a transient error, got {other:?}"),
    }
}

fn is_conflict<T: std::fmt::Debug>(result: &Result<T, StoreError>) -> bool {
    matches!(result, Err(StoreError::Conflict(_)))
}

/// The next update: the record, or `None` for an absence.
async fn next_update(watch: &mut Watch) -> Option<Versioned> {
    let update = tokio::time::timeout(PATIENCE, watch.updates.recv())
        .await
        .expect("an update within the patience")
        .expect("the watch is still running");
    match update {
        WatchUpdate::Present(current) => Some(current),
        WatchUpdate::Absent { .. } | WatchUpdate::Deleted { .. } => None,
    }
}

#[test]
fn open_creates_missing_lock_directory_with_mode_0700() {
    let temp = TempDir::new("mode");
    let dir = temp.path().join("nested").join("locks");
    FileStore::open(dir.clone(), "default".to_string()).expect("opens");
    let meta = fs::metadata(&dir).expect("the directory exists");
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o777, 0o700);
    // The write probe leaves nothing behind.
    assert_eq!(fs::read_dir(&dir).expect("readable").count(), 0);
}

#[test]
fn unwritable_lock_directory_is_a_file_error_naming_it() {
    let temp = TempDir::new("unwritable");
    fs::create_dir_all(temp.path()).expect("temp dir");
    let dir = if nix::unistd::geteuid().is_root() {
        // Permission bits do not stop root; a path below a regular file stops everyone (ENOTDIR).
        let file = temp.path().join("a-file");
        fs::write(&file, b"").expect("a regular file");
        file.join("sub")
    } else {
        let dir = temp.path().join("read-only");
        fs::DirBuilder::new().mode(0o500).create(&dir).expect("a read-only dir");
        dir
    };
    let result = FileStore::open(dir.clone(), "default".to_string());
    let _ = fs::set_permissions(temp.path().join("read-only"), std::os::unix::fs::PermissionsExt::from_mode(0o700));
    match result {
        Err(Error::File(message)) => {
            assert!(message.contains(&dir.display().to_string()), "{message}");
            assert!(message.contains("--lock-dir"), "{message}");
            assert_eq!(message.lines().count(), 1, "{message}");
        }
        Err(other) => panic!("expected Error::File, got {other:?}"),
        Ok(_) => panic!("opened an unwritable lock directory"),
    }
}

#[test]
fn get_of_missing_lease_is_none() {
    let temp = TempDir::new("missing");
    let store = open(&temp);
    let got = runtime().block_on(store.get("nobody")).expect("get works");
    assert_eq!(got, None);
}

#[test]
fn create_writes_a_kubernetes_lease_and_get_reads_back_what_create_returned() {
    let temp = TempDir::new("create");
    let store = open(&temp);
    let rt = runtime();
    let created = rt.block_on(store.create("job", &held_by("a"))).expect("created");
    assert_eq!(created.resource_version, "1");
    let got = rt.block_on(store.get("job")).expect("get works");
    // Times come back at microsecond precision from both, as from the API server.
    assert_eq!(got, Some(created));

    let text = fs::read_to_string(temp.path().join("job.json")).expect("the record file");
    let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(json["apiVersion"], "coordination.k8s.io/v1");
    assert_eq!(json["kind"], "Lease");
    assert_eq!(json["metadata"]["name"], "job");
    assert_eq!(json["metadata"]["namespace"], "default");
    assert_eq!(json["metadata"]["resourceVersion"], "1");
    assert!(json["metadata"]["creationTimestamp"].is_string());
    assert_eq!(json["spec"]["holderIdentity"], "a");
    assert_eq!(json["spec"]["leaseDurationSeconds"], 15);
}

#[test]
fn create_of_existing_lease_conflicts() {
    let temp = TempDir::new("create-twice");
    let store = open(&temp);
    let rt = runtime();
    rt.block_on(store.create("job", &held_by("a"))).expect("created");
    let again = rt.block_on(store.create("job", &held_by("b")));
    assert!(is_conflict(&again), "{again:?}");
    let got = rt.block_on(store.get("job")).expect("get works");
    assert_eq!(got.expect("exists").record.holder_identity.as_deref(), Some("a"));
}

#[test]
fn replace_with_current_resource_version_bumps_it() {
    let temp = TempDir::new("replace");
    let store = open(&temp);
    let rt = runtime();
    let created = rt.block_on(store.create("job", &held_by("a"))).expect("created");
    let replaced = rt.block_on(store.replace("job", &created.resource_version, &held_by("b"))).expect("replaced");
    assert_eq!(replaced.resource_version, "2");
    assert_eq!(replaced.record.holder_identity.as_deref(), Some("b"));
    let again = rt.block_on(store.replace("job", "2", &held_by("c"))).expect("replaced again");
    assert_eq!(again.resource_version, "3");
    assert_eq!(rt.block_on(store.get("job")).expect("get works"), Some(again));
}

#[test]
fn replace_with_stale_resource_version_conflicts() {
    let temp = TempDir::new("stale");
    let store = open(&temp);
    let rt = runtime();
    rt.block_on(store.create("job", &held_by("a"))).expect("created");
    rt.block_on(store.replace("job", "1", &held_by("b"))).expect("replaced");
    let stale = rt.block_on(store.replace("job", "1", &held_by("c")));
    assert!(is_conflict(&stale), "{stale:?}");
    let got = rt.block_on(store.get("job")).expect("get works").expect("exists");
    assert_eq!(got.resource_version, "2");
    assert_eq!(got.record.holder_identity.as_deref(), Some("b"));
}

#[test]
fn replace_of_missing_lease_conflicts() {
    let temp = TempDir::new("replace-missing");
    let store = open(&temp);
    let rt = runtime();
    let result = rt.block_on(store.replace("job", "1", &held_by("a")));
    assert!(is_conflict(&result), "{result:?}");
    assert_eq!(rt.block_on(store.get("job")).expect("get works"), None);
}

#[test]
fn strategy_preferred_holder_and_labels_survive_replace() {
    let temp = TempDir::new("unknown-fields");
    let store = open(&temp);
    let rt = runtime();
    let record = LeaseSpec {
        strategy: Some("OldestEmulationVersion".to_string()),
        preferred_holder: Some("the-new-one".to_string()),
        ..held_by("a")
    };
    rt.block_on(store.create("job", &record)).expect("created");
    // Someone (kubectl label, say) adds metadata the state machine knows nothing of.
    let path = temp.path().join("job.json");
    let mut json: serde_json::Value = serde_json::from_slice(&fs::read(&path).expect("record")).expect("JSON");
    json["metadata"]["labels"] = serde_json::json!({"team": "batch"});
    json["metadata"]["annotations"] = serde_json::json!({"note": "keep me"});
    fs::write(&path, serde_json::to_vec(&json).expect("JSON")).expect("written");

    let read = rt.block_on(store.get("job")).expect("get works").expect("exists");
    let mut renewed = read.record.clone();
    renewed.holder_identity = Some("b".to_string());
    let replaced = rt.block_on(store.replace("job", &read.resource_version, &renewed)).expect("replaced");
    assert_eq!(replaced.record.strategy.as_deref(), Some("OldestEmulationVersion"));
    assert_eq!(replaced.record.preferred_holder.as_deref(), Some("the-new-one"));

    let json: serde_json::Value = serde_json::from_slice(&fs::read(&path).expect("record")).expect("JSON");
    assert_eq!(json["spec"]["strategy"], "OldestEmulationVersion");
    assert_eq!(json["spec"]["preferredHolder"], "the-new-one");
    assert_eq!(json["spec"]["holderIdentity"], "b");
    assert_eq!(json["metadata"]["labels"]["team"], "batch");
    assert_eq!(json["metadata"]["annotations"]["note"], "keep me");
    assert_eq!(json["metadata"]["resourceVersion"], "2");
}

#[test]
fn a_corrupt_record_counts_as_held_names_the_file_and_is_never_overwritten() {
    let temp = TempDir::new("corrupt");
    let store = open(&temp);
    let rt = runtime();
    let path = temp.path().join("job.json");
    let contents: [&[u8]; 10] = [
        b"",
        b"not json {",
        b"[1, 2]",
        b"null",
        b"\xff\xfe\x00garbage",
        br#"{"apiVersion":"v1","kind":"Pod","metadata":{"resourceVersion":"1"}}"#,
        br#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"job"}}"#,
        br#"{"metadata":{"resourceVersion":"seven"},"spec":{}}"#,
        br#"{"metadata":{"resourceVersion":"1"},"spec":{"leaseDurationSeconds":"soon"}}"#,
        br#"{"metadata":{"name":"other","resourceVersion":"1"},"spec":{}}"#,
    ];
    for content in contents {
        fs::write(&path, content).expect("written");
        let shown = String::from_utf8_lossy(content);
        let message = transient(rt.block_on(store.get("job")));
        assert!(message.contains(&path.display().to_string()), "{shown}: {message}");
        assert!(message.contains("counts as held"), "{shown}: {message}");
        for never in ["remove", "delete"] {
            assert!(!message.contains(never), "{shown}: the hint must not suggest to {never} it: {message}");
        }
        assert_eq!(message.lines().count(), 1, "{message}");
        transient(rt.block_on(store.replace("job", "1", &held_by("a"))));
        transient(rt.block_on(store.create("job", &held_by("a"))));
        // The bad record is left for the user to see, not overwritten.
        assert_eq!(fs::read(&path).expect("still there"), content);
    }
}

#[test]
fn a_fifo_symlink_or_huge_file_in_place_of_the_record_blocks_nobody_and_is_never_followed() {
    let temp = TempDir::new("not-a-file");
    let store = open(&temp);
    let rt = runtime();
    let path = temp.path().join("job.json");
    let target = temp.path().join("someone-elses-file");
    fs::write(&target, b"precious").expect("written");

    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("a FIFO");
    let started = Instant::now();
    let message = transient(rt.block_on(store.get("job")));
    assert!(message.contains("a FIFO"), "{message}");
    transient(rt.block_on(store.create("job", &held_by("a"))));
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    fs::remove_file(&path).expect("removed");

    std::os::unix::fs::symlink(&target, &path).expect("a symlink");
    let message = transient(rt.block_on(store.get("job")));
    assert!(message.contains("symbolic link"), "{message}");
    transient(rt.block_on(store.create("job", &held_by("a"))));
    transient(rt.block_on(store.replace("job", "1", &held_by("a"))));
    assert_eq!(fs::read(&target).expect("untouched"), b"precious");
    fs::remove_file(&path).expect("removed");

    let huge = vec![b' '; (dir::MAX_RECORD + 1) as usize];
    fs::write(&path, huge).expect("written");
    let message = transient(rt.block_on(store.get("job")));
    assert!(message.contains("bytes"), "{message}");
}

#[test]
fn a_record_without_spec_reads_as_an_empty_spec() {
    let temp = TempDir::new("no-spec");
    let store = open(&temp);
    fs::write(
        temp.path().join("job.json"),
        br#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"job","resourceVersion":"7"}}"#,
    )
    .expect("written");
    let got = runtime().block_on(store.get("job")).expect("get works");
    let got = got.expect("a record");
    assert_eq!((got.resource_version.as_str(), got.record), ("7", LeaseSpec::default()));
}

#[test]
fn invalid_records_and_names_are_rejected_like_the_api_server_does() {
    let temp = TempDir::new("invalid");
    let store = open(&temp);
    let rt = runtime();
    let zero_duration = LeaseSpec { lease_duration_seconds: Some(0), ..held_by("a") };
    let message = file_error(rt.block_on(store.create("job", &zero_duration)));
    assert!(message.contains("leaseDurationSeconds"), "{message}");
    assert_eq!(rt.block_on(store.get("job")).expect("get works"), None);

    rt.block_on(store.create("job", &held_by("a"))).expect("created");
    let negative_transitions = LeaseSpec { lease_transitions: Some(-1), ..held_by("a") };
    let message = file_error(rt.block_on(store.replace("job", "1", &negative_transitions)));
    assert!(message.contains("leaseTransitions"), "{message}");

    for name in ["a/b", "../escape", "", ".hidden"] {
        file_error(rt.block_on(store.get(name)));
        file_error(rt.block_on(store.create(name, &held_by("a"))));
    }
}

#[test]
fn watch_delivers_current_record_then_a_change_from_another_thread_at_once() {
    let temp = TempDir::new("watch");
    let store = open(&temp);
    runtime().block_on(async {
        store.create("job", &held_by("a")).await.expect("created");
        // A retry period far beyond the test's patience: only inotify can deliver the change.
        let mut watch = store.watch("job", Duration::from_secs(600));
        let first = next_update(&mut watch).await.expect("the current record");
        assert_eq!(first.resource_version, "1");

        let dir = temp.path();
        let writer = std::thread::spawn(move || {
            let other = FileStore::open(dir, "default".to_string()).expect("opens").with_call_timeout(CALL_TIMEOUT);
            let rt = runtime();
            rt.block_on(other.replace("job", "1", &held_by("b"))).expect("replaced");
            Instant::now()
        });
        let changed = next_update(&mut watch).await.expect("the changed record");
        let received = Instant::now();
        let write_finished = writer.join().expect("the writer thread");
        assert_eq!(changed.resource_version, "2");
        assert_eq!(changed.record.holder_identity.as_deref(), Some("b"));
        // Usually before the writer's last fsync is done; never long after (an fsync on a busy disk can
        // take seconds, which is not the watch's doing).
        let late = received.saturating_duration_since(write_finished);
        assert!(late < Duration::from_secs(1), "{late:?} after the write");
    });
}

#[test]
fn watch_of_missing_lease_delivers_none_then_its_creation() {
    let temp = TempDir::new("watch-missing");
    let store = open(&temp);
    runtime().block_on(async {
        let mut watch = store.watch("job", Duration::from_secs(600));
        assert_eq!(next_update(&mut watch).await, None);
        // Writes to other leases in the directory are not reported.
        store.create("other", &held_by("x")).await.expect("created");
        store.create("job", &held_by("a")).await.expect("created");
        let created = next_update(&mut watch).await.expect("the new record");
        assert_eq!(created.record.holder_identity.as_deref(), Some("a"));
    });
}

#[test]
fn watch_without_inotify_polls_fast_whatever_the_retry_period() {
    let temp = TempDir::new("watch-poll");
    let store = open(&temp);
    let files = LeaseFiles::new("job").expect("a valid name");
    runtime().block_on(async {
        let (updates_tx, updates_rx) = mpsc::channel(16);
        // No inotify (as when the user's instances are used up), and a retry period beyond the patience.
        let dir = LockDir::new(temp.path());
        let task = tokio::spawn(forward_changes(dir, files, Duration::from_secs(600), false, updates_tx));
        let mut watch = Watch::new(updates_rx, task);
        assert_eq!(next_update(&mut watch).await, None);
        store.create("job", &held_by("a")).await.expect("created");
        let created = next_update(&mut watch).await.expect("the new record");
        assert_eq!(created.resource_version, "1");
    });
}

#[test]
fn watches_share_one_inotify_instance_and_one_watch_per_directory() {
    let temp = TempDir::new("watch-share");
    let _store = open(&temp);
    let dir = LockDir::new(temp.path());
    let handle = dir.open(false).expect("opens").expect("exists");
    let subscriptions: Vec<_> = (0..150)
        .map(|slot| inotify::subscribe(handle.fd(), handle.path(), &format!("job-{slot}.json")).expect("subscribed"))
        .collect();
    assert!(subscriptions.iter().all(|s| s.watch_descriptor() == subscriptions[0].watch_descriptor()));
    let instances = fs::read_dir("/proc/self/fd")
        .expect("/proc")
        .filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().contains("inotify"))
        .count();
    assert_eq!(instances, 1, "one inotify instance for the whole process");
    let wd = subscriptions[0].watch_descriptor();
    assert!(inotify::is_watched(wd));
    drop(subscriptions);
    assert!(!inotify::is_watched(wd), "the directory's watch ends with its last subscription");
}

#[test]
fn the_watch_follows_the_directory_when_it_is_removed_and_made_again() {
    let temp = TempDir::new("watch-rearm");
    let store = open(&temp);
    let watched = |wds: &[nix::sys::inotify::WatchDescriptor]| inotify::watches_of("rearm.json") == wds;
    runtime().block_on(async {
        store.create("rearm", &held_by("a")).await.expect("created");
        let mut watch = store.watch("rearm", Duration::from_secs(600));
        assert_eq!(next_update(&mut watch).await.expect("the record").resource_version, "1");
        let before = inotify::watches_of("rearm.json");
        assert_eq!(before.len(), 1, "watched by inotify");
        fs::remove_dir_all(temp.path()).expect("removed");
        assert_eq!(next_update(&mut watch).await, None, "the record went with its directory");
        // Made again (by the next writer), and watched again.
        store.create("rearm", &held_by("b")).await.expect("created in the new directory");
        let created = next_update(&mut watch).await.expect("the new record");
        assert_eq!(created.record.holder_identity.as_deref(), Some("b"));
        let deadline = Instant::now() + PATIENCE;
        while inotify::watches_of("rearm.json").len() != 1 || watched(&before) {
            assert!(Instant::now() < deadline, "the new directory is not watched");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let replaced = store.replace("rearm", &created.resource_version, &held_by("c")).await.expect("replaced");
        assert_eq!(next_update(&mut watch).await, Some(replaced));
    });
}

#[test]
fn concurrent_compare_and_swap_never_loses_an_update() {
    const WRITERS: u32 = 4;
    const INCREMENTS: u32 = 50;
    let temp = TempDir::new("cas");
    let store = open(&temp);
    let rt = runtime();
    rt.block_on(store.create("counter", &held_by("nobody"))).expect("created");

    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let dir = temp.path();
            std::thread::spawn(move || {
                let store = FileStore::open(dir, "default".to_string()).expect("opens").with_call_timeout(CALL_TIMEOUT);
                let rt = runtime();
                let mut conflicts = 0u32;
                for _ in 0..INCREMENTS {
                    loop {
                        let read = rt.block_on(store.get("counter")).expect("get works").expect("exists");
                        let mut record = read.record.clone();
                        record.lease_transitions = Some(record.lease_transitions.unwrap_or(0) + 1);
                        record.holder_identity = Some(format!("writer-{writer}"));
                        match rt.block_on(store.replace("counter", &read.resource_version, &record)) {
                            Ok(_) => break,
                            Err(StoreError::Conflict(_)) => conflicts += 1,
                            // A lock held long on a loaded machine: nothing written, try again.
                            Err(StoreError::Transient(_)) => {}
                            Err(other) => panic!("writer {writer}: {other}"),
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    let conflicts: u32 = writers.into_iter().map(|writer| writer.join().expect("writer thread")).sum();

    let last = rt.block_on(store.get("counter")).expect("get works").expect("exists");
    let total = i32::try_from(WRITERS * INCREMENTS).expect("small");
    assert_eq!(last.record.lease_transitions, Some(total), "after {conflicts} conflicts");
    assert_eq!(last.resource_version, (total + 1).to_string());
}

#[test]
fn a_directory_open_to_others_a_symlink_or_another_users_is_refused_naming_it() {
    let temp = TempDir::new("refused");
    fs::create_dir_all(temp.path()).expect("temp dir");
    fs::set_permissions(temp.path(), fs::Permissions::from_mode(0o700)).expect("private");

    let open_to_group = temp.path().join("open");
    fs::DirBuilder::new().mode(0o770).create(&open_to_group).expect("created");
    fs::set_permissions(&open_to_group, fs::Permissions::from_mode(0o770)).expect("chmod");
    let message =
        file_error(FileStore::open(open_to_group.clone(), "default".into()).map(drop).map_err(StoreError::from));
    assert!(message.contains(&open_to_group.display().to_string()) && message.contains("0770"), "{message}");

    let link = temp.path().join("link");
    let target = temp.path().join("target");
    fs::DirBuilder::new().mode(0o700).create(&target).expect("created");
    std::os::unix::fs::symlink(&target, &link).expect("a symlink");
    let message = file_error(FileStore::open(link.clone(), "default".into()).map(drop).map_err(StoreError::from));
    assert!(message.contains(&link.display().to_string()) && message.contains("symbolic link"), "{message}");

    if nix::unistd::geteuid().is_root() {
        let squatted = temp.path().join("squatted");
        fs::DirBuilder::new().mode(0o700).create(&squatted).expect("created");
        std::os::unix::fs::chown(&squatted, Some(2000), Some(2000)).expect("chown");
        let message =
            file_error(FileStore::open(squatted.clone(), "default".into()).map(drop).map_err(StoreError::from));
        assert!(message.contains("uid 2000"), "{message}");
        assert_eq!(fs::read_dir(&squatted).expect("listable").count(), 0, "nothing written into it");
    }
}

#[test]
fn get_of_a_missing_directory_is_none_and_does_not_create_it() {
    let temp = TempDir::new("no-dir");
    let store = open(&temp);
    fs::remove_dir_all(temp.path()).expect("removed");
    assert_eq!(runtime().block_on(store.get("job")).expect("get works"), None);
    assert!(!temp.path().exists());
}

#[test]
fn records_are_sticky_private_and_kept_twice_and_stale_temp_files_go() {
    let temp = TempDir::new("files");
    let store = open(&temp);
    let rt = runtime();
    // Left by a writer SIGKILLed in the middle of a write.
    fs::write(temp.path().join(".job.tmp"), b"half a rec").expect("written");
    std::os::unix::fs::symlink("/etc/passwd", temp.path().join(".job.last.tmp")).expect("a symlink");
    rt.block_on(store.create("job", &held_by("a"))).expect("created");
    let record = fs::symlink_metadata(temp.path().join("job.json")).expect("the record");
    let last = fs::symlink_metadata(temp.path().join(".job.last")).expect("its copy");
    // systemd-tmpfiles never ages out a file with the sticky bit.
    assert_eq!(record.mode() & 0o7777, 0o1600);
    assert_eq!((record.dev(), record.ino()), (last.dev(), last.ino()), "one file, two names");
    let mut names: Vec<String> = fs::read_dir(temp.path())
        .expect("listable")
        .map(|e| e.expect("entry").file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [".job.last", "job.json"]);
}

/// A temporary file made again by something else between the writer's removal and its use (a vandal
/// planting names in the directory, as the end-to-end test does): the write did not happen, and says so
/// as a transient failure to retry, never as mpsync's own fatal error. (A directory stands in for the
/// file made in that instant: the writer's removal leaves it, so the window is always hit.)
#[test]
fn a_temporary_name_taken_meanwhile_is_a_write_to_retry() {
    let temp = TempDir::new("taken");
    let store = open(&temp);
    let rt = runtime();
    for name in [".job.tmp", ".job.last.tmp"] {
        fs::create_dir(temp.path().join(name)).expect("made");
        let write = rt.block_on(store.create("job", &held_by("a")));
        // A directory says what it is (found by review, helper-156): the lease counts as held, a retry.
        assert!(
            matches!(write, Err(StoreError::Transient(_) | StoreError::Unreadable(_))),
            "{name}: {:?}",
            write.map(drop)
        );
        fs::remove_dir(temp.path().join(name)).expect("removed");
    }
    rt.block_on(store.create("job", &held_by("a"))).expect("created once the names are free");
}

#[test]
fn a_deleted_record_comes_back_at_the_next_create_and_versions_and_tokens_never_repeat() {
    let temp = TempDir::new("deleted");
    let store = open(&temp);
    let rt = runtime();
    let held = LeaseSpec { lease_transitions: Some(3), ..held_by("a") };
    rt.block_on(store.create("job", &held)).expect("created");
    let renewed = rt.block_on(store.replace("job", "1", &held)).expect("renewed");
    assert_eq!(renewed.resource_version, "2");
    fs::remove_file(temp.path().join("job.json")).expect("deleted");
    assert_eq!(rt.block_on(store.get("job")).expect("get works"), None);

    // A writer that never saw the record creates with token 0: the last record comes back instead.
    let fresh = rt.block_on(store.create("job", &held_by("b")));
    assert!(is_conflict(&fresh), "{fresh:?}");
    let back = rt.block_on(store.get("job")).expect("get works").expect("restored");
    assert_eq!(back.record, renewed.record, "the holder is back, to be waited out");
    assert_eq!(back.resource_version, "3", "versions continue: none is ever reused");
    // A compare-and-swap on a version from before the deletion fails.
    assert!(is_conflict(&rt.block_on(store.replace("job", "2", &held_by("b")))));

    // A writer that saw token 3 (and waited out its holder) creates with a larger one: accepted.
    fs::remove_file(temp.path().join("job.json")).expect("deleted again");
    let next = LeaseSpec { lease_transitions: Some(4), ..held_by("c") };
    let created = rt.block_on(store.create("job", &next)).expect("created");
    assert_eq!((created.resource_version.as_str(), created.record.lease_transitions), ("4", Some(4)));
}

/// Found by review (helper-89): a lock directory swapped for another under a holder (whose versions also
/// began at 1) let the holder's renewal land on the other's record at the same version. A record has a
/// uid, as on an API server, and a write carrying another one conflicts.
#[test]
fn a_write_for_another_record_at_the_same_version_conflicts() {
    let (one, two) = (TempDir::new("uid-one"), TempDir::new("uid-two"));
    let (first, second) = (open(&one), open(&two));
    let rt = runtime();
    let ours = rt.block_on(first.create("job", &held_by("a"))).expect("created");
    let theirs = rt.block_on(second.create("job", &held_by("b"))).expect("created");
    assert_eq!((ours.resource_version.as_str(), theirs.resource_version.as_str()), ("1", "1"));
    let (our_uid, their_uid) = (ours.metadata.uid.clone().unwrap(), theirs.metadata.uid.clone().unwrap());
    assert_ne!(our_uid, their_uid);
    assert_eq!(our_uid.len(), 36, "{our_uid}");
    let renewal = Write { metadata: ours.metadata.clone(), record: held_by("a") };
    let landed = rt.block_on(second.write("job", &renewal));
    assert!(is_conflict(&landed), "{landed:?}");
    assert_eq!(rt.block_on(second.get("job")).unwrap().unwrap().record.holder_identity.as_deref(), Some("b"));
    // On its own record it lands, and the uid stays; a record deleted and put back keeps it too.
    let renewed = rt.block_on(first.write("job", &renewal)).expect("renewed");
    assert_eq!(renewed.metadata.uid.as_deref(), Some(our_uid.as_str()));
    fs::remove_file(one.path().join("job.json")).expect("deleted");
    assert!(is_conflict(&rt.block_on(first.create("job", &held_by("c")))));
    let back = rt.block_on(first.get("job")).unwrap().unwrap();
    assert_eq!(back.metadata.uid.as_deref(), Some(our_uid.as_str()));
    // A write without a uid (from a writer before records had one) lands at its version.
    let old = Write { metadata: ObjectMeta { uid: None, ..back.metadata.clone() }, record: held_by("a") };
    rt.block_on(first.write("job", &old)).expect("a write without a uid");
}

#[test]
fn the_watch_reports_a_deletion_as_an_absence_as_of_the_last_version() {
    let temp = TempDir::new("watch-deleted");
    let store = open(&temp);
    runtime().block_on(async {
        store.create("job", &held_by("a")).await.expect("created");
        let mut watch = store.watch("job", Duration::from_secs(600));
        next_update(&mut watch).await.expect("the record");
        fs::remove_file(temp.path().join("job.json")).expect("deleted");
        let update = tokio::time::timeout(PATIENCE, watch.updates.recv()).await.expect("in time").expect("running");
        // As of version 1: an elector that knows version 1 reads again to decide.
        assert_eq!(update, WatchUpdate::Absent { resource_version: "1".into() });
    });
}

#[test]
fn a_crash_between_the_renames_leaves_the_kept_copy_behind_and_the_next_write_catches_it_up() {
    let temp = TempDir::new("crash");
    let store = open(&temp);
    let rt = runtime();
    rt.block_on(store.create("job", &held_by("a"))).expect("created");
    // As if a writer died after putting version 2 in place as `job.json` but before `.job.last` (which
    // `install` renames second: it is left one write behind, never ahead).
    let mut ahead: serde_json::Value =
        serde_json::from_slice(&fs::read(temp.path().join("job.json")).expect("record")).expect("JSON");
    ahead["metadata"]["resourceVersion"] = "2".into();
    fs::remove_file(temp.path().join("job.json")).expect("unlinked");
    fs::write(temp.path().join("job.json"), serde_json::to_vec(&ahead).expect("JSON")).expect("written");
    let replaced = rt.block_on(store.replace("job", "2", &held_by("b"))).expect("replaced");
    assert_eq!(replaced.resource_version, "3", "on from the record in place");
    let last: serde_json::Value =
        serde_json::from_slice(&fs::read(temp.path().join(".job.last")).expect("kept copy")).expect("JSON");
    assert_eq!(last["metadata"]["resourceVersion"], "3", "the kept copy caught up");
}

#[test]
fn every_valid_lease_name_works_the_longest_too() {
    let temp = TempDir::new("long");
    let store = open(&temp);
    let rt = runtime();
    for len in [names::MAX_PLAIN, names::MAX_PLAIN + 1, 253] {
        let name = names::long_name(len, 'q');
        let created = rt.block_on(store.create(&name, &held_by("a"))).expect("created");
        let replaced = rt.block_on(store.replace(&name, &created.resource_version, &held_by("b"))).expect("replaced");
        assert_eq!(rt.block_on(store.get(&name)).expect("get works"), Some(replaced));
    }
}

#[test]
fn the_compare_and_swap_lock_excludes_other_writers_and_follows_the_directory_at_the_path() {
    let temp = TempDir::new("lock");
    let _store = open(&temp);
    let dir = LockDir::new(temp.path());
    let soon = || Instant::now() + PATIENCE;
    let held = dir.lock(soon(), || None).expect("locked");
    // Another writer waits while it is held (and gives up, transiently, after its wait).
    let (tx, rx) = std::sync::mpsc::channel();
    let other = LockDir::new(temp.path());
    let waiter = std::thread::spawn(move || {
        let locked = other.lock(Instant::now() + PATIENCE, || None).map(drop);
        let _ = tx.send(());
        locked
    });
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "locked twice");
    drop(held);
    rx.recv_timeout(PATIENCE).expect("locked once released");
    waiter.join().expect("the thread").expect("locked");

    // A directory renamed away while locked no longer holds the lock of the path.
    let held = dir.lock(soon(), || None).expect("locked");
    let moved = temp.path().with_extension("moved");
    fs::rename(temp.path(), &moved).expect("renamed");
    let again = dir.lock(soon(), || None).expect("the directory at the path, made again");
    // While held, another writer gives up at its moment, having written nothing.
    let busy = dir.lock(Instant::now() + Duration::from_millis(50), || None);
    assert!(matches!(busy, Err(StoreError::Transient(_))), "{:?}", busy.map(drop));
    drop((held, again));
    let _ = fs::remove_dir_all(&moved);
}

#[test]
fn a_write_given_up_before_it_replaces_anything_never_will_and_one_under_way_is_unknown() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU8;
    // The caller gives up first: the write's gate stays shut.
    let gate = Arc::new(AtomicU8::new(super::dir::RUNNING));
    assert!(super::dir::abandon(&gate), "nothing was replaced yet: not applied");
    let published = super::dir::with_publish_gate(Arc::clone(&gate), super::dir::publish_for_tests);
    assert!(!published, "a write given up never replaces the record");
    // The write claims the gate first: the caller's outcome is unknown.
    let gate = Arc::new(AtomicU8::new(super::dir::RUNNING));
    assert!(super::dir::with_publish_gate(Arc::clone(&gate), super::dir::publish_for_tests));
    assert!(!super::dir::abandon(&gate), "under way: unknown");
}

#[test]
fn list_names_every_record_from_its_metadata_and_skips_what_is_not_a_record() {
    let dir = TempDir::new("list");
    let store = open(&dir);
    let long = names::long_name(230, 'q');
    runtime().block_on(async {
        assert!(store.list(None).await.expect("an empty directory lists").is_empty());
        for name in ["b", "a", long.as_str()] {
            store.create(name, &held_by(name)).await.expect("created");
        }
        let labels = [("team".to_string(), "infra".to_string())].into();
        let write =
            Write { metadata: ObjectMeta { labels: Some(labels), ..ObjectMeta::default() }, record: held_by("c") };
        store.write("c", &write).await.expect("created with a label");
        // A deleted record leaves its `.c.last`; a stray file, a copy under another name and garbage are
        // not leases.
        fs::remove_file(dir.path().join("b.json")).expect("delete b");
        fs::write(dir.path().join("notes.txt"), "hello").expect("a stray file");
        fs::copy(dir.path().join("a.json"), dir.path().join("copy-of-a.json")).expect("a copy");
        fs::write(dir.path().join("garbage.json"), "{").expect("garbage");
        let names = |leases: Vec<Versioned>| -> Vec<String> {
            leases.into_iter().map(|lease| lease.metadata.name.unwrap_or_default()).collect()
        };
        let all = names(store.list(None).await.expect("lists"));
        assert_eq!(all, ["a".to_string(), "c".to_string(), long.clone()], "by name");
        assert!(long.len() > names::MAX_PLAIN, "the hashed name is read from the record");
        assert_eq!(names(store.list(Some("team=infra")).await.expect("lists")), ["c"]);
        assert_eq!(names(store.list(Some("!team")).await.expect("lists")), ["a".to_string(), long.clone()]);
        let refused = store.list(Some("team in (infra)")).await.expect_err("set-based selectors are refused");
        assert!(matches!(refused, StoreError::Fatal(Error::Usage(_))), "{refused:?}");
    });
}

/// Near the largest resourceVersion (only a hand edit leads there), every read and write of a record no
/// write can follow says so as a record mpsync cannot use (the lease counts as held), never as an internal
/// error (found by review, helper-166: a replace of a record one below the largest was refused as "would be
/// written unreadable", exit 125). The write after one two below the largest is made, and is the last.
#[test]
fn a_record_no_write_can_follow_is_unreadable_to_reads_and_writes() {
    let dir = TempDir::new("last-version");
    let rt = runtime();
    let store = open(&dir);
    rt.block_on(async {
        let first = store.create("edge", &held_by("a")).await.expect("created");
        let record = dir.path().join("edge.json");
        let set_version = |version: u64| {
            let mut lease: serde_json::Value = serde_json::from_slice(&fs::read(&record).unwrap()).unwrap();
            lease["metadata"]["resourceVersion"] = serde_json::json!(version.to_string());
            let _ = fs::remove_file(dir.path().join(".edge.last"));
            fs::remove_file(&record).unwrap();
            fs::write(&record, lease.to_string()).unwrap();
        };
        set_version(u64::MAX - 2);
        let last = store.replace("edge", &(u64::MAX - 2).to_string(), &first.record).await.expect("the last write");
        assert_eq!(last.resource_version, (u64::MAX - 1).to_string());
        for version in [u64::MAX - 1, u64::MAX] {
            set_version(version);
            let read = store.get("edge").await.map(|_| ());
            let written = store.replace("edge", &version.to_string(), &first.record).await.map(|_| ());
            for (what, result) in [("get", read), ("replace", written)] {
                match result {
                    Err(StoreError::Unreadable(message)) => {
                        assert!(message.contains("no write can follow"), "{version} {what}: {message}")
                    }
                    other => panic!("{version} {what}: expected a record mpsync cannot use, got {other:?}"),
                }
            }
            assert!(store.list(None).await.expect("lists").is_empty(), "{version}: listed");
        }
    });
}

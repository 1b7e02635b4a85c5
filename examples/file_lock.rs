//! The file backend: a lease shared by processes on one machine, no Kubernetes needed.
//!
//! ```sh
//! cargo run --example file_lock -- LOCK_DIR LEASE [HOLD_MILLIS]
//! ```
//!
//! Tries the lease once; if another holder has it (another run of this example, or `mpsync lock LEASE
//! --backend file --lock-dir LOCK_DIR -- ...`, which shares these leases), waits up to 30 seconds for
//! it. Then holds it for HOLD_MILLIS (default 1000), stopping early if the lease is lost, and releases
//! it, so that a waiter takes over at once (inotify wakes it).
//!
//! Exits 0 when done, 123 if the lease was lost, 124 if it was not acquired in time, 125 on a usage
//! error or a failure.

use std::error::Error;
use std::time::Duration;

use mpsync::Lock;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    // A usage error or a failure: one line, and 125, as `mpsync` itself exits.
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("file_lock: {err}");
            std::process::ExitCode::from(125)
        }
    }
}

async fn run() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (lock_dir, lease) = match args.as_slice() {
        [lock_dir, lease, ..] => (lock_dir, lease),
        _ => return Err("usage: file_lock LOCK_DIR LEASE [HOLD_MILLIS]".into()),
    };
    let hold = Duration::from_millis(args.get(2).map(|millis| millis.parse()).transpose()?.unwrap_or(1000));

    let lock = Lock::file(lock_dir, lease).build()?;
    let held = match lock.try_acquire().await? {
        Some(held) => held,
        None => {
            println!("held by another holder; waiting up to 30s");
            match lock.acquire_timeout(Duration::from_secs(30)).await? {
                Some(held) => held,
                None => {
                    eprintln!("lease {lease} not acquired within 30s");
                    std::process::exit(124);
                }
            }
        }
    };
    println!("acquired token={}", held.fencing_token());
    tokio::select! {
        reason = held.lost() => {
            eprintln!("lost the lease ({reason})");
            std::process::exit(123);
        }
        () = tokio::time::sleep(hold) => {}
    }
    held.release().await?;
    println!("released");
    Ok(())
}

//! A job under a lock that passes the fencing token to every write.
//!
//! ```sh
//! cargo run --example guarded_job -- KUBECONFIG LEASE LEDGER [STEPS]
//! ```
//!
//! The job appends STEPS lines (default 5) to the file LEDGER, each carrying the job's fencing token.
//! The lock keeps two jobs from running at once while all is well; the fencing token keeps a job that
//! was frozen past its lease (a paused VM, a stopped process) from writing after the next one started:
//! the ledger rejects any write whose token is lower than the highest it has seen. This is the part of
//! the guarantee that no lock can give alone. The job stops, too, as soon as the lease is lost.
//!
//! Exits 0 when done, 123 if the lease was lost, 124 if it was not acquired within a minute, 125 on a
//! usage error or a failure (as `mpsync lock` does).

use std::error::Error;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use mpsync::{KubeClientBuilder, Lock};
use tokio_util::sync::CancellationToken;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    // A usage error or a failure: one line, and 125, as `mpsync` itself exits.
    match job().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("guarded_job: {err}");
            std::process::ExitCode::from(125)
        }
    }
}

async fn job() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (kubeconfig, lease, ledger) = match args.as_slice() {
        [kubeconfig, lease, ledger, ..] => (kubeconfig, lease, Ledger::new(ledger)),
        _ => return Err("usage: guarded_job KUBECONFIG LEASE LEDGER [STEPS]".into()),
    };
    let steps: u32 = args.get(3).map(|steps| steps.parse()).transpose()?.unwrap_or(5);

    // mpsync's own client (the `client` feature): TCP_NODELAY, kubectl's proxy rules, the kubeconfig's CA.
    let client = KubeClientBuilder::new().kubeconfig(kubeconfig).build().await?;
    let namespace = client.default_namespace().to_string();
    let lock = Lock::kube(client, &namespace, lease).build()?;

    let Some(held) = lock.acquire_timeout(Duration::from_secs(60)).await? else {
        eprintln!("lease {lease} not acquired within a minute");
        std::process::exit(124);
    };
    let token = held.fencing_token();
    println!("acquired token={token}");
    let done = run(&ledger, token, &held.cancellation_token(), steps).await;
    if held.is_lost() {
        let reason = held.lost().await;
        eprintln!("lost the lease ({reason}); stopped");
        std::process::exit(123);
    }
    // Released whether the job succeeded or not, so that the next job need not wait out the lease.
    held.release().await?;
    done?;
    println!("done token={token}");
    Ok(())
}

/// The job: `steps` writes, each carrying the fencing token; stops as soon as the lease is lost.
async fn run(ledger: &Ledger, token: i32, stop: &CancellationToken, steps: u32) -> Result<(), Box<dyn Error>> {
    for step in 1..=steps {
        if stop.is_cancelled() {
            break;
        }
        // Every write carries the token; the ledger is what enforces it.
        ledger.append(token, &format!("step {step}"))?;
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    Ok(())
}

/// A resource that fences its writers: an append-only file of `TOKEN TEXT` lines that refuses a write
/// whose token is lower than the last one written. (A database does the same with a `token` column and
/// `UPDATE ... WHERE token <= $1`.)
struct Ledger {
    path: PathBuf,
}

impl Ledger {
    fn new(path: impl AsRef<Path>) -> Ledger {
        Ledger { path: path.as_ref().to_path_buf() }
    }

    fn append(&self, token: i32, text: &str) -> Result<(), Box<dyn Error>> {
        let mut file: File = OpenOptions::new().read(true).append(true).create(true).open(&self.path)?;
        // One writer at a time checks and appends (a database would use a transaction).
        file.lock()?;
        let mut contents = String::new();
        file.seek(SeekFrom::Start(0))?;
        file.read_to_string(&mut contents)?;
        let highest = contents.lines().filter_map(|line| line.split(' ').next()?.parse::<i32>().ok()).max();
        if highest.is_some_and(|highest| token < highest) {
            return Err(format!("stale fencing token {token}: the ledger has seen {highest:?}").into());
        }
        writeln!(file, "{token} {text}")?;
        Ok(())
    }
}

//! A controller-style loop that works only while this process leads, and stops when leadership is lost.
//!
//! ```sh
//! cargo run --example leader_controller -- KUBECONFIG LEASE [LEASE_DURATION_SECONDS]
//! ```
//!
//! Every replica runs this; one leads at a time. The leader "reconciles" twice a second, passing its
//! fencing token along; the others wait on a watch of the Lease. When the leader loses the lease (the
//! API server out of reach for the renew deadline, the Lease taken or deleted), its loop stops before
//! anyone else can lead, and it campaigns again. SIGTERM or Ctrl-C shuts it down gracefully: the loop
//! finishes its step, the lease is released, and another replica takes over at once.
//!
//! The kubeconfig is named explicitly (never inferred), and its context's namespace is used. With a
//! lease duration of D seconds, the renew deadline is D/2 and the retry period D/8 (the default is
//! client-go's: 15s, 10s, 2s).
//!
//! Exits 0 after a graceful shutdown, 125 on a usage error or a failure.

use std::error::Error;
use std::time::Duration;

use mpsync::{Election, KubeClientBuilder, Lock, Outcome, Timing};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

const RESYNC: Duration = Duration::from_millis(500);

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    // A usage error or a failure: one line, and 125, as `mpsync` itself exits.
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("leader_controller: {err}");
            std::process::ExitCode::from(125)
        }
    }
}

async fn run() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (kubeconfig, lease) = match args.as_slice() {
        [kubeconfig, lease, ..] => (kubeconfig, lease),
        _ => return Err("usage: leader_controller KUBECONFIG LEASE [LEASE_DURATION_SECONDS]".into()),
    };
    let timing = match args.get(2) {
        Some(seconds) => {
            let lease_duration = Duration::from_secs(seconds.parse()?);
            Timing { lease_duration, renew_deadline: lease_duration / 2, retry_period: lease_duration / 8 }
        }
        None => Timing::DEFAULT,
    };

    // mpsync's own client (the `client` feature): TCP_NODELAY, kubectl's proxy rules, the kubeconfig's CA.
    let client = KubeClientBuilder::new().kubeconfig(kubeconfig).build().await?;
    let namespace = client.default_namespace().to_string();
    let lock = Lock::kube(client, &namespace, lease).timing(timing).build()?;
    println!("campaigning as {}", lock.identity());

    // SIGTERM (a rolling update) or Ctrl-C: finish the step, release, exit.
    let shutdown = CancellationToken::new();
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        on_signal.cancel();
    });

    let outcome = Election::new(lock)
        .shutdown(shutdown)
        .run(|leadership| async move {
            let token = leadership.fencing_token();
            println!("leading token={token}");
            let mut steps = 0u64;
            loop {
                tokio::select! {
                    () = leadership.lost() => break,
                    () = tokio::time::sleep(RESYNC) => {
                        steps += 1;
                        reconcile(token, steps).await;
                    }
                }
            }
            println!("stopped token={token} steps={steps}");
        })
        .await?;
    match outcome {
        Outcome::Finished(()) => println!("released the lease; shut down"),
        Outcome::Stopped => println!("shut down while not leading"),
        Outcome::Lost(reason) => println!("lost the lease: {reason}"),
    }
    Ok(())
}

/// One pass of the control loop. A real controller compares desired with actual state here, and sends
/// `token` with its writes so that the target can reject a deposed leader's.
async fn reconcile(token: i32, step: u64) {
    println!("reconciled token={token} step={step}");
}

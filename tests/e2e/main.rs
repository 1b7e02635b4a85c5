//! The end-to-end suite: one integration binary. Every test runs the real `mpsync` binary as a separate
//! process against an API server over real HTTP: the test API server in `support/`, or a real cluster
//! when `MPSYNC_TEST_KUBECONFIG` names one. Tests written with `both_backends!` also run against the
//! file backend.

#[path = "../support/mod.rs"]
mod support;

/// For each `fn name(env: &TestEnv)`, generate `name::kube` and `name::file` tests.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn kube() {
                    super::$name(&crate::support::TestEnv::kube());
                }
                #[test]
                fn file() {
                    super::$name(&crate::support::TestEnv::file());
                }
            }
        )*
    };
}

mod adversary;
mod apiserver;
mod backends;
mod chaos;
mod client_go;
mod connect;
mod elect;
mod elect_faults;
mod elect_slots;
mod faults;
mod file_backend;
mod health;
mod image;
mod library;
mod library_faults;
mod lock;
mod proxy;
mod safety;
mod semaphore;
mod semaphore_faults;
mod sidecar;
mod sidecar_answers;
mod slot_name_check;
mod status;
mod stuck;
mod supervise;
mod terminal;

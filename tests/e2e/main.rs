//! The end-to-end suite: one integration binary. Every test runs the real `mpsync` binary as a separate
//! process against an API server over real HTTP: the test API server in `support/`, or a real cluster
//! when `MPSYNC_TEST_KUBECONFIG` names one.

#[path = "../support/mod.rs"]
mod support;

mod apiserver;
mod proxy;

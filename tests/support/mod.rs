//! Test support: the test API server, the command builder, and helpers to read and write leases.
#![allow(dead_code)]

pub mod apiserver;
pub mod proxy;

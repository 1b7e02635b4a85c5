//! The Kubernetes backend: `Api<Lease>` get, create, replace and a single-object watch.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::LeaseSpec;

use super::{StoreError, Watch};
use crate::lease::Versioned;

pub struct KubeStore {
    namespace: String,
}

impl KubeStore {
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub async fn get(&self, _name: &str) -> Result<Option<Versioned>, StoreError> {
        unimplemented!()
    }

    pub async fn create(&self, _name: &str, _record: &LeaseSpec) -> Result<Versioned, StoreError> {
        unimplemented!()
    }

    pub async fn replace(&self, _name: &str, _rv: &str, _record: &LeaseSpec) -> Result<Versioned, StoreError> {
        unimplemented!()
    }

    pub fn watch(&self, _name: &str, _retry_period: Duration) -> Watch {
        unimplemented!()
    }
}

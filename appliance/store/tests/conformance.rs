//! The service's store conformance suite, run against `RedbStore` in a temporary directory.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use std::sync::atomic::{AtomicUsize, Ordering};

use mdm_store::{RedbStore, StoreOptions};

async fn suite(opts: StoreOptions) {
    let dir = tempfile::tempdir().unwrap();
    let n = AtomicUsize::new(0);
    mdm_service::conformance::run_all(|| {
        let path = dir
            .path()
            .join(format!("case-{}.redb", n.fetch_add(1, Ordering::Relaxed)));
        RedbStore::open(&path, opts).unwrap()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_store_passes_the_conformance_suite() {
    suite(StoreOptions::default()).await;
}

/// Every write in its own transaction: the batching must not be what makes the suite pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_store_passes_the_conformance_suite_without_batching() {
    suite(StoreOptions {
        max_batch: 1,
        ..StoreOptions::default()
    })
    .await;
}

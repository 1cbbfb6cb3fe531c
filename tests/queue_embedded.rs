//! Embedded-store behaviour the shared suite cannot show: one owner per file, recovery at
//! open, and refusing to start on a store it cannot read.

mod queue_common;

use std::time::Duration;

use queue_common::*;
use volley::queue::{EmbeddedQueue, Queue, QueueError, SubmitOutcome};

#[tokio::test]
async fn a_second_open_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _q = open_embedded(dir.path(), Duration::from_secs(60)).await;
    let err = EmbeddedQueue::open(dir.path(), Duration::from_secs(60))
        .await
        .expect_err("second open");
    assert!(matches!(err, QueueError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("already open"), "{err}");
}

#[tokio::test]
async fn reopening_returns_leases_at_once_and_keeps_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = t0();
    let q = open_embedded(dir.path(), Duration::from_secs(3600)).await;
    let SubmitOutcome::Created { id, .. } =
        q.submit(job(t), recipients(4), t).await.expect("submit")
    else {
        panic!("not created");
    };
    assert_eq!(q.lease(3, t).await.expect("lease").len(), 3);
    drop(q);
    // Long before the hour-long lease ends, the new owner gets all four back.
    let q = open_embedded(dir.path(), Duration::from_secs(3600)).await;
    assert_eq!(q.depth(t).await.expect("depth").leased, 0);
    assert_eq!(q.lease(10, t).await.expect("lease").len(), 4);
    assert_eq!(
        q.job(&id).await.expect("job").expect("job").counts.queued,
        4
    );
}

#[tokio::test]
async fn an_unreadable_store_is_an_error_not_a_new_queue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("queue.redb");
    std::fs::write(&file, vec![0x5Au8; 64 * 1024]).expect("write garbage");
    let err = EmbeddedQueue::open(dir.path(), Duration::from_secs(60))
        .await
        .expect_err("garbage must not open");
    assert!(err.is_unavailable(), "{err:?}");
    // The file is left as it was for someone to look at.
    assert_eq!(std::fs::read(&file).expect("read").len(), 64 * 1024);

    // A path that is a file, not a directory.
    let not_dir = dir.path().join("plain");
    std::fs::write(&not_dir, b"x").expect("write");
    let err = EmbeddedQueue::open(&not_dir, Duration::from_secs(60))
        .await
        .expect_err("not a directory");
    assert!(matches!(err, QueueError::Io { .. }), "{err:?}");
}

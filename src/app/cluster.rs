//! Work that a cluster does once, not once per worker (posting webhooks, pruning):
//! run by whichever worker holds its lead in Redis, and taken over by another within a
//! lead's lifetime when that worker stops or dies.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::cluster::RedisCluster;

/// A lead lives this long unless renewed; it is renewed every third of it.
pub(crate) const LEAD_TTL: Duration = Duration::from_secs(10);

/// Runs `work` while this worker leads `name`, until `shutdown`. `work` gets a stop
/// signal that turns true when the lead is lost (then it must stop: another worker takes
/// over) or at shutdown; it is started again whenever the lead is won back.
pub(crate) async fn while_leading<W, F>(
    cluster: Arc<RedisCluster>,
    name: &'static str,
    mut shutdown: watch::Receiver<bool>,
    work: W,
) where
    W: Fn(watch::Receiver<bool>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let every = LEAD_TTL / 3;
    loop {
        match cluster.lead(name, LEAD_TTL).await {
            Ok(true) => {
                tracing::info!(lead = name, worker = cluster.worker(), "leading");
                let (stop, stopped) = watch::channel(false);
                let mut task = tokio::spawn(work(stopped));
                let mut finished = false;
                let ended_by_shutdown = loop {
                    tokio::select! {
                        _ = shutdown.wait_for(|stop| *stop) => break true,
                        _ = &mut task => {
                            finished = true;
                            break false;
                        }
                        () = tokio::time::sleep(every) => {}
                    }
                    match cluster.lead(name, LEAD_TTL).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(lead = name, "lead lost to another worker");
                            break false;
                        }
                        Err(e) => {
                            // Unsure whether we still lead: stop, as the lead may expire.
                            tracing::warn!(lead = name, error = %e, "cannot renew the lead; stopping its work");
                            break false;
                        }
                    }
                };
                let _ = stop.send(true);
                if !finished {
                    let _ = task.await;
                }
                if ended_by_shutdown {
                    if let Err(e) = cluster.resign(name).await {
                        tracing::warn!(lead = name, error = %e, "cannot resign the lead; it expires");
                    }
                    return;
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(lead = name, error = %e, "cannot ask for the lead"),
        }
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

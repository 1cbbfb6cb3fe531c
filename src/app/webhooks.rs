//! Feeds the queue's event log to the webhooks loop, and keeps the webhook cursor in
//! a file next to the embedded store, so a restart resumes where it stopped; on Redis,
//! one worker of the cluster posts, with the cursor in Redis.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::RedisCluster;
use crate::queue::{AnyQueue, Event, Queue};
use crate::webhooks::{self, EventSource, WebhookClient, WebhooksConfig};

/// How often an idle event log is asked again.
const POLL: Duration = Duration::from_millis(500);

struct QueueEvents {
    queue: Arc<AnyQueue>,
    cursor: CursorStore,
}

/// Where the webhook cursor is kept.
enum CursorStore {
    /// A file next to the embedded store.
    File(PathBuf),
    /// Redis, saved only while this worker still leads the webhooks, so a worker that
    /// lost the lead can never move the cursor past events the new leader has not posted.
    Cluster(Arc<RedisCluster>),
}

impl EventSource for QueueEvents {
    async fn events_after(&self, cursor: u64, limit: usize) -> Result<Vec<Event>, String> {
        self.queue
            .events(cursor, limit)
            .await
            .map_err(|e| e.to_string())
    }

    async fn save_cursor(&self, cursor: u64) -> Result<(), String> {
        match &self.cursor {
            CursorStore::File(file) => {
                // Write then rename, so a crash never leaves a torn cursor.
                let tmp = file.with_extension("tmp");
                tokio::fs::write(&tmp, cursor.to_string())
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::fs::rename(&tmp, file)
                    .await
                    .map_err(|e| e.to_string())
            }
            CursorStore::Cluster(cluster) => match cluster.save_webhook_cursor(cursor).await {
                Ok(true) => Ok(()),
                Ok(false) => Err("another worker leads the webhooks now".to_owned()),
                Err(e) => Err(e.to_string()),
            },
        }
    }
}

/// Starts webhook delivery when `[webhooks] url` is set; an invalid webhook
/// configuration stops volley from starting rather than silently dropping events.
/// The cursor is kept in `data_dir`.
pub(crate) fn start(
    config: &WebhooksConfig,
    queue: Arc<AnyQueue>,
    data_dir: &Path,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<JoinHandle<()>>, webhooks::WebhookError> {
    if !config.enabled() {
        return Ok(None);
    }
    let client = WebhookClient::new(config)?;
    let _ = std::fs::create_dir_all(data_dir);
    let cursor_file = data_dir.join("webhooks.cursor");
    let start = match std::fs::read_to_string(&cursor_file) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|_| webhooks::WebhookError::Config {
                field: "cursor",
                reason: format!(
                    "{} holds {:?}, not an event cursor; delete it to resend every event",
                    cursor_file.display(),
                    text.trim()
                ),
            })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => {
            return Err(webhooks::WebhookError::Config {
                field: "cursor",
                reason: format!("cannot read {}: {e}", cursor_file.display()),
            });
        }
    };
    let source = Arc::new(QueueEvents {
        queue,
        cursor: CursorStore::File(cursor_file),
    });
    Ok(Some(tokio::spawn(webhooks::run(
        client, source, start, POLL, shutdown,
    ))))
}

/// Starts the cluster's webhook delivery when `[webhooks] url` is set: one worker posts
/// each event (at least once across failures), whichever leads `webhooks`.
pub(crate) fn start_cluster(
    config: &WebhooksConfig,
    queue: Arc<AnyQueue>,
    cluster: Arc<RedisCluster>,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<JoinHandle<()>>, webhooks::WebhookError> {
    if !config.enabled() {
        return Ok(None);
    }
    let client = WebhookClient::new(config)?;
    let source = Arc::new(QueueEvents {
        queue,
        cursor: CursorStore::Cluster(Arc::clone(&cluster)),
    });
    let lead = Arc::clone(&cluster);
    Ok(Some(tokio::spawn(super::cluster::while_leading(
        lead,
        "webhooks",
        shutdown,
        move |stop| {
            let (client, source, cluster) =
                (client.clone(), Arc::clone(&source), Arc::clone(&cluster));
            async move {
                match cluster.webhook_cursor().await {
                    Ok(start) => webhooks::run(client, source, start, POLL, stop).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the cluster's webhook cursor");
                    }
                }
            }
        },
    ))))
}

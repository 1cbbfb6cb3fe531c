//! Feeds the queue's event log to the webhooks loop, and keeps the webhook cursor in
//! a file next to the embedded store, so a restart resumes where it stopped.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::queue::{AnyQueue, Queue};
use crate::webhooks::{self, EventSource, WebhookClient, WebhookEvent};

/// How often an idle event log is asked again.
const POLL: Duration = Duration::from_millis(500);

struct QueueEvents {
    queue: Arc<AnyQueue>,
    cursor_file: PathBuf,
}

impl EventSource for QueueEvents {
    async fn events_after(&self, cursor: u64, limit: usize) -> Result<Vec<WebhookEvent>, String> {
        let events = self
            .queue
            .events(cursor, limit)
            .await
            .map_err(|e| e.to_string())?;
        Ok(events
            .into_iter()
            .map(|e| WebhookEvent {
                cursor: e.cursor,
                job: e.job.to_string(),
                index: e.index,
                to: e.to,
                event: e.kind.name().to_owned(),
                reply: e.reply,
                at: webhooks::rfc3339(e.at),
            })
            .collect())
    }

    async fn save_cursor(&self, cursor: u64) -> Result<(), String> {
        // Write then rename, so a crash never leaves a torn cursor.
        let tmp = self.cursor_file.with_extension("tmp");
        tokio::fs::write(&tmp, cursor.to_string())
            .await
            .map_err(|e| e.to_string())?;
        tokio::fs::rename(&tmp, &self.cursor_file)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Starts webhook delivery when `[webhooks] url` is set; an invalid webhook
/// configuration stops volley from starting rather than silently dropping events.
pub(crate) fn start(
    app: &App,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<JoinHandle<()>>, webhooks::WebhookError> {
    let config = &app.config.webhooks;
    if !config.enabled() {
        return Ok(None);
    }
    let client = WebhookClient::new(config)?;
    let dir = app.config.queue.path.clone();
    let _ = std::fs::create_dir_all(&dir);
    let cursor_file = dir.join("webhooks.cursor");
    let start = std::fs::read_to_string(&cursor_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let source = Arc::new(QueueEvents {
        queue: Arc::clone(&app.queue),
        cursor_file,
    });
    Ok(Some(tokio::spawn(webhooks::run(
        client, source, start, POLL, shutdown,
    ))))
}

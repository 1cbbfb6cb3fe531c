//! Dispatch: between the queue and the engine, both ways.
//!
//! - [`feeder`](self) leases due deliveries in batches (only as many as the engine has
//!   room for), skips suppressed addresses, builds each message (once per job for
//!   one-off messages, per recipient for campaigns, on every core) and hands it to
//!   the engine.
//! - the completer turns the engine's reports into queue resolutions with the retry
//!   schedule and commits them in groups: one durable write per batch, never an
//!   acknowledgement before it.
//! - [`decide`](self) holds the decisions both make, as pure functions of their inputs
//!   and the time, so they are tested apart from any queue or engine.

mod completer;
mod decide;
mod feeder;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::SystemTime;

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use self::completer::Completer;
use self::feeder::Feeder;
use crate::compose::Composer;
use crate::engine::{Engine, Report};
use crate::message::ReturnPath;
use crate::metrics::Metrics;
use crate::queue::{AnyQueue, DeliveryId};
use crate::retry::RetryConfig;

/// What the engine carries for each delivery, and gives back in its report.
#[derive(Debug, Clone)]
pub struct DeliveryKey {
    /// The queue's id of the delivery.
    pub id: DeliveryId,
    /// Attempts completed before this one.
    pub attempts: u32,
    /// When the job was accepted (the start of its maximum age).
    pub created: SystemTime,
}

/// Everything the dispatcher is built from.
#[derive(Debug)]
pub struct DispatchDeps {
    /// Where deliveries are leased from and outcomes committed to.
    pub queue: Arc<AnyQueue>,
    /// Builds each recipient's message.
    pub composer: Arc<Composer>,
    /// Sends the built messages.
    pub engine: Engine<DeliveryKey>,
    /// The engine's reports, one per delivery handed to it.
    pub reports: mpsc::UnboundedReceiver<Report<DeliveryKey>>,
    /// Most deliveries inside the engine at once (its backlog).
    pub capacity: usize,
    /// `[retry]`: when a deferred delivery is tried again, and when it expires.
    pub retry: RetryConfig,
    /// `[message] return_path`: the envelope sender, fixed or VERP.
    pub return_path: Option<ReturnPath>,
    /// Counts what the dispatcher decides itself (suppressed, expired).
    pub metrics: Arc<Metrics>,
    /// Notified when a submission was stored, so the feeder leases at once
    /// instead of at its next poll.
    pub wake: Arc<Notify>,
}

/// The running dispatcher: its two tasks, to wait for at shutdown.
#[derive(Debug)]
pub struct Dispatch {
    feeder: JoinHandle<()>,
    completer: JoinHandle<()>,
}

impl Dispatch {
    /// Starts feeder and completer; they stop when `shutdown` turns true, after the
    /// engine finished what it had in flight and every lease was resolved or released.
    pub fn start(deps: DispatchDeps, shutdown: watch::Receiver<bool>) -> Self {
        let inflight = Arc::new(AtomicUsize::new(0));
        let (direct_tx, direct_rx) = mpsc::unbounded_channel();
        let completer = Completer {
            queue: Arc::clone(&deps.queue),
            retry: deps.retry,
            metrics: Arc::clone(&deps.metrics),
            inflight: Arc::clone(&inflight),
        };
        let completer = tokio::spawn(completer.run(deps.reports, direct_rx));
        let feeder = Feeder::new(
            deps.queue,
            deps.composer,
            deps.return_path,
            deps.capacity,
            inflight,
            direct_tx,
            deps.wake,
        );
        let feeder = tokio::spawn(feeder.run(deps.engine, shutdown));
        Self { feeder, completer }
    }

    /// Waits until both halves have stopped.
    pub async fn join(self) {
        let _ = self.feeder.await;
        let _ = self.completer.await;
    }
}

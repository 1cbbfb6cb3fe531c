//! Dispatch: between the queue and the engine, both ways.
//!
//! - the feeder leases due deliveries in batches (only as many as the engine has room
//!   for), checks them (the job, the suppression list — failing closed —, the address,
//!   the domain's share of the engine), builds each message (once per job for one-off
//!   messages, per recipient for campaigns, on every core) and hands it to the engine.
//! - the completer turns the engine's reports into queue completions, each under its
//!   lease's fencing token, and commits them in groups: one durable write per batch,
//!   never an acknowledgement before it.
//! - the renewer extends every lease the dispatcher holds, a third of the lease time
//!   apart, so that deliveries waiting behind a rate limit, a throttled site or a slow
//!   server are never leased a second time; a lease found lost is cancelled in the
//!   engine before it is sent.
//! - `ledger` is what the three share: the leases held and each domain's share of the
//!   engine; `decide` holds the decisions, as pure functions of their inputs and the
//!   time; `cache` bounds the jobs' specs and bodies kept in memory by bytes.

mod cache;
mod completer;
mod decide;
mod feeder;
mod ledger;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use self::completer::Completer;
pub use self::completer::Unstored;
use self::feeder::{Feeder, FeederParts};
use self::ledger::Ledger;
use crate::compose::Composer;
use crate::engine::{Engine, Report};
use crate::message::ReturnPath;
use crate::metrics::{Counter, Metrics};
use crate::queue::{AnyQueue, DeliveryId, LeaseToken, Queue};
use crate::retry::RetryConfig;

/// What the engine carries for each delivery, and gives back in its report.
#[derive(Debug, Clone)]
pub struct DeliveryKey {
    /// The queue's id of the delivery.
    pub id: DeliveryId,
    /// The fencing token of the lease it is sent under.
    pub token: LeaseToken,
    /// Attempts completed before this one.
    pub attempts: u32,
    /// When the job was accepted.
    pub created: SystemTime,
    /// When the first attempt was recorded (the start of the maximum age).
    pub first_attempt: Option<SystemTime>,
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
    /// Most deliveries leased at once (the engine's backlog).
    pub capacity: usize,
    /// `[queue] lease`: the renewer extends held leases a third of this apart.
    pub lease: Duration,
    /// `[retry]`: when a deferred delivery is tried again, and when it expires.
    pub retry: RetryConfig,
    /// `[message] return_path`: the envelope sender, fixed or VERP.
    pub return_path: Option<ReturnPath>,
    /// Counts what the dispatcher decides itself and the queue's failures.
    pub metrics: Arc<Metrics>,
    /// Notified when a submission was stored, so the feeder leases at once
    /// instead of at its next poll.
    pub wake: Arc<Notify>,
    /// Bytes of job specs and built bodies kept in memory.
    pub cache_bytes: usize,
    /// How long the last outcomes may keep failing to be stored at shutdown.
    pub shutdown_timeout: Duration,
}

/// The running dispatcher: its tasks, to wait for at shutdown.
#[derive(Debug)]
pub struct Dispatch {
    feeder: JoinHandle<()>,
    completer: JoinHandle<Unstored>,
    renewer: JoinHandle<()>,
    stop_renewing: watch::Sender<bool>,
}

impl Dispatch {
    /// Starts feeder, completer and renewer; they stop when `shutdown` turns true, after
    /// the engine finished what it had in flight and every lease was resolved or
    /// released.
    pub fn start(deps: DispatchDeps, shutdown: watch::Receiver<bool>) -> Self {
        let ledger = Arc::new(Mutex::new(Ledger::new(deps.capacity)));
        let (direct_tx, direct_rx) = mpsc::unbounded_channel();
        let completer = Completer {
            queue: Arc::clone(&deps.queue),
            retry: deps.retry,
            metrics: Arc::clone(&deps.metrics),
            ledger: Arc::clone(&ledger),
            shutdown_timeout: deps.shutdown_timeout,
        };
        let completer = tokio::spawn(completer.run(deps.reports, direct_rx));
        // The renewer outlives the feeder's shutdown: leases are kept while the engine
        // finishes, and stops only once the completer is done.
        let (stop_renewing, renewing) = watch::channel(false);
        let renewer = tokio::spawn(renew(
            Arc::clone(&deps.queue),
            Arc::clone(&ledger),
            Arc::clone(&deps.metrics),
            deps.lease,
            renewing,
        ));
        let feeder = Feeder::new(FeederParts {
            queue: deps.queue,
            composer: deps.composer,
            return_path: deps.return_path,
            capacity: deps.capacity,
            ledger,
            direct: direct_tx,
            wake: deps.wake,
            metrics: deps.metrics,
            cache_bytes: deps.cache_bytes,
        });
        let feeder = tokio::spawn(feeder.run(deps.engine, shutdown));
        Self {
            feeder,
            completer,
            renewer,
            stop_renewing,
        }
    }

    /// Waits until every task has stopped; says how many outcomes could not be stored.
    pub async fn join(self) -> Unstored {
        let _ = self.feeder.await;
        let unstored = self.completer.await.unwrap_or_default();
        let _ = self.stop_renewing.send(true);
        let _ = self.renewer.await;
        unstored
    }
}

/// Extends every held lease a third of the lease time apart (at least every second),
/// until told to stop. A lease the queue says is lost is cancelled in the engine, so it
/// is not sent if it has not been yet; a failed renewal is tried again at the next tick.
async fn renew(
    queue: Arc<AnyQueue>,
    ledger: Arc<Mutex<Ledger>>,
    metrics: Arc<Metrics>,
    lease: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let every = (lease / 3).max(Duration::from_millis(200));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let held = ledger.lock().unwrap_or_else(|e| e.into_inner()).held();
        if held.is_empty() {
            continue;
        }
        match queue.renew(held, SystemTime::now()).await {
            Ok(lost) if lost.is_empty() => {}
            Ok(lost) => {
                let n = ledger.lock().unwrap_or_else(|e| e.into_inner()).lose(&lost);
                if n > 0 {
                    metrics.add(Counter::LeasesLost, n as u64);
                    tracing::warn!(
                        lost = n,
                        "leases lost (taken over after running out): those not yet sent are cancelled"
                    );
                }
            }
            Err(e) => {
                metrics.add(Counter::QueueErrors, 1);
                tracing::error!(error = %e, "cannot renew leases; trying again");
            }
        }
    }
}

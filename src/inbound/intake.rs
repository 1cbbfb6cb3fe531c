//! What the submission listener decides and stores: who may send (an authenticated user,
//! or a client in a trusted network), at what rate, to which addresses, and each accepted
//! message as a job of kind `smtp`, stored durably before the 250.
//!
//! Messages from every connection go through one committer task, which stores those
//! that wait together in one durable write ([`Queue::submit_batch`]): under load, one
//! disk sync for many messages, and still none answered before it is stored.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use base64::Engine as _;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::address::{Address, suppression_key};
use crate::compose::{JobSpec, StoredMailbox};
use crate::message::prepare_submitted;
use crate::queue::{AnyQueue, JobId, JobKind, NewJob, NewRecipient, Queue, SubmitOutcome};
use crate::rate::{Limiter, Rate};
use crate::smtp::server::{Envelope, ServerReply};

/// Who is sending on a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Sender {
    /// An authenticated user.
    User(String),
    /// A client in `trusted_networks`, by address.
    Trusted(IpAddr),
}

impl Sender {
    /// Who may send: the user, else a trusted client, else nobody.
    pub fn of(user: Option<&str>, peer: IpAddr, trusted: bool) -> Option<Self> {
        match (user, trusted) {
            (Some(user), _) => Some(Self::User(user.to_owned())),
            (None, true) => Some(Self::Trusted(peer)),
            (None, false) => None,
        }
    }

    fn tag(&self) -> String {
        match self {
            Self::User(user) => format!("smtp-user:{user}"),
            Self::Trusted(ip) => format!("smtp-client:{ip}"),
        }
    }
}

/// Submissions stored in one write at most.
const BATCH: usize = 512;

/// Under concurrent load, how long the committer gathers before a write. One disk sync
/// costs as much CPU as a few dozen SMTP replies on a virtual disk; waiting this long for
/// the sessions in flight took 50 `smtp-source` sessions from about 6 messages per sync
/// to about 15, and 3.5 page writes per message to 2.1 (`loadtest/smtp-inject.sh`).
const GATHER: std::time::Duration = std::time::Duration::from_millis(2);

/// A write that already holds this many goes without gathering more.
const GATHERED: usize = 32;

/// A message waiting for the committer, and where its answer goes.
type Pending = (
    NewJob,
    Vec<NewRecipient>,
    oneshot::Sender<Result<JobId, ServerReply>>,
);

/// The submission listener's decisions and storage.
pub struct Intake {
    commits: mpsc::Sender<Pending>,
    message_id_domain: String,
    rate: Rate,
    limiters: Mutex<HashMap<Sender, Arc<Limiter>>>,
    pools: Pools,
}

/// Which egress pool a sender's mail leaves from.
#[derive(Clone, Debug, Default)]
pub struct Pools {
    /// Users with their own pool.
    pub users: HashMap<String, String>,
    /// Everyone else (trusted clients, users without one); `None`: the default pool.
    pub others: Option<String>,
}

impl Pools {
    fn of(&self, sender: &Sender) -> Option<String> {
        match sender {
            Sender::User(user) => self.users.get(user).cloned(),
            Sender::Trusted(_) => None,
        }
        .or_else(|| self.others.clone())
    }
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake")
            .field("message_id_domain", &self.message_id_domain)
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

impl Intake {
    /// Stores into `queue` and wakes the dispatcher with `wake`; `rate` applies to each
    /// sender; added Message-IDs are `@message_id_domain`. Starts the committer task,
    /// which ends when the intake is dropped.
    pub fn new(
        queue: Arc<AnyQueue>,
        wake: Arc<Notify>,
        message_id_domain: String,
        rate: Rate,
    ) -> Self {
        let (commits, pending) = mpsc::channel(BATCH * 4);
        tokio::spawn(commit(queue, wake, pending));
        Self {
            commits,
            message_id_domain,
            rate,
            limiters: Mutex::new(HashMap::new()),
            pools: Pools::default(),
        }
    }

    /// Sends each sender's mail from its egress pool.
    pub fn with_pools(mut self, pools: Pools) -> Self {
        self.pools = pools;
        self
    }

    /// MAIL FROM: only a known sender, a valid (or null) reverse path, within its rate.
    pub fn mail(&self, sender: Option<&Sender>, from: &str) -> Result<(), ServerReply> {
        let Some(sender) = sender else {
            return Err(ServerReply::new(530, "5.7.0", "authentication required"));
        };
        if !from.is_empty() && Address::parse(from).is_err() {
            return Err(ServerReply::new(553, "5.1.7", "bad sender address"));
        }
        if let Some(limiter) = self.limiter(sender)
            && !limiter.try_acquire()
        {
            return Err(ServerReply::new(
                450,
                "4.7.1",
                "sending rate exceeded; try again later",
            ));
        }
        Ok(())
    }

    fn limiter(&self, sender: &Sender) -> Option<Arc<Limiter>> {
        if !self.rate.is_limited() {
            return None;
        }
        let mut limiters = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(limiter) = limiters.get(sender) {
            return Some(Arc::clone(limiter));
        }
        let limiter = Arc::new(self.rate.limiter()?);
        limiters.insert(sender.clone(), Arc::clone(&limiter));
        Some(limiter)
    }

    /// RCPT TO: a valid address.
    pub fn rcpt(&self, to: &str) -> Result<(), ServerReply> {
        match Address::parse(to) {
            Ok(_) => Ok(()),
            Err(e) => Err(ServerReply::new(
                553,
                "5.1.3",
                format!("bad recipient address: {e}"),
            )),
        }
    }

    /// Stores a message as a job: its id, or the reply that refuses it (the client's
    /// fault: 5xx; ours: 4xx, try again).
    pub async fn store(
        &self,
        sender: Option<&Sender>,
        envelope: Envelope,
    ) -> Result<String, ServerReply> {
        let Some(sender) = sender else {
            return Err(ServerReply::new(530, "5.7.0", "authentication required"));
        };
        let prepared = prepare_submitted(&envelope.content, &self.message_id_domain)
            .map_err(|e| ServerReply::new(554, "5.6.0", e.to_string()))?;
        let spec = JobSpec {
            kind: JobKind::Smtp,
            from: StoredMailbox {
                name: None,
                address: envelope.from,
            },
            to: Vec::new(),
            cc: Vec::new(),
            reply_to: None,
            subject: None,
            text: None,
            html: None,
            template: None,
            vars: serde_json::Map::new(),
            headers: Vec::new(),
            attachments: Vec::new(),
            tags: vec![sender.tag()],
            list: None,
            pool: self.pools.of(sender).map(Into::into),
            raw: Some(base64::engine::general_purpose::STANDARD.encode(prepared)),
        };
        // The same person named twice gets one copy, as with the API.
        let mut seen = HashSet::new();
        let recipients: Vec<NewRecipient> = envelope
            .to
            .into_iter()
            .filter(|to| seen.insert(suppression_key(to)))
            .map(|to| NewRecipient {
                to,
                vars: b"{}".to_vec(),
            })
            .collect();
        let now = SystemTime::now();
        let job = NewJob {
            id: JobId::new(now),
            kind: JobKind::Smtp,
            payload: spec.to_payload(),
            send_at: None,
            idempotency: None,
        };
        let (answer, answered) = oneshot::channel();
        if self.commits.send((job, recipients, answer)).await.is_err() {
            return Err(unavailable());
        }
        match answered.await {
            Ok(result) => result.map(|id| id.to_string()),
            Err(_) => Err(unavailable()),
        }
    }
}

/// The committer: takes what waits (at most [`BATCH`]), stores it in one write, answers
/// each, wakes the dispatcher. When the last write carried more than one message (several
/// clients at once), it first gathers for [`GATHER`]: a lone client's message is stored at
/// once, many clients' share a sync.
async fn commit(queue: Arc<AnyQueue>, wake: Arc<Notify>, mut pending: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut last = 0;
    while pending.recv_many(&mut batch, BATCH).await > 0 {
        if last > 1 && batch.len() < GATHERED {
            tokio::time::sleep(GATHER).await;
            while batch.len() < BATCH {
                match pending.try_recv() {
                    Ok(more) => batch.push(more),
                    Err(_) => break,
                }
            }
        }
        last = batch.len();
        let (jobs, answers): (Vec<_>, Vec<_>) = batch
            .drain(..)
            .map(|(job, recipients, answer)| ((job, recipients), answer))
            .unzip();
        let n = jobs.len();
        let results = match queue.submit_batch(jobs, SystemTime::now()).await {
            Ok(results) => results,
            Err(e) => {
                tracing::warn!(error = %e, messages = n, "cannot store SMTP submissions; the clients will retry");
                for answer in answers {
                    let _ = answer.send(Err(unavailable()));
                }
                continue;
            }
        };
        let mut stored = false;
        for (result, answer) in results.into_iter().zip(answers) {
            let reply = match result {
                Ok(SubmitOutcome::Created { id, .. } | SubmitOutcome::Existing { id, .. }) => {
                    stored = true;
                    Ok(id)
                }
                Ok(other) => {
                    tracing::error!(?other, "an SMTP submission without a key was not created");
                    Err(unavailable())
                }
                Err(e) if e.is_invalid() => Err(ServerReply::new(554, "5.6.0", e.to_string())),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot store an SMTP submission; the client will retry");
                    Err(unavailable())
                }
            };
            // A client gone before its 250 may send the message again: SMTP's own
            // duplicate window (RFC 1047), as short as one write.
            let _ = answer.send(reply);
        }
        if stored {
            wake.notify_one();
        }
    }
}

fn unavailable() -> ServerReply {
    ServerReply::new(
        451,
        "4.3.0",
        "cannot store the message now; try again later",
    )
}

impl super::listener::Policy for Intake {
    fn mail(&self, sender: Option<&Sender>, from: &str) -> Result<(), ServerReply> {
        Intake::mail(self, sender, from)
    }

    fn rcpt(&self, _: Option<&Sender>, to: &str) -> Result<(), ServerReply> {
        Intake::rcpt(self, to)
    }

    async fn store(
        &self,
        sender: Option<&Sender>,
        envelope: Envelope,
    ) -> Result<String, ServerReply> {
        Intake::store(self, sender, envelope).await
    }
}

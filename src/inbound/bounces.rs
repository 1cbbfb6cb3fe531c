//! The bounce and complaint intake: mail for `[bounces] domains`, from anyone and without
//! AUTH, as receiving servers and feedback loops send it. Each message is read as a
//! report ([`super::reports`]) and tied to its delivery by a signed VERP address — the
//! one it was sent to, or one in the original message it quotes. A report that names no
//! delivery with a valid signature is ignored and counted: a forged bounce for a made-up
//! address never suppresses anyone. What remains becomes an event marked `async`
//! (`bounced`, `deferred` for a delay, `complained`), and hard bounces and complaints
//! suppress the address for all mail.
//!
//! Every message is answered 250 once read (a report volley cannot use is still not
//! bounced back: that would be backscatter); only our own storage failures get a 451,
//! so that the sender tries again.

use std::sync::Arc;
use std::time::SystemTime;

use super::intake::Sender;
use super::listener::Policy;
use super::reports::{self, Report};
use crate::event::EventKind;
use crate::message::{BounceKey, verify_signed_verp};
use crate::metrics::{Counter, Metrics};
use crate::outcome::{LateVerdict, classify_late};
use crate::queue::{AnyQueue, DeliveryId, JobId, LateOutcome, LateReport, Queue};
use crate::smtp::server::{Envelope, ServerReply};

/// The bounce listener's policy.
pub struct BounceIntake {
    queue: Arc<AnyQueue>,
    metrics: Arc<Metrics>,
    key: BounceKey,
    /// Lower-case domains mail is taken for.
    domains: Vec<String>,
}

impl std::fmt::Debug for BounceIntake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BounceIntake")
            .field("domains", &self.domains)
            .finish_non_exhaustive()
    }
}

impl BounceIntake {
    /// Takes mail for `domains`, checks signatures with `key`, records into `queue`.
    pub fn new(
        queue: Arc<AnyQueue>,
        metrics: Arc<Metrics>,
        key: BounceKey,
        domains: &[String],
    ) -> Self {
        Self {
            queue,
            metrics,
            key,
            domains: domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
        }
    }

    /// The delivery a message names: the first signed address among its recipients, then
    /// in its content.
    fn delivery(&self, envelope: &Envelope, candidates: &[String]) -> Option<DeliveryId> {
        envelope
            .to
            .iter()
            .chain(candidates)
            .find_map(|addr| verify_signed_verp(addr, &self.key))
            .and_then(|(job, index)| {
                let job: JobId = job.parse().ok()?;
                Some(DeliveryId { job, index })
            })
    }

    /// What the report says about its delivery, as a late report; `None` when it says
    /// nothing to act on (delivered, relayed, a vague text).
    fn late_report(id: DeliveryId, report: &Report) -> Option<LateReport> {
        let (verdict, reply) = match report {
            Report::Delivery(recipients) => recipients.iter().find_map(|r| {
                let verdict = classify_late(&r.action, &r.status, &r.diagnostic);
                // The status first, unless the diagnostic quotes it already.
                let reply = if r.diagnostic.is_empty() {
                    format!("{} {}", r.status, r.action)
                } else if r.diagnostic.contains(r.status.as_str()) {
                    r.diagnostic.clone()
                } else {
                    format!("{} {}", r.status, r.diagnostic)
                };
                (verdict != LateVerdict::Nothing).then_some((verdict, reply))
            })?,
            Report::Complaint { feedback_type } => {
                // `not-spam`, `auth-failure`, `virus`, ...: not a complaint about us.
                if !reports::COMPLAINTS.contains(&feedback_type.as_str()) {
                    return None;
                }
                return Some(LateReport {
                    id,
                    kind: EventKind::Complained,
                    reply: format!("complaint: {feedback_type}"),
                    suppress: Some(format!("complaint: {feedback_type}")),
                });
            }
            Report::Plain { reply } => {
                let reply = reply.clone()?;
                let status = reply.split_whitespace().nth(1).unwrap_or_default();
                (classify_late("failed", status, &reply), reply)
            }
        };
        let shown: String = reply.chars().take(400).collect();
        match verdict {
            LateVerdict::Bounced { suppress } => Some(LateReport {
                id,
                kind: EventKind::Bounced,
                suppress: suppress.then(|| format!("bounced later: {shown}")),
                reply: shown,
            }),
            LateVerdict::Delayed => Some(LateReport {
                id,
                kind: EventKind::Deferred,
                reply: shown,
                suppress: None,
            }),
            LateVerdict::Nothing => None,
        }
    }

    fn ignored(&self, why: &str) -> Result<String, ServerReply> {
        self.metrics.add(Counter::LateReportsIgnored, 1);
        tracing::info!(why, "a message at the bounce listener was ignored");
        Ok("ignored".to_owned())
    }
}

impl Policy for BounceIntake {
    fn mail(&self, _: Option<&Sender>, _: &str) -> Result<(), ServerReply> {
        Ok(())
    }

    fn rcpt(&self, _: Option<&Sender>, to: &str) -> Result<(), ServerReply> {
        let domain = to.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase());
        if domain.is_some_and(|d| self.domains.contains(&d)) {
            Ok(())
        } else {
            Err(ServerReply::new(
                550,
                "5.7.1",
                "relaying denied: not a bounce domain of this server",
            ))
        }
    }

    async fn store(
        &self,
        _: Option<&Sender>,
        mut envelope: Envelope,
    ) -> Result<String, ServerReply> {
        // Anybody can send here, up to the size limit: parse off the runtime's threads.
        let content = std::mem::take(&mut envelope.content);
        let parsed = tokio::task::spawn_blocking(move || reports::parse(&content))
            .await
            .ok()
            .flatten();
        let Some(parsed) = parsed else {
            return self.ignored("not a message");
        };
        let Some(id) = self.delivery(&envelope, &parsed.candidates) else {
            return self.ignored("names no delivery with a valid signature");
        };
        let Some(report) = Self::late_report(id, &parsed.report) else {
            return self.ignored("reports nothing to act on");
        };
        let kind = report.kind;
        match self.queue.record_late(report, SystemTime::now()).await {
            Ok(LateOutcome::Recorded { to }) => {
                self.metrics.add(Counter::LateReports, 1);
                match kind {
                    EventKind::Complained => self.metrics.count(EventKind::Complained),
                    EventKind::Bounced => self.metrics.add(Counter::LateBounces, 1),
                    _ => {}
                }
                tracing::info!(job = %id.job, index = id.index, to, event = kind.as_str(), "late report");
                Ok(format!("{id}"))
            }
            Ok(LateOutcome::UnknownDelivery) => self.ignored("its delivery is no longer stored"),
            Err(e) => {
                self.metrics.add(Counter::QueueErrors, 1);
                tracing::warn!(error = %e, "cannot record a late report; the sender will retry");
                Err(ServerReply::new(
                    451,
                    "4.3.0",
                    "cannot record the report now; try again later",
                ))
            }
        }
    }
}

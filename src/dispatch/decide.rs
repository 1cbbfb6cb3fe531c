//! The dispatcher's decisions, as pure functions of what they look at and the time:
//! what becomes of a lease before its message is built, of a message that cannot be
//! built, and of an attempt the engine reported. The feeder and the completer only
//! carry them out.

use std::time::{Duration, SystemTime};

use crate::address::Address;
use crate::compose::ComposeError;
use crate::outcome::Outcome;
use crate::queue::Resolution;
use crate::retry::{Decision, RetryConfig, expiry_detail};

/// How long a message that cannot be built for a reason of ours (a DKIM key file that
/// cannot be read, a stored job that does not decode) waits before the next try.
pub(super) const BUILD_RETRY: Duration = Duration::from_secs(60);

/// What to do with a lease before its message is built: the address to send to, or
/// the resolution that ends it here.
pub(super) fn before_build(to: &str, suppressed: bool) -> Result<Address, Resolution> {
    if suppressed {
        return Err(Resolution::Suppressed);
    }
    // An internationalised domain goes on the wire as A-labels: no SMTPUTF8 needed
    // unless the local part itself is non-ASCII.
    Address::parse(to)
        .map(|a| a.with_ascii_domain())
        .map_err(|e| Resolution::Bounced {
            reply: format!("5.1.3 invalid recipient address {to:?}: {e}"),
            suppress: false,
        })
}

/// The resolution of a message that could not be built: the submitter's content is
/// bounced; our own trouble (keys, storage) is retried.
pub(super) fn after_build_failure(err: &ComposeError, now: SystemTime) -> Resolution {
    if err.is_submitters_fault() {
        Resolution::Bounced {
            reply: format!("5.6.0 the message cannot be built: {err}"),
            suppress: false,
        }
    } else {
        Resolution::Retry {
            at: now + BUILD_RETRY,
            reply: format!("4.3.0 the message cannot be built now: {err}"),
        }
    }
}

/// The resolution of attempt number `attempts` (1 for the first) of a delivery first
/// attempted at `first_attempt` (`None`: this is its first attempt). The maximum age
/// counts from the first attempt, not from submission: a message scheduled far ahead,
/// or one that waited out an outage in the queue, still gets its whole retry schedule.
/// A bounce that says the mailbox does not exist suppresses the address.
pub(super) fn after_attempt(
    outcome: &Outcome,
    attempts: u32,
    first_attempt: Option<SystemTime>,
    retry: &RetryConfig,
    now: SystemTime,
) -> Resolution {
    let reply = outcome.detail.clone();
    let start = first_attempt.unwrap_or(now);
    match retry.decide(outcome, attempts, start, now) {
        Decision::Delivered => Resolution::Delivered { reply },
        Decision::Bounce => Resolution::Bounced {
            reply,
            suppress: outcome.suppress,
        },
        Decision::RetryAt(at) => Resolution::Retry { at, reply },
        Decision::Expire => Resolution::Expired {
            reply: expiry_detail(outcome),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MessageError;
    use crate::outcome::classify;
    use crate::smtp::{Phase, ReplyParser, SmtpError};

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn refused(phase: Phase, wire: &str) -> Outcome {
        let reply = ReplyParser::parse_slice(format!("{wire}\r\n").as_bytes())
            .unwrap()
            .unwrap();
        classify(&Err(SmtpError::Reply { phase, reply }))
    }

    fn retry() -> RetryConfig {
        RetryConfig {
            schedule: vec![Duration::from_secs(60), Duration::from_secs(600)],
            max_age: Duration::from_secs(3600),
            jitter: 0.0,
        }
    }

    #[test]
    fn a_lease_is_suppressed_bounced_as_invalid_or_sent_as_a_labels() {
        assert_eq!(
            before_build("a@example.com", true),
            Err(Resolution::Suppressed)
        );
        let Err(Resolution::Bounced {
            reply,
            suppress: false,
        }) = before_build("not an address", false)
        else {
            panic!("an invalid stored address bounces")
        };
        assert!(reply.starts_with("5.1.3"), "{reply}");
        let to = before_build("anna@bücher.example", false).unwrap();
        assert_eq!(to.as_str(), "anna@xn--bcher-kva.example");
    }

    #[test]
    fn build_failures_bounce_only_when_the_content_is_at_fault() {
        let content = ComposeError::Message(MessageError::ReservedHeader {
            header: "From".into(),
        });
        assert!(matches!(
            after_build_failure(&content, t(0)),
            Resolution::Bounced { .. }
        ));
        let ours = ComposeError::Stored("attachments[0]: bad base64".into());
        assert_eq!(
            after_build_failure(&ours, t(0)),
            Resolution::Retry {
                at: t(60),
                reply: "4.3.0 the message cannot be built now: the stored job is unreadable: \
                        attachments[0]: bad base64"
                    .into()
            }
        );
    }

    #[test]
    fn attempts_resolve_by_the_schedule_and_the_age() {
        let retry = retry();
        let delivered = classify(&Ok(ReplyParser::parse_slice(b"250 2.0.0 ok\r\n")
            .unwrap()
            .unwrap()));
        assert_eq!(
            after_attempt(&delivered, 1, None, &retry, t(5)),
            Resolution::Delivered {
                reply: "250 2.0.0 ok".into()
            }
        );
        let unknown = refused(Phase::Rcpt, "550 5.1.1 no such user");
        assert!(matches!(
            after_attempt(&unknown, 1, None, &retry, t(5)),
            Resolution::Bounced { suppress: true, .. }
        ));
        let later = refused(Phase::Rcpt, "451 4.3.0 later");
        assert_eq!(
            after_attempt(&later, 1, None, &retry, t(5)),
            Resolution::Retry {
                at: t(65),
                reply: later.detail.clone()
            }
        );
        let expired = after_attempt(&later, 2, Some(t(0)), &retry, t(3500));
        let Resolution::Expired { reply } = expired else {
            panic!("past the maximum age a deferral expires: {expired:?}")
        };
        assert!(reply.starts_with("4.4.7"), "{reply}");
    }

    #[test]
    fn the_maximum_age_counts_from_the_first_attempt() {
        let retry = retry();
        let later = refused(Phase::Rcpt, "451 4.3.0 later");
        // Accepted long ago (a send_at a day ahead, or an outage): the first attempt
        // still gets the whole schedule.
        assert!(matches!(
            after_attempt(&later, 1, None, &retry, t(86_400)),
            Resolution::Retry { .. }
        ));
        assert!(matches!(
            after_attempt(&later, 2, Some(t(86_400)), &retry, t(86_400 + 600)),
            Resolution::Retry { .. }
        ));
        assert!(matches!(
            after_attempt(&later, 3, Some(t(86_400)), &retry, t(86_400 + 3_100)),
            Resolution::Expired { .. }
        ));
    }
}

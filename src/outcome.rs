//! Outcome classification: the one place that decides what a reply or a transport
//! error means for a recipient.
//!
//! Per recipient the answer is delivered, transient (retry later) or permanent
//! (bounce). Separately, [`Scope`] says whose fault it is: this recipient, this
//! message, or the connection (421, resets, timeouts, TLS failures), which is not the
//! message's fault and calls for another MX or a later retry of the whole site.
//! It reads the basic code, the enhanced code (RFC 3463) and the transport error;
//! reply texts are consulted only where providers are known to omit enhanced codes.

use crate::route::RouteError;
use crate::smtp::{EnhancedCode, Phase, Reply, SmtpError};

/// What happens to the recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// The server took responsibility for the message.
    Delivered,
    /// Try again later.
    Transient,
    /// Do not try again: bounce.
    Permanent,
}

/// Whose fault a failure is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// This recipient only (a RCPT refusal).
    Recipient,
    /// This message (MAIL, DATA, content refusals, local size or encoding refusals).
    Message,
    /// The connection or the site: not the message's fault.
    Connection,
}

/// The classification of one recipient's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Delivered, transient or permanent.
    pub disposition: Disposition,
    /// Whose fault (meaningless for delivered).
    pub scope: Scope,
    /// The address should be suppressed: the mailbox does not exist.
    pub suppress: bool,
    /// The site asked us to slow down (421, 4.7.x rate replies): throttle it.
    pub throttle: bool,
    /// 452/552 too many recipients: send this one again at once in a new transaction.
    pub too_many_recipients: bool,
    /// The basic reply code, when there was a reply.
    pub code: Option<u16>,
    /// The enhanced code, when the server sent one.
    pub enhanced: Option<EnhancedCode>,
    /// The command the reply answered, when known.
    pub phase: Option<Phase>,
    /// The reply or error, for logs, reports and events.
    pub detail: String,
}

impl Outcome {
    fn new(disposition: Disposition, scope: Scope, detail: String) -> Self {
        Self {
            disposition,
            scope,
            suppress: false,
            throttle: false,
            too_many_recipients: false,
            code: None,
            enhanced: None,
            phase: None,
            detail,
        }
    }

    /// Whether to retry later.
    pub fn is_transient(&self) -> bool {
        self.disposition == Disposition::Transient
    }

    /// Whether to bounce.
    pub fn is_permanent(&self) -> bool {
        self.disposition == Disposition::Permanent
    }

    /// Whether the failure is the connection's, not the message's.
    pub fn is_connection_level(&self) -> bool {
        self.disposition != Disposition::Delivered && self.scope == Scope::Connection
    }
}

/// Classifies one recipient's result from [`crate::smtp::Session::send`], in a
/// transaction of one recipient (volley's own).
pub fn classify(result: &Result<Reply, SmtpError>) -> Outcome {
    classify_in(result, 1)
}

/// Classifies one recipient's result in a transaction of `recipients` recipients.
///
/// Whether the address is suppressed depends on whom the refusal is about: a "no such
/// user" given to RCPT is about that recipient; given to the end of the data, only when
/// the transaction had one recipient; given to MAIL FROM, the greeting or the connection,
/// it is about the sender or the server and never suppresses anyone.
pub fn classify_in(result: &Result<Reply, SmtpError>, recipients: usize) -> Outcome {
    let mut outcome = classify_result(result);
    if outcome.suppress {
        let about_recipient = match outcome.phase {
            Some(Phase::Rcpt) => true,
            Some(Phase::Data | Phase::DataEnd | Phase::DataBlock) => recipients == 1,
            _ => false,
        };
        outcome.suppress = about_recipient;
    }
    outcome
}

fn classify_result(result: &Result<Reply, SmtpError>) -> Outcome {
    match result {
        Ok(reply) if reply.is_positive() => {
            let mut outcome =
                Outcome::new(Disposition::Delivered, Scope::Message, reply.to_string());
            outcome.code = Some(reply.code().get());
            outcome.enhanced = reply.enhanced();
            outcome
        }
        Ok(reply) => classify_reply(None, reply),
        Err(SmtpError::Reply { phase, reply }) => classify_reply(Some(*phase), reply),
        Err(SmtpError::Local(reply)) => {
            let mut outcome = classify_reply(None, reply);
            outcome.scope = Scope::Message;
            outcome.detail = format!("refused locally: {reply}");
            outcome
        }
        Err(err) => Outcome::new(Disposition::Transient, Scope::Connection, err.to_string()),
    }
}

/// Classifies a routing failure: null MX, NXDOMAIN, no mail host and forbidden
/// addresses bounce; temporary DNS trouble is the site's, retried later.
pub fn classify_route(err: &RouteError) -> Outcome {
    let (disposition, enhanced) = match err {
        RouteError::NullMx(_) => (Disposition::Permanent, EnhancedCode::new(5, 1, 10)),
        RouteError::NoSuchDomain(_) | RouteError::NoMailHost(_) | RouteError::InvalidDomain(_) => {
            (Disposition::Permanent, EnhancedCode::new(5, 1, 2))
        }
        RouteError::Forbidden { .. } => (Disposition::Permanent, EnhancedCode::new(5, 4, 4)),
        RouteError::Temporary { .. } => (Disposition::Transient, EnhancedCode::new(4, 4, 3)),
    };
    let scope = if disposition == Disposition::Transient {
        Scope::Connection
    } else {
        Scope::Message
    };
    let mut outcome = Outcome::new(disposition, scope, format!("{enhanced} {err}"));
    outcome.enhanced = Some(enhanced);
    // A domain that does not exist (or takes no mail) bounces the message but suppresses
    // no one: one lookup can be a registrar's or a resolver's passing mistake, and the
    // next send asks again.
    outcome
}

/// A delivery whose egress pool is not configured (any more): it waits, transient
/// (4.3.5, a configuration problem of ours), rather than leave from other addresses.
pub fn no_egress_pool(pool: &str) -> Outcome {
    let enhanced = EnhancedCode::new(4, 3, 5);
    let mut outcome = Outcome::new(
        Disposition::Transient,
        Scope::Connection,
        format!("{enhanced} egress pool {pool:?} is not configured"),
    );
    outcome.enhanced = Some(enhanced);
    outcome
}

/// A delivery refused by its domain's MTA-STS policy in `enforce` mode: none of its MX
/// hosts is one the policy names. Deferred (4.7.5): the policy or the MX records may be
/// fixed, or an attacker's forged MX answer may go away; never sent to the others.
pub fn mta_sts_no_mx(domain: &str, hosts: &str, patterns: &[String]) -> Outcome {
    let enhanced = EnhancedCode::new(4, 7, 5);
    let mut outcome = Outcome::new(
        Disposition::Transient,
        Scope::Connection,
        format!(
            "{enhanced} MTA-STS policy of {domain} (enforce): no MX host matches (MX {hosts}; policy mx {})",
            patterns.join(", ")
        ),
    );
    outcome.enhanced = Some(enhanced);
    outcome
}

/// A delivery that cannot go under DANE (RFC 7672): the domain's MX answer could not be
/// validated, or no MX host is usable (its TLSA lookup failed, or the validated MX set
/// names none of the hosts we found). Deferred (4.7.5), never sent around the failure.
pub fn dane_refused(domain: &str, reason: &str) -> Outcome {
    let enhanced = EnhancedCode::new(4, 7, 5);
    let mut outcome = Outcome::new(
        Disposition::Transient,
        Scope::Connection,
        format!("{enhanced} DANE for {domain}: {reason}"),
    );
    outcome.enhanced = Some(enhanced);
    outcome
}

/// Classifies a failure reply to a command of `phase`.
fn classify_reply(phase: Option<Phase>, reply: &Reply) -> Outcome {
    let code = reply.code().get();
    let enhanced = reply.enhanced();
    let text = reply.text().to_ascii_lowercase();
    let detail = match phase {
        Some(phase) => format!("{phase}: {reply}"),
        None => reply.to_string(),
    };
    // A 3xx where a final reply was due (the end of the data, RCPT...) is the server
    // breaking the protocol: nobody's fault here, try again later.
    let intermediate = reply.code().is_intermediate();
    let scope = match phase {
        _ if code == 421 || intermediate => Scope::Connection,
        Some(Phase::Greeting | Phase::Ehlo | Phase::Helo | Phase::StartTls | Phase::Auth) => {
            Scope::Connection
        }
        Some(Phase::Rcpt) => Scope::Recipient,
        _ => Scope::Message,
    };
    let too_many = phase == Some(Phase::Rcpt) && is_too_many_recipients(code, enhanced, &text);
    // RFC 5321 4.5.3.1.10: 552 on RCPT means too many recipients; treat it as 452.
    // Session-level refusals (greeting, EHLO, AUTH, TLS) are never the message's
    // fault, so they do not bounce it either: the site is retried.
    let transient = reply.code().is_transient()
        || too_many
        || (phase == Some(Phase::Rcpt) && code == 552)
        || scope == Scope::Connection;
    let disposition = if transient {
        Disposition::Transient
    } else {
        Disposition::Permanent
    };
    let mut outcome = Outcome::new(disposition, scope, detail);
    outcome.code = Some(code);
    outcome.enhanced = enhanced;
    outcome.phase = phase;
    outcome.too_many_recipients = too_many;
    outcome.throttle = is_throttle(code, enhanced, &text);
    outcome.suppress = disposition == Disposition::Permanent
        && scope != Scope::Connection
        && is_no_such_mailbox(code, enhanced, &text);
    outcome
}

fn is_too_many_recipients(code: u16, enhanced: Option<EnhancedCode>, text: &str) -> bool {
    if !matches!(code, 452 | 552) {
        return false;
    }
    match enhanced {
        Some(e) => e.subject == 5 && e.detail == 3,
        None => text.contains("too many recipients"),
    }
}

/// The site is asking us to slow down. 421 always; 4.7.x when the text or the code
/// speaks of rates (Gmail 4.7.28, Microsoft 4.7.500-699, Yahoo TSS04).
fn is_throttle(code: u16, enhanced: Option<EnhancedCode>, text: &str) -> bool {
    if code == 421 {
        return true;
    }
    if code / 100 != 4 {
        return false;
    }
    const RATE_WORDS: [&str; 7] = [
        "rate",
        "too many",
        "throttl",
        "try again later",
        "server busy",
        "volume",
        "tss04",
    ];
    match enhanced {
        Some(e) if e.class == 4 && e.subject == 7 => {
            (e.detail == 28
                || (500..700).contains(&e.detail)
                || RATE_WORDS.iter().any(|w| text.contains(w)))
                && !text.contains("greylist")
        }
        _ => RATE_WORDS.iter().any(|w| text.contains(w)) && text.contains("connection"),
    }
}

/// The mailbox or its domain does not exist (RFC 3463 X.1.1, X.1.2, X.1.3, X.1.6,
/// X.1.10, X.2.1 disabled); without an enhanced code, the classic texts.
fn is_no_such_mailbox(code: u16, enhanced: Option<EnhancedCode>, text: &str) -> bool {
    match enhanced {
        Some(e) => matches!((e.subject, e.detail), (1, 1 | 2 | 3 | 6 | 10) | (2, 1)),
        None => {
            matches!(code, 550 | 551 | 553)
                && [
                    "user unknown",
                    "unknown user",
                    "no such user",
                    "does not exist",
                    "mailbox not found",
                ]
                .iter()
                .any(|w| text.contains(w))
        }
    }
}

/// What a report received after the handoff (a DSN) says about one recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LateVerdict {
    /// Not delivered, for good; `suppress` when the mailbox does not exist.
    Bounced {
        /// Suppress the address for all mail.
        suppress: bool,
    },
    /// Not delivered yet; the remote server keeps trying. Never suppresses.
    Delayed,
    /// Delivered, relayed or expanded: nothing to record.
    Nothing,
}

/// Classifies one recipient of a delivery status notification (RFC 3464) from its
/// `Action`, `Status` and `Diagnostic-Code` (the remote server's reply, when it quotes
/// one). A failure suppresses only when the code says the mailbox does not exist, as a
/// refusal at RCPT would.
pub fn classify_late(action: &str, status: &str, diagnostic: &str) -> LateVerdict {
    let enhanced = EnhancedCode::parse_prefix(status.trim().as_bytes()).map(|(e, _)| e);
    let text = diagnostic.to_ascii_lowercase();
    // "smtp; 550 5.1.1 ...": the reply code, when the diagnostic quotes one.
    let code = text
        .split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == 3)
        .and_then(|w| w.parse::<u16>().ok())
        .filter(|c| (200..600).contains(c));
    match action.trim().to_ascii_lowercase().as_str() {
        "failed" => {
            let permanent = enhanced.map_or(code.is_none_or(|c| c >= 500), |e| e.class == 5);
            let suppress = permanent && is_no_such_mailbox(code.unwrap_or(550), enhanced, &text);
            LateVerdict::Bounced { suppress }
        }
        "delayed" => LateVerdict::Delayed,
        _ => LateVerdict::Nothing,
    }
}

/// What a failure to open a session to one host of a site means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The TLS handshake (or the moment around it) failed: under opportunistic TLS the
    /// same host is tried again in clear text, as MTAs do (RFC 7435).
    Tls,
    /// The host is unreachable, silent, refuses service outright (5xx greeting), or
    /// fails TLS that we require: try the site's next address.
    NextHost,
    /// The server is there but refused us for now (a 4xx greeting, an AUTH or EHLO
    /// refusal): stop, and let the site's deliveries be classified by [`classify`].
    Stop,
}

/// Classifies a failure to open a session (connect, greeting, EHLO, STARTTLS, AUTH).
pub fn classify_connect(err: &SmtpError) -> ConnectFailure {
    match err {
        SmtpError::Tls(_) => ConnectFailure::Tls,
        SmtpError::Timeout { phase }
        | SmtpError::Io { phase, .. }
        | SmtpError::Closed { phase } => match phase {
            Phase::StartTls => ConnectFailure::Tls,
            Phase::Connect | Phase::Greeting => ConnectFailure::NextHost,
            _ => ConnectFailure::Stop,
        },
        SmtpError::Reply {
            phase: Phase::Greeting,
            reply,
        } if reply.code().is_permanent() => ConnectFailure::NextHost,
        // STARTTLS refused where TLS is required (DANE, MTA-STS, `required`): this host
        // cannot take the mail; another may (RFC 7672 section 2.2).
        SmtpError::Reply {
            phase: Phase::StartTls,
            ..
        } => ConnectFailure::Tls,
        _ => ConnectFailure::Stop,
    }
}

/// Whether a recipient's result on a reused pooled connection is the sign of a stale
/// connection: a transport failure before the first reply, so nothing was accepted and
/// the batch may go again on a fresh connection.
pub fn is_stale_connection(result: &Result<Reply, SmtpError>) -> bool {
    matches!(result, Err(SmtpError::Closed { phase } | SmtpError::Io { phase, .. })
        if matches!(phase, Phase::Mail | Phase::DataBlock))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::ReplyParser;
    use std::io;

    /// Parses a reply line as quoted from a provider; a quoted first line of a
    /// multi-line reply ("550-5.1.1 ...") is made the last line.
    fn reply(wire: &str) -> Reply {
        let line = match wire.as_bytes().get(3) {
            Some(b'-') => format!("{} {}", &wire[..3], &wire[4..]),
            _ => wire.to_owned(),
        };
        ReplyParser::parse_slice(format!("{line}\r\n").as_bytes())
            .unwrap()
            .unwrap()
    }

    fn refused(phase: Phase, wire: &str) -> Outcome {
        classify(&Err(SmtpError::Reply {
            phase,
            reply: reply(wire),
        }))
    }

    use Disposition::{Permanent as P, Transient as T};

    /// (phase, real reply text, disposition, scope, suppress, throttle)
    const TABLE: &[(Phase, &str, Disposition, Scope, bool, bool)] = &[
        // Gmail
        (
            Phase::Rcpt,
            "550-5.1.1 The email account that you tried to reach does not exist. Please try",
            P,
            Scope::Recipient,
            true,
            false,
        ),
        (
            Phase::Rcpt,
            "452-4.2.2 The email account that you tried to reach is over quota.",
            T,
            Scope::Recipient,
            false,
            false,
        ),
        (
            Phase::Rcpt,
            "450-4.2.1 The user you are trying to contact is receiving mail at a rate that",
            T,
            Scope::Recipient,
            false,
            false,
        ),
        (
            Phase::Mail,
            "421-4.7.28 Gmail has detected an unusual rate of unsolicited mail originating",
            T,
            Scope::Connection,
            false,
            true,
        ),
        (
            Phase::Mail,
            "421-4.7.0 Try again later, closing connection.",
            T,
            Scope::Connection,
            false,
            true,
        ),
        (
            Phase::DataEnd,
            "550-5.7.26 This mail has been blocked because the sender is unauthenticated.",
            P,
            Scope::Message,
            false,
            false,
        ),
        (
            Phase::DataEnd,
            "451-4.3.0 Mail server temporarily rejected message.",
            T,
            Scope::Message,
            false,
            false,
        ),
        // Yahoo
        (
            Phase::Mail,
            "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints",
            T,
            Scope::Connection,
            false,
            true,
        ),
        (
            Phase::Rcpt,
            "554 5.7.9 Message not accepted for policy reasons.",
            P,
            Scope::Recipient,
            false,
            false,
        ),
        (
            Phase::Rcpt,
            "552 1 Requested mail action aborted, mailbox not found",
            T,
            Scope::Recipient,
            false,
            false,
        ),
        // Microsoft
        (
            Phase::Rcpt,
            "550 5.5.0 Requested action not taken: mailbox unavailable",
            P,
            Scope::Recipient,
            false,
            false,
        ),
        (
            Phase::Rcpt,
            "550 5.4.1 Recipient address rejected: Access denied.",
            P,
            Scope::Recipient,
            false,
            false,
        ),
        (
            Phase::Mail,
            "451 4.7.500 Server busy. Please try again later from [192.0.2.1].",
            T,
            Scope::Message,
            false,
            true,
        ),
        (
            Phase::Rcpt,
            "452 4.5.3 Too many recipients",
            T,
            Scope::Recipient,
            false,
            false,
        ),
        (
            Phase::Mail,
            "550 5.7.1 Service unavailable, Client host [192.0.2.1] blocked using Spamhaus.",
            P,
            Scope::Message,
            false,
            false,
        ),
        // Greylisting
        (
            Phase::Rcpt,
            "450 4.2.0 <a@b.example>: Recipient address rejected: Greylisted, see http://postgrey",
            T,
            Scope::Recipient,
            false,
            false,
        ),
        (
            Phase::Rcpt,
            "451 4.7.1 Please try again later (greylisted)",
            T,
            Scope::Recipient,
            false,
            false,
        ),
        // Classic texts without enhanced codes
        (
            Phase::Rcpt,
            "550 User unknown",
            P,
            Scope::Recipient,
            true,
            false,
        ),
        (
            Phase::Rcpt,
            "550 Relaying denied",
            P,
            Scope::Recipient,
            false,
            false,
        ),
        (
            Phase::Rcpt,
            "552 Too many recipients",
            T,
            Scope::Recipient,
            false,
            false,
        ),
        (
            Phase::Rcpt,
            "551 5.1.6 User has moved",
            P,
            Scope::Recipient,
            true,
            false,
        ),
        (
            Phase::Rcpt,
            "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
            P,
            Scope::Recipient,
            true,
            false,
        ),
        (
            Phase::Rcpt,
            "550 5.2.1 The email account that you tried to reach is disabled.",
            P,
            Scope::Recipient,
            true,
            false,
        ),
        (
            Phase::DataEnd,
            "552 5.3.4 Message size exceeds fixed maximum message size",
            P,
            Scope::Message,
            false,
            false,
        ),
        (
            Phase::DataEnd,
            "554 5.6.0 Message contains bare LF",
            P,
            Scope::Message,
            false,
            false,
        ),
        // Session-level refusals are the connection's, never a bounce.
        (
            Phase::Greeting,
            "554 5.7.1 No SMTP service here",
            T,
            Scope::Connection,
            false,
            false,
        ),
        (
            Phase::Auth,
            "535 5.7.8 Authentication credentials invalid",
            T,
            Scope::Connection,
            false,
            false,
        ),
        (
            Phase::Rcpt,
            "421 4.4.2 Connection dropped due to timeout",
            T,
            Scope::Connection,
            false,
            true,
        ),
    ];

    #[test]
    fn classifies_real_replies() {
        for (phase, wire, disposition, scope, suppress, throttle) in TABLE {
            let got = refused(*phase, wire);
            assert_eq!(got.disposition, *disposition, "disposition of {wire}");
            assert_eq!(got.scope, *scope, "scope of {wire}");
            assert_eq!(got.suppress, *suppress, "suppress of {wire}");
            assert_eq!(got.throttle, *throttle, "throttle of {wire}");
        }
    }

    #[test]
    fn too_many_recipients_is_retried_now() {
        for wire in [
            "452 4.5.3 Too many recipients",
            "552 5.5.3 Too many recipients",
            "452 Too many recipients received",
        ] {
            let got = refused(Phase::Rcpt, wire);
            assert!(got.too_many_recipients && got.is_transient(), "{wire}");
        }
        assert!(!refused(Phase::Rcpt, "452 4.2.2 Mailbox full").too_many_recipients);
    }

    #[test]
    fn delivered_and_transport_errors() {
        let ok = classify(&Ok(reply("250 2.0.0 Ok: queued as ABC")));
        assert_eq!(ok.disposition, Disposition::Delivered);
        assert_eq!(ok.code, Some(250));

        let errors = [
            SmtpError::Timeout {
                phase: Phase::DataEnd,
            },
            SmtpError::Closed { phase: Phase::Rcpt },
            SmtpError::io(
                Phase::Connect,
                &io::Error::from(io::ErrorKind::ConnectionRefused),
            ),
            SmtpError::Tls("handshake failure".into()),
            SmtpError::Unusable,
        ];
        for err in errors {
            let got = classify(&Err(err.clone()));
            assert!(got.is_transient() && got.is_connection_level(), "{err}");
            assert!(!got.suppress);
        }
    }

    /// Routing failures bounce or defer the message; none suppresses the address (a
    /// domain missing once may be a registrar's or a resolver's passing mistake).
    #[test]
    fn routing_failures() {
        let table = [
            (
                RouteError::NullMx("x.test".into()),
                Disposition::Permanent,
                "5.1.10",
                false,
            ),
            (
                RouteError::NoSuchDomain("x.test".into()),
                Disposition::Permanent,
                "5.1.2",
                false,
            ),
            (
                RouteError::NoMailHost("x.test".into()),
                Disposition::Permanent,
                "5.1.2",
                false,
            ),
            (
                RouteError::Forbidden {
                    domain: "x.test".into(),
                    addr: [127, 0, 0, 1].into(),
                },
                Disposition::Permanent,
                "5.4.4",
                false,
            ),
            (
                RouteError::Temporary {
                    domain: "x.test".into(),
                    reason: "SERVFAIL".into(),
                },
                Disposition::Transient,
                "4.4.3",
                false,
            ),
        ];
        for (err, disposition, code, suppress) in table {
            let got = classify_route(&err);
            assert_eq!(got.disposition, disposition, "{err}");
            assert_eq!(got.enhanced.unwrap().to_string(), code, "{err}");
            assert_eq!(got.suppress, suppress, "{err}");
        }
    }

    #[test]
    fn local_refusals_bounce_the_message() {
        let err = SmtpError::local(552, EnhancedCode::new(5, 3, 4), "too big");
        let got = classify(&Err(err));
        assert!(got.is_permanent());
        assert_eq!(got.scope, Scope::Message);
        assert!(got.detail.contains("refused locally"), "{}", got.detail);
    }

    #[test]
    fn connect_failures_pick_the_next_step() {
        let io = |phase| SmtpError::Io {
            phase,
            kind: io::ErrorKind::ConnectionRefused,
            message: String::new(),
        };
        let greeting = |wire: &str| SmtpError::Reply {
            phase: Phase::Greeting,
            reply: reply(wire),
        };
        use ConnectFailure::{NextHost, Stop, Tls};
        let table = [
            (io(Phase::Connect), NextHost),
            (
                SmtpError::Timeout {
                    phase: Phase::Connect,
                },
                NextHost,
            ),
            (
                SmtpError::Timeout {
                    phase: Phase::Greeting,
                },
                NextHost,
            ),
            (greeting("554 no service"), NextHost),
            (greeting("421 busy"), Stop),
            (SmtpError::Tls("handshake".into()), Tls),
            // STARTTLS refused where TLS is required: the next host may do it.
            (
                SmtpError::Reply {
                    phase: Phase::StartTls,
                    reply: reply("454 4.7.0 TLS not available"),
                },
                Tls,
            ),
            (
                SmtpError::Closed {
                    phase: Phase::StartTls,
                },
                Tls,
            ),
            (
                SmtpError::Reply {
                    phase: Phase::Auth,
                    reply: reply("535 no"),
                },
                Stop,
            ),
        ];
        for (err, want) in table {
            assert_eq!(classify_connect(&err), want, "{err:?}");
        }
    }

    #[test]
    fn a_stale_pooled_connection_fails_before_any_reply() {
        assert!(is_stale_connection(&Err(SmtpError::Closed {
            phase: Phase::Mail
        })));
        assert!(!is_stale_connection(&Err(SmtpError::Closed {
            phase: Phase::DataEnd
        })));
        assert!(!is_stale_connection(&Ok(reply("250 ok"))));
    }

    #[test]
    fn late_reports_suppress_only_a_missing_mailbox() {
        let cases = [
            (
                "failed",
                "5.1.1",
                "smtp; 550 5.1.1 user unknown",
                LateVerdict::Bounced { suppress: true },
            ),
            (
                "Failed",
                "5.2.2",
                "552 5.2.2 mailbox full",
                LateVerdict::Bounced { suppress: false },
            ),
            (
                "failed",
                "5.7.1",
                "550 5.7.1 message refused as spam",
                LateVerdict::Bounced { suppress: false },
            ),
            (
                "failed",
                "",
                "550 no such user here",
                LateVerdict::Bounced { suppress: true },
            ),
            (
                "delayed",
                "4.4.7",
                "451 4.4.7 try later",
                LateVerdict::Delayed,
            ),
            ("delivered", "2.0.0", "250 ok", LateVerdict::Nothing),
            ("relayed", "2.0.0", "", LateVerdict::Nothing),
        ];
        for (action, status, diagnostic, expected) in cases {
            assert_eq!(
                classify_late(action, status, diagnostic),
                expected,
                "{action} {status}"
            );
        }
    }
}

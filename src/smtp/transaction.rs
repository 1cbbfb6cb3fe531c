//! Mail transactions: MAIL, RCPT, DATA or BDAT, pipelined when the server allows.
//!
//! With PIPELINING (RFC 2920), MAIL, every RCPT and DATA go in one write, and the end
//! of one message's content goes in the same write as the next transaction's
//! envelope. With CHUNKING (RFC 3030) each message is `BDAT n LAST` right behind its
//! envelope, and several transactions are written at once. Every command gets
//! exactly one result, also when the connection fails halfway: the failure becomes
//! the result of each command still waiting for its reply.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};

use super::body::{crlf_len, encode_bdat_last, encode_data, is_eight_bit};
use super::capabilities::Capabilities;
use super::command::{BodyType, Command, MailParams};
use super::error::SmtpError;
use super::reply::{EnhancedCode, Reply};
use super::session::Session;
use super::timeouts::Phase;
use crate::address::Address;

/// Most content octets written in one BDAT group, so a batch of large messages does
/// not become one enormous write.
const BDAT_GROUP_BYTES: usize = 1024 * 1024;

/// One message to send: envelope and content (RFC 5322 bytes, line ends in any form;
/// they are normalised on the way out).
#[derive(Clone, Copy, Debug)]
pub struct Transaction<'a> {
    /// The reverse path; `None` sends `MAIL FROM:<>`.
    pub from: Option<&'a Address>,
    /// The forward paths, one RCPT each; results come back in this order.
    pub to: &'a [Address],
    /// The RFC 5322 message, headers included; line ends are normalised when it is sent.
    pub body: &'a [u8],
}

/// The fate of one recipient: `Ok` with the final 2xx reply when the server took
/// responsibility for the message, or the error that decided otherwise (the RCPT
/// refusal, the MAIL or DATA refusal, the final reply, or a transport failure).
pub type RecipientResult = Result<Reply, SmtpError>;

/// The raw replies to one envelope: `Ok` holds any reply, `Err` a failure to get one.
struct EnvelopeReplies {
    mail: Result<Reply, SmtpError>,
    rcpts: Vec<Result<Reply, SmtpError>>,
    /// DATA's reply (354 expected) or BDAT LAST's reply (final).
    last: Result<Reply, SmtpError>,
}

impl EnvelopeReplies {
    fn accepted(&self) -> usize {
        if !is_positive(&self.mail) {
            return 0;
        }
        self.rcpts.iter().filter(|r| is_positive(r)).count()
    }
}

fn is_positive(reply: &Result<Reply, SmtpError>) -> bool {
    matches!(reply, Ok(r) if r.is_positive())
}

fn is_354(reply: &Result<Reply, SmtpError>) -> bool {
    matches!(reply, Ok(r) if r.code().get() == 354)
}

/// Turns a raw reply into a result: `Ok` when it is what `phase` wanted.
fn expect(
    raw: &Result<Reply, SmtpError>,
    phase: Phase,
    wanted: fn(&Reply) -> bool,
) -> RecipientResult {
    match raw {
        Ok(reply) if wanted(reply) => Ok(reply.clone()),
        Ok(reply) => Err(SmtpError::Reply {
            phase,
            reply: reply.clone(),
        }),
        Err(e) => Err(e.clone()),
    }
}

/// Each recipient's result: the MAIL refusal, else its RCPT refusal, else `terminal`.
fn resolve(env: &EnvelopeReplies, terminal: &RecipientResult) -> Vec<RecipientResult> {
    let mail = expect(&env.mail, Phase::Mail, Reply::is_positive);
    env.rcpts
        .iter()
        .map(|rcpt| {
            mail.as_ref().map_err(Clone::clone)?;
            expect(rcpt, Phase::Rcpt, Reply::is_positive)?;
            terminal.clone()
        })
        .collect()
}

/// How the server answered the last [`Session::send`]: the round trips it took and
/// the fastest of them (from a write to the first reply it brought back). A sender
/// sizes its windows with it; `rounds` is 0 when nothing was pipelined.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exchange {
    /// Writes that were each answered before the next was needed.
    pub rounds: u32,
    /// The shortest time from a write to its first reply.
    pub fastest: Option<Duration>,
}

/// How long replies already sent are waited for after a write failed: they answer
/// commands the server took before it stopped reading, and are already on their way.
const AFTER_WRITE_FAILURE: Duration = Duration::from_secs(2);

/// Reads the replies of one pipelined write; after the first failure every further
/// read returns that failure without touching the socket. A failed write is not such a
/// failure yet: the server may have answered the first transactions of the group before
/// it stopped reading, and a message it took must not be charged the write's error (it
/// would be sent again). Those replies are read, briefly; the first that does not come
/// fails the rest.
#[derive(Default)]
struct GroupReader {
    failed: Option<SmtpError>,
    /// The write that failed, while replies already sent are still read.
    write_failed: Option<SmtpError>,
    /// When the last write went out, until its first reply is read.
    sent_at: Option<Instant>,
    exchange: Exchange,
}

impl GroupReader {
    async fn flush<S>(&mut self, session: &mut Session<S>, phase: Phase)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        if self.failed.is_some() || self.write_failed.is_some() {
            session.conn.wbuf().clear();
            return;
        }
        match session.conn.flush(phase).await {
            Ok(()) => self.sent_at = Some(Instant::now()),
            Err(e) => {
                session.broken = true;
                self.write_failed = Some(e);
            }
        }
    }

    async fn next<S>(&mut self, session: &mut Session<S>, phase: Phase) -> Result<Reply, SmtpError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if let Some(write) = self.write_failed.clone() {
            return match session
                .conn
                .read_reply_within(phase, AFTER_WRITE_FAILURE)
                .await
            {
                Ok(reply) => Ok(reply),
                Err(_) => {
                    self.failed = Some(write.clone());
                    Err(write)
                }
            };
        }
        let reply = session
            .read(phase)
            .await
            .inspect_err(|e| self.failed = Some(e.clone()))?;
        if let Some(sent) = self.sent_at.take() {
            let took = sent.elapsed();
            self.exchange.rounds += 1;
            self.exchange.fastest = Some(self.exchange.fastest.map_or(took, |f| f.min(took)));
        }
        Ok(reply)
    }

    async fn envelope<S>(
        &mut self,
        session: &mut Session<S>,
        rset: bool,
        recipients: usize,
        last_phase: Phase,
    ) -> EnvelopeReplies
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        if rset {
            // RSET's answer only matters if it is a failure to answer.
            let _ = self.next(session, Phase::Rset).await;
        }
        let mail = self.next(session, Phase::Mail).await;
        let mut rcpts = Vec::with_capacity(recipients);
        for _ in 0..recipients {
            rcpts.push(self.next(session, Phase::Rcpt).await);
        }
        let last = self.next(session, last_phase).await;
        EnvelopeReplies { mail, rcpts, last }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// Sends the transactions on this connection, pipelined when possible, and returns
    /// one result per recipient of each (in the order given). Never fails as a whole:
    /// a transport failure is the result of every recipient it left undecided.
    pub async fn send(&mut self, transactions: &[Transaction<'_>]) -> Vec<Vec<RecipientResult>> {
        let mut results: Vec<Vec<RecipientResult>> = vec![Vec::new(); transactions.len()];
        let mut ready = Vec::with_capacity(transactions.len());
        for (i, tx) in transactions.iter().enumerate() {
            if tx.to.is_empty() {
                continue;
            }
            if self.broken {
                results[i] = vec![Err(SmtpError::Unusable); tx.to.len()];
                continue;
            }
            match self.preflight(tx) {
                Ok(params) => ready.push((i, params)),
                Err(refusal) => results[i] = vec![Err(refusal); tx.to.len()],
            }
        }
        self.exchange = Exchange::default();
        if ready.is_empty() {
            return results;
        }
        self.transactions += ready.len() as u64;
        let chunking = self.config.prefer_chunking && self.caps.has(Capabilities::CHUNKING);
        match (self.caps.has(Capabilities::PIPELINING), chunking) {
            (true, true) => {
                self.send_bdat_pipelined(transactions, &ready, &mut results)
                    .await;
            }
            (true, false) => {
                self.send_data_pipelined(transactions, &ready, &mut results)
                    .await;
            }
            (false, _) => {
                for &(i, params) in &ready {
                    results[i] = self
                        .send_one_by_one(&transactions[i], params, chunking)
                        .await;
                }
            }
        }
        results
    }

    /// Local checks before anything is sent: size, 8-bit content, UTF-8 addresses.
    fn preflight(&self, tx: &Transaction<'_>) -> Result<MailParams, SmtpError> {
        let size = crlf_len(tx.body);
        if let Some(limit) = self.caps.size_limit()
            && size as u64 > limit
        {
            let text = format!("message is {size} octets; the server accepts at most {limit}");
            return Err(SmtpError::local(552, EnhancedCode::new(5, 3, 4), &text));
        }
        let eight_bit = is_eight_bit(tx.body);
        if eight_bit && !self.caps.has(Capabilities::EIGHT_BIT_MIME) {
            let text = "8-bit content and the server does not offer 8BITMIME";
            return Err(SmtpError::local(554, EnhancedCode::new(5, 6, 3), text));
        }
        let utf8 = tx.from.is_some_and(Address::needs_smtputf8)
            || tx.to.iter().any(Address::needs_smtputf8);
        if utf8 && !self.caps.has(Capabilities::SMTPUTF8) {
            let text = "non-ASCII address and the server does not offer SMTPUTF8";
            return Err(SmtpError::local(553, EnhancedCode::new(5, 6, 7), text));
        }
        Ok(MailParams {
            size: self.caps.declares_size().then_some(size as u64),
            body: eight_bit.then_some(BodyType::EightBitMime),
            smtputf8: utf8,
        })
    }

    /// Appends `[RSET] MAIL RCPT... [DATA]` to the write buffer.
    fn queue_envelope(&mut self, tx: &Transaction<'_>, params: MailParams, rset: bool, data: bool) {
        let out = self.conn.wbuf();
        if rset {
            Command::Rset.encode(out);
        }
        Command::Mail(tx.from, params).encode(out);
        for to in tx.to {
            Command::Rcpt(to).encode(out);
        }
        if data {
            Command::Data.encode(out);
        }
    }

    async fn send_data_pipelined(
        &mut self,
        txs: &[Transaction<'_>],
        ready: &[(usize, MailParams)],
        results: &mut [Vec<RecipientResult>],
    ) {
        let mut reader = GroupReader::default();
        let mut rset = std::mem::take(&mut self.needs_rset);
        let (first, params) = ready[0];
        self.queue_envelope(&txs[first], params, rset, true);
        reader.flush(self, Phase::Mail).await;
        for (k, &(cur, _)) in ready.iter().enumerate() {
            let tx = &txs[cur];
            let env = reader.envelope(self, rset, tx.to.len(), Phase::Data).await;
            let accepted = env.accepted();
            let next = ready.get(k + 1).copied();
            let mut next_written = false;
            // Whether this transaction ended without a final reply to content.
            let mut aborted = true;
            if is_354(&env.last) {
                if accepted == 0 {
                    // A 354 with no recipient accepted: end the data at once, send nothing.
                    self.conn.wbuf().extend_from_slice(b".\r\n");
                } else {
                    encode_data(tx.body, self.conn.wbuf());
                    if let Some((n, params)) = next {
                        self.queue_envelope(&txs[n], params, false, true);
                        next_written = true;
                    }
                    aborted = false;
                }
                reader.flush(self, Phase::DataBlock).await;
                let fin = reader.next(self, Phase::DataEnd).await;
                results[cur] = resolve(&env, &expect(&fin, Phase::DataEnd, Reply::is_positive));
            } else {
                results[cur] = resolve(
                    &env,
                    &expect(&env.last, Phase::Data, |r| r.code().get() == 354),
                );
            }
            rset = aborted && !next_written;
            match next {
                Some((n, params)) if !next_written => {
                    self.queue_envelope(&txs[n], params, rset, true);
                    reader.flush(self, Phase::Mail).await;
                }
                Some(_) => {}
                None => self.needs_rset = aborted,
            }
        }
        self.exchange = reader.exchange;
    }

    async fn send_bdat_pipelined(
        &mut self,
        txs: &[Transaction<'_>],
        ready: &[(usize, MailParams)],
        results: &mut [Vec<RecipientResult>],
    ) {
        let mut reader = GroupReader::default();
        let mut start = 0;
        while start < ready.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < ready.len()
                && end - start < self.config.max_in_flight.max(1)
                && (end == start || bytes < BDAT_GROUP_BYTES)
            {
                bytes += txs[ready[end].0].body.len();
                end += 1;
            }
            // Every transaction after the first of a write starts with RSET: the one
            // before it may end refused (no recipient accepted), and servers such as
            // Postfix then keep its MAIL open, so that the next MAIL, already written,
            // would be refused as nested, and its recipients bounced.
            let first_rset = std::mem::take(&mut self.needs_rset);
            let rset = |k: usize| k > 0 || first_rset;
            for (k, &(i, params)) in ready[start..end].iter().enumerate() {
                self.queue_envelope(&txs[i], params, rset(k), false);
                encode_bdat_last(txs[i].body, self.conn.wbuf());
            }
            reader.flush(self, Phase::DataBlock).await;
            for (k, &(i, _)) in ready[start..end].iter().enumerate() {
                let env = reader
                    .envelope(self, rset(k), txs[i].to.len(), Phase::DataEnd)
                    .await;
                if env.accepted() == 0 {
                    self.needs_rset = true;
                }
                results[i] = resolve(&env, &expect(&env.last, Phase::DataEnd, Reply::is_positive));
            }
            start = end;
        }
        self.exchange = reader.exchange;
    }

    /// The round trips of the last [`send`](Self::send).
    pub fn last_exchange(&self) -> Exchange {
        self.exchange
    }

    /// Without PIPELINING: one command, one reply.
    async fn send_one_by_one(
        &mut self,
        tx: &Transaction<'_>,
        params: MailParams,
        chunking: bool,
    ) -> Vec<RecipientResult> {
        if std::mem::take(&mut self.needs_rset) {
            let _ = self.command(Command::Rset, Phase::Rset).await;
        }
        let unanswered = || Err(SmtpError::Unusable);
        let mail = self
            .command(Command::Mail(tx.from, params), Phase::Mail)
            .await;
        let mut env = EnvelopeReplies {
            mail,
            rcpts: Vec::with_capacity(tx.to.len()),
            last: unanswered(),
        };
        if is_positive(&env.mail) {
            for to in tx.to {
                env.rcpts
                    .push(self.command(Command::Rcpt(to), Phase::Rcpt).await);
            }
        } else {
            env.rcpts.resize_with(tx.to.len(), unanswered);
        }
        if env.accepted() == 0 {
            self.needs_rset = true;
            return resolve(&env, &unanswered());
        }
        if chunking {
            encode_bdat_last(tx.body, self.conn.wbuf());
        } else {
            let data = self.command(Command::Data, Phase::Data).await;
            if !is_354(&data) {
                self.needs_rset = true;
                return resolve(&env, &expect(&data, Phase::Data, |r| r.code().get() == 354));
            }
            encode_data(tx.body, self.conn.wbuf());
        }
        let fin = match self.conn.flush(Phase::DataBlock).await {
            Ok(()) => self.read(Phase::DataEnd).await,
            Err(e) => {
                self.broken = true;
                Err(e)
            }
        };
        resolve(&env, &expect(&fin, Phase::DataEnd, Reply::is_positive))
    }
}

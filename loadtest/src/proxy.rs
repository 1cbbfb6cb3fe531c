//! A TCP proxy that holds every byte for half a round trip in each direction: a
//! wide-area network on loopback, for `volley-load --rtt-ms`. Order is kept, nothing is
//! lost or reordered, and the bandwidth is not limited: only the latency changes.
//!
//! Timers are not exact (tokio's have a millisecond's grain, and a busy machine wakes
//! late), so the proxy also measures how late it delivers: a run's bound can be taken
//! at the round trip it really gave.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Chunks in flight per direction before the reader waits for the writer.
const IN_FLIGHT: usize = 4096;

/// A running proxy; dropping it stops accepting (open connections run to their end).
#[derive(Debug)]
pub struct DelayProxy {
    addr: SocketAddr,
    accept: JoinHandle<()>,
    lateness: Arc<Counters>,
}

/// Chunks delivered and their total delay past the one-way hold, in nanoseconds.
#[derive(Debug, Default)]
struct Counters {
    chunks: AtomicU64,
    late_ns: AtomicU64,
}

/// How late the proxy delivered, so far: chunks written, and the total of how long
/// after their due time each one was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lateness {
    /// Chunks written, both directions.
    pub chunks: u64,
    /// The sum of their lateness.
    pub total: Duration,
}

impl Lateness {
    /// The mean lateness of one chunk (one way).
    pub fn mean(&self) -> Duration {
        let n = u32::try_from(self.chunks).unwrap_or(u32::MAX).max(1);
        self.total / n
    }

    /// Both counts added.
    pub fn plus(self, other: Self) -> Self {
        Self {
            chunks: self.chunks + other.chunks,
            total: self.total + other.total,
        }
    }
}

impl DelayProxy {
    /// Listens on `listen` (port 0 picks one) and forwards each connection to `target`,
    /// every chunk delivered `round_trip / 2` after it was read, in each direction.
    pub async fn start(
        listen: SocketAddr,
        target: SocketAddr,
        round_trip: Duration,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let one_way = round_trip / 2;
        let lateness = Arc::new(Counters::default());
        let counters = Arc::clone(&lateness);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let counters = Arc::clone(&counters);
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let (client_r, client_w) = client.into_split();
                        let (server_r, server_w) = server.into_split();
                        tokio::join!(
                            delayed(client_r, server_w, one_way, &counters),
                            delayed(server_r, client_w, one_way, &counters)
                        );
                    }
                });
            }
        });
        Ok(Self {
            addr,
            accept,
            lateness,
        })
    }

    /// How late it has delivered so far.
    pub fn lateness(&self) -> Lateness {
        Lateness {
            chunks: self.lateness.chunks.load(Relaxed),
            total: Duration::from_nanos(self.lateness.late_ns.load(Relaxed)),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies `from` to `to`, each chunk written `delay` after it was read; the end of
/// `from` becomes a shutdown of `to`, delayed the same.
async fn delayed(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    delay: Duration,
    counters: &Counters,
) {
    let (chunks, mut due) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => 0,
                Ok(n) => n,
            };
            // An empty chunk is the end.
            if chunks
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .await
                .is_err()
                || n == 0
            {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if chunk.is_empty() || to.write_all(&chunk).await.is_err() {
                break;
            }
            let late = u64::try_from(at.elapsed().as_nanos()).unwrap_or(u64::MAX);
            counters.chunks.fetch_add(1, Relaxed);
            counters.late_ns.fetch_add(late, Relaxed);
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server behind the proxy: the bytes come back whole and in order, each
    /// exchange a full round trip later (a lower bound: the proxy never hurries), and
    /// the client's end of stream reaches the server.
    #[tokio::test]
    async fn bytes_arrive_in_order_a_round_trip_later() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    s.shutdown().await.unwrap();
                    return;
                }
                s.write_all(&buf[..n]).await.unwrap();
            }
        });
        let rtt = Duration::from_millis(40);
        let proxy = DelayProxy::start("127.0.0.1:0".parse().unwrap(), target, rtt)
            .await
            .unwrap();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut sent = Vec::new();
        for i in 0..3u8 {
            let line = vec![b'a' + i; 1000 * (usize::from(i) + 1)];
            let start = Instant::now();
            c.write_all(&line).await.unwrap();
            let mut back = vec![0u8; line.len()];
            c.read_exact(&mut back).await.unwrap();
            assert!(start.elapsed() >= rtt, "{:?}", start.elapsed());
            assert_eq!(back, line);
            sent.extend(line);
        }
        c.shutdown().await.unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "the server closed after our end of stream");
        assert_eq!(sent.len(), 6000);
        let late = proxy.lateness();
        assert!(late.chunks >= 6, "three exchanges each way: {late:?}");
    }
}

//! Every accepted TCP connection, not only WebSockets, counts against a cap, and one that neither
//! sends nor receives a byte for [`IDLE_LIMIT`] is closed.
//!
//! The WebSocket endpoint counts its sessions itself (`http.rs`, with a JSON `503
//! too_many_connections` a client can read). That left plain HTTP connections uncounted and
//! without a deadline: idle or half-sent requests could be opened until the process ran out of
//! file descriptors, and then nobody could connect. Here each socket is counted when accepted
//! (a little above the WebSocket caps, so a WebSocket client over the cap still gets the JSON
//! refusal) and dropped at once over that; and each carries an idle deadline.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::limits::ConnCounter;
use crate::metrics::Metrics;

/// A connection silent both ways for this long is closed. Clients ping every 15 s, and a
/// long-poll waits at most 60 s.
pub const IDLE_LIMIT: Duration = Duration::from_secs(120);
/// Sockets beyond the WebSocket caps, per IP and in total, for plain HTTP requests.
pub(crate) const HEADROOM_PER_IP: usize = 64;
pub(crate) const HEADROOM_TOTAL: usize = 1024;
/// File descriptors kept free for the database, logs and accepting.
const RESERVED_FDS: usize = 128;

/// The socket caps for WebSocket caps of `total` and `per_ip`: with headroom, and the total kept
/// below the process's open-file limit so the cap, not the kernel, refuses.
pub(crate) fn caps(total: usize, per_ip: usize) -> (usize, usize) {
    let fds = open_file_limit();
    let sockets = socket_cap(total, fds);
    if let Some(fds) = fds {
        // Only worth a warning when the WebSocket cap itself does not fit; trimming the headroom
        // for plain HTTP is routine (a 20,000 soft limit does it with the defaults).
        if let Some(why) = short_of_files(total, fds) {
            tracing::warn!(
                open_file_limit = fds,
                max_connections = total,
                sockets,
                "{why}"
            );
        } else if sockets < total.saturating_add(HEADROOM_TOTAL) {
            tracing::debug!(
                open_file_limit = fds,
                sockets,
                "socket cap fitted under the open-file limit"
            );
        }
    }
    (sockets, per_ip.saturating_add(HEADROOM_PER_IP))
}

/// Sockets accepted in all for a WebSocket cap of `total` under an open-file limit of `fds`.
fn socket_cap(total: usize, fds: Option<usize>) -> usize {
    let wanted = total.saturating_add(HEADROOM_TOTAL);
    match fds {
        Some(fds) if wanted.saturating_add(RESERVED_FDS) > fds => {
            fds.saturating_sub(RESERVED_FDS).max(1)
        }
        _ => wanted,
    }
}

/// Why `total` connections cannot all be accepted under an open-file limit of `fds`, with the
/// numbers and what to do; `None` when they fit.
fn short_of_files(total: usize, fds: usize) -> Option<String> {
    let needed = total.saturating_add(RESERVED_FDS);
    if needed <= fds {
        return None;
    }
    let fitted = socket_cap(total, Some(fds));
    let comfortable = needed.saturating_add(HEADROOM_TOTAL);
    Some(format!(
        "the open-file limit ({fds}) leaves no room for max_connections ({total}) plus the \
         {RESERVED_FDS} files the relay keeps for itself, so it accepts at most {fitted} \
         connections; raise the limit (`ulimit -n {comfortable}` before starting it, or \
         LimitNOFILE={comfortable} in a systemd unit), or set max_connections to {fitted} or less"
    ))
}

/// The soft limit on open files, where the OS says (Linux `/proc/self/limits`).
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// A listener whose sockets are counted and idle-limited.
pub(crate) struct Limited<L> {
    inner: L,
    counter: Arc<ConnCounter>,
    metrics: Arc<Metrics>,
    idle: Duration,
}

impl<L> Limited<L> {
    pub(crate) fn new(inner: L, counter: Arc<ConnCounter>, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            counter,
            metrics,
            idle: IDLE_LIMIT,
        }
    }
}

impl<L> axum::serve::Listener for Limited<L>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    type Io = Guarded<L::Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, addr) = self.inner.accept().await;
            if self.counter.open(addr.ip()).is_err() {
                Metrics::inc(&self.metrics.connections_refused);
                tracing::debug!(%addr, "socket refused: connection cap");
                drop(io);
                continue;
            }
            let io = Guarded {
                inner: io,
                counter: self.counter.clone(),
                ip: addr.ip(),
                idle: self.idle,
                last: Instant::now(),
                timer: Box::pin(tokio::time::sleep(self.idle)),
            };
            return (io, addr);
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A counted socket with an idle deadline; uncounted when dropped.
pub(crate) struct Guarded<T> {
    inner: T,
    counter: Arc<ConnCounter>,
    ip: IpAddr,
    idle: Duration,
    /// Last time a byte went either way.
    last: Instant,
    /// Fires at or after `last + idle`; re-armed lazily, so traffic costs no timer operation.
    timer: Pin<Box<Sleep>>,
}

impl<T> Drop for Guarded<T> {
    fn drop(&mut self) {
        self.counter.close(self.ip);
    }
}

impl<T> Guarded<T> {
    /// Pending until the connection has been idle for the limit, then the error that ends it.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let due = self.last + self.idle;
            if Instant::now() >= due {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle too long",
                ));
            }
            self.timer.as_mut().reset(due);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.last = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.poll_idle(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.last = Instant::now();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.last = Instant::now();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn guarded(
        io: tokio::io::DuplexStream,
        counter: &Arc<ConnCounter>,
        idle: Duration,
    ) -> Guarded<tokio::io::DuplexStream> {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        counter.open(ip).ok().unwrap();
        Guarded {
            inner: io,
            counter: counter.clone(),
            ip,
            idle,
            last: Instant::now(),
            timer: Box::pin(tokio::time::sleep(idle)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_socket_is_closed_and_a_talking_one_is_not_and_both_are_uncounted() {
        let counter = Arc::new(ConnCounter::new(10, 10));
        let idle = Duration::from_secs(120);
        let (mut peer, io) = tokio::io::duplex(64);
        let mut g = guarded(io, &counter, idle);
        // Bytes every 100 s keep it open well past the limit.
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(100)).await;
            peer.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            g.read_exact(&mut b).await.unwrap();
        }
        // Then silence: the read fails once the limit has passed since the last byte.
        let t = Instant::now();
        let mut b = [0u8; 1];
        let err = g.read(&mut b).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(t.elapsed() >= idle, "{:?}", t.elapsed());
        assert_eq!(counter.total(), 1);
        drop(g);
        assert_eq!(counter.total(), 0, "uncounted when dropped");
    }

    #[test]
    fn a_limit_short_of_the_connections_is_reported_with_its_numbers() {
        // A limit equal to max_connections leaves nothing for the relay's own files.
        let why = short_of_files(20_000, 20_000).unwrap();
        assert!(
            why.starts_with(
                "the open-file limit (20000) leaves no room for max_connections (20000)"
            ),
            "{why}"
        );
        assert!(why.contains("at most 19872 connections"), "{why}");
        assert!(why.contains("ulimit -n 21152"), "{why}");
        assert!(why.contains("max_connections to 19872 or less"), "{why}");
        assert_eq!(short_of_files(20_000, 20_000 + RESERVED_FDS), None);
        assert_eq!(short_of_files(64, 1024), None);
        assert_eq!(socket_cap(64, Some(1024)), 1024 - RESERVED_FDS);
        assert_eq!(socket_cap(64, None), 64 + HEADROOM_TOTAL);
    }

    #[test]
    fn socket_caps_leave_room_above_the_websocket_caps_and_fit_the_fd_limit() {
        let (total, per_ip) = caps(10, 5);
        assert_eq!(per_ip, 5 + HEADROOM_PER_IP);
        assert!(total > 10);
        if let Some(fds) = open_file_limit() {
            assert!(total + RESERVED_FDS <= fds.max(total + RESERVED_FDS));
            let (big, _) = caps(usize::MAX / 2, 5);
            assert!(big + RESERVED_FDS <= fds, "{big} sockets with {fds} fds");
        }
    }
}

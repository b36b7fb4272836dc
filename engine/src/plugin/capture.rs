//! Capped capture of a plugin's stdout, stderr and `log` calls: nothing a plugin prints can grow the
//! host's memory past `max_log_bytes` per call, and printing never fails inside the guest.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// What one call printed, up to the cap shared by stdout, stderr and the `log` import.
#[derive(Debug, Default)]
pub(crate) struct Captured {
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    /// Bytes kept so far in this call (stdout + stderr + log messages).
    pub(crate) used: usize,
    /// Bytes dropped because the cap was reached.
    pub(crate) dropped: u64,
    pub(crate) cap: usize,
}

impl Captured {
    /// Takes as much of `len` bytes as the cap allows; returns how many to keep.
    pub(crate) fn admit(&mut self, len: usize) -> usize {
        let keep = len.min(self.cap.saturating_sub(self.used));
        self.used += keep;
        self.dropped += (len - keep) as u64;
        keep
    }

    /// Starts a new call: forgets the previous call's output.
    pub(crate) fn reset(&mut self) {
        self.stdout.clear();
        self.stderr.clear();
        self.used = 0;
        self.dropped = 0;
    }
}

/// Which stream a [`LogPipe`] feeds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// A WASI output stream that appends to a [`Captured`] and silently drops bytes past the cap.
#[derive(Clone)]
pub(crate) struct LogPipe {
    pub(crate) shared: Arc<Mutex<Captured>>,
    pub(crate) stream: Stream,
}

impl LogPipe {
    fn append(&self, bytes: &[u8]) {
        let mut c = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        let keep = c.admit(bytes.len());
        match self.stream {
            Stream::Stdout => c.stdout.extend_from_slice(&bytes[..keep]),
            Stream::Stderr => c.stderr.extend_from_slice(&bytes[..keep]),
        }
    }
}

impl IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogPipe {
    async fn ready(&mut self) {}
}

impl OutputStream for LogPipe {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

impl tokio::io::AsyncWrite for LogPipe {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The last `max` bytes of `bytes` as text, for quoting a panic message in an error.
pub(crate) fn tail(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(max)..]);
    text.trim().to_string()
}

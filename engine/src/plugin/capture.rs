//! Capped capture of a plugin's stdout, stderr and `log` calls: nothing a plugin prints can grow the
//! host's memory past `max_log_bytes` per call (plus a fixed tail per stream), and printing never fails
//! inside the guest. Each stream keeps its head (within the shared budget) and, once the budget is
//! spent, its last [`TAIL_BYTES`] bytes, so a panic message printed after a flood still reaches the error.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes kept at the end of each stream once `max_log_bytes` is spent: room for a panic message.
pub(crate) const TAIL_BYTES: usize = 4 << 10;

/// One captured stream: the bytes admitted within the budget, then (once it is spent) the last
/// [`TAIL_BYTES`] bytes, with the count of bytes lost between the two.
#[derive(Debug, Default)]
pub(crate) struct StreamCapture {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    /// Bytes written after the head that are no longer in `tail`.
    skipped: u64,
}

impl StreamCapture {
    /// Appends bytes past the budget to the tail, evicting (and counting) its oldest bytes.
    fn push_tail(&mut self, bytes: &[u8]) {
        let bytes = if bytes.len() > TAIL_BYTES {
            self.skipped += (self.tail.len() + bytes.len() - TAIL_BYTES) as u64;
            self.tail.clear();
            &bytes[bytes.len() - TAIL_BYTES..]
        } else {
            let evict = (self.tail.len() + bytes.len()).saturating_sub(TAIL_BYTES);
            self.tail.drain(..evict);
            self.skipped += evict as u64;
            bytes
        };
        self.tail.extend(bytes);
    }

    /// The head, the number of bytes lost after it, and the tail (contiguous with the head when none
    /// were lost).
    pub(crate) fn parts(&self) -> (&[u8], u64, Vec<u8>) {
        (&self.head, self.skipped, self.tail.iter().copied().collect())
    }

    /// The last `max` bytes the stream kept as text, trimmed, for quoting a panic message in an error.
    /// Not yet sanitized.
    pub(crate) fn last(&self, max: usize) -> String {
        let (head, skipped, tail) = self.parts();
        let kept: Vec<u8> = if skipped == 0 { [head, &tail].concat() } else { tail };
        String::from_utf8_lossy(&kept[kept.len().saturating_sub(max)..]).trim().to_string()
    }
}

/// What one call printed: the heads share the cap with the `log` import; each stream also keeps a tail.
#[derive(Debug, Default)]
pub(crate) struct Captured {
    pub(crate) stdout: StreamCapture,
    pub(crate) stderr: StreamCapture,
    /// Bytes kept so far in this call within the cap (stdout and stderr heads + log messages).
    pub(crate) used: usize,
    /// `log` bytes dropped because the cap was reached.
    pub(crate) log_dropped: u64,
    pub(crate) cap: usize,
}

impl Captured {
    /// Takes as much of `len` bytes as the cap allows; returns how many to keep.
    pub(crate) fn admit(&mut self, len: usize) -> usize {
        let keep = len.min(self.cap.saturating_sub(self.used));
        self.used += keep;
        keep
    }

    /// A `log` message of `len` bytes: how many of them to keep (the rest are counted as dropped).
    pub(crate) fn admit_log(&mut self, len: usize) -> usize {
        let keep = self.admit(len);
        self.log_dropped += (len - keep) as u64;
        keep
    }

    /// Starts a new call: forgets the previous call's output.
    pub(crate) fn reset(&mut self) {
        self.stdout = StreamCapture::default();
        self.stderr = StreamCapture::default();
        self.used = 0;
        self.log_dropped = 0;
    }

    fn write(&mut self, stream: Stream, bytes: &[u8]) {
        let keep = self.admit(bytes.len());
        let s = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        s.head.extend_from_slice(&bytes[..keep]);
        if keep < bytes.len() {
            s.push_tail(&bytes[keep..]);
        }
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
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).write(self.stream, bytes);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn captured(cap: usize) -> Captured {
        Captured { cap, ..Captured::default() }
    }

    #[test]
    fn within_the_cap_everything_is_kept_in_order() {
        let mut c = captured(100);
        c.write(Stream::Stderr, b"hello ");
        c.write(Stream::Stdout, b"out");
        c.write(Stream::Stderr, b"world");
        assert_eq!(c.stderr.parts(), (&b"hello world"[..], 0, Vec::new()));
        assert_eq!((c.stderr.last(5), c.stdout.last(100)), ("world".into(), "out".into()));
    }

    #[test]
    fn past_the_cap_the_tail_is_kept_and_the_gap_counted() {
        let mut c = captured(10);
        c.write(Stream::Stdout, &[b'x'; 6]);
        // 4 bytes fit in the shared cap, the rest of stderr goes to its tail, contiguous with the head.
        c.write(Stream::Stderr, b"abcdefgh");
        assert_eq!(c.stderr.parts(), (&b"abcd"[..], 0, b"efgh".to_vec()));
        assert_eq!(c.stderr.last(100), "abcdefgh");
        // A flood far past the tail, then the message that matters.
        for _ in 0..10 {
            c.write(Stream::Stderr, &[b'.'; 1000]);
        }
        c.write(Stream::Stderr, b"\npanicked: the cause\n");
        let (head, skipped, tail) = c.stderr.parts();
        assert_eq!((head, tail.len()), (&b"abcd"[..], TAIL_BYTES));
        assert_eq!(skipped as usize, 4 + 10_000 + 21 - TAIL_BYTES);
        assert!(c.stderr.last(40).ends_with("panicked: the cause"), "{}", c.stderr.last(40));
        // One write larger than the whole tail keeps its own end.
        c.write(Stream::Stdout, &[b'y'; 3 * TAIL_BYTES]);
        c.write(Stream::Stdout, b"end");
        assert_eq!(c.stdout.skipped, (2 * TAIL_BYTES + 3) as u64);
        assert!(c.stdout.last(10).ends_with("yyyend"));
        assert_eq!((c.admit_log(50), c.log_dropped), (0, 50));
        c.reset();
        assert_eq!((c.log_dropped, c.used, c.stderr.last(10)), (0, 0, String::new()));
        assert_eq!((c.stdout.skipped, c.stdout.parts().2.len()), (0, 0));
    }
}

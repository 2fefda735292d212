//! Bounded capture of a guest's stdout and stderr.
//!
//! Unlike a pipe that errors when full (which would turn a chatty skill into a trap), this one
//! keeps the first `capacity` bytes, silently drops the rest and counts what it dropped, so a
//! stdout flood costs at most `capacity` bytes of host memory.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi_io::poll::Pollable;
use wasmtime_wasi_io::streams::{OutputStream, StreamError};

#[derive(Debug, Default)]
struct Inner {
    kept: BytesMut,
    dropped: u64,
}

/// A clonable handle; all clones write into the same buffer.
#[derive(Debug, Clone)]
pub struct BoundedPipe {
    capacity: usize,
    inner: Arc<Mutex<Inner>>,
}

/// What a pipe captured.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    pub bytes: Bytes,
    pub dropped: u64,
}

impl BoundedPipe {
    pub fn new(capacity: usize) -> Self {
        BoundedPipe {
            capacity,
            inner: Arc::default(),
        }
    }

    fn push(&self, data: &[u8]) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let room = self.capacity.saturating_sub(inner.kept.len());
        let keep = room.min(data.len());
        inner.kept.extend_from_slice(&data[..keep]);
        inner.dropped += (data.len() - keep) as u64;
    }

    pub fn captured(&self) -> Captured {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Captured {
            bytes: inner.kept.clone().freeze(),
            dropped: inner.dropped,
        }
    }
}

impl IsTerminal for BoundedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for BoundedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for BoundedPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always accept a full chunk: what does not fit is dropped, not refused.
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for BoundedPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for BoundedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_head_and_counts_the_rest() {
        let mut p = BoundedPipe::new(10);
        for _ in 0..100 {
            OutputStream::write(&mut p, Bytes::from_static(b"hello")).expect("never refuses");
        }
        let c = p.captured();
        assert_eq!(&c.bytes[..], b"hellohello");
        assert_eq!(c.dropped, 490);
    }
}

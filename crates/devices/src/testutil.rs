//! Mocks and helpers shared by the device unit tests.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::{Interrupt, VmControl, VmRequest};

/// Counts triggers; can be told to fail.
#[derive(Default)]
pub struct MockIrq {
    count: AtomicUsize,
    fail: AtomicBool,
}

impl MockIrq {
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
    pub fn set_fail(&self, fail: bool) {
        self.fail.store(fail, Ordering::SeqCst);
    }
}

impl Interrupt for MockIrq {
    fn trigger(&self) -> std::io::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("mock irq failure"));
        }
        self.count.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Records every request.
#[derive(Default)]
pub struct MockControl {
    requests: Mutex<Vec<VmRequest>>,
}

impl MockControl {
    /// Returns and clears the recorded requests.
    pub fn take(&self) -> Vec<VmRequest> {
        std::mem::take(&mut *self.requests.lock().expect("not poisoned"))
    }
}

impl VmControl for MockControl {
    fn request(&self, request: VmRequest) {
        self.requests.lock().expect("not poisoned").push(request);
    }
}

/// xorshift64*: a tiny deterministic PRNG for access hammering.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A value in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random reads and writes at offsets `0..max_offset` (beyond the device's
/// range too) with widths 0..=8 and random data. Returns the number of
/// accesses made.
pub fn hammer(dev: &mut dyn crate::BusDevice, seed: u64, max_offset: u64, rounds: usize) -> usize {
    let mut rng = Rng::new(seed);
    let mut buf = [0u8; 8];
    for _ in 0..rounds {
        // Mostly small offsets, sometimes huge ones.
        let offset = if rng.below(16) == 0 {
            rng.next()
        } else {
            rng.below(max_offset)
        };
        let width = rng.below(9) as usize;
        if rng.below(2) == 0 {
            dev.read(offset, &mut buf[..width]);
        } else {
            let v = rng.next().to_le_bytes();
            dev.write(offset, &v[..width]);
        }
    }
    rounds
}

/// A sink recording what it got, and able to fail.
#[derive(Clone, Default)]
pub struct CaptureSink {
    bytes: Arc<Mutex<Vec<u8>>>,
    attempts: Arc<Mutex<usize>>,
    fail: Arc<Mutex<Option<io::ErrorKind>>>,
}

impl CaptureSink {
    pub fn bytes(&self) -> Vec<u8> {
        self.bytes.lock().expect("not poisoned").clone()
    }
    pub fn attempts(&self) -> usize {
        *self.attempts.lock().expect("not poisoned")
    }
    pub fn fail_with(&self, kind: Option<io::ErrorKind>) {
        *self.fail.lock().expect("not poisoned") = kind;
    }
}

impl Write for CaptureSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        *self.attempts.lock().expect("not poisoned") += 1;
        if let Some(kind) = *self.fail.lock().expect("not poisoned") {
            return Err(io::Error::from(kind));
        }
        self.bytes
            .lock()
            .expect("not poisoned")
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

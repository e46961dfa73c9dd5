//! virtio-rng: an entropy source backed by the host's getrandom(2).
//!
//! One queue (requestq, index 0). Each chain is a set of device-writable
//! buffers; the device fills at most [`MAX_REQUEST_BYTES`] of them per
//! chain and reports how many bytes it wrote (virtio 1.2, section 5.4).
//! A chain with a device-readable buffer is malformed: the device then needs
//! a reset.

mod device;
pub mod request;

pub use device::{EntropySource, Getrandom, Rng, RNG_QUEUE_SIZE};
pub use request::MAX_REQUEST_BYTES;

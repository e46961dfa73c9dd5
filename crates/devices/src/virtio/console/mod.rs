//! virtio-console: one hvc port (virtio 1.2, section 5.3), no multiport,
//! no size or emergency-write features.
//!
//! Queues: 0 = receiveq (host to guest, device-writable buffers), 1 =
//! transmitq (guest to host, device-readable buffers).
//!
//! # Wiring
//! - Output: any `Box<dyn Write + Send>`, with the UART's rules: a sink that
//!   would block loses the bytes, a failing sink is abandoned until
//!   [`Console::set_output`]; lost bytes are counted
//!   ([`Console::dropped_output_bytes`]).
//! - Input: [`Console::enqueue_input`] takes as many bytes as the guest's
//!   posted receive buffers hold and returns how many it took; keep the
//!   rest. When it took fewer than offered, the [`Interrupt`](crate::Interrupt)
//!   given to [`Console::set_input_ready_notifier`] is triggered once the
//!   guest posts receive buffers (the receive queue's notification reaches
//!   [`process_queue`](crate::virtio::VirtioDevice::process_queue)): stop
//!   polling host input until then.

mod device;
pub mod request;

pub use device::{Console, CONSOLE_QUEUE_SIZE, RECEIVE_QUEUE, TRANSMIT_QUEUE};

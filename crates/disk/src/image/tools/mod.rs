//! Whole-disk tools built on [`Image`](super::Image): convert, rebase,
//! commit and map (what `vireo img` runs).
//!
//! Every tool works on the virtual disk through the [`Image`] trait, so it
//! does not care which formats it meets; the only format-specific step is
//! `convert -c`, which needs a [`Qcow2`](super::Qcow2) target for its
//! compressed writes. They share one primitive, [`chain_status`]: which
//! layer of a backing chain decides the contents of a range.
//!
//! Progress is reported through a [`Progress`] callback (done, total) in
//! bytes of work; the callers turn it into qemu-img's percentages.

mod chain;
pub mod commit;
pub mod convert;
pub mod map;
pub mod rebase;

#[cfg(test)]
pub(crate) mod testutil;

pub use chain::{chain_status, ChainStatus, Source};
pub use commit::{commit, CommitError, CommitStats};
pub use convert::{convert, ConvertError, ConvertOptions, ConvertStats, Target};
pub use map::{map, MapEntry};
pub use rebase::{rebase, RebaseError, RebaseStats};

/// Receives progress as (bytes done, bytes in total); called from one
/// thread at a time, possibly not the caller's.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// A [`Progress`] that ignores everything.
pub fn no_progress(_done: u64, _total: u64) {}

/// The size of the chunks the tools read and write (as qemu-img's 2 MiB).
pub const CHUNK: u64 = 2 << 20;

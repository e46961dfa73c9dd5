//! XML plumbing: a positioned element tree read with quick-xml, verbatim
//! (raw) subtrees, and the normalising writer.

pub mod raw;
pub(crate) mod tree;
pub(crate) mod writer;

//! Whole-disk tools built on [`Image`](super::Image): convert, rebase,
//! commit and map (what `vireo img` runs).

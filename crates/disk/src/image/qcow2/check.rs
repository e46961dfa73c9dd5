//! Consistency check and repair (`vireo img check [-r leaks|all]`).
//!
//! Every reference is counted from the structures themselves (header, L1
//! and refcount tables, refcount blocks, snapshot table, every L1 tree) and
//! compared with the stored refcounts. A stored count above the references
//! is a leak (space lost, no harm); below is a corruption (a cluster could
//! be handed out twice). COPIED flags that disagree with the refcounts are
//! corruptions too.

use super::meta::{self, Ctx, Mapping, COPIED, OFFSET_MASK};
use super::Qcow2;
use crate::image::ImageError;

/// What `check` may repair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RepairMode {
    /// Report only.
    #[default]
    None,
    /// Lower refcounts that are too high (leaks).
    Leaks,
    /// Leaks, refcounts that are too low, and COPIED flags.
    All,
}

/// The outcome of a check (after repairs, if any were asked for).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CheckReport {
    /// Problems that can lose data (refcounts too low, bad entries).
    pub corruptions: u64,
    /// Clusters whose refcount is higher than their references.
    pub leaks: u64,
    pub corruptions_fixed: u64,
    pub leaks_fixed: u64,
    /// Guest clusters with data in this image, and the disk's cluster count.
    pub allocated_clusters: u64,
    pub total_clusters: u64,
    /// Allocated clusters not right after the previous one on the host.
    pub fragmented_clusters: u64,
    pub compressed_clusters: u64,
    /// End of the last cluster in use.
    pub image_end_offset: u64,
    /// One line per problem, in the order found.
    pub messages: Vec<String>,
}

/// The most clusters a check will count (bounds its memory to 1 GiB of
/// counters; far beyond any real image's metadata needs).
const MAX_CHECK_CLUSTERS: u64 = 1 << 28;

struct Counter {
    refs: Vec<u32>,
    cluster_bits: u32,
    file_clusters: u64,
    /// The active tree's entries whose COPIED flag must match the stored
    /// refcount of the cluster they point to, noted during the walk so the
    /// tables are read once.
    copied: Vec<Flagged>,
}

/// An active L1 or L2 entry pointing inside the file.
enum Flagged {
    L1 { index: usize, entry: u64 },
    L2 { entry: u64 },
}

impl Counter {
    /// Counts one reference to `len` bytes at `offset`; false when the range
    /// lies outside the file.
    fn add(&mut self, offset: u64, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        let first = offset >> self.cluster_bits;
        let last = (offset + len - 1) >> self.cluster_bits;
        if last >= self.file_clusters.max(self.refs.len() as u64) {
            return false;
        }
        for c in first..=last {
            if let Some(r) = self.refs.get_mut(c as usize) {
                *r = r.saturating_add(1);
            }
        }
        true
    }
}

impl Qcow2 {
    /// Checks the image, repairing what `repair` allows.
    pub fn check(&mut self, repair: RepairMode) -> Result<CheckReport, ImageError> {
        if repair != RepairMode::None {
            self.check_writable("repairing")?;
        }
        let mut report = self.check_once()?;
        if repair == RepairMode::None || (report.leaks == 0 && report.corruptions == 0) {
            return Ok(report);
        }
        self.repair(repair)?;
        let after = self.check_once()?;
        report.leaks_fixed = report.leaks.saturating_sub(after.leaks);
        report.corruptions_fixed = report.corruptions.saturating_sub(after.corruptions);
        if repair == RepairMode::All && after.corruptions == 0 {
            self.clear_error_flags()?;
        }
        report.leaks = after.leaks;
        report.corruptions = after.corruptions;
        report.image_end_offset = after.image_end_offset;
        Ok(report)
    }

    /// Counts references; returns the counter and the report so far.
    fn count(&self, report: &mut CheckReport) -> Result<Counter, ImageError> {
        let ctx = &self.ctx;
        let cs = ctx.cs();
        let cb = ctx.cluster_bits;
        let mut meta = self.lock();
        if !ctx.read_only {
            meta.settle(ctx)?;
        }
        let file_len = ctx.file_len()?;
        let file_clusters = file_len.div_ceil(cs);
        // Refcount blocks may describe clusters past the end of the file.
        // Refcount blocks may give counts to clusters past the end of the
        // file (a crash between the refcount and the data): count up to the
        // last such cluster, looking only at blocks reaching past the end.
        let rb_bits = ctx.rb_bits();
        let mut n = file_clusters;
        for index in (0..meta.reftable.len()).rev() {
            let first = (index as u64) << rb_bits;
            let last = first + (1 << rb_bits);
            if last <= n {
                break;
            }
            if meta.reftable[index] & OFFSET_MASK == 0 {
                continue;
            }
            for c in (first.max(n)..last.min(MAX_CHECK_CLUSTERS + 1)).rev() {
                if meta.refcount(ctx, c)? != 0 {
                    n = c + 1;
                    break;
                }
            }
        }
        if n > MAX_CHECK_CLUSTERS {
            return Err(ImageError::Unsupported {
                path: ctx.path.clone(),
                what: format!("checking an image of {n} clusters"),
            });
        }
        let mut counter = Counter {
            refs: vec![0; n as usize],
            cluster_bits: cb,
            file_clusters,
            copied: Vec::new(),
        };
        let problem = |report: &mut CheckReport, text: String| {
            report.corruptions += 1;
            report.messages.push(format!("ERROR {text}"));
        };
        counter.add(0, cs);
        let h = meta.header.clone();
        if !counter.add(h.l1_table_offset, u64::from(h.l1_size) * 8) {
            problem(
                report,
                "the L1 table lies beyond the end of the file".into(),
            );
        }
        counter.add(
            h.refcount_table_offset,
            u64::from(h.refcount_table_clusters) * cs,
        );
        let snapshot_bytes = super::snapshot::table_bytes(&meta.snapshots_cache).len() as u64;
        counter.add(h.snapshots_offset, snapshot_bytes);
        for (i, &block) in meta.reftable.clone().iter().enumerate() {
            let offset = block & !0x1ff;
            if block & 0x1ff != 0 {
                problem(
                    report,
                    format!("refcount table entry {i} has reserved bits set"),
                );
            }
            if offset != 0 && !counter.add(offset, cs) {
                problem(
                    report,
                    format!("refcount block {i} at {offset:#x} lies beyond the end of the file"),
                );
            }
        }
        let mut trees = vec![(None, meta.l1.clone())];
        for s in meta.snapshots_cache.clone() {
            counter.add(s.l1_offset, u64::from(s.l1_size) * 8);
            let l1 = meta::read_table(
                ctx,
                s.l1_offset,
                s.l1_size as usize,
                "a snapshot's L1 table",
            )?;
            trees.push((Some(s.info.name.clone()), l1));
        }
        let entries = 1usize << ctx.l2_bits();
        let mut last_host = None;
        for (name, l1) in trees {
            let active = name.is_none();
            for (i, &l1e) in l1.iter().enumerate() {
                let table = l1e & OFFSET_MASK;
                if table == 0 {
                    continue;
                }
                if l1e & 0x7f00_0000_0000_01fe != 0 || !table.is_multiple_of(cs) {
                    problem(report, format!("L1 entry {i} ({l1e:#x}) is invalid"));
                    continue;
                }
                if !counter.add(table, cs) {
                    problem(
                        report,
                        format!("L2 table at {table:#x} lies beyond the end of the file"),
                    );
                    continue;
                }
                if active {
                    counter.copied.push(Flagged::L1 {
                        index: i,
                        entry: l1e,
                    });
                }
                let mut data = vec![0u8; cs as usize];
                ctx.read_exact(&mut data, table, "an L2 table")?;
                for j in 0..entries {
                    let entry = meta::get_be64(&data, j);
                    let gc = ((i << ctx.l2_bits()) + j) as u64;
                    let mapping = match meta.classify(ctx, gc, entry) {
                        Ok(m) => m,
                        Err(e) => {
                            problem(report, e.to_string());
                            continue;
                        }
                    };
                    match mapping {
                        Mapping::Data { host, .. }
                        | Mapping::Zero {
                            host: Some(host), ..
                        } => {
                            if !counter.add(host, cs) {
                                problem(report, format!(
                                    "the data of guest offset {:#x} at {host:#x} lies beyond the end of the file",
                                    gc << cb
                                ));
                            } else if active {
                                counter.copied.push(Flagged::L2 { entry });
                            }
                            // Preallocated zero clusters count as allocated
                            // too, as qemu-img reports them.
                            if active {
                                report.allocated_clusters += 1;
                                if last_host.is_some_and(|l: u64| l + cs != host) {
                                    report.fragmented_clusters += 1;
                                }
                                last_host = Some(host);
                            }
                        }
                        Mapping::Compressed { offset, len } => {
                            if !counter.add(offset, len) {
                                problem(report, format!(
                                    "the compressed data of guest offset {:#x} lies beyond the end of the file",
                                    gc << cb
                                ));
                            }
                            if active {
                                // Compressed clusters count as fragmented
                                // (they share sectors), as qemu-img counts.
                                report.allocated_clusters += 1;
                                report.compressed_clusters += 1;
                                report.fragmented_clusters += 1;
                            }
                        }
                        Mapping::Zero { host: None, .. } | Mapping::Unallocated => {}
                    }
                }
            }
        }
        report.total_clusters = self.size.div_ceil(cs);
        Ok(counter)
    }

    fn check_once(&self) -> Result<CheckReport, ImageError> {
        let ctx = &self.ctx;
        let cb = ctx.cluster_bits;
        let mut report = CheckReport::default();
        let counter = self.count(&mut report)?;
        let mut meta = self.lock();
        let mut end = 0;
        for (c, &refs) in counter.refs.iter().enumerate() {
            let c = c as u64;
            let stored = meta.refcount(ctx, c)?;
            if stored > 0 || refs > 0 {
                end = c + 1;
            }
            match stored.cmp(&u64::from(refs)) {
                std::cmp::Ordering::Greater => {
                    report.leaks += 1;
                    report.messages.push(format!(
                        "Leaked cluster {c} refcount={stored} reference={refs}"
                    ));
                }
                std::cmp::Ordering::Less => {
                    report.corruptions += 1;
                    report.messages.push(format!(
                        "ERROR cluster {c} refcount={stored} reference={refs}"
                    ));
                }
                std::cmp::Ordering::Equal => {}
            }
        }
        // COPIED flags of the active tree.
        for flagged in &counter.copied {
            let (entry, what) = match *flagged {
                Flagged::L1 { index, entry } => (
                    entry,
                    format!("L2 cluster: l1_index={index} l1_entry={entry:x}"),
                ),
                Flagged::L2 { entry } => (entry, format!("data cluster: l2_entry={entry:x}")),
            };
            let rc = meta.refcount(ctx, (entry & OFFSET_MASK) >> cb)?;
            if (rc == 1) != (entry & COPIED != 0) {
                report.corruptions += 1;
                report
                    .messages
                    .push(format!("ERROR OFLAG_COPIED {what} refcount={rc}"));
            }
        }
        report.image_end_offset = end << cb;
        Ok(report)
    }

    /// Clears the dirty and corrupt bits once the image is consistent.
    fn clear_error_flags(&mut self) -> Result<(), ImageError> {
        let ctx = &self.ctx;
        let meta = self.meta.get_mut().unwrap_or_else(|p| p.into_inner());
        let flags = super::header::INCOMPAT_DIRTY | super::header::INCOMPAT_CORRUPT;
        if meta.header.version < 3 || meta.header.incompatible & flags == 0 {
            return Ok(());
        }
        meta.header.incompatible &= !flags;
        ctx.write_all(&meta.header.incompatible.to_be_bytes(), 72, "the header")?;
        ctx.sync()
    }

    /// Sets refcounts to the counted references (leaks only, or all) and,
    /// with `All`, the COPIED flags. Returns (leaks fixed, others fixed).
    fn repair(&mut self, mode: RepairMode) -> Result<(u64, u64), ImageError> {
        let mut scratch = CheckReport::default();
        let counter = self.count(&mut scratch)?;
        let ctx: &Ctx = &self.ctx;
        let meta = self.meta.get_mut().unwrap_or_else(|p| p.into_inner());
        let (mut leaks, mut others) = (0, 0);
        for (c, &refs) in counter.refs.iter().enumerate() {
            let c = c as u64;
            let stored = meta.refcount(ctx, c)?;
            let refs = u64::from(refs);
            if stored > refs {
                meta.change_refcount(ctx, c, -((stored - refs) as i64))?;
                leaks += 1;
            } else if stored < refs && mode == RepairMode::All {
                meta.change_refcount(ctx, c, (refs - stored) as i64)?;
                others += 1;
            }
        }
        meta.settle(ctx)?;
        if mode == RepairMode::All {
            meta.fix_copied(ctx)?;
            meta.settle(ctx)?;
        }
        Ok((leaks, others))
    }
}

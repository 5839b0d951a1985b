//! Crash states from a recorded channel trace, ALICE/CrashMonkey style.
//!
//! A trace (see `mappedram::channel::Trace`) lists a run's file-changing
//! operations in issue order. A power cut after some operation leaves:
//! - every operation before the last *completed* `fdatasync` (durable);
//! - any subset of the operations issued after it (the page cache may have
//!   written back any of them, in any order, or none);
//! - the last kept one possibly torn: only a prefix of it, cut at a 512-byte
//!   or 4 KiB boundary of the file, reached the disk.
//!
//! [`states`] enumerates such states per sync epoch (the operations between
//! two syncs): every subset when the epoch has at most [`ALL_SUBSETS_MAX`]
//! operations, else a bounded family (every subset keeping at most two,
//! every subset dropping at most two, and every prefix). Each state says the
//! last operation index it contains, so a checker can tell which
//! completions the run could have reached.

use mappedram::channel::TraceOp;
use std::collections::BTreeSet;

/// Epochs with at most this many operations get every subset (2^n).
pub const ALL_SUBSETS_MAX: usize = 10;
/// Tear granularities (a disk sector, a page).
pub const TEAR_UNITS: [u64; 2] = [512, 4096];

/// Apply `op` to the file image `file`; `cut` keeps only the first `cut`
/// bytes of a write or hole punch (a torn operation).
pub fn apply(file: &mut Vec<u8>, op: &TraceOp, cut: Option<u64>) {
    match op {
        TraceOp::Write { offset, data } => {
            let n = cut.unwrap_or(data.len() as u64).min(data.len() as u64) as usize;
            let start = *offset as usize;
            if file.len() < start + n {
                file.resize(start + n, 0);
            }
            file[start..start + n].copy_from_slice(&data[..n]);
        }
        TraceOp::PunchHole { offset, len } => {
            let n = cut.unwrap_or(*len).min(*len);
            let start = (*offset as usize).min(file.len());
            let end = ((offset + n) as usize).min(file.len());
            file[start..end].fill(0);
        }
        TraceOp::SetLen(len) => file.resize(*len as usize, 0),
        TraceOp::Sync => {}
    }
}

/// One crash state: the file's bytes and the index of the last trace
/// operation it contains (`None`: none of the trace).
pub struct State {
    pub file: Vec<u8>,
    pub last_op: Option<usize>,
    /// Index of the last completed sync (`None`: none yet).
    pub durable_sync: Option<usize>,
    /// How the state was made, for failure messages.
    pub how: String,
}

/// Where a torn copy of `op` may be cut: file offsets on `TEAR_UNITS`
/// boundaries strictly inside it (the first, middle and last of each), as
/// byte counts from the operation's start.
fn tear_points(op: &TraceOp) -> Vec<u64> {
    let (offset, len) = match op {
        TraceOp::Write { offset, data } => (*offset, data.len() as u64),
        TraceOp::PunchHole { offset, len } => (*offset, *len),
        _ => return Vec::new(),
    };
    let mut cuts = BTreeSet::new();
    for unit in TEAR_UNITS {
        let first = (offset / unit + 1) * unit;
        let end = offset + len;
        if first >= end {
            continue;
        }
        let last = (end - 1) / unit * unit;
        let mid = (first + (last - first) / 2) / unit * unit;
        for c in [first, mid, last] {
            if c > offset && c < end {
                cuts.insert(c - offset);
            }
        }
    }
    cuts.into_iter().collect()
}

/// The subsets of `0..n` explored for an epoch of `n` operations, each
/// sorted.
fn subsets(n: usize) -> Vec<Vec<usize>> {
    if n <= ALL_SUBSETS_MAX {
        return (0u32..1 << n)
            .map(|m| (0..n).filter(|i| m & (1 << i) != 0).collect())
            .collect();
    }
    let mut out = BTreeSet::new();
    for i in 0..=n {
        out.insert((0..i).collect::<Vec<_>>());
    }
    for a in 0..n {
        out.insert(vec![a]);
        out.insert((0..n).filter(|&x| x != a).collect());
        for b in a + 1..n {
            out.insert(vec![a, b]);
            out.insert((0..n).filter(|&x| x != a && x != b).collect());
        }
    }
    out.into_iter().collect()
}

/// Every crash state of `ops` run on a file that held `start`, passed to
/// `visit` one at a time. Returns how many were visited.
pub fn states(start: &[u8], ops: &[TraceOp], mut visit: impl FnMut(State)) -> u64 {
    let syncs: Vec<usize> = (0..ops.len())
        .filter(|&i| ops[i] == TraceOp::Sync)
        .collect();
    let mut durable = start.to_vec();
    let mut done = 0; // ops[..done] are applied to `durable`
    let mut count = 0;
    for epoch in 0..=syncs.len() {
        let (begin, durable_sync) = match epoch {
            0 => (0, None),
            e => (syncs[e - 1] + 1, Some(syncs[e - 1])),
        };
        for op in &ops[done..begin] {
            apply(&mut durable, op, None);
        }
        done = begin;
        let end = syncs.get(epoch).copied().unwrap_or(ops.len());
        let pending: Vec<usize> = (begin..end).collect();
        for subset in subsets(pending.len()) {
            let kept: Vec<usize> = subset.iter().map(|&i| pending[i]).collect();
            let last = kept.last().copied();
            let mut cuts: Vec<Option<u64>> = vec![None];
            if let Some(l) = last {
                cuts.extend(tear_points(&ops[l]).into_iter().map(Some));
            }
            for cut in cuts {
                let mut file = durable.clone();
                for (j, &i) in kept.iter().enumerate() {
                    let c = if j + 1 == kept.len() { cut } else { None };
                    apply(&mut file, &ops[i], c);
                }
                count += 1;
                visit(State {
                    file,
                    last_op: last.or(durable_sync),
                    durable_sync,
                    how: format!(
                        "epoch {epoch} (durable through op {durable_sync:?}), kept ops {kept:?}{}",
                        cut.map_or(String::new(), |c| format!(
                            ", the last torn after {c} bytes"
                        ))
                    ),
                });
            }
        }
    }
    count
}

//! Coalescing runs of present pages into spans: one request covers several
//! runs and the short gaps between them.
//!
//! A save writes a span in one request straight from guest memory, so its
//! gaps (zero pages) go to the file as zeros while their bits stay clear:
//! a clear bit means "zero page" whatever the slot holds. A restore reads a
//! span in one request, its gaps into a scratch buffer (a hole in the file
//! costs the disk nothing). Pages of a gap are never reported present.

/// A run of pages: (first page, count).
pub(crate) type Run = (u64, u64);

/// One request: pages `[start, start + len)` and the runs of present pages
/// inside it (`runs[first_run..end_run]` of the input).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: u64,
    pub(crate) len: u64,
    pub(crate) first_run: usize,
    pub(crate) end_run: usize,
}

/// Group `runs` (sorted, disjoint, non-adjacent) into spans: a gap of at
/// most `max_gap` pages joins two runs when `joinable(gap start, gap len)`
/// allows it and the span stays within `max_len` pages. `max_gap = 0` keeps
/// every run on its own.
pub(crate) fn coalesce(
    runs: &[Run],
    max_gap: u64,
    max_len: u64,
    mut joinable: impl FnMut(u64, u64) -> bool,
    mut out: impl FnMut(Span),
) {
    let mut i = 0;
    while i < runs.len() {
        let (start, mut end) = (runs[i].0, runs[i].0 + runs[i].1);
        let mut j = i + 1;
        while j < runs.len() {
            let (s, n) = runs[j];
            let gap = s - end;
            if gap > max_gap || s + n - start > max_len || !joinable(end, gap) {
                break;
            }
            end = s + n;
            j += 1;
        }
        out(Span {
            start,
            len: end - start,
            first_run: i,
            end_run: j,
        });
        i = j;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(runs: &[Run], gap: u64, max: u64, deny: Option<u64>) -> Vec<(u64, u64, usize, usize)> {
        let mut v = Vec::new();
        coalesce(
            runs,
            gap,
            max,
            |s, _| Some(s) != deny,
            |sp| v.push((sp.start, sp.len, sp.first_run, sp.end_run)),
        );
        v
    }

    #[test]
    fn joins_short_gaps_only() {
        let runs = [(0, 2), (3, 1), (10, 4), (15, 1)];
        assert_eq!(
            spans(&runs, 0, 1024, None),
            vec![(0, 2, 0, 1), (3, 1, 1, 2), (10, 4, 2, 3), (15, 1, 3, 4)]
        );
        assert_eq!(
            spans(&runs, 1, 1024, None),
            vec![(0, 4, 0, 2), (10, 6, 2, 4)]
        );
        assert_eq!(spans(&runs, 6, 1024, None), vec![(0, 16, 0, 4)]);
    }

    #[test]
    fn respects_max_len_and_veto() {
        let runs = [(0, 2), (3, 1), (10, 4), (15, 1)];
        assert_eq!(spans(&runs, 6, 8, None), vec![(0, 4, 0, 2), (10, 6, 2, 4)]);
        // The gap starting at page 2 may not be written (e.g. a set bit).
        assert_eq!(
            spans(&runs, 6, 1024, Some(2)),
            vec![(0, 2, 0, 1), (3, 13, 1, 4)]
        );
        assert_eq!(spans(&[], 6, 8, None), vec![]);
    }
}

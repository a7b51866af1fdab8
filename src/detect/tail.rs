//! Tail probabilities of a value against a sliding window of past values, in
//! bounded memory.
//!
//! The window is a ring of closed blocks plus one open block. A closed block keeps
//! only what the queries need: its length, its `extremes` largest and smallest
//! values exactly, and a few quantiles of its body. The open block keeps its raw
//! values until it closes. So the memory is fixed by the parameters, not by the
//! stream: about `blocks * (2 * extremes + QUANTILES + 1) * 8 + block_len * 8`
//! bytes.
//!
//! Queries:
//! - [`TailWindow::p_upper`] / [`TailWindow::p_lower`]: the probability of a value
//!   at least as extreme, empirical inside the sample and, beyond the `tail_q`
//!   quantile, an exponential tail fitted to the excesses over that quantile
//!   (peaks over threshold). Unlike a plain rank, the fitted tail tells a value
//!   that barely sets a new record from one far outside everything seen, and it
//!   does not depend on how long the history is.
//! - [`TailWindow::median`]: approximate, from the block medians.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Quantiles kept per closed block for the body of the distribution.
const QUANTILES: usize = 16;

/// Values the open block must hold before its body stands in for the closed
/// blocks' (see [`TailWindow::body_range`]), and how often it is recomputed.
const OPEN_BODY_MIN: usize = 48;
const OPEN_BODY_EVERY: usize = 24;

/// A trimmed fit ([`Fit::Trimmed`]) of a short history (its tail fraction less
/// than `min_tail` values) leaves out the largest excess of tails of at least
/// this many values. Such a tail (hourly samples, the first weeks) is otherwise
/// set by one value: the alert value of
/// the last incident, which the univariate detector keeps as its excursion's
/// one value (`release_held`), would make the next like incident look
/// ordinary. One value is no evidence of a heavy tail; a series whose tail is
/// heavy has several such values, and keeps them in.
const TRIM_FROM: f64 = 3.0;

/// How a tail's scale is fitted to its excesses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fit {
    Mean,
    Trimmed,
}

/// The shape of a [`TailWindow`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TailShape {
    /// Values per block.
    pub block_len: usize,
    /// Closed blocks kept: the window spans `blocks * block_len` to
    /// `(blocks + 1) * block_len` values.
    pub blocks: usize,
    /// Fraction of the window that forms each fitted tail.
    pub tail_q: f64,
    /// At least this many values form each fitted tail.
    pub min_tail: usize,
    /// Floor of the fitted tail's scale, as a fraction of the scale an exponential
    /// tail from the median to the tail threshold would have. The largest values of
    /// a smooth or periodic feature come in near-equal runs; their excesses alone
    /// understate how far the tail reaches.
    pub scale_floor: f64,
}

impl TailShape {
    /// Values kept exactly at each end of a block: enough for the fitted tail of a
    /// full window.
    fn extremes(&self) -> usize {
        let window = (self.blocks + 1) * self.block_len;
        ((window as f64 * self.tail_q).ceil() as usize)
            .max(self.min_tail)
            .max(1)
    }

    /// Bytes held by a full window of this shape (values only).
    pub fn bytes(&self) -> usize {
        let per_block = 2 * self.extremes() + QUANTILES + 1;
        (self.blocks * per_block + self.block_len + 4 * self.extremes())
            * std::mem::size_of::<f64>()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Block {
    len: usize,
    /// Largest values, descending.
    top: Vec<f64>,
    /// Smallest values, ascending.
    bottom: Vec<f64>,
    /// `QUANTILES + 1` values at ranks i/QUANTILES of the sorted block.
    quantiles: Vec<f64>,
}

impl Block {
    fn close(mut values: Vec<f64>, extremes: usize) -> Self {
        values.sort_by(f64::total_cmp);
        let len = values.len();
        let k = extremes.min(len);
        let top = values[len - k..].iter().rev().copied().collect();
        let bottom = values[..k].to_vec();
        let quantiles = (0..=QUANTILES)
            .map(|i| values[((len - 1) * i) / QUANTILES])
            .collect();
        Self {
            len,
            top,
            bottom,
            quantiles,
        }
    }

    /// Approximate number of values >= v.
    fn count_ge(&self, v: f64) -> f64 {
        if let Some(last) = self.top.last()
            && v > *last
        {
            return self.top.iter().take_while(|t| **t >= v).count() as f64;
        }
        if let Some(last) = self.bottom.last()
            && v <= *last
        {
            let below = self.bottom.iter().take_while(|b| **b < v).count();
            return (self.len - below) as f64;
        }
        (self.len as f64 - self.rank_below(v)).max(0.0)
    }

    /// Approximate number of values <= v.
    fn count_le(&self, v: f64) -> f64 {
        if let Some(last) = self.bottom.last()
            && v < *last
        {
            return self.bottom.iter().take_while(|b| **b <= v).count() as f64;
        }
        if let Some(last) = self.top.last()
            && v >= *last
        {
            let above = self.top.iter().take_while(|t| **t > v).count();
            return (self.len - above) as f64;
        }
        self.rank_below(v).min(self.len as f64)
    }

    /// Interpolated number of values below v, from the quantiles.
    fn rank_below(&self, v: f64) -> f64 {
        let q = &self.quantiles;
        let i = q.partition_point(|x| *x < v);
        if i == 0 {
            return 0.0;
        }
        if i > QUANTILES {
            return self.len as f64;
        }
        let (lo, hi) = (q[i - 1], q[i]);
        let frac = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
        ((i - 1) as f64 + frac) / QUANTILES as f64 * self.len as f64
    }

    fn median(&self) -> f64 {
        self.quantiles[QUANTILES / 2]
    }
}

/// A sliding window of values with tail-probability queries (see the module docs).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TailWindow {
    shape: TailShape,
    extremes: usize,
    closed: VecDeque<Block>,
    open: Vec<f64>,
    /// The `extremes` largest of the open block, descending.
    open_top: Vec<f64>,
    /// The `extremes` smallest of the open block, ascending.
    open_bottom: Vec<f64>,
    /// The `extremes` largest of all closed blocks, descending.
    closed_top: Vec<f64>,
    /// The `extremes` smallest of all closed blocks, ascending.
    closed_bottom: Vec<f64>,
    closed_len: usize,
    /// Floor of every fitted tail's scale: the resolution of the values (see
    /// [`TailWindow::set_resolution`]).
    #[serde(default)]
    resolution: f64,
    /// The open block summed up like a closed one, while no block has closed
    /// (see [`Self::body_range`]).
    #[serde(default)]
    open_summary: Option<Block>,
}

impl TailWindow {
    pub fn new(shape: TailShape) -> Self {
        let shape = TailShape {
            block_len: shape.block_len.max(1),
            ..shape
        };
        Self {
            extremes: shape.extremes(),
            shape,
            closed: VecDeque::new(),
            open: Vec::new(),
            open_top: Vec::new(),
            open_bottom: Vec::new(),
            closed_top: Vec::new(),
            closed_bottom: Vec::new(),
            closed_len: 0,
            resolution: 0.0,
            open_summary: None,
        }
    }

    /// Sets the smallest step the values can take (1 for counts). No fitted tail
    /// is steeper than one `resolution` per e-fold: a count one above its record
    /// is not a far outlier just because the record was hit many times.
    pub fn set_resolution(&mut self, resolution: f64) {
        if resolution.is_finite() && resolution >= 0.0 {
            self.resolution = resolution;
        }
    }

    /// Number of values in the window.
    pub fn len(&self) -> usize {
        self.closed_len + self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        self.open.push(v);
        keep_extreme(&mut self.open_top, v, self.extremes, |a, b| a > b);
        keep_extreme(&mut self.open_bottom, v, self.extremes, |a, b| a < b);
        self.refresh_open_summary();
        if self.open.len() >= self.shape.block_len {
            let values = std::mem::take(&mut self.open);
            self.open_top.clear();
            self.open_bottom.clear();
            self.closed.push_back(Block::close(values, self.extremes));
            self.closed_len += self.shape.block_len;
            while self.closed.len() > self.shape.blocks {
                if let Some(old) = self.closed.pop_front() {
                    self.closed_len -= old.len;
                }
            }
            self.merge_closed();
        }
    }

    fn merge_closed(&mut self) {
        let mut top: Vec<f64> = self
            .closed
            .iter()
            .flat_map(|b| b.top.iter().copied())
            .collect();
        top.sort_by(|a, b| b.total_cmp(a));
        top.truncate(self.extremes);
        let mut bottom: Vec<f64> = self
            .closed
            .iter()
            .flat_map(|b| b.bottom.iter().copied())
            .collect();
        bottom.sort_by(f64::total_cmp);
        bottom.truncate(self.extremes);
        self.closed_top = top;
        self.closed_bottom = bottom;
    }

    /// The k largest values of the window, descending (k = the fitted tail size).
    fn top(&self, k: usize) -> Vec<f64> {
        merge_k(&self.closed_top, &self.open_top, k, |a, b| a >= b)
    }

    fn bottom(&self, k: usize) -> Vec<f64> {
        merge_k(&self.closed_bottom, &self.open_bottom, k, |a, b| a <= b)
    }

    fn tail_size(&self) -> usize {
        let n = self.len();
        ((n as f64 * self.shape.tail_q).ceil() as usize)
            .max(self.shape.min_tail)
            .min(self.extremes)
            .min(n)
    }

    fn count_ge(&self, v: f64) -> f64 {
        self.closed.iter().map(|b| b.count_ge(v)).sum::<f64>()
            + self.open.iter().filter(|x| **x >= v).count() as f64
    }

    fn count_le(&self, v: f64) -> f64 {
        self.closed.iter().map(|b| b.count_le(v)).sum::<f64>()
            + self.open.iter().filter(|x| **x <= v).count() as f64
    }

    /// P(X >= v): empirical inside the sample, fitted exponential tail beyond the
    /// `tail_q` quantile. 1 for an empty window.
    pub fn p_upper(&self, v: f64) -> f64 {
        self.upper(v, Fit::Mean)
    }

    fn upper(&self, v: f64, how: Fit) -> f64 {
        let n = self.len();
        let empirical = (self.count_ge(v) + 1.0) / (n as f64 + 1.0);
        if n < 20 {
            return empirical.min(1.0);
        }
        let k = self.tail_size();
        let top = self.top(k);
        let Some(&u) = top.last() else {
            return empirical.min(1.0);
        };
        if v <= u {
            return empirical.min(1.0);
        }
        let sigma = self.fit(top.iter().map(|y| y - u), how, u - self.median(), n, k);
        exp_tail(k, n, v - u, sigma, u)
    }

    /// Scale of the exponential tail fitted to `excesses` over the threshold:
    /// their mean (without the largest one for [`Fit::Trimmed`]), floored (see
    /// [`TailShape::scale_floor`] and [`Self::set_resolution`]).
    fn fit(
        &self,
        excesses: impl Iterator<Item = f64>,
        how: Fit,
        from_median: f64,
        n: usize,
        k: usize,
    ) -> f64 {
        let (count, sum, largest) = excesses.fold((0.0, 0.0, 0.0f64), |(c, s, m), e| {
            (c + 1.0, s + e, m.max(e))
        });
        let short = (n as f64 * self.shape.tail_q) < self.shape.min_tail as f64;
        let mean = if how == Fit::Trimmed && short && count >= TRIM_FROM {
            (sum - largest) / (count - 1.0)
        } else {
            sum / f64::max(count, 1.0)
        };
        mean.max(self.scale_from_median(from_median, n, k))
            .max(self.resolution)
    }

    /// The body of the history stretched `m`-fold about its median:
    /// `median ± m * (q(7/8) - median, median - q(1/8))`, averaged over the closed
    /// blocks like [`Self::median`]; before the first block closes, the open
    /// block's once it holds `OPEN_BODY_MIN` values (None before). Values
    /// beyond it are far outside the bulk whatever the tail has learned.
    pub fn body_range(&self, m: f64) -> Option<(f64, f64)> {
        let [lo, mid, hi] = if self.closed.is_empty() {
            body_of(self.open_summary.iter())?
        } else {
            body_of(self.closed.iter())?
        };
        Some((mid - m * (mid - lo), mid + m * (hi - mid)))
    }

    /// Sums the open block up as [`Block::close`] would, every
    /// [`OPEN_BODY_EVERY`] values from [`OPEN_BODY_MIN`] on, while no block has
    /// closed: a block can take weeks to fill (500 hourly values are three
    /// weeks), and without a body nothing is clipped or declustered until then.
    fn refresh_open_summary(&mut self) {
        let n = self.open.len();
        if !self.closed.is_empty() || n < OPEN_BODY_MIN || !n.is_multiple_of(OPEN_BODY_EVERY) {
            return;
        }
        self.open_summary = Some(Block::close(self.open.clone(), 0));
    }

    /// P(X <= v), the mirror of [`Self::p_upper`].
    pub fn p_lower(&self, v: f64) -> f64 {
        self.lower(v, Fit::Mean)
    }

    fn lower(&self, v: f64, how: Fit) -> f64 {
        let n = self.len();
        let empirical = (self.count_le(v) + 1.0) / (n as f64 + 1.0);
        if n < 20 {
            return empirical.min(1.0);
        }
        let k = self.tail_size();
        let bottom = self.bottom(k);
        let Some(&u) = bottom.last() else {
            return empirical.min(1.0);
        };
        if v >= u {
            return empirical.min(1.0);
        }
        let sigma = self.fit(bottom.iter().map(|y| u - y), how, self.median() - u, n, k);
        exp_tail(k, n, u - v, sigma, u)
    }

    /// `scale_floor` times the scale of an exponential tail that falls from 1/2 at
    /// the median to k/n at `distance` beyond it.
    fn scale_from_median(&self, distance: f64, n: usize, k: usize) -> f64 {
        let steps = (n as f64 / (2.0 * k as f64)).ln().max(1.0);
        self.shape.scale_floor * distance.max(0.0) / steps
    }

    /// Two-sided: twice the smaller tail, at most 1.
    pub fn p_two_sided(&self, v: f64) -> f64 {
        self.two_sided(v, Fit::Mean)
    }

    /// Like [`Self::p_two_sided`], with the tails fitted without their largest
    /// excess (`TRIM_FROM`), for a history whose excursions are declustered
    /// to one value each: one excursion is then one value, and no evidence
    /// that the tail is heavy.
    pub fn p_two_sided_trimmed(&self, v: f64) -> f64 {
        self.two_sided(v, Fit::Trimmed)
    }

    fn two_sided(&self, v: f64, how: Fit) -> f64 {
        (2.0 * self.upper(v, how).min(self.lower(v, how))).min(1.0)
    }

    /// Approximate median: the mean of the block medians, or the open block's.
    pub fn median(&self) -> f64 {
        if self.closed.is_empty() {
            if self.open.is_empty() {
                return 0.0;
            }
            let mut v = self.open.clone();
            v.sort_by(f64::total_cmp);
            return v[v.len() / 2];
        }
        self.closed.iter().map(Block::median).sum::<f64>() / self.closed.len() as f64
    }
}

/// The 1/8, 1/2 and 7/8 quantiles averaged over `blocks`; None without any.
fn body_of<'a>(blocks: impl Iterator<Item = &'a Block> + Clone) -> Option<[f64; 3]> {
    let n = blocks.clone().count();
    if n == 0 {
        return None;
    }
    let at = |i: usize| blocks.clone().map(|b| b.quantiles[i]).sum::<f64>() / n as f64;
    Some([at(QUANTILES / 8), at(QUANTILES / 2), at(QUANTILES * 7 / 8)])
}

/// Inserts v into `kept` (ordered by `first`) if it is among the `limit` first.
fn keep_extreme(kept: &mut Vec<f64>, v: f64, limit: usize, first: impl Fn(f64, f64) -> bool) {
    let at = kept.partition_point(|x| !first(v, *x));
    if at < limit {
        kept.insert(at, v);
        kept.truncate(limit);
    }
}

/// `k / (n + 1) * exp(-excess / sigma)`, with sigma kept away from zero.
fn exp_tail(k: usize, n: usize, excess: f64, sigma: f64, at: f64) -> f64 {
    let sigma = sigma.max(1e-9 * at.abs()).max(1e-12);
    (k as f64 / (n as f64 + 1.0)) * (-excess / sigma).exp()
}

/// The first k of two sequences sorted by `before`, merged.
fn merge_k(a: &[f64], b: &[f64], k: usize, before: impl Fn(f64, f64) -> bool) -> Vec<f64> {
    let mut out = Vec::with_capacity(k);
    let (mut i, mut j) = (0, 0);
    while out.len() < k && (i < a.len() || j < b.len()) {
        let take_a = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => before(*x, *y),
            (Some(_), None) => true,
            _ => false,
        };
        if take_a {
            out.push(a[i]);
            i += 1;
        } else {
            out.push(b[j]);
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests;

//! A caller's calls per request pooled over its last windows, for callers too
//! thin for one window.
//!
//! A caller serving a few requests a window (a checkout at 3 a window) never
//! fills one window with the requests needed to judge its call mix
//! (`min_volume`): no call in 3 requests that usually make one each happens by
//! chance 5% of the time. Every edge row with a caller's requests also carries
//! the calls and the requests summed over the edge's last [`POOL_WINDOWS`]
//! windows ([`POOLED_CALLS`], [`POOLED_REQUESTS`]); the deviation detector
//! judges a window too thin on its own by them (`detectors/deviation.rs`).
//! `edge_stats` has a row only for calls made, so [`CallMix`] remembers the
//! edges each caller used and counts a window in which the caller served
//! requests but made none of an edge's calls into that edge's pool, as 0
//! calls (the next row's pool is then right). It gives such a window no row
//! of its own: a caller that stops a call altogether is not judged by its
//! call mix, since that is what a caller does when its peer is dead or a
//! remedy moved its calls elsewhere (a reroute), and a call-mix anomaly there
//! would be the failure or the remedy seen again. An edge with no call for
//! [`FORGET_WINDOWS`] windows is forgotten.
//!
//!
//! Where the caller's requests end ([`super::rows::LAST_CALL_SHARE`]) is pooled the same
//! way: the edge's last calls ([`POOLED_LAST_CALLS`]) over the caller's last
//! calls to any callee ([`POOLED_CALLER_LAST_CALLS`]) in those windows.
//!
//! A step in a thin caller's mix shows diluted in a pool of [`POOL_WINDOWS`]
//! windows until the pool has turned over (a share from 0.02 to 0.8 reads
//! 0.15 two windows after it). So each row also carries a recent pool: the
//! fewest newest windows holding [`RECENT_VOLUME`] of the caller's requests
//! (of its last calls, for the share), when fewer than the whole pool
//! ([`RECENT_CALLS`], [`RECENT_REQUESTS`], [`RECENT_LAST_CALLS`],
//! [`RECENT_CALLER_LAST_CALLS`]). The detector judges by whichever of the two
//! is the less likely under the baseline and counts both tests.
//!
//! Memory: at most `max_edges` edges, each its key strings and at most
//! `POOL_WINDOWS` entries of 40 bytes.

use std::collections::{HashMap, VecDeque};

use super::catalogue::SeriesKind;
use super::rows::{CALLER_LAST_CALLS, CALLER_REQUESTS, Row, caller_identity, served_requests};
use crate::window::tables::LAST_CALLS;

/// Windows an edge's pool sums over: two minutes of 10 s windows.
pub const POOL_WINDOWS: i64 = 12;
/// Windows without a call after which an edge is forgotten: an hour of 10 s
/// windows.
pub const FORGET_WINDOWS: i64 = 360;
/// Calls to the callee over the edge's pool.
pub const POOLED_CALLS: &str = "pooled_calls";
/// The caller's requests over the edge's pool.
pub const POOLED_REQUESTS: &str = "pooled_requests";
/// The edge's last calls (`last_calls`) over its pool.
pub const POOLED_LAST_CALLS: &str = "pooled_last_calls";
/// The caller's last calls, to any callee, over the edge's pool.
pub const POOLED_CALLER_LAST_CALLS: &str = "pooled_caller_last_calls";
/// What a recent pool holds at least: the `min_volume` of the catalogue's
/// pooled patterns (a detector with a higher one does not judge by it).
pub const RECENT_VOLUME: f64 = 20.0;
/// Calls to the callee over the recent pool of requests.
pub const RECENT_CALLS: &str = "recent_calls";
/// The caller's requests over that recent pool.
pub const RECENT_REQUESTS: &str = "recent_requests";
/// The edge's last calls over the recent pool of the caller's last calls.
pub const RECENT_LAST_CALLS: &str = "recent_last_calls";
/// The caller's last calls over that recent pool.
pub const RECENT_CALLER_LAST_CALLS: &str = "recent_caller_last_calls";

/// (caller service, caller identity attributes).
type Caller = (String, String);

/// What is kept per edge.
#[derive(Debug)]
struct Memo {
    /// Window start of the last call.
    last_call: i64,
    /// Window start of the last row (a window with a call).
    last_row: i64,
    /// (window start, what the window counted), oldest first.
    pool: VecDeque<(i64, Counts)>,
}

/// What one window counted for an edge, or a pool's sums.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counts {
    /// Calls to the callee.
    calls: f64,
    /// The caller's requests.
    requests: f64,
    /// Calls to the callee that were the last of their request.
    last: f64,
    /// The caller's last calls to any callee.
    caller_last: f64,
}

impl std::ops::Add for Counts {
    type Output = Counts;
    fn add(self, o: Counts) -> Counts {
        Counts {
            calls: self.calls + o.calls,
            requests: self.requests + o.requests,
            last: self.last + o.last,
            caller_last: self.caller_last + o.caller_last,
        }
    }
}

impl Memo {
    /// Adds window `t` and drops what fell out of the pool; returns the sums.
    fn add(&mut self, t: i64, counts: Counts, window_ms: i64) -> Counts {
        if counts.calls > 0.0 {
            self.last_call = t;
        }
        self.pool.push_back((t, counts));
        let from = t - (POOL_WINDOWS - 1) * window_ms;
        while self.pool.front().is_some_and(|(w, _)| *w < from) {
            self.pool.pop_front();
        }
        self.pool
            .iter()
            .fold(Counts::default(), |sum, (_, counts)| sum + *counts)
    }

    /// The sums of the fewest newest windows whose `base` reaches
    /// [`RECENT_VOLUME`], when they are fewer than the pool's.
    fn recent(&self, base: fn(&Counts) -> f64) -> Option<Counts> {
        let mut sum = Counts::default();
        for (taken, (_, counts)) in self.pool.iter().rev().enumerate() {
            sum = sum + *counts;
            if base(&sum) >= RECENT_VOLUME {
                return (taken + 1 < self.pool.len()).then_some(sum);
            }
        }
        None
    }
}

/// The edges callers used, and their pools (see the module docs).
#[derive(Debug)]
pub struct CallMix {
    callers: HashMap<Caller, HashMap<String, Memo>>,
    len: usize,
    max_edges: usize,
}

impl CallMix {
    /// Remembers at most `max_edges` edges.
    pub fn new(max_edges: usize) -> Self {
        CallMix {
            callers: HashMap::new(),
            len: 0,
            max_edges,
        }
    }

    /// Edges remembered.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no edge is remembered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Completes window `t`'s rows: pools on every edge row whose caller
    /// served requests; the edges its callers used before and did not call in
    /// it count the window as 0 calls.
    pub fn complete(&mut self, rows: &mut [Row], t: i64, window_ms: i64) {
        let served = served_requests(rows);
        let mut caller_last: HashMap<Caller, f64> = HashMap::new();
        for row in rows.iter_mut().filter(|r| r.kind == SeriesKind::Edge) {
            let Some(&requests) = row.values.get(CALLER_REQUESTS) else {
                continue;
            };
            let value = |name| row.values.get(name).copied().unwrap_or(0.0);
            let counts = Counts {
                calls: value("calls"),
                requests,
                last: value(LAST_CALLS),
                caller_last: value(CALLER_LAST_CALLS),
            };
            let caller = (row.service.clone(), caller_identity(&row.attributes));
            caller_last.insert(caller.clone(), counts.caller_last);
            let Some(memo) = self.memo(&caller, &row.attributes, t) else {
                continue;
            };
            memo.last_row = t;
            let pooled = memo.add(t, counts, window_ms);
            set_pooled(row, pooled);
            set_recent(row, memo);
        }
        let forget_before = t - FORGET_WINDOWS * window_ms;
        for (caller, edges) in &mut self.callers {
            // A caller that stopped serving (scaled away, renamed) is
            // forgotten too: its edges would hold the room new ones need.
            let before = edges.len();
            edges.retain(|_, memo| memo.last_call >= forget_before);
            self.len -= before - edges.len();
            let Some(&requests) = served.get(caller) else {
                continue;
            };
            let counts = Counts {
                requests,
                caller_last: caller_last.get(caller).copied().unwrap_or(0.0),
                ..Counts::default()
            };
            for memo in edges.values_mut().filter(|memo| memo.last_row != t) {
                memo.add(t, counts, window_ms);
            }
        }
        self.callers.retain(|_, edges| !edges.is_empty());
    }

    /// The memo of an edge, made when there is room.
    fn memo(&mut self, caller: &Caller, attributes: &str, t: i64) -> Option<&mut Memo> {
        let full = self.len >= self.max_edges;
        let edges = self.callers.entry(caller.clone()).or_default();
        if !edges.contains_key(attributes) {
            if full {
                return None;
            }
            self.len += 1;
            edges.insert(
                attributes.to_string(),
                Memo {
                    last_call: t,
                    last_row: t,
                    pool: VecDeque::new(),
                },
            );
        }
        edges.get_mut(attributes)
    }
}

fn set_pooled(row: &mut Row, pooled: Counts) {
    row.values.insert(POOLED_CALLS, pooled.calls);
    row.values.insert(POOLED_REQUESTS, pooled.requests);
    if pooled.caller_last > 0.0 {
        row.values.insert(POOLED_LAST_CALLS, pooled.last);
        row.values
            .insert(POOLED_CALLER_LAST_CALLS, pooled.caller_last);
    }
}

fn set_recent(row: &mut Row, memo: &Memo) {
    if let Some(recent) = memo.recent(|c| c.requests) {
        row.values.insert(RECENT_CALLS, recent.calls);
        row.values.insert(RECENT_REQUESTS, recent.requests);
    }
    if let Some(recent) = memo.recent(|c| c.caller_last) {
        row.values.insert(RECENT_LAST_CALLS, recent.last);
        row.values
            .insert(RECENT_CALLER_LAST_CALLS, recent.caller_last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::rows::CALLS_PER_REQUEST;

    const W: i64 = 10_000;

    fn service(name: &str, requests: f64) -> Row {
        Row {
            kind: SeriesKind::Service,
            service: name.into(),
            metric: String::new(),
            metric_type: String::new(),
            unit: String::new(),
            attributes: "namespace=shop".into(),
            tag: String::new(),
            values: HashMap::from([("requests", requests)]),
        }
    }

    fn edge(caller: &str, callee: &str, calls: f64, requests: f64) -> Row {
        Row {
            kind: SeriesKind::Edge,
            service: caller.into(),
            metric: String::new(),
            metric_type: String::new(),
            unit: String::new(),
            attributes: format!("namespace=shop,callee={callee},callee_kind=service"),
            tag: "service".into(),
            values: HashMap::from([
                ("calls", calls),
                (CALLS_PER_REQUEST, calls / requests),
                (CALLER_REQUESTS, requests),
            ]),
        }
    }

    fn value(rows: &[Row], callee: &str, name: &str) -> Option<f64> {
        rows.iter()
            .find(|r| r.kind == SeriesKind::Edge && r.attributes.contains(callee))
            .and_then(|r| r.values.get(name).copied())
    }

    #[test]
    fn a_window_without_the_usual_call_counts_in_the_pool_but_makes_no_row() {
        let mut mix = CallMix::new(100);
        let mut rows = vec![
            service("checkout", 3.0),
            edge("checkout", "email", 3.0, 3.0),
        ];
        mix.complete(&mut rows, 0, W);
        // Window 1: three requests, no call to email: no row.
        let mut rows = vec![service("checkout", 3.0)];
        mix.complete(&mut rows, W, W);
        assert_eq!(rows.len(), 1);
        // Window 2: checkout served nothing, which says nothing.
        mix.complete(&mut [], 2 * W, W);
        // Window 3: one call in two requests, pooled over the three windows
        // checkout served: 4 calls in 8 requests.
        let mut rows = vec![
            service("checkout", 2.0),
            edge("checkout", "email", 1.0, 2.0),
        ];
        mix.complete(&mut rows, 3 * W, W);
        assert_eq!(value(&rows, "email", POOLED_CALLS), Some(4.0));
        assert_eq!(value(&rows, "email", POOLED_REQUESTS), Some(8.0));
    }

    #[test]
    fn a_recent_pool_holds_the_fewest_newest_windows_with_enough_requests() {
        let mut mix = CallMix::new(100);
        let mut window = |t: i64, calls: f64| {
            let mut rows = vec![
                service("checkout", 10.0),
                edge("checkout", "email", calls, 10.0),
            ];
            mix.complete(&mut rows, t * W, W);
            rows
        };
        // Windows 0 and 1: 20 requests, but no fewer windows than the pool's.
        let rows = window(0, 10.0);
        assert_eq!(value(&rows, "email", RECENT_REQUESTS), None);
        let rows = window(1, 10.0);
        assert_eq!(value(&rows, "email", RECENT_REQUESTS), None);
        // A step at window 3: the recent pool (windows 3 and 4) shows it
        // whole, the pool of five windows diluted.
        window(2, 10.0);
        window(3, 1.0);
        let rows = window(4, 1.0);
        assert_eq!(value(&rows, "email", RECENT_CALLS), Some(2.0));
        assert_eq!(value(&rows, "email", RECENT_REQUESTS), Some(20.0));
        assert_eq!(value(&rows, "email", POOLED_CALLS), Some(32.0));
        assert_eq!(value(&rows, "email", POOLED_REQUESTS), Some(50.0));
    }

    #[test]
    fn where_requests_end_is_pooled_over_the_callers_last_calls() {
        let with_last = |mut row: Row, last: f64, caller_last: f64| {
            row.values.insert(LAST_CALLS, last);
            row.values.insert(CALLER_LAST_CALLS, caller_last);
            row
        };
        let mut mix = CallMix::new(100);
        // Window 0: 3 requests, 3 ended at email.
        let mut rows = vec![
            service("checkout", 3.0),
            with_last(edge("checkout", "email", 3.0, 3.0), 3.0, 3.0),
        ];
        mix.complete(&mut rows, 0, W);
        // Window 1: no call to email; the 2 requests ended at cart.
        let mut rows = vec![
            service("checkout", 2.0),
            with_last(edge("checkout", "cart", 2.0, 2.0), 2.0, 2.0),
        ];
        mix.complete(&mut rows, W, W);
        assert_eq!(value(&rows, "cart", POOLED_LAST_CALLS), Some(2.0));
        assert_eq!(value(&rows, "cart", POOLED_CALLER_LAST_CALLS), Some(2.0));
        // Window 2: one of 2 requests ended at email: over the three windows,
        // 4 of the 7 last calls; cart's pool counts window 2 as 0 of 2.
        let mut rows = vec![
            service("checkout", 2.0),
            with_last(edge("checkout", "email", 1.0, 2.0), 1.0, 2.0),
            with_last(edge("checkout", "cart", 1.0, 2.0), 1.0, 2.0),
        ];
        mix.complete(&mut rows, 2 * W, W);
        assert_eq!(value(&rows, "email", POOLED_LAST_CALLS), Some(4.0));
        assert_eq!(value(&rows, "email", POOLED_CALLER_LAST_CALLS), Some(7.0));
        assert_eq!(value(&rows, "cart", POOLED_LAST_CALLS), Some(3.0));
        assert_eq!(value(&rows, "cart", POOLED_CALLER_LAST_CALLS), Some(4.0));
        // Windows stored before `last_calls` existed pool no share.
        let mut rows = vec![service("checkout", 2.0), edge("checkout", "pay", 1.0, 2.0)];
        mix.complete(&mut rows, 3 * W, W);
        assert_eq!(value(&rows, "pay", POOLED_LAST_CALLS), None);
    }

    #[test]
    fn the_pool_covers_the_last_windows_only() {
        let mut mix = CallMix::new(100);
        for w in 0..POOL_WINDOWS + 3 {
            let mut rows = vec![
                service("checkout", 2.0),
                edge("checkout", "email", 1.0, 2.0),
            ];
            mix.complete(&mut rows, w * W, W);
            let n = (w + 1).min(POOL_WINDOWS) as f64;
            assert_eq!(
                value(&rows, "email", POOLED_REQUESTS),
                Some(2.0 * n),
                "window {w}"
            );
            assert_eq!(value(&rows, "email", POOLED_CALLS), Some(n));
        }
    }

    #[test]
    fn an_edge_unused_for_long_is_forgotten_and_memory_is_bounded() {
        let mut mix = CallMix::new(1);
        let mut rows = vec![
            service("checkout", 3.0),
            edge("checkout", "email", 3.0, 3.0),
            edge("checkout", "payment", 3.0, 3.0),
        ];
        mix.complete(&mut rows, 0, W);
        assert_eq!(mix.len(), 1, "bounded");
        assert!(value(&rows, "payment", POOLED_CALLS).is_none());
        let mut rows = vec![service("checkout", 3.0)];
        mix.complete(&mut rows, FORGET_WINDOWS * W, W);
        assert_eq!(mix.len(), 1, "still remembered");
        mix.complete(&mut rows, (FORGET_WINDOWS + 1) * W, W);
        assert!(mix.is_empty(), "forgotten");
    }

    #[test]
    fn a_caller_that_stopped_serving_is_forgotten_and_its_room_reused() {
        let mut mix = CallMix::new(1);
        let mut rows = vec![
            service("checkout-v1", 3.0),
            edge("checkout-v1", "email", 3.0, 3.0),
        ];
        mix.complete(&mut rows, 0, W);
        // checkout-v1 is gone; its successor calls the same mailer.
        let successor = || {
            vec![
                service("checkout-v2", 3.0),
                edge("checkout-v2", "email", 3.0, 3.0),
            ]
        };
        let mut rows = successor();
        mix.complete(&mut rows, FORGET_WINDOWS * W, W);
        assert!(value(&rows, "email", POOLED_CALLS).is_none(), "no room yet");
        let mut rows = successor();
        mix.complete(&mut rows, (FORGET_WINDOWS + 1) * W, W);
        let mut rows = successor();
        mix.complete(&mut rows, (FORGET_WINDOWS + 2) * W, W);
        assert_eq!(mix.len(), 1);
        assert_eq!(value(&rows, "email", POOLED_CALLS), Some(3.0));
    }
}

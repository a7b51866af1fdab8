//! The service graph the incident stage groups anomalies on: caller -> callee
//! edges from the closed windows' `edge_stats`, each with the event time it first
//! and last carried traffic. Edges idle for `ttl_ms` age out; at most `max_edges`
//! are held (new edges beyond are not added, counted). Topology changes (an edge
//! new once the graph has learned `LEARNING_WINDOWS` windows, an edge gone) are
//! recorded, the last `MAX_CHANGES` of them, as evidence for the ranking.

use std::collections::{HashMap, HashSet, VecDeque};

use arrow::array::{Array, StringArray};

use super::node;
use crate::window::WindowTables;

/// Index of `edge_stats` in [`WindowTables::batches`].
const EDGE_TABLE: usize = 2;

/// Windows before a new edge counts as a change rather than the graph learning.
const LEARNING_WINDOWS: u64 = 10;
/// Topology changes kept.
const MAX_CHANGES: usize = 1000;

/// Row `i` of a text column, empty when absent or null.
fn value(col: Option<&StringArray>, i: usize) -> &str {
    col.filter(|c| c.is_valid(i))
        .map(|c| c.value(i))
        .unwrap_or("")
}

/// When an edge first and last carried traffic, what its callee is, and the
/// trace id of its latest exemplar call.
#[derive(Debug, Clone)]
struct Seen {
    first_ms: i64,
    last_ms: i64,
    callee_kind: String,
    exemplar: String,
}

/// An edge that appeared or went away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyChange {
    /// `true` for a new edge, `false` for one gone.
    pub new: bool,
    pub caller: String,
    pub callee: String,
    /// Start of the window of its first traffic (new), or end of the window in
    /// which it aged out (gone).
    pub at_ms: i64,
}

/// Undirected adjacency of services (and databases, external endpoints).
#[derive(Debug)]
pub struct ServiceGraph {
    edges: HashMap<(String, String), Seen>,
    changes: VecDeque<TopologyChange>,
    windows: u64,
    /// Neighbours of each node (either direction), rebuilt as windows close.
    adjacent: HashMap<String, HashSet<String>>,
    /// What each node calls, rebuilt as windows close.
    callees: HashMap<String, HashSet<String>>,
    /// Nodes something calls.
    called: HashSet<String>,
    ttl_ms: i64,
    max_edges: usize,
    refused: u64,
}

impl ServiceGraph {
    pub fn new(ttl_ms: i64, max_edges: usize) -> Self {
        Self {
            edges: HashMap::new(),
            changes: VecDeque::new(),
            windows: 0,
            adjacent: HashMap::new(),
            callees: HashMap::new(),
            called: HashSet::new(),
            ttl_ms,
            max_edges,
            refused: 0,
        }
    }

    /// Learns the edges of a closed window and ages out idle ones.
    pub fn on_window(&mut self, window: &WindowTables) {
        let batch = &window.batches[EDGE_TABLE];
        let text = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        };
        let (kinds, exemplars) = (text("callee_kind"), text("exemplar_trace_id"));
        let scope = [
            text("caller_namespace"),
            text("caller_environment"),
            text("callee_namespace"),
            text("callee_environment"),
        ];
        if let (Some(caller), Some(callee)) = (text("caller"), text("callee")) {
            for i in 0..batch.num_rows() {
                if caller.is_null(i) || callee.is_null(i) {
                    continue;
                }
                let [cns, cenv, ens, eenv] = scope.map(|c| value(c, i));
                let key = (
                    node::id(cns, caller.value(i), cenv),
                    node::id(ens, callee.value(i), eenv),
                );
                if !self.edges.contains_key(&key) && self.edges.len() >= self.max_edges {
                    self.refused += 1;
                    continue;
                }
                if !self.edges.contains_key(&key) && self.windows >= LEARNING_WINDOWS {
                    self.record(true, &key, window.start_ms);
                }
                let seen = self.edges.entry(key).or_insert(Seen {
                    first_ms: window.start_ms,
                    last_ms: window.end_ms,
                    callee_kind: value(kinds, i).to_string(),
                    exemplar: String::new(),
                });
                seen.last_ms = seen.last_ms.max(window.end_ms);
                let exemplar = value(exemplars, i);
                if !exemplar.is_empty() && seen.exemplar != exemplar {
                    seen.exemplar = exemplar.to_string();
                }
            }
        }
        self.windows += 1;
        let horizon = window.end_ms - self.ttl_ms;
        let gone: Vec<(String, String)> = self
            .edges
            .iter()
            .filter(|(_, seen)| seen.last_ms <= horizon)
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            self.edges.remove(&key);
            self.record(false, &key, window.end_ms);
        }
        self.adjacent.clear();
        self.callees.clear();
        self.called.clear();
        for (caller, callee) in self.edges.keys() {
            self.called.insert(callee.clone());
            self.callees
                .entry(caller.clone())
                .or_default()
                .insert(callee.clone());
            self.adjacent
                .entry(caller.clone())
                .or_default()
                .insert(callee.clone());
            self.adjacent
                .entry(callee.clone())
                .or_default()
                .insert(caller.clone());
        }
    }

    fn record(&mut self, new: bool, (caller, callee): &(String, String), at_ms: i64) {
        if self.changes.len() >= MAX_CHANGES {
            self.changes.pop_front();
        }
        self.changes.push_back(TopologyChange {
            new,
            caller: caller.clone(),
            callee: callee.clone(),
            at_ms,
        });
    }

    /// The topology changes recorded, oldest first.
    pub fn changes(&self) -> &VecDeque<TopologyChange> {
        &self.changes
    }

    /// Every edge held, sorted.
    pub fn edges(&self) -> Vec<super::GraphEdge> {
        let mut out: Vec<super::GraphEdge> = self
            .edges
            .iter()
            .map(|((caller, callee), seen)| super::GraphEdge {
                caller: caller.clone(),
                callee: callee.clone(),
                first_seen_ms: seen.first_ms,
                last_seen_ms: seen.last_ms,
                callee_kind: seen.callee_kind.clone(),
                exemplar_trace_id: seen.exemplar.clone(),
            })
            .collect();
        out.sort_by(|a, b| (&a.caller, &a.callee).cmp(&(&b.caller, &b.callee)));
        out
    }

    /// Nodes on the edges held.
    pub fn nodes(&self) -> usize {
        self.adjacent.len()
    }

    /// Edges held.
    pub fn len(&self) -> usize {
        self.edges.len()
    }

    /// Whether no edge is held.
    pub fn is_empty(&self) -> bool {
        self.edges.is_empty()
    }

    /// Whether the graph has seen `node` at all.
    pub fn knows(&self, node: &str) -> bool {
        self.adjacent.contains_key(node)
    }

    /// The nodes `node` calls.
    pub fn callees(&self, node: &str) -> impl Iterator<Item = &str> {
        self.callees
            .get(node)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// Whether anything calls `node`.
    pub fn is_called(&self, node: &str) -> bool {
        self.called.contains(node)
    }

    /// Whether `to` is reachable from `from` following calls (at most `hops`).
    pub fn reaches(&self, from: &str, to: &str, hops: usize) -> bool {
        within(from, to, hops, |node| self.callees.get(node))
    }

    /// Whether `a` and `b` are the same node or at most `hops` edges apart
    /// (either direction).
    pub fn near(&self, a: &str, b: &str, hops: usize) -> bool {
        a == b || within(a, b, hops, |node| self.adjacent.get(node))
    }

    /// How `a` stands to `b` along calls, within `hops` edges: a failure
    /// spreads from a node to its callers, so `a` calling `b` (directly or
    /// through others) makes `a` a possible symptom of `b`, `b` calling `a`
    /// makes `a` a possible cause, and both calling one node makes them
    /// symptoms of one cause. Two nodes one caller shares are not related by
    /// that: a failing recommendation service does not make the order
    /// notifier the front end also reaches fail.
    pub fn relation(&self, a: &str, b: &str, hops: usize) -> Relation {
        if a == b {
            return Relation::Same;
        }
        let below_a = self.downstream(a, hops);
        if below_a.contains_key(b) {
            return Relation::Calls;
        }
        let below_b = self.downstream(b, hops);
        if below_b.contains_key(a) {
            return Relation::CalledBy;
        }
        let shared = below_a
            .iter()
            .any(|(node, da)| below_b.get(node).is_some_and(|db| da + db <= hops));
        if shared {
            Relation::Share
        } else {
            Relation::Unrelated
        }
    }

    /// The nodes `from` reaches following calls, at most `hops`, with how many
    /// calls away each is (`from` itself at 0).
    fn downstream<'a>(&'a self, from: &'a str, hops: usize) -> HashMap<&'a str, usize> {
        let mut seen: HashMap<&str, usize> = HashMap::from([(from, 0)]);
        let mut frontier: VecDeque<(&str, usize)> = VecDeque::from([(from, 0)]);
        while let Some((node, depth)) = frontier.pop_front() {
            if depth == hops {
                continue;
            }
            for step in self.callees(node) {
                if !seen.contains_key(step) {
                    seen.insert(step, depth + 1);
                    frontier.push_back((step, depth + 1));
                }
            }
        }
        seen
    }
}

/// How one node stands to another on the call graph ([`ServiceGraph::relation`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    Same,
    /// It calls the other (directly or through others).
    Calls,
    /// The other calls it.
    CalledBy,
    /// Both call a common node.
    Share,
    /// None of these within the hops (at most a common caller).
    Unrelated,
}

/// Windows after a member's onset within which an anomaly on a node it calls
/// may still be its cause: a cause shows before its effects, up to detection's
/// lag (the deepest link of a chain, with fewer calls and a looser baseline,
/// may cross its bar a window or two after its callers).
const CAUSE_LAG_WINDOWS: i64 = 2;

/// What relating an anomaly to an incident's members reads of it: the node
/// its series is on, the node it implicates ([`super::rank::implicated`]: a
/// caller's view of its calls to a peer is about the peer) and its onset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub own: String,
    pub about: String,
    pub onset_ms: i64,
}

impl Subject {
    pub fn of(anomaly: &crate::detect::Anomaly) -> Self {
        Subject {
            own: node::own(&anomaly.key),
            about: super::rank::implicated(&anomaly.key).0,
            onset_ms: anomaly.onset_ms,
        }
    }
}

/// Whether a new anomaly (`subject`) belongs with `member`, each taken as
/// being about the node it implicates: on the same node, or on the caller of a
/// peer-naming series itself; on a caller of the member's node (a symptom of
/// it); on a fellow caller of a common dependency (symptoms of one cause); or on
/// a node the member's node calls (its cause) if it began by
/// `CAUSE_LAG_WINDOWS` after the member did. Two callees of one caller are not
/// related by it, and neither is a caller's view of one of them with the other:
/// a failing shipping service does not slow checkout's calls to the mailer.
pub fn related(
    graph: &ServiceGraph,
    subject: &Subject,
    member: &Subject,
    hops: usize,
    window_ms: i64,
) -> bool {
    if subject.own == member.own || subject.own == member.about || subject.about == member.own {
        return true;
    }
    match graph.relation(&subject.about, &member.about, hops) {
        Relation::Same | Relation::Calls | Relation::Share => true,
        Relation::CalledBy => subject.onset_ms <= member.onset_ms + CAUSE_LAG_WINDOWS * window_ms,
        Relation::Unrelated => false,
    }
}

/// Breadth-first search from `from` for `to`, at most `hops` steps along `next`.
fn within<'a>(
    from: &'a str,
    to: &str,
    hops: usize,
    next: impl Fn(&str) -> Option<&'a HashSet<String>>,
) -> bool {
    let mut seen: HashSet<&str> = HashSet::from([from]);
    let mut frontier: VecDeque<(&str, usize)> = VecDeque::from([(from, 0)]);
    while let Some((node, depth)) = frontier.pop_front() {
        if depth == hops {
            continue;
        }
        for step in next(node).into_iter().flatten() {
            let step = step.as_str();
            if step == to {
                return true;
            }
            if seen.insert(step) {
                frontier.push_back((step, depth + 1));
            }
        }
    }
    false
}

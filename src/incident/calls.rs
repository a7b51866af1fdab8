//! Degraded calls no anomaly names yet: the ranking's way down a call chain
//! whose deepest link detection has not caught up with.
//!
//! Detection fires per series, and the series of one failure do not all cross
//! their bars in the same window: when an external payment provider stops
//! answering, the checkout's latency (many requests, a tight baseline) may fire
//! a window before the payment service's calls to the provider (few calls, a
//! noisier baseline) do. Ranked at that moment, the incident has no candidate
//! below checkout, and checkout, whose own dependencies look healthy to the
//! anomalies, would be named. The calls themselves say otherwise: the window
//! series the ranking already holds ([`History`]) show checkout's calls to
//! payment and payment's calls to the provider failing or many times slower
//! since the incident began.
//!
//! So from every candidate, the ranking follows outgoing calls that degraded
//! since onset (error rate up by [`MIN_ERROR_RISE`] and doubled, or mean or p99
//! time at least [`MIN_SLOWDOWN`] times what it was), up to `hops` calls deep,
//! and adds the callee as a candidate seen by its caller, with an
//! anomaly-like record of weight [`WEIGHT`] (detected anomalies weigh up to
//! 1). It does not descend from a caller whose own exclusive time grew (the
//! caller is slow itself: its calls wait behind it), nor from one whose calls
//! to two or more peers degraded (the common factor is the caller, as in
//! [`slowed_callers`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::history::History;
use super::node;
use super::rank::{implicated, is_latency};
use crate::detect::{Anomaly, FailureClass, SeriesKey};

/// A rise of the error rate that counts (absolute), besides doubling.
pub const MIN_ERROR_RISE: f64 = 0.05;
/// How many times slower a call must have become to count.
pub const MIN_SLOWDOWN: f64 = 2.0;
/// The score of a degraded call's record (detected anomalies score up to 1).
pub const WEIGHT: f64 = 0.5;
/// Windows before onset a call needs to have a "before".
const MIN_BEFORE: usize = 3;
/// Relative growth of a caller's exclusive time that makes it slow itself.
const OWN_GROWTH: f64 = 0.5;
/// How many times slower a peer's calls must have become for a caller to
/// find it slow, when callers are compared ([`slowed_alone`]).
const SLOWED: f64 = 1.5;
/// Share of a caller's slowdown its own time must make up to count as slow itself.
const OWN_SHARE: f64 = 0.5;

/// The pattern name of a degraded call's record.
pub const PATTERN: &str = "degraded_calls";

/// Records of degraded calls below the candidates `nodes`, up to `hops` calls
/// deep, to callees that are not candidates yet; `onset` is the incident's
/// first onset.
pub fn below(history: &History, nodes: &BTreeSet<String>, onset: i64, hops: usize) -> Vec<Anomaly> {
    let mut known = nodes.clone();
    let mut frontier: Vec<String> = nodes.iter().cloned().collect();
    let mut out = Vec::new();
    for _ in 0..hops.max(1) {
        let mut next = Vec::new();
        for caller in &frontier {
            if slow_itself(history, caller, onset) {
                continue;
            }
            let degraded: Vec<Anomaly> = history
                .edges_from(caller)
                .iter()
                .filter(|key| implicated(key).1)
                .filter_map(|key| degraded(history, key, onset))
                // A slowdown only this caller sees is its own (as in the
                // ranking, errors are not compared).
                .filter(|a| {
                    !is_latency(&a.key)
                        || !slowed_alone(history, caller, &implicated(&a.key).0, onset)
                })
                .collect();
            let callees = unexplained(
                history,
                degraded.iter().map(|a| implicated(&a.key).0).collect(),
                onset,
            );
            if callees.len() != 1 {
                continue;
            }
            for anomaly in degraded
                .into_iter()
                .filter(|a| callees.contains(&implicated(&a.key).0))
            {
                let callee = implicated(&anomaly.key).0;
                let new = !nodes.contains(&callee);
                if known.insert(callee.clone()) {
                    next.push(callee);
                }
                if new {
                    out.push(anomaly);
                }
            }
        }
        frontier = next;
    }
    out
}

/// The degraded `callees` whose degradation their own degraded calls to
/// another of them do not explain: when checkout and currency both answer
/// slowly and checkout's calls to currency degraded too, the caller of both is
/// waiting on one thing, currency, not on two.
fn unexplained(history: &History, callees: BTreeSet<String>, onset: i64) -> BTreeSet<String> {
    if callees.len() < 2 {
        return callees;
    }
    let waits_on_another = |callee: &String| {
        history.edges_from(callee).iter().any(|key| {
            let (peer, pointed) = implicated(key);
            pointed
                && peer != *callee
                && callees.contains(&peer)
                && worsened(history, key, onset).is_some()
        })
    };
    callees
        .iter()
        .filter(|c| !waits_on_another(c))
        .cloned()
        .collect()
}

/// Whether `node`'s exclusive time grew since onset, and makes up most of
/// the rise of its request time (not a caller's few milliseconds of its own on
/// top of seconds of waiting on a dead dependency).
fn slow_itself(history: &History, node: &str, onset: i64) -> bool {
    history
        .own_time(node, onset, MIN_BEFORE)
        .is_some_and(|own| {
            own.relative() > OWN_GROWTH && own.after - own.before > 1.0 && own.share >= OWN_SHARE
        })
}

/// Callers whose calls to two or more distinct peers degraded in the
/// incident: the common factor is the caller (its CPU, its network, its
/// client), not every peer at once, so those anomalies count as its own.
pub fn slowed_callers(members: &[&Anomaly]) -> HashSet<String> {
    let mut peers: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    for anomaly in members {
        if let (peer, true) = implicated(&anomaly.key) {
            peers
                .entry(node::own(&anomaly.key))
                .or_default()
                .insert(peer);
        }
    }
    peers
        .into_iter()
        .filter(|(_, p)| p.len() >= 2)
        .map(|(caller, _)| caller)
        .collect()
}

/// Callers short of CPU in the incident (`short_of_cpu`): their slower calls
/// are their own (not their failing ones: a starved process times its calls
/// wrong, it does not make the peer fail).
pub fn starved_callers(members: &[&Anomaly]) -> HashSet<String> {
    members
        .iter()
        .filter(|a| short_of_cpu(a))
        .map(|a| node::own(&a.key))
        .collect()
}

/// Whether an anomaly says its own service is short of CPU: one of its own
/// (not its host's) metrics named `cpu` (`process.cpu.utilization`,
/// `container.cpu.usage`, `k8s.pod.cpu.*`) rose or neared its limit (a limit
/// detector's `expected` is the limit). A process waiting for CPU times
/// its calls on the same slow clock: the answer sits in its socket until it
/// is scheduled, so its calls take longer however fast the peer answered,
/// while waiting on a slow peer costs no CPU.
fn short_of_cpu(anomaly: &Anomaly) -> bool {
    let key = &anomaly.key;
    key.signal == "metric"
        && !super::rank::host_level(key)
        && super::rank::name_has(key, "cpu")
        && (anomaly.class == FailureClass::Saturation || anomaly.observed > anomaly.expected)
}

/// Whether `caller`'s calls to `peer` are the only ones to it that slowed
/// since `onset`: `peer` has other callers whose calls to it the history
/// holds, none of which became `SLOWED` times slower by at least half as
/// many milliseconds as `caller`'s calls, and its own requests (where it
/// reports any) explain less than half of how much longer the caller's calls
/// take (or, where the history lacks those calls, did not become `SLOWED`
/// times slower either). A peer whose code or network is slow is slow for
/// every caller, by about as much; one that a single caller finds slow while
/// the others do not is waiting on that caller (its CPU, its network, its
/// client). (A caller with a few calls a window sees its mean jump by half
/// now and then; a few milliseconds of that against hundreds are no sign.)
/// Where `caller`'s calls have no "before", callers are compared as they
/// stand since onset (`waits_alone_now`).
pub fn slowed_alone(history: &History, caller: &str, peer: &str, onset: i64) -> bool {
    let change = |key: &SeriesKey| history.before_after(key, onset, MIN_BEFORE);
    let calls: Vec<&SeriesKey> = history
        .edges_to(peer)
        .iter()
        .filter(|k| k.name == "mean_ms")
        .collect();
    let own_key = calls.iter().find(|key| node::own(key) == caller).copied();
    let own_calls = own_key.and_then(change);
    let own_rise = own_calls.map(|(b, a)| a - b);
    let slowed = |key: &SeriesKey, like: Option<f64>| {
        change(key).is_some_and(|(before, after)| {
            before > 0.0
                && after >= SLOWED * before
                && like.is_none_or(|rise| after - before >= 0.5 * rise)
        })
    };
    let mut others = 0;
    for key in calls.iter().filter(|key| node::own(key) != caller) {
        if change(key).is_none() {
            continue;
        }
        if slowed(key, own_rise) {
            return false;
        }
        others += 1;
    }
    let served = super::history::derived_key(peer, "mean_ms");
    let explained = match (own_calls, change(&served)) {
        (Some((b, a)), Some((sb, sa))) => sa - sb >= 0.5 * (a - b),
        _ => slowed(&served, None),
    };
    (others > 0 && !explained)
        || (own_calls.is_none()
            && own_key.is_some_and(|own| waits_alone_now(history, own, &calls, &served, onset)))
}

/// [`slowed_alone`] for calls with no "before" (traces began as the incident
/// did: sampled, or switched on for it): callers are compared as they stand
/// since `onset`. A call's time is the peer's time serving it plus the network
/// and the caller's own wait (its CPU, its client); the calls of `own` wait
/// alone when the peer's own requests (`served`, where it reports them)
/// explain less than half of their time, and every other caller's calls to
/// it take no more than half as long beyond the peer's time. A peer slow in
/// its code or its network is slow for every caller.
fn waits_alone_now(
    history: &History,
    own: &SeriesKey,
    calls: &[&SeriesKey],
    served: &SeriesKey,
    onset: i64,
) -> bool {
    let since = |key: &SeriesKey| history.since(key, onset);
    let (Some(own_ms), Some(served)) = (since(own), since(served)) else {
        return false;
    };
    let gap = own_ms - served;
    let others: Vec<f64> = calls
        .iter()
        .filter(|key| node::own(key) != node::own(own))
        .filter_map(|key| since(key))
        .collect();
    gap > 0.5 * own_ms && !others.is_empty() && others.iter().all(|o| o - served <= 0.5 * gap)
}

/// Where call series `key` stood before onset and since, if it degraded.
fn worsened(history: &History, key: &SeriesKey, onset: i64) -> Option<(f64, f64)> {
    let (before, after) = history.before_after(key, onset, MIN_BEFORE)?;
    let bad = match key.name.as_str() {
        "error_rate" => after - before >= MIN_ERROR_RISE && after >= 2.0 * before,
        "mean_ms" | "p99_ms" => before > 0.0 && after >= MIN_SLOWDOWN * before,
        _ => false,
    };
    bad.then_some((before, after))
}

/// The record of call series `key`, if it degraded since onset.
fn degraded(history: &History, key: &SeriesKey, onset: i64) -> Option<Anomaly> {
    let (before, after) = worsened(history, key, onset)?;
    Some(Anomaly {
        key: key.clone(),
        class: FailureClass::DependencyFailure,
        pattern: PATTERN.to_string(),
        onset_ms: onset,
        detected_ms: onset,
        ended_ms: None,
        observed: after,
        expected: before,
        score: WEIGHT,
        windows: 1,
        detail: format!(
            "{} {} {before:.4} -> {after:.4} since onset, not yet an anomaly",
            key.service, key.name
        ),
        decisive: false,
    })
}

#[cfg(test)]
#[path = "calls_tests.rs"]
mod tests;

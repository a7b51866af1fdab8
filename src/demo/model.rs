//! The demo fleet's state: a small shop (nine services, two databases, a cache,
//! two payment providers and an order queue), the faults injected into it and
//! what each remediation action does to it.
//!
//! The model is deliberately mechanical, so that a remedy works for the reason
//! it would in production, not because the demo knows which fault is on:
//! - latency is queueing: a service's own time grows as `(1 - u0) / (1 - u)`
//!   with its utilisation `u` = demand / capacity; scaling out adds capacity;
//! - a leak grows resident memory; near the limit, garbage collection slows
//!   every request; a restart returns memory to its base;
//! - a deployment changes the version (the SDK's resource) and the error rate;
//!   a rollback restores the previous version and its behaviour;
//! - a payment provider that fails makes its callers fail; a reroute moves them
//!   to the backup provider;
//! - the order queue grows when the consumer's capacity is below the arrival
//!   rate; scaling the consumer out drains it.

use std::collections::{BTreeMap, VecDeque};

use opentelemetry::trace::SpanContext;

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Service,
    /// A database (`db.system`).
    Database(&'static str),
    /// A host outside the fleet (`server.address`), with its backup.
    External {
        backup: Option<&'static str>,
    },
    /// A messaging destination and the service consuming it.
    Queue {
        consumer: &'static str,
    },
}

/// One node of the topology.
#[derive(Debug, Clone, Copy)]
pub struct Node {
    pub name: &'static str,
    pub kind: Kind,
    /// Median own time of a request at nominal utilisation, milliseconds.
    pub own_ms: f64,
    /// What one request calls: (callee, probability).
    pub calls: &'static [(&'static str, f64)],
}

const fn service(name: &'static str, own_ms: f64, calls: &'static [(&'static str, f64)]) -> Node {
    Node {
        name,
        kind: Kind::Service,
        own_ms,
        calls,
    }
}

const fn leaf(name: &'static str, kind: Kind, own_ms: f64) -> Node {
    Node {
        name,
        kind,
        own_ms,
        calls: &[],
    }
}

/// The shop. `frontend` is the entry point.
pub const TOPOLOGY: &[Node] = &[
    service(
        "frontend",
        6.0,
        &[
            ("catalog", 0.7),
            ("recommendation", 0.5),
            ("cart", 0.4),
            ("checkout", 0.25),
        ],
    ),
    service("catalog", 5.0, &[("catalog-db", 1.0)]),
    service("recommendation", 9.0, &[("catalog", 0.5)]),
    service("cart", 3.0, &[("cart-cache", 1.0)]),
    service(
        "checkout",
        8.0,
        &[
            ("cart", 1.0),
            ("payment", 1.0),
            ("inventory", 1.0),
            ("shipping", 1.0),
            ("orders", 1.0),
        ],
    ),
    service("payment", 10.0, &[("pay.primary.example", 1.0)]),
    service("inventory", 4.0, &[("inventory-db", 1.0)]),
    service("shipping", 6.0, &[]),
    service("notifier", 12.0, &[]),
    leaf("catalog-db", Kind::Database("postgresql"), 2.5),
    leaf("inventory-db", Kind::Database("postgresql"), 2.5),
    leaf("cart-cache", Kind::Database("redis"), 0.6),
    leaf(
        "pay.primary.example",
        Kind::External {
            backup: Some("pay.backup.example"),
        },
        30.0,
    ),
    leaf("pay.backup.example", Kind::External { backup: None }, 35.0),
    leaf(
        "orders",
        Kind::Queue {
            consumer: "notifier",
        },
        0.8,
    ),
];

/// Requests per second entering at `frontend`.
pub const ENTRY_RATE: f64 = 20.0;
/// Utilisation of every service at the nominal rate.
pub const NOMINAL_UTILISATION: f64 = 0.35;
/// Memory of a service after a start, bytes.
pub const BASE_MEMORY: f64 = 200.0 * 1024.0 * 1024.0;
/// Memory limit of every service, bytes.
pub const MEMORY_LIMIT: f64 = 512.0 * 1024.0 * 1024.0;
/// Orders one notifier replica handles per second.
pub const CONSUMER_RATE: f64 = 10.0;
/// Utilisation is capped here (a saturated service still answers, slowly).
const MAX_UTILISATION: f64 = 0.96;
/// CPU-seconds of work a replica holds waiting for its CPU at most; beyond it
/// requests are shed (they time out at their callers).
const MAX_WAITING_WORK: f64 = 1.0;

/// The faults the demo injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    MemoryLeak,
    FaultyDeployment,
    LatencyDegradation,
    DependencyOutage,
    QueueBacklog,
    CpuSaturation,
}

impl FaultKind {
    pub fn label(self) -> &'static str {
        match self {
            FaultKind::MemoryLeak => "memory leak",
            FaultKind::FaultyDeployment => "faulty deployment",
            FaultKind::LatencyDegradation => "latency degradation",
            FaultKind::DependencyOutage => "dependency outage",
            FaultKind::QueueBacklog => "queue backlog",
            FaultKind::CpuSaturation => "CPU saturation",
        }
    }
}

/// One fault: what, where, and what it does to the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fault {
    pub kind: FaultKind,
    /// The node it is injected into.
    pub target: &'static str,
}

impl Fault {
    /// The node a correct diagnosis names: where the fault is.
    pub fn culprit(&self) -> &'static str {
        self.target
    }

    /// Nodes a remedy may rightly act on: the culprit, and for a failing
    /// dependency its callers too (a reroute is carried out by the callers).
    pub fn afflicted(&self) -> Vec<&'static str> {
        let mut nodes = vec![self.target];
        if self.kind == FaultKind::DependencyOutage {
            nodes.extend(callers(self.target));
        }
        nodes
    }
}

/// Services that call `node`.
pub fn callers(node: &str) -> impl Iterator<Item = &'static str> + '_ {
    TOPOLOGY
        .iter()
        .filter(move |n| n.calls.iter().any(|(c, _)| *c == node))
        .map(|n| n.name)
}

/// The node called `name`.
pub fn node(name: &str) -> Option<&'static Node> {
    TOPOLOGY.iter().find(|n| n.name == name)
}

/// Requests per second each node receives at the entry rate (the call tree is
/// acyclic, so one pass in topological order suffices).
pub fn nominal_rates() -> BTreeMap<&'static str, f64> {
    let mut rates = BTreeMap::new();
    rates.insert("frontend", ENTRY_RATE);
    // TOPOLOGY lists callers before callees.
    for n in TOPOLOGY {
        let rate = rates.get(n.name).copied().unwrap_or(0.0);
        for (callee, share) in n.calls {
            *rates.entry(*callee).or_insert(0.0) += rate * share;
        }
        if let Kind::Queue { consumer } = n.kind {
            *rates.entry(consumer).or_insert(0.0) += rate;
        }
    }
    rates
}

/// The changing state of one service.
#[derive(Debug, Clone)]
pub struct ServiceState {
    pub version: String,
    pub previous_version: Option<String>,
    pub replicas: u32,
    /// Capacity of one replica relative to normal (a noisy neighbour lowers it).
    pub capacity: f64,
    /// CPU work per request relative to normal (a hot loop raises it).
    pub cpu_cost: f64,
    pub memory: f64,
    /// Bytes leaked per second of event time.
    pub leak_per_s: f64,
    /// Share of requests failing on their own (a bad build raises it).
    pub error_share: f64,
    /// Versions known to be bad, with their error share.
    pub bad_versions: BTreeMap<String, f64>,
    /// Utilisation (demand over the capacity left), smoothed over about a second.
    pub utilisation: f64,
    /// The process's own CPU use per replica (capacity stolen by a noisy
    /// neighbour does not show in it).
    pub cpu: f64,
    /// CPU-seconds of work per replica waiting for the CPU: a tick's work that
    /// did not fit runs in the next, so a starved process runs at its limit.
    pub waiting_work: f64,
    pub restarts: u32,
}

impl ServiceState {
    fn new() -> Self {
        ServiceState {
            version: "1.4.2".to_string(),
            previous_version: None,
            replicas: 1,
            capacity: 1.0,
            cpu_cost: 1.0,
            memory: BASE_MEMORY,
            leak_per_s: 0.0,
            error_share: 0.002,
            bad_versions: BTreeMap::new(),
            utilisation: NOMINAL_UTILISATION,
            cpu: NOMINAL_UTILISATION,
            waiting_work: 0.0,
            restarts: 0,
        }
    }

    /// Own-time multiplier from queueing and garbage collection.
    pub fn slowdown(&self) -> f64 {
        let queueing = (1.0 - NOMINAL_UTILISATION) / (1.0 - self.utilisation.min(MAX_UTILISATION));
        let pressure = self.memory / MEMORY_LIMIT;
        let gc = 1.0 + 6.0 * (pressure - 0.45).max(0.0);
        queueing.max(1.0) * gc
    }
}

/// The whole fleet's state, shared by the traffic generator, the metric
/// gauges and the control endpoint the executor calls.
#[derive(Debug)]
pub struct Fleet {
    /// Seconds of traffic so far.
    pub clock: f64,
    pub services: BTreeMap<&'static str, ServiceState>,
    /// Failing share of calls to each external host.
    pub outages: BTreeMap<&'static str, f64>,
    /// Hosts rerouted to their backup.
    pub rerouted: BTreeMap<&'static str, &'static str>,
    /// Messages waiting in the queue: when they were sent, and the producer's span.
    pub queue: VecDeque<(f64, SpanContext)>,
    /// Orders the consumer may still take (fractions carry over between ticks).
    credit: f64,
    nominal: BTreeMap<&'static str, f64>,
}

/// Most messages the simulated queue holds (older ones are dropped).
const MAX_QUEUE: usize = 100_000;

impl Default for Fleet {
    fn default() -> Self {
        Self::new()
    }
}

impl Fleet {
    pub fn new() -> Self {
        let services = TOPOLOGY
            .iter()
            .filter(|n| n.kind == Kind::Service)
            .map(|n| (n.name, ServiceState::new()))
            .collect();
        Fleet {
            services,
            outages: BTreeMap::new(),
            rerouted: BTreeMap::new(),
            clock: 0.0,
            queue: VecDeque::new(),
            credit: 0.0,
            nominal: nominal_rates(),
        }
    }

    /// The state without the queue's messages (what a tick's requests read).
    pub fn snapshot(&self) -> Fleet {
        Fleet {
            clock: self.clock,
            services: self.services.clone(),
            outages: self.outages.clone(),
            rerouted: self.rerouted.clone(),
            queue: VecDeque::new(),
            credit: 0.0,
            nominal: self.nominal.clone(),
        }
    }

    /// Failing share of calls to `host`.
    pub fn failing_share(&self, host: &str) -> f64 {
        self.outages.get(host).copied().unwrap_or(0.0)
    }

    /// Seconds the oldest waiting message has waited.
    pub fn queue_age(&self) -> f64 {
        self.queue
            .front()
            .map_or(0.0, |(sent, _)| self.clock - sent)
    }

    /// Advances the state by `dt` seconds in which each service saw
    /// `observed` requests per second.
    pub fn advance(&mut self, dt: f64, observed: &BTreeMap<&'static str, f64>) {
        self.clock += dt;
        let smoothing = (dt / 1.0).min(1.0);
        for (name, s) in self.services.iter_mut() {
            let nominal = self.nominal.get(name).copied().unwrap_or(1.0).max(0.1);
            let rate = observed.get(name).copied().unwrap_or(0.0);
            // Utilisation: demand over capacity, normal load at the nominal value.
            let demand = NOMINAL_UTILISATION * rate / nominal * s.cpu_cost;
            let replicas = f64::from(s.replicas);
            let target = demand / (replicas * s.capacity);
            s.utilisation += smoothing * (target.min(1.0) - s.utilisation);
            // Busy while there is work: this tick's and what earlier ticks left.
            let work = s.waiting_work + demand / replicas * dt;
            let busy = if dt > 0.0 {
                (work / dt).min(1.0)
            } else {
                s.cpu
            };
            s.waiting_work = (work - dt).clamp(0.0, MAX_WAITING_WORK);
            s.cpu += smoothing * (busy - s.cpu);
            s.memory = (s.memory + s.leak_per_s * dt).min(MEMORY_LIMIT);
        }
    }

    /// Orders the consumer can take this tick of `dt` seconds.
    pub fn consumer_capacity(&self, consumer: &str, dt: f64) -> f64 {
        self.services.get(consumer).map_or(0.0, |s| {
            CONSUMER_RATE * f64::from(s.replicas) * s.capacity * dt
        })
    }

    /// A message sent now.
    pub fn enqueue(&mut self, producer: SpanContext) {
        if self.queue.len() >= MAX_QUEUE {
            self.queue.pop_front();
        }
        self.queue.push_back((self.clock, producer));
    }

    /// The messages the consumer takes in `dt` seconds.
    pub fn dequeue(&mut self, dt: f64) -> Vec<(f64, SpanContext)> {
        let Some(consumer) = TOPOLOGY.iter().find_map(|n| match n.kind {
            Kind::Queue { consumer } => Some(consumer),
            _ => None,
        }) else {
            return Vec::new();
        };
        self.credit += self.consumer_capacity(consumer, dt);
        let take = (self.credit.floor() as usize).min(self.queue.len());
        self.credit -= take as f64;
        if self.queue.is_empty() {
            // Idle capacity is not saved up.
            self.credit = self.credit.min(1.0);
        }
        self.queue.drain(..take).collect()
    }

    /// The host calls toward `host` really go to.
    pub fn route(&self, host: &'static str) -> &'static str {
        self.rerouted.get(host).copied().unwrap_or(host)
    }

    /// Injects `fault`.
    pub fn inject(&mut self, fault: Fault) {
        if fault.kind == FaultKind::DependencyOutage {
            self.outages.insert(fault.target, 0.85);
            return;
        }
        let Some(s) = self.services.get_mut(fault.target) else {
            return;
        };
        match fault.kind {
            FaultKind::MemoryLeak => s.leak_per_s = 9.0 * 1024.0 * 1024.0,
            FaultKind::FaultyDeployment => {
                let next = "1.5.0".to_string();
                s.bad_versions.insert(next.clone(), 0.3);
                s.previous_version = Some(std::mem::replace(&mut s.version, next));
                s.error_share = 0.3;
            }
            FaultKind::LatencyDegradation => s.capacity = 0.4,
            FaultKind::CpuSaturation => s.cpu_cost = 3.5,
            FaultKind::QueueBacklog => s.capacity = 0.3,
            FaultKind::DependencyOutage => {}
        }
    }

    /// Whether the symptoms of `fault` are gone.
    pub fn healthy(&self, fault: Fault) -> bool {
        if fault.kind == FaultKind::DependencyOutage {
            let down = self.outages.get(fault.target).copied().unwrap_or(0.0) > 0.0;
            return !down || self.route(fault.target) != fault.target;
        }
        let Some(s) = self.services.get(fault.target) else {
            return true;
        };
        match fault.kind {
            FaultKind::MemoryLeak => s.leak_per_s == 0.0 && s.memory < 0.6 * MEMORY_LIMIT,
            FaultKind::FaultyDeployment => !s.bad_versions.contains_key(&s.version),
            FaultKind::LatencyDegradation | FaultKind::CpuSaturation => s.slowdown() < 1.3,
            FaultKind::QueueBacklog => {
                let rate = self.nominal.get(fault.target).copied().unwrap_or(1.0);
                self.consumer_capacity(fault.target, 1.0) > rate && self.queue.len() < 20
            }
            FaultKind::DependencyOutage => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;
    use rand_distr::{Distribution, Poisson};

    use super::*;

    /// `seconds` of traffic in ticks of 0.2 s, each tick's arrivals drawn as
    /// the demo's traffic makes them (a few requests a tick for most services);
    /// the lowest CPU reading of the last `last` seconds.
    fn lowest_cpu(fleet: &mut Fleet, service: &'static str, seconds: f64, last: f64) -> f64 {
        let dt = 0.2;
        let nominal = nominal_rates();
        let mut rng = SmallRng::seed_from_u64(3);
        let mut lowest = f64::INFINITY;
        let ticks = (seconds / dt) as usize;
        for tick in 0..ticks {
            let observed = nominal
                .iter()
                .map(|(&name, &rate)| {
                    let arrivals = Poisson::new(rate * dt).map_or(0.0, |p| p.sample(&mut rng));
                    (name, arrivals / dt)
                })
                .collect();
            fleet.advance(dt, &observed);
            if (ticks - tick) as f64 * dt <= last {
                lowest = lowest.min(fleet.services[service].cpu);
            }
        }
        lowest
    }

    #[test]
    fn a_process_starved_of_cpu_runs_at_its_limit_and_a_scale_out_frees_it() {
        let fault = Fault {
            kind: FaultKind::CpuSaturation,
            target: "recommendation",
        };
        let mut fleet = Fleet::new();
        let healthy = lowest_cpu(&mut fleet, fault.target, 30.0, 30.0);
        assert!(healthy < 0.5, "healthy at {healthy}");
        fleet.inject(fault);
        // Within seconds the process is pinned at its limit, tick after tick,
        // though only a few requests arrive per tick.
        let starved = lowest_cpu(&mut fleet, fault.target, 20.0, 15.0);
        assert!(starved > 0.95, "starved, lowest {starved}");
        fleet
            .services
            .get_mut(fault.target)
            .expect("known")
            .replicas = 3;
        let scaled = lowest_cpu(&mut fleet, fault.target, 20.0, 10.0);
        assert!(scaled < 0.6, "scaled out, lowest {scaled}");
    }
}

//! The detection stage: closed windows in, anomalies out.
//!
//! For every closed window, each row of its tables (and each mined log template)
//! is offered to the catalogue's patterns. A pattern that watches the row's kind
//! and passes its filters evaluates its detector against the series' baseline as
//! it stood *before* this window; then every series learns its value. A
//! condition that holds `consecutive` windows in a row opens an episode: one
//! [`Anomaly`], updated while it lasts, closed when the condition fails, after
//! which the series is quiet for `cooldown` windows.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, StringArray, UInt64Array};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::anomaly::{Anomaly, AnomalyLog, SeriesKey};
use super::baseline::{Baseline, BaselineParams, BaselineState};
use super::catalogue::{Catalogue, Detector, Direction, Pattern, SeriesKind, glob_match};
use super::drain::Drain;
use super::growth::{self, GrowthRule};
use super::rows::{Row, rows};
use super::trend::Coarse;
use super::univariate::{Univariate, UnivariateParams};
use crate::window::{FastMap, WindowTables};

/// Everything the stage needs to know besides the catalogue.
#[derive(Debug, Clone)]
pub struct StageParams {
    pub baseline: BaselineParams,
    pub univariate: UnivariateParams,
    /// Window length, ms.
    pub window_ms: i64,
    /// Most series with a baseline; new series beyond are not tracked (counted).
    pub max_series: usize,
    /// Most series with a univariate detector (the generic pattern).
    pub max_univariate_series: usize,
    /// Most log templates.
    pub max_templates: usize,
    /// Share of equal tokens for a message to join a template.
    pub template_similarity: f64,
    /// Windows a service's logs are mined before its new templates count.
    pub template_warmup: u32,
    /// Where snapshots go (none: not persisted).
    pub snapshot: Option<PathBuf>,
    /// Windows between snapshots.
    pub snapshot_every: u32,
    /// Ended anomalies are dropped from the log this long after they ended.
    pub anomaly_retain_ms: i64,
    /// Log records stamped further than this past the wall clock are not mined
    /// (the window stage drops them too: `window.max_future_skew`).
    pub max_future_ms: i64,
}

/// Most future windows with pending template counts (a backstop; the skew check
/// keeps far fewer).
const MAX_PENDING_WINDOWS: usize = 10_000;

/// What a series remembers.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SeriesState {
    baseline: Baseline,
    /// The last values learned, (window start, value), oldest first.
    recent: VecDeque<(i64, f64)>,
    univariate: Option<Box<Univariate>>,
    /// Bucketed history for slow growth (series a growth pattern watches).
    #[serde(default)]
    coarse: Option<Box<Coarse>>,
}

/// An open or recent episode of one pattern on one series.
#[derive(Debug, Clone, Default)]
struct Episode {
    run: u32,
    run_onset: i64,
    active: Option<i64>,
    quiet_until: i64,
    windows: u64,
}

/// A condition that holds in this window.
#[derive(Debug, Clone)]
pub(super) struct Candidate {
    pub(super) observed: f64,
    pub(super) expected: f64,
    pub(super) score: f64,
    /// Where the episode really began, when the detector knows better than "now".
    pub(super) onset: Option<i64>,
    pub(super) detail: String,
}

/// The persisted part of the stage.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    window_ms: i64,
    series: Vec<(SeriesKey, String, SeriesState)>,
    drain: Drain,
    template_windows: HashMap<String, u32>,
    /// The anomaly log, so the `anomalies` table survives a restart.
    #[serde(default)]
    anomalies: Vec<Anomaly>,
}

/// 2: seasonal profiles hold mean values per slot (1 held offsets against a
/// moving daily mean); an older snapshot is ignored and the baselines relearn.
const SNAPSHOT_VERSION: u32 = 2;

/// The detection stage (see the module docs).
pub struct DetectStage {
    params: StageParams,
    /// Series by [`series_id`]; the key is kept to resolve collisions.
    series: FastMap<u64, (SeriesKey, String, SeriesState)>,
    episodes: FastMap<(usize, u64), Episode>,
    /// Pattern indices that watch a row identity (kind, metric or tag).
    matched: FastMap<(SeriesKind, String), Arc<[usize]>>,
    patterns: Arc<Vec<Pattern>>,
    drain: Drain,
    /// Window start -> (service, template id) -> messages.
    /// Messages per template id (a template belongs to one service), per window.
    template_counts: BTreeMap<i64, HashMap<u32, u64>>,
    /// Window start -> templates created there, with the creating message's severity.
    new_templates: BTreeMap<i64, Vec<(String, u32, String)>>,
    /// Windows of logs seen per service.
    template_windows: HashMap<String, u32>,
    closed_through: i64,
    log: AnomalyLog,
    history_len: usize,
    univariates: usize,
    untracked: u64,
    untracked_reported: u64,
    since_snapshot: u32,
}

impl DetectStage {
    /// A stage with `catalogue`, restoring the snapshot when there is one.
    pub fn new(catalogue: Catalogue, params: StageParams, log: AnomalyLog) -> Self {
        let history_len = catalogue
            .patterns
            .iter()
            .map(|p| match &p.detector {
                Detector::Limit { trend_windows, .. } => *trend_windows as usize,
                Detector::Growth {
                    windows,
                    trend_windows,
                    ..
                } => (*windows).max(*trend_windows) as usize,
                _ => 1,
            })
            .max()
            .unwrap_or(1)
            + 1;
        let mut stage = Self {
            drain: Drain::new(params.template_similarity, params.max_templates),
            params,
            series: FastMap::default(),
            episodes: FastMap::default(),
            matched: FastMap::default(),
            patterns: Arc::new(catalogue.patterns),
            template_counts: BTreeMap::new(),
            new_templates: BTreeMap::new(),
            template_windows: HashMap::new(),
            closed_through: i64::MIN,
            log,
            history_len,
            univariates: 0,
            untracked: 0,
            untracked_reported: 0,
            since_snapshot: 0,
        };
        stage.restore();
        stage
    }

    /// The anomaly log this stage writes.
    pub fn log(&self) -> &AnomalyLog {
        &self.log
    }

    /// Series with a baseline.
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// Log templates mined.
    pub fn template_count(&self) -> usize {
        self.drain.len()
    }

    /// Series values not tracked (`max_series` reached) since the last call.
    pub fn take_untracked(&mut self) -> u64 {
        let n = self.untracked - self.untracked_reported;
        self.untracked_reported = self.untracked;
        n
    }

    /// The state of a series' baseline for `measure`, if tracked.
    pub fn baseline_state(&self, key: &SeriesKey, measure: &str) -> Option<BaselineState> {
        self.state(key, measure)
            .map(|s| s.baseline.state(&self.params.baseline))
    }

    /// Mines a batch of log records (the `columnar::logs` schema) into templates,
    /// counted per event-time window.
    pub fn on_logs(&mut self, batch: &RecordBatch) {
        let text = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        };
        let (Some(service), Some(body), Some(severity)) =
            (text("service_name"), text("body"), text("severity"))
        else {
            return;
        };
        let Some(time) = batch
            .column_by_name("time_unix_nano")
            .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
        else {
            return;
        };
        let w = self.params.window_ms.max(1);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(i64::MAX, |d| d.as_millis() as i64);
        let horizon = now_ms.saturating_add(self.params.max_future_ms);
        for i in 0..batch.num_rows() {
            if body.is_null(i) || time.is_null(i) {
                continue;
            }
            let ms = (time.value(i) / 1_000_000) as i64;
            let start = ms.div_euclid(w) * w;
            if start < self.closed_through || ms > horizon {
                continue;
            }
            if !self.template_counts.contains_key(&start)
                && self.template_counts.len() >= MAX_PENDING_WINDOWS
            {
                continue;
            }
            let m = self.drain.add(service.value(i), body.value(i));
            if m.id == u32::MAX {
                continue;
            }
            *self
                .template_counts
                .entry(start)
                .or_default()
                .entry(m.id)
                .or_default() += 1;
            if m.new {
                self.new_templates.entry(start).or_default().push((
                    service.value(i).to_string(),
                    m.id,
                    severity.value(i).to_string(),
                ));
            }
        }
    }

    /// Evaluates one closed window (windows in order); returns the anomalies it
    /// opened.
    pub fn on_window(&mut self, tables: &WindowTables) -> Vec<Anomaly> {
        let t = tables.start_ms;
        let mut rows = rows(tables);
        let new_templates = self.template_rows(t, &mut rows);
        let context = WindowContext::new(&rows);

        let mut evaluated: Vec<(usize, SeriesKey, Option<Candidate>)> = Vec::new();
        let mut learn: HashMap<(SeriesKey, String), f64> = HashMap::new();
        let patterns = self.patterns.clone();
        for row in &rows {
            for &index in self.patterns_for(row).iter() {
                let Some(pattern) = patterns.get(index) else {
                    continue;
                };
                let measure = if row.kind == SeriesKind::Metric || pattern.measure != "auto" {
                    pattern.measure.clone()
                } else {
                    "count".to_string()
                };
                let Some(value) = row.measure(&measure) else {
                    continue;
                };
                let key = key_for(row, pattern);
                let candidate = match &pattern.detector {
                    Detector::NewTemplate { min_severity } => {
                        self.new_template(row, &new_templates, min_severity, value)
                    }
                    Detector::Stall { .. } => {
                        self.stall(pattern, row, t, value, &context, &mut learn)
                    }
                    _ => self.evaluate(pattern, &key, &measure, row, t, value, &context),
                };
                evaluated.push((index, key.clone(), candidate));
                learn.insert((key, measure), value);
            }
        }
        // Services that sent telemetry but no spans: zero throughput, for stalls.
        for (index, pattern) in patterns.iter().enumerate() {
            if !matches!(pattern.detector, Detector::Stall { .. }) {
                continue;
            }
            for service in context.silent_services() {
                let row = Row {
                    kind: SeriesKind::Service,
                    service: service.clone(),
                    metric: String::new(),
                    metric_type: String::new(),
                    unit: String::new(),
                    attributes: String::new(),
                    tag: String::new(),
                    values: HashMap::new(),
                };
                let key = key_for(&row, pattern);
                if self.state(&key, &pattern.measure).is_none() {
                    continue;
                }
                let candidate = self.stall(pattern, &row, t, 0.0, &context, &mut learn);
                evaluated.push((index, key, candidate));
            }
        }

        let mut opened = Vec::new();
        for (index, key, candidate) in evaluated {
            if let Some(anomaly) = self.step_episode(index, key, candidate, t) {
                opened.push(anomaly);
            }
        }
        for ((key, measure), value) in learn {
            self.learn(key, measure, t, value);
        }
        self.closed_through = tables.end_ms;
        self.log
            .retain_after(tables.end_ms.saturating_sub(self.params.anomaly_retain_ms));
        self.episodes
            .retain(|_, e| e.active.is_some() || e.run > 0 || e.quiet_until > t);
        if self.matched.len() > 100_000 {
            self.matched.clear();
        }
        self.since_snapshot += 1;
        if self.since_snapshot >= self.params.snapshot_every.max(1) {
            self.snapshot();
        }
        opened
    }

    /// Turns the template counts of window `t` into rows; returns the templates
    /// created in it.
    fn template_rows(&mut self, t: i64, rows: &mut Vec<Row>) -> Vec<(String, u32, String)> {
        let counts = self.template_counts.remove(&t).unwrap_or_default();
        self.template_counts.retain(|start, _| *start > t);
        let created = self.new_templates.remove(&t).unwrap_or_default();
        self.new_templates.retain(|start, _| *start > t);
        let mut services: HashSet<&str> = HashSet::new();
        for (id, count) in &counts {
            let Some(template) = self.drain.template(*id) else {
                continue;
            };
            services.insert(&template.service);
            rows.push(Row {
                kind: SeriesKind::LogTemplate,
                service: template.service.clone(),
                metric: String::new(),
                metric_type: String::new(),
                unit: String::new(),
                attributes: format!("template={id}"),
                tag: template.text(),
                values: HashMap::from([("count", *count as f64)]),
            });
        }
        for service in services {
            *self
                .template_windows
                .entry(service.to_string())
                .or_default() += 1;
        }
        created
    }

    fn new_template(
        &self,
        row: &Row,
        created: &[(String, u32, String)],
        min_severity: &str,
        value: f64,
    ) -> Option<Candidate> {
        let warm = self
            .template_windows
            .get(&row.service)
            .copied()
            .unwrap_or(0)
            > self.params.template_warmup;
        if !warm {
            return None;
        }
        let id: u32 = row.attributes.strip_prefix("template=")?.parse().ok()?;
        let (_, _, severity) = created
            .iter()
            .find(|(s, i, _)| *i == id && *s == row.service)?;
        if severity_rank(severity) < severity_rank(min_severity) {
            return None;
        }
        Some(Candidate {
            observed: value,
            expected: 0.0,
            score: 1.0,
            onset: None,
            detail: format!("new {severity} log template: {}", row.tag),
        })
    }

    fn state(&self, key: &SeriesKey, measure: &str) -> Option<&SeriesState> {
        self.series
            .get(&series_id(key, measure))
            .filter(|(k, m, _)| k == key && m == measure)
            .map(|(_, _, s)| s)
    }

    /// The series' state once its baseline is `ready`.
    fn ready(&self, key: &SeriesKey, measure: &str) -> Option<&SeriesState> {
        self.state(key, measure)
            .filter(|s| s.baseline.state(&self.params.baseline) == BaselineState::Ready)
    }

    fn state_mut(&mut self, key: &SeriesKey, measure: &str) -> Option<&mut SeriesState> {
        self.series
            .get_mut(&series_id(key, measure))
            .filter(|(k, m, _)| k == key && m == measure)
            .map(|(_, _, s)| s)
    }

    /// The patterns that watch `row`, in catalogue order; a fallback pattern only
    /// when no other pattern of the row's kind does. Cached per row identity.
    fn patterns_for(&mut self, row: &Row) -> Arc<[usize]> {
        let identity = match row.kind {
            SeriesKind::Metric => row.metric.clone(),
            SeriesKind::Edge | SeriesKind::Log => row.tag.clone(),
            _ => String::new(),
        };
        if let Some(found) = self.matched.get(&(row.kind, identity.clone())) {
            return found.clone();
        }
        let mut out = Vec::new();
        let mut claimed = false;
        for (index, pattern) in ordered(&self.patterns) {
            if pattern.series != row.kind || !matches(pattern, row) || (pattern.fallback && claimed)
            {
                continue;
            }
            claimed |= !pattern.fallback;
            out.push(index);
        }
        let out: Arc<[usize]> = out.into();
        self.matched.insert((row.kind, identity), out.clone());
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn evaluate(
        &mut self,
        pattern: &Pattern,
        key: &SeriesKey,
        measure: &str,
        row: &Row,
        t: i64,
        value: f64,
        context: &WindowContext,
    ) -> Option<Candidate> {
        match &pattern.detector {
            Detector::Deviation {
                direction,
                min_score,
                min_delta,
                min_ratio,
                min_volume,
                min_expected,
            } => {
                let state = self.ready(key, measure)?;
                let volume = row.volume();
                if row.kind != SeriesKind::Metric
                    && row.kind != SeriesKind::Log
                    && row.kind != SeriesKind::LogTemplate
                    && volume < *min_volume
                {
                    return None;
                }
                let expected = state.baseline.expected(t);
                let floor = resolution(measure, expected, volume);
                let d = state.baseline.deviation(t, value, floor);
                let up = value > d.expected;
                let ok_direction = match direction {
                    Direction::Up => up,
                    Direction::Down => !up,
                    Direction::Both => true,
                };
                let ratio_ok = *min_ratio <= 0.0
                    || if up {
                        value >= d.expected.max(0.0) * min_ratio
                    } else {
                        value * min_ratio <= d.expected
                    };
                let score = d.score();
                (ok_direction
                    && score >= *min_score
                    && (value - d.expected).abs() >= *min_delta
                    && ratio_ok
                    && d.expected.abs() >= *min_expected)
                    .then(|| Candidate {
                        observed: value,
                        expected: d.expected,
                        score,
                        onset: None,
                        detail: format!(
                            "{measure} {} to {} (expected {}, z {:.1})",
                            if up { "up" } else { "down" },
                            short(value),
                            short(d.expected),
                            d.z
                        ),
                    })
            }
            Detector::Limit {
                limit,
                limit_pairs,
                threshold,
                forecast_from,
                horizon,
                trend_windows,
            } => {
                let limit = limit.or_else(|| context.limit_for(row, limit_pairs))?;
                if limit <= 0.0 {
                    return None;
                }
                let fraction = value / limit;
                let state = self.state(key, measure);
                let mut points: Vec<(i64, f64)> = state
                    .map(|s| {
                        s.recent
                            .iter()
                            .rev()
                            .take(*trend_windows as usize - 1)
                            .rev()
                            .copied()
                            .collect()
                    })
                    .unwrap_or_default();
                points.push((t, value));
                let slope = slope_per_sec(&points) / limit;
                let tte = (slope > 0.0).then(|| (1.0 - fraction).max(0.0) / slope);
                let horizon = horizon.as_secs_f64();
                let forecast = tte
                    .filter(|s| *s <= horizon && fraction >= *forecast_from && points.len() >= 3);
                if fraction < *threshold && forecast.is_none() {
                    return None;
                }
                let score = fraction
                    .max(tte.map_or(0.0, |s| 1.0 - s / horizon.max(1.0)))
                    .clamp(0.0, 1.0);
                let eta = tte
                    .map(|s| {
                        format!(
                            ", exhausted in ~{}",
                            humantime::format_duration(std::time::Duration::from_secs(s as u64))
                        )
                    })
                    .unwrap_or_default();
                Some(Candidate {
                    observed: value,
                    expected: limit,
                    score,
                    onset: None,
                    detail: format!("{:.0}% of limit {}{eta}", fraction * 100.0, short(limit)),
                })
            }
            Detector::Growth {
                windows,
                min_z,
                min_growth,
                trend_windows,
                min_tau,
                slow_horizon,
            } => {
                let rule = GrowthRule {
                    windows: *windows as usize,
                    min_z: *min_z,
                    min_growth: *min_growth,
                    trend_windows: *trend_windows as usize,
                    min_tau: *min_tau,
                };
                let state = self.ready(key, measure)?;
                if let Some(found) = growth::fast(&rule, &state.baseline, &state.recent, t, value) {
                    return Some(found);
                }
                if slow_horizon.is_zero() {
                    return None;
                }
                let horizon_ms = slow_horizon.as_millis().min(i64::MAX as u128) as i64;
                let window_ms = self.params.window_ms;
                let state = self.state_mut(key, measure)?;
                let coarse = state.coarse.get_or_insert_with(|| {
                    Box::new(Coarse::new(horizon_ms, rule.trend_windows, window_ms))
                });
                growth::slow(&rule, &state.baseline, coarse, t, value)
            }
            Detector::Univariate { min_score, min_z } => {
                let params = self.params.univariate.clone();
                let max = self.params.max_univariate_series;
                let room = self.univariates < max;
                let state = self.state_mut(key, measure)?;
                if state.univariate.is_none() {
                    if !room {
                        return None;
                    }
                    state.univariate = Some(Box::new(Univariate::new(params.clone())));
                    self.univariates += 1;
                }
                let state = self.state_mut(key, measure)?;
                let deviation = state
                    .baseline
                    .deviation(t, value, resolution(measure, value, 0.0));
                let expected = deviation.expected;
                let detector = state.univariate.as_mut()?;
                // The pattern's hysteresis debounces; the detector's own rest is for
                // replay, so the raw score is used here.
                let score = detector.observe_raw(t.div_euclid(1000), value);
                (score >= min_score.unwrap_or(params.fire) && deviation.z.abs() >= *min_z).then(
                    || Candidate {
                        observed: value,
                        expected,
                        score,
                        onset: None,
                        detail: format!(
                            "{measure} {} is unusual for this series (usually near {})",
                            short(value),
                            short(expected)
                        ),
                    },
                )
            }
            Detector::Stall { .. } | Detector::NewTemplate { .. } => None,
        }
    }

    /// Throughput near zero while latency or in-flight work climbs.
    fn stall(
        &self,
        pattern: &Pattern,
        row: &Row,
        t: i64,
        requests: f64,
        context: &WindowContext,
        learn: &mut HashMap<(SeriesKey, String), f64>,
    ) -> Option<Candidate> {
        let Detector::Stall {
            max_throughput_ratio,
            min_expected,
            latency_ratio,
            inflight_metrics,
        } = &pattern.detector
        else {
            return None;
        };
        // In-flight metrics learn whether or not this window stalls.
        let mut inflight: Option<(String, f64, f64)> = None;
        for metric in context.metrics_of(&row.service) {
            if !inflight_metrics
                .iter()
                .any(|g| glob_match(g, &metric.metric))
            {
                continue;
            }
            let Some(value) = metric.measure("last") else {
                continue;
            };
            let key = metric_key(metric);
            if let Some(state) = self.ready(&key, "last") {
                let d = state
                    .baseline
                    .deviation(t, value, resolution("last", value, 0.0));
                if d.z >= 4.0 && value >= 1.5 * d.expected.max(1.0) {
                    inflight = Some((metric.metric.clone(), value, d.expected));
                }
            }
            learn.insert((key, "last".to_string()), value);
        }
        let key = key_for(row, pattern);
        let state = self.ready(&key, &pattern.measure)?;
        let expected = state.baseline.expected(t);
        if expected < *min_expected || requests > max_throughput_ratio * expected {
            return None;
        }
        let latency = row.measure("p99_ms").and_then(|p99| {
            let latency_key = SeriesKey {
                name: "p99_ms".to_string(),
                ..key.clone()
            };
            learn.insert((latency_key.clone(), "p99_ms".to_string()), p99);
            let e = self.ready(&latency_key, "p99_ms")?.baseline.expected(t);
            (p99 >= latency_ratio * e.max(0.001)).then_some((p99, e))
        });
        let detail = match (&latency, &inflight) {
            (Some((p99, e)), _) => format!(
                "throughput {} (expected {}) while p99 latency is {} ms (expected {})",
                short(requests),
                short(expected),
                short(*p99),
                short(*e)
            ),
            (None, Some((name, v, e))) => format!(
                "throughput {} (expected {}) while {name} climbs to {} (expected {})",
                short(requests),
                short(expected),
                short(*v),
                short(*e)
            ),
            (None, None) => return None,
        };
        Some(Candidate {
            observed: requests,
            expected,
            score: (1.0 - requests / expected.max(f64::MIN_POSITIVE)).clamp(0.0, 1.0),
            onset: None,
            detail,
        })
    }

    fn step_episode(
        &mut self,
        index: usize,
        key: SeriesKey,
        candidate: Option<Candidate>,
        t: i64,
    ) -> Option<Anomaly> {
        let pattern = self.patterns.get(index)?;
        let episode = self
            .episodes
            .entry((index, series_id(&key, "")))
            .or_default();
        let Some(c) = candidate else {
            episode.run = 0;
            if let Some(onset) = episode.active.take() {
                episode.quiet_until = t + i64::from(pattern.cooldown) * self.params.window_ms;
                self.log
                    .update(&key, &pattern.name, onset, |a| a.ended_ms = Some(t));
                info!(class = %pattern.class, pattern = %pattern.name, series = %key, "anomaly ended");
            }
            return None;
        };
        if let Some(onset) = episode.active {
            episode.windows += 1;
            let windows = episode.windows;
            self.log
                .update(&key, &pattern.name, onset, |a| a.windows = windows);
            return None;
        }
        if t < episode.quiet_until {
            return None;
        }
        if episode.run == 0 {
            episode.run_onset = c.onset.unwrap_or(t).min(t);
        }
        episode.run += 1;
        if episode.run < pattern.consecutive {
            return None;
        }
        episode.active = Some(episode.run_onset);
        episode.windows = u64::from(episode.run);
        let anomaly = Anomaly {
            key,
            class: pattern.class,
            pattern: pattern.name.clone(),
            onset_ms: episode.run_onset,
            detected_ms: t,
            ended_ms: None,
            observed: c.observed,
            expected: c.expected,
            score: c.score,
            windows: episode.windows,
            detail: c.detail,
        };
        info!(
            class = %anomaly.class,
            pattern = %anomaly.pattern,
            series = %anomaly.key,
            observed = anomaly.observed,
            expected = anomaly.expected,
            score = anomaly.score,
            detail = %anomaly.detail,
            "anomaly detected"
        );
        self.log.push(anomaly.clone());
        Some(anomaly)
    }

    fn learn(&mut self, key: SeriesKey, measure: String, t: i64, value: f64) {
        let history = self.history_len;
        let params = self.params.baseline.clone();
        if let Some(state) = self.state_mut(&key, &measure) {
            if let Some(coarse) = state.coarse.as_mut() {
                coarse.push(t, value - state.baseline.seasonal(t));
            }
            state.baseline.learn(t, value, &params);
            state.recent.push_back((t, value));
            while state.recent.len() > history {
                state.recent.pop_front();
            }
            return;
        }
        if self.series.len() >= self.params.max_series {
            self.untracked += 1;
            if self.untracked == 1 {
                warn!(
                    max_series = self.params.max_series,
                    "detect.max_series reached; new series are not tracked"
                );
            }
            return;
        }
        let mut recent = VecDeque::with_capacity(history + 1);
        recent.push_back((t, value));
        let id = series_id(&key, &measure);
        self.series.insert(
            id,
            (
                key,
                measure,
                SeriesState {
                    baseline: Baseline::new(t, value),
                    recent,
                    univariate: None,
                    coarse: None,
                },
            ),
        );
    }

    /// Writes the baselines, univariate detectors and templates (atomically).
    pub fn snapshot(&mut self) {
        self.since_snapshot = 0;
        let Some(path) = &self.params.snapshot else {
            return;
        };
        let snapshot = Snapshot {
            version: SNAPSHOT_VERSION,
            window_ms: self.params.window_ms,
            series: self.series.values().cloned().collect(),
            drain: self.drain.clone(),
            template_windows: self.template_windows.clone(),
            anomalies: self.log.snapshot(),
        };
        let result = serde_json::to_vec(&snapshot)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                let partial = path.with_extension("json.partial");
                std::fs::write(&partial, bytes)?;
                std::fs::rename(&partial, path)
            });
        if let Err(error) = result {
            warn!(%error, path = %path.display(), "failed to write the detection snapshot");
        }
    }

    fn restore(&mut self) {
        let Some(path) = &self.params.snapshot else {
            return;
        };
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(error) => {
                warn!(%error, path = %path.display(), "cannot read the detection snapshot; baselines start from zero");
                return;
            }
        };
        match serde_json::from_slice::<Snapshot>(&bytes) {
            Ok(s) if s.version == SNAPSHOT_VERSION && s.window_ms == self.params.window_ms => {
                let count = s.series.len();
                for (key, measure, mut state) in s.series.into_iter().take(self.params.max_series) {
                    if let Some(u) = &state.univariate {
                        if u.params() != &self.params.univariate
                            || self.univariates >= self.params.max_univariate_series
                        {
                            state.univariate = None;
                        } else {
                            self.univariates += 1;
                        }
                    }
                    self.series
                        .insert(series_id(&key, &measure), (key, measure, state));
                }
                self.drain = s.drain;
                self.template_windows = s.template_windows;
                let window_ms = self.params.window_ms;
                for mut anomaly in s.anomalies {
                    // Episodes are not restored: one still open at the snapshot
                    // ends after the last window it was seen in.
                    if anomaly.ended_ms.is_none() {
                        let windows = i64::try_from(anomaly.windows).unwrap_or(i64::MAX);
                        anomaly.ended_ms = Some(
                            anomaly
                                .onset_ms
                                .saturating_add(windows.saturating_mul(window_ms)),
                        );
                    }
                    self.log.push(anomaly);
                }
                info!(
                    series = count,
                    templates = self.drain.len(),
                    "restored detection baselines"
                );
            }
            Ok(_) => {
                warn!(path = %path.display(), "detection snapshot is from another version or window size; ignored")
            }
            Err(error) => {
                warn!(%error, path = %path.display(), "detection snapshot is unreadable; ignored")
            }
        }
    }
}

/// A series' identity as a hash (the map verifies the full key).
fn series_id(key: &SeriesKey, measure: &str) -> u64 {
    use std::hash::BuildHasher;
    SERIES_HASH.hash_one((
        &key.service,
        &key.signal,
        &key.name,
        &key.attributes,
        measure,
    ))
}

static SERIES_HASH: foldhash::fast::FixedState =
    foldhash::fast::FixedState::with_seed(0x5eed_de7e_c7ed);

/// Non-fallback patterns first, so that fallbacks see which rows are claimed.
fn ordered(patterns: &[Pattern]) -> impl Iterator<Item = (usize, &Pattern)> {
    let (main, fallback): (Vec<_>, Vec<_>) =
        patterns.iter().enumerate().partition(|(_, p)| !p.fallback);
    main.into_iter().chain(fallback)
}

fn matches(p: &Pattern, row: &Row) -> bool {
    match row.kind {
        SeriesKind::Metric => {
            (p.metrics.is_empty() || p.metrics.iter().any(|g| glob_match(g, &row.metric)))
                && !p.exclude_metrics.iter().any(|g| glob_match(g, &row.metric))
        }
        SeriesKind::Edge => p.callee_kinds.is_empty() || p.callee_kinds.contains(&row.tag),
        SeriesKind::Log => {
            p.severities.is_empty()
                || p.severities
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(&row.tag))
        }
        _ => true,
    }
}

fn metric_key(row: &Row) -> SeriesKey {
    SeriesKey {
        service: row.service.clone(),
        signal: SeriesKind::Metric.as_str().to_string(),
        name: row.metric.clone(),
        attributes: row.attributes.clone(),
    }
}

fn key_for(row: &Row, pattern: &Pattern) -> SeriesKey {
    match row.kind {
        SeriesKind::Metric => metric_key(row),
        SeriesKind::LogTemplate => SeriesKey {
            service: row.service.clone(),
            signal: row.kind.as_str().to_string(),
            name: row.tag.clone(),
            attributes: row.attributes.clone(),
        },
        _ => SeriesKey {
            service: row.service.clone(),
            signal: row.kind.as_str().to_string(),
            name: pattern.measure.clone(),
            attributes: row.attributes.clone(),
        },
    }
}

/// The smallest meaningful sigma for a measure: Poisson noise for counts,
/// binomial noise for rates, 2% for latencies, 0.1% for other metrics.
fn resolution(measure: &str, expected: f64, volume: f64) -> f64 {
    match measure {
        "requests" | "calls" | "errors" | "count" | "hist_count" => expected.abs().max(1.0).sqrt(),
        "error_rate" => {
            let p = expected.clamp(0.01, 0.99);
            (p * (1.0 - p) / volume.max(1.0)).sqrt()
        }
        m if m.ends_with("_ms") => 0.02 * expected.abs() + 0.1,
        _ => 0.001 * expected.abs() + 1e-9,
    }
}

fn severity_rank(severity: &str) -> u8 {
    match severity.to_ascii_uppercase().as_str() {
        "TRACE" => 1,
        "DEBUG" => 2,
        "INFO" => 3,
        "WARN" | "WARNING" => 4,
        "ERROR" => 5,
        "FATAL" | "CRITICAL" => 6,
        _ => 0,
    }
}

/// Least-squares slope of value per second.
fn slope_per_sec(points: &[(i64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mt = points.iter().map(|p| p.0 as f64 / 1000.0).sum::<f64>() / n;
    let mv = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (t, v) in points {
        let dt = *t as f64 / 1000.0 - mt;
        num += dt * (v - mv);
        den += dt * dt;
    }
    if den > 0.0 { num / den } else { 0.0 }
}

pub(super) fn short(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// What one window holds beyond single rows: metric rows by service and the
/// last values by metric name (limits), and which services were seen.
struct WindowContext<'a> {
    metrics: HashMap<&'a str, Vec<&'a Row>>,
    last: HashMap<(&'a str, &'a str, &'a str), f64>,
    with_spans: HashSet<&'a str>,
    seen: HashSet<&'a str>,
}

impl<'a> WindowContext<'a> {
    fn new(rows: &'a [Row]) -> Self {
        let mut context = Self {
            metrics: HashMap::new(),
            last: HashMap::new(),
            with_spans: HashSet::new(),
            seen: HashSet::new(),
        };
        for row in rows {
            context.seen.insert(&row.service);
            match row.kind {
                SeriesKind::Metric => {
                    context.metrics.entry(&row.service).or_default().push(row);
                    if let Some(v) = row.measure("last") {
                        context
                            .last
                            .insert((&row.service, &row.attributes, &row.metric), v);
                    }
                }
                SeriesKind::Service => {
                    context.with_spans.insert(&row.service);
                }
                _ => {}
            }
        }
        context
    }

    fn metrics_of(&self, service: &str) -> impl Iterator<Item = &&'a Row> {
        self.metrics.get(service).into_iter().flatten()
    }

    /// Services with telemetry in this window but no spans.
    fn silent_services(&self) -> Vec<String> {
        self.seen
            .iter()
            .filter(|s| !self.with_spans.contains(*s))
            .map(|s| s.to_string())
            .collect()
    }

    /// The limit of a usage metric: a sibling named per `pairs`, or 1 / 100 for
    /// utilization metrics.
    fn limit_for(&self, row: &Row, pairs: &[[String; 2]]) -> Option<f64> {
        for [usage, limit] in pairs {
            if let Some(stem) = row.metric.strip_suffix(usage.as_str()) {
                let sibling = format!("{stem}{limit}");
                if let Some(v) = self.last.get(&(
                    row.service.as_str(),
                    row.attributes.as_str(),
                    sibling.as_str(),
                )) {
                    return Some(*v);
                }
                // A limit reported without the usage's attributes (one per process).
                if let Some(v) = self.last.get(&(row.service.as_str(), "", sibling.as_str())) {
                    return Some(*v);
                }
            }
        }
        match row.unit.as_str() {
            "%" => Some(100.0),
            "1" => Some(1.0),
            _ if row.metric.contains("utilization") => {
                Some(if row.measure("last").unwrap_or(0.0) <= 1.0 {
                    1.0
                } else {
                    100.0
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;

    fn logs_at(times_ms: &[u64]) -> RecordBatch {
        let text = |v: &str| {
            Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.to_string())),
            })
        };
        let records = times_ms
            .iter()
            .map(|t| LogRecord {
                time_unix_nano: t * 1_000_000,
                severity_number: 17,
                severity_text: "ERROR".into(),
                body: text("disk full on volume data"),
                ..Default::default()
            })
            .collect();
        let resource_logs = vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: text("api"),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            schema_url: String::new(),
        }];
        crate::columnar::logs::to_arrow(&resource_logs, 0)
            .expect("logs")
            .batch
    }

    #[test]
    fn log_records_far_in_the_future_hold_no_state() {
        let config = crate::config::Config::from_toml_str("").expect("defaults");
        let mut stage = DetectStage::new(
            Catalogue::built_in().expect("catalogue"),
            crate::engine::stage_params(&config),
            AnomalyLog::new(10),
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        // A year ahead, many distinct windows: none is kept.
        let future: Vec<u64> = (0..1000)
            .map(|i| now + 365 * 86_400_000 + i * 10_000)
            .collect();
        stage.on_logs(&logs_at(&future));
        assert!(stage.template_counts.is_empty());
        stage.on_logs(&logs_at(&[now]));
        assert_eq!(stage.template_counts.len(), 1);
    }
}

//! The detection stage: closed windows in, anomalies out.
//!
//! For every closed window, each row of its tables (and each mined log template)
//! is offered to the catalogue's patterns. A pattern that watches the row's kind
//! and passes its filters evaluates its detector against the series' baseline as
//! it stood *before* this window; then every series learns its value. A
//! condition that holds `consecutive` windows in a row opens an episode: one
//! [`Anomaly`](crate::detect::Anomaly), updated while it lasts, closed when the
//! condition fails, after which the series is quiet for `cooldown` windows.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, StringArray, UInt64Array};
use arrow::record_batch::RecordBatch;
use tracing::info;

use super::anomaly::{AnomalyEvent, AnomalyLog, FailureClass, SeriesKey};
use super::bands::Band;
use super::baseline::{BaselineParams, BaselineState};
use super::call_mix::CallMix;
use super::catalogue::{Catalogue, Detector, Pattern, SeriesKind};
use super::detectors::{Candidate, Eval, Learn, Scope, WindowContext};
use super::drain::Drain;
use super::episodes::Episodes;
use super::rows::{Row, patterns_for, rows};
use super::series::{SeriesLimits, SeriesTable, key_for};
use super::snapshot::Snapshot;
use super::univariate::UnivariateParams;
use crate::window::deployments::VersionChange;
use crate::window::{FastMap, WindowTables};

mod early;

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
    /// Windows after a version change within which a service's anomalies are
    /// classed `faulty_deployment`.
    pub deploy_windows: u32,
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

/// The detection stage (see the module docs).
pub struct DetectStage {
    params: StageParams,
    series: SeriesTable,
    episodes: Episodes,
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
    /// The last version change per service.
    deployments: HashMap<String, VersionChange>,
    /// The edges callers used: rows of no call, pooled call mixes.
    call_mix: CallMix,
    log: AnomalyLog,
    /// Observed values next to their baselines, for plots (when on).
    bands: Option<super::bands::BandLog>,
    /// Humans' verdicts: deviations each marked series tolerates.
    tolerances: super::feedback::Tolerances,
    untracked_reported: u64,
    since_snapshot: u32,
}

impl DetectStage {
    /// A stage with `catalogue`, restoring the snapshot when there is one.
    pub fn new(catalogue: Catalogue, params: StageParams, log: AnomalyLog) -> Self {
        let history = catalogue
            .patterns
            .iter()
            .map(|p| p.detector.rule().history())
            .max()
            .unwrap_or(1)
            + 1;
        let series = SeriesTable::new(SeriesLimits {
            baseline: params.baseline.clone(),
            univariate: params.univariate.clone(),
            window_ms: params.window_ms,
            max_series: params.max_series,
            max_univariate: params.max_univariate_series,
            history,
        });
        let params_max_series = params.max_series;
        let mut stage = Self {
            drain: Drain::new(params.template_similarity, params.max_templates),
            params,
            series,
            episodes: Episodes::default(),
            matched: FastMap::default(),
            patterns: Arc::new(catalogue.patterns),
            template_counts: BTreeMap::new(),
            new_templates: BTreeMap::new(),
            template_windows: HashMap::new(),
            closed_through: i64::MIN,
            deployments: HashMap::new(),
            call_mix: CallMix::new(params_max_series),
            log,
            bands: None,
            tolerances: Default::default(),
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
        let untracked = self.series.untracked();
        let n = untracked - self.untracked_reported;
        self.untracked_reported = untracked;
        n
    }

    /// The state of a series' baseline for `measure`, if tracked.
    pub fn baseline_state(&self, key: &SeriesKey, measure: &str) -> Option<BaselineState> {
        self.series
            .state(key, measure)
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

    /// Records every window's values against their baselines in `bands`.
    pub fn with_bands(mut self, bands: super::bands::BandLog) -> Self {
        self.bands = Some(bands);
        self
    }

    /// Evaluates one closed window (windows in order); returns how anomaly
    /// episodes changed in it (also applied to the anomaly log).
    pub fn on_window(&mut self, tables: &WindowTables) -> Vec<AnomalyEvent> {
        let t = tables.start_ms;
        let mut rows = rows(tables);
        self.call_mix.complete(&mut rows, t, self.params.window_ms);
        let new_templates = self.template_rows(t, &mut rows);
        let context = WindowContext::new(&rows);
        let mut learn = Learn::new();
        let mut evaluated = self.evaluate_rows(&rows, t, &context, &new_templates, &mut learn);
        evaluated.extend(self.silent_stalls(t, &context, &mut learn));

        let mut events = Vec::new();
        let patterns = self.patterns.clone();
        for (index, key, candidate) in evaluated {
            let Some(pattern) = patterns.get(index) else {
                continue;
            };
            let window_ms = self.params.window_ms;
            let candidate = candidate.filter(|c| self.tolerances.exceeds(&key, c));
            if let Some(mut event) =
                self.episodes
                    .step((index, pattern), key, candidate, t, window_ms)
            {
                self.blame_deployment(&mut event);
                self.log.apply(&event);
                events.push(event);
            }
        }
        for event in self.episodes.end_silent(t, self.params.window_ms) {
            self.log.apply(&event);
            events.push(event);
        }
        // A window's endings go out before its openings: an incident whose
        // members all ended in this window is recovering when this window's
        // new anomalies are grouped (see `incident`).
        events.sort_by_key(|e| !matches!(e, AnomalyEvent::Ended { .. }));
        let mut bands = Vec::new();
        for ((key, measure), value) in learn {
            let wanted = self.bands.as_ref().is_some_and(|b| b.wants(&key));
            if let Some(state) = self.series.ready(&key, &measure).filter(|_| wanted) {
                let d = state.baseline.deviation(t, value, 0.0);
                bands.push(Band {
                    window_start: t,
                    key: key.clone(),
                    measure: measure.clone(),
                    observed: value,
                    expected: d.expected,
                    sigma: d.sigma,
                });
            }
            self.series.learn(key, measure, t, value);
        }
        if let Some(log) = &self.bands {
            log.append(bands);
        }
        self.closed_through = tables.end_ms;
        self.log
            .retain_after(tables.end_ms.saturating_sub(self.params.anomaly_retain_ms));
        self.episodes.prune(t);
        if self.matched.len() > 100_000 {
            self.matched.clear();
        }
        self.since_snapshot += 1;
        if self.since_snapshot >= self.params.snapshot_every.max(1) {
            self.snapshot();
        }
        events
    }

    /// Takes in humans' verdicts: each series tolerates the deviation marked.
    pub fn tolerate(&mut self, verdicts: Vec<super::feedback::Tolerance>) {
        for t in verdicts {
            self.tolerances.tolerate(t);
        }
    }

    /// Remembers a service's version change (in event order with the windows).
    pub fn on_deployment(&mut self, change: VersionChange) {
        self.deployments.insert(change.service.clone(), change);
    }

    /// An anomaly that begins within `deploy_windows` after its own service's
    /// version changed is a faulty deployment; the evidence names both versions.
    fn blame_deployment(&self, event: &mut AnomalyEvent) {
        let AnomalyEvent::Opened(anomaly) = event else {
            return;
        };
        let Some(change) = self.deployments.get(&anomaly.key.service) else {
            return;
        };
        let window_ms = self.params.window_ms;
        let after = anomaly.onset_ms + window_ms > change.at_ms;
        let soon =
            anomaly.onset_ms <= change.at_ms + i64::from(self.params.deploy_windows) * window_ms;
        if !(after && soon) || anomaly.class == FailureClass::FaultyDeployment {
            return;
        }
        let windows = (anomaly.onset_ms - change.at_ms).max(0) / window_ms.max(1);
        anomaly.detail = format!(
            "{} began {windows} window(s) after {} moved from version {} to {}: {}",
            anomaly.class, anomaly.key.service, change.from, change.to, anomaly.detail
        );
        anomaly.class = FailureClass::FaultyDeployment;
    }

    /// Every row against the patterns that watch it: (pattern index, series,
    /// what its detector found).
    fn evaluate_rows(
        &mut self,
        rows: &[Row],
        t: i64,
        context: &WindowContext<'_>,
        new_templates: &[(String, u32, String)],
        learn: &mut Learn,
    ) -> Vec<(usize, SeriesKey, Option<Candidate>)> {
        let patterns = self.patterns.clone();
        let (warmup, windows) = (self.params.template_warmup, &self.template_windows);
        let logs_warm = |service: &str| windows.get(service).copied().unwrap_or(0) > warmup;
        let mut evaluated = Vec::new();
        let mut matched = std::mem::take(&mut self.matched);
        for row in rows {
            for &index in patterns_for(&mut matched, &patterns, row).iter() {
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
                let eval = Eval {
                    pattern,
                    row,
                    key: &key,
                    measure: &measure,
                    t,
                    value,
                    window: context,
                    new_templates,
                    logs_warm: &logs_warm,
                };
                if let Some(candidate) = Self::judge(&mut self.series, &eval, learn) {
                    evaluated.push((index, key.clone(), candidate));
                }
                learn.insert((key, measure), value);
            }
        }
        self.matched = matched;
        evaluated
    }

    /// `eval` judged by its pattern's rule against its series: `None` when
    /// the rule does not judge this window, else what it found.
    fn judge(
        series: &mut SeriesTable,
        eval: &Eval<'_>,
        learn: &mut Learn,
    ) -> Option<Option<Candidate>> {
        let rule = eval.pattern.detector.rule();
        if !rule.judges(eval) {
            return None;
        }
        let mut scope = Scope { series, learn };
        Some(rule.evaluate(eval, &mut scope))
    }

    /// Services that sent telemetry but no spans: zero throughput, for stalls.
    fn silent_stalls(
        &mut self,
        t: i64,
        context: &WindowContext<'_>,
        learn: &mut Learn,
    ) -> Vec<(usize, SeriesKey, Option<Candidate>)> {
        let mut evaluated = Vec::new();
        let patterns = self.patterns.clone();
        let never_warm = |_: &str| false;
        for (index, pattern) in patterns.iter().enumerate() {
            if !matches!(pattern.detector, Detector::Stall(_)) {
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
                if self.series.state(&key, &pattern.measure).is_none() {
                    continue;
                }
                let eval = Eval {
                    pattern,
                    row: &row,
                    key: &key,
                    measure: &pattern.measure,
                    t,
                    value: 0.0,
                    window: context,
                    new_templates: &[],
                    logs_warm: &never_warm,
                };
                let mut scope = Scope {
                    series: &mut self.series,
                    learn,
                };
                let candidate = pattern.detector.rule().evaluate(&eval, &mut scope);
                evaluated.push((index, key, candidate));
            }
        }
        evaluated
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

    /// Writes the baselines, univariate detectors and templates (atomically).
    pub fn snapshot(&mut self) {
        self.since_snapshot = 0;
        let Some(path) = &self.params.snapshot else {
            return;
        };
        Snapshot::new(
            self.params.window_ms,
            self.series.entries(),
            self.drain.clone(),
            self.template_windows.clone(),
            self.log.snapshot(),
            self.tolerances.entries(),
        )
        .write(path);
    }

    fn restore(&mut self) {
        let Some(path) = &self.params.snapshot else {
            return;
        };
        let Some(snapshot) = Snapshot::read(path, self.params.window_ms) else {
            return;
        };
        let count = snapshot.series.len();
        self.series.restore(snapshot.series);
        self.drain = snapshot.drain;
        self.template_windows = snapshot.template_windows;
        for t in snapshot.tolerances {
            self.tolerances.tolerate(t);
        }
        let window_ms = self.params.window_ms;
        for mut anomaly in snapshot.anomalies {
            // Episodes are not restored: one still open at the snapshot ends after
            // the last window it was seen in.
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
}

#[cfg(test)]
mod tests;

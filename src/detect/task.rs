//! Detection as a pipeline stage ([`crate::flow`]): the window stage's log
//! records and closed windows in, in order, on a task of its own, so slow
//! detection delays anomalies, never ingest (the window stage waits only when
//! this stage's bounded inbox is full). It emits every anomaly episode's change
//! ([`AnomalyEvent`]) to the next stage, then the window itself.

use std::sync::Arc;

use super::anomaly::AnomalyEvent;
use super::stage::DetectStage;
use crate::flow::{Emit, Stage};
use crate::pipeline::WindowEvent;
use crate::self_metrics::SelfMetrics;
use crate::window::WindowTables;

/// What detection hands on, in order: a window's anomaly events, then the window.
#[derive(Debug, Clone)]
pub enum DetectOutput {
    /// An anomaly episode changed.
    Event(Box<AnomalyEvent>),
    /// A closed window, after its events.
    Closed(Arc<WindowTables>),
    /// An early look into the open window (`window.early_look`), after the
    /// events it gave.
    Early(Arc<WindowTables>),
    /// A service's version changed (passed on for remediation's rollbacks).
    Deployment(crate::window::deployments::VersionChange),
    /// A service's live instances changed (passed on for canary remediation).
    Instances(crate::window::inventory::Instances),
    /// Per-instance health of a closed window (passed on for canaries).
    InstanceHealth(Arc<crate::window::instance_health::InstanceWindow>),
}

/// The detection stage in the pipeline.
pub struct DetectTask {
    stage: DetectStage,
    metrics: Arc<SelfMetrics>,
}

impl DetectTask {
    /// Runs `stage`, reporting to `metrics`.
    pub fn new(stage: DetectStage, metrics: Arc<SelfMetrics>) -> Self {
        Self { stage, metrics }
    }
}

impl DetectTask {
    /// Reports the anomalies `events` opened, and the stage's sizes.
    fn report(&mut self, events: &[AnomalyEvent]) {
        let opened: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                AnomalyEvent::Opened(a) => Some(a.clone()),
                _ => None,
            })
            .collect();
        self.metrics.detection(
            &opened,
            self.stage.series_count(),
            self.stage.take_untracked(),
            self.stage.template_count(),
        );
    }
}

impl Stage for DetectTask {
    type In = WindowEvent;
    type Out = DetectOutput;

    fn name(&self) -> &'static str {
        "detect"
    }

    fn on_data(&mut self, event: WindowEvent, out: &mut Emit<DetectOutput>) {
        match event {
            WindowEvent::Logs(batch) => self.stage.on_logs(&batch),
            WindowEvent::Feedback(verdicts) => self.stage.tolerate(verdicts),
            WindowEvent::Instances(instances) => out.push(DetectOutput::Instances(instances)),
            WindowEvent::InstanceHealth(h) => out.push(DetectOutput::InstanceHealth(h)),
            WindowEvent::Deployment(change) => {
                self.stage.on_deployment(change.clone());
                out.push(DetectOutput::Deployment(change));
            }
            WindowEvent::Early(window) => {
                let events = self.stage.on_early(&window);
                self.report(&events);
                out.extend(events.into_iter().map(|e| DetectOutput::Event(Box::new(e))));
                out.push(DetectOutput::Early(window));
            }
            WindowEvent::Closed(window) => {
                let events = self.stage.on_window(&window);
                self.report(&events);
                out.extend(events.into_iter().map(|e| DetectOutput::Event(Box::new(e))));
                out.push(DetectOutput::Closed(window));
            }
        }
    }

    /// Persists the baselines and templates.
    fn on_stop(&mut self, _out: &mut Emit<DetectOutput>) {
        self.stage.snapshot();
    }
}

//! How stages connect: the dataflow contract every stage implements.
//!
//! A stage consumes [`Message`]s from one bounded channel and emits its output
//! into the next stage's bounded channel; [`run`] is the one loop every stage runs
//! in. A full downstream channel makes the stage wait (backpressure travels up to
//! the receivers, which shed), so no stage buffers without bound.
//!
//! - `Data` is the stage's input type.
//! - `Flush` asks every stage in turn to emit all it holds (a window stage closes
//!   its open windows); the last stage answers, so the sender knows the whole
//!   pipeline has caught up.
//! - Ticks come from the stage's own clock ([`Stage::tick_every`]) for work that
//!   time alone triggers (closing windows when input is idle).
//! - Stop: the inbox closing (every sender gone) or the stop token. The runner
//!   drains what is already queued, calls [`Stage::on_stop`], emits what that
//!   produced and drops its outlet, which stops the next stage the same way: the
//!   engine stops the sources and the stages shut down in pipeline order.
//!
//! In the spirit of arroyo's operators and vector's topology, cut down to what
//! this engine needs.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// What travels between stages.
#[derive(Debug)]
pub enum Message<T> {
    /// Input for the stage.
    Data(T),
    /// Emit everything held, pass the flush on; the last stage answers.
    Flush(oneshot::Sender<()>),
}

/// What a stage emits while it handles one message.
pub type Emit<T> = Vec<T>;

/// A stage of the pipeline.
pub trait Stage: Send + 'static {
    /// What it consumes.
    type In: Send + 'static;
    /// What it emits.
    type Out: Send + 'static;

    /// The stage's name, for logs.
    fn name(&self) -> &'static str;

    /// Handles one input.
    fn on_data(&mut self, data: Self::In, out: &mut Emit<Self::Out>);

    /// How often [`Stage::on_tick`] runs (never by default).
    fn tick_every(&self) -> Option<Duration> {
        None
    }

    /// Work that time alone triggers.
    fn on_tick(&mut self, _out: &mut Emit<Self::Out>) {}

    /// Emits everything held (before the flush is passed on).
    fn on_flush(&mut self, _out: &mut Emit<Self::Out>) {}

    /// Last call, after the inbox is drained: emit or persist what is left.
    fn on_stop(&mut self, _out: &mut Emit<Self::Out>) {}
}

/// Where a stage's output goes: the next stage's inbox, or nowhere (a sink).
pub type Outlet<T> = Option<mpsc::Sender<Message<T>>>;

/// Runs `stage` until its inbox closes or `stop` fires (then what is queued is
/// still handled), and returns the stage.
pub async fn run<S: Stage>(
    mut stage: S,
    mut inbox: mpsc::Receiver<Message<S::In>>,
    outlet: Outlet<S::Out>,
    stop: CancellationToken,
) -> S {
    let mut out = Vec::new();
    let mut tick = stage.tick_every().map(|every| {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick
    });
    loop {
        let message = tokio::select! {
            message = inbox.recv() => message,
            _ = next_tick(&mut tick) => {
                stage.on_tick(&mut out);
                emit(stage.name(), &outlet, &mut out).await;
                continue;
            }
            _ = stop.cancelled() => {
                inbox.close();
                while let Some(message) = inbox.recv().await {
                    handle(&mut stage, message, &outlet, &mut out).await;
                }
                break;
            }
        };
        match message {
            Some(message) => handle(&mut stage, message, &outlet, &mut out).await,
            None => break,
        }
    }
    stage.on_stop(&mut out);
    emit(stage.name(), &outlet, &mut out).await;
    stage
}

async fn next_tick(tick: &mut Option<tokio::time::Interval>) {
    match tick {
        Some(tick) => {
            tick.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn handle<S: Stage>(
    stage: &mut S,
    message: Message<S::In>,
    outlet: &Outlet<S::Out>,
    out: &mut Emit<S::Out>,
) {
    match message {
        Message::Data(data) => {
            stage.on_data(data, out);
            emit(stage.name(), outlet, out).await;
        }
        Message::Flush(done) => {
            stage.on_flush(out);
            emit(stage.name(), outlet, out).await;
            match outlet {
                Some(next) => {
                    if let Err(mpsc::error::SendError(Message::Flush(done))) =
                        next.send(Message::Flush(done)).await
                    {
                        let _ = done.send(());
                    }
                }
                None => {
                    let _ = done.send(());
                }
            }
        }
    }
}

/// Sends what the stage emitted, in order, waiting for room downstream.
async fn emit<T>(stage: &'static str, outlet: &Outlet<T>, out: &mut Emit<T>) {
    let Some(next) = outlet else {
        out.clear();
        return;
    };
    for item in std::mem::take(out) {
        if next.send(Message::Data(item)).await.is_err() {
            warn!(stage, "the next stage has stopped; output dropped");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Doubles numbers; holds back odd ones until a flush; reports at stop.
    struct Doubler {
        held: Vec<u32>,
        ticks: u32,
    }

    impl Stage for Doubler {
        type In = u32;
        type Out = u32;
        fn name(&self) -> &'static str {
            "doubler"
        }
        fn on_data(&mut self, n: u32, out: &mut Emit<u32>) {
            if n % 2 == 1 {
                self.held.push(n);
            } else {
                out.push(2 * n);
            }
        }
        fn tick_every(&self) -> Option<Duration> {
            Some(Duration::from_millis(5))
        }
        fn on_tick(&mut self, _out: &mut Emit<u32>) {
            self.ticks += 1;
        }
        fn on_flush(&mut self, out: &mut Emit<u32>) {
            out.extend(self.held.drain(..).map(|n| 2 * n));
        }
        fn on_stop(&mut self, out: &mut Emit<u32>) {
            out.push(0);
        }
    }

    /// Collects what reaches it.
    struct Sink(Vec<u32>);

    impl Stage for Sink {
        type In = u32;
        type Out = ();
        fn name(&self) -> &'static str {
            "sink"
        }
        fn on_data(&mut self, n: u32, _out: &mut Emit<()>) {
            self.0.push(n);
        }
    }

    #[tokio::test]
    async fn data_flush_ticks_and_stop_travel_in_order() {
        let (tx, rx) = mpsc::channel(1);
        let (mid_tx, mid_rx) = mpsc::channel(1);
        let stop = CancellationToken::new();
        let doubler = tokio::spawn(run(
            Doubler {
                held: Vec::new(),
                ticks: 0,
            },
            rx,
            Some(mid_tx),
            stop.clone(),
        ));
        let sink = tokio::spawn(run(Sink(Vec::new()), mid_rx, None, stop.clone()));
        for n in [2, 3, 4] {
            tx.send(Message::Data(n)).await.expect("send");
        }
        let (done, flushed) = oneshot::channel();
        tx.send(Message::Flush(done)).await.expect("flush");
        flushed.await.expect("the sink answers the flush");
        tokio::time::sleep(Duration::from_millis(30)).await;
        tx.send(Message::Data(8)).await.expect("send");
        drop(tx);
        let doubler = doubler.await.expect("doubler");
        let sink = sink.await.expect("sink");
        assert!(doubler.ticks >= 2, "ticks {}", doubler.ticks);
        // 3 was held until the flush; the stop marker comes last.
        assert_eq!(sink.0, vec![4, 8, 6, 16, 0]);
    }

    #[tokio::test]
    async fn stop_drains_what_is_queued() {
        let (tx, rx) = mpsc::channel(8);
        let stop = CancellationToken::new();
        for n in [2, 4, 6] {
            tx.send(Message::Data(n)).await.expect("send");
        }
        stop.cancel();
        let sink = run(Sink(Vec::new()), rx, None, stop).await;
        assert_eq!(sink.0, vec![2, 4, 6]);
        drop(tx);
    }
}

//! Detection: turns closed windows into anomalies with a failure class.
//!
//! - [`stage`]: the detection stage: every closed window's rows against the
//!   catalogue's patterns; `series.rs` holds what each series remembers,
//!   `episodes.rs` the hysteresis and cooldowns, `snapshot.rs` what survives a
//!   restart.
//! - [`detectors`]: one file per detector kind behind one trait.
//! - [`trend`]: Kendall's tau and Theil-Sen lines, and time-bucketed history for
//!   slow trends.
//! - [`catalogue`]: the failure-pattern catalogue (`models/*.toml`).
//! - [`baseline`]: per-series level, spread and daily/weekly seasonality.
//! - [`drain`]: online log template mining.
//! - [`anomaly`]: anomalies, failure classes, the `anomalies` SQL table.
//! - [`rows`]: window tables read into plain rows.
//! - [`univariate`]: the streaming univariate detector, one value per window in,
//!   a score in [0, 1] out, never looking ahead. The same code scores a series in
//!   the engine and a CSV file in `homeostat replay`.
//! - [`tail`]: tail probabilities against a sliding history in bounded memory, the
//!   detector's yardstick.
//! - [`replay`]: `homeostat replay` over `timestamp,value` CSV files (the NAB
//!   benchmark's format).

pub mod anomaly;
pub mod bands;
pub mod baseline;
pub mod call_mix;
pub mod catalogue;
pub mod config;
pub mod detectors;
pub mod drain;
mod episodes;
pub mod excursion;
pub mod feedback;
pub mod replay;
pub mod rows;
mod series;
mod snapshot;
pub mod stage;
pub mod tail;
pub mod task;
pub mod trend;
pub mod univariate;

pub use anomaly::{Anomaly, AnomalyEvent, AnomalyLog, FailureClass, SeriesKey};
pub use baseline::BaselineParams;
pub use catalogue::Catalogue;
pub use stage::{DetectStage, StageParams};
pub use task::{DetectOutput, DetectTask};
pub use univariate::{Univariate, UnivariateParams};

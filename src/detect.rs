//! Detection: turns window values into anomaly scores.
//!
//! - [`univariate`]: the streaming univariate detector, one value per window in,
//!   a score in [0, 1] out, never looking ahead. The same code scores a series in
//!   the engine and a CSV file in `homeostat replay`.
//! - [`tail`]: tail probabilities against a sliding history in bounded memory, the
//!   detector's yardstick.
//! - [`replay`]: `homeostat replay` over `timestamp,value` CSV files (the NAB
//!   benchmark's format).

pub mod replay;
pub mod tail;
pub mod univariate;

pub use univariate::{Univariate, UnivariateParams};

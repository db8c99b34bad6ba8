//! FairGRPO's numeric core: GRPO advantages, reward-vector K-means with the elbow rule,
//! and FairGRPO's hierarchical fairness weights (arXiv 2510.19893).
//!
//! The modules below are pure Rust (no pyo3); the `python` feature adds the binding layer
//! in `python/`, which only converts arguments, releases the GIL and maps errors.

pub mod advantages;
pub mod blocks;
pub mod clusters;
pub mod config;
pub mod error;
pub mod fair;
mod hamerly;
pub mod kernels;
pub mod kmeans;
pub mod labels;
pub mod metrics;
pub mod pool;
pub mod real;
pub mod rng;
pub mod select_k;
pub mod tiles;

#[cfg(feature = "python")]
mod python;

pub use error::{CoreError, Result};

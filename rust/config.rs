//! Options of [`crate::fair::FairAdvantage`] and the two presets of ALGORITHM.md.

use crate::advantages::Scale;
use crate::clusters::ClusterUpdate;
use crate::error::{CoreError, Result};
use serde::{Deserialize, Serialize};

/// How the running per-source / per-group statistics follow training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatsMode {
    /// Accumulate over the whole run (the authors').
    Cumulative,
    /// Exponential decay by `ema_decay` per step.
    Ema,
    /// The current step only.
    Batch,
}

/// Features of a reward vector for clustering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Features {
    /// Sorted ascending: permutation-invariant, since rollouts are exchangeable.
    Sorted,
    /// As produced (the authors').
    Raw,
}

/// The final renormalisation of the weighted advantages over the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Renorm {
    /// Divide by the batch std (the authors' code).
    Std,
    /// Subtract the batch mean, divide by the std (the paper's text).
    Zscore,
    /// Leave as weighted.
    None,
}

/// How weights are formed from the temperatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weighting {
    /// `A = s / (T_d * T_dg)`, falling back to `s` where that is not finite (released code).
    Faithful,
    /// Floored means, weights normalised to mean 1 over the batch and capped.
    Robust,
}

/// Every option of FairGRPO's advantage computation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FairConfig {
    pub weighting: Weighting,
    pub stats: StatsMode,
    pub ema_decay: f64,
    pub scale: Scale,
    pub score_eps: f64,
    pub use_groups: bool,
    pub features: Features,
    pub k_max: usize,
    pub elbow_tol: f64,
    pub warm_start: bool,
    pub cluster_update: ClusterUpdate,
    pub seed: u64,
    pub max_iter: usize,
    pub kmeans_tol: f64,
    pub renorm: Renorm,
    pub renorm_eps: f64,
    /// Floor on the temperature `T_d` (faithful: 1e-6).
    pub t_floor: f64,
    /// Floor on every mean reward `mu` (robust only).
    pub mu_floor: f64,
    /// Cap on a weight in units of the batch's mean weight (robust only; `None`: no cap).
    pub w_cap: Option<f64>,
    pub n_threads: Option<usize>,
}

impl FairConfig {
    /// The released code's semantics (ALGORITHM.md, "The faithful preset, exactly").
    pub fn faithful() -> Self {
        FairConfig {
            weighting: Weighting::Faithful,
            stats: StatsMode::Cumulative,
            ema_decay: 0.9,
            scale: Scale::Group,
            score_eps: 1e-4,
            use_groups: true,
            features: Features::Raw,
            k_max: 3,
            elbow_tol: 0.10,
            warm_start: false,
            cluster_update: ClusterUpdate::Refit,
            seed: 0,
            max_iter: 300,
            kmeans_tol: 1e-4,
            renorm: Renorm::Std,
            renorm_eps: 1e-6,
            t_floor: 1e-6,
            mu_floor: 0.0,
            w_cap: None,
            n_threads: None,
        }
    }

    /// The project's improved variant: bounded weights, permutation-invariant clusters.
    pub fn robust() -> Self {
        FairConfig {
            weighting: Weighting::Robust,
            features: Features::Sorted,
            warm_start: true,
            mu_floor: 0.05,
            w_cap: Some(5.0),
            ..Self::faithful()
        }
    }

    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "faithful" => Ok(Self::faithful()),
            "robust" => Ok(Self::robust()),
            _ => Err(CoreError::value(
                "preset",
                format!("unknown preset {name:?}; expected \"faithful\" or \"robust\""),
            )),
        }
    }

    /// Checks every value; the message names the option.
    pub fn validate(&self) -> Result<()> {
        let pos = |v: f64, arg: &'static str| -> Result<()> {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(CoreError::value(arg, format!("must be finite and >= 0, got {v}")))
            }
        };
        if !(self.ema_decay > 0.0 && self.ema_decay < 1.0) {
            return Err(CoreError::value("ema_decay", format!("must be in (0, 1), got {}", self.ema_decay)));
        }
        pos(self.score_eps, "score_eps")?;
        pos(self.elbow_tol, "tol")?;
        pos(self.kmeans_tol, "kmeans_tol")?;
        pos(self.renorm_eps, "renorm_eps")?;
        pos(self.t_floor, "t_floor")?;
        pos(self.mu_floor, "mu_floor")?;
        if self.k_max == 0 {
            return Err(CoreError::value("k_max", "must be >= 1, got 0"));
        }
        if self.max_iter == 0 {
            return Err(CoreError::value("max_iter", "must be >= 1, got 0"));
        }
        if let Some(c) = self.w_cap {
            if c.is_nan() || c < 1.0 {
                return Err(CoreError::value(
                    "w_cap",
                    format!("must be >= 1 (it is in units of the mean weight) or None, got {c}"),
                ));
            }
        }
        if self.n_threads == Some(0) {
            return Err(CoreError::value("n_threads", "must be >= 1 or None, got 0"));
        }
        Ok(())
    }

    /// Steps of implicit-group history kept: all, the EMA's horizon, or the current step.
    pub fn window_steps(&self) -> Option<usize> {
        match self.stats {
            StatsMode::Cumulative => None,
            StatsMode::Batch => Some(1),
            StatsMode::Ema => Some((1.0 / (1.0 - self.ema_decay) - 1e-9).ceil() as usize),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_differ() {
        FairConfig::faithful().validate().unwrap();
        FairConfig::robust().validate().unwrap();
        assert_ne!(FairConfig::faithful(), FairConfig::robust());
        assert!(FairConfig::preset("fast").is_err());
    }

    #[test]
    fn bad_values_name_the_option() {
        let c = FairConfig { ema_decay: 1.5, ..FairConfig::faithful() };
        assert!(c.validate().unwrap_err().to_string().contains("ema_decay"));
        let c = FairConfig { w_cap: Some(0.5), ..FairConfig::robust() };
        assert!(c.validate().unwrap_err().to_string().contains("w_cap"));
    }

    #[test]
    fn ema_window() {
        let c = FairConfig { stats: StatsMode::Ema, ema_decay: 0.9, ..FairConfig::faithful() };
        assert_eq!(c.window_steps(), Some(10));
    }
}

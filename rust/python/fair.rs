//! `FairCore`: the stateful FairGRPO advantage computation. The public, documented
//! `fairgrpo.FairAdvantage` wraps it (options by keyword, stats as a dict).

use super::arrays::{contiguous, labels_arg, recycled, with_out, Floats1, LabelsArg};
use crate::config::FairConfig;
use crate::error::CoreError;
use crate::fair::FairAdvantage;
use crate::labels::Labels;
use crate::real::Real;
use numpy::PyArrayMethods;
use pyo3::prelude::*;

/// `(advantages, weights, clusters, report_json)` of one step.
type StepResult<'py> = (Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>, String);

/// Stateful FairGRPO advantages (see ``fairgrpo.FairAdvantage`` for the documented API).
#[pyclass(module = "fairgrpo._core", name = "FairCore")]
pub struct FairCore {
    inner: FairAdvantage,
}

fn as_labels<'a>(a: &'a LabelsArg<'_>, arg: &str) -> PyResult<Labels<'a>> {
    Ok(match a {
        LabelsArg::Absent => Labels::Absent,
        LabelsArg::Ints(v) => Labels::Ints(contiguous(v, arg)?),
        LabelsArg::Keys(k) => Labels::Keys(k),
    })
}

#[pymethods]
impl FairCore {
    /// Creates the state from a JSON object of options (every field of the config).
    #[new]
    fn new(config_json: &str) -> PyResult<Self> {
        let config: FairConfig =
            serde_json::from_str(config_json).map_err(|e| CoreError::value("config", e.to_string()))?;
        Ok(FairCore { inner: FairAdvantage::new(config)? })
    }

    /// The options, as JSON.
    fn config_json(&self) -> PyResult<String> {
        serde_json::to_string(&self.inner.config).map_err(|e| CoreError::State(e.to_string()).into())
    }

    /// The whole state, as JSON (floats round-trip exactly).
    fn state_json(&self) -> PyResult<String> {
        Ok(self.inner.to_json()?)
    }

    /// Restores a state written by ``state_json``.
    #[staticmethod]
    fn from_state_json(state: &str) -> PyResult<Self> {
        Ok(FairCore { inner: FairAdvantage::from_json(state)? })
    }

    /// Steps taken so far.
    #[getter]
    fn step_count(&self) -> u64 {
        self.inner.step
    }

    /// One training step. Returns ``(advantages, weights, clusters, report_json)``.
    #[pyo3(signature = (rewards, group_size, sources = None, groups = None, true_groups = None, out = None))]
    #[allow(clippy::too_many_arguments)]
    fn step<'py>(
        &mut self,
        py: Python<'py>,
        rewards: Floats1<'py>,
        group_size: usize,
        sources: Option<&Bound<'py, PyAny>>,
        groups: Option<&Bound<'py, PyAny>>,
        true_groups: Option<&Bound<'py, PyAny>>,
        out: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<StepResult<'py>> {
        let s = labels_arg(sources, "sources")?;
        let g = labels_arg(groups, "groups")?;
        let t = labels_arg(true_groups, "true_groups")?;
        let (ls, lg, lt) =
            (as_labels(&s, "sources")?, as_labels(&g, "groups")?, as_labels(&t, "true_groups")?);
        let inner = &mut self.inner;
        // weights and clusters as numpy arrays (recycled when large), filled with the GIL released;
        // a bad shape gives no prompts here and the step reports the error. A successful
        // step writes every entry (an error drops both), so they start uninitialised.
        let p = match rewards.len() {
            n if group_size > 0 && n % group_size == 0 => n / group_size,
            _ => 0,
        };
        let weights = recycled::<f64>(py, p);
        let clusters = recycled::<i64>(py, p);
        let (mut w_rw, mut c_rw) = (weights.readwrite(), clusters.readwrite());
        let (w, c) = (
            w_rw.as_slice_mut().expect("a new array is contiguous"),
            c_rw.as_slice_mut().expect("a new array is contiguous"),
        );
        #[allow(clippy::too_many_arguments)]
        fn run<T: Real>(
            fa: &mut FairAdvantage,
            r: &[T],
            gs: usize,
            labels: (Labels<'_>, Labels<'_>, Labels<'_>),
            out: &mut [T],
            w: &mut [f64],
            c: &mut [i64],
        ) -> crate::Result<String> {
            let report = fa.step_into(r, gs, labels.0, labels.1, labels.2, out, w, c)?;
            serde_json::to_string(&report).map_err(|e| CoreError::State(e.to_string()))
        }
        let (adv, json) = match &rewards {
            Floats1::F32(a) => {
                let r = contiguous(a, "rewards")?;
                with_out(py, out, r.len(), recycled, |buf| {
                    run(inner, r, group_size, (ls, lg, lt), buf, w, c)
                })?
            }
            Floats1::F64(a) => {
                let r = contiguous(a, "rewards")?;
                with_out(py, out, r.len(), recycled, |buf| {
                    run(inner, r, group_size, (ls, lg, lt), buf, w, c)
                })?
            }
        };
        drop((w_rw, c_rw));
        Ok((adv, weights.into_any(), clusters.into_any(), json))
    }
}

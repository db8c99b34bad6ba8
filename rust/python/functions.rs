//! Stateless functions: `group_advantages`, `kmeans`, `kmeans_plusplus`, `select_k`, and the
//! clustering agreement scores.

use super::arrays::{contiguous, recycled, with_out, Floats1, Floats2};
use super::errors::detach;
use crate::advantages::{self, Scale};
use crate::kmeans::{self as core_kmeans, Algorithm, Init, KMeansResult as CoreResult};
use crate::metrics;
use crate::pool::resolve_threads;
use crate::select_k::{self as core_select, SelectKParams};
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;

/// GRPO group-relative advantages, exactly as TRL 1.16's ``GRPOTrainer``.
///
/// Args:
///     rewards: 1-D float32/float64 array of P*G rewards, prompt-major (G rollouts per
///         prompt). NaN marks an unscorable completion: ignored in the statistics, advantage 0.
///     group_size: G, rollouts per prompt.
///     scale: ``"group"`` (per-prompt std), ``"batch"`` (batch std) or ``"none"``.
///     eps: added to the std before dividing (TRL: 1e-4).
///     n_threads: threads to use (``None``: all of the pool); results do not depend on it.
///     out: optional array to write into (same length and dtype), returned.
///
/// Returns:
///     Advantages, same shape and dtype as ``rewards``.
///
/// Example:
///     >>> group_advantages(np.array([1.0, 0.0, 0.0, 0.0]), group_size=2)
///     array([ 0.70705...,  -0.70705...,  0.,  0.])
#[pyfunction]
#[pyo3(signature = (rewards, group_size, scale = "group", eps = 1e-4, n_threads = None, out = None))]
pub fn group_advantages<'py>(
    py: Python<'py>,
    rewards: Floats1<'py>,
    group_size: usize,
    scale: &str,
    eps: f64,
    n_threads: Option<usize>,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let scale: Scale = scale.parse()?;
    let threads = resolve_threads(n_threads)?;
    Ok(match rewards {
        Floats1::F32(a) => {
            let r = contiguous(&a, "rewards")?;
            // every element is written: a recycled array will do
            with_out(py, out, r.len(), recycled, |o| {
                advantages::group_advantages(r, group_size, scale, eps, threads, o)
            })?
            .0
        }
        Floats1::F64(a) => {
            let r = contiguous(&a, "rewards")?;
            // every element is written: a recycled array will do
            with_out(py, out, r.len(), recycled, |o| {
                advantages::group_advantages(r, group_size, scale, eps, threads, o)
            })?
            .0
        }
    })
}

/// The result of a k-means fit.
#[pyclass(frozen, module = "fairgrpo._core", name = "KMeansResult")]
pub struct KMeansResult {
    /// Cluster of every row, shape (n,), int64.
    #[pyo3(get)]
    labels: Py<PyArray1<i64>>,
    /// Final centres, shape (k, d), float64.
    #[pyo3(get)]
    centroids: Py<PyArray2<f64>>,
    /// Rows per cluster, shape (k,), int64.
    #[pyo3(get)]
    sizes: Py<PyArray1<i64>>,
    /// Sum of squared distances of the rows to their centres.
    #[pyo3(get)]
    inertia: f64,
    /// Lloyd iterations run.
    #[pyo3(get)]
    n_iter: usize,
}

#[pymethods]
impl KMeansResult {
    fn __repr__(&self) -> String {
        format!("KMeansResult(inertia={}, n_iter={})", self.inertia, self.n_iter)
    }
}

/// A fit with its labels widened to int64 (done with the GIL released, see [`widen`]).
type Fit = (CoreResult, Vec<i64>);

/// The labels as int64 (NumPy's default integer), computed off the GIL.
fn widen(r: CoreResult) -> Fit {
    let labels = r.labels.iter().map(|&v| v as i64).collect();
    (r, labels)
}

fn to_py(py: Python<'_>, (r, labels): Fit, d: usize) -> PyResult<KMeansResult> {
    let k = r.centroids.len() / d;
    let centroids = Array2::from_shape_vec((k, d), r.centroids)
        .map_err(|e| super::errors::FairGRPOError::new_err(e.to_string()))?;
    Ok(KMeansResult {
        labels: labels.into_pyarray(py).unbind(),
        centroids: centroids.into_pyarray(py).unbind(),
        sizes: r.sizes.into_iter().map(|v| v as i64).collect::<Vec<_>>().into_pyarray(py).unbind(),
        inertia: r.inertia,
        n_iter: r.n_iter,
    })
}

fn data<'a, T: numpy::Element>(a: &'a PyReadonlyArray2<'_, T>) -> PyResult<(&'a [T], usize)> {
    let d = a.shape()[1];
    Ok((contiguous(a, "x")?, d))
}

/// K-means (Lloyd) with seeded k-means++ or explicit initial centres.
///
/// Args:
///     x: 2-D float32/float64 array (n, d), C-contiguous, finite.
///     k: number of clusters (>= 1; may exceed the number of distinct rows: the extra
///         clusters stay empty).
///     init: ``"k-means++"`` or a (k, d) array of initial centres.
///     seed: seed of k-means++.
///     max_iter: at most this many Lloyd iterations.
///     tol: stop when the summed squared centre shift is <= tol * mean(var(x, axis=0)).
///     algorithm: ``"lloyd"`` (every row measured every iteration) or ``"hamerly"`` (rows
///         whose nearest centre cannot have changed are skipped; same labels every
///         iteration, centre sums updated with the rows that moved).
///     n_threads: threads to use; results are bitwise identical for any value.
///
/// Returns:
///     KMeansResult with ``labels``, ``centroids``, ``sizes``, ``inertia``, ``n_iter``.
#[pyfunction(name = "kmeans")]
#[pyo3(signature = (x, k, init = None, seed = 0, max_iter = 300, tol = 1e-4, algorithm = "lloyd", n_threads = None))]
#[allow(clippy::too_many_arguments)]
pub fn kmeans_py(
    py: Python<'_>,
    x: Floats2<'_>,
    k: usize,
    init: Option<PyReadonlyArray2<'_, f64>>,
    seed: u64,
    max_iter: usize,
    tol: f64,
    algorithm: &str,
    n_threads: Option<usize>,
) -> PyResult<KMeansResult> {
    let algorithm: Algorithm = algorithm.parse()?;
    let threads = resolve_threads(n_threads)?;
    let init_c = match &init {
        Some(a) => Some(contiguous(a, "init")?),
        None => None,
    };
    let mk = || match init_c {
        Some(c) => Init::Centres(c),
        None => Init::PlusPlus { seed },
    };
    let (res, d) = match &x {
        Floats2::F32(a) => {
            let (xs, d) = data(a)?;
            (
                detach(py, || {
                    core_kmeans::kmeans(xs, d, k, mk(), max_iter, tol, algorithm, threads).map(widen)
                })?,
                d,
            )
        }
        Floats2::F64(a) => {
            let (xs, d) = data(a)?;
            (
                detach(py, || {
                    core_kmeans::kmeans(xs, d, k, mk(), max_iter, tol, algorithm, threads).map(widen)
                })?,
                d,
            )
        }
    };
    to_py(py, res, d)
}

/// Seeded greedy k-means++ initial centres, shape (k, d), float64.
#[pyfunction]
#[pyo3(signature = (x, k, seed = 0, n_threads = None))]
pub fn kmeans_plusplus<'py>(
    py: Python<'py>,
    x: Floats2<'py>,
    k: usize,
    seed: u64,
    n_threads: Option<usize>,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let threads = resolve_threads(n_threads)?;
    let (c, d) = match &x {
        Floats2::F32(a) => {
            let (xs, d) = data(a)?;
            (detach(py, || core_kmeans::kmeans_plusplus(xs, d, k, seed, threads))?, d)
        }
        Floats2::F64(a) => {
            let (xs, d) = data(a)?;
            (detach(py, || core_kmeans::kmeans_plusplus(xs, d, k, seed, threads))?, d)
        }
    };
    let arr = Array2::from_shape_vec((c.len() / d, d), c)
        .map_err(|e| super::errors::FairGRPOError::new_err(e.to_string()))?;
    Ok(arr.into_pyarray(py))
}

/// The elbow rule: fits k = 1..min(k_max, distinct rows) and returns ``(k, result, inertias)``.
#[pyfunction(name = "select_k")]
#[pyo3(signature = (x, k_max = 3, tol = 0.10, seed = 0, max_iter = 300, kmeans_tol = 1e-4, n_threads = None))]
#[allow(clippy::too_many_arguments)]
pub fn select_k_py(
    py: Python<'_>,
    x: Floats2<'_>,
    k_max: usize,
    tol: f64,
    seed: u64,
    max_iter: usize,
    kmeans_tol: f64,
    n_threads: Option<usize>,
) -> PyResult<(usize, KMeansResult, Vec<f64>)> {
    let threads = resolve_threads(n_threads)?;
    let p = SelectKParams { k_max, tol, seed, max_iter, kmeans_tol, threads };
    let (s, d) = match &x {
        Floats2::F32(a) => {
            let (xs, d) = data(a)?;
            (
                detach(py, || {
                    core_select::select_k(xs, d, &p, &[]).map(|s| (s.k, widen(s.result), s.inertias))
                })?,
                d,
            )
        }
        Floats2::F64(a) => {
            let (xs, d) = data(a)?;
            (
                detach(py, || {
                    core_select::select_k(xs, d, &p, &[]).map(|s| (s.k, widen(s.result), s.inertias))
                })?,
                d,
            )
        }
    };
    let (k, fit, inertias) = s;
    Ok((k, to_py(py, fit, d)?, inertias))
}

/// Adjusted Rand index of two labelings (int64 arrays of the same length).
#[pyfunction]
pub fn adjusted_rand_index(a: PyReadonlyArray1<'_, i64>, b: PyReadonlyArray1<'_, i64>) -> PyResult<f64> {
    let (a, b) = (contiguous(&a, "a")?, contiguous(&b, "b")?);
    same_len(a, b)?;
    Ok(metrics::adjusted_rand_index(a, b))
}

/// Normalised mutual information (arithmetic mean) of two labelings.
#[pyfunction]
pub fn normalized_mutual_info(a: PyReadonlyArray1<'_, i64>, b: PyReadonlyArray1<'_, i64>) -> PyResult<f64> {
    let (a, b) = (contiguous(&a, "a")?, contiguous(&b, "b")?);
    same_len(a, b)?;
    Ok(metrics::normalized_mutual_info(a, b))
}

fn same_len(a: &[i64], b: &[i64]) -> PyResult<()> {
    if a.len() != b.len() {
        return Err(
            crate::CoreError::shape("b", format!("has length {} but `a` has {}", b.len(), a.len())).into()
        );
    }
    Ok(())
}

//! Argument conversion: numpy arrays of f32 / f64, label sequences.

use crate::labels::Key;
use numpy::{PyReadonlyArray1, PyReadonlyArray2};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt, PyString};

/// A 1-D float array of either precision.
#[derive(FromPyObject)]
pub enum Floats1<'py> {
    F32(PyReadonlyArray1<'py, f32>),
    F64(PyReadonlyArray1<'py, f64>),
}

impl Floats1<'_> {
    pub fn len(&self) -> usize {
        use numpy::PyUntypedArrayMethods;
        match self {
            Floats1::F32(a) => a.len(),
            Floats1::F64(a) => a.len(),
        }
    }
}

/// A 2-D float array of either precision.
#[derive(FromPyObject)]
pub enum Floats2<'py> {
    F32(PyReadonlyArray2<'py, f32>),
    F64(PyReadonlyArray2<'py, f64>),
}

/// Labels as the binding receives them: absent, an int64 array, or a list of keys.
pub enum LabelsArg<'py> {
    Absent,
    Ints(PyReadonlyArray1<'py, i64>),
    Keys(Vec<Option<Key>>),
}

pub fn labels_arg<'py>(obj: Option<&Bound<'py, PyAny>>, arg: &str) -> PyResult<LabelsArg<'py>> {
    let Some(obj) = obj else {
        return Ok(LabelsArg::Absent);
    };
    if obj.is_none() {
        return Ok(LabelsArg::Absent);
    }
    if let Ok(a) = obj.extract::<PyReadonlyArray1<'py, i64>>() {
        return Ok(LabelsArg::Ints(a));
    }
    let mut keys = Vec::new();
    for (i, item) in obj.try_iter()?.enumerate() {
        let item = item?;
        let key = if item.is_none() {
            None
        } else if item.is_instance_of::<PyBool>() {
            return Err(PyTypeError::new_err(format!(
                "`{arg}`[{i}] is a bool; labels must be str, int or None"
            )));
        } else if item.is_instance_of::<PyInt>() {
            Some(Key::Int(item.extract::<i64>()?))
        } else if item.is_instance_of::<PyString>() {
            Some(Key::Str(item.extract::<String>()?))
        } else {
            return Err(PyTypeError::new_err(format!(
                "`{arg}`[{i}] is a {}; labels must be str, int or None",
                item.get_type().name()?
            )));
        };
        keys.push(key);
    }
    Ok(LabelsArg::Keys(keys))
}

pub fn contiguous<'a, T: numpy::Element>(
    a: &'a numpy::PyReadonlyArray<'_, T, impl numpy::ndarray::Dimension>,
    arg: &str,
) -> PyResult<&'a [T]> {
    a.as_slice().map_err(|_| {
        super::errors::ShapeError::new_err(format!(
            "`{arg}` must be C-contiguous (pass numpy.ascontiguousarray({arg}))"
        ))
    })
}

/// Runs `f` on an output buffer of `n` elements: the caller's `out` array (written in place,
/// then returned) or a fresh array from `fresh` ([`recycled`] where `f` writes every
/// element). Reusing a large `out` saves the page faults of a new one.
pub fn with_out<'py, T, R, F>(
    py: Python<'py>,
    out: Option<&Bound<'py, PyAny>>,
    n: usize,
    fresh: fn(Python<'py>, usize) -> Bound<'py, numpy::PyArray1<T>>,
    f: F,
) -> PyResult<(Bound<'py, PyAny>, R)>
where
    T: crate::real::Real + numpy::Element,
    R: Send,
    F: FnOnce(&mut [T]) -> crate::Result<R> + Send,
{
    use numpy::{PyArrayMethods, PyReadwriteArray1};
    match out {
        Some(o) if !o.is_none() => {
            let mut rw: PyReadwriteArray1<'py, T> = o.extract().map_err(|e| {
                super::errors::ShapeError::new_err(format!(
                    "`out` must be a writable, C-contiguous 1-D array of the rewards' dtype that does not \
                     share memory with the inputs ({e})"
                ))
            })?;
            let s = rw
                .as_slice_mut()
                .map_err(|_| super::errors::ShapeError::new_err("`out` must be C-contiguous"))?;
            if s.len() != n {
                return Err(super::errors::ShapeError::new_err(format!(
                    "`out` has length {} but the rewards have {n}",
                    s.len()
                )));
            }
            let r = super::errors::detach(py, || f(s))?;
            drop(rw);
            Ok((o.clone(), r))
        }
        _ => {
            let a = fresh(py, n);
            let mut rw = a.readwrite();
            let s = rw.as_slice_mut().expect("a new array is contiguous");
            let r = super::errors::detach(py, || f(s))?;
            drop(rw);
            Ok((a.into_any(), r))
        }
    }
}

/// A new 1-D array with unspecified contents (numpy.empty), for buffers that the caller
/// writes in full before anyone reads them. numpy's allocator asks for transparent huge
/// pages on large arrays (a Rust `Vec` does not get them here); unlike numpy.zeros, a size
/// that malloc serves from its heap reuses memory freed earlier without calloc's memset.
pub fn empty<T: numpy::Element>(py: Python<'_>, n: usize) -> Bound<'_, numpy::PyArray1<T>> {
    // SAFETY: the memory comes from numpy's allocator, is plain bytes for the element
    // types used here (f32, f64, i64), and every caller overwrites all of it before use.
    unsafe { numpy::PyArray1::<T>::new(py, n, false) }
}

/// Large arrays given back by [`recycled`] once nothing refers to them any more (with their
/// size in bytes), for the next call that asks for the same dtype and length (a training loop
/// asks for the same sizes step after step). Memory the process already has skips the kernel's
/// page faults and page clearing, which cost as much as the rest of a large FairAdvantage
/// step; malloc keeps freed memory of a few MB only while its heap does not shrink.
static POOL: std::sync::Mutex<Vec<(Py<PyAny>, usize)>> = std::sync::Mutex::new(Vec::new());

/// Arrays kept in [`POOL`] at most (the oldest go first): a step's advantages, weights and
/// clusters, for two steps alive at once.
const POOL_ARRAYS: usize = 8;

/// Bytes kept in [`POOL`] at most (the oldest go first).
const POOL_BYTES: usize = 1 << 30;

/// Arrays smaller than this come from numpy directly.
const POOL_MIN_BYTES: usize = 1 << 20;

/// The base object of an array handed out by [`recycled`]: owns the pooled numpy array and
/// puts it back into the pool when the last view of it is gone.
#[pyclass(module = "fairgrpo._core", name = "RecycledBuffer", frozen)]
pub struct Lease {
    owner: std::sync::Mutex<Option<Py<PyAny>>>,
    bytes: usize,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let owner = self.owner.get_mut().map(Option::take).unwrap_or(None);
        if let (Some(o), Ok(mut pool)) = (owner, POOL.lock()) {
            if self.bytes > POOL_BYTES {
                return;
            }
            while pool.len() >= POOL_ARRAYS
                || pool.iter().map(|e| e.1).sum::<usize>() + self.bytes > POOL_BYTES
            {
                pool.remove(0);
            }
            pool.push((o, self.bytes));
        }
    }
}

/// A 1-D array with unspecified contents, like [`empty`], whose memory is recycled: for
/// large sizes it is a view of a pooled array that returns to the pool when the view (and
/// everything derived from it) is freed. Only for buffers written in full before use.
pub fn recycled<T: numpy::Element>(py: Python<'_>, n: usize) -> Bound<'_, numpy::PyArray1<T>> {
    use numpy::{PyArrayMethods, PyUntypedArrayMethods};
    let bytes = n * std::mem::size_of::<T>();
    if bytes < POOL_MIN_BYTES {
        return empty::<T>(py, n);
    }
    let reused = POOL.lock().ok().and_then(|mut pool| {
        let i = pool.iter().position(|(o, _)| {
            o.bind(py).cast::<numpy::PyArray1<T>>().is_ok_and(|a| a.len() == n && a.is_contiguous())
        })?;
        Some(pool.remove(i).0)
    });
    let owner = match reused {
        Some(o) => o.into_bound(py).cast_into::<numpy::PyArray1<T>>().expect("checked above"),
        None => empty::<T>(py, n),
    };
    let ptr = owner.data();
    let lease = Lease { owner: std::sync::Mutex::new(Some(owner.into_any().unbind())), bytes };
    let Ok(lease) = Bound::new(py, lease) else {
        return empty::<T>(py, n);
    };
    // SAFETY: `ptr` is the data of a contiguous array of `n` elements that the lease owns;
    // the lease is the new array's base, so the memory outlives the array and every view of
    // it, and it returns to the pool (for the next array) only when the lease is freed.
    unsafe {
        let view = numpy::ndarray::ArrayView1::from_shape_ptr(n, ptr);
        numpy::PyArray1::borrow_from_array(&view, lease.into_any())
    }
}

//! The exception hierarchy and the one mapping from core errors onto it.

use crate::error::CoreError;
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::PyErr;

create_exception!(
    fairgrpo,
    FairGRPOError,
    PyValueError,
    "Base class of every error FairGRPO raises (a ValueError)."
);
create_exception!(fairgrpo, ShapeError, FairGRPOError, "An argument has the wrong shape or length.");
create_exception!(
    fairgrpo,
    OptionError,
    FairGRPOError,
    "An argument or option has an invalid value or name."
);
create_exception!(
    fairgrpo,
    NonFiniteError,
    FairGRPOError,
    "An argument holds NaN or infinity where only finite numbers are allowed."
);
create_exception!(fairgrpo, StateError, FairGRPOError, "A saved FairAdvantage state could not be restored.");

impl From<CoreError> for PyErr {
    fn from(e: CoreError) -> PyErr {
        let msg = e.to_string();
        match e {
            CoreError::Shape { .. } => ShapeError::new_err(msg),
            CoreError::Value { .. } => OptionError::new_err(msg),
            CoreError::NonFinite { .. } => NonFiniteError::new_err(msg),
            CoreError::State(_) => StateError::new_err(msg),
        }
    }
}

/// Runs `f` without the GIL; a panic comes back as a `FairGRPOError`, never as a crash.
pub fn detach<T, F>(py: pyo3::Python<'_>, f: F) -> pyo3::PyResult<T>
where
    F: FnOnce() -> crate::error::Result<T> + Send,
    T: Send,
{
    let r = py.detach(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.into()),
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(FairGRPOError::new_err(format!(
                "internal error in the FairGRPO core ({what}); please report it with the input that caused it"
            )))
        }
    }
}

//! The Python binding layer: converts arguments, releases the GIL, maps errors. Registers
//! the private module `fairgrpo._core`; the public API lives in `python/fairgrpo`.

mod arrays;
mod errors;
mod fair;
mod functions;

use pyo3::prelude::*;

#[pymodule(gil_used = false)]
mod _core {
    use super::*;

    #[pymodule_export]
    use super::errors::{FairGRPOError, NonFiniteError, OptionError, ShapeError, StateError};
    #[pymodule_export]
    use super::fair::FairCore;
    #[pymodule_export]
    use super::functions::{
        adjusted_rand_index, group_advantages, kmeans_plusplus, kmeans_py, normalized_mutual_info,
        select_k_py, KMeansResult,
    };

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))
    }
}

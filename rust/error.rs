//! The one error type of the core. Every failure a caller can cause is a variant here;
//! the Python binding maps each variant once onto the `FairGRPOError` hierarchy.

use std::fmt;

/// Everything that can go wrong in the numeric core.
#[derive(Debug, Clone, PartialEq)]
pub enum CoreError {
    /// An argument has the wrong shape or length (`arg`, what was expected, what was given).
    Shape { arg: &'static str, msg: String },
    /// An argument has an invalid value (out of range, unknown option name, ...).
    Value { arg: &'static str, msg: String },
    /// An argument holds NaN or infinity where only finite numbers are allowed.
    NonFinite { arg: &'static str, index: usize },
    /// A saved state could not be read back.
    State(String),
}

impl CoreError {
    pub fn shape(arg: &'static str, msg: impl Into<String>) -> Self {
        CoreError::Shape { arg, msg: msg.into() }
    }
    pub fn value(arg: &'static str, msg: impl Into<String>) -> Self {
        CoreError::Value { arg, msg: msg.into() }
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::Shape { arg, msg } => write!(f, "`{arg}`: {msg}"),
            CoreError::Value { arg, msg } => write!(f, "`{arg}`: {msg}"),
            CoreError::NonFinite { arg, index } => write!(
                f,
                "`{arg}`: non-finite value (NaN or inf) at flat index {index}; only finite numbers are allowed here"
            ),
            CoreError::State(msg) => write!(f, "`state`: {msg}"),
        }
    }
}

impl std::error::Error for CoreError {}

pub type Result<T> = std::result::Result<T, CoreError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_argument() {
        let e = CoreError::value("k", "must be >= 1, got 0");
        assert_eq!(e.to_string(), "`k`: must be >= 1, got 0");
        let e = CoreError::NonFinite { arg: "x", index: 7 };
        assert!(e.to_string().contains("`x`") && e.to_string().contains("7"));
    }
}

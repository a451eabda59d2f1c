//! The one error type of the policy model: what is wrong, and with which field.
//!
//! The field is written as a path in the object the user wrote (for a CRD,
//! `spec.retryBudget.ratio`; for a wire message, its field names), so the
//! controller can put the message into a status condition as it is.

use std::fmt;

use super::duration::DurationError;

/// A policy field that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct PolicyError {
    /// Where the field is, e.g. `spec.retryBudget.ratio`.
    pub field: String,
    pub problem: Problem,
}

impl PolicyError {
    pub fn new(field: impl fmt::Display, problem: Problem) -> Self {
        Self {
            field: field.to_string(),
            problem,
        }
    }
}

/// What is wrong with a field; each message says how to fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Problem {
    #[error("{value} is negative; use a value between {min} and {max}")]
    Negative {
        value: String,
        min: String,
        max: String,
    },
    #[error("{value} is out of range; use a value between {min} and {max}")]
    OutOfRange {
        value: String,
        min: String,
        max: String,
    },
    #[error("{value} is zero; use a value greater than zero")]
    Zero { value: String },
    #[error(transparent)]
    Duration(#[from] DurationError),
    #[error("{value} is shorter than {other} ({other_value}); make it at least as long")]
    ShorterThan {
        value: String,
        other: String,
        other_value: String,
    },
    #[error("{value:?} is not {expected}")]
    Invalid { value: String, expected: String },
    #[error("is missing; {hint}")]
    Missing { hint: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{what} is not supported by weft yet; {hint}")]
    Unsupported { what: String, hint: String },
    #[error("{name:?} names no {what}; use one of: {known}")]
    UnknownRef {
        name: String,
        what: String,
        known: String,
    },
}

/// A field path under construction, e.g. `spec.defaultRetry.codes[2]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(String);

impl FieldPath {
    pub fn root(name: &str) -> Self {
        Self(name.to_owned())
    }

    /// The path of a field of this object.
    pub fn field(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Self(name.to_owned())
        } else {
            Self(format!("{}.{name}", self.0))
        }
    }

    /// The path of an element of this list.
    pub fn index(&self, index: usize) -> Self {
        Self(format!("{}[{index}]", self.0))
    }

    /// An error about the field at this path.
    pub fn error(&self, problem: Problem) -> PolicyError {
        PolicyError::new(&self.0, problem)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks that a number lies in `min..=max`, naming `path` when it does not.
pub(crate) fn check_range<T>(path: &FieldPath, value: T, min: T, max: T) -> Result<T, PolicyError>
where
    T: PartialOrd + fmt::Display + Default + Copy,
{
    if value >= min && value <= max {
        return Ok(value);
    }
    let (value, min, max) = (value.to_string(), min.to_string(), max.to_string());
    let problem = if value.starts_with('-') {
        Problem::Negative { value, min, max }
    } else {
        Problem::OutOfRange { value, min, max }
    };
    Err(path.error(problem))
}

/// Checks that a duration is not zero.
pub(crate) fn check_nonzero(
    path: &FieldPath,
    value: std::time::Duration,
) -> Result<std::time::Duration, PolicyError> {
    if value.is_zero() {
        return Err(path.error(Problem::Zero {
            value: super::duration::format(value),
        }));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_negative_ratio_names_the_field_and_the_range() {
        let path = FieldPath::root("spec").field("retryBudget").field("ratio");
        let err = check_range(&path, -0.1, 0.0, 1.0).expect_err("negative");
        assert_eq!(
            err.to_string(),
            "spec.retryBudget.ratio: -0.1 is negative; use a value between 0 and 1"
        );
        let err = check_range(&path.index(3), 7u32, 1, 5).expect_err("too big");
        assert_eq!(
            err.to_string(),
            "spec.retryBudget.ratio[3]: 7 is out of range; use a value between 1 and 5"
        );
    }
}

//! Errors found while loading a DAG file, each with the place it was found.

use std::fmt;
use std::path::PathBuf;

/// Everything wrong with one DAG file. Loading reports every problem it can find at once, so a
/// user fixes a file in one pass rather than one error per `orch dags validate`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    pub path: PathBuf,
    pub problems: Vec<Problem>,
}

/// One problem, at a 1-based line and column where the YAML parser could tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<u64>,
    pub column: Option<u64>,
    pub message: String,
}

impl Problem {
    pub fn at(location: serde_saphyr::Location, message: impl Into<String>) -> Problem {
        let known = location != serde_saphyr::Location::UNKNOWN;
        Problem {
            line: known.then(|| location.line()),
            column: known.then(|| location.column()),
            message: message.into(),
        }
    }

    pub fn nowhere(message: impl Into<String>) -> Problem {
        Problem {
            line: None,
            column: None,
            message: message.into(),
        }
    }
}

impl LoadError {
    pub fn single(path: impl Into<PathBuf>, problem: Problem) -> LoadError {
        LoadError {
            path: path.into(),
            problems: vec![problem],
        }
    }
}

impl fmt::Display for LoadError {
    /// `file:line:column: message`, one problem a line, the form editors and CI logs link.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.path.display())?;
            if let Some(line) = p.line {
                write!(f, ":{line}")?;
                if let Some(column) = p.column {
                    write!(f, ":{column}")?;
                }
            }
            write!(f, ": {}", p.message)?;
        }
        Ok(())
    }
}

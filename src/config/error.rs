//! Configuration problems: each names the config path, the file position and a fix.
//! All problems of a pipeline are collected, so one `validate` shows every one.

use std::fmt;
use std::path::PathBuf;

use super::locate::Position;

/// One thing wrong with a pipeline file.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Config path, like `kpis[2].objective`; empty for the file as a whole.
    pub path: String,
    pub position: Option<Position>,
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            path: path.into(),
            position: None,
            message: message.into(),
            hint: None,
        }
    }

    #[must_use]
    pub fn hint(mut self, hint: impl Into<String>) -> Problem {
        self.hint = Some(hint.into());
        self
    }
}

/// A pipeline file that cannot be used, with every problem found in it.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// The pipeline's `name:`, when it could be read.
    pub pipeline: Option<String>,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        let count = match self.problems.len() {
            1 => "1 problem".to_string(),
            n => format!("{n} problems"),
        };
        match &self.pipeline {
            Some(name) => write!(f, "pipeline `{name}` ({file}): {count}")?,
            None => write!(f, "pipeline file {file}: {count}")?,
        }
        for p in &self.problems {
            write!(f, "\n  {file}")?;
            if let Some(pos) = p.position {
                write!(f, ":{}:{}", pos.line, pos.column)?;
            }
            if p.path.is_empty() {
                write!(f, ": {}", p.message)?;
            } else {
                write!(f, ": {}: {}", p.path, p.message)?;
            }
            if let Some(hint) = &p.hint {
                write!(f, "\n    hint: {hint}")?;
            }
        }
        Ok(())
    }
}

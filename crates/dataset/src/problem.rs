//! Problems found in a dataset: where (file, record, field, photo) and what.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ids::PhotoId;

/// How bad a [`Problem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Something is skipped or suspicious, but the dataset is usable (e.g. a zero-area box).
    Warning,
    /// The dataset is wrong: a file cannot be read, a record has a bad field, a photo is
    /// missing or undecodable.
    Error,
}

/// One problem, located as precisely as possible.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// The file concerned (a label file, a photo, a CSV file), if any.
    pub file: Option<PathBuf>,
    /// 0-based index of the record in a JSON label file, or 1-based line number in a CSV file.
    pub record: Option<usize>,
    /// The field concerned, e.g. `photo` or `bbox.width`.
    pub field: Option<String>,
    /// The photo concerned, if any.
    pub photo: Option<PhotoId>,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    /// An error about a file.
    pub fn error(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Problem {
            severity: Severity::Error,
            file: Some(file.into()),
            record: None,
            field: None,
            photo: None,
            message: message.into(),
        }
    }

    /// A warning about a file.
    pub fn warning(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Problem {
            severity: Severity::Warning,
            ..Problem::error(file, message)
        }
    }

    /// Sets the record index.
    pub fn at(mut self, record: usize) -> Self {
        self.record = Some(record);
        self
    }

    /// Sets the field.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// Sets the photo.
    pub fn photo(mut self, photo: PhotoId) -> Self {
        self.photo = Some(photo);
        self
    }

    /// True for [`Severity::Error`].
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Problem {
    /// `error: labels/train_pairs_bags.json: record 3: field bbox.width: must not be negative`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.severity {
            Severity::Error => f.write_str("error")?,
            Severity::Warning => f.write_str("warning")?,
        }
        if let Some(file) = &self.file {
            write!(f, ": {}", file.display())?;
        }
        if let Some(record) = self.record {
            let is_csv = self
                .file
                .as_ref()
                .and_then(|p| p.extension())
                .is_some_and(|e| e == "csv");
            if is_csv {
                write!(f, ": line {record}")?;
            } else {
                write!(f, ": record {record}")?;
            }
        }
        if let Some(field) = &self.field {
            write!(f, ": field {field}")?;
        }
        if let Some(photo) = self.photo {
            write!(f, ": photo {photo}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// One or more errors that stop a load; `Display` shows the first and the count.
#[derive(Debug, Clone, PartialEq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [] => f.write_str("no problems"),
            [one] => write!(f, "{one}"),
            [first, rest @ ..] => write!(f, "{first} (and {} more problems)", rest.len()),
        }
    }
}

impl std::error::Error for Problems {}

impl Problems {
    /// The problems.
    pub fn iter(&self) -> std::slice::Iter<'_, Problem> {
        self.0.iter()
    }
}

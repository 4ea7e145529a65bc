//! What can be wrong with a configuration file, worded for the operator: every error names the
//! key path (`lb.upstreams[1].weight`) and the reason.

use std::path::PathBuf;

/// Everything that can be wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The YAML is malformed or a value has the wrong shape; the YAML library's message names the key.
    #[error("{0}")]
    Syntax(String),
    /// A key that neither pingora nor lb knows.
    #[error("unknown key `{key}`: {hint}")]
    UnknownKey { key: String, hint: String },
    /// A well-formed value that is not acceptable.
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

//! The configuration file: one YAML document holding pingora's own server keys at the top level
//! and ours under `lb:`.
//!
//! Loading is strict: a misspelt key anywhere, a bad address, a bad duration or a value out of
//! range is a [`ConfigError`] that names the key and the reason, so that `lb` refuses to start
//! before it binds anything. The steps, one file each:
//! - [`server_keys`]: pingora's top-level keys, checked against pingora's own `ServerConf`, and
//!   lb's defaults for them;
//! - `raw`: the serde shapes of the file as written;
//! - `validate`: one function per section, filling defaults and naming keys in errors;
//! - `tls`: `lb.tls`, whose certificates and keys are read and checked here;
//! - `values`: parsing of single values (durations, hash keys, addresses);
//! - [`types`]: the validated configuration that the rest of lb reads; the single source of
//!   defaults.
//!
//! Depends on: [`crate::outcome`] (the `on: [...]` vocabulary) and pingora's `ServerConf`;
//! nothing else in lb.

mod error;
mod raw;
mod routes;
pub mod server_keys;
mod tls;
pub mod types;
mod validate;
mod values;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::Path;

use pingora::server::configuration::ServerConf;
use serde::Deserialize;

pub use error::ConfigError;
pub use server_keys::{default_server_conf, pid_file_of, server_defaults};
pub use types::*;
pub use values::parse_duration;

/// A whole, validated configuration file.
#[derive(Debug)]
pub struct Config {
    /// Pingora's own server settings (the top-level keys), with pingora's defaults.
    pub server: ServerConf,
    /// The balancer's settings (the `lb:` section).
    pub lb: LbConfig,
}

/// The largest configuration file read: a bigger one is refused before it is read.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Reads a configuration file: only a regular file (not a directory, FIFO or device, which
/// could block or never end) of at most [`MAX_FILE_BYTES`], in UTF-8.
pub(crate) fn read_file(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let read_error = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let invalid = |reason: String| {
        read_error(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            reason,
        ))
    };
    let meta = std::fs::metadata(path).map_err(read_error)?;
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            "a directory"
        } else {
            "not a regular file (a FIFO, socket or device)"
        };
        return Err(invalid(format!("it is {kind}")));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(invalid(format!(
            "it is {} bytes, above the limit of {MAX_FILE_BYTES} (16 MiB)",
            meta.len()
        )));
    }
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // Bounded again while reading, should the file grow meanwhile.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(invalid(format!(
            "it grew above the limit of {MAX_FILE_BYTES} bytes (16 MiB) while being read"
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        invalid(format!(
            "it is not UTF-8 text (byte {} is not)",
            e.utf8_error().valid_up_to()
        ))
    })
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_file(path)?;
        Self::from_yaml(&text)
    }

    /// Parses and validates a configuration document. Every error is one line, and values
    /// echoed in it are cut to about 80 characters.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text).map_err(ConfigError::tidy)
    }

    fn parse(text: &str) -> Result<Self, ConfigError> {
        // A generic parse first: it refuses a key given twice in any mapping, which the
        // top level (pingora's keys, gathered in a map) would otherwise let the last win.
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text)
            .map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let document: Document =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let lb = document.lb.ok_or_else(|| {
            ConfigError::invalid(
                "lb",
                "missing: the `lb:` section with `listen` and `upstreams` is required",
            )
        })?;
        let server = server_keys::server_conf_from(document.server)?;
        let lb = lb.validate(&server)?;
        Ok(Config { server, lb })
    }
}

/// The file as written: `lb` plus whatever else is at the top level (pingora's keys).
#[derive(Deserialize)]
struct Document {
    lb: Option<raw::RawLb>,
    #[serde(flatten)]
    server: BTreeMap<String, serde_yaml_ng::Value>,
}

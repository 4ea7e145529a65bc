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

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    /// Parses and validates a configuration document.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
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

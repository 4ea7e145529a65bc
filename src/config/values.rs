//! Parsing and checking single values: durations, hash keys, addresses.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::types::HashKey;
use super::ConfigError;

/// Values echoed in error messages are cut to this many characters.
pub(crate) const ECHO_LIMIT: usize = 80;

/// `text` for an error message: whole if short, else its first [`ECHO_LIMIT`] characters and
/// how long it was.
pub(crate) fn cut(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(ECHO_LIMIT) {
        None => std::borrow::Cow::Borrowed(text),
        Some((end, _)) => std::borrow::Cow::Owned(format!(
            "{}... ({} bytes)",
            text[..end].escape_debug(),
            text.len()
        )),
    }
}

/// Parses `500ms`, `2s`, `1m`, `1h` (a whole number and a unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || {
        format!(
            "invalid duration `{}`: write a whole number and a unit, e.g. 500ms, 2s, 1m, 1h",
            cut(text)
        )
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    let duration = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(bad()),
    };
    // Longer would overflow timers (a deadline is "now + duration") and means nothing here.
    if duration > MAX_DURATION {
        return Err(format!("duration `{}` is too long: at most 24h", cut(text)));
    }
    Ok(duration)
}

/// The longest duration accepted anywhere in the file.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

pub(crate) fn parse_hash_key(text: &str) -> Result<HashKey, String> {
    match text.trim() {
        "client_ip" => Ok(HashKey::ClientIp),
        "uri" => Ok(HashKey::Uri),
        other => {
            if let Some(name) = other.strip_prefix("header:") {
                http::HeaderName::from_bytes(name.trim().as_bytes())
                    .map(HashKey::Header)
                    .map_err(|_| format!("`{name}` is not a valid header name"))
            } else if let Some(name) = other.strip_prefix("cookie:") {
                let name = name.trim();
                if name.is_empty() || name.contains([';', '=', ' ']) {
                    Err(format!("`{name}` is not a valid cookie name"))
                } else {
                    Ok(HashKey::Cookie(name.to_string()))
                }
            } else {
                Err(format!(
                    "unknown hash key `{other}`: expected client_ip, uri, header:NAME or cookie:NAME"
                ))
            }
        }
    }
}

pub(crate) fn non_zero(key: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        Err(ConfigError::invalid(key, "must be greater than zero"))
    } else {
        Ok(d)
    }
}

/// Resolves `host:port` (an IP literal needs no lookup; a name is looked up once, at load).
pub(crate) fn resolve(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if !text.contains(':') {
        return Err(ConfigError::invalid(
            key,
            format!(
                "`{}` has no port: write host:port, e.g. 127.0.0.1:8081",
                cut(text)
            ),
        ));
    }
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| ConfigError::invalid(key, format!("cannot resolve `{}`: {e}", cut(text))))?;
    addrs
        .next()
        .ok_or_else(|| ConfigError::invalid(key, format!("`{}` resolves to no address", cut(text))))
}

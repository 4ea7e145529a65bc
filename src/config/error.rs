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
    /// The error with every message on one line and long echoed values cut.
    pub(crate) fn tidy(self) -> Self {
        match self {
            ConfigError::Syntax(text) => ConfigError::Syntax(tidy_text(&text)),
            ConfigError::UnknownKey { key, hint } => ConfigError::UnknownKey {
                key: tidy_text(&key),
                hint: tidy_text(&hint),
            },
            ConfigError::Invalid { key, reason } => ConfigError::Invalid {
                key: tidy_text(&key),
                reason: tidy_text(&reason),
            },
            read @ ConfigError::Read { .. } => read,
        }
    }

    pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Longest run of text kept between quotes in a message. Values lb echoes are already cut to
/// 80 characters (and their length said) where they are named; this is the net for messages
/// of the YAML library, a little wider so that it leaves those alone.
const RUN_LIMIT: usize = 120;

/// `text` on one line, each quoted run (between `` ` ``, `"` or `'`) and the whole cut so that
/// a huge value is not echoed whole.
pub(crate) fn tidy_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(1024));
    let mut run = 0usize;
    let mut skipped = 0usize;
    for c in text.chars() {
        let c = if c == '\n' || c == '\r' { ' ' } else { c };
        if matches!(c, '`' | '"' | '\'') {
            if skipped > 0 {
                out.push_str(&format!("... ({skipped} more bytes)"));
                skipped = 0;
            }
            run = 0;
            out.push(c);
            continue;
        }
        run += 1;
        if run > RUN_LIMIT {
            skipped += c.len_utf8();
        } else {
            out.push(c);
        }
    }
    if skipped > 0 {
        out.push_str(&format!("... ({skipped} more bytes)"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_and_lines_joined() {
        let long = "x".repeat(10_000);
        let t = tidy_text(&format!("bad value `{long}`\nat line 3"));
        assert!(t.len() < 200, "{t}");
        assert!(!t.contains('\n'));
        assert!(t.contains("more bytes"));
        assert!(t.ends_with("` at line 3"), "{t}");
        assert_eq!(tidy_text("short `value`"), "short `value`");
    }
}

//! The runtime state an operator or live traffic gave the upstreams (admin actions, admin
//! weights, passive ejections), as handed to the next process on `lb upgrade` and kept across a
//! stop and start with `--keep-state`. The operations layer writes it to `<pid_file>.state`.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::registry::Registry;
use super::upstream::AdminState;
use crate::clock::now_ms;
use crate::config::MAX_WEIGHT;

/// The file format's version; a file of another version is ignored with a warning.
pub(crate) const SAVED_STATE_VERSION: u32 = 1;

/// Every upstream whose state differs from a fresh start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedState {
    pub(crate) version: u32,
    /// The process that wrote it.
    pub(crate) pid: u32,
    /// When it was written (milliseconds since the Unix epoch).
    pub(crate) written_unix_ms: u64,
    pub(crate) upstreams: Vec<SavedUpstream>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedUpstream {
    /// The pool it belongs to (`default` for the one-pool form, and in files written before
    /// pools existed).
    #[serde(default = "default_pool")]
    pub(crate) pool: String,
    pub(crate) addr: SocketAddr,
    /// `enabled`, `draining` or `disabled`.
    #[serde(default = "enabled")]
    pub(crate) admin: String,
    /// The reason logged with the admin action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
    /// The admin API's weight, if one is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) weight: Option<usize>,
    /// When a passive ejection ends (milliseconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ejected_until_unix_ms: Option<u64>,
    /// Ejections in a row (the next one lasts longer).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) ejection_level: u32,
}

fn default_pool() -> String {
    crate::config::DEFAULT_POOL.to_string()
}

fn enabled() -> String {
    "enabled".to_string()
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn admin_name(admin: AdminState) -> &'static str {
    match admin {
        AdminState::Enabled => "enabled",
        AdminState::Draining => "draining",
        AdminState::Disabled => "disabled",
    }
}

impl Registry {
    /// The upstreams whose runtime state differs from a fresh start, sorted by address.
    pub(crate) fn snapshot(&self) -> SavedState {
        let now = now_ms();
        let wall = unix_ms(SystemTime::now());
        let mut upstreams: Vec<SavedUpstream> = self
            .all_states()
            .into_iter()
            .filter_map(|s| {
                let admin = s.admin();
                let weight = s.weight_override();
                let ejected_until_unix_ms = s.ejected_until(now).map(|until| wall + (until - now));
                let ejection_level = s.ejection_level();
                if admin == AdminState::Enabled
                    && weight.is_none()
                    && ejected_until_unix_ms.is_none()
                    && ejection_level == 0
                {
                    return None;
                }
                let reason = (admin != AdminState::Enabled).then(|| s.last_change().reason);
                Some(SavedUpstream {
                    pool: s.pool.to_string(),
                    addr: s.addr,
                    admin: admin_name(admin).to_string(),
                    reason,
                    weight,
                    ejected_until_unix_ms,
                    ejection_level,
                })
            })
            .collect();
        upstreams.sort_by(|a, b| (&a.pool, a.addr).cmp(&(&b.pool, b.addr)));
        SavedState {
            version: SAVED_STATE_VERSION,
            pid: std::process::id(),
            written_unix_ms: wall,
            upstreams,
        }
    }

    /// Applies `saved` to the upstreams of this registry with the same pool and address;
    /// returns one line per upstream changed, and one per saved upstream no longer configured.
    pub(crate) fn restore(&self, saved: &SavedState) -> Vec<String> {
        let mut lines = Vec::new();
        let wall = unix_ms(SystemTime::now());
        for entry in &saved.upstreams {
            let Some(state) = self.state_of(&entry.pool, entry.addr) else {
                let name = if entry.pool == crate::config::DEFAULT_POOL {
                    entry.addr.to_string()
                } else {
                    format!("{} (pool {})", entry.addr, entry.pool)
                };
                lines.push(format!(
                    "{name}: not in the configuration any more, its saved state is dropped"
                ));
                continue;
            };
            let mut done = Vec::new();
            let admin = match entry.admin.as_str() {
                "draining" => Some(AdminState::Draining),
                "disabled" => Some(AdminState::Disabled),
                _ => None,
            };
            if let Some(admin) = admin {
                let reason = entry
                    .reason
                    .clone()
                    .unwrap_or_else(|| format!("{} before the restart", admin_name(admin)));
                state.set_admin(admin, &reason);
                done.push(admin_name(admin).to_string());
            }
            if let Some(weight) = entry.weight.filter(|w| (1..=MAX_WEIGHT).contains(w)) {
                state.set_weight_override(Some(weight));
                done.push(format!("weight {weight}"));
            }
            let remaining = entry
                .ejected_until_unix_ms
                .map(|until| until.saturating_sub(wall))
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis);
            if remaining.is_some() || entry.ejection_level > 0 {
                state.restore_ejection(remaining, entry.ejection_level);
                if let Some(remaining) = remaining {
                    done.push(format!("ejected for {}s more", remaining.as_secs().max(1)));
                }
            }
            if !done.is_empty() {
                lines.push(format!("{}: {}", state.label(), done.join(", ")));
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Upstream;

    fn upstream(port: u16) -> Upstream {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        Upstream {
            name: addr.to_string(),
            addr,
            weight: 1,
            max_conns: None,
            backup: false,
            origin: None,
        }
    }

    #[test]
    fn admin_actions_weights_and_ejections_round_trip() {
        let old = Registry::new();
        let states = old.members(
            "default",
            &[upstream(1), upstream(2), upstream(3), upstream(4)],
        );
        states[0].set_admin(AdminState::Draining, "drained for maintenance");
        states[1].set_admin(AdminState::Disabled, "disabled through the admin API");
        states[2].set_weight_override(Some(5));
        states[3].restore_ejection(Some(Duration::from_secs(60)), 2);
        let saved = old.snapshot();
        assert_eq!(saved.upstreams.len(), 4);
        let text = serde_json::to_string(&saved).unwrap_or_default();
        let read: SavedState = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(read, saved);

        // The new process knows 1, 2, 3 and a new one, 5; 4 is gone.
        let new = Registry::new();
        let fresh = new.members(
            "default",
            &[upstream(1), upstream(2), upstream(3), upstream(5)],
        );
        let lines = new.restore(&read);
        assert_eq!(fresh[0].admin(), AdminState::Draining);
        assert_eq!(fresh[0].last_change().reason, "drained for maintenance");
        assert_eq!(fresh[1].admin(), AdminState::Disabled);
        assert_eq!(fresh[2].weight(1), 5);
        assert_eq!(fresh[3].admin(), AdminState::Enabled);
        assert_eq!(fresh[3].weight(1), 1);
        assert!(
            lines
                .iter()
                .any(|l| l.contains("127.0.0.1:4: not in the configuration")),
            "{lines:?}"
        );
        assert_eq!(new.snapshot().upstreams.len(), 3);
    }

    #[test]
    fn an_ejection_restored_keeps_its_end_and_level() {
        let old = Registry::new();
        let states = old.members("default", &[upstream(1)]);
        states[0].restore_ejection(Some(Duration::from_secs(60)), 3);
        let saved = old.snapshot();
        let new = Registry::new();
        let fresh = new.members("default", &[upstream(1)]);
        new.restore(&saved);
        assert!(fresh[0].is_ejected(now_ms()));
        assert_eq!(fresh[0].ejection_level(), 3);
    }

    #[test]
    fn a_fresh_registry_saves_nothing() {
        let registry = Registry::new();
        registry.members("default", &[upstream(1), upstream(2)]);
        assert!(registry.snapshot().upstreams.is_empty());
    }
}

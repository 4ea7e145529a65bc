//! Passive health: outlier ejection from live traffic, between active checks.
//!
//! An attempt's [`Outcome`] counts as a failure when `passive_health.on` names it; after
//! `consecutive_failures` in a row the upstream is ejected for `eject_for`, doubled for each
//! ejection in a row up to `max_eject_for`, unless that would eject more than
//! `max_ejected_percent` of the pool. The health service calls [`end_due_ejections`] every
//! 250 ms, so an ejection ends on time even between check rounds; an active Down→Up transition
//! ends one too (see [`UpstreamState::set_healthy`]).

use std::time::Duration;

use super::selection::Member;
use super::upstream::UpstreamState;
use crate::clock::now_ms;
use crate::config::PassiveHealth;
use crate::outcome::Outcome;

/// Counts the outcome of one attempt on `state`, a member of `members`: a failure of a kind
/// the policy names may eject it; anything else ends its failure streak.
pub(crate) fn record(
    policy: &PassiveHealth,
    members: &[Member],
    state: &UpstreamState,
    outcome: Outcome,
    what: impl FnOnce() -> String,
) {
    if !policy.on.contains(outcome) {
        state.record_success();
        return;
    }
    if policy.consecutive_failures == 0 {
        return;
    }
    let failures = state.record_failure();
    let now = now_ms();
    if failures < policy.consecutive_failures || state.is_ejected(now) {
        return;
    }
    let what = what();
    let ejected = members.iter().filter(|m| m.state.is_ejected(now)).count();
    let allowed = members.len() * policy.max_ejected_percent as usize / 100;
    if ejected >= allowed {
        log::warn!(
            "upstream {} failed {failures} times in a row ({what}) but stays in: \
             {ejected} of {} upstreams are ejected already (max_ejected_percent {})",
            state.label(),
            members.len(),
            policy.max_ejected_percent
        );
        return;
    }
    let reason = format!("{failures} consecutive failures, last: {what}");
    let length = eject(state, policy, &reason);
    log::warn!(
        "upstream {} is EJECTED for {}s: {reason}",
        state.label(),
        length.as_secs()
    );
}

/// Ejects `state` for the length the policy gives this ejection; returns the length.
pub(crate) fn eject(state: &UpstreamState, policy: &PassiveHealth, reason: &str) -> Duration {
    let level = state.next_ejection_level(policy.max_eject_for).min(16);
    let length = policy
        .eject_for
        .saturating_mul(1u32 << level)
        .min(policy.max_eject_for);
    state.eject(length, reason);
    length
}

/// Ends the ejections whose time is up, with a log line each.
pub(crate) fn end_due_ejections(members: &[Member]) {
    let now = now_ms();
    for m in members {
        if m.state.end_ejection_if_due(now) {
            log::info!(
                "upstream {} is back in rotation: its ejection ended",
                m.state.label()
            );
        }
    }
}

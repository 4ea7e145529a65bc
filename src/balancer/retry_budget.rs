//! The retry budget: retries may never exceed a share of the live requests, so that a failing
//! pool is not hit by a storm of repeated requests on top of its normal load.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::now_ms;
use crate::config::RetryPolicy;

/// Seconds the budget looks back over.
const WINDOW_SECONDS: u64 = 10;

#[derive(Default)]
struct Slot {
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// Requests and retries over the last [`WINDOW_SECONDS`], in one-second slots.
#[derive(Default)]
pub(crate) struct RetryBudget {
    slots: [Slot; WINDOW_SECONDS as usize],
}

impl RetryBudget {
    fn slot(&self, second: u64) -> &Slot {
        let slot = &self.slots[(second % WINDOW_SECONDS) as usize];
        if slot.second.load(Ordering::Acquire) != second
            && slot.second.swap(second, Ordering::AcqRel) != second
        {
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }

    /// Counts one client request.
    pub(crate) fn record_request(&self) {
        self.slot(now_ms() / 1000)
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Spends one retry if the budget allows it.
    pub(crate) fn try_retry(&self, policy: &RetryPolicy) -> bool {
        let now = now_ms() / 1000;
        let (mut requests, mut retries) = (0, 0);
        for slot in &self.slots {
            let second = slot.second.load(Ordering::Acquire);
            if second + WINDOW_SECONDS > now && second <= now {
                requests += slot.requests.load(Ordering::Relaxed);
                retries += slot.retries.load(Ordering::Relaxed);
            }
        }
        let share = requests * u64::from(policy.budget_percent) / 100;
        let floor = u64::from(policy.budget_min_per_second) * WINDOW_SECONDS;
        if retries < share.max(floor) {
            self.slot(now).retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stay_within_the_share() {
        let budget = RetryBudget::default();
        let policy = RetryPolicy {
            budget_percent: 20,
            budget_min_per_second: 0,
            ..RetryPolicy::default()
        };
        for _ in 0..100 {
            budget.record_request();
        }
        let granted = (0..100).filter(|_| budget.try_retry(&policy)).count();
        assert_eq!(granted, 20);
    }

    #[test]
    fn the_floor_lets_a_quiet_balancer_retry() {
        let budget = RetryBudget::default();
        let policy = RetryPolicy {
            budget_percent: 20,
            budget_min_per_second: 1,
            ..RetryPolicy::default()
        };
        budget.record_request();
        let granted = (0..100).filter(|_| budget.try_retry(&policy)).count();
        assert_eq!(granted, 10);
    }
}

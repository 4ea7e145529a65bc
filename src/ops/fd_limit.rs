//! The open-files limit: raised to its hard maximum at start (a load balancer holds two sockets
//! per proxied request), and the share of it client connections may take.

/// File descriptors kept for everything but client connections and their upstream connections:
/// listeners, health checks, the admin listener, logs.
const RESERVE: u64 = 256;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and logs the result; returns the soft
/// limit in force.
pub(crate) fn raise_nofile() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        let e = std::io::Error::last_os_error();
        log::warn!("cannot read the open-files limit: {e}");
        return 1024;
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        } else {
            let e = std::io::Error::last_os_error();
            log::warn!(
                "cannot raise the open-files limit from {before} to {}: {e}",
                limit.rlim_max
            );
        }
    }
    let current: u64 = limit.rlim_cur;
    log::info!(
        "open-files limit {current} (was {before}); client connections up to {} unless lb.limits.max_client_connections says otherwise",
        client_connection_budget(current)
    );
    current
}

/// The default `max_client_connections` for an open-files limit: each client connection may
/// need an upstream connection too, and a reserve stays for the rest.
pub(crate) fn client_connection_budget(nofile: u64) -> usize {
    let budget = (nofile.saturating_sub(RESERVE) / 2).max(16);
    usize::try_from(budget).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_leaves_a_reserve_and_a_socket_per_upstream_connection() {
        assert_eq!(client_connection_budget(20_000), 9_872);
        assert_eq!(client_connection_budget(1024), 384);
        assert_eq!(client_connection_budget(10), 16);
    }
}

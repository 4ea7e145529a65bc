//! The standard `process_*` metrics, read from `/proc/self` at scrape time (Linux only; on
//! other systems they stay at zero).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::stats::metrics;

/// CPU seconds already added to the counter, in clock ticks.
static CPU_TICKS_SEEN: AtomicU64 = AtomicU64::new(0);

pub fn update() {
    let m = metrics();
    let page = page_size();
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        let mut fields = statm
            .split_whitespace()
            .map(|f| f.parse::<i64>().unwrap_or(0));
        let virtual_pages = fields.next().unwrap_or(0);
        let resident_pages = fields.next().unwrap_or(0);
        m.process_virtual_memory.set(virtual_pages * page);
        m.process_resident_memory.set(resident_pages * page);
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name, which is in parentheses and may hold spaces.
        if let Some((_, rest)) = stat.rsplit_once(')') {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let field = |n: usize| fields.get(n).and_then(|f| f.parse::<u64>().ok());
            // utime and stime are fields 14 and 15 of stat; here indices 11 and 12.
            if let (Some(user), Some(system)) = (field(11), field(12)) {
                let ticks = user + system;
                let seen = CPU_TICKS_SEEN.swap(ticks, Ordering::AcqRel);
                let hz = clock_ticks();
                if ticks > seen && hz > 0 {
                    m.process_cpu_seconds
                        .inc_by((ticks - seen) as f64 / hz as f64);
                }
            }
            if let Some(threads) = field(17) {
                m.process_threads.set(threads as i64);
            }
            if let (Some(start), Some(boot)) = (field(19), boot_time()) {
                let hz = clock_ticks().max(1);
                m.process_start_time
                    .set(boot as f64 + start as f64 / hz as f64);
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        m.process_open_fds.set(entries.count() as i64);
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and has no other effect.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        m.process_max_fds.set(limit.rlim_cur as i64);
    }
}

fn page_size() -> i64 {
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as i64
    } else {
        4096
    }
}

fn clock_ticks() -> i64 {
    // SAFETY: sysconf only reads a system constant.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as i64 }
}

/// Seconds since the epoch at which the machine booted.
fn boot_time() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

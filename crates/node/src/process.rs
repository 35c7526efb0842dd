//! This process's own figures for the metrics (`process_*`, the names every Prometheus client library uses),
//! read from `/proc/self`.

use std::fs;

/// CPU, memory, file descriptors and threads of this process now.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessSample {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: i64,
    pub max_fds: i64,
    pub threads: i64,
    pub start_time_seconds: f64,
}

impl ProcessSample {
    /// Reads them; `None` where `/proc` cannot be read (the other families are still served).
    pub fn now() -> Option<ProcessSample> {
        let stat = fs::read_to_string("/proc/self/stat").ok()?;
        let boot = fs::read_to_string("/proc/stat").ok()?;
        // SAFETY: sysconf only reads system configuration.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let open_fds = fs::read_dir("/proc/self/fd").ok()?.count() as i64;
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        let max_fds = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            i64::try_from(limit.rlim_cur).unwrap_or(i64::MAX)
        } else {
            -1
        };
        parse(&stat, &boot, ticks, page, open_fds, max_fds)
    }
}

/// The sample from the text of `/proc/self/stat` and `/proc/stat`.
fn parse(
    stat: &str,
    boot: &str,
    ticks: i64,
    page: i64,
    open_fds: i64,
    max_fds: i64,
) -> Option<ProcessSample> {
    if ticks <= 0 || page <= 0 {
        return None;
    }
    // The command name (field 2) is in parentheses and may hold spaces: fields are counted after its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 (state): field n is fields[n - 3].
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let (utime, stime) = (field(14)?, field(15)?);
    let threads = field(20)?;
    let start_ticks = field(22)?;
    let vsize = field(23)?;
    let rss_pages = field(24)?;
    let btime: u64 = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())?;
    let ticks = ticks as f64;
    Some(ProcessSample {
        cpu_seconds: (utime + stime) as f64 / ticks,
        resident_bytes: rss_pages.saturating_mul(page as u64),
        virtual_bytes: vsize,
        open_fds,
        max_fds,
        threads: i64::try_from(threads).unwrap_or(i64::MAX),
        start_time_seconds: btime as f64 + start_ticks as f64 / ticks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_counted_after_the_command_name() {
        // A command name with a space and a parenthesis in it.
        let stat =
            "4242 (twin san) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 1000 \
                    104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let boot = "cpu  1 2 3\nbtime 1700000000\nprocesses 5\n";
        let p = parse(stat, boot, 100, 4096, 12, 1024).expect("parses");
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.threads, 7);
        assert_eq!(p.virtual_bytes, 104_857_600);
        assert_eq!(p.resident_bytes, 2560 * 4096);
        assert_eq!(p.start_time_seconds, 1_700_000_010.0);
        assert_eq!((p.open_fds, p.max_fds), (12, 1024));
    }

    #[test]
    fn this_process_can_be_read() {
        let p = ProcessSample::now().expect("/proc/self is readable");
        assert!(p.threads >= 1 && p.open_fds >= 1 && p.resident_bytes > 0);
    }

    #[test]
    fn garbage_gives_nothing() {
        assert_eq!(parse("no parenthesis", "btime 1\n", 100, 4096, 0, 0), None);
        assert_eq!(parse("1 (x) S 1", "btime 1\n", 100, 4096, 0, 0), None);
    }
}

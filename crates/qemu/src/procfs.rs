//! What `/proc` tells about a process: command line, state, CPU time, resident memory.
//!
//! The parsers are pure functions over the file contents, unit-tested below; the readers
//! return `None` when the process is gone.

use std::path::Path;

/// Fields of `/proc/<pid>/stat` nimbus uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// One-letter state: `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    /// User-mode CPU time, in clock ticks.
    pub utime: u64,
    /// Kernel-mode CPU time, in clock ticks.
    pub stime: u64,
    /// Start time after boot, in clock ticks; with the pid it identifies one process.
    pub starttime: u64,
}

impl ProcStat {
    /// The process has exited (gone, zombie or dead).
    pub fn is_exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }

    /// CPU time (user + kernel) in nanoseconds.
    pub fn cpu_time_ns(&self) -> u64 {
        let ticks = clock_ticks_per_sec();
        (self.utime + self.stime).saturating_mul(1_000_000_000) / ticks
    }
}

/// Parses the contents of `/proc/<pid>/stat`. The command name (field 2) is in parentheses
/// and may itself contain spaces and parentheses, so parsing starts after the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); field N is at index N - 3.
    let field = |n: usize| fields.get(n - 3).copied();
    Some(ProcStat {
        state: field(3)?.chars().next()?,
        utime: field(14)?.parse().ok()?,
        stime: field(15)?.parse().ok()?,
        starttime: field(22)?.parse().ok()?,
    })
}

/// Parses `VmRSS` from `/proc/<pid>/status`, in bytes (0 when absent, e.g. for a zombie).
pub fn parse_status_rss(text: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Splits `/proc/<pid>/cmdline` (NUL-separated) into arguments.
pub fn parse_cmdline(raw: &[u8]) -> Vec<String> {
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Reads `/proc/<pid>/stat`; `None` if the process does not exist.
pub fn read_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Reads the resident memory of a process in bytes; 0 if unknown.
pub fn read_rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|t| parse_status_rss(&t))
        .unwrap_or(0)
}

/// Reads the command line of a process; `None` if the process does not exist.
pub fn read_cmdline(pid: u32) -> Option<Vec<String>> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .map(|raw| parse_cmdline(&raw))
}

/// The process is alive: it exists and is neither a zombie nor dead.
pub fn is_alive(pid: u32) -> bool {
    read_stat(pid).is_some_and(|s| !s.is_exited())
}

/// The command line is a QEMU system emulator whose arguments reference `dir`.
pub fn cmdline_is_qemu_for(cmdline: &[String], dir: &Path) -> bool {
    let Some(program) = cmdline.first() else {
        return false;
    };
    let base = program.rsplit('/').next().unwrap_or(program);
    if !base.starts_with("qemu-system") {
        return false;
    }
    let dir = dir.to_string_lossy();
    let dir = dir.trim_end_matches('/');
    let prefix = format!("{dir}/");
    let escaped_prefix = format!("{}/", crate::config::escape_opt(dir));
    cmdline[1..]
        .iter()
        .any(|a| a.contains(&prefix) || a.contains(&escaped_prefix))
}

/// Kernel clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 if unknown).
pub fn clock_ticks_per_sec() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as u64,
        _ => 100,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (qemu-system-x86) S 1 4242 4242 0 -1 4194560 8001 0 3 0 \
        150 37 0 0 20 0 5 0 987654 1200000000 40000 18446744073709551615 1 1 0 0 0 0 0 \
        4096 17000 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn parses_stat_fields() {
        let s = parse_stat(STAT).expect("parse");
        assert_eq!(s.state, 'S');
        assert_eq!(s.utime, 150);
        assert_eq!(s.stime, 37);
        assert_eq!(s.starttime, 987654);
        assert!(!s.is_exited());
    }

    #[test]
    fn comm_with_spaces_and_parens() {
        let text = "7 (we ird) (x)) Z 1 7 7 0 -1 0 0 0 0 0 5 6 0 0 20 0 1 0 99 0 0";
        let s = parse_stat(text).expect("parse");
        assert_eq!((s.state, s.utime, s.stime, s.starttime), ('Z', 5, 6, 99));
        assert!(s.is_exited());
    }

    #[test]
    fn truncated_stat_is_none() {
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn parses_rss() {
        let text = "Name:\tqemu\nVmPeak:\t 999 kB\nVmRSS:\t   20480 kB\nThreads: 5\n";
        assert_eq!(parse_status_rss(text), 20480 * 1024);
        assert_eq!(parse_status_rss("Name:\tzombie\n"), 0);
    }

    #[test]
    fn cmdline_checks_program_and_dir() {
        let raw = b"/usr/bin/qemu-system-x86_64\0-name\0guest=a\0-pidfile\0/s/vms/1/qemu.pid\0";
        let args = parse_cmdline(raw);
        assert_eq!(args.len(), 5);
        assert!(cmdline_is_qemu_for(&args, Path::new("/s/vms/1")));
        assert!(cmdline_is_qemu_for(&args, Path::new("/s/vms/1/")));
        assert!(!cmdline_is_qemu_for(&args, Path::new("/s/vms/10")));
        let other = parse_cmdline(b"/bin/sleep\0/s/vms/1/qemu.pid\0");
        assert!(!cmdline_is_qemu_for(&other, Path::new("/s/vms/1")));
    }

    #[test]
    fn own_process_is_alive() {
        let pid = std::process::id();
        assert!(is_alive(pid));
        assert!(read_rss_bytes(pid) > 0);
        assert!(read_stat(pid).is_some_and(|s| s.cpu_time_ns() < u64::MAX));
    }
}

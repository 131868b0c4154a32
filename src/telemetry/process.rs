//! The process's own figures for `/metrics`: resident memory, CPU seconds, open file
//! descriptors and start time, read from `/proc/self` at each scrape.
//!
//! It exists because the STS and the shim are long-running and an on-call needs the
//! usual leak and exhaustion signals (memory creeping up, descriptors running out
//! under a connection flood) next to the service's own counters, without a second
//! exporter. Linux only: on another OS, or when `/proc` cannot be read, the figures
//! are simply left out of the exposition rather than reported as zero. Clock ticks are
//! Linux's fixed `USER_HZ` of 100 (what `/proc` reports in, whatever the kernel's HZ).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// `USER_HZ`: the unit of the times in `/proc/self/stat`.
const TICKS_PER_SECOND: f64 = 100.0;

/// The figures of one scrape (each absent when it cannot be read).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessFigures {
    pub resident_memory_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

impl ProcessFigures {
    /// This process's figures now (all `None` off Linux).
    pub fn read() -> ProcessFigures {
        if !cfg!(target_os = "linux") {
            return ProcessFigures::default();
        }
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let fields = stat.as_deref().and_then(stat_fields);
        let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
        let resident = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map(|kb| kb * 1024);
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64);
        ProcessFigures {
            resident_memory_bytes: resident,
            cpu_seconds: fields.map(|f| (f.utime + f.stime) as f64 / TICKS_PER_SECOND),
            open_fds,
            start_time_seconds: fields
                .zip(boot_time)
                .map(|(f, boot)| boot as f64 + f.start_ticks as f64 / TICKS_PER_SECOND),
        }
    }
}

/// The fields of `/proc/self/stat` used here.
#[derive(Debug, Clone, Copy, PartialEq)]
struct StatFields {
    utime: u64,
    stime: u64,
    start_ticks: u64,
}

/// Fields 14, 15 and 22 of a `/proc/PID/stat` line. The command name (field 2) may
/// hold spaces and parentheses, so counting starts after its last `)`.
fn stat_fields(line: &str) -> Option<StatFields> {
    let rest = &line[line.rfind(')')? + 1..];
    // `rest` starts at field 3 (the state).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(StatFields {
        utime: field(14)?,
        stime: field(15)?,
        start_ticks: field(22)?,
    })
}

/// Registers as `process_*` under the registry's prefix; reads `/proc` at each scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let figures = ProcessFigures::read();
        if let Some(v) = figures.resident_memory_bytes {
            let g = ConstGauge::new(v as i64);
            g.encode(encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory of the process",
                None,
                g.metric_type(),
            )?)?;
        }
        if let Some(v) = figures.cpu_seconds {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time of the process",
                None,
                c.metric_type(),
            )?)?;
        }
        if let Some(v) = figures.open_fds {
            let g = ConstGauge::new(v as i64);
            g.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Open file descriptors of the process",
                None,
                g.metric_type(),
            )?)?;
        }
        if let Some(v) = figures.start_time_seconds {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                "When the process started (unix seconds)",
                None,
                g.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stat_fields_survive_a_command_name_with_spaces_and_parentheses() {
        let line = "4242 (agent (sts) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 123456 1000000 500 18446744073709551615";
        assert_eq!(
            stat_fields(line),
            Some(StatFields {
                utime: 250,
                stime: 75,
                start_ticks: 123456
            })
        );
        assert_eq!(stat_fields("garbage"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_figures_on_linux() {
        let f = ProcessFigures::read();
        assert!(f.resident_memory_bytes.unwrap() > 0);
        assert!(f.open_fds.unwrap() > 0);
        assert!(f.cpu_seconds.is_some());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = f.start_time_seconds.unwrap();
        assert!(
            start <= now + 1.0 && start > now - 86_400.0 * 365.0,
            "{start}"
        );
    }
}

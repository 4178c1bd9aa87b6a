//! The process metrics every Prometheus exporter has, unprefixed, read from
//! `/proc/self` at each scrape: resident memory, CPU time, open and maximum
//! file descriptors, start time, threads. Where `/proc` cannot be read
//! (not Linux) the series are left out rather than reported as zero.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

#[derive(Debug)]
pub(super) struct ProcessCollector;

/// What `/proc/self/stat` says, in exporter units.
struct Stat {
    cpu_seconds: f64,
    threads: i64,
    start_time_seconds: f64,
    resident_bytes: i64,
}

fn stat() -> Option<Stat> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |number: usize| -> Option<f64> { fields.get(number - 3)?.parse().ok() };
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()?? as f64;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok()?? as f64;
    let boot = boot_time()?;
    Some(Stat {
        cpu_seconds: (field(14)? + field(15)?) / ticks,
        threads: field(20)? as i64,
        start_time_seconds: boot + field(22)? / ticks,
        resident_bytes: (field(24)? * page) as i64,
    })
}

/// When the machine booted, Unix seconds (`btime` in `/proc/stat`).
fn boot_time() -> Option<f64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

fn open_fds() -> Option<i64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as i64)
}

fn max_fds() -> Option<i64> {
    let (soft, _) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok()?;
    i64::try_from(soft).ok()
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        if let Some(stat) = stat() {
            ConstCounter::new(stat.cpu_seconds).encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                MetricType::Counter,
            )?)?;
            ConstGauge::new(stat.resident_bytes).encode(encoder.encode_descriptor(
                "process_resident_memory",
                "Resident memory size in bytes",
                Some(&Unit::Bytes),
                MetricType::Gauge,
            )?)?;
            ConstGauge::new(stat.start_time_seconds).encode(encoder.encode_descriptor(
                "process_start_time",
                "Start time of the process since the Unix epoch in seconds",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?)?;
            ConstGauge::new(stat.threads).encode(encoder.encode_descriptor(
                "process_threads",
                "Number of OS threads in the process",
                None,
                MetricType::Gauge,
            )?)?;
        }
        if let Some(open) = open_fds() {
            ConstGauge::new(open).encode(encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors",
                None,
                MetricType::Gauge,
            )?)?;
        }
        if let Some(max) = max_fds() {
            ConstGauge::new(max).encode(encoder.encode_descriptor(
                "process_max_fds",
                "Maximum number of open file descriptors (the soft limit)",
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

//! Latency samples and the JSON line each measured phase is reported as.

use std::io::Write;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One measured phase: what `containers` and `exec` print, one JSON object per line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phase {
    /// Which daemon (or setup) was measured, e.g. `berthd`.
    pub target: String,
    /// What was measured, e.g. `create`, `get`, `ctr-create`.
    pub phase: String,
    /// Concurrent clients (1 for sequential command runs).
    pub clients: usize,
    /// Operations counted.
    pub ops: usize,
    /// Wall-clock time of the whole phase.
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    /// Every latency in microseconds, sorted, when asked for (`--samples`): lets `pool` merge
    /// rounds into one distribution instead of picking the median round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples_us: Option<Vec<u64>>,
}

impl Phase {
    /// Summarizes per-operation latencies measured over `elapsed` of wall-clock time.
    pub fn new(target: &str, phase: &str, clients: usize, mut latencies: Vec<Duration>, elapsed: Duration) -> Phase {
        latencies.sort_unstable();
        let seconds = elapsed.as_secs_f64();
        Phase {
            target: target.to_owned(),
            phase: phase.to_owned(),
            clients,
            ops: latencies.len(),
            seconds,
            ops_per_sec: if seconds > 0.0 { latencies.len() as f64 / seconds } else { 0.0 },
            p50_us: percentile_us(&latencies, 50),
            p95_us: percentile_us(&latencies, 95),
            p99_us: percentile_us(&latencies, 99),
            samples_us: None,
        }
    }

    /// Keeps the raw latencies in the line (sorted, in microseconds).
    pub fn with_samples(mut self, latencies: &[Duration]) -> Phase {
        let mut us: Vec<u64> = latencies.iter().map(|d| d.as_micros() as u64).collect();
        us.sort_unstable();
        self.samples_us = Some(us);
        self
    }

    /// Prints the phase as one JSON line on stdout. A closed stdout is an error, not a panic, so
    /// the caller still cleans up the daemon it benchmarked.
    pub fn print(&self) -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        serde_json::to_writer(&mut stdout, self)?;
        writeln!(stdout)?;
        Ok(())
    }
}

/// Nearest-rank percentile `p` of sorted samples, in microseconds; 0 when there are none.
pub fn percentile_us(sorted: &[Duration], p: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank - 1].as_micros() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let phase = Phase::new("t", "p", 1, samples, Duration::from_secs(2));
        assert_eq!((phase.p50_us, phase.p95_us, phase.p99_us), (50, 95, 99));
        assert_eq!(phase.ops, 100);
        assert_eq!(phase.ops_per_sec, 50.0);
        let one = Phase::new("t", "p", 1, vec![Duration::from_micros(7)], Duration::from_secs(1));
        assert_eq!((one.p50_us, one.p99_us), (7, 7));
        assert_eq!(percentile_us(&[], 50), 0);
    }
}

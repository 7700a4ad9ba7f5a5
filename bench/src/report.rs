//! `report`: markdown tables from the JSON lines of `containers` and `exec`, one target against a
//! base, in the form docs/benchmarks.md uses.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::stats::Phase;

/// Phases printed by `containers`, reported by throughput; every other phase is a command run
/// (`exec`) and is reported by its latency.
const GRPC_PHASES: [&str; 3] = ["create", "get", "delete"];

pub fn run(target: &str, base: &str, files: &[PathBuf]) -> Result<()> {
    let mut phases = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let phase: Phase = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a phase line", file.display(), n + 1))?;
            phases.push(phase);
        }
    }
    print!("{}", render(target, base, &phases));
    Ok(())
}

/// Rows in the order phases first appear; a row missing for one side shows "not measured". A
/// phase measured in several rounds is shown by its median round, with the range over rounds.
fn render(target: &str, base: &str, phases: &[Phase]) -> String {
    let mut rows: Vec<(&str, usize)> = Vec::new();
    for p in phases {
        if !rows.contains(&(p.phase.as_str(), p.clients)) {
            rows.push((&p.phase, p.clients));
        }
    }
    let (grpc, commands): (Vec<_>, Vec<_>) = rows.into_iter().partition(|(phase, _)| GRPC_PHASES.contains(phase));

    let mut out = String::new();
    if !grpc.is_empty() {
        out += &format!(
            "| gRPC call | clients | {target} ops/s | {base} ops/s | {target}/{base} | {target} p50 / p95 / p99 | {base} p50 / p95 / p99 |\n"
        );
        out += "|---|--:|--:|--:|--:|--:|--:|\n";
        for row in grpc {
            let throughput = |p: &Phase| p.ops_per_sec;
            let (t, b) = (Rounds::of(phases, target, row, throughput), Rounds::of(phases, base, row, throughput));
            let latencies =
                |r: &Rounds| format!("{} / {} / {}", us(r.median.p50_us), us(r.median.p95_us), us(r.median.p99_us));
            out += &format!(
                "| Containers.{} | {} | {} | {} | {} | {} | {} |\n",
                capitalize(row.0),
                row.1,
                cell(&t, |r| r.range(|v| format!("{v:.0}"))),
                cell(&b, |r| r.range(|v| format!("{v:.0}"))),
                ratio(&t, &b),
                cell(&t, latencies),
                cell(&b, latencies),
            );
        }
    }
    if !commands.is_empty() {
        out += &format!(
            "\n| command (sequential runs) | {target} median / p95 | {base} median / p95 | {target}/{base} (median) |\n"
        );
        out += "|---|--:|--:|--:|\n";
        for row in commands {
            let median = |p: &Phase| p.p50_us as f64;
            let (t, b) = (Rounds::of(phases, target, row, median), Rounds::of(phases, base, row, median));
            let runs = t.as_ref().or(b.as_ref()).map_or(0, |r| r.median.ops);
            let latencies = |r: &Rounds| {
                let p95 = us(r.median.p95_us);
                if r.count > 1 {
                    format!("{} / {p95} (medians {})", us(r.median.p50_us), r.range_only(|v| us(v as u64)))
                } else {
                    format!("{} / {p95}", us(r.median.p50_us))
                }
            };
            out += &format!(
                "| {} ({runs} runs) | {} | {} | {} |\n",
                row.0,
                cell(&t, latencies),
                cell(&b, latencies),
                ratio(&t, &b),
            );
        }
    }
    out
}

/// One target's measurements of one row over every round: the median round by `key`, and the
/// smallest and largest `key`.
struct Rounds<'a> {
    median: &'a Phase,
    key: f64,
    min: f64,
    max: f64,
    count: usize,
}

impl<'a> Rounds<'a> {
    fn of(phases: &'a [Phase], target: &str, (phase, clients): (&str, usize), key: fn(&Phase) -> f64) -> Option<Self> {
        let mut matching: Vec<&Phase> =
            phases.iter().filter(|p| p.target == target && p.phase == phase && p.clients == clients).collect();
        matching.sort_by(|a, b| key(a).total_cmp(&key(b)));
        let median = *matching.get((matching.len().max(1) - 1) / 2)?;
        Some(Rounds {
            median,
            key: key(median),
            min: key(matching[0]),
            max: key(matching[matching.len() - 1]),
            count: matching.len(),
        })
    }

    /// The median value, followed by the range when there were several rounds.
    fn range(&self, show: impl Fn(f64) -> String) -> String {
        if self.count > 1 { format!("{} ({})", show(self.key), self.range_only(show)) } else { show(self.key) }
    }

    fn range_only(&self, show: impl Fn(f64) -> String) -> String {
        format!("{}–{}", show(self.min), show(self.max))
    }
}

fn cell(rounds: &Option<Rounds>, show: impl Fn(&Rounds) -> String) -> String {
    rounds.as_ref().map_or(MISSING.into(), show)
}

const MISSING: &str = "not measured";

/// Ratio of the medians.
fn ratio(target: &Option<Rounds>, base: &Option<Rounds>) -> String {
    match (target, base) {
        (Some(t), Some(b)) if b.key > 0.0 => format!("{:.2}x", t.key / b.key),
        _ => "-".into(),
    }
}

/// Microseconds below a millisecond, milliseconds above: both ends stay readable.
fn us(micros: u64) -> String {
    if micros < 1000 { format!("{micros} µs") } else { format!("{:.1} ms", micros as f64 / 1000.0) }
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map_or_else(String::new, |first| first.to_uppercase().chain(chars).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(target: &str, phase: &str, clients: usize, ops_per_sec: f64, p50_us: u64) -> Phase {
        Phase {
            target: target.into(),
            phase: phase.into(),
            clients,
            ops: 10,
            seconds: 1.0,
            ops_per_sec,
            p50_us,
            p95_us: p50_us * 2,
            p99_us: p50_us * 3,
            samples_us: None,
        }
    }

    #[test]
    fn renders_ratios_and_missing_rows() {
        let phases = [
            phase("b", "create", 16, 1000.0, 900),
            phase("a", "create", 16, 5000.0, 1500),
            phase("a", "ctr-create", 1, 50.0, 20_000),
            phase("b", "ctr-create", 1, 40.0, 25_000),
            phase("b", "ctr-version", 1, 90.0, 11_000),
        ];
        let table = render("a", "b", &phases);
        assert!(
            table.contains(
                "| Containers.Create | 16 | 5000 | 1000 | 5.00x | 1.5 ms / 3.0 ms / 4.5 ms | 900 µs / 1.8 ms / 2.7 ms |"
            ),
            "{table}"
        );
        assert!(table.contains("| ctr-create (10 runs) | 20.0 ms / 40.0 ms | 25.0 ms / 50.0 ms | 0.80x |"), "{table}");
        assert!(table.contains("| ctr-version (10 runs) | not measured | 11.0 ms / 22.0 ms | - |"), "{table}");
    }

    #[test]
    fn shows_the_median_round_and_the_range() {
        let phases = [
            phase("a", "get", 1, 300.0, 30),
            phase("b", "get", 1, 100.0, 10),
            phase("a", "get", 1, 100.0, 10),
            phase("a", "get", 1, 200.0, 20),
            phase("a", "ctr-create", 1, 50.0, 9_000),
            phase("a", "ctr-create", 1, 50.0, 11_000),
            phase("a", "ctr-create", 1, 50.0, 10_000),
        ];
        let table = render("a", "b", &phases);
        assert!(
            table.contains("| Containers.Get | 1 | 200 (100–300) | 100 | 2.00x | 20 µs / 40 µs / 60 µs |"),
            "{table}"
        );
        assert!(table.contains("| 10.0 ms / 20.0 ms (medians 9.0 ms–11.0 ms) | not measured | - |"), "{table}");
    }
}

//! `pool`: one markdown table from phase lines printed with raw samples (`oci`, `exec --samples`),
//! merging the rounds of each target and phase into one distribution: the median and p95 are over
//! every sample of every round, and the range of the rounds' own medians follows in parentheses.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::stats::{Phase, percentile_us};

pub fn run(target: &str, bases: &[String], files: &[PathBuf]) -> Result<()> {
    let mut phases = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let phase: Phase = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a phase line", file.display(), n + 1))?;
            if phase.samples_us.is_some() {
                phases.push(phase);
            }
        }
    }
    print!("{}", render(target, bases, &phases));
    Ok(())
}

struct Pooled {
    runs: usize,
    p50: u64,
    p95: u64,
    rounds: usize,
    round_min: u64,
    round_max: u64,
}

fn pooled(phases: &[Phase], target: &str, phase: &str) -> Option<Pooled> {
    let rounds: Vec<&Phase> = phases.iter().filter(|p| p.target == target && p.phase == phase).collect();
    if rounds.is_empty() {
        return None;
    }
    let mut all: Vec<Duration> =
        rounds.iter().flat_map(|p| p.samples_us.iter().flatten()).map(|&us| Duration::from_micros(us)).collect();
    all.sort_unstable();
    let medians: Vec<u64> = rounds.iter().map(|p| p.p50_us).collect();
    Some(Pooled {
        runs: all.len(),
        p50: percentile_us(&all, 50),
        p95: percentile_us(&all, 95),
        rounds: rounds.len(),
        round_min: *medians.iter().min()?,
        round_max: *medians.iter().max()?,
    })
}

fn render(target: &str, bases: &[String], phases: &[Phase]) -> String {
    let mut rows: Vec<&str> = Vec::new();
    for p in phases {
        if !rows.contains(&p.phase.as_str()) {
            rows.push(&p.phase);
        }
    }
    let labels: Vec<&str> = std::iter::once(target).chain(bases.iter().map(String::as_str)).collect();
    let mut out = String::from("| phase | runs |");
    for l in &labels {
        out += &format!(" {l} median / p95 |");
    }
    for b in bases {
        out += &format!(" {target}/{b} |");
    }
    out += "\n|---|--:|";
    out += &"--:|".repeat(labels.len() + bases.len());
    out += "\n";
    for row in rows {
        let cells: Vec<Option<Pooled>> = labels.iter().map(|l| pooled(phases, l, row)).collect();
        let runs = cells.iter().flatten().map(|c| c.runs).max().unwrap_or(0);
        out += &format!("| {row} | {runs} |");
        for c in &cells {
            out += &match c {
                None => " not measured |".to_owned(),
                Some(c) if c.rounds > 1 => {
                    format!(" {} / {} (medians {}–{}) |", ms(c.p50), ms(c.p95), ms(c.round_min), ms(c.round_max))
                }
                Some(c) => format!(" {} / {} |", ms(c.p50), ms(c.p95)),
            };
        }
        for c in &cells[1..] {
            out += &match (&cells[0], c) {
                (Some(t), Some(b)) if b.p50 > 0 => format!(" {:.2}x |", t.p50 as f64 / b.p50 as f64),
                _ => " - |".to_owned(),
            };
        }
        out += "\n";
    }
    out
}

/// Milliseconds with one decimal; microseconds below 1 ms.
fn ms(us: u64) -> String {
    if us < 1000 { format!("{us} µs") } else { format!("{:.1} ms", us as f64 / 1000.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(target: &str, phase: &str, samples: &[u64]) -> Phase {
        let latencies: Vec<Duration> = samples.iter().map(|&us| Duration::from_micros(us)).collect();
        Phase::new(target, phase, 1, latencies.clone(), Duration::from_secs(1)).with_samples(&latencies)
    }

    #[test]
    fn pools_rounds_and_computes_ratios() {
        let phases = [
            line("a", "run", &[1000, 2000, 3000]),
            line("b", "run", &[4000, 4000, 4000]),
            line("a", "run", &[2000, 2000, 9000]),
        ];
        let table = render("a", &["b".into(), "c".into()], &phases);
        assert!(
            table.contains(
                "| run | 6 | 2.0 ms / 9.0 ms (medians 2.0 ms–2.0 ms) | 4.0 ms / 4.0 ms | not measured | 0.50x | - |"
            ),
            "{table}"
        );
    }
}

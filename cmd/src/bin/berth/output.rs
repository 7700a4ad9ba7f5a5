//! Printing: ctr-style aligned tables, JSON, and the value formats both share.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use anyhow::Context as _;
use serde::Serialize;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Writes to stdout, returning errors instead of panicking like `print!` does on a closed pipe.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).context("writing output")
}

/// JSON is built from small serde structs rather than `serde_json::Value`, whose map would
/// sort the fields alphabetically instead of keeping the proto messages' order.
pub fn emit_json(value: &impl Serialize) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("encoding JSON")?;
    text.push('\n');
    emit(&text)
}

pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
}

/// Aligns tab-separated cells like Go's text/tabwriter (flags 0, space padding), which ctr
/// uses: a column's width is set per block of consecutive lines that have a cell in it, so
/// ctr's multi-part layouts (`plugins ls -d`) come out the same. Trailing spaces are dropped.
pub fn tabwrite(text: &str, min_width: usize, padding: usize) -> String {
    // Each line's cells: all but the last were terminated by a tab and take part in alignment.
    let lines: Vec<Vec<&str>> = text.split_terminator('\n').map(|l| l.split('\t').collect()).collect();
    let mut out = vec![String::new(); lines.len()];
    let mut widths = Vec::new();
    format_block(&lines, &mut out, &mut widths, 0, lines.len(), min_width, padding);
    let mut text = String::new();
    for line in out {
        text.push_str(line.trim_end_matches(' '));
        text.push('\n');
    }
    text
}

fn width(cell: &str) -> usize {
    cell.chars().count()
}

/// The recursion of Go's tabwriter `format`: a block for column `widths.len()` starts at the
/// first line having a terminated cell there and ends before the first line that has none.
fn format_block(
    lines: &[Vec<&str>],
    out: &mut [String],
    widths: &mut Vec<usize>,
    mut start: usize,
    end: usize,
    min_width: usize,
    padding: usize,
) {
    let column = widths.len();
    let mut this = start;
    while this < end {
        if column + 1 >= lines[this].len() {
            this += 1;
            continue;
        }
        write_lines(lines, out, widths, start, this);
        start = this;
        let mut w = min_width;
        while this < end && column + 1 < lines[this].len() {
            w = w.max(width(lines[this][column]) + padding);
            this += 1;
        }
        widths.push(w);
        format_block(lines, out, widths, start, this, min_width, padding);
        widths.pop();
        start = this;
    }
    write_lines(lines, out, widths, start, end);
}

fn write_lines(lines: &[Vec<&str>], out: &mut [String], widths: &[usize], start: usize, end: usize) {
    for i in start..end {
        for (j, cell) in lines[i].iter().enumerate() {
            out[i].push_str(cell);
            if j + 1 < lines[i].len()
                && let Some(&w) = widths.get(j)
            {
                out[i].extend(std::iter::repeat_n(' ', w.saturating_sub(width(cell))));
            }
        }
    }
}

/// Builds the tab-separated text for a plain table (ctr terminates every cell with a tab);
/// tabs and newlines inside cells, e.g. in error messages, would break the layout.
pub fn table(header: &[&str], rows: &[Vec<String>], min_width: usize, padding: usize) -> String {
    let mut text = String::new();
    for cell in header {
        text.push_str(cell);
        text.push('\t');
    }
    text.push('\n');
    for row in rows {
        for cell in row {
            text.push_str(&cell.replace(['\t', '\n', '\r'], " "));
            text.push('\t');
        }
        text.push('\n');
    }
    tabwrite(&text, min_width, padding)
}

/// Labels as ctr prints them: `k=v` pairs, sorted, comma-joined.
pub fn labels_text(labels: &HashMap<String, String>) -> String {
    let mut pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join(",")
}

/// Labels for `label` commands: ctr's comma-joined line, nothing when there are none.
pub fn print_labels(format: Format, labels: &HashMap<String, String>) -> anyhow::Result<()> {
    match format {
        Format::Json => emit_json(&labels_json(labels)),
        Format::Table if labels.is_empty() => Ok(()),
        Format::Table => emit(&format!("{}\n", labels_text(labels))),
    }
}

/// Sorted, so label output is stable although the proto map is a HashMap.
pub fn labels_json(labels: &HashMap<String, String>) -> BTreeMap<&str, &str> {
    labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Timestamps as RFC 3339 in UTC with trailing zeros of the fraction cut, like Go's
/// RFC3339Nano that containerd's own tools print.
pub fn rfc3339(ts: &prost_types::Timestamp) -> String {
    let days = ts.seconds.div_euclid(86_400);
    let secs = ts.seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let mut text = format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}", secs / 3600, secs % 3600 / 60, secs % 60);
    let nanos = ts.nanos.clamp(0, 999_999_999);
    if nanos > 0 {
        text.push('.');
        text.push_str(format!("{nanos:09}").trim_end_matches('0'));
    }
    text.push('Z');
    text
}

pub fn timestamp_json(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    ts.map(rfc3339)
}

/// Howard Hinnant's days-to-civil algorithm: proleptic Gregorian date of a day count from 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Standard base64 with padding: how Go's encoding/json, and so ctr, prints an Any's bytes.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(chunk.get(1).copied().unwrap_or(0)) << 8)
            | u32::from(chunk.get(2).copied().unwrap_or(0));
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            text.push(if i <= chunk.len() { ALPHABET[(n >> shift) as usize & 63] as char } else { '=' });
        }
    }
    text
}

/// An Any the way ctr's JSON shows one: its type URL and base64 bytes, empty fields omitted.
#[derive(Serialize)]
pub struct AnyJson<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    type_url: &'a str,
    #[serde(skip_serializing_if = "String::is_empty")]
    value: String,
}

pub fn any_json(any: &prost_types::Any) -> AnyJson<'_> {
    AnyJson { type_url: &any.type_url, value: base64(&any.value) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let ts = |seconds, nanos| rfc3339(&prost_types::Timestamp { seconds, nanos });
        assert_eq!(ts(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(ts(951_782_400, 500_000_000), "2000-02-29T00:00:00.5Z");
        assert_eq!(ts(1_700_000_000, 123_456_789), "2023-11-14T22:13:20.123456789Z");
        assert_eq!(ts(-1, 0), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn base64_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn tables_align_like_tabwriter() {
        let rows = vec![vec!["default".to_string(), String::new()], vec!["x".to_string(), "a=b".to_string()]];
        assert_eq!(table(&["NAME", "LABELS"], &rows, 1, 1), "NAME    LABELS\ndefault\nx       a=b\n");
        // Column 1 is aligned separately in each block of lines that have it.
        let text = "Type:\t a\nExports:\t\n\t k \t v\n\t long key \t v\nID:\t b\n";
        assert_eq!(
            tabwrite(text, 4, 4),
            "Type:        a\nExports:\n             k             v\n             long key      v\nID:          b\n"
        );
    }
}

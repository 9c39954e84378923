//! The report as text for a terminal.

use std::fmt::Write;

use super::report::Report;

/// Findings listed in full; the rest are summarised (the JSON report has them all).
const LIST_LIMIT: usize = 200;

pub fn to_text(report: &Report) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = write_report(&mut out, report);
    out
}

fn write_report(out: &mut String, r: &Report) -> std::fmt::Result {
    writeln!(out, "source   {}", r.source)?;
    writeln!(out, "bytes    {}", r.bytes)?;
    if let Some(t) = &r.file_type {
        writeln!(out, "type     {t}")?;
    }
    if let Some(h) = &r.digests.sha256 {
        writeln!(out, "sha256   {h}")?;
    }
    if let Some(h) = &r.digests.blake3 {
        writeln!(out, "blake3   {h}")?;
    }
    let names: Vec<&str> = r.analyzers.iter().map(|a| a.as_str()).collect();
    writeln!(out, "analyzers {}", names.join(","))?;
    let c = r.counts;
    writeln!(
        out,
        "findings {} (critical {}, high {}, medium {}, low {}, info {})",
        r.findings.len(),
        c.critical,
        c.high,
        c.medium,
        c.low,
        c.info
    )?;
    if !r.findings.is_empty() {
        writeln!(out)?;
        writeln!(out, "{:<9} {:>12}  {:<32} message", "severity", "offset", "rule")?;
    }
    for f in r.findings.iter().take(LIST_LIMIT) {
        let rule = format!("{}/{}", f.analyzer, f.rule);
        write!(
            out,
            "{:<9} {:>12}  {:<32} {}",
            f.severity.as_str(),
            f.offset,
            rule,
            f.message
        )?;
        if !f.vulnerabilities.is_empty() {
            let ids: Vec<&str> = f.vulnerabilities.iter().map(|v| v.id.as_str()).collect();
            write!(out, " [{}]", ids.join(", "))?;
        }
        writeln!(out)?;
    }
    if r.findings.len() > LIST_LIMIT {
        writeln!(
            out,
            "... {} more findings (use --format json to see all)",
            r.findings.len() - LIST_LIMIT
        )?;
    }
    for (analyzer, n) in &r.dropped {
        writeln!(
            out,
            "note: {analyzer} reached its cap of {} findings; {n} more were not kept",
            r.finding_cap
        )?;
    }
    let mb_s = r.timings.bytes_per_second as f64 / 1e6;
    writeln!(out)?;
    writeln!(
        out,
        "scanned in {:.2} s ({mb_s:.0} MB/s)",
        r.timings.total_ms as f64 / 1000.0
    )?;
    Ok(())
}

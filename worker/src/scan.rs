//! `streamscan-worker scan`: the engine on one machine, with a progress display, the report in
//! the chosen format, optional progress events as JSON lines, and an exit code for CI.

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};
use streamscan_api::event::EventSequence;
use streamscan_api::names::reason;
use streamscan_api::{AnalyzerName, EventStatus, ProgressEvent, ResultSummary};

use streamscan_engine::analyzers::{AnalyzerConfig, build, model::ModelConfig};
use streamscan_engine::pipeline::{CancelToken, EngineError, Hooks, Options, Progress, Scan, ScanResult};
use streamscan_engine::report::Report;
use streamscan_engine::sink::DEFAULT_FINDING_CAP;
use streamscan_engine::{Analyzer, Severity, cyclonedx, sarif, text};

/// Exit code: no finding at or above `--fail-on`.
pub const EXIT_CLEAN: u8 = 0;
/// Exit code: findings at or above `--fail-on`.
pub const EXIT_FINDINGS: u8 = 1;
/// Exit code: usage or input error, or the scan failed.
pub const EXIT_ERROR: u8 = 2;
/// Exit code: interrupted (SIGINT), as shells report it.
pub const EXIT_INTERRUPTED: u8 = 130;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Json,
    Sarif,
    /// CycloneDX 1.5 JSON: the components found, their evidence and known vulnerabilities.
    Cyclonedx,
    Text,
}

#[derive(Args, Debug)]
pub struct ScanArgs {
    /// What to analyse: a file path, an http(s) URL, or - for standard input.
    pub input: String,
    /// Report format [default: text when standard output is a terminal, json otherwise].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Write the report to FILE instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Analyzers to run, comma-separated [default: all except model, plus model with --model-url].
    #[arg(long, value_delimiter = ',', value_parser = parse_analyzer)]
    pub analyzers: Option<Vec<AnalyzerName>>,
    /// OSV vulnerability database: a JSON file or a directory of them (repeatable).
    #[arg(long = "vuln-db", value_name = "PATH")]
    pub vuln_db: Vec<PathBuf>,
    /// Endpoint of the external model; enables the `model` analyzer.
    #[arg(long, value_name = "URL")]
    pub model_url: Option<String>,
    /// Write progress events (the Kafka JSON) as JSON lines to FILE, or - for standard output.
    #[arg(long, value_name = "FILE|-")]
    pub events: Option<String>,
    /// Exit with 1 when a finding has this severity or higher.
    #[arg(long, default_value = "high", value_parser = parse_severity)]
    pub fail_on: Severity,
    /// No progress display.
    #[arg(long, short)]
    pub quiet: bool,
    /// Findings kept per analyzer; more are counted as dropped.
    #[arg(long, default_value_t = DEFAULT_FINDING_CAP)]
    pub max_findings: usize,
    /// Bytes read per chunk.
    #[arg(long, default_value_t = 1 << 20, hide = true)]
    pub chunk_size: usize,
}

fn parse_analyzer(s: &str) -> Result<AnalyzerName, String> {
    AnalyzerName::ALL
        .into_iter()
        .find(|a| a.as_str() == s.trim())
        .ok_or_else(|| {
            let names: Vec<&str> = AnalyzerName::ALL.iter().map(|a| a.as_str()).collect();
            format!("unknown analyzer `{s}` (expected one of {})", names.join(", "))
        })
}

fn parse_severity(s: &str) -> Result<Severity, String> {
    s.parse()
}

/// An opened input and its length when known.
struct Input {
    reader: Box<dyn Read>,
    total: Option<u64>,
}

fn open_input(input: &str) -> Result<Input> {
    if input == "-" {
        return Ok(Input {
            reader: Box::new(std::io::stdin().lock()),
            total: None,
        });
    }
    if input.starts_with("http://") || input.starts_with("https://") {
        let client = reqwest::blocking::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(30))
            // A large download takes minutes; only connecting is bounded.
            .timeout(None)
            .build()
            .context("building the HTTP client")?;
        let response = client.get(input).send().with_context(|| format!("fetching {input}"))?;
        let status = response.status();
        if !status.is_success() {
            bail!("fetching {input}: the server answered {status}");
        }
        let total = response.content_length();
        return Ok(Input {
            reader: Box::new(response),
            total,
        });
    }
    if input.contains("://") {
        bail!("{input}: only http:// and https:// URLs are supported");
    }
    let file = File::open(input).with_context(|| format!("opening {input}"))?;
    let meta = file
        .metadata()
        .with_context(|| format!("reading the metadata of {input}"))?;
    if meta.is_dir() {
        bail!("{input} is a directory; give a file");
    }
    Ok(Input {
        total: meta.is_file().then_some(meta.len()),
        reader: Box::new(file),
    })
}

/// Writes progress events as JSON lines, numbering them without gaps.
struct EventWriter {
    out: Box<dyn Write>,
    events: EventSequence,
    last_progress: Option<(Instant, u64)>,
}

impl EventWriter {
    fn new(target: &str, input: &str, total: Option<u64>) -> Result<Self> {
        let out: Box<dyn Write> = if target == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(File::create(target).with_context(|| format!("creating the events file {target}"))?)
        };
        let user = std::env::var("USER").ok().filter(|u| !u.is_empty());
        let template = ProgressEvent {
            user_id: user.unwrap_or_else(|| "local".into()),
            event_id: uuid::Uuid::new_v4().to_string(),
            server_id: "local".into(),
            analyze_id: uuid::Uuid::new_v4().to_string(),
            name: input.to_owned(),
            total_bytes: total,
            timestamp: jiff::Timestamp::now(),
            ..ProgressEvent::default()
        };
        Ok(EventWriter {
            out,
            events: EventSequence::new(template, 0),
            last_progress: None,
        })
    }

    fn emit(&mut self, status: EventStatus, processed: u64, edit: impl FnOnce(&mut ProgressEvent)) -> Result<()> {
        let event = self.events.event(status, processed, edit);
        let line = serde_json::to_string(&event).context("encoding a progress event")?;
        writeln!(self.out, "{line}").context("writing a progress event")?;
        self.out.flush().context("writing a progress event")?;
        self.events.sent();
        Ok(())
    }

    /// CANCELLED or FAILED for a scan the engine ended with `e` after `processed` bytes.
    fn ended(&mut self, e: &EngineError, processed: u64) -> Result<()> {
        match e {
            EngineError::Cancelled { .. } => self.emit(EventStatus::Cancelled, processed, |ev| {
                ev.reason = Some("Interrupted".into());
                ev.message = Some("the scan was interrupted".into());
            }),
            other => {
                let reason = match other {
                    EngineError::Io { .. } => reason::SOURCE_READ_FAILED,
                    _ => reason::ANALYZER_FAILED,
                };
                self.emit(EventStatus::Failed, processed, |ev| {
                    ev.reason = Some(reason.into());
                    ev.message = Some(other.to_string());
                    ev.retriable = Some(other.is_retriable());
                })
            }
        }
    }

    /// COMPLETED, with the summary of the report as `rendered`.
    fn completed(&mut self, report: &Report, rendered: &[u8]) -> Result<()> {
        let summary = ResultSummary {
            bytes: i64::try_from(report.bytes).unwrap_or(i64::MAX),
            sha256: report.digests.sha256.clone(),
            findings: report.severity_counts(),
            report_digest: streamscan_engine::hex::encode(&Sha256::digest(rendered)),
            report_size: i64::try_from(rendered.len()).unwrap_or(i64::MAX),
            server_id: "local".into(),
        };
        self.emit(EventStatus::Completed, report.bytes, |e| {
            e.total_bytes = Some(report.bytes);
            e.result = Some(summary);
        })
    }

    /// PROGRESS at most twice a second, or every 10 % of a known total.
    fn progress(&mut self, p: Progress) -> Result<()> {
        let now = Instant::now();
        let due = match self.last_progress {
            None => true,
            Some((at, bytes)) => {
                let step = p.total.map(|t| t / 10).unwrap_or(u64::MAX).max(1);
                now.duration_since(at) >= Duration::from_millis(500) || p.processed.saturating_sub(bytes) >= step
            }
        };
        if due && p.processed > self.last_progress.map_or(0, |(_, b)| b) {
            self.last_progress = Some((now, p.processed));
            self.emit(EventStatus::Progress, p.processed, |e| e.total_bytes = p.total)?;
        }
        Ok(())
    }
}

/// The progress display on standard error.
enum Display {
    Quiet,
    Bar(ProgressBar),
    Lines { last: Option<Instant>, started: Instant },
}

impl Display {
    fn new(quiet: bool, total: Option<u64>) -> Self {
        if quiet {
            return Display::Quiet;
        }
        if !std::io::stderr().is_terminal() {
            return Display::Lines {
                last: None,
                started: Instant::now(),
            };
        }
        let bar = match total {
            Some(t) => ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr()),
            None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
        };
        let template = if total.is_some() {
            "{spinner} {elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} {percent}% {bytes_per_sec} ETA {eta}"
        } else {
            "{spinner} {elapsed_precise} {bytes} {bytes_per_sec}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        Display::Bar(bar)
    }

    fn update(&mut self, p: Progress) {
        match self {
            Display::Quiet => {}
            Display::Bar(bar) => bar.set_position(p.processed),
            Display::Lines { last, started } => {
                let now = Instant::now();
                // One line a second at most, the first after a second (short scans print none).
                if now.duration_since(last.unwrap_or(*started)) < Duration::from_secs(1) {
                    return;
                }
                *last = Some(now);
                let secs = now.duration_since(*started).as_secs_f64().max(1e-3);
                let rate = p.processed as f64 / secs / 1e6;
                match p.total {
                    Some(t) if t > 0 => eprintln!(
                        "progress: {} / {t} bytes ({:.1}%), {rate:.1} MB/s",
                        p.processed,
                        p.processed as f64 * 100.0 / t as f64
                    ),
                    _ => eprintln!("progress: {} bytes, {rate:.1} MB/s", p.processed),
                }
            }
        }
    }

    fn finish(&mut self) {
        if let Display::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

fn selected_analyzers(args: &ScanArgs) -> Vec<AnalyzerName> {
    match &args.analyzers {
        Some(list) => {
            let mut names = list.clone();
            names.sort();
            names.dedup();
            names
        }
        None => AnalyzerName::ALL
            .into_iter()
            .filter(|a| *a != AnalyzerName::Model || args.model_url.is_some())
            .collect(),
    }
}

fn render(report: &Report, format: Format) -> Result<Vec<u8>> {
    Ok(match format {
        Format::Json => {
            let mut v = serde_json::to_vec_pretty(report).context("encoding the report")?;
            v.push(b'\n');
            v
        }
        Format::Sarif => {
            let mut v = serde_json::to_vec_pretty(&sarif::to_sarif(report)).context("encoding the SARIF log")?;
            v.push(b'\n');
            v
        }
        Format::Cyclonedx => {
            let mut v = serde_json::to_vec_pretty(&cyclonedx::to_cyclonedx(report)).context("encoding the SBOM")?;
            v.push(b'\n');
            v
        }
        Format::Text => text::to_text(report).into_bytes(),
    })
}

/// Runs `scan` and returns the process exit code; errors are usage or input errors (exit 2).
pub fn run(args: ScanArgs) -> Result<ExitCode> {
    check_args(&args)?;
    let analyzers = analyzers(&args)?;
    let input = open_input(&args.input)?;
    let format = report_format(&args);
    let options = Options {
        chunk_size: args.chunk_size,
        finding_cap: args.max_findings,
        total: input.total,
        ..Options::default()
    };
    let scan = Scan::new(analyzers, options).context("setting up the scan")?;
    let cancel = CancelToken::new();
    cancel_on_ctrl_c(&cancel);

    let mut events = match &args.events {
        Some(target) => Some(EventWriter::new(target, &args.input, input.total)?),
        None => None,
    };
    if let Some(ev) = &mut events {
        ev.emit(EventStatus::Started, 0, |_| {})?;
    }
    let mut display = Display::new(args.quiet, input.total);
    let started_at = jiff::Timestamp::now();
    let (outcome, last_processed) = scan_with_progress(scan, input.reader, &mut display, events.as_mut(), cancel)?;
    let result = match outcome {
        Ok(result) => result,
        Err(e) => return scan_failed(e, last_processed, events.as_mut(), &args.input),
    };

    let report = Report::new(result, args.input.clone(), started_at, args.max_findings);
    let rendered = render(&report, format)?;
    write_report(args.output.as_deref(), &rendered)?;
    if let Some(ev) = &mut events {
        ev.completed(&report, &rendered)?;
    }
    Ok(exit_code(&report, args.fail_on, args.quiet))
}

/// The checks clap cannot make on the flags.
fn check_args(args: &ScanArgs) -> Result<()> {
    if args.events.as_deref() == Some("-") && args.output.is_none() {
        bail!("--events - and the report would both go to standard output; add --output FILE");
    }
    if args.chunk_size == 0 {
        bail!("--chunk-size must be positive");
    }
    Ok(())
}

/// Builds the analyzers `--analyzers` selects (all by default).
fn analyzers(args: &ScanArgs) -> Result<Vec<Box<dyn Analyzer>>> {
    let names = selected_analyzers(args);
    if names.is_empty() {
        bail!("--analyzers selects no analyzer");
    }
    let config = AnalyzerConfig {
        vuln_db: args.vuln_db.clone(),
        model: args.model_url.clone().map(|endpoint| ModelConfig { endpoint }),
    };
    names
        .iter()
        .map(|&n| build(n, &config))
        .collect::<Result<Vec<_>, _>>()
        .context("setting up the analyzers")
}

/// `--format`, else text for a person at a terminal and JSON for everything else.
fn report_format(args: &ScanArgs) -> Format {
    args.format
        .unwrap_or(if args.output.is_none() && std::io::stdout().is_terminal() {
            Format::Text
        } else {
            Format::Json
        })
}

fn cancel_on_ctrl_c(cancel: &CancelToken) {
    let cancel = cancel.clone();
    // Without a handler SIGINT still stops the process, just without a CANCELLED event.
    if let Err(e) = ctrlc::set_handler(move || cancel.cancel()) {
        tracing::warn!("cannot handle Ctrl-C: {e}");
    }
}

/// Runs the scan, showing its progress and writing PROGRESS events; returns the engine's answer
/// and the last byte count it reported. Fails when the events could not be written.
fn scan_with_progress(
    scan: Scan,
    reader: Box<dyn Read>,
    display: &mut Display,
    mut events: Option<&mut EventWriter>,
    cancel: CancelToken,
) -> Result<(Result<ScanResult, EngineError>, u64)> {
    let mut last_processed = 0u64;
    let mut event_error: Option<anyhow::Error> = None;
    let hooks = Hooks {
        progress: Some(Box::new(|p: Progress| {
            last_processed = p.processed;
            display.update(p);
            if let Some(ev) = events.as_deref_mut()
                && let Err(e) = ev.progress(p)
            {
                // A broken events file should not kill the scan mid-way; it fails it at the end.
                event_error.get_or_insert(e);
            }
        })),
        checkpoint: None,
        cancel,
    };
    let outcome = scan.run(reader, hooks);
    display.finish();
    match event_error {
        Some(e) => Err(e),
        None => Ok((outcome, last_processed)),
    }
}

/// Reports a scan that did not finish: the CANCELLED or FAILED event, then exit 130 when
/// interrupted, else the error.
fn scan_failed(e: EngineError, last_processed: u64, events: Option<&mut EventWriter>, input: &str) -> Result<ExitCode> {
    let processed = match &e {
        EngineError::Cancelled { processed } => *processed,
        _ => last_processed,
    };
    if let Some(ev) = events {
        ev.ended(&e, processed)?;
    }
    if matches!(e, EngineError::Cancelled { .. }) {
        eprintln!("streamscan: interrupted after {processed} bytes");
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    Err(anyhow::Error::new(e).context(format!("scanning {input}")))
}

fn write_report(output: Option<&Path>, rendered: &[u8]) -> Result<()> {
    match output {
        Some(path) => std::fs::write(path, rendered).with_context(|| format!("writing {}", path.display()))?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(rendered).context("writing the report")?;
            out.flush().context("writing the report")?;
        }
    }
    Ok(())
}

/// 1 when a finding is at or above `fail_on` (saying so unless quiet), else 0.
fn exit_code(report: &Report, fail_on: Severity, quiet: bool) -> ExitCode {
    let failing = report.count_at_least(fail_on);
    if failing == 0 {
        return ExitCode::from(EXIT_CLEAN);
    }
    if !quiet {
        eprintln!("streamscan: {failing} finding(s) at or above {fail_on} (exit {EXIT_FINDINGS})");
    }
    ExitCode::from(EXIT_FINDINGS)
}

//! `streamscan-bench`: throughput and peak memory of the engine on a generated 1 GiB file, beside
//! `openssl dgst -sha256`, `sha256sum` and `rg` on the same file in the same run.
//!
//! Run it in release mode: `cargo run --release -p streamscan-worker --bin streamscan-bench`.
//! Each engine measurement runs in a child process (this binary with `--child`) so its peak RSS
//! (VmHWM) is its own. The memory test scans 1 GiB and 4 GiB (the same file read four times in
//! a row) and fails (exit 1) when their peak RSS differ by 10 % or more.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use streamscan_api::AnalyzerName;
use streamscan_engine::analyzers::{AnalyzerConfig, build};
use streamscan_engine::pipeline::{Hooks, Options, Scan};

const GIB: u64 = 1 << 30;

/// The literal keywords the secret rules are gated by: what `rg` searches for.
const LITERALS: [&str; 20] = [
    "-----BEGIN ",
    "AIza",
    "AKIA",
    "ASIA",
    "AWS_SECRET_ACCESS_KEY",
    "AccountKey=",
    "PASSWORD",
    "Password",
    "password",
    "aws_secret_access_key",
    "eyJ",
    "gho_",
    "ghp_",
    "ghs_",
    "github_pat_",
    "glpat-",
    "hooks.slack.com/",
    "npm_",
    "sk_live_",
    "xoxb-",
];

/// Planted every few MiB among the text blocks.
const PLANTS: [&str; 8] = [
    "AKIAIOSFODNN7EXAMPLQ ",
    "https://update.example.com/firmware/v2/get?id=1 ",
    "OpenSSL 1.0.1f 6 Jan 2014 ",
    "BusyBox v1.21.1 (2014-01-01) ",
    "contact admin@example.com from 10.1.2.3 ",
    "password = hunter2hunter2 ",
    "ghp_abcdefghijklmnopqrstuvwxyz0123456789 ",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n-----END RSA PRIVATE KEY-----\n",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A firmware-like mix in 1 MiB blocks: 40 % random (compressed/encrypted), 45 % text with
/// planted secrets, URLs and version strings, 10 % machine-code-like bytes, 5 % zeros.
fn generate(path: &Path, size: u64) -> Result<()> {
    const WORDS: [&str; 10] = [
        "config", "kernel", "module", "value", "entry", "table", "init", "eth0", "root", "boot",
    ];
    let mut out = BufWriter::with_capacity(
        1 << 20,
        File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut rng = Rng(1);
    let mut block = vec![0u8; 1 << 20];
    let mut written = 0;
    while written < size {
        let kind = rng.next() % 20;
        match kind {
            0..=7 => {
                for c in block.chunks_mut(8) {
                    c.copy_from_slice(&rng.next().to_le_bytes()[..c.len()]);
                }
            }
            8..=16 => {
                let mut pos = 0;
                let mut n = 0u64;
                while pos < block.len() {
                    n += 1;
                    let word: &[u8] = if n.is_multiple_of(4000) {
                        PLANTS[(rng.next() % PLANTS.len() as u64) as usize].as_bytes()
                    } else {
                        WORDS[(rng.next() % WORDS.len() as u64) as usize].as_bytes()
                    };
                    let take = word.len().min(block.len() - pos);
                    block[pos..pos + take].copy_from_slice(&word[..take]);
                    pos += take;
                    if pos < block.len() {
                        block[pos] = if n.is_multiple_of(11) { b'\n' } else { b' ' };
                        pos += 1;
                    }
                }
            }
            17..=18 => {
                // Skewed bytes, roughly the entropy of machine code.
                for b in block.iter_mut() {
                    let r = rng.next();
                    *b = if r.is_multiple_of(4) {
                        (r >> 8) as u8
                    } else {
                        [0x48, 0x89, 0x8b, 0xe8, 0x00, 0xff][(r >> 16) as usize % 6]
                    };
                }
            }
            _ => block.fill(0),
        }
        let take = (size - written).min(block.len() as u64) as usize;
        out.write_all(&block[..take]).context("writing the bench file")?;
        written += take as u64;
    }
    out.flush().context("writing the bench file")?;
    Ok(())
}

fn vm_hwm_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Child: scan `path` `repeat` times in a row as one stream; print `bytes secs vmhwm_kb`.
fn child(names: &str, path: &Path, repeat: u32) -> Result<()> {
    let config = AnalyzerConfig::default();
    let mut analyzers = Vec::new();
    for name in names.split(',') {
        let n = AnalyzerName::ALL
            .into_iter()
            .find(|a| a.as_str() == name)
            .with_context(|| format!("unknown analyzer {name}"))?;
        analyzers.push(build(n, &config).with_context(|| format!("building {name}"))?);
    }
    let mut reader: Box<dyn Read> = Box::new(std::io::empty());
    for _ in 0..repeat {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        reader = Box::new(reader.chain(file));
    }
    let started = Instant::now();
    let result = Scan::new(analyzers, Options::default())
        .and_then(|s| s.run(reader, Hooks::default()))
        .context("scanning")?;
    let secs = started.elapsed().as_secs_f64();
    println!("{} {secs} {}", result.bytes, vm_hwm_kb());
    Ok(())
}

struct Measure {
    mb_s: f64,
    rss_mb: Option<f64>,
}

fn run_child(names: &str, path: &Path, repeat: u32) -> Result<Measure> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let out = Command::new(exe)
        .args(["--child", names])
        .arg(path)
        .arg(repeat.to_string())
        .stderr(Stdio::inherit())
        .output()
        .context("running a measurement")?;
    if !out.status.success() {
        bail!("measurement of {names} failed");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<f64> = text.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    let [bytes, secs, kb] = fields[..] else {
        bail!("unexpected child output: {text}");
    };
    Ok(Measure {
        mb_s: bytes / secs / 1e6,
        rss_mb: Some(kb / 1024.0),
    })
}

/// Runs an external tool over the file; `None` when it is not installed.
fn run_tool(program: &str, args: &[&str], path: &Path, size: u64) -> Option<Measure> {
    let started = Instant::now();
    let status = Command::new(program)
        .args(args)
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    // rg exits 1 when nothing matches; anything else above 1 is a failure.
    if status.code().is_none_or(|c| c > 1) {
        return None;
    }
    Some(Measure {
        mb_s: size as f64 / started.elapsed().as_secs_f64() / 1e6,
        rss_mb: None,
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = if args.first().map(String::as_str) == Some("--child") {
        match &args[1..] {
            [names, path, repeat] => repeat
                .parse()
                .context("repeat count")
                .and_then(|r| child(names, Path::new(path), r))
                .map(|()| true),
            _ => Err(anyhow::anyhow!("usage: --child ANALYZERS PATH REPEAT")),
        }
    } else {
        bench(&args)
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn bench(args: &[String]) -> Result<bool> {
    let dir_arg = args
        .iter()
        .position(|a| a == "--dir")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let dir = dir_arg.unwrap_or_else(|| std::env::temp_dir().join(format!("streamscan-bench-{}", std::process::id())));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("bench-1gib.bin");
    let outcome = measure(&path);
    // The 1 GiB file is not worth keeping.
    let _ = std::fs::remove_file(&path);
    outcome
}

fn measure(path: &Path) -> Result<bool> {
    let path = path.to_path_buf();
    eprintln!("generating {} ...", path.display());
    generate(&path, GIB)?;
    // Warm the page cache so every reader below sees the same (cached) file.
    let _ = run_tool("cat", &[], &path, GIB);

    let openssl = run_tool("openssl", &["dgst", "-sha256"], &path, GIB);
    let sha256sum = run_tool("sha256sum", &[], &path, GIB);
    let mut rg_args = vec!["--no-mmap", "-a", "-F", "--count-matches"];
    for l in &LITERALS {
        rg_args.push("-e");
        rg_args.push(l);
    }
    let rg = run_tool("rg", &rg_args, &path, GIB);

    let default_set = "digest,filetype,entropy,secrets,iocs,components";
    let rows = [
        "digest",
        "filetype",
        "entropy",
        "secrets",
        "iocs",
        "components",
        default_set,
    ];
    let fmt_ratio = |ours: f64, tool: &Option<Measure>| match tool {
        Some(t) => format!("{:.2}", ours / t.mb_s),
        None => "n/a".into(),
    };
    println!();
    println!(
        "1 GiB generated file, page cache, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| measurement | MB/s | peak RSS MB | vs openssl | vs sha256sum | vs rg (20 literals) |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for names in rows {
        let m = run_child(names, &path, 1)?;
        let label = if names == default_set {
            "default set (all but model)"
        } else {
            names
        };
        println!(
            "| {label} | {:.0} | {:.1} | {} | {} | {} |",
            m.mb_s,
            m.rss_mb.unwrap_or(0.0),
            fmt_ratio(m.mb_s, &openssl),
            fmt_ratio(m.mb_s, &sha256sum),
            fmt_ratio(m.mb_s, &rg),
        );
    }
    for (name, tool) in [
        ("openssl dgst -sha256", &openssl),
        ("sha256sum", &sha256sum),
        ("rg -F 20 literals --no-mmap", &rg),
    ] {
        match tool {
            Some(t) => println!("| {name} | {:.0} | | | | |", t.mb_s),
            None => println!("| {name} | not installed | | | | |"),
        }
    }

    let one = run_child(default_set, &path, 1)?;
    let four = run_child(default_set, &path, 4)?;
    let (a, b) = (one.rss_mb.unwrap_or(0.0), four.rss_mb.unwrap_or(0.0));
    let diff = (b - a).abs() / a.max(1e-9) * 100.0;
    println!();
    println!("memory: default set peak RSS 1 GiB {a:.1} MB, 4 GiB {b:.1} MB, difference {diff:.1} % (limit 10 %)");
    Ok(diff < 10.0)
}

//! The memtrace command line.

use std::{
    ffi::OsString, fs::File, io::Write as _, path::PathBuf, process::ExitCode, time::Duration,
};

use anyhow::Context as _;
use clap::{ArgGroup, Parser};
use memtrace::{
    bpf::DEFAULT_RING_BYTES,
    error::{exit_code, Error},
    session::{self, Mode, SessionOptions, TargetSpec},
};

/// Trace the heap allocations of a Go process with eBPF: which call sites allocate, which
/// objects never die, which sites leak. No restart, no code change, no pprof endpoint.
#[derive(Parser, Debug)]
#[command(
    name = "memtrace",
    version,
    group(ArgGroup::new("target").required(true).args(["pid", "command"])),
    after_long_help = "EXAMPLES:\n  sudo memtrace --pid 1234                 trace a running Go process until Ctrl-C\n  sudo memtrace --pid 1234 -d 30s --json report.json\n  sudo memtrace -- ./server --flag         start a program under tracing\n\nEXIT CODES:\n  launch mode: the target's own exit code (128+N if killed by signal N)\n  1 failure  2 usage  3 no such process  4 not a Go program  5 unsupported Go version\n  6 permission denied  7 corrupt trace file  8 eBPF unavailable  9 cannot start the command\n  10 --read-only on a program that does not sample"
)]
struct Cli {
    /// Attach to this running process.
    #[arg(short, long, help_heading = "Target")]
    pid: Option<u32>,

    /// Start this command under tracing (after `--`); it keeps its stdin, stdout, stderr and
    /// environment, and memtrace exits with its exit code.
    #[arg(last = true, value_name = "COMMAND", help_heading = "Target")]
    command: Vec<OsString>,

    /// Stop after this long (e.g. 30s, 5m, 1h); default: until Ctrl-C or the target exits.
    #[arg(short, long, value_parser = parse_duration, help_heading = "Tracing")]
    duration: Option<Duration>,

    /// Count every allocation in the kernel (exact totals) and sample stacks, instead of
    /// riding on the runtime's heap profiler. Costs a uprobe trap per allocation.
    #[arg(long, help_heading = "Tracing")]
    all_allocs: bool,

    /// Sampled mode (default): the heap profiler's average bytes between samples, written into
    /// the target's runtime.MemProfileRate and restored when memtrace detaches. Default: the
    /// target's own rate if it already samples, else 512K.
    #[arg(long, value_parser = parse_bytes, value_name = "BYTES", help_heading = "Tracing")]
    sample_rate: Option<u64>,

    /// Sampled mode: never write into the target (only programs that already sample, e.g.
    /// with net/http/pprof linked, can then be traced).
    #[arg(long, help_heading = "Tracing")]
    read_only: bool,

    /// With --all-allocs: mean bytes allocated between two stack samples (e.g. 64K, 1M).
    /// Smaller means more precise per-site numbers and more overhead.
    #[arg(long, default_value = "64K", value_parser = parse_bytes, value_name = "BYTES", help_heading = "Tracing")]
    stack_sample_bytes: u64,

    /// Do not track goroutines (creations, exits, states, goroutine leaks): saves a probe hit
    /// per goroutine in programs that start many.
    #[arg(long, help_heading = "Tracing")]
    no_goroutines: bool,

    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    json: Option<PathBuf>,

    /// Sampled mode: write every sampled object whose death was seen to this CSV file
    /// (address, site, size, GC cycles of allocation and death, lifetime).
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    lifetimes: Option<PathBuf>,

    /// Sites shown in the live view and the text report.
    #[arg(long, default_value_t = 15, help_heading = "Output")]
    top: usize,

    /// Live view refresh interval.
    #[arg(long, default_value = "1s", value_parser = parse_duration, help_heading = "Output")]
    interval: Duration,

    /// No live view (it is only drawn when stderr is a terminal anyway).
    #[arg(long, help_heading = "Output")]
    no_live: bool,

    /// Ring-buffer size; raise it if the report shows dropped events.
    #[arg(long, default_value = "16M", value_parser = parse_bytes, value_name = "BYTES", help_heading = "Advanced")]
    ring_buffer: u64,

    /// Benchmarking: attach probes that do nothing on the same instructions, to measure the
    /// kernel's trap cost alone.
    #[arg(long, help_heading = "Advanced")]
    probe_floor: bool,

    /// Log what memtrace does (-v info, -vv debug with the probes' diagnostics, -vvv also
    /// the eBPF loader's).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("not a duration: {text:?}"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(format!("duration must be positive: {text:?}"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("not a size: {text:?}"))?;
    let multiplier: u64 = match unit
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return Err(format!("unknown unit {unit:?} (use K, M or G)")),
    };
    value
        .checked_mul(multiplier)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("size out of range: {text:?}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::new()
        .filter_level(match cli.verbose {
            0 => log::LevelFilter::Warn,
            1 => log::LevelFilter::Info,
            _ => log::LevelFilter::Debug,
        })
        // aya's own loader chatter only from -vvv on.
        .filter_module(
            "aya",
            if cli.verbose >= 3 {
                log::LevelFilter::Debug
            } else {
                log::LevelFilter::Info
            },
        )
        .filter_module(
            "aya_obj",
            if cli.verbose >= 3 {
                log::LevelFilter::Debug
            } else {
                log::LevelFilter::Info
            },
        )
        .format_target(false)
        .init();
    match run(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(error) => {
            let code = error
                .downcast_ref::<Error>()
                .map_or(exit_code::FAILURE, Error::exit_code);
            eprintln!("memtrace: {error:#}");
            ExitCode::from(code as u8)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let target = match cli.pid {
        Some(pid) => TargetSpec::Pid(pid),
        None => TargetSpec::Launch(cli.command.clone()),
    };
    let launched = matches!(target, TargetSpec::Launch(_));
    let ring_bytes = u32::try_from(cli.ring_buffer.next_power_of_two())
        .ok()
        .filter(|&size| size >= 4096)
        .unwrap_or(DEFAULT_RING_BYTES);
    let outcome = session::run(SessionOptions {
        target,
        duration: cli.duration,
        mode: if cli.probe_floor {
            Mode::ProbeFloor
        } else if cli.all_allocs {
            Mode::AllAllocs {
                stack_sample_bytes: cli.stack_sample_bytes,
            }
        } else {
            Mode::Sampled {
                rate: cli.sample_rate,
                read_only: cli.read_only,
            }
        },
        keep_deaths: cli.lifetimes.is_some(),
        goroutines: !cli.no_goroutines,
        live: !cli.no_live,
        live_interval: cli.interval,
        top: cli.top,
        ring_bytes,
    })?;
    let text = outcome.report.to_text(cli.top);
    // Launch mode keeps the target's stdout its own: the report goes to stderr.
    if launched {
        eprint!("{text}");
    } else {
        print!("{text}");
        std::io::stdout().flush().ok();
    }
    if let Some(path) = &cli.json {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        outcome
            .report
            .write_json(std::io::BufWriter::new(file))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &cli.lifetimes {
        write_lifetimes(path, &outcome.analysis)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(outcome.target_exit.map_or(0, |exit| exit.shell_code()))
}

/// The paired deaths as CSV.
fn write_lifetimes(
    path: &std::path::Path,
    analysis: &memtrace::analysis::Analysis,
) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(File::create(path)?);
    writeln!(
        out,
        "address,function,file,line,size,alloc_cycle,death_cycle,lifetime_ms"
    )?;
    for death in analysis.deaths() {
        let site = &analysis.sites()[death.site as usize].key;
        writeln!(
            out,
            "0x{:x},{},{},{},{},{},{},{}",
            death.ptr,
            site.function,
            site.file,
            site.line,
            death.size,
            death.alloc_cycle,
            death.death_cycle,
            death.lifetime_ms
        )?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_and_sizes() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_bytes("64K"), Ok(65536));
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("12Q").is_err());
        assert!(parse_bytes("0").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

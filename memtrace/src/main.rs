//! The memtrace command line: trace live (the default), `record` a trace file, `report` on one
//! later, `diff` two.

use std::{
    ffi::OsString,
    fs::File,
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context as _;
use clap::{ArgGroup, Args, Parser, Subcommand};
use memtrace::{
    analysis::Analysis,
    bpf::DEFAULT_RING_BYTES,
    diff::{self, Gate},
    error::{exit_code, Error},
    export::{self, Metric, Profile},
    report::{human_bytes, Report},
    session::{self, Mode, SessionOptions, TargetSpec},
    trace::{
        replay::{replay, Replay, ReplayOptions},
        writer::Recorder,
        TraceError,
    },
};

const EXAMPLES: &str = "EXAMPLES:
  sudo memtrace --pid 1234                       trace a running Go process until Ctrl-C
  sudo memtrace --pid 1234 -d 30s --json report.json --html report.html
  sudo memtrace -- ./server --flag               start a program under tracing
  sudo memtrace record --pid 1234 -d 10m -o api.mtr
  memtrace report api.mtr --pprof heap.pb.gz     post-mortem, on any machine, no root
  memtrace diff base.mtr head.mtr --fail-on-new-leaks
  sudo memtrace agent                            every Go process on this machine, served on
                                                 http://127.0.0.1:9464 (/metrics, /api/targets,
                                                 /api/report?pid=, /debug/pprof/heap?pid=)

EXIT CODES:
  launch mode: the target's own exit code (128+N if killed by signal N)
  1 failure  2 usage  3 no such process  4 not a Go program  5 unsupported Go version
  6 permission denied  7 corrupt or unfinished trace file  8 eBPF unavailable
  9 cannot start the command  10 --read-only on a program that does not sample
  11 diff: a gate threshold was exceeded  12 agent: cannot listen on the address";

/// Trace the heap allocations of a Go process with eBPF: which call sites allocate, which
/// objects never die, which sites leak, which goroutines pile up. No restart, no code change,
/// no pprof endpoint.
#[derive(Parser, Debug)]
#[command(
    name = "memtrace",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    group(ArgGroup::new("target").required(true).args(["pid", "command"])),
    after_long_help = EXAMPLES
)]
struct Cli {
    #[command(subcommand)]
    subcommand: Option<Subcommands>,

    #[command(flatten)]
    trace: TraceArgs,

    #[command(flatten)]
    output: OutputArgs,

    /// Log what memtrace does (-v info, -vv debug with the probes' diagnostics, -vvv also
    /// the eBPF loader's).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
}

#[derive(Subcommand, Debug)]
enum Subcommands {
    /// Trace like `memtrace` does and write everything seen to a trace file, for `report` and
    /// `diff` later, on any machine.
    #[command(group(ArgGroup::new("target").required(true).args(["pid", "command"])), after_long_help = EXAMPLES)]
    Record(RecordArgs),
    /// Print the report of a trace file (and export it), as the live session would have.
    /// Needs neither root nor the traced program or its binary.
    #[command(after_long_help = EXAMPLES)]
    Report(ReportArgs),
    /// Compare two recordings (or JSON reports): sites whose live bytes, allocation rate or
    /// lifetimes changed, new leaks, goroutine groups that grew. With a gate option it fails
    /// (exit code 11) when a threshold is exceeded: a memory regression gate for CI.
    #[command(after_long_help = EXAMPLES)]
    Diff(DiffArgs),
    /// Trace every Go process on this machine (new ones as they start) and serve Prometheus
    /// metrics, pprof profiles and JSON reports over HTTP: the node agent a Kubernetes
    /// DaemonSet runs (see deploy/).
    #[command(after_long_help = AGENT_HELP)]
    Agent(AgentArgs),
}

const AGENT_HELP: &str = "ENDPOINTS:
  /metrics                       Prometheus text format (per process, per site, the agent's own)
  /api/targets                   the traced processes: pid, exe, container, pod, sample rate
  /api/report?pid=PID            the JSON report (the same as `memtrace --json`)
  /debug/pprof/heap?pid=PID      gzipped pprof (inuse_space first), for go tool pprof, Parca, Pyroscope
  /debug/pprof/allocs?pid=PID    the same profile, alloc_space first
  /healthz, /readyz              alive; ready once running processes were looked at

FILTERS (--include, --exclude; repeatable; glob patterns with * and ?):
  NAME or exe=NAME               executable file name or path
  container=ID                   container id (12 characters or more match as a prefix)
  pod-uid=UID, namespace=NS, pod=NS/NAME
                                 Kubernetes pods; name and namespace are read from the pod's
                                 /etc/hostname and service-account files when present

EXAMPLES:
  sudo memtrace agent --exclude 'namespace=kube-system'
  sudo memtrace agent --listen 0.0.0.0:9464 --record-dir /var/lib/memtrace --record-max-bytes 1G
  go tool pprof -top 'http://127.0.0.1:9464/debug/pprof/heap?pid=1234'";

#[derive(Args, Debug)]
struct AgentArgs {
    /// Address of the HTTP listener.
    #[arg(long, default_value = "127.0.0.1:9464", value_name = "ADDR:PORT")]
    listen: String,

    /// Trace only processes matching FILTER (repeatable; any one must match).
    #[arg(long, value_name = "FILTER")]
    include: Vec<memtrace::agent::filter::Filter>,

    /// Do not trace processes matching FILTER (repeatable).
    #[arg(long, value_name = "FILTER")]
    exclude: Vec<memtrace::agent::filter::Filter>,

    /// Heap profiler rate for processes that do not sample on their own.
    #[arg(long, value_parser = parse_bytes, value_name = "BYTES", help_heading = "Tracing")]
    rate: Option<u64>,

    /// Do not track goroutines.
    #[arg(long, help_heading = "Tracing")]
    no_goroutines: bool,

    /// How often each process's goroutines are scanned.
    #[arg(long, default_value = "2s", value_parser = parse_duration, help_heading = "Tracing")]
    scan_interval: Duration,

    /// Most events per second one process may send; above it memtrace raises that process's
    /// sample rate (and turns goroutine creation records off if they are the flood).
    #[arg(
        long,
        default_value_t = 2000,
        value_name = "N",
        help_heading = "Budget"
    )]
    max_events_per_process: u64,

    /// Most events per second for the whole node, shared fairly among the processes.
    #[arg(
        long,
        default_value_t = 20000,
        value_name = "N",
        help_heading = "Budget"
    )]
    max_events: u64,

    /// Most processes traced at once.
    #[arg(long, default_value_t = 512, value_name = "N", help_heading = "Budget")]
    max_targets: usize,

    /// Record every traced process into rolling trace files in DIR.
    #[arg(long, value_name = "DIR", help_heading = "Recording")]
    record_dir: Option<PathBuf>,

    /// Size budget of --record-dir; the oldest finished files are deleted first.
    #[arg(long, default_value = "1G", value_parser = parse_bytes, value_name = "BYTES", help_heading = "Recording")]
    record_max_bytes: u64,

    /// Allocation sites (and leak suspects) per process in /metrics.
    #[arg(long, default_value_t = 10, value_name = "N", help_heading = "Output")]
    metrics_top_sites: usize,

    /// Sites and goroutine groups in /api/report.
    #[arg(long, default_value_t = 20, value_name = "N", help_heading = "Output")]
    top: usize,

    /// Ring-buffer size shared by all processes (kernel memory, charged to memtrace). The
    /// budget's 20,000 events/s fill about 2 MiB between two reads.
    #[arg(long, default_value = "8M", value_parser = parse_bytes, value_name = "BYTES", help_heading = "Advanced")]
    ring_buffer: u64,
}

#[derive(Args, Debug)]
struct RecordArgs {
    /// The trace file to write (created with mode 0600).
    #[arg(short, long, value_name = "FILE", help_heading = "Output")]
    output: PathBuf,

    #[command(flatten)]
    trace: TraceArgs,

    #[command(flatten)]
    exports: OutputArgs,
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// A trace file written by `memtrace record`.
    #[arg(value_name = "FILE")]
    trace_file: PathBuf,

    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args, Debug)]
struct DiffArgs {
    /// The recording to compare against (a trace file, or a report from --json).
    #[arg(value_name = "BASE")]
    base: PathBuf,

    /// The new recording.
    #[arg(value_name = "HEAD")]
    head: PathBuf,

    /// Gate: fail when head has a leak suspect or goroutine leak that base does not.
    #[arg(long, help_heading = "Gate")]
    fail_on_new_leaks: bool,

    /// Gate: fail when a site's live bytes grew by more than this (significant changes only).
    #[arg(long, value_parser = parse_bytes, value_name = "BYTES", help_heading = "Gate")]
    max_live_growth: Option<u64>,

    /// Gate: fail when a site's allocation rate (bytes/s) grew by more than this many percent
    /// (significant changes only).
    #[arg(long, value_name = "PERCENT", help_heading = "Gate")]
    max_alloc_rate_increase: Option<f64>,

    /// Gate: fail when a goroutine group, or the live goroutines, grew by more than this.
    #[arg(long, value_name = "COUNT", help_heading = "Gate")]
    max_goroutine_growth: Option<u64>,

    /// Write the comparison as JSON to this file.
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    json: Option<PathBuf>,

    /// Changes listed per section.
    #[arg(long, default_value_t = 15, help_heading = "Output")]
    top: usize,
}

/// Who to trace and how.
#[derive(Args, Debug)]
struct TraceArgs {
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

    /// Live view (progress line with `record`) refresh interval.
    #[arg(long, default_value = "1s", value_parser = parse_duration, help_heading = "Output")]
    interval: Duration,

    /// No live view or progress line (the live view is only drawn when stderr is a terminal
    /// anyway).
    #[arg(long, help_heading = "Output")]
    no_live: bool,

    /// Ring-buffer size; raise it if the report shows dropped events.
    #[arg(long, default_value = "16M", value_parser = parse_bytes, value_name = "BYTES", help_heading = "Advanced")]
    ring_buffer: u64,

    /// Benchmarking: attach probes that do nothing on the same instructions, to measure the
    /// kernel's trap cost alone.
    #[arg(long, help_heading = "Advanced")]
    probe_floor: bool,
}

/// Where the report goes, besides the text on stdout.
#[derive(Args, Debug)]
struct OutputArgs {
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    json: Option<PathBuf>,

    /// Write a gzipped pprof profile (alloc_objects, alloc_space, inuse_objects, inuse_space;
    /// lifetimes and ages as labels) for `go tool pprof`, Pyroscope or Parca.
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pprof: Option<PathBuf>,

    /// Write folded stacks (`outer;...;inner value`, the input of flamegraph.pl and inferno).
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    folded: Option<PathBuf>,

    /// Write a flame graph (SVG).
    #[arg(long, value_name = "FILE.svg", help_heading = "Output")]
    flamegraph: Option<PathBuf>,

    /// What folded stacks and flame graphs count: inuse_space (default in sampled mode),
    /// inuse_objects, alloc_space (default with --all-allocs) or alloc_objects.
    #[arg(long, value_parser = parse_metric, value_name = "METRIC", help_heading = "Output")]
    flame_metric: Option<Metric>,

    /// Write one self-contained HTML page: leak suspects, goroutine leaks, lifetime
    /// histograms, the GC timeline and a flame graph, readable offline.
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    html: Option<PathBuf>,

    /// Sampled mode: write every sampled object whose death was seen to this CSV file
    /// (address, site, size, GC cycles of allocation and death, lifetime).
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    lifetimes: Option<PathBuf>,

    /// Sites shown in the live view and the text report.
    #[arg(long, default_value_t = 15, help_heading = "Output")]
    top: usize,
}

fn parse_metric(text: &str) -> Result<Metric, String> {
    Metric::from_name(text)
        .ok_or_else(|| format!("unknown metric {text:?} (use {})", Metric::NAMES.join(", ")))
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
            // The agent runs for days in a log collector: it says what it attaches to.
            0 if matches!(cli.subcommand, Some(Subcommands::Agent(_))) => log::LevelFilter::Info,
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
    match cli.subcommand {
        None => trace(&cli.trace, &cli.output, None),
        Some(Subcommands::Record(args)) => trace(&args.trace, &args.exports, Some(&args.output)),
        Some(Subcommands::Report(args)) => report(&args),
        Some(Subcommands::Diff(args)) => diff_recordings(&args),
        Some(Subcommands::Agent(args)) => agent(args),
    }
}

fn agent(args: AgentArgs) -> anyhow::Result<i32> {
    let ring_bytes = u32::try_from(args.ring_buffer.next_power_of_two())
        .map_err(|_| anyhow::anyhow!("--ring-buffer is too large"))?;
    memtrace::agent::run(memtrace::agent::AgentOptions {
        listen: args.listen,
        selector: memtrace::agent::filter::Selector {
            include: args.include,
            exclude: args.exclude,
        },
        rate: args.rate,
        goroutines: !args.no_goroutines,
        budget: memtrace::agent::budget::Budget {
            per_process: args.max_events_per_process as f64,
            node: args.max_events as f64,
        },
        record_dir: args.record_dir,
        record_max_bytes: args.record_max_bytes,
        max_targets: args.max_targets,
        metrics_top_sites: args.metrics_top_sites,
        top: args.top,
        ring_bytes,
        node: std::env::var("NODE_NAME")
            .ok()
            .filter(|name| !name.is_empty()),
        scan_interval: args.scan_interval,
    })?;
    Ok(0)
}

/// A live session, recorded into `record` if given.
fn trace(args: &TraceArgs, output: &OutputArgs, record: Option<&Path>) -> anyhow::Result<i32> {
    let target = match args.pid {
        Some(pid) => TargetSpec::Pid(pid),
        None => TargetSpec::Launch(args.command.clone()),
    };
    let launched = matches!(target, TargetSpec::Launch(_));
    let ring_bytes = u32::try_from(args.ring_buffer.next_power_of_two())
        .ok()
        .filter(|&size| size >= 4096)
        .unwrap_or(DEFAULT_RING_BYTES);
    // Created before tracing starts: a path memtrace cannot write stops it before it touches
    // the target.
    let trace_file = record
        .map(|path| {
            Recorder::create_file(path)
                .map(std::sync::Arc::new)
                .with_context(|| format!("creating {}", path.display()))
        })
        .transpose()?;
    let outcome = session::run(SessionOptions {
        target,
        duration: args.duration,
        mode: if args.probe_floor {
            Mode::ProbeFloor
        } else if args.all_allocs {
            Mode::AllAllocs {
                stack_sample_bytes: args.stack_sample_bytes,
            }
        } else {
            Mode::Sampled {
                rate: args.sample_rate,
                read_only: args.read_only,
            }
        },
        keep_deaths: output.lifetimes.is_some(),
        goroutines: !args.no_goroutines,
        live: !args.no_live && record.is_none(),
        live_interval: args.interval,
        top: output.top,
        ring_bytes,
        record: trace_file,
        progress: !args.no_live && record.is_some(),
    })?;
    let text = outcome.report.to_text(output.top);
    // Launch mode keeps the target's stdout its own: the report goes to stderr.
    if launched {
        eprint!("{text}");
    } else {
        print_text(&text);
    }
    write_outputs(output, &outcome.report, &outcome.analysis)?;
    if let Some(summary) = &outcome.recording {
        let progress = summary.progress;
        eprintln!(
            "memtrace: recorded {} events ({}) to {}{}; `memtrace report {}` reads it",
            progress.records,
            human_bytes(progress.bytes_written as f64),
            summary.path.display(),
            if progress.unrecorded > 0 {
                format!(
                    ", {} events not written (the disk did not keep up)",
                    progress.unrecorded
                )
            } else {
                String::new()
            },
            summary.path.display(),
        );
        if let Some(error) = &summary.error {
            anyhow::bail!(
                "writing {} failed: {error}; the file holds what was written before",
                summary.path.display()
            );
        }
    }
    Ok(outcome.target_exit.map_or(0, |exit| exit.shell_code()))
}

/// A recorded trace read back, or the reason it cannot be read at all.
fn read_trace(path: &Path, keep_deaths: bool, top: usize) -> anyhow::Result<Replay> {
    let replay = replay(path, ReplayOptions { top, keep_deaths }).map_err(|error| match error {
        TraceError::Io(error) => {
            anyhow::Error::new(error).context(format!("reading {}", path.display()))
        }
        other => Error::CorruptTrace {
            path: path.to_path_buf(),
            reason: other.to_string(),
        }
        .into(),
    })?;
    log::info!(
        "replayed {} records from {} chunks in {:.3}s: {:.0} records/s",
        replay.records,
        replay.chunks,
        replay.replay_s,
        replay.records as f64 / replay.replay_s.max(1e-9)
    );
    Ok(replay)
}

/// What is wrong with a trace that could be read, as lines for stderr; empty when nothing is.
fn trace_problems(replay: &Replay) -> Vec<String> {
    let mut problems: Vec<String> = replay.damage.iter().map(ToString::to_string).collect();
    if !replay.finished
        && !replay
            .damage
            .iter()
            .any(|d| matches!(d.what, memtrace::trace::reader::DamageKind::Truncated))
    {
        problems.push(
            "the trace has no end record: memtrace stopped before finishing it (killed, or the \
             disk filled up)"
                .into(),
        );
    }
    problems
}

fn report(args: &ReportArgs) -> anyhow::Result<i32> {
    let replay = read_trace(
        &args.trace_file,
        args.output.lifetimes.is_some(),
        args.output.top,
    )?;
    print_text(&replay.report.to_text(args.output.top));
    write_outputs(&args.output, &replay.report, &replay.analysis)?;
    let problems = trace_problems(&replay);
    if problems.is_empty() {
        return Ok(0);
    }
    eprintln!(
        "memtrace: {}: the report covers every complete chunk; {} problem{}:",
        args.trace_file.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for problem in &problems {
        eprintln!("  {problem}");
    }
    Ok(exit_code::CORRUPT_TRACE)
}

/// A report from a trace file, or from a JSON report (`--json`).
fn load_report(path: &Path) -> anyhow::Result<Report> {
    let mut start = [0u8; 1];
    let is_json = File::open(path)
        .and_then(|mut file| std::io::Read::read(&mut file, &mut start))
        .with_context(|| format!("reading {}", path.display()))?
        == 1
        && start[0] == b'{';
    if is_json {
        let file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
        return serde_json::from_reader(std::io::BufReader::new(file)).map_err(|error| {
            Error::CorruptTrace {
                path: path.to_path_buf(),
                reason: format!("not a memtrace JSON report: {error}"),
            }
            .into()
        });
    }
    let replay = read_trace(path, false, usize::MAX)?;
    for problem in trace_problems(&replay) {
        eprintln!("memtrace: warning: {}: {problem}", path.display());
    }
    Ok(replay.report)
}

fn diff_recordings(args: &DiffArgs) -> anyhow::Result<i32> {
    let base = load_report(&args.base)?;
    let head = load_report(&args.head)?;
    let gate = Gate {
        fail_on_new_leaks: args.fail_on_new_leaks,
        max_live_growth_bytes: args.max_live_growth,
        max_alloc_rate_increase_pct: args.max_alloc_rate_increase,
        max_goroutine_growth: args.max_goroutine_growth,
    };
    let result = diff::diff(&base, &head, &gate);
    print_text(&result.to_text(args.top));
    if let Some(path) = &args.json {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        serde_json::to_writer_pretty(std::io::BufWriter::new(file), &result)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if result.violations().is_empty() {
        0
    } else {
        exit_code::REGRESSION
    })
}

/// Prints a report on stdout. A closed pipe (`memtrace report f.mtr | head`) is not an error
/// worth more than the reader's choice to stop reading; `print!` would panic on it.
fn print_text(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

/// Writes the exports the user asked for.
fn write_outputs(output: &OutputArgs, report: &Report, analysis: &Analysis) -> anyhow::Result<()> {
    let create = |path: &Path| {
        File::create(path)
            .map(std::io::BufWriter::new)
            .with_context(|| format!("creating {}", path.display()))
    };
    if let Some(path) = &output.json {
        report
            .write_json(create(path)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &output.lifetimes {
        write_lifetimes(path, analysis).with_context(|| format!("writing {}", path.display()))?;
    }
    let wants_profile = output.pprof.is_some()
        || output.folded.is_some()
        || output.flamegraph.is_some()
        || output.html.is_some();
    if !wants_profile {
        return Ok(());
    }
    let profile = Profile::new(analysis, report);
    let metric = output
        .flame_metric
        .unwrap_or_else(|| Metric::default_for(&profile));
    let title = format!(
        "memtrace: {} (pid {}), {}",
        report.target.exe,
        report.target.pid,
        metric.name()
    );
    if let Some(path) = &output.pprof {
        let mut out = create(path)?;
        export::pprof::write_pprof(&profile, &mut out)
            .and_then(|()| out.flush())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &output.folded {
        let mut out = create(path)?;
        out.write_all(export::folded::folded(&profile, metric).as_bytes())
            .and_then(|()| out.flush())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &output.flamegraph {
        let mut out = create(path)?;
        export::folded::write_flamegraph(&profile, metric, &title, &mut out)
            .and_then(|()| out.flush())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &output.html {
        let flame = export::folded::flamegraph_svg(&profile, metric, &title);
        let mut out = create(path)?;
        export::html::write_html(report, Some(&flame), &mut out)
            .and_then(|()| out.flush())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The paired deaths as CSV.
fn write_lifetimes(path: &Path, analysis: &Analysis) -> std::io::Result<()> {
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

//! The self-contained HTML page (`--html FILE`): the report's findings as tables, lifetime
//! histograms and the GC timeline as inline SVG drawn here, and the flame graph, in one file
//! that loads nothing from anywhere (no CDN, fonts or images) and so reads the same offline.
//!
//! Every string from the report is escaped: Go function names contain `*`, `(`, `[`, `<`, `&`
//! and quotes, and type names come from the traced binary.

use std::{
    fmt::{self, Write as _},
    io,
};

use crate::{
    report::{
        goroutine_line, human_bytes, human_count, location, loss_line, AllocSite, GcCycleReport,
        GoroutineGroupReport, LifetimeBucket, Report,
    },
    symbolize::Frame,
};

/// Rows of the allocation-site and in-use tables (the text report's usual depth, doubled).
const TOP_SITES: usize = 30;
/// Lifetime histograms drawn, for the heaviest sites whose objects died.
const LIFETIME_CHARTS: usize = 6;
/// Beyond this many GC cycles the timeline draws lines only, no point per cycle.
const MAX_GC_POINTS: usize = 400;
/// The flame graph's frame height when its SVG does not say (inferno's default image).
const DEFAULT_FLAME_HEIGHT_PX: f64 = 600.0;

/// Writes `report` as one HTML page, with `flame_svg` (an inferno flame graph) embedded when
/// given.
pub fn write_html(
    report: &Report,
    flame_svg: Option<&str>,
    mut out: impl io::Write,
) -> io::Result<()> {
    let mut page = String::with_capacity(128 * 1024);
    write_page(&mut page, report, flame_svg)
        .map_err(|_| io::Error::other("cannot format the HTML page"))?;
    out.write_all(page.as_bytes())?;
    out.flush()
}

fn write_page(out: &mut String, report: &Report, flame_svg: Option<&str>) -> fmt::Result {
    let target = &report.target;
    // The empty icon keeps a served page from asking for /favicon.ico, whose 404 would be a
    // console error.
    writeln!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"generator\" content=\"memtrace {version}\">\n\
         <title>memtrace: {exe} (pid {pid})</title>\n\
         <link rel=\"icon\" href=\"data:,\">\n<style>{STYLE}</style>\n</head>\n<body>",
        version = env!("CARGO_PKG_VERSION"),
        exe = Esc(file_name(&target.exe)),
        pid = target.pid,
    )?;
    header(out, report)?;
    navigation(out, report, flame_svg.is_some())?;
    out.push_str("<main>\n");
    leak_suspects(out, report)?;
    goroutines(out, report)?;
    alloc_sites(out, report)?;
    in_use(out, report)?;
    lifetimes(out, report)?;
    gc_timeline(out, report)?;
    if let Some(svg) = flame_svg {
        flame_graph(out, svg)?;
    }
    writeln!(
        out,
        "</main>\n<footer>memtrace {}</footer>\n</body>\n</html>",
        env!("CARGO_PKG_VERSION")
    )
}

const STYLE: &str = "
:root{--fg:#1d2125;--muted:#5f6b76;--line:#dde1e6;--head:#f3f5f7;--leak:#fcefed;--accent:#b3261e}
*{box-sizing:border-box}
body{margin:0;color:var(--fg);background:#fff;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif}
header{background:#1f2a36;color:#f4f6f8;padding:16px 24px 12px}
header h1{margin:0 0 8px;font-size:20px;font-weight:600}
header h1 code{font-size:18px;word-break:break-all}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:0}
dl.facts dt{color:#aab6c2}
dl.facts dd{margin:0}
header p{margin:8px 0 0;color:#c9d2db;font-size:13px}
header p.warn{color:#ffb4a8}
nav{position:sticky;top:0;z-index:1;background:#fff;border-bottom:1px solid var(--line);padding:6px 24px}
nav a{margin-right:18px;color:#1a56a8;text-decoration:none;white-space:nowrap}
nav a:hover{text-decoration:underline}
main{padding:0 24px 24px}
section{margin-top:26px}
h2{font-size:17px;margin:0 0 8px;padding-bottom:4px;border-bottom:2px solid var(--line)}
h3{font-size:14px;margin:14px 0 4px}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:3px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:var(--head);font-weight:600;white-space:nowrap}
.num{text-align:right;white-space:nowrap}
code{font-family:ui-monospace,'SFMono-Regular',Menlo,Consolas,'DejaVu Sans Mono',monospace;font-size:12.5px;word-break:break-all}
tr.suspect td,tr.goroutine-leak td{background:var(--leak)}
tr.none td{color:var(--muted);font-style:italic}
.loc{color:var(--muted);white-space:nowrap}
.badge{display:inline-block;margin-left:6px;padding:0 5px;border-radius:3px;background:var(--accent);color:#fff;font-size:11px;font-weight:600}
.share{display:block;height:3px;margin-top:2px;background:#5b84c4}
ol.stack{margin:4px 0;padding-left:34px;font-family:ui-monospace,'SFMono-Regular',Menlo,Consolas,'DejaVu Sans Mono',monospace;font-size:12.5px}
ol.stack li.runtime{color:var(--muted)}
p.note{color:var(--muted);margin:6px 0}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:14px}
figure{margin:0;padding:8px;border:1px solid var(--line);border-radius:6px}
figcaption{font-size:13px;margin-bottom:4px}
svg.chart{display:block;width:100%;height:auto}
svg.chart text{font:11px system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;fill:#3b4450}
svg.chart .grid{stroke:#e6e9ed}
svg.chart .axis{stroke:#8b95a1}
iframe.flamegraph{display:block;width:100%;border:1px solid var(--line)}
footer{padding:12px 24px;color:var(--muted);font-size:12px;border-top:1px solid var(--line)}
";

fn header(out: &mut String, report: &Report) -> fmt::Result {
    let target = &report.target;
    writeln!(
        out,
        "<header>\n<h1>memtrace: <code>{}</code></h1>\n<dl class=\"facts\">",
        Esc(&target.exe)
    )?;
    let mut fact =
        |name: &str, value: &str| writeln!(out, "<dt>{}</dt><dd>{}</dd>", Esc(name), Esc(value));
    fact(
        "target",
        &format!("pid {}, {}, {}", target.pid, target.exe, target.go_version),
    )?;
    if let Some(exit) = &target.exit {
        fact("target exit", exit)?;
    }
    fact("duration", &seconds_text(report.duration_s))?;
    let mode = match report.mode.as_str() {
        "sampled" => "sampled: the Go runtime's heap profiler, objects tracked to their death",
        "all-allocs" => "all-allocs: every allocation counted in the kernel, stacks sampled",
        other => other,
    };
    fact("mode", mode)?;
    if let Some(rate) = report.sample_rate_bytes {
        fact(
            "sample rate",
            &format!(
                "one sample per {} allocated on average",
                human_bytes(rate as f64)
            ),
        )?;
    }
    if let Some(rate) = &report.mem_profile_rate {
        fact("runtime.MemProfileRate", &rate.describe())?;
    }
    let a = &report.allocations;
    let mut allocations = format!(
        "{}{} objects, {} ({}/s, {} objects/s); requested {}",
        if a.estimated { "estimated " } else { "" },
        human_count(a.objects as f64),
        bytes_text(a.bytes as f64),
        bytes_text(a.bytes_per_s),
        count_text(a.objects_per_s),
        bytes_text(a.requested_bytes as f64),
    );
    if !a.estimated {
        let _ = write!(
            allocations,
            "; {} tiny objects in {} blocks, {} large objects ({})",
            human_count(a.tiny_objects as f64),
            human_count(a.tiny_blocks as f64),
            human_count(a.large_objects as f64),
            bytes_text(a.large_bytes as f64)
        );
    }
    fact("allocations", &allocations)?;
    fact("GC cycles", &report.gc.cycles.to_string())?;
    out.push_str("</dl>\n");
    let events = &report.events;
    let lossy = events.dropped > 0 || events.decode_errors > 0 || events.stack_failures > 0;
    writeln!(
        out,
        "<p class=\"{}\">{}</p>\n<p>{}</p>\n</header>",
        if lossy { "events warn" } else { "events" },
        Esc(&loss_line(events)),
        Esc(&report.sampling.note)
    )
}

fn navigation(out: &mut String, report: &Report, has_flame_graph: bool) -> fmt::Result {
    let suspects = report.leak_suspects.as_ref().map_or(0, Vec::len);
    let goroutine_leaks = report.goroutine_leaks.as_ref().map_or(0, Vec::len);
    writeln!(
        out,
        "<nav><a href=\"#leaks\">Leak suspects ({suspects})</a>\
         <a href=\"#goroutines\">Goroutine leaks ({goroutine_leaks})</a>\
         <a href=\"#sites\">Allocation sites</a><a href=\"#inuse\">In use</a>\
         <a href=\"#lifetimes\">Lifetimes</a><a href=\"#gc\">GC timeline</a>{}</nav>",
        if has_flame_graph {
            "<a href=\"#flamegraph\">Flame graph</a>"
        } else {
            ""
        }
    )
}

fn leak_suspects(out: &mut String, report: &Report) -> fmt::Result {
    const COLUMNS: usize = 10;
    out.push_str(
        "<section id=\"leaks\">\n<h2>Leak suspects</h2>\n\
         <p class=\"note\">Sites whose live memory keeps growing with objects that keep \
         surviving GC cycles, most suspicious first.</p>\n\
         <table id=\"leak-suspects\">\n<thead><tr><th class=\"num\">#</th><th>function</th>\
         <th>location</th><th>type</th><th class=\"num\">live</th>\
         <th class=\"num\">live objects</th><th class=\"num\">growth/s</th>\
         <th class=\"num\">oldest</th><th class=\"num\">GC cycles survived</th>\
         <th class=\"num\">steadiness (R²)</th></tr></thead>\n<tbody>\n",
    );
    match report.leak_suspects.as_deref() {
        None => none_row(
            out,
            COLUMNS,
            "none: leak detection needs sampled mode (this trace counted all allocations)",
        )?,
        Some([]) => none_row(out, COLUMNS, "none: no site's live memory keeps growing")?,
        Some(suspects) => {
            for (rank, suspect) in suspects.iter().enumerate() {
                writeln!(
                    out,
                    "<tr class=\"suspect\"><td class=\"num\">{}</td><td><code>{}</code></td>\
                     <td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                     <td class=\"num\">{}</td><td class=\"num\">{}</td>\
                     <td class=\"num\">{}</td><td class=\"num\">{:.2}</td></tr>",
                    rank + 1,
                    Esc(&suspect.function),
                    Location(&suspect.file, suspect.line),
                    TypeName(suspect.type_name.as_deref()),
                    bytes_text(suspect.live_bytes as f64),
                    human_count(suspect.live_objects as f64),
                    growth_text(suspect.growth_bytes_per_s),
                    seconds_text(suspect.oldest_age_s),
                    suspect.max_gc_cycles_survived,
                    finite_or_zero(suspect.steadiness),
                )?;
            }
        }
    }
    out.push_str("</tbody>\n</table>\n");
    if let Some(top) = report.leak_suspects.as_ref().and_then(|s| s.first()) {
        out.push_str("<h3>Stack of suspect 1 (innermost first)</h3>\n");
        stack(out, &top.stack)?;
    }
    out.push_str("</section>\n");
    Ok(())
}

fn goroutines(out: &mut String, report: &Report) -> fmt::Result {
    const COLUMNS: usize = 8;
    out.push_str("<section id=\"goroutines\">\n<h2>Goroutine leaks</h2>\n");
    if let Some(counts) = &report.goroutines {
        writeln!(
            out,
            "<p class=\"note\">{}</p>",
            Esc(&goroutine_line(counts))
        )?;
    }
    out.push_str(
        "<p class=\"note\">Groups of goroutines (by go statement, function and state) that keep \
         growing while blocked, most suspicious first.</p>\n\
         <table id=\"goroutine-leaks\">\n<thead><tr><th class=\"num\">#</th>\
         <th class=\"num\">count</th><th>start function</th><th>wait reason</th>\
         <th class=\"num\">growth/s</th><th class=\"num\">oldest</th>\
         <th>go statement</th><th>location</th></tr></thead>\n<tbody>\n",
    );
    match report.goroutine_leaks.as_deref() {
        None => none_row(
            out,
            COLUMNS,
            "none: goroutines were not tracked (--no-goroutines)",
        )?,
        Some([]) => none_row(out, COLUMNS, "none: no group of goroutines keeps growing")?,
        Some(leaks) => {
            for (rank, leak) in leaks.iter().enumerate() {
                writeln!(
                    out,
                    "<tr class=\"goroutine-leak\"><td class=\"num\">{}</td>\
                     <td class=\"num\">{}</td><td><code>{}</code></td><td>{}</td>\
                     <td class=\"num\">{}</td><td class=\"num\">{}</td>\
                     <td><code>{}</code></td><td>{}</td></tr>",
                    rank + 1,
                    leak.count,
                    Esc(&leak.start_function),
                    Esc(&leak.wait_reason),
                    goroutine_growth_text(leak.growth_per_s),
                    Esc(&oldest_member_text(leak)),
                    Esc(&leak.function),
                    Location(&leak.file, leak.line),
                )?;
            }
        }
    }
    out.push_str("</tbody>\n</table>\n");
    if let Some(first) = report.goroutine_leaks.as_ref().and_then(|l| l.first()) {
        if !first.stack.is_empty() {
            out.push_str("<h3>Creation stack of goroutine leak 1 (innermost first)</h3>\n");
            stack(out, &first.stack)?;
        }
    }
    if let Some(groups) = report.goroutine_groups.as_deref().filter(|g| !g.is_empty()) {
        out.push_str(
            "<h3>Long-lived goroutines</h3>\n<table id=\"goroutine-groups\">\n<thead><tr>\
             <th class=\"num\">count</th><th class=\"num\">blocked</th>\
             <th class=\"num\">growth/s</th><th class=\"num\">oldest</th><th>state</th>\
             <th>start function</th><th>go statement</th><th>location</th></tr></thead>\n\
             <tbody>\n",
        );
        for group in groups {
            writeln!(
                out,
                "<tr><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td>{}</td><td><code>{}</code>{}</td>\
                 <td><code>{}</code></td><td>{}</td></tr>",
                group.count,
                group.blocked,
                goroutine_growth_text(group.growth_per_s),
                Esc(&oldest_member_text(group)),
                Esc(&group.wait_reason),
                Esc(&group.start_function),
                if group.leak {
                    "<span class=\"badge\">leak</span>"
                } else {
                    ""
                },
                Esc(&group.function),
                Location(&group.file, group.line),
            )?;
        }
        out.push_str("</tbody>\n</table>\n");
    }
    out.push_str("</section>\n");
    Ok(())
}

fn alloc_sites(out: &mut String, report: &Report) -> fmt::Result {
    writeln!(
        out,
        "<section id=\"sites\">\n<h2>Allocation sites</h2>\n<p class=\"note\">The {TOP_SITES} \
         heaviest sites by bytes allocated (estimates from the samples), with the share of the \
         heaviest.</p>\n<table id=\"alloc-sites\">\n<thead><tr><th class=\"num\">#</th>\
         <th class=\"num\">bytes</th><th class=\"num\">bytes/s</th><th class=\"num\">objects</th>\
         <th class=\"num\">objects/s</th><th class=\"num\">size p50</th>\
         <th class=\"num\">size p99</th><th>function</th><th>location</th></tr></thead>\n\
         <tbody>"
    )?;
    let heaviest = report
        .alloc_sites
        .iter()
        .map(|s| s.bytes)
        .max()
        .unwrap_or(0)
        .max(1);
    if report.alloc_sites.is_empty() {
        none_row(out, 9, "none: no allocation was sampled")?;
    }
    for (rank, site) in report.alloc_sites.iter().take(TOP_SITES).enumerate() {
        let share = site.bytes as f64 / heaviest as f64 * 100.0;
        writeln!(
            out,
            "<tr class=\"site\"><td class=\"num\">{}</td><td class=\"num\">{}\
             <span class=\"share\" style=\"width:{:.1}%\"></span></td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td><code>{}</code>{}</td><td>{}</td></tr>",
            rank + 1,
            bytes_text(site.bytes as f64),
            finite_or_zero(share),
            bytes_text(site.bytes_per_s),
            human_count(site.objects as f64),
            count_text(site.objects_per_s),
            bytes_text(site.size.p50 as f64),
            bytes_text(site.size.p99 as f64),
            Esc(&site.function),
            if is_leak_suspect(report, site) {
                "<span class=\"badge\">leak suspect</span>"
            } else {
                ""
            },
            Location(&site.file, site.line),
        )?;
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
    Ok(())
}

fn in_use(out: &mut String, report: &Report) -> fmt::Result {
    out.push_str("<section id=\"inuse\">\n<h2>In use at the end</h2>\n");
    if report.mode != "sampled" {
        out.push_str(
            "<p class=\"note\">In-use memory is known in sampled mode only, where every sampled \
             object is followed to its death.</p>\n</section>\n",
        );
        return Ok(());
    }
    let mut live: Vec<&AllocSite> = report
        .alloc_sites
        .iter()
        .filter(|s| s.live_bytes > Some(0))
        .collect();
    live.sort_by_key(|s| std::cmp::Reverse(s.live_bytes));
    writeln!(
        out,
        "<p class=\"note\">Estimated live memory per site, largest first (at most {TOP_SITES}).\
         </p>\n<table id=\"in-use\">\n<thead><tr><th class=\"num\">live</th>\
         <th class=\"num\">objects</th><th class=\"num\">life p50</th>\
         <th class=\"num\">life p99</th><th class=\"num\">GC cycles</th>\
         <th class=\"num\">growth/s</th><th>type</th><th>function</th><th>location</th></tr>\
         </thead>\n<tbody>"
    )?;
    if live.is_empty() {
        none_row(out, 9, "none: no sampled object was live at the end")?;
    }
    for site in live.into_iter().take(TOP_SITES) {
        let lifetimes = site.lifetime_ms.as_ref().filter(|l| l.count > 0);
        writeln!(
            out,
            "<tr><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
            bytes_text(site.live_bytes.unwrap_or(0) as f64),
            human_count(site.live_objects.unwrap_or(0) as f64),
            lifetimes.map_or("-".into(), |l| milliseconds_text(l.p50)),
            lifetimes.map_or("-".into(), |l| milliseconds_text(l.p99)),
            site.max_gc_cycles_survived.unwrap_or(0),
            growth_text(site.growth_bytes_per_s.unwrap_or(0.0)),
            TypeName(site.type_name.as_ref().and_then(Option::as_deref)),
            Esc(&site.function),
            Location(&site.file, site.line),
        )?;
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
    Ok(())
}

fn lifetimes(out: &mut String, report: &Report) -> fmt::Result {
    out.push_str("<section id=\"lifetimes\">\n<h2>Object lifetimes</h2>\n");
    let with_deaths: Vec<&AllocSite> = report
        .alloc_sites
        .iter()
        .filter(|site| {
            site.lifetime_ms
                .as_ref()
                .is_some_and(|l| l.count > 0 && !l.buckets.is_empty())
        })
        .take(LIFETIME_CHARTS)
        .collect();
    if with_deaths.is_empty() {
        out.push_str(if report.mode == "sampled" {
            "<p class=\"note\">No sampled object died while tracing.</p>\n</section>\n"
        } else {
            "<p class=\"note\">Lifetimes are measured in sampled mode only.</p>\n</section>\n"
        });
        return Ok(());
    }
    writeln!(
        out,
        "<p class=\"note\">How long the sampled objects of the heaviest sites lived before the \
         sweeper found them dead, in power-of-two buckets of milliseconds (at most \
         {LIFETIME_CHARTS} sites).</p>\n<div class=\"charts\">"
    )?;
    // One x axis for all: side by side, the charts compare.
    let bounds = shared_bounds(
        with_deaths
            .iter()
            .filter_map(|site| site.lifetime_ms.as_ref())
            .flat_map(|l| &l.buckets),
    );
    for site in with_deaths {
        let Some(lifetimes) = &site.lifetime_ms else {
            continue;
        };
        writeln!(
            out,
            "<figure class=\"lifetime\"><figcaption><code>{}</code> <span class=\"loc\">{}</span>\
             <br>{} {}: p50 {}, p90 {}, p99 {}, max {}</figcaption>",
            Esc(&site.function),
            Esc(&location(&site.file, site.line)),
            human_count(lifetimes.count as f64),
            if lifetimes.count == 1 {
                "death"
            } else {
                "deaths"
            },
            milliseconds_text(lifetimes.p50),
            milliseconds_text(lifetimes.p90),
            milliseconds_text(lifetimes.p99),
            milliseconds_text(lifetimes.max),
        )?;
        lifetime_chart(
            out,
            &site.function,
            &lifetime_bars(&lifetimes.buckets, bounds.as_deref()),
        )?;
        out.push_str("</figure>\n");
    }
    out.push_str("</div>\n</section>\n");
    Ok(())
}

/// A bar per bucket: on the shared power-of-two bounds, a true log scale.
fn lifetime_chart(out: &mut String, function: &str, bars: &[LifetimeBucket]) -> fmt::Result {
    let plot = Plot {
        width: 480.0,
        height: 210.0,
        left: 50.0,
        right: 10.0,
        top: 12.0,
        bottom: 42.0,
    };
    let max_count = bars.iter().map(|b| b.count).max().unwrap_or(0);
    let y_ticks = Ticks::new(max_count as f64, 1.0, 4, true);
    let y_top = y_ticks.top();
    writeln!(
        out,
        "<svg class=\"chart lifetime\" viewBox=\"0 0 {} {}\" role=\"img\" \
         aria-label=\"lifetime histogram of {}\">",
        Px(plot.width),
        Px(plot.height),
        Esc(function)
    )?;
    for &tick in &y_ticks.values {
        let y = plot.y_of(tick, y_top);
        writeln!(
            out,
            "<line class=\"grid\" x1=\"{}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            Px(plot.left),
            Px(plot.x_end()),
            Px(plot.left - 6.0),
            Px(y + 4.0),
            Esc(&y_ticks.label(tick)),
            y = Px(y),
        )?;
    }
    let slot = plot.plot_width() / bars.len().max(1) as f64;
    // Keep labels about 40 px apart.
    let label_every = ((40.0 / slot).ceil() as usize).max(1);
    for (index, bar) in bars.iter().enumerate() {
        let x = plot.left + slot * index as f64;
        let y = plot.y_of(bar.count as f64, y_top);
        let bound = bucket_label(bar.le_ms);
        writeln!(
            out,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"#5b84c4\">\
             <title>≤ {}: {} deaths</title></rect>",
            Px(x + slot * 0.1),
            Px(y),
            Px(slot * 0.8),
            Px(plot.baseline() - y),
            Esc(&bound),
            bar.count
        )?;
        if index % label_every == 0 {
            writeln!(
                out,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                Px(x + slot / 2.0),
                Px(plot.baseline() + 14.0),
                Esc(&bound)
            )?;
        }
    }
    writeln!(
        out,
        "<line class=\"axis\" x1=\"{}\" x2=\"{}\" y1=\"{b}\" y2=\"{b}\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">lifetime (bucket upper bound, log scale)\
         </text>\n<text transform=\"translate(12 {}) rotate(-90)\" text-anchor=\"middle\">\
         deaths</text>\n</svg>",
        Px(plot.left),
        Px(plot.x_end()),
        Px(plot.left + plot.plot_width() / 2.0),
        Px(plot.height - 6.0),
        Px(plot.top + plot.plot_height() / 2.0),
        b = Px(plot.baseline()),
    )
}

/// The power-of-two bucket bounds (0, 1, 2, 4, ... ms) from the shortest to the longest
/// lifetime among `buckets`, widened to at least `MIN_BARS` bounds so that a site whose
/// objects all died alike still shows where that is; `None` when a bucket does not sit on a
/// power of two (then each chart shows its buckets as they are).
fn shared_bounds<'a>(buckets: impl Iterator<Item = &'a LifetimeBucket>) -> Option<Vec<u64>> {
    const MIN_BARS: usize = 8;
    let next = |bound: u64| {
        if bound == 0 {
            1
        } else {
            bound.saturating_mul(2)
        }
    };
    let mut range: Option<(u64, u64)> = None;
    for bucket in buckets {
        if bucket.le_ms != 0 && !bucket.le_ms.is_power_of_two() {
            return None;
        }
        range = Some(match range {
            None => (bucket.le_ms, bucket.le_ms),
            Some((low, high)) => (low.min(bucket.le_ms), high.max(bucket.le_ms)),
        });
    }
    let (mut low, mut high) = range?;
    let count = |low: u64, high: u64| {
        let steps = |bound: u64| {
            if bound == 0 {
                0
            } else {
                1 + bound.trailing_zeros() as usize
            }
        };
        steps(high) - steps(low) + 1
    };
    while count(low, high) < MIN_BARS {
        if low > 0 {
            low /= 2;
        } else if high < 1 << 62 {
            high = next(high);
        } else {
            break;
        }
    }
    let mut bounds = vec![low];
    while let Some(&last) = bounds.last().filter(|&&last| last < high) {
        bounds.push(next(last));
    }
    Some(bounds)
}

/// A site's bars: its counts on the shared bounds, or its buckets as given without them.
fn lifetime_bars(buckets: &[LifetimeBucket], bounds: Option<&[u64]>) -> Vec<LifetimeBucket> {
    let Some(bounds) = bounds else {
        let mut sorted = buckets.to_vec();
        sorted.sort_by_key(|b| b.le_ms);
        return sorted;
    };
    bounds
        .iter()
        .map(|&le_ms| LifetimeBucket {
            le_ms,
            count: buckets
                .iter()
                .filter(|b| b.le_ms == le_ms)
                .fold(0u64, |sum, b| sum.saturating_add(b.count)),
        })
        .collect()
}

/// One line of the GC timeline.
struct Series {
    name: &'static str,
    color: &'static str,
    dash: &'static str,
    value: fn(&GcCycleReport) -> Option<u64>,
}

const GC_SERIES: [Series; 3] = [
    Series {
        name: "heap goal",
        color: "#8b95a1",
        dash: "6 4",
        value: |c| c.heap_goal,
    },
    Series {
        name: "heap at end of cycle",
        color: "#e07b24",
        dash: "",
        value: |c| c.heap_end,
    },
    Series {
        name: "heap marked live",
        color: "#2563b0",
        dash: "",
        value: |c| c.heap_marked,
    },
];

fn gc_timeline(out: &mut String, report: &Report) -> fmt::Result {
    out.push_str("<section id=\"gc\">\n<h2>GC timeline</h2>\n");
    let mut cycles: Vec<&GcCycleReport> = report
        .gc
        .timeline
        .iter()
        .filter(|c| c.at_s.is_finite() && c.at_s >= 0.0)
        .collect();
    cycles.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    let Some(last) = cycles.last() else {
        writeln!(
            out,
            "<p class=\"note\">No GC cycle was recorded while tracing ({} cycles counted).</p>\n\
             </section>",
            report.gc.cycles
        )?;
        return Ok(());
    };
    let duration = if report.duration_s.is_finite() {
        report.duration_s
    } else {
        0.0
    };
    let x_max = last.at_s.max(duration).max(1e-3);
    let heap_known = cycles
        .iter()
        .any(|c| GC_SERIES.iter().any(|s| (s.value)(c).is_some()));
    writeln!(
        out,
        "<p class=\"note\">{} GC cycles{}. {}</p>\n<figure>",
        cycles.len(),
        if report.gc.cycles > cycles.len() as u64 {
            format!(" recorded ({} counted)", report.gc.cycles)
        } else {
            String::new()
        },
        if heap_known {
            "Heap sizes at the end of each cycle: the marked (live) heap, the heap when marking \
             ended, and the goal the next cycle starts at; a leak shows as a marked heap that \
             keeps rising."
        } else {
            "The binary gives no heap sizes (no symbols for the runtime's GC state): only the \
             times of the cycles are known, marked on the time axis."
        }
    )?;
    let plot = Plot {
        width: 960.0,
        height: if heap_known { 320.0 } else { 120.0 },
        left: 72.0,
        right: 16.0,
        top: if heap_known { 30.0 } else { 12.0 },
        bottom: 42.0,
    };
    writeln!(
        out,
        "<svg class=\"chart gc\" viewBox=\"0 0 {} {}\" role=\"img\" aria-label=\"GC timeline\">",
        Px(plot.width),
        Px(plot.height)
    )?;
    let x_of = |at_s: f64| plot.left + at_s / x_max * plot.plot_width();
    let x_ticks = Ticks::new(x_max, 1.0, 8, false);
    for &tick in x_ticks.values.iter().filter(|&&t| t <= x_max * 1.0001) {
        let x = Px(x_of(tick));
        writeln!(
            out,
            "<line class=\"grid\" x1=\"{x}\" x2=\"{x}\" y1=\"{}\" y2=\"{}\"/>\
             <text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{}s</text>",
            Px(plot.top),
            Px(plot.baseline()),
            Px(plot.baseline() + 14.0),
            Esc(&x_ticks.label(tick)),
        )?;
    }
    if heap_known {
        let max_bytes = cycles
            .iter()
            .flat_map(|c| GC_SERIES.iter().filter_map(|s| (s.value)(c)))
            .max()
            .unwrap_or(0);
        let unit = binary_unit(max_bytes as f64);
        let y_ticks = Ticks::new(max_bytes as f64, unit.0, 5, false);
        let y_top = y_ticks.top();
        for &tick in &y_ticks.values {
            let y = Px(plot.y_of(tick, y_top));
            writeln!(
                out,
                "<line class=\"grid\" x1=\"{}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\"/>\
                 <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{} {}</text>",
                Px(plot.left),
                Px(plot.x_end()),
                Px(plot.left - 6.0),
                Px(y.0 + 4.0),
                Esc(&y_ticks.label(tick)),
                unit.1,
            )?;
        }
        for (index, series) in GC_SERIES.iter().enumerate() {
            let points: Vec<(f64, f64)> = cycles
                .iter()
                .filter_map(|c| {
                    (series.value)(c).map(|v| (x_of(c.at_s), plot.y_of(v as f64, y_top)))
                })
                .collect();
            let legend_x = plot.left + 8.0 + 190.0 * index as f64;
            writeln!(
                out,
                "<line x1=\"{}\" x2=\"{}\" y1=\"12\" y2=\"12\" stroke=\"{}\" stroke-width=\"2\" \
                 stroke-dasharray=\"{}\"/><text x=\"{}\" y=\"16\">{}</text>",
                Px(legend_x),
                Px(legend_x + 22.0),
                series.color,
                series.dash,
                Px(legend_x + 28.0),
                series.name,
            )?;
            if points.is_empty() {
                continue;
            }
            out.push_str("<polyline fill=\"none\" stroke-width=\"1.6\" points=\"");
            for (x, y) in thin_out(points, plot.plot_width()) {
                write!(out, "{},{} ", Px(x), Px(y))?;
            }
            writeln!(
                out,
                "\" stroke=\"{}\" stroke-dasharray=\"{}\"/>",
                series.color, series.dash
            )?;
        }
        if cycles.len() <= MAX_GC_POINTS {
            // A hover target per cycle, with all its numbers.
            for cycle in &cycles {
                let Some(top_value) = GC_SERIES.iter().filter_map(|s| (s.value)(cycle)).max()
                else {
                    continue;
                };
                let mut tooltip = match cycle.cycle {
                    Some(number) => format!("GC cycle {number} at {}", seconds_text(cycle.at_s)),
                    None => format!("GC cycle at {}", seconds_text(cycle.at_s)),
                };
                for series in &GC_SERIES {
                    if let Some(value) = (series.value)(cycle) {
                        let _ = write!(tooltip, "\n{}: {}", series.name, bytes_text(value as f64));
                    }
                }
                writeln!(
                    out,
                    "<circle cx=\"{}\" cy=\"{}\" r=\"3\" fill=\"#2563b0\" fill-opacity=\"0.5\">\
                     <title>{}</title></circle>",
                    Px(x_of(cycle.at_s)),
                    Px(plot.y_of(top_value as f64, y_top)),
                    Esc(&tooltip)
                )?;
            }
        }
    }
    // Every cycle as a tick on the time axis: all a stripped binary tells.
    out.push_str("<path class=\"cycles\" stroke=\"#b3261e\" stroke-width=\"1\" d=\"");
    let mut previous = None;
    for cycle in &cycles {
        let x = x_of(cycle.at_s);
        let column = (x * 2.0).round() as i64;
        if previous != Some(column) {
            write!(out, "M{} {}v-7", Px(x), Px(plot.baseline()))?;
            previous = Some(column);
        }
    }
    writeln!(
        out,
        "\"/>\n<line class=\"axis\" x1=\"{}\" x2=\"{}\" y1=\"{b}\" y2=\"{b}\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">seconds since tracing started \
         (red ticks: GC cycles)</text>",
        Px(plot.left),
        Px(plot.x_end()),
        Px(plot.left + plot.plot_width() / 2.0),
        Px(plot.height - 6.0),
        b = Px(plot.baseline()),
    )?;
    if heap_known {
        writeln!(
            out,
            "<text transform=\"translate(14 {}) rotate(-90)\" text-anchor=\"middle\">heap</text>",
            Px(plot.top + plot.plot_height() / 2.0)
        )?;
    }
    out.push_str("</svg>\n</figure>\n</section>\n");
    Ok(())
}

/// Keeps a long line drawable: beyond two points per pixel column, only each column's lowest
/// and highest point remain (in drawing order), which is what the eye sees anyway.
fn thin_out(points: Vec<(f64, f64)>, width_px: f64) -> Vec<(f64, f64)> {
    if points.len() as f64 <= 2.0 * width_px {
        return points;
    }
    let mut kept = Vec::new();
    for column in points.chunk_by(|a, b| a.0.floor() == b.0.floor()) {
        let by_y = |a: &&(f64, f64), b: &&(f64, f64)| a.1.total_cmp(&b.1);
        let (Some(&top), Some(&bottom)) = (column.iter().min_by(by_y), column.iter().max_by(by_y))
        else {
            continue;
        };
        if top.0 <= bottom.0 {
            kept.extend([top, bottom]);
        } else {
            kept.extend([bottom, top]);
        }
    }
    kept
}

/// The flame graph in an `<iframe srcdoc>`: inferno's SVG carries a script (zoom, search) that
/// expects to own its document, so it gets one. A `data:` URL would make that document
/// cross-origin, where the script's `history.replaceState` on every zoom throws a
/// SecurityError and its search `prompt()` is blocked; a srcdoc document shares the page's
/// origin. It cannot rewrite its own URL either, so the wrapper turns `replaceState` into a
/// no-op: zoom state simply is not kept in the URL.
fn flame_graph(out: &mut String, svg: &str) -> fmt::Result {
    out.push_str("<section id=\"flamegraph\">\n<h2>Flame graph</h2>\n");
    let Some(start) = svg.find("<svg") else {
        out.push_str(
            "<p class=\"note\">The flame graph is not an SVG image, so it was left out.</p>\n\
             </section>\n",
        );
        return Ok(());
    };
    // The XML declaration and doctype before the root element mean nothing in an HTML
    // document (a foreign doctype would even switch it to quirks mode).
    let root = &svg[start..];
    let height = root_svg_height(root).unwrap_or(DEFAULT_FLAME_HEIGHT_PX);
    let document = format!(
        "<!DOCTYPE html><html><head><script>history.replaceState=function(){{}};</script>\
         <style>html,body{{margin:0}}body>svg{{display:block;width:100%}}</style></head>\
         <body>{root}</body></html>"
    );
    writeln!(
        out,
        "<p class=\"note\">Click a frame to zoom in, Ctrl-F or the Search button (top right) to \
         highlight functions.</p>\n<iframe class=\"flamegraph\" title=\"flame graph\" \
         style=\"height:{}px\" srcdoc=\"{}\"></iframe>\n</section>",
        Px(height + 2.0),
        Esc(&document)
    )
}

/// The `height` attribute of the root `<svg>` element, in pixels.
fn root_svg_height(root: &str) -> Option<f64> {
    let tag = &root[..root.find('>')?];
    let value_start = tag.find(" height=\"")? + " height=\"".len();
    let value = &tag[value_start..];
    let value = &value[..value.find('"')?];
    let height: f64 = value.trim_end_matches("px").parse().ok()?;
    (height.is_finite() && height > 0.0).then_some(height.clamp(60.0, 20_000.0))
}

fn none_row(out: &mut String, columns: usize, text: &str) -> fmt::Result {
    writeln!(
        out,
        "<tr class=\"none\"><td colspan=\"{columns}\">{}</td></tr>",
        Esc(text)
    )
}

fn stack(out: &mut String, frames: &[Frame]) -> fmt::Result {
    if frames.is_empty() {
        out.push_str("<p class=\"note\">(no stack)</p>\n");
        return Ok(());
    }
    out.push_str("<ol class=\"stack\">\n");
    for frame in frames {
        writeln!(
            out,
            "<li{}>{}{} {}</li>",
            if frame.function.starts_with("runtime.") {
                " class=\"runtime\""
            } else {
                ""
            },
            if frame.inlined { "[inlined] " } else { "" },
            Esc(&frame.function),
            Location(&frame.file, frame.line),
        )?;
    }
    out.push_str("</ol>\n");
    Ok(())
}

fn is_leak_suspect(report: &Report, site: &AllocSite) -> bool {
    report.leak_suspects.iter().flatten().any(|suspect| {
        suspect.function == site.function && suspect.file == site.file && suspect.line == site.line
    })
}

/// Age of a group's oldest member, as the text report says it.
fn oldest_member_text(group: &GoroutineGroupReport) -> String {
    match (group.oldest_age_s, group.unknown_age) {
        (_, n) if n > 0 => "unknown (before attach)".into(),
        (Some(age), _) => seconds_text(age),
        (None, _) => "-".into(),
    }
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn finite_or_zero(value: f64) -> f64 {
    if value.is_finite() {
        value
    } else {
        0.0
    }
}

fn bytes_text(bytes: f64) -> String {
    if bytes.is_finite() {
        human_bytes(bytes)
    } else {
        "-".into()
    }
}

fn count_text(count: f64) -> String {
    if count.is_finite() {
        human_count(count)
    } else {
        "-".into()
    }
}

/// Bytes per second with their sign: a shrinking site shows "−1.0KiB/s", not "-1024B/s".
fn growth_text(bytes_per_s: f64) -> String {
    if !bytes_per_s.is_finite() {
        return "-".into();
    }
    // Less than a byte a second is no growth: no "−0B/s".
    if bytes_per_s.abs() < 0.5 {
        return "0B/s".into();
    }
    let sign = if bytes_per_s < 0.0 { "−" } else { "+" };
    format!("{sign}{}/s", human_bytes(bytes_per_s.abs()))
}

fn goroutine_growth_text(per_s: f64) -> String {
    // No "-0.0" for a flat group.
    if !per_s.is_finite() || per_s.abs() < 0.05 {
        "0.0".into()
    } else {
        format!("{per_s:+.1}")
    }
}

fn seconds_text(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".into();
    }
    if seconds < 10.0 {
        format!("{seconds:.1}s")
    } else if seconds < 60.0 {
        format!("{seconds:.0}s")
    } else if seconds < 3600.0 {
        let whole = seconds.round() as u64;
        format!("{}m{:02}s", whole / 60, whole % 60)
    } else {
        let minutes = (seconds / 60.0).round() as u64;
        format!("{}h{:02}m", minutes / 60, minutes % 60)
    }
}

fn milliseconds_text(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        seconds_text(ms as f64 / 1000.0)
    }
}

fn bucket_label(le_ms: u64) -> String {
    if le_ms == 0 {
        "0ms".into()
    } else {
        milliseconds_text(le_ms)
    }
}

/// The power of 1024 to label a byte axis in, so that its ticks read "5 MiB", not
/// "5242880".
fn binary_unit(max_bytes: f64) -> (f64, &'static str) {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 1.0;
    let mut index = 0;
    while max_bytes >= unit * 1024.0 && index + 1 < UNITS.len() {
        unit *= 1024.0;
        index += 1;
    }
    (unit, UNITS[index])
}

/// Axis ticks 0, step, 2·step, ... up to at least the largest value, with a step of 1, 2 or 5
/// times a power of ten (in `unit`s).
struct Ticks {
    values: Vec<f64>,
    unit: f64,
    /// Decimals the labels need to tell the ticks apart.
    decimals: usize,
}

impl Ticks {
    fn new(max: f64, unit: f64, target_count: usize, whole_numbers: bool) -> Ticks {
        let unit = if unit.is_finite() && unit > 0.0 {
            unit
        } else {
            1.0
        };
        let max_in_units = if max.is_finite() && max > 0.0 {
            max / unit
        } else {
            1.0
        };
        let raw_step = max_in_units / target_count.max(1) as f64;
        let magnitude = 10f64.powf(raw_step.log10().floor());
        let mut step = [1.0, 2.0, 5.0, 10.0]
            .into_iter()
            .map(|m| m * magnitude)
            .find(|&s| s >= raw_step)
            .unwrap_or(10.0 * magnitude);
        if whole_numbers {
            step = step.max(1.0);
        }
        if !step.is_finite() || step <= 0.0 {
            step = 1.0;
        }
        let count = ((max_in_units / step).ceil() as usize).clamp(1, 100);
        Ticks {
            values: (0..=count).map(|i| i as f64 * step * unit).collect(),
            unit,
            decimals: (-step.log10().floor()).clamp(0.0, 6.0) as usize,
        }
    }

    fn top(&self) -> f64 {
        self.values
            .last()
            .copied()
            .unwrap_or(1.0)
            .max(f64::MIN_POSITIVE)
    }

    fn label(&self, value: f64) -> String {
        format!("{:.*}", self.decimals, value / self.unit)
    }
}

/// A chart's size and the margins around its plot area, in SVG user units.
struct Plot {
    width: f64,
    height: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
}

impl Plot {
    fn plot_width(&self) -> f64 {
        self.width - self.left - self.right
    }
    fn plot_height(&self) -> f64 {
        self.height - self.top - self.bottom
    }
    fn x_end(&self) -> f64 {
        self.width - self.right
    }
    fn baseline(&self) -> f64 {
        self.height - self.bottom
    }
    /// The y coordinate of `value` on an axis from 0 to `top`.
    fn y_of(&self, value: f64, top: f64) -> f64 {
        self.baseline() - value / top * self.plot_height()
    }
}

/// An SVG coordinate: one decimal, and never NaN or infinite (Chromium logs an error for an
/// unparsable attribute).
#[derive(Clone, Copy)]
struct Px(f64);

impl fmt::Display for Px {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = if self.0.is_finite() {
            self.0.clamp(-1e6, 1e6)
        } else {
            0.0
        };
        write!(f, "{value:.1}")
    }
}

/// Text escaped for HTML content and quoted attribute values.
struct Esc<'a>(&'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..at])?;
            f.write_str(match rest.as_bytes()[at] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[at + 1..];
        }
        f.write_str(rest)
    }
}

/// A source location cell: `dir/file.go:12`, the full path on hover.
struct Location<'a>(&'a str, u32);

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Location(file, line) = *self;
        if file.is_empty() {
            return f.write_str("<span class=\"loc\">-</span>");
        }
        write!(
            f,
            "<span class=\"loc\" title=\"{}:{line}\">{}</span>",
            Esc(file),
            Esc(&location(file, line))
        )
    }
}

/// An object type cell; unknown when the binary does not tell it.
struct TypeName<'a>(Option<&'a str>);

impl fmt::Display for TypeName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(name) => write!(f, "<code>{}</code>", Esc(name)),
            None => f.write_str("<span class=\"loc\">unknown</span>"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{GcCycleReport, LeakSuspect, Lifetimes};

    fn demo_report() -> Report {
        serde_json::from_str(include_str!("testdata/demo-report.json")).unwrap()
    }

    fn goleaks_report() -> Report {
        serde_json::from_str(include_str!("testdata/goleaks-report.json")).unwrap()
    }

    fn render(report: &Report, flame_svg: Option<&str>) -> String {
        let mut page = Vec::new();
        write_html(report, flame_svg, &mut page).unwrap();
        String::from_utf8(page).unwrap()
    }

    /// The markup of the element that starts with `start` (up to its closing `end`).
    fn element<'a>(page: &'a str, start: &str, end: &str) -> &'a str {
        let at = page
            .find(start)
            .unwrap_or_else(|| panic!("no {start} in the page"));
        let length = page[at..].find(end).expect("the element is closed") + end.len();
        &page[at..at + length]
    }

    fn rows<'a>(table: &'a str, class: &str) -> Vec<&'a str> {
        let marker = format!("<tr class=\"{class}\">");
        table
            .split(&marker)
            .skip(1)
            .map(|rest| &rest[..rest.find("</tr>").unwrap()])
            .collect()
    }

    /// Sanity of the markup: every element the page opens is closed, and nothing points
    /// outside the file.
    fn assert_well_formed_and_self_contained(page: &str) {
        for tag in [
            "html", "head", "body", "section", "table", "thead", "tbody", "tr", "td", "th", "svg",
            "figure", "ol", "li", "code", "span", "iframe", "p", "text", "title",
        ] {
            let opened = page.matches(&format!("<{tag}>")).count()
                + page.matches(&format!("<{tag} ")).count();
            let closed = page.matches(&format!("</{tag}>")).count();
            assert_eq!(
                opened, closed,
                "<{tag}> opened {opened} times, closed {closed}"
            );
        }
        for external in [
            "src=\"http",
            "href=\"http",
            "src=\"//",
            "href=\"//",
            "@import",
        ] {
            assert!(!page.contains(external), "the page loads {external}...");
        }
        // CSS and SVG may only refer to things inside the page (`url(#background)`).
        for (at, _) in page.match_indices("url(") {
            let target = page[at + 4..].trim_start_matches(['\'', '"']);
            let target = target.strip_prefix("&quot;").unwrap_or(target);
            assert!(
                target.starts_with('#'),
                "the page loads {:.40}",
                &page[at..]
            );
        }
        assert!(!page.contains("NaN") && !page.contains("inf\""), "{page}");
    }

    #[test]
    fn demo_report_shows_its_leak_suspect() {
        let page = render(&demo_report(), None);
        assert_well_formed_and_self_contained(&page);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("pid 27674"));
        assert!(page.contains(&loss_line(&demo_report().events)));

        let suspects = element(&page, "<table id=\"leak-suspects\">", "</table>");
        let suspect_rows = rows(suspects, "suspect");
        assert_eq!(suspect_rows.len(), 1, "{suspects}");
        assert!(suspect_rows[0].contains("<code>main.trackSession</code>"));
        assert!(suspect_rows[0].contains("demo/main.go:112"));
        assert!(suspect_rows[0].contains("6.0MiB"), "{}", suspect_rows[0]);
        // The top suspect's stack follows the table.
        let stack = element(&page, "<ol class=\"stack\">", "</ol>");
        assert!(stack.contains("main.handle"), "{stack}");

        let goroutine_leaks = element(&page, "<table id=\"goroutine-leaks\">", "</table>");
        assert!(rows(goroutine_leaks, "goroutine-leak").is_empty());
        assert!(rows(goroutine_leaks, "none")[0].contains("none"));

        let sites = element(&page, "<table id=\"alloc-sites\">", "</table>");
        assert_eq!(rows(sites, "site").len(), 11);
        assert!(rows(sites, "site")[0].contains("main.render"));
        assert!(sites.contains("leak suspect"));
        let in_use = element(&page, "<table id=\"in-use\">", "</table>");
        assert!(in_use.contains("main.trackSession"));

        // main.render, main.(*lruCache).put, ...: every site with deaths gets a histogram.
        assert_eq!(page.matches("<svg class=\"chart lifetime\"").count(), 6);
        let gc = element(&page, "<svg class=\"chart gc\"", "</svg>");
        assert_eq!(gc.matches("<polyline").count(), 3, "{gc}");
        assert_eq!(gc.matches("<circle").count(), 10);
        assert!(gc.contains("MiB</text>"), "{gc}");
        assert!(!page.contains("id=\"flamegraph\""));
    }

    #[test]
    fn goroutine_leaks_are_listed() {
        let page = render(&goleaks_report(), None);
        assert_well_formed_and_self_contained(&page);
        let leaks = element(&page, "<table id=\"goroutine-leaks\">", "</table>");
        let leak_rows = rows(leaks, "goroutine-leak");
        assert_eq!(leak_rows.len(), 6, "{leaks}");
        assert!(leak_rows[0].contains("<code>main.fetchWithTimeout.func1</code>"));
        assert!(leak_rows[0].contains("chan send"));
        assert!(leak_rows[0].contains("goleaks/main.go:119"));
        assert!(page.contains("<table id=\"goroutine-groups\">"));
        assert!(page.contains("Creation stack of goroutine leak 1"));

        let suspects = element(&page, "<table id=\"leak-suspects\">", "</table>");
        assert!(rows(suspects, "suspect").is_empty());
        assert!(rows(suspects, "none")[0].contains("none"));
        // No GC cycle in this run: a sentence instead of a chart.
        assert!(!page.contains("chart gc"));
        assert!(page.contains("No GC cycle was recorded"));
    }

    #[test]
    fn every_report_string_is_escaped() {
        let hostile = "main.(*T[int]).F<&>\"'";
        let mut report = demo_report();
        let suspect = &mut report.leak_suspects.as_mut().unwrap()[0];
        suspect.function = hostile.into();
        suspect.type_name = Some("<script>alert(1)</script>".into());
        suspect.file = "/src/a&b/\"q\".go".into();
        suspect.stack[4].function = hostile.into();
        report.alloc_sites[0].function = hostile.into();
        report.target.exe = "/bin/<b>srv</b>".into();
        report.sampling.note = "a < b && c > d".into();
        let page = render(&report, None);
        assert_well_formed_and_self_contained(&page);
        let escaped = "main.(*T[int]).F&lt;&amp;&gt;&quot;&#39;";
        let suspects = element(&page, "<table id=\"leak-suspects\">", "</table>");
        assert!(
            suspects.contains(&format!("<code>{escaped}</code>")),
            "{suspects}"
        );
        assert!(suspects.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(suspects.contains("title=\"/src/a&amp;b/&quot;q&quot;.go:112\""));
        assert!(page.matches(escaped).count() >= 4);
        assert!(!page.contains("F<&>"));
        assert!(!page.contains("<script>alert"));
        assert!(!page.contains("<b>srv"));
        assert!(page.contains("a &lt; b &amp;&amp; c &gt; d"));
    }

    fn empty_report(mode: &str) -> Report {
        let mut report = demo_report();
        report.mode = mode.into();
        report.duration_s = 0.0;
        report.alloc_sites.clear();
        report.leak_suspects = (mode == "sampled").then(Vec::new);
        report.goroutines = None;
        report.goroutine_leaks = None;
        report.goroutine_groups = None;
        report.gc.cycles = 0;
        report.gc.timeline.clear();
        report.sample_rate_bytes = None;
        report.mem_profile_rate = None;
        report.target.exit = None;
        report
    }

    #[test]
    fn empty_sections_still_render() {
        for mode in ["sampled", "all-allocs"] {
            let page = render(&empty_report(mode), None);
            assert_well_formed_and_self_contained(&page);
            for table in ["leak-suspects", "goroutine-leaks", "alloc-sites"] {
                let table = element(&page, &format!("<table id=\"{table}\">"), "</table>");
                let none = rows(table, "none");
                assert_eq!(none.len(), 1, "{mode}: {table}");
                assert!(none[0].contains(">none"), "{mode}: {table}");
            }
            assert!(page.contains("No GC cycle was recorded"));
            assert!(!page.contains("<svg"));
        }
        let all_allocs = render(&empty_report("all-allocs"), None);
        assert!(all_allocs.contains("leak detection needs sampled mode"));
        assert!(all_allocs.contains("In-use memory is known in sampled mode only"));
        assert!(all_allocs.contains("goroutines were not tracked"));
    }

    #[test]
    fn stripped_binaries_get_a_timeline_of_cycle_times() {
        let mut report = demo_report();
        for cycle in &mut report.gc.timeline {
            *cycle = GcCycleReport {
                cycle: None,
                at_s: cycle.at_s,
                heap_start: None,
                heap_end: None,
                heap_marked: None,
                heap_goal: None,
            };
        }
        let page = render(&report, None);
        assert_well_formed_and_self_contained(&page);
        let gc = element(&page, "<svg class=\"chart gc\"", "</svg>");
        assert!(!gc.contains("<polyline"));
        assert!(!gc.contains("<circle"));
        let ticks = element(gc, "<path class=\"cycles\"", "/>");
        assert_eq!(ticks.matches('M').count(), 10, "{ticks}");
        assert!(page.contains("only the times of the cycles are known"));
    }

    #[test]
    fn odd_numbers_never_reach_the_markup() {
        let mut report = demo_report();
        report.duration_s = f64::NAN;
        report.allocations.bytes_per_s = f64::INFINITY;
        let suspect: &mut LeakSuspect = &mut report.leak_suspects.as_mut().unwrap()[0];
        suspect.growth_bytes_per_s = f64::NAN;
        suspect.oldest_age_s = f64::NEG_INFINITY;
        suspect.steadiness = f64::NAN;
        report.alloc_sites[0].bytes = u64::MAX;
        report.alloc_sites[0].lifetime_ms = Some(Lifetimes {
            count: u64::MAX,
            buckets: vec![
                LifetimeBucket {
                    le_ms: u64::MAX,
                    count: u64::MAX,
                },
                LifetimeBucket { le_ms: 0, count: 1 },
                LifetimeBucket { le_ms: 3, count: 2 },
            ],
            ..Lifetimes::default()
        });
        report.gc.timeline[0].at_s = f64::NAN;
        report.gc.timeline[1].heap_goal = Some(u64::MAX);
        report.gc.timeline.reverse();
        let page = render(&report, None);
        assert_well_formed_and_self_contained(&page);
        // Not on powers of two: drawn as given, one bar each.
        let chart = element(&page, "<svg class=\"chart lifetime\"", "</svg>");
        assert_eq!(chart.matches("<rect").count(), 3, "{chart}");
    }

    #[test]
    fn lifetime_charts_share_one_log_scale() {
        let bucket = |le_ms, count| LifetimeBucket { le_ms, count };
        let short = [bucket(0, 5), bucket(2, 1)];
        let long = [bucket(1024, 3), bucket(16, 2)];
        let bounds = shared_bounds(short.iter().chain(&long)).unwrap();
        assert_eq!(bounds, vec![0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]);
        let bars: Vec<(u64, u64)> = lifetime_bars(&long, Some(&bounds))
            .iter()
            .filter(|b| b.count > 0)
            .map(|b| (b.le_ms, b.count))
            .collect();
        assert_eq!(bars, vec![(16, 2), (1024, 3)]);
        // Widened to eight bars, downwards first.
        assert_eq!(
            shared_bounds([bucket(2048, 1), bucket(4096, 1)].iter()),
            Some(vec![32, 64, 128, 256, 512, 1024, 2048, 4096])
        );
        assert_eq!(
            shared_bounds([bucket(2, 1)].iter()),
            Some(vec![0, 1, 2, 4, 8, 16, 32, 64])
        );
        assert_eq!(shared_bounds([bucket(1 << 63, 1)].iter()).unwrap().len(), 8);
        assert_eq!(shared_bounds([].iter()), None);
        assert_eq!(shared_bounds([bucket(3, 1)].iter()), None);
        assert_eq!(lifetime_bars(&long, None)[0].le_ms, 16);
        assert_eq!(bucket_label(0), "0ms");
        assert_eq!(bucket_label(512), "512ms");
        assert_eq!(bucket_label(2048), "2.0s");
        assert_eq!(bucket_label(65536), "1m06s");
    }

    #[test]
    fn long_timelines_keep_each_columns_extremes() {
        let points: Vec<(f64, f64)> = (0..10_000)
            .map(|i| (f64::from(i) / 100.0, f64::from(i % 7)))
            .collect();
        let kept = thin_out(points.clone(), 100.0);
        assert_eq!(kept.len(), 200);
        assert!(kept.windows(2).all(|pair| pair[0].0 <= pair[1].0));
        assert!(kept.iter().any(|p| p.1 == 0.0) && kept.iter().any(|p| p.1 == 6.0));
        assert_eq!(thin_out(points[..150].to_vec(), 100.0).len(), 150);
    }

    #[test]
    fn axis_ticks_are_round_numbers() {
        let ticks = Ticks::new(12.4, 1.0, 8, false);
        assert_eq!(
            ticks.values,
            vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0]
        );
        assert_eq!(ticks.label(4.0), "4");
        let mib = binary_unit(13.0 * 1048576.0);
        assert_eq!(mib.1, "MiB");
        let ticks = Ticks::new(13.0 * 1048576.0, mib.0, 5, false);
        assert_eq!(ticks.label(ticks.top()), "15");
        let small = Ticks::new(0.3, 1.0, 6, false);
        assert_eq!(small.label(small.values[1]), "0.05");
        let counts = Ticks::new(2.0, 1.0, 4, true);
        assert_eq!(counts.values, vec![0.0, 1.0, 2.0]);
        let nothing = Ticks::new(0.0, 1.0, 4, true);
        assert!(nothing.top() > 0.0);
    }

    #[test]
    fn flame_graph_is_embedded_as_its_own_document() {
        let lines = [
            "main.main;main.handle;main.leak 1000",
            "main.main;main.handle;main.(*T[int]).F<&> 300",
            "main.main;main.render 2500",
        ];
        let mut svg = Vec::new();
        inferno::flamegraph::from_lines(
            &mut inferno::flamegraph::Options::default(),
            lines.iter().copied(),
            &mut svg,
        )
        .unwrap();
        let svg = String::from_utf8(svg).unwrap();
        let page = render(&demo_report(), Some(&svg));
        assert_well_formed_and_self_contained(&page);
        let section = element(&page, "<section id=\"flamegraph\">", "</section>");
        let iframe = element(section, "<iframe", "</iframe>");
        let height = root_svg_height(&svg[svg.find("<svg").unwrap()..]).unwrap();
        assert!(iframe.contains(&format!("style=\"height:{:.1}px\"", height + 2.0)));
        // The whole document sits in one attribute: its first raw quote is the closing one.
        let srcdoc = &iframe[iframe.find("srcdoc=\"").unwrap() + 8..];
        let srcdoc = &srcdoc[..srcdoc.find('"').unwrap()];
        assert!(srcdoc.starts_with("&lt;!DOCTYPE html&gt;"), "{srcdoc:.200}");
        assert!(srcdoc.ends_with("&lt;/svg&gt;&lt;/body&gt;&lt;/html&gt;"));
        assert!(!srcdoc.contains('<') && !srcdoc.contains('>'));
        // The SVG's own script comes along, after the replaceState stub; its prolog does not.
        assert!(srcdoc.contains("history.replaceState=function(){};"));
        assert!(srcdoc.contains("function init(evt)"));
        assert!(!srcdoc.contains("&lt;?xml"));
        assert!(!srcdoc.contains("DOCTYPE svg"));
        // inferno escaped the name for XML, the attribute escapes it again.
        assert!(srcdoc.contains("main.(*T[int]).F&amp;lt;&amp;amp;&amp;gt;"));
        assert!(page.contains("<a href=\"#flamegraph\">"));

        let not_svg = render(&demo_report(), Some("flame graph failed"));
        assert!(not_svg.contains("not an SVG image"));
        assert!(!not_svg.contains("<iframe"));
    }

    #[test]
    fn svg_height_is_read_from_the_root_element_only() {
        assert_eq!(
            root_svg_height(
                "<svg version=\"1.1\" width=\"1200\" height=\"134\" x=\"1\"><svg height=\"5\">"
            ),
            Some(134.0)
        );
        assert_eq!(
            root_svg_height("<svg width=\"1\"><rect height=\"5\"/>"),
            None
        );
        assert_eq!(root_svg_height("<svg height=\"-3\">"), None);
        assert_eq!(root_svg_height("<svg height=\"1e9\">"), Some(20_000.0));
        assert_eq!(root_svg_height("<svg height=\"134"), None);
    }
}

//! The agent's HTTP answers: Prometheus metrics, pprof profiles, JSON reports and the list of
//! traced processes. Everything is computed from the live analyses when asked.
//!
//! `/metrics` cardinality: per traced process, 15 fixed series plus at most
//! `--metrics-top-sites` sites by live bytes and as many leak suspects; plus the agent's own
//! ~25 series. 100 processes at the default 10 sites: about 3,500 series.

use serde::Serialize;

use crate::{
    agent::{
        container::Placement,
        http::{Request, Response},
        metrics::{self, Exposition, Kind},
        traced::{RateReason, Traced},
        Agent, Skip,
    },
    analysis::{LeakVerdict, Site},
    export::{pprof::write_pprof_preferring, Profile},
};

/// One traced process, as `/api/targets` lists it.
#[derive(Serialize)]
struct TargetEntry<'a> {
    pid: u32,
    exe: String,
    go_version: &'a str,
    #[serde(flatten)]
    placement: &'a Placement,
    uptime_s: f64,
    sample_rate_bytes: u64,
    sample_rate_reason: RateReason,
    goroutine_records: bool,
    records: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    recording: Option<String>,
}

#[derive(Serialize)]
struct Targets<'a> {
    node: Option<&'a str>,
    ready: bool,
    targets: Vec<TargetEntry<'a>>,
    skipped: std::collections::BTreeMap<&'static str, u64>,
}

/// A sample of a per-site family: labelled with the process and the site's location.
fn site_sample(out: &mut Exposition, pid: &str, site: &Site, value: f64) {
    let line = site.key.line.to_string();
    out.sample(
        &[
            ("pid", pid),
            ("function", &site.key.function),
            ("file", &site.key.file),
            ("line", &line),
        ],
        value,
    );
}

impl Agent {
    pub(super) fn answer(&mut self, request: &Request) -> Response {
        // (HEAD gets the same answer; the server sends its headers without the body.)
        match request.path.as_str() {
            "/healthz" => Response::text(200, "ok\n"),
            "/readyz" if self.ready => Response::text(200, "ready\n"),
            "/readyz" => Response::unavailable("still looking at the running processes"),
            "/metrics" => Response::bytes(metrics::CONTENT_TYPE, self.metrics().into_bytes()),
            "/api/targets" => Response::json(&self.target_list()),
            "/api/report" => self.with_target(request, |agent, pid| {
                let traced = &agent.targets[&pid];
                Response::json(&traced.report(&agent.global_counters, agent.options.top))
            }),
            "/debug/pprof/heap" | "/debug/pprof/allocs" => {
                let allocations = request.path.ends_with("allocs");
                self.with_target(request, |agent, pid| agent.pprof(pid, allocations))
            }
            "/" => Response::text(
                200,
                "memtrace agent\n\n/metrics\n/api/targets\n/api/report?pid=PID\n\
                 /debug/pprof/heap?pid=PID\n/debug/pprof/allocs?pid=PID\n/healthz\n/readyz\n",
            ),
            other => Response::not_found(other),
        }
    }

    /// Runs `answer` for the process named by `?pid=`, or says what is wrong with it.
    fn with_target(
        &mut self,
        request: &Request,
        answer: impl FnOnce(&mut Agent, u32) -> Response,
    ) -> Response {
        let Some(text) = request.param("pid") else {
            return Response::bad_request("add ?pid=PID (see /api/targets)");
        };
        let Ok(pid) = text.parse::<u32>() else {
            return Response::bad_request(&format!("pid {text:?} is not a number"));
        };
        if !self.targets.contains_key(&pid) {
            return Response::not_found(&format!("pid {pid} is not traced (see /api/targets)"));
        }
        if let Some(traced) = self.targets.get_mut(&pid) {
            traced.refresh_stats(&self.tracer, &self.global_counters);
        }
        answer(self, pid)
    }

    fn pprof(&self, pid: u32, allocations: bool) -> Response {
        let traced = &self.targets[&pid];
        let report = traced.report(&self.global_counters, usize::MAX);
        let profile = Profile::new(&traced.analysis, &report);
        let mut body = Vec::new();
        match write_pprof_preferring(&profile, allocations, &mut body) {
            Ok(()) => Response::bytes("application/octet-stream", body).with_header(
                "Content-Disposition",
                format!(
                    "attachment; filename=\"{}-{pid}.pb.gz\"",
                    if allocations { "allocs" } else { "heap" }
                ),
            ),
            Err(error) => Response::text(500, format!("encoding the profile: {error}\n")),
        }
    }

    fn target_list(&self) -> Targets<'_> {
        let mut targets: Vec<TargetEntry> = self
            .targets
            .values()
            .map(|traced| TargetEntry {
                pid: traced.pid(),
                exe: traced.target.exe.display().to_string(),
                go_version: &traced.target.binary.build_info().go_version,
                placement: &traced.placement,
                uptime_s: traced.started.elapsed().as_secs_f64(),
                sample_rate_bytes: traced.rate_bytes(),
                sample_rate_reason: traced.rate_reason,
                goroutine_records: traced.goroutine_records(),
                records: traced.records,
                recording: traced
                    .recording
                    .as_ref()
                    .map(|recording| recording.path().display().to_string()),
            })
            .collect();
        targets.sort_by_key(|entry| entry.pid);
        Targets {
            node: self.options.node.as_deref(),
            ready: self.ready,
            targets,
            skipped: Skip::ALL
                .iter()
                .map(|skip| {
                    (
                        skip.name(),
                        self.counters.skipped.get(skip).copied().unwrap_or(0),
                    )
                })
                .collect(),
        }
    }

    fn metrics(&self) -> String {
        let mut out = Exposition::default();
        let mut targets: Vec<&Traced> = self.targets.values().collect();
        targets.sort_by_key(|traced| traced.pid());
        let node = self.options.node.as_deref().unwrap_or("");
        let pids: Vec<String> = targets.iter().map(|t| t.pid().to_string()).collect();
        // A pass over every live sampled object: once per process and scrape.
        let suspects: Vec<Vec<LeakVerdict>> = targets
            .iter()
            .map(|t| t.analysis.leak_suspects(&t.analysis.live_summaries()))
            .collect();

        out.family(
            "memtrace_target_info",
            Kind::Gauge,
            "A traced Go process: its executable, Go version, container, pod and node.",
        );
        for (traced, pid) in targets.iter().zip(&pids) {
            let placement = &traced.placement;
            let exe = traced.target.exe.display().to_string();
            out.sample(
                &[
                    ("pid", pid),
                    ("exe", &exe),
                    ("go_version", &traced.target.binary.build_info().go_version),
                    (
                        "container_id",
                        placement.container_id.as_deref().unwrap_or(""),
                    ),
                    ("pod_uid", placement.pod_uid.as_deref().unwrap_or("")),
                    ("namespace", placement.namespace.as_deref().unwrap_or("")),
                    ("pod", placement.pod_name.as_deref().unwrap_or("")),
                    ("node", node),
                ],
                1.0,
            );
        }

        type Value = fn(&Traced) -> f64;
        let per_target: [(&str, Kind, &str, Value); 12] = [
            (
                "memtrace_live_bytes_estimate",
                Kind::Gauge,
                "Heap bytes of sampled objects not freed yet, estimated from the samples.",
                |t| t.analysis.sites().iter().map(|s| s.live_bytes).sum(),
            ),
            (
                "memtrace_alloc_bytes_total",
                Kind::Counter,
                "Bytes allocated since memtrace attached, estimated from the samples.",
                |t| t.analysis.sites().iter().map(|s| s.bytes).sum(),
            ),
            (
                "memtrace_alloc_objects_total",
                Kind::Counter,
                "Objects allocated since memtrace attached, estimated from the samples.",
                |t| t.analysis.sites().iter().map(|s| s.objects).sum(),
            ),
            (
                "memtrace_gc_cycles_total",
                Kind::Counter,
                "GC cycles seen since memtrace attached.",
                |t| t.stats.gc_cycles as f64,
            ),
            (
                "memtrace_goroutines",
                Kind::Gauge,
                "Live user goroutines.",
                |t| t.analysis.goroutines.live_user() as f64,
            ),
            (
                "memtrace_goroutines_created_total",
                Kind::Counter,
                "Goroutines created since memtrace attached (exact).",
                |t| t.stats.goroutines_created as f64,
            ),
            (
                "memtrace_goroutine_leak_groups",
                Kind::Gauge,
                "Groups of goroutines from one go statement that pile up (goroutine leaks).",
                |t| t.analysis.goroutines.leaks().len() as f64,
            ),
            (
                "memtrace_events_total",
                Kind::Counter,
                "Records received from the kernel for this process.",
                |t| t.records as f64,
            ),
            (
                "memtrace_events_dropped_total",
                Kind::Counter,
                "Records lost because the ring buffer was full (their counts are exact).",
                |t| t.stats.ringbuf_drops as f64,
            ),
            (
                "memtrace_stack_failures_total",
                Kind::Counter,
                "Samples whose stack could not be captured.",
                |t| t.stats.stack_failures as f64,
            ),
            (
                "memtrace_sample_rate_bytes",
                Kind::Gauge,
                "The heap profiler's rate: one sample per this many bytes allocated.",
                |t| t.rate_bytes() as f64,
            ),
            (
                "memtrace_budget_changes_total",
                Kind::Counter,
                "Times the overhead budget changed this process's sample rate or goroutine records.",
                |t| t.budget_changes as f64,
            ),
        ];
        for (name, kind, help, value) in per_target {
            out.family(name, kind, help);
            for (traced, pid) in targets.iter().zip(&pids) {
                out.sample(&[("pid", pid)], value(traced));
            }
        }
        out.family(
            "memtrace_leak_suspects",
            Kind::Gauge,
            "Allocation sites whose live bytes grow steadily (leak suspects).",
        );
        for (verdicts, pid) in suspects.iter().zip(&pids) {
            out.sample(&[("pid", pid)], verdicts.len() as f64);
        }
        out.family(
            "memtrace_budget_throttled",
            Kind::Gauge,
            "1 while the overhead budget holds this process above its own sample rate or its goroutine records off.",
        );
        for (traced, pid) in targets.iter().zip(&pids) {
            let throttled = traced.rate_reason == RateReason::Budget || !traced.goroutine_records();
            out.sample(&[("pid", pid)], f64::from(u8::from(throttled)));
        }

        let top = self.options.metrics_top_sites;
        out.family(
            "memtrace_site_live_bytes",
            Kind::Gauge,
            "Live bytes estimated per allocation site, the largest --metrics-top-sites per process.",
        );
        for (traced, pid) in targets.iter().zip(&pids) {
            let sites = traced.analysis.sites();
            let mut order: Vec<usize> = (0..sites.len())
                .filter(|&i| sites[i].live_bytes > 0.0)
                .collect();
            order.sort_by(|&a, &b| sites[b].live_bytes.total_cmp(&sites[a].live_bytes));
            for &index in order.iter().take(top) {
                site_sample(&mut out, pid, &sites[index], sites[index].live_bytes);
            }
        }
        out.family(
            "memtrace_leak_suspect_growth_bytes_per_second",
            Kind::Gauge,
            "Growth of a leak suspect's live bytes (at most --metrics-top-sites per process).",
        );
        for ((traced, verdicts), pid) in targets.iter().zip(&suspects).zip(&pids) {
            let sites = traced.analysis.sites();
            for verdict in verdicts.iter().take(top) {
                let site = &sites[verdict.site as usize];
                site_sample(&mut out, pid, site, verdict.growth_bytes_per_s);
            }
        }

        self.agent_metrics(&mut out);
        metrics::write_process_metrics(&mut out, &metrics::self_usage());
        out.finish()
    }

    fn agent_metrics(&self, out: &mut Exposition) {
        let counters = &self.counters;
        let global = |index: u32| {
            self.global_counters
                .get(index as usize)
                .copied()
                .unwrap_or(0) as f64
        };
        out.family(
            "memtrace_agent_targets",
            Kind::Gauge,
            "Processes traced now.",
        )
        .sample(&[], self.targets.len() as f64);
        out.family(
            "memtrace_agent_probe_sets",
            Kind::Gauge,
            "Binaries with probes attached (shared by their processes).",
        )
        .sample(&[], self.binaries.len() as f64);
        out.family(
            "memtrace_agent_attached_total",
            Kind::Counter,
            "Processes memtrace started tracing.",
        )
        .sample(&[], counters.attached as f64);
        out.family(
            "memtrace_agent_detached_total",
            Kind::Counter,
            "Processes memtrace stopped tracing (most had exited).",
        )
        .sample(&[], counters.detached as f64);
        out.family(
            "memtrace_agent_exec_events_total",
            Kind::Counter,
            "Program starts (exec) seen on the node.",
        )
        .sample(&[], counters.exec_events as f64);
        out.family(
            "memtrace_agent_skipped_total",
            Kind::Counter,
            "Processes not traced, by reason.",
        );
        for skip in Skip::ALL {
            out.sample(
                &[("reason", skip.name())],
                counters.skipped.get(&skip).copied().unwrap_or(0) as f64,
            );
        }
        out.family(
            "memtrace_agent_events_lost_total",
            Kind::Counter,
            "Events that could not be attributed or sent: probe hits in processes not traced (yet), a full STATS map, process exec/exit records lost, records of processes no longer traced.",
        );
        out.sample(
            &[("kind", "untraced-process")],
            global(memtrace_common::global_counter::UNKNOWN_TARGET),
        );
        out.sample(
            &[("kind", "stats-map-full")],
            global(memtrace_common::global_counter::STATS_MAP_FULL),
        );
        out.sample(
            &[("kind", "process-events")],
            global(memtrace_common::global_counter::PROCESS_EVENTS_LOST),
        );
        out.sample(&[("kind", "stray-records")], counters.stray_records as f64);
        out.family(
            "memtrace_agent_goroutine_records_thinned_total",
            Kind::Counter,
            "Goroutine creations whose record the per-process limit held back (bursts above half a process's budget within 100 ms); every creation is still counted.",
        )
        .sample(
            &[],
            global(memtrace_common::global_counter::GOROUTINE_RECORDS_THINNED),
        );
        out.family(
            "memtrace_agent_budget_events_per_second",
            Kind::Gauge,
            "The overhead budget: events per second allowed per process and for the node.",
        );
        out.sample(&[("scope", "process")], self.options.budget.per_process);
        out.sample(&[("scope", "node")], self.options.budget.node);
        if let Some(dir) = &self.record_dir {
            out.family(
                "memtrace_agent_recordings_deleted_total",
                Kind::Counter,
                "Trace files deleted to keep --record-dir under --record-max-bytes.",
            )
            .sample(&[], dir.deleted_files as f64);
        }
        out.family(
            "memtrace_agent_uptime_seconds",
            Kind::Gauge,
            "Seconds since the agent started.",
        )
        .sample(&[], self.started.elapsed().as_secs_f64());
    }
}

//! Loading the eBPF object, configuring targets, attaching probes, reading counters.

use std::{collections::HashMap as StdHashMap, io, path::Path, sync::Arc};

use aya::{
    maps::{
        Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf, StackTraceMap,
    },
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeLinkId, UProbeScope},
        RawTracePoint, UProbe,
    },
    util::nr_cpus,
    Ebpf, EbpfLoader,
};
use aya_log::EbpfLogger;
use memtrace_common::{
    global_counter, TargetConfig, TargetStats, EXP_TABLE_ENTRIES, EXP_TABLE_SHIFT, NUM_SIZE_CLASSES,
};

use crate::{
    error::{Error, Result},
    probes::ProbeSite,
    runtime::size_to_class_table,
};

/// The eBPF object built by build.rs from memtrace-ebpf.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memtrace"));

/// Ring-buffer size: 16 MiB holds ~15,000 stack samples, seconds of headroom at any sample rate
/// the defaults produce.
pub const DEFAULT_RING_BYTES: u32 = 16 << 20;

/// The eBPF programs, one per probe kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// On every allocation entry point: count every allocation, sample stacks.
    AllocEntry,
    /// A no-op on the same sites: the kernel's trap cost alone (benchmarks).
    AllocFloor,
    /// Once per GC cycle.
    GcCycle,
    /// Allocations the runtime's heap profiler samples.
    ObjectAlloc,
    /// Their deaths.
    ObjectFree,
    /// `runtime.main` started.
    RuntimeReady,
    /// A goroutine was created.
    GoroutineCreate,
}

impl Program {
    const ALL: [Program; 7] = [
        Program::AllocEntry,
        Program::AllocFloor,
        Program::GcCycle,
        Program::ObjectAlloc,
        Program::ObjectFree,
        Program::RuntimeReady,
        Program::GoroutineCreate,
    ];

    fn name(self) -> &'static str {
        match self {
            Program::AllocEntry => "alloc_entry",
            Program::AllocFloor => "alloc_floor",
            Program::GcCycle => "gc_cycle",
            Program::ObjectAlloc => "object_alloc",
            Program::ObjectFree => "object_free",
            Program::RuntimeReady => "runtime_ready",
            Program::GoroutineCreate => "goroutine_create",
        }
    }
}

/// The raw tracepoints that report process exec and exit (node agent).
const PROCESS_EVENT_PROGRAMS: [(&str, &str); 2] = [
    ("process_exec", "sched_process_exec"),
    ("process_exit", "sched_process_exit"),
];

/// Probes attached together (for one binary), detached together.
#[derive(Default)]
pub struct ProbeLinks(Vec<(&'static str, UProbeLinkId)>);

impl ProbeLinks {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The loaded eBPF object.
pub struct Tracer {
    ebpf: Ebpf,
    /// Forwards the probes' aya-log diagnostics to the `log` crate (shown with `-vv`).
    logger: Option<EbpfLogger<&'static dyn log::Log>>,
    links: Vec<(&'static str, UProbeLinkId)>,
}

/// Maps an aya error to ours, telling permission problems apart.
fn bpf_error(what: &str, error: impl std::error::Error + 'static) -> Error {
    let message = format!("{what}: {error}");
    let mut source: Option<&dyn std::error::Error> = Some(&error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if matches!(io.kind(), io::ErrorKind::PermissionDenied)
                || io.raw_os_error() == Some(libc::EPERM)
            {
                return Error::PermissionDenied(message);
            }
        }
        source = e.source();
    }
    Error::BpfUnavailable(message)
}

impl Tracer {
    /// Loads the programs and fills the lookup tables. Needs CAP_BPF and CAP_PERFMON (root).
    pub fn load(ring_bytes: u32) -> Result<Tracer> {
        if EBPF_OBJECT.is_empty() {
            return Err(Error::BpfUnavailable(
                "this memtrace was built with AYA_BUILD_SKIP=1, without its eBPF programs".into(),
            ));
        }
        // Locked memory limits only matter on kernels before 5.11; raising them is harmless.
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };

        // The probes' aya-log diagnostics cost a wakeup each: only on with -vv.
        let probe_log_level: u8 = if log::log_enabled!(log::Level::Debug) {
            aya_log::Level::Debug as u8
        } else {
            0
        };
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", ring_bytes)
            .override_global(aya_log::LEVEL, &probe_log_level, false)
            .load(EBPF_OBJECT)
            .map_err(|e| bpf_error("loading the eBPF programs", e))?;
        for name in Program::ALL.map(Program::name) {
            let program: &mut UProbe = ebpf
                .program_mut(name)
                .ok_or_else(|| Error::BpfUnavailable(format!("program {name} missing")))?
                .try_into()
                .map_err(|e| bpf_error(name, e))?;
            program.load().map_err(|e| bpf_error(name, e))?;
        }
        for (name, _) in PROCESS_EVENT_PROGRAMS {
            let program: &mut RawTracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| Error::BpfUnavailable(format!("program {name} missing")))?
                .try_into()
                .map_err(|e| bpf_error(name, e))?;
            program.load().map_err(|e| bpf_error(name, e))?;
        }
        let logger = match EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(error) => {
                log::debug!("no eBPF diagnostics: {error}");
                None
            }
        };
        let mut tracer = Tracer {
            ebpf,
            logger,
            links: Vec::new(),
        };
        tracer.fill_tables()?;
        Ok(tracer)
    }

    fn fill_tables(&mut self) -> Result<()> {
        let mut classes: Array<_, u8> = Array::try_from(self.map_mut("SIZE_TO_CLASS")?)
            .map_err(|e| bpf_error("SIZE_TO_CLASS", e))?;
        for (index, class) in size_to_class_table().into_iter().enumerate() {
            classes
                .set(index as u32, class, 0)
                .map_err(|e| bpf_error("SIZE_TO_CLASS", e))?;
        }
        let mut draws: Array<_, u64> =
            Array::try_from(self.map_mut("EXP_TABLE")?).map_err(|e| bpf_error("EXP_TABLE", e))?;
        for (index, draw) in exponential_quantiles().into_iter().enumerate() {
            draws
                .set(index as u32, draw, 0)
                .map_err(|e| bpf_error("EXP_TABLE", e))?;
        }
        Ok(())
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| Error::BpfUnavailable(format!("map {name} missing")))
    }

    fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf
            .map(name)
            .ok_or_else(|| Error::BpfUnavailable(format!("map {name} missing")))
    }

    /// Registers a process: the probes ignore processes without an entry.
    pub fn add_target(&mut self, pid: u32, config: TargetConfig) -> Result<()> {
        let cpus = nr_cpus().map_err(|(what, e)| bpf_error(what, e))?;
        let zero = PerCpuValues::try_from(vec![TargetStats::ZERO; cpus])
            .map_err(|e| bpf_error("STATS", e))?;
        let mut stats: PerCpuHashMap<_, u32, TargetStats> =
            PerCpuHashMap::try_from(self.map_mut("STATS")?).map_err(|e| bpf_error("STATS", e))?;
        stats
            .insert(pid, zero, 0)
            .map_err(|e| bpf_error("STATS", e))?;
        self.set_target_config(pid, config)
    }

    /// Forgets a process: its configuration and counters. Its probes then ignore it (and
    /// count its hits as of an unknown target), and a new process with the same pid starts
    /// from zero.
    pub fn remove_target(&mut self, pid: u32) -> Result<()> {
        let mut targets: HashMap<_, u32, TargetConfig> =
            HashMap::try_from(self.map_mut("TARGETS")?).map_err(|e| bpf_error("TARGETS", e))?;
        let removed = targets.remove(&pid);
        let mut stats: PerCpuHashMap<_, u32, TargetStats> =
            PerCpuHashMap::try_from(self.map_mut("STATS")?).map_err(|e| bpf_error("STATS", e))?;
        // A missing entry is fine (never added, or removed already); other failures are not.
        for result in [removed, stats.remove(&pid)] {
            match result {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(error) => return Err(bpf_error("removing a target", error)),
            }
        }
        Ok(())
    }

    /// The pids that have a `TARGETS` or `STATS` entry (for leak checks: each should be a
    /// process memtrace traces).
    pub fn target_entries(&self) -> Result<Vec<u32>> {
        let targets: HashMap<_, u32, TargetConfig> =
            HashMap::try_from(self.map("TARGETS")?).map_err(|e| bpf_error("TARGETS", e))?;
        let stats: PerCpuHashMap<_, u32, TargetStats> =
            PerCpuHashMap::try_from(self.map("STATS")?).map_err(|e| bpf_error("STATS", e))?;
        let mut pids: Vec<u32> = targets.keys().chain(stats.keys()).flatten().collect();
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    /// Attaches the raw tracepoints that report every exec and the exits of traced processes.
    pub fn attach_process_events(&mut self) -> Result<()> {
        for (name, tracepoint) in PROCESS_EVENT_PROGRAMS {
            let program: &mut RawTracePoint = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| Error::BpfUnavailable(format!("program {name} missing")))?
                .try_into()
                .map_err(|e| bpf_error(name, e))?;
            // Detached when the program is dropped with the Ebpf object.
            program
                .attach(tracepoint)
                .map_err(|e| bpf_error(&format!("attaching to {tracepoint}"), e))?;
        }
        Ok(())
    }

    /// Replaces a target's configuration (its counters stay).
    pub fn set_target_config(&mut self, pid: u32, config: TargetConfig) -> Result<()> {
        let mut targets: HashMap<_, u32, TargetConfig> =
            HashMap::try_from(self.map_mut("TARGETS")?).map_err(|e| bpf_error("TARGETS", e))?;
        targets
            .insert(pid, config, 0)
            .map_err(|e| bpf_error("TARGETS", e))
    }

    /// Attaches `program` to each site of `binary` (a path the kernel resolves to the
    /// executable's inode, e.g. /proc/PID/exe), firing only in process `pid`. The site's entry
    /// kind is the attach cookie.
    pub fn attach(
        &mut self,
        program: Program,
        sites: &[&ProbeSite],
        binary: &Path,
        pid: u32,
    ) -> Result<()> {
        let scope = UProbeScope::OneProcess(
            std::num::NonZeroU32::new(pid).ok_or(Error::NoSuchProcess(pid))?,
        );
        let mut links = ProbeLinks::default();
        let attached = self.attach_scoped(program, sites, binary, scope, &mut links);
        // Whatever was attached is detached with the session, also after a failure.
        self.links.append(&mut links.0);
        attached
    }

    /// Attaches `program` to each site of `binary` for every process that runs that file
    /// (the node agent: one set of probes per binary; `TARGETS` filters by pid). The links
    /// go into `links`, also those made before a failure.
    pub fn attach_shared(
        &mut self,
        program: Program,
        sites: &[&ProbeSite],
        binary: &Path,
        links: &mut ProbeLinks,
    ) -> Result<()> {
        self.attach_scoped(program, sites, binary, UProbeScope::AllProcesses, links)
    }

    fn attach_scoped(
        &mut self,
        program: Program,
        sites: &[&ProbeSite],
        binary: &Path,
        scope: UProbeScope,
        links: &mut ProbeLinks,
    ) -> Result<()> {
        let name = program.name();
        for site in sites {
            let uprobe: &mut UProbe = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| Error::BpfUnavailable(format!("program {name} missing")))?
                .try_into()
                .map_err(|e| bpf_error(name, e))?;
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(site.file_offset),
                cookie: Some(site.entry_kind),
            };
            let link = uprobe
                .attach(point, binary, scope)
                .map_err(|e| bpf_error(&format!("attaching to {}", site.function), e))?;
            links.0.push((name, link));
        }
        Ok(())
    }

    /// Hands `links` to the tracer: [`Tracer::detach_all`] (or drop) detaches them.
    pub fn adopt(&mut self, links: ProbeLinks) {
        self.links.extend(links.0);
    }

    /// Detaches `links` on a thread of their own: closing a uprobe waits for an RCU grace
    /// period, which the agent's event loop must not sit through.
    pub fn detach_in_background(&mut self, links: ProbeLinks) {
        let links = self.take_links(links.0);
        if !links.is_empty() {
            std::thread::spawn(move || drop(links));
        }
    }

    fn take_links(&mut self, ids: Vec<(&'static str, UProbeLinkId)>) -> Vec<UProbeLink> {
        let mut links = Vec::with_capacity(ids.len());
        for (program, link_id) in ids {
            if let Some(Ok(uprobe)) = self.ebpf.program_mut(program).map(<&mut UProbe>::try_from) {
                match uprobe.take_link(link_id) {
                    Ok(link) => links.push(link),
                    Err(error) => log::warn!("cannot detach a probe of {program}: {error}"),
                }
            }
        }
        links
    }

    /// Removes every probe. Also happens on drop.
    ///
    /// Closing a uprobe waits for an RCU grace period (about 80-100 ms each on this VM). The
    /// links are closed in parallel; the kernel still serializes most of that work (measured:
    /// 18 probes take 1.6 s instead of 1.9 s).
    pub fn detach_all(&mut self) {
        let ids = std::mem::take(&mut self.links);
        let links = self.take_links(ids);
        std::thread::scope(|scope| {
            for link in links {
                scope.spawn(move || drop(link));
            }
        });
    }

    /// A target's statistics, summed over CPUs.
    pub fn stats(&self, pid: u32) -> Result<TargetStats> {
        let map: PerCpuHashMap<_, u32, TargetStats> =
            PerCpuHashMap::try_from(self.map("STATS")?).map_err(|e| bpf_error("STATS", e))?;
        let per_cpu = map.get(&pid, 0).map_err(|e| bpf_error("STATS", e))?;
        Ok(sum_stats(per_cpu.iter()))
    }

    /// Losses not attributable to a target, summed over CPUs (see `global_counter`).
    pub fn global_counters(&self) -> Result<[u64; global_counter::COUNT as usize]> {
        let map: PerCpuArray<_, u64> = PerCpuArray::try_from(self.map("GLOBAL_COUNTERS")?)
            .map_err(|e| bpf_error("GLOBAL_COUNTERS", e))?;
        let mut totals = [0; global_counter::COUNT as usize];
        for (index, total) in totals.iter_mut().enumerate() {
            let values = map
                .get(&(index as u32), 0)
                .map_err(|e| bpf_error("GLOBAL_COUNTERS", e))?;
            *total = values.iter().sum();
        }
        Ok(totals)
    }

    /// Takes the probes' log channel out, for the event loop.
    pub fn take_logger(&mut self) -> Option<EbpfLogger<&'static dyn log::Log>> {
        self.logger.take()
    }

    /// Takes the goroutine creation stacks out, for the event loop.
    pub fn take_creation_stacks(&mut self) -> Result<CreationStacks> {
        let map = self
            .ebpf
            .take_map("GOROUTINE_STACKS")
            .ok_or_else(|| Error::BpfUnavailable("map GOROUTINE_STACKS missing".into()))?;
        Ok(CreationStacks {
            map: StackTraceMap::try_from(map).map_err(|e| bpf_error("GOROUTINE_STACKS", e))?,
            cache: StdHashMap::new(),
        })
    }

    /// Takes the ring buffer out, for the event loop.
    pub fn take_ring_buffer(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or_else(|| Error::BpfUnavailable("map EVENTS missing".into()))?;
        RingBuf::try_from(map).map_err(|e| bpf_error("EVENTS", e))
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// The goroutine creation stacks the kernel stored, each read once. Ids stay valid: the probe
/// never replaces a stored stack and memtrace never deletes one.
pub struct CreationStacks {
    map: StackTraceMap<MapData>,
    cache: StdHashMap<u32, Arc<[u64]>>,
}

impl CreationStacks {
    /// The stack stored under `id` (runtime addresses, innermost first); empty if the map has
    /// none.
    pub fn get(&mut self, id: u32) -> Arc<[u64]> {
        let map = &self.map;
        self.cache
            .entry(id)
            .or_insert_with(|| match map.get(&id, 0) {
                Ok(stack) => stack.frames().iter().map(|frame| frame.ip).collect(),
                Err(error) => {
                    log::debug!("goroutine creation stack {id}: {error}");
                    Arc::from([])
                }
            })
            .clone()
    }
}

/// Adds up per-CPU statistics (the sampler countdown is per CPU and not summed).
pub fn sum_stats<'a>(per_cpu: impl IntoIterator<Item = &'a TargetStats>) -> TargetStats {
    let mut total = TargetStats::ZERO;
    for s in per_cpu {
        total.objects += s.objects;
        total.requested_bytes += s.requested_bytes;
        total.tiny_objects += s.tiny_objects;
        total.tiny_blocks += s.tiny_blocks;
        total.large_objects += s.large_objects;
        total.large_bytes += s.large_bytes;
        for class in 0..NUM_SIZE_CLASSES {
            total.class_objects[class] += s.class_objects[class];
        }
        total.samples += s.samples;
        total.gc_cycles += s.gc_cycles;
        total.ringbuf_drops += s.ringbuf_drops;
        total.stack_failures += s.stack_failures;
        total.stack_truncated += s.stack_truncated;
        total.read_failures += s.read_failures;
        total.objects_sampled += s.objects_sampled;
        total.objects_freed += s.objects_freed;
        total.goroutines_created += s.goroutines_created;
    }
    total
}

/// Quantiles of the unit exponential distribution at (i + 0.5) / N, in fixed point: drawing a
/// uniformly random entry gives an (almost) exponentially distributed gap without floating
/// point in BPF.
pub fn exponential_quantiles() -> Vec<u64> {
    let n = f64::from(EXP_TABLE_ENTRIES);
    (0..EXP_TABLE_ENTRIES)
        .map(|i| {
            let u = (f64::from(i) + 0.5) / n;
            let draw = -(1.0 - u).ln();
            (draw * f64::from(1u32 << EXP_TABLE_SHIFT)).round() as u64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_table_has_unit_mean() {
        let table = exponential_quantiles();
        let mean = table.iter().sum::<u64>() as f64 / table.len() as f64;
        let mean = mean / f64::from(1u32 << EXP_TABLE_SHIFT);
        assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
        assert!(table.windows(2).all(|w| w[0] <= w[1]));
    }
}

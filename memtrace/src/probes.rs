//! Where the probes go, decided from what the binary contains.
//!
//! - Go 1.21–1.23: `runtime.mallocgc` is monolithic; probe it and classify in BPF.
//! - Go 1.24+: mallocgc dispatches to five split functions (`mallocgcTiny`, ...); probe them,
//!   not mallocgc, so each allocation is counted once and its kind is known from the site.
//! - Size-specialized malloc (1.27 default, 1.26 with the experiment): compiled code calls
//!   `mallocgc{SmallScanNoHeader,SmallNoScan}SC<n>`, `mallocgcTinySC<n>` or `mallocgcTinySize<n>`
//!   directly, and mallocgc reaches the same functions through its tables. Probing them (and not
//!   mallocgc) counts both kinds of call once.
//!
//! Every probe sits on the function's `push %rbp`: the kernel emulates that instruction (about
//! 1 µs per hit instead of ~15 µs for a single-stepped one), and it runs after the stack-bound
//! check, so a `morestack` round trip does not fire it twice.

use memtrace_common::entry;

use crate::{
    binary::{call_offsets, entry_probe_offset, Function, GoBinary},
    error::{Error, Result},
};

/// One uprobe: on which instruction, and what the probe should know about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSite {
    pub function: String,
    /// ELF virtual address of the probed instruction.
    pub vaddr: u64,
    /// Its offset in the file, which is what a uprobe is attached to.
    pub file_offset: u64,
    /// One of `memtrace_common::entry` (the attach cookie).
    pub entry_kind: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePlan {
    /// Every allocation (`--all-allocs`).
    pub alloc: Vec<ProbeSite>,
    /// `runtime.gcSweep`: once per GC cycle.
    pub gc_cycle: Option<ProbeSite>,
    /// `runtime.profilealloc`: allocations the runtime's heap profiler samples.
    pub object_alloc: Option<ProbeSite>,
    /// `runtime.freeSpecial`: the sweeper freeing their specials when they die.
    pub object_free: Option<ProbeSite>,
    /// `runtime.main`: the runtime finished initializing.
    pub runtime_ready: Option<ProbeSite>,
    /// The `call runtime.runqput` in `runtime.newproc.func1`: a goroutine was created.
    pub goroutine_create: Option<ProbeSite>,
}

/// The five functions Go 1.24+ mallocgc dispatches to.
const SPLIT_FUNCTIONS: [(&str, u64); 5] = [
    ("runtime.mallocgcTiny", entry::TINY),
    ("runtime.mallocgcSmallNoscan", entry::SMALL_NOSCAN),
    ("runtime.mallocgcSmallScanNoHeader", entry::SMALL_SCAN),
    ("runtime.mallocgcSmallScanHeader", entry::SMALL_SCAN_HEADER),
    ("runtime.mallocgcLarge", entry::LARGE),
];

/// Size-specialized entry points: name prefix (followed by digits) and their kind. The
/// `*SlowPath` functions are only reached from these and are not probed.
const SPECIALIZED_PREFIXES: [(&str, u64); 4] = [
    ("runtime.mallocgcSmallScanNoHeaderSC", entry::SMALL_SCAN),
    ("runtime.mallocgcSmallNoScanSC", entry::SMALL_NOSCAN),
    ("runtime.mallocgcTinySC", entry::TINY),
    ("runtime.mallocgcTinySize", entry::TINY),
];

fn specialized_kind(name: &str) -> Option<u64> {
    SPECIALIZED_PREFIXES.iter().find_map(|&(prefix, kind)| {
        let suffix = name.strip_prefix(prefix)?;
        (!suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit())).then_some(kind)
    })
}

impl ProbePlan {
    pub fn for_binary(binary: &GoBinary) -> Result<ProbePlan> {
        let mut targets: Vec<(Function, u64)> = SPLIT_FUNCTIONS
            .iter()
            .filter_map(|&(name, kind)| Some((binary.function(name)?, kind)))
            .collect();
        if targets.is_empty() {
            let mallocgc = binary
                .function("runtime.mallocgc")
                .ok_or_else(|| Error::NoProbeSites(binary.path().to_path_buf()))?;
            targets.push((mallocgc, entry::MALLOCGC));
        }
        let mut specialized: Vec<(Function, u64)> = binary
            .functions_where(|name| specialized_kind(name).is_some())
            .into_iter()
            .filter_map(|f| {
                let kind = specialized_kind(&f.name)?;
                Some((f, kind))
            })
            .collect();
        specialized.sort_by_key(|(f, _)| f.addr);
        specialized.dedup_by_key(|(f, _)| f.addr);
        targets.extend(specialized);

        let alloc = targets
            .into_iter()
            .map(|(function, kind)| probe_site(binary, &function, kind))
            .collect::<Result<Vec<_>>>()?;
        let optional = |name: &str| match binary.function(name) {
            Some(f) => probe_site(binary, &f, 0).map(Some),
            None => Ok(None),
        };
        Ok(ProbePlan {
            alloc,
            gc_cycle: optional("runtime.gcSweep")?,
            object_alloc: optional("runtime.profilealloc")?,
            object_free: optional("runtime.freeSpecial")?,
            runtime_ready: optional("runtime.main")?,
            goroutine_create: goroutine_create_site(binary)?,
        })
    }
}

/// Where a new goroutine is handed to the scheduler: `newproc` runs
/// `systemstack(func() { newg := newproc1(...); runqput(pp, newg, true); ... })` in every
/// supported version, and that closure is the only caller of `runqput` that creates goroutines
/// (`runqput` itself also runs for every wakeup). `None` when the closure or the call is not
/// there (inlined or renamed by a future compiler).
fn goroutine_create_site(binary: &GoBinary) -> Result<Option<ProbeSite>> {
    let (Some(closure), Some(runqput)) = (
        binary.function("runtime.newproc.func1"),
        binary.function("runtime.runqput"),
    ) else {
        return Ok(None);
    };
    let code = binary.code(&closure).map_err(|source| Error::Binary {
        path: binary.path().to_path_buf(),
        source,
    })?;
    let [offset] = call_offsets(code, closure.addr, runqput.addr)[..] else {
        return Ok(None);
    };
    let vaddr = closure.addr + offset;
    Ok(binary.file_offset(vaddr).map(|file_offset| ProbeSite {
        function: format!("{}+0x{offset:x}", closure.name),
        vaddr,
        file_offset,
        entry_kind: 0,
    }))
}

fn probe_site(binary: &GoBinary, function: &Function, entry_kind: u64) -> Result<ProbeSite> {
    let malformed = |source| Error::Binary {
        path: binary.path().to_path_buf(),
        source,
    };
    let code = binary.code(function).map_err(malformed)?;
    let offset = entry_probe_offset(code, function.addr).map_err(malformed)?;
    let vaddr = function.addr + offset;
    let file_offset = binary.file_offset(vaddr).ok_or_else(|| Error::Binary {
        path: binary.path().to_path_buf(),
        source: crate::binary::BinaryError::Malformed(format!(
            "{} at 0x{vaddr:x} is outside the loadable segments",
            function.name
        )),
    })?;
    Ok(ProbeSite {
        function: function.name.clone(),
        vaddr,
        file_offset,
        entry_kind,
    })
}

#[cfg(test)]
mod tests {
    use memtrace_tests::fixtures::{go_program, go_program_with_env, Variant};

    use super::*;

    fn plan_of(path: &std::path::Path) -> ProbePlan {
        ProbePlan::for_binary(&GoBinary::open(path).unwrap()).unwrap()
    }

    fn names(plan: &ProbePlan) -> Vec<&str> {
        plan.alloc.iter().map(|s| s.function.as_str()).collect()
    }

    #[test]
    fn plans_follow_what_each_go_version_contains() {
        for (version, expected_split) in [
            ("1.21.13", 0),
            ("1.22.10", 0),
            ("1.24.11", 5),
            ("1.26.6", 5),
            ("1.27.3", 4),
        ] {
            let plans: Vec<ProbePlan> = Variant::ALL
                .iter()
                .map(|&variant| plan_of(&go_program("allocs", version, variant)))
                .collect();
            let default = &plans[0];
            let split = default
                .alloc
                .iter()
                .filter(|s| SPLIT_FUNCTIONS.iter().any(|(n, _)| *n == s.function))
                .count();
            assert_eq!(split, expected_split, "{version}: {:?}", names(default));
            let mallocgc = names(default).contains(&"runtime.mallocgc");
            assert_eq!(
                mallocgc,
                expected_split == 0,
                "{version}: mallocgc only without split functions"
            );
            let specialized = default
                .alloc
                .iter()
                .filter(|s| specialized_kind(&s.function).is_some())
                .count();
            // 1.27 turns size-specialized malloc on by default: 7 + 6 + 1 entry points.
            assert_eq!(
                specialized,
                if version == "1.27.3" { 14 } else { 0 },
                "{version}"
            );
            assert!(default.gc_cycle.is_some(), "{version}: runtime.gcSweep");
            assert!(
                default.object_alloc.is_some(),
                "{version}: runtime.profilealloc"
            );
            assert!(
                default.object_free.is_some(),
                "{version}: runtime.freeSpecial"
            );
            assert!(default.runtime_ready.is_some(), "{version}: runtime.main");
            let create = default
                .goroutine_create
                .as_ref()
                .expect("goroutine creation site");
            assert!(
                create.function.starts_with("runtime.newproc.func1+0x"),
                "{version}: {create:?}"
            );
            // The probe sits on a `call rel32` (e8) to runqput, which the kernel emulates.
            let binary = GoBinary::open(&go_program("allocs", version, Variant::Default)).unwrap();
            let at = create.file_offset as usize;
            assert_eq!(binary.bytes()[at], 0xe8, "{version}");
            let rel = i32::from_le_bytes(binary.bytes()[at + 1..at + 5].try_into().unwrap());
            let runqput = binary.function("runtime.runqput").unwrap().addr;
            assert_eq!(
                create.vaddr.wrapping_add_signed(5 + i64::from(rel)),
                runqput,
                "{version}"
            );
            // Stripping keeps every address (found through .gopclntab instead of .symtab).
            assert_eq!(plans[1], *default, "{version}: stripped plan");
            // PIE moves code but finds the same functions.
            assert_eq!(names(&plans[2]), names(default), "{version}: PIE plan");
            for site in &default.alloc {
                assert_eq!(
                    site.file_offset,
                    site.vaddr - 0x400000,
                    "{version}: {}",
                    site.function
                );
            }
        }
    }

    #[test]
    fn go_1_26_with_size_specialized_malloc_probes_its_entry_points() {
        let path = go_program_with_env(
            "allocs",
            "1.26.6",
            Variant::Default,
            &[("GOEXPERIMENT", "sizespecializedmalloc")],
            "ssm",
        );
        let plan = plan_of(&path);
        let specialized = plan
            .alloc
            .iter()
            .filter(|s| specialized_kind(&s.function).is_some())
            .count();
        // SmallScanNoHeaderSC1..26, SmallNoScanSC2..26 and TinySize1..15.
        assert_eq!(specialized, 26 + 25 + 15, "{:?}", names(&plan));
        // mallocgcTiny and mallocgcSmallScanNoHeader become dead code: every size they serve
        // goes through the tables. The other three split functions remain.
        let mut rest: Vec<&str> = names(&plan)
            .into_iter()
            .filter(|n| specialized_kind(n).is_none())
            .collect();
        rest.sort_unstable();
        assert_eq!(
            rest,
            [
                "runtime.mallocgcLarge",
                "runtime.mallocgcSmallNoscan",
                "runtime.mallocgcSmallScanHeader"
            ]
        );
    }

    #[test]
    fn recognises_specialized_entry_points() {
        assert_eq!(
            specialized_kind("runtime.mallocgcSmallScanNoHeaderSC7"),
            Some(entry::SMALL_SCAN)
        );
        assert_eq!(
            specialized_kind("runtime.mallocgcSmallNoScanSC26"),
            Some(entry::SMALL_NOSCAN)
        );
        assert_eq!(
            specialized_kind("runtime.mallocgcTinySC2"),
            Some(entry::TINY)
        );
        assert_eq!(
            specialized_kind("runtime.mallocgcTinySize15"),
            Some(entry::TINY)
        );
        assert_eq!(specialized_kind("runtime.mallocgcTinySlowPath"), None);
        assert_eq!(specialized_kind("runtime.mallocgcSmallScanSlowPath"), None);
        assert_eq!(specialized_kind("runtime.mallocgcTinySC"), None);
    }
}

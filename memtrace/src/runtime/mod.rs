//! Facts about the Go runtime that memtrace relies on, per Go version, kept as data.
//!
//! Struct offsets live in `layouts.json`; the size classes are the same in every supported
//! version (`runtime/sizeclasses.go`, `internal/runtime/gc/sizeclasses.go` from 1.26).

use serde::Deserialize;

use crate::binary::GoVersion;

/// Oldest and newest Go minor versions memtrace knows the runtime of.
pub const OLDEST_SUPPORTED_MINOR: u32 = 21;

/// Offsets (bytes) into runtime structures and globals for one Go minor version.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub struct RuntimeLayout {
    pub minor: u32,
    /// `g.m`
    pub g_m: u32,
    /// `g.goid`
    pub g_goid: u32,
    /// `g.parentGoid`, `g.gopc`, `g.startpc`, `g.atomicstatus` (u32), `g.waitreason` (u8)
    pub g_parent_goid: u32,
    pub g_gopc: u32,
    pub g_startpc: u32,
    pub g_atomicstatus: u32,
    pub g_waitreason: u32,
    /// `m.p`
    pub m_p: u32,
    /// `p.mcache`
    pub p_mcache: u32,
    /// `mcache.tiny` (`tinyoffset` follows)
    pub mcache_tiny: u32,
    /// `runtime.work` + this = `work.cycles`
    pub work_cycles: u64,
    /// `runtime.work` + this = `work.heap0` (heap1, heap2 follow)
    pub work_heap0: u64,
    /// `runtime.gcController` + this = `gcPercentHeapGoal`
    pub gc_controller_heap_goal: u64,
    /// Whether pointerful objects over 512 B get an 8-byte malloc header (allocheaders).
    pub malloc_headers: bool,
    /// `special.kind` (u8)
    pub special_kind: u32,
    /// `_KindSpecialProfile`
    pub profile_special_kind: u32,
}

/// The struct members of [`RuntimeLayout`] that DWARF can confirm or correct.
const DWARF_MEMBERS: [(&str, &str); 11] = [
    ("runtime.g", "m"),
    ("runtime.g", "goid"),
    ("runtime.g", "parentGoid"),
    ("runtime.g", "gopc"),
    ("runtime.g", "startpc"),
    ("runtime.g", "atomicstatus"),
    ("runtime.g", "waitreason"),
    ("runtime.m", "p"),
    ("runtime.p", "mcache"),
    ("runtime.mcache", "tiny"),
    ("runtime.special", "kind"),
];

impl RuntimeLayout {
    fn member_mut(&mut self, member: (&str, &str)) -> Option<&mut u32> {
        Some(match member {
            ("runtime.g", "m") => &mut self.g_m,
            ("runtime.g", "goid") => &mut self.g_goid,
            ("runtime.g", "parentGoid") => &mut self.g_parent_goid,
            ("runtime.g", "gopc") => &mut self.g_gopc,
            ("runtime.g", "startpc") => &mut self.g_startpc,
            ("runtime.g", "atomicstatus") => &mut self.g_atomicstatus,
            ("runtime.g", "waitreason") => &mut self.g_waitreason,
            ("runtime.m", "p") => &mut self.m_p,
            ("runtime.p", "mcache") => &mut self.p_mcache,
            ("runtime.mcache", "tiny") => &mut self.mcache_tiny,
            ("runtime.special", "kind") => &mut self.special_kind,
            _ => return None,
        })
    }

    /// This layout with every offset the binary's DWARF declares put in, and the members whose
    /// table value it corrected (`struct.member table -> dwarf`).
    pub fn with_dwarf(mut self, binary: &crate::binary::GoBinary) -> (RuntimeLayout, Vec<String>) {
        let offsets = binary.dwarf_member_offsets(&DWARF_MEMBERS);
        let mut corrected = Vec::new();
        for member in DWARF_MEMBERS {
            let Some(&offset) = offsets.get(&(member.0.to_string(), member.1.to_string())) else {
                continue;
            };
            let (Ok(offset), Some(field)) = (u32::try_from(offset), self.member_mut(member)) else {
                continue;
            };
            if *field != offset {
                corrected.push(format!("{}.{} {} -> {offset}", member.0, member.1, *field));
                *field = offset;
            }
        }
        (self, corrected)
    }
}

#[derive(Deserialize)]
struct LayoutFile {
    layouts: Vec<RuntimeLayout>,
}

/// The layout for a Go version, or `None` when memtrace does not know that runtime.
pub fn layout_for(version: GoVersion) -> Option<RuntimeLayout> {
    if version.major != 1 {
        return None;
    }
    let file: LayoutFile = serde_json::from_str(include_str!("layouts.json"))
        .expect("layouts.json is part of the source and parsed by a unit test");
    file.layouts.into_iter().find(|l| l.minor == version.minor)
}

/// Newest Go minor version in the layout table.
pub fn newest_supported_minor() -> u32 {
    (OLDEST_SUPPORTED_MINOR..100)
        .take_while(|&minor| {
            layout_for(GoVersion {
                major: 1,
                minor,
                patch: 0,
            })
            .is_some()
        })
        .last()
        .unwrap_or(OLDEST_SUPPORTED_MINOR)
}

/// `class_to_size`: bytes of each size class (class 0 is unused).
pub const CLASS_TO_SIZE: [u32; memtrace_common::NUM_SIZE_CLASSES] = [
    0, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256, 288, 320,
    352, 384, 416, 448, 480, 512, 576, 640, 704, 768, 896, 1024, 1152, 1280, 1408, 1536, 1792,
    2048, 2304, 2688, 3072, 3200, 3456, 4096, 4864, 5376, 6144, 6528, 6784, 6912, 8192, 9472, 9728,
    10240, 10880, 12288, 13568, 14336, 16384, 18432, 19072, 20480, 21760, 24576, 27264, 28672,
    32768,
];

/// The runtime's `size_to_class8` (sizes 0..=1024 by 8) then `size_to_class128`
/// (1024..=32768 by 128): the smallest class that holds the size.
pub fn size_to_class_table() -> Vec<u8> {
    let smallest_class = |size: u32| {
        CLASS_TO_SIZE
            .iter()
            .position(|&class_size| class_size >= size)
            .map_or(0, |class| class as u8)
    };
    let small = (0..=1024 / 8).map(|i| smallest_class(i * 8));
    let medium = (0..=(32768 - 1024) / 128).map(|i| smallest_class(1024 + i * 128));
    small.chain(medium).collect()
}

/// Slot bytes of a size class.
pub fn class_size(class: u32) -> u64 {
    CLASS_TO_SIZE
        .get(class as usize)
        .copied()
        .unwrap_or(0)
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_table_covers_supported_versions() {
        for minor in 21..=27 {
            let layout = layout_for(GoVersion {
                major: 1,
                minor,
                patch: 0,
            })
            .unwrap();
            assert_eq!(layout.minor, minor);
        }
        assert!(layout_for(GoVersion {
            major: 1,
            minor: 20,
            patch: 0
        })
        .is_none());
        assert_eq!(newest_supported_minor(), 27);
    }

    #[test]
    fn size_to_class_matches_the_runtime_tables() {
        let table = size_to_class_table();
        assert_eq!(table.len() as u32, memtrace_common::SIZE_TO_CLASS_ENTRIES);
        // Spot checks against runtime/sizeclasses.go's size_to_class8 and size_to_class128.
        assert_eq!(&table[..12], &[0, 1, 2, 3, 4, 5, 5, 6, 6, 7, 7, 8]);
        assert_eq!(table[1024 / 8], 32); // 1024 B -> class 32
        assert_eq!(table[130], 33); // 1025..=1152 -> 1152 B
        assert_eq!(table[129 + 248], 67); // 32768 B
        for size in 1..=32768u32 {
            let index = if size <= 1024 {
                size.div_ceil(8)
            } else {
                129 + (size - 1024).div_ceil(128)
            };
            let class = table[index as usize] as usize;
            assert!(CLASS_TO_SIZE[class] >= size, "size {size} class {class}");
            assert!(
                CLASS_TO_SIZE[class - 1] < size,
                "size {size} not the smallest class"
            );
        }
    }
}

/// `runtime.MemProfileRate`'s initial value (`512 * 1024`), as stored in the binary.
const MEM_PROFILE_RATE_INITIAL: u64 = 512 * 1024;

/// Functions that read `runtime.MemProfileRate` directly in every supported version.
const MEM_PROFILE_RATE_READERS: [&str; 4] = [
    "runtime.profilealloc",
    "runtime.mallocgc",
    "runtime.mallocgcSmallNoscan",
    "runtime.mallocgcSmallScanNoHeader",
];

/// Link-time address of `runtime.MemProfileRate`: from `.symtab`, or, in stripped binaries
/// (data symbols are not in `.gopclntab`), by finding the 8-byte RIP-relative load in the
/// allocator that reads a variable whose initial value in the file is 512 KiB.
pub fn locate_mem_profile_rate(binary: &crate::binary::GoBinary) -> Option<u64> {
    binary
        .data_symbol("runtime.MemProfileRate")
        .or_else(|| mem_profile_rate_from_code(binary))
}

fn mem_profile_rate_from_code(binary: &crate::binary::GoBinary) -> Option<u64> {
    let initial_value = |vaddr: u64| {
        let offset = usize::try_from(binary.file_offset(vaddr)?).ok()?;
        let bytes = binary.bytes().get(offset..offset.checked_add(8)?)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    };
    let mut candidates: Vec<u64> = Vec::new();
    for function in MEM_PROFILE_RATE_READERS
        .iter()
        .filter_map(|name| binary.function(name))
    {
        let Ok(code) = binary.code(&function) else {
            continue;
        };
        let mut decoder =
            iced_x86::Decoder::with_ip(64, code, function.addr, iced_x86::DecoderOptions::NONE);
        while decoder.can_decode() {
            let instruction = decoder.decode();
            if instruction.is_ip_rel_memory_operand()
                && instruction.memory_size().size() == 8
                && initial_value(instruction.ip_rel_memory_address())
                    == Some(MEM_PROFILE_RATE_INITIAL)
            {
                candidates.push(instruction.ip_rel_memory_address());
            }
        }
    }
    // Every reader must agree on one variable.
    candidates.sort_unstable();
    candidates.dedup();
    match candidates.as_slice() {
        [addr] => Some(*addr),
        _ => None,
    }
}

/// RIP-relative data addresses the code of `name` refers to, with the instructions' operand
/// sizes, in code order.
fn rip_relative_operands(binary: &crate::binary::GoBinary, name: &str) -> Vec<(u64, usize)> {
    let Some(function) = binary.function(name) else {
        return Vec::new();
    };
    let Ok(code) = binary.code(&function) else {
        return Vec::new();
    };
    let mut decoder =
        iced_x86::Decoder::with_ip(64, code, function.addr, iced_x86::DecoderOptions::NONE);
    let mut operands = Vec::new();
    while decoder.can_decode() {
        let instruction = decoder.decode();
        if instruction.is_ip_rel_memory_operand() {
            operands.push((
                instruction.ip_rel_memory_address(),
                instruction.memory_size().size(),
            ));
        }
    }
    operands
}

/// Link-time address of `runtime.allgs` (the `[]*g` of every goroutine): from `.symtab`, or in
/// stripped binaries from `runtime.allgadd`, whose `allgs = append(allgs, gp)` is the only
/// place there that touches three consecutive words (the slice's pointer, length and
/// capacity).
pub fn locate_allgs(binary: &crate::binary::GoBinary) -> Option<u64> {
    binary.data_symbol("runtime.allgs").or_else(|| {
        let addresses: std::collections::BTreeSet<u64> =
            rip_relative_operands(binary, "runtime.allgadd")
                .into_iter()
                .map(|(addr, _)| addr)
                .collect();
        let mut slices = addresses
            .iter()
            .copied()
            .filter(|&addr| addresses.contains(&(addr + 8)) && addresses.contains(&(addr + 16)));
        match (slices.next(), slices.next()) {
            (Some(addr), None) => Some(addr),
            _ => None,
        }
    })
}

/// Link-time address and length of `runtime.waitReasonStrings` (a `[N]string`): from
/// `.symtab`, or in stripped binaries from `runtime.waitReason.String`, which compares the
/// reason with N (`cmp $N, %al`) and indexes the array with a RIP-relative `lea`.
pub fn locate_wait_reason_strings(binary: &crate::binary::GoBinary) -> Option<(u64, u64)> {
    if let Some((addr, size)) = binary.data_symbol_with_size("runtime.waitReasonStrings") {
        return Some((addr, size / 16));
    }
    let function = binary.function("runtime.waitReason.String")?;
    let code = binary.code(&function).ok()?;
    let mut decoder =
        iced_x86::Decoder::with_ip(64, code, function.addr, iced_x86::DecoderOptions::NONE);
    let (mut count, mut array) = (None, None);
    while decoder.can_decode() && (count.is_none() || array.is_none()) {
        let instruction = decoder.decode();
        match instruction.mnemonic() {
            iced_x86::Mnemonic::Cmp
                if count.is_none()
                    && instruction.op0_register() == iced_x86::Register::AL
                    && instruction.op1_kind() == iced_x86::OpKind::Immediate8 =>
            {
                count = Some(u64::from(instruction.immediate8()));
            }
            // The array is in .data (writable: its strings are relocated in PIE builds); the
            // other `lea` loads the "unknown wait reason" string from read-only data.
            iced_x86::Mnemonic::Lea
                if instruction.is_ip_rel_memory_operand()
                    && binary.is_writable_data(instruction.ip_rel_memory_address()) =>
            {
                array = Some(instruction.ip_rel_memory_address());
            }
            _ => {}
        }
    }
    Some((array?, count?))
}

#[cfg(test)]
mod locate_tests {
    use memtrace_tests::fixtures::{go_program, Variant, GO_VERSIONS};

    use super::*;
    use crate::binary::GoBinary;

    #[test]
    fn finds_mem_profile_rate_without_symbols() {
        for version in GO_VERSIONS {
            // Where .symtab exists, the code-based search must find the symbol's address.
            for variant in [Variant::Default, Variant::Pie] {
                let binary = GoBinary::open(&go_program("idle", version, variant)).unwrap();
                let symbol = binary.data_symbol("runtime.MemProfileRate");
                assert!(symbol.is_some(), "{version} {}", variant.name());
                assert_eq!(
                    mem_profile_rate_from_code(&binary),
                    symbol,
                    "{version} {}",
                    variant.name()
                );
            }
            // Stripping moves data, so only the search itself can be checked here; the
            // end-to-end tests check that sampling really starts on stripped builds.
            let stripped = GoBinary::open(&go_program("idle", version, Variant::Stripped)).unwrap();
            assert!(stripped.data_symbol("runtime.MemProfileRate").is_none());
            assert!(
                locate_mem_profile_rate(&stripped).is_some(),
                "{version} stripped"
            );
        }
    }

    /// The per-version table agrees with the DWARF of every test build, so stripped binaries
    /// (which have no DWARF) get the same offsets.
    #[test]
    fn layout_table_matches_dwarf() {
        for version in GO_VERSIONS {
            let binary = GoBinary::open(&go_program("idle", version, Variant::Default)).unwrap();
            let layout = layout_for(binary.build_info().version).unwrap();
            let found = binary.dwarf_member_offsets(&DWARF_MEMBERS);
            assert_eq!(found.len(), DWARF_MEMBERS.len(), "{version}: {found:?}");
            let (_, corrected) = layout.with_dwarf(&binary);
            assert!(corrected.is_empty(), "{version}: {corrected:?}");
            let stripped = GoBinary::open(&go_program("idle", version, Variant::Stripped)).unwrap();
            assert!(stripped.dwarf_member_offsets(&DWARF_MEMBERS).is_empty());
        }
        // A wrong table entry is corrected from DWARF.
        let binary = GoBinary::open(&go_program("idle", "1.26.6", Variant::Default)).unwrap();
        let mut wrong = layout_for(binary.build_info().version).unwrap();
        wrong.g_gopc += 8;
        let (fixed, corrected) = wrong.with_dwarf(&binary);
        assert_eq!(fixed.g_gopc, 288);
        assert_eq!(corrected, ["runtime.g.gopc 296 -> 288"]);
    }

    #[test]
    fn finds_the_goroutine_list_and_wait_reasons_without_symbols() {
        for version in GO_VERSIONS {
            for variant in [Variant::Default, Variant::Pie] {
                let binary = GoBinary::open(&go_program("idle", version, variant)).unwrap();
                let what = format!("{version} {}", variant.name());
                let allgs = binary.data_symbol("runtime.allgs");
                assert!(allgs.is_some(), "{what}");
                let from_code = locate_allgs(&GoBinary::without_symbols(&binary));
                assert_eq!(from_code, allgs, "{what}");
                let (addr, size) = binary
                    .data_symbol_with_size("runtime.waitReasonStrings")
                    .unwrap();
                assert!(size >= 30 * 16, "{what}: {size}");
                assert_eq!(
                    locate_wait_reason_strings(&GoBinary::without_symbols(&binary)),
                    Some((addr, size / 16)),
                    "{what}"
                );
            }
            let stripped = GoBinary::open(&go_program("idle", version, Variant::Stripped)).unwrap();
            assert!(locate_allgs(&stripped).is_some(), "{version} stripped");
            assert!(
                locate_wait_reason_strings(&stripped).is_some(),
                "{version} stripped"
            );
        }
    }
}

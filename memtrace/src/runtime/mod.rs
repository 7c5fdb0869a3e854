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

//! Finding the Go runtime's tables in an ELF file: `.go.buildinfo`, `.gopclntab`, the module data
//! (`runtime.firstmoduledata`) and the funcdata area (`go:func.*`).
//!
//! Each is looked up by the most direct means available, falling back to less direct ones so
//! that stripped, PIE and section-header-less files still work:
//!
//! | table | where it is (measured on Go 1.21–1.27, linux/amd64) | fallbacks |
//! |---|---|---|
//! | build info | `.go.buildinfo` | scan writable data segments for the magic, like `debug/buildinfo` |
//! | pclntab | `.gopclntab`; in PIE before Go 1.26 `.data.rel.ro.gopclntab` (it held the relocated `textStart`) | `runtime.pcheader` symbol, word 0 of `.go.module`, scan for the header |
//! | module data | `runtime.firstmoduledata`; `.go.module` from Go 1.26 | scan writable segments for a word pointing at the pclntab header |
//! | gofunc | `go:func.*` symbol: in `.rodata` up to 1.24, inside `.gopclntab` from 1.26 | `moduledata.gofunc` |
//!
//! Go 1.27's `.go.func` section is not gofunc: it holds the `go:funcdesc` function-value
//! descriptors (`cmd/link/internal/ld/symtab.go`), while funcdata stays in `.gopclntab`.

use std::{ops::Range, sync::Arc};

use super::{
    buildinfo::{GoVersion, BUILD_INFO_MAGIC},
    elf::ElfIndex,
    pclntab::{Pclntab, GO120_MAGIC},
    read::{bytes_at, u64_at},
    BinaryError,
};

/// The build info magic is 16-byte aligned (`cmd/link` `buildinfo`, `debug/buildinfo`
/// `buildInfoAlign`).
const BUILD_INFO_ALIGN: u64 = 16;

/// Field offsets in `runtime.moduledata` (8-byte words; see `runtime/symtab.go`).
const MODULEDATA_PCHEADER: usize = 0;
const MODULEDATA_FUNCNAMETAB: usize = 8;
const MODULEDATA_TEXT: usize = 22 * 8;
/// `types`: the base that `abi.Type` name offsets are relative to (the same word in 1.21-1.27).
const MODULEDATA_TYPES: usize = 37 * 8;
/// `gofunc` follows `types, etypes, rodata` up to Go 1.26; Go 1.27 inserted `typedesclen`,
/// `itaboffset` and `itabsize` before it.
const MODULEDATA_GOFUNC_GO121: usize = 40 * 8;
const MODULEDATA_GOFUNC_GO127: usize = 43 * 8;

/// The first bytes of a Go 1.20+ pclntab header on amd64: magic, two zero pads, minLC = 1,
/// ptrSize = 8.
fn pclntab_header_prefix() -> [u8; 8] {
    let mut prefix = [0u8; 8];
    prefix[..4].copy_from_slice(&GO120_MAGIC.to_le_bytes());
    prefix[6] = 1;
    prefix[7] = 8;
    prefix
}

/// The build info blob: from its header to the end of the section or segment holding it.
pub(crate) fn find_build_info<'a>(elf: &ElfIndex, data: &'a [u8]) -> Option<&'a [u8]> {
    if let Some(range) = elf
        .section(".go.buildinfo")
        .and_then(|section| section.file_range.clone())
    {
        return data.get(range);
    }
    // Without section headers: the linker puts the blob at the start of the writable data; scan
    // the writable segments (PIE has a RELRO segment first), then the other data segments.
    let writable = elf
        .load_segments
        .iter()
        .filter(|segment| !segment.is_executable() && segment.is_writable());
    let read_only = elf
        .load_segments
        .iter()
        .filter(|segment| !segment.is_executable() && !segment.is_writable());
    writable.chain(read_only).find_map(|segment| {
        let bytes = data.get(segment.file_range())?;
        let first = (segment.vaddr.next_multiple_of(BUILD_INFO_ALIGN) - segment.vaddr) as usize;
        (first..bytes.len())
            .step_by(BUILD_INFO_ALIGN as usize)
            .find(|&at| bytes[at..].starts_with(BUILD_INFO_MAGIC))
            .map(|at| &bytes[at..])
    })
}

/// Finds and parses the pclntab. `Ok(None)` when the file has none.
pub(crate) fn load_pclntab(
    elf: &ElfIndex,
    file: &Arc<Vec<u8>>,
    version: GoVersion,
) -> Result<Option<Pclntab>, BinaryError> {
    let Some((header_vaddr, range)) = find_pclntab(elf, file) else {
        return Ok(None);
    };
    let header = file.get(range.clone()).unwrap_or_default();
    let funcname_offset = u64_at(header, 8 + 3 * 8);
    let moduledata = funcname_offset
        .and_then(|offset| find_moduledata(elf, file, header_vaddr, offset))
        .and_then(|offset| file.get(offset..));

    // Function entries are offsets from runtime.text, which the linker puts at the start of
    // `.text`. Go 1.26+ no longer stores it in the header (it needed a relocation in PIE); the
    // runtime reads moduledata.text, and Go's own tools use the `.text` section address.
    let text_start = elf
        .section(".text")
        .filter(|section| section.file_range.is_some())
        .map(|section| section.addr)
        .or_else(|| {
            let text = u64_at(moduledata?, MODULEDATA_TEXT)?;
            elf.segment_containing(text)?
                .is_executable()
                .then_some(text)
        });

    let gofunc_vaddr = elf
        .symbol("go:func.*")
        .map(|symbol| symbol.addr)
        .or_else(|| {
            let field = if version >= GoVersion::new(1, 27, 0) {
                MODULEDATA_GOFUNC_GO127
            } else {
                MODULEDATA_GOFUNC_GO121
            };
            let gofunc = u64_at(moduledata?, field)?;
            // Funcdata is read-only data, never code.
            (!elf.segment_containing(gofunc)?.is_executable()).then_some(gofunc)
        });
    let gofunc = gofunc_vaddr.and_then(|vaddr| elf.file_range_from_vaddr(vaddr));

    Pclntab::parse(Arc::clone(file), range, text_start, gofunc).map(Some)
}

/// `moduledata.types`: from the `runtime.types` symbol, or read from the module data.
pub(crate) fn find_types_base(elf: &ElfIndex, file: &Arc<Vec<u8>>) -> Option<u64> {
    if let Some(symbol) = elf.symbol("runtime.types") {
        return Some(symbol.addr);
    }
    let (header_vaddr, range) = find_pclntab(elf, file)?;
    let header = file.get(range)?;
    let funcname_offset = u64_at(header, 8 + 3 * 8)?;
    let moduledata = find_moduledata(elf, file, header_vaddr, funcname_offset)?;
    let types = u64_at(file, moduledata + MODULEDATA_TYPES)?;
    // Type data is read-only data, never code.
    (!elf.segment_containing(types)?.is_executable()).then_some(types)
}

/// The pclntab header's vaddr and the file range it may span.
fn find_pclntab(elf: &ElfIndex, file: &Arc<Vec<u8>>) -> Option<(u64, Range<usize>)> {
    let data = file.as_slice();
    for name in [".gopclntab", ".data.rel.ro.gopclntab"] {
        if let Some(section) = elf.section(name) {
            if let Some(range) = section.file_range.clone() {
                return Some((section.addr, range));
            }
        }
    }
    let header_vaddr = elf
        .symbol("runtime.pcheader")
        .map(|symbol| symbol.addr)
        .or_else(|| {
            let module = elf.section(".go.module")?.file_range.clone()?;
            u64_at(data.get(module)?, MODULEDATA_PCHEADER)
        });
    if let Some(vaddr) = header_vaddr {
        if let Some(range) = elf.file_range_from_vaddr(vaddr) {
            if data
                .get(range.clone())?
                .starts_with(&pclntab_header_prefix())
            {
                return Some((vaddr, range));
            }
        }
    }
    // Last resort: the header is 8-byte aligned in a non-executable segment; accept the first
    // candidate whose tables parse.
    let prefix = pclntab_header_prefix();
    elf.load_segments
        .iter()
        .filter(|segment| !segment.is_executable())
        .find_map(|segment| {
            let range = segment.file_range();
            let bytes = data.get(range.clone())?;
            let first = (segment.vaddr.next_multiple_of(8) - segment.vaddr) as usize;
            (first..bytes.len()).step_by(8).find_map(|at| {
                if !bytes[at..].starts_with(&prefix) {
                    return None;
                }
                let candidate = range.start + at..range.end;
                Pclntab::parse(Arc::clone(file), candidate.clone(), Some(0), None).ok()?;
                Some((segment.vaddr + at as u64, candidate))
            })
        })
}

/// File offset of `runtime.firstmoduledata`, whose first two fields point at the pclntab header
/// and at the function name table (`header + funcnameOffset`).
fn find_moduledata(
    elf: &ElfIndex,
    data: &[u8],
    header_vaddr: u64,
    funcname_offset: u64,
) -> Option<usize> {
    let expected_funcnametab = header_vaddr.checked_add(funcname_offset)?;
    let looks_right = |offset: usize| {
        u64_at(data, offset + MODULEDATA_PCHEADER) == Some(header_vaddr)
            && u64_at(data, offset + MODULEDATA_FUNCNAMETAB) == Some(expected_funcnametab)
    };
    let by_symbol = elf
        .symbol("runtime.firstmoduledata")
        .and_then(|symbol| elf.file_offset(symbol.addr))
        .and_then(|offset| usize::try_from(offset).ok());
    let by_section = elf
        .section(".go.module")
        .and_then(|section| Some(section.file_range.as_ref()?.start));
    if let Some(offset) = [by_symbol, by_section]
        .into_iter()
        .flatten()
        .find(|&offset| looks_right(offset))
    {
        return Some(offset);
    }
    // The module data is a pointer-holding variable in writable data. In PIE the file still
    // holds the link-time addresses (the dynamic relocations add the load bias to them).
    let needle = header_vaddr.to_le_bytes();
    elf.load_segments
        .iter()
        .filter(|segment| segment.is_writable())
        .find_map(|segment| {
            let range = segment.file_range();
            let bytes = data.get(range.clone())?;
            let first = (segment.vaddr.next_multiple_of(8) - segment.vaddr) as usize;
            (first..bytes.len())
                .step_by(8)
                .filter(|&at| bytes_at(bytes, at, 8) == Some(&needle[..]))
                .map(|at| range.start + at)
                .find(|&offset| looks_right(offset))
        })
}

//! Reading Go executables: linux/amd64 ELF files built by Go 1.21–1.27, whether default
//! (static `ET_EXEC`), stripped (`-ldflags='-s -w'`: no `.symtab`, no DWARF) or PIE
//! (`-buildmode=pie`, `ET_DYN`).
//!
//! [`GoBinary`] answers what the tracer needs before attaching: which Go version and
//! experiments built the binary ([`BuildInfo`]), where functions are (from `.symtab`, or from
//! the runtime's own `.gopclntab` when stripped), their machine code and probe sites
//! ([`entry_probe_offset`], [`ret_offsets`]), and file offsets for uprobes. [`Pclntab`] also
//! symbolizes addresses, inlined frames included, without DWARF.
//!
//! Input is untrusted: a corrupt or hostile file gives a [`BinaryError`] or a failed lookup,
//! never a panic.

mod buildinfo;
mod disasm;
mod dwarf;
mod elf;
mod layout;
mod pclntab;
mod read;
#[cfg(test)]
mod tests;

use std::{
    fmt::Write as _,
    io,
    path::{Path, PathBuf},
    sync::Arc,
};

pub use buildinfo::{parse_go_version, BuildInfo, GoVersion};
pub use disasm::{
    call_offsets, entry_probe_offset, ret_offsets, ENTRY_PROBE_MAX_BYTES,
    ENTRY_PROBE_MAX_INSTRUCTIONS,
};
pub use pclntab::{InlinedFrame, PcLocation, Pclntab};

use elf::ElfIndex;

/// ELF note owner and type of the Go build ID (`cmd/link/internal/ld/elf.go`).
const GO_NOTE_OWNER: &[u8] = b"Go";
const GO_NOTE_BUILD_ID: u32 = 4;
const GNU_NOTE_OWNER: &[u8] = b"GNU";

#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    #[error("cannot read {}: {}", .0.display(), .1)]
    Io(PathBuf, #[source] io::Error),
    #[error("not an ELF file")]
    NotElf,
    #[error("not a Go program (no .go.buildinfo, .note.go.buildid or .gopclntab)")]
    NotGo,
    /// Well-formed, but not something memtrace can read: another architecture, a 32-bit file,
    /// or a Go release older than the formats supported here.
    #[error("unsupported binary: {0}")]
    Unsupported(String),
    #[error("malformed binary: {0}")]
    Malformed(String),
    #[error("no `push %rbp` in the prologue of the function at {addr:#x} (a frameless function?)")]
    NoFramePointerPush { addr: u64 },
    #[error("the code of {name} ({addr:#x}, {size} bytes) is not in the file")]
    CodeNotInFile { name: String, addr: u64, size: u64 },
}

/// A function: its Go name, its ELF virtual address (before any load bias) and its size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    pub name: String,
    pub addr: u64,
    pub size: u64,
}

/// A Go executable read into memory, with its ELF structure and Go metadata indexed.
pub struct GoBinary {
    path: PathBuf,
    data: Arc<Vec<u8>>,
    elf: ElfIndex,
    build_info: BuildInfo,
    pclntab: Option<Pclntab>,
    /// `moduledata.types`, where type names live.
    types_base: Option<u64>,
}

impl std::fmt::Debug for GoBinary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoBinary")
            .field("path", &self.path)
            .field("go_version", &self.build_info.go_version)
            .field("pie", &self.is_pie())
            .field("symtab", &self.has_symtab())
            .field("pclntab", &self.pclntab)
            .finish_non_exhaustive()
    }
}

impl GoBinary {
    /// Reads and indexes the executable at `path`.
    pub fn open(path: &Path) -> Result<GoBinary, BinaryError> {
        let data = std::fs::read(path).map_err(|error| BinaryError::Io(path.to_owned(), error))?;
        GoBinary::from_bytes(path.to_owned(), data)
    }

    /// Indexes an executable already in memory; `path` is only reported back by [`Self::path`].
    pub fn from_bytes(path: PathBuf, data: Vec<u8>) -> Result<GoBinary, BinaryError> {
        let elf = ElfIndex::parse(&data)?;
        let build_info = match layout::find_build_info(&elf, &data) {
            Some(blob) => buildinfo::parse_build_info(blob)?,
            None if elf.note(&data, GO_NOTE_OWNER, GO_NOTE_BUILD_ID).is_some()
                || elf.section(".gopclntab").is_some() =>
            {
                // Every Go release since 1.13 writes build info; without it we cannot tell
                // which runtime layout to expect.
                return Err(BinaryError::Unsupported(
                    "a Go binary without .go.buildinfo (built by Go before 1.13?)".into(),
                ));
            }
            None => return Err(BinaryError::NotGo),
        };
        let data = Arc::new(data);
        let pclntab = layout::load_pclntab(&elf, &data, build_info.version)?;
        let types_base = layout::find_types_base(&elf, &data);
        Ok(GoBinary {
            path,
            data,
            elf,
            build_info,
            pclntab,
            types_base,
        })
    }

    /// The name of the Go type (`abi.Type`) at ELF virtual address `type_vaddr`, e.g.
    /// `main.session` or `[]*main.node`; `None` when the address is not a type of this binary.
    pub fn type_name(&self, type_vaddr: u64) -> Option<String> {
        // abi.Type: TFlag (u8) at 0x14, Str (nameOff, i32) at 0x28, the same in 1.21-1.27.
        const TYPE_TFLAG: usize = 0x14;
        const TYPE_STR: usize = 0x28;
        const TFLAG_EXTRA_STAR: u8 = 1 << 1;
        let types_base = self.types_base?;
        if type_vaddr < types_base {
            return None;
        }
        let at = |vaddr: u64| usize::try_from(self.elf.file_offset(vaddr)?).ok();
        let typ = at(type_vaddr)?;
        let tflag = read::u8_at(&self.data, typ + TYPE_TFLAG)?;
        let name_off = read::i32_at(&self.data, typ + TYPE_STR)?;
        let name = at(types_base.checked_add_signed(i64::from(name_off))?)?;
        // abi.Name: one flag byte, a varint length, the bytes.
        let (len, varint_len) = read::uvarint(self.data.get(name + 1..)?)?;
        let start = name + 1 + varint_len;
        let bytes = read::bytes_at(&self.data, start, usize::try_from(len).ok()?)?;
        let text = std::str::from_utf8(bytes).ok()?;
        let text = if tflag & TFLAG_EXTRA_STAR != 0 {
            text.strip_prefix('*').unwrap_or(text)
        } else {
            text
        };
        (!text.is_empty()).then(|| text.to_owned())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    pub fn build_info(&self) -> &BuildInfo {
        &self.build_info
    }

    /// Whether the file is `ET_DYN` (built with `-buildmode=pie`), so that it loads at a
    /// random base and addresses need a load bias.
    pub fn is_pie(&self) -> bool {
        self.elf.elf_type == object::elf::ET_DYN
    }

    /// Whether the file has a `.symtab` (it does unless linked with `-s`).
    pub fn has_symtab(&self) -> bool {
        self.elf.has_symtab
    }

    /// Whether the file has DWARF (`.debug_info`; Go writes it zlib-compressed).
    pub fn has_dwarf(&self) -> bool {
        [".debug_info", ".zdebug_info"]
            .iter()
            .any(|name| self.elf.section(name).is_some())
    }

    /// The Go build ID (the `.note.go.buildid` string, as `go tool buildid` prints it, e.g.
    /// `abc…/def…/ghi…/jkl…`); when the file has none, the GNU build ID in hex.
    pub fn build_id(&self) -> Option<String> {
        self.go_build_id().or_else(|| self.gnu_build_id())
    }

    /// The Go build ID string from the `Go` ELF note.
    pub fn go_build_id(&self) -> Option<String> {
        let desc = self.elf.note(&self.data, GO_NOTE_OWNER, GO_NOTE_BUILD_ID)?;
        let id = String::from_utf8_lossy(desc);
        let id = id.trim_end_matches('\0');
        (!id.is_empty()).then(|| id.to_owned())
    }

    /// The GNU build ID (`.note.gnu.build-id`, written by Go 1.24+ too) as lowercase hex.
    pub fn gnu_build_id(&self) -> Option<String> {
        let desc = self
            .elf
            .note(&self.data, GNU_NOTE_OWNER, object::elf::NT_GNU_BUILD_ID)?;
        if desc.is_empty() {
            return None;
        }
        let mut hex = String::with_capacity(desc.len() * 2);
        for byte in desc {
            let _ = write!(hex, "{byte:02x}");
        }
        Some(hex)
    }

    /// The function named exactly `name` (e.g. `runtime.mallocgc`): from `.symtab` when the
    /// file has one, otherwise (or if `.symtab` lacks it) from `.gopclntab`.
    pub fn function(&self, name: &str) -> Option<Function> {
        self.elf
            .symbol(name)
            .filter(|symbol| symbol.kind == object::elf::STT_FUNC)
            .map(|symbol| Function {
                name: name.to_owned(),
                addr: symbol.addr,
                size: symbol.size,
            })
            .or_else(|| self.pclntab.as_ref()?.find_function(name))
    }

    /// All functions whose name satisfies `pred`: the `.symtab` STT_FUNC symbols, or the
    /// `.gopclntab` functions when the file is stripped.
    pub fn functions_where(&self, pred: impl Fn(&str) -> bool) -> Vec<Function> {
        if !self.elf.symtab_functions.is_empty() {
            return self
                .elf
                .symtab_functions
                .iter()
                .filter(|function| pred(&function.name))
                .cloned()
                .collect();
        }
        match &self.pclntab {
            Some(pclntab) => pclntab
                .functions()
                .filter(|function| pred(&function.name))
                .collect(),
            None => Vec::new(),
        }
    }

    /// The address of data symbol (STT_OBJECT) `name` in `.symtab`, e.g. `runtime.work`.
    /// `None` in stripped files: `.gopclntab` only lists functions.
    pub fn data_symbol(&self, name: &str) -> Option<u64> {
        self.elf
            .symbol(name)
            .filter(|symbol| symbol.kind == object::elf::STT_OBJECT)
            .map(|symbol| symbol.addr)
    }

    /// Byte offsets of (struct, member) pairs from the binary's DWARF (only the `runtime`
    /// compilation unit is read); empty without DWARF.
    pub fn dwarf_member_offsets(
        &self,
        wanted: &[(&str, &str)],
    ) -> std::collections::HashMap<(String, String), u64> {
        if !self.has_dwarf() {
            return std::collections::HashMap::new();
        }
        dwarf::member_offsets(&self.data, wanted)
    }

    /// Whether `vaddr` lies in a writable, non-executable loadable segment (Go's `.data`,
    /// `.noptrdata`, `.bss`).
    pub fn is_writable_data(&self, vaddr: u64) -> bool {
        self.elf
            .segment_containing(vaddr)
            .is_some_and(|segment| segment.is_writable() && !segment.is_executable())
    }

    /// The same binary as if `.symtab` had been stripped (nothing moves), to check that what is
    /// found without symbols is what the symbols say.
    #[cfg(test)]
    pub(crate) fn without_symbols(&self) -> GoBinary {
        let mut elf = self.elf.clone();
        elf.symbols.clear();
        elf.symtab_functions.clear();
        GoBinary {
            path: self.path.clone(),
            data: self.data.clone(),
            elf,
            build_info: self.build_info.clone(),
            pclntab: self.pclntab.clone(),
            types_base: self.types_base,
        }
    }

    /// Like [`GoBinary::data_symbol`], with the symbol's size in bytes.
    pub fn data_symbol_with_size(&self, name: &str) -> Option<(u64, u64)> {
        self.elf
            .symbol(name)
            .filter(|symbol| symbol.kind == object::elf::STT_OBJECT)
            .map(|symbol| (symbol.addr, symbol.size))
    }

    /// The machine code of `function` (its bytes in `.text`).
    pub fn code(&self, function: &Function) -> Result<&[u8], BinaryError> {
        self.elf
            .bytes_at_vaddr(&self.data, function.addr, function.size)
            .ok_or_else(|| BinaryError::CodeNotInFile {
                name: function.name.clone(),
                addr: function.addr,
                size: function.size,
            })
    }

    /// The file offset of ELF virtual address `vaddr`, through the PT_LOAD segments (what a
    /// uprobe is attached at). `None` if no segment maps that address from the file.
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        self.elf.file_offset(vaddr)
    }

    /// `(p_vaddr, p_offset)` of the first executable PT_LOAD segment. With the start address
    /// of that file offset's mapping in `/proc/PID/maps`, this gives the load bias.
    pub fn first_exec_segment(&self) -> Option<(u64, u64)> {
        self.elf
            .load_segments
            .iter()
            .find(|segment| segment.is_executable())
            .map(|segment| (segment.vaddr, segment.offset))
    }

    /// The parsed `.gopclntab`; `None` if the file has none.
    pub fn pclntab(&self) -> Option<&Pclntab> {
        self.pclntab.as_ref()
    }
}

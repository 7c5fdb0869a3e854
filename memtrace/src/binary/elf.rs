//! An owned index of the parts of an ELF file that memtrace needs: sections, loadable
//! segments, notes and the `.symtab` symbols.
//!
//! The `object` crate parses borrowed data; copying the few hundred headers and symbols out once
//! lets [`GoBinary`](super::GoBinary) own its bytes without self-references.

use std::{collections::HashMap, ops::Range};

use object::{
    elf::{self, FileHeader64},
    read::elf::{FileHeader, ProgramHeader, SectionHeader, Sym},
    LittleEndian,
};

use super::{
    read::{bytes_at, u32_at},
    BinaryError, Function,
};

type Header = FileHeader64<LittleEndian>;

/// `e_ident` layout (the ELF specification); `object` models it as a struct, but the checks
/// below must run before the header is known to be complete.
const EI_NIDENT: usize = 16;
const EI_CLASS: usize = 4;
const EI_DATA: usize = 5;

#[derive(Clone, Debug)]
pub(crate) struct Section {
    pub name: String,
    pub addr: u64,
    /// Where the section's bytes are in the file; `None` for SHT_NOBITS (`.bss`) and for sections
    /// whose claimed range lies outside the file.
    pub file_range: Option<Range<usize>>,
}

/// A PT_LOAD program header, with its file size clipped to the bytes actually present.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LoadSegment {
    pub vaddr: u64,
    pub offset: u64,
    /// Bytes backed by the file (p_filesz, clipped to the end of the file).
    pub file_size: u64,
    pub flags: u32,
}

impl LoadSegment {
    pub fn is_executable(&self) -> bool {
        self.flags & elf::PF_X != 0
    }

    pub fn is_writable(&self) -> bool {
        self.flags & elf::PF_W != 0
    }

    /// The file offset of `vaddr` if this segment's file-backed bytes contain it.
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        let delta = vaddr.checked_sub(self.vaddr)?;
        (delta < self.file_size).then(|| self.offset + delta)
    }

    pub fn file_range(&self) -> Range<usize> {
        // Both fit in usize: they were clipped to the length of an in-memory file.
        self.offset as usize..(self.offset + self.file_size) as usize
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Symbol {
    pub addr: u64,
    pub size: u64,
    pub kind: u8,
}

#[derive(Clone)]
pub(crate) struct ElfIndex {
    pub elf_type: u16,
    pub sections: Vec<Section>,
    pub load_segments: Vec<LoadSegment>,
    /// File ranges of PT_NOTE segments (notes can be found through them when the section
    /// headers are gone).
    pub note_segments: Vec<Range<usize>>,
    pub has_symtab: bool,
    /// `.symtab` functions (STT_FUNC) in table order.
    pub symtab_functions: Vec<Function>,
    /// Every named `.symtab` symbol; the first wins when a name repeats.
    pub symbols: HashMap<String, Symbol>,
}

impl ElfIndex {
    pub fn parse(data: &[u8]) -> Result<ElfIndex, BinaryError> {
        let ident = data.get(..EI_NIDENT).ok_or(BinaryError::NotElf)?;
        if ident[..4] != elf::ELFMAG {
            return Err(BinaryError::NotElf);
        }
        if ident[EI_CLASS] != elf::ELFCLASS64 || ident[EI_DATA] != elf::ELFDATA2LSB {
            return Err(BinaryError::Unsupported(
                "only 64-bit little-endian ELF files are supported".into(),
            ));
        }
        let header = Header::parse(data).map_err(|error| malformed("ELF header", error))?;
        let endian = header
            .endian()
            .map_err(|error| malformed("ELF header", error))?;
        let machine = header.e_machine(endian);
        if machine != elf::EM_X86_64 {
            return Err(BinaryError::Unsupported(format!(
                "ELF machine {machine} is not x86-64"
            )));
        }

        let mut load_segments = Vec::new();
        let mut note_segments = Vec::new();
        let program_headers = header
            .program_headers(endian, data)
            .map_err(|error| malformed("program headers", error))?;
        for program_header in program_headers {
            let offset = program_header.p_offset(endian);
            let file_size = program_header.p_filesz(endian);
            let Some(file_range) = clipped_range(data.len(), offset, file_size) else {
                continue;
            };
            match program_header.p_type(endian) {
                elf::PT_LOAD => load_segments.push(LoadSegment {
                    vaddr: program_header.p_vaddr(endian),
                    offset,
                    file_size: file_range.len() as u64,
                    flags: program_header.p_flags(endian),
                }),
                elf::PT_NOTE => note_segments.push(file_range),
                _ => {}
            }
        }

        let section_table = header
            .sections(endian, data)
            .map_err(|error| malformed("section headers", error))?;
        let mut sections = Vec::with_capacity(section_table.len());
        for section in section_table.iter() {
            // A section whose name cannot be read is kept nameless rather than failing the
            // whole file: nothing memtrace needs depends on it.
            let name = section_table
                .section_name(endian, section)
                .map(|name| String::from_utf8_lossy(name).into_owned())
                .unwrap_or_default();
            let file_range = if section.sh_type(endian) == elf::SHT_NOBITS {
                None
            } else {
                let offset = section.sh_offset(endian);
                let size = section.sh_size(endian);
                clipped_range(data.len(), offset, size).filter(|range| range.len() as u64 == size)
            };
            sections.push(Section {
                name,
                addr: section.sh_addr(endian),
                file_range,
            });
        }

        let has_symtab = section_table
            .iter()
            .any(|section| section.sh_type(endian) == elf::SHT_SYMTAB);
        let mut symtab_functions = Vec::new();
        let mut symbols = HashMap::new();
        // A corrupt symbol table only costs the symbols: `.gopclntab` still names the functions.
        if let Ok(symbol_table) = section_table.symbols(endian, data, elf::SHT_SYMTAB) {
            for symbol in symbol_table.iter() {
                let Ok(name) = symbol_table.symbol_name(endian, symbol) else {
                    continue;
                };
                if name.is_empty() || symbol.st_shndx(endian) == elf::SHN_UNDEF {
                    continue;
                }
                let name = String::from_utf8_lossy(name).into_owned();
                let entry = Symbol {
                    addr: symbol.st_value(endian),
                    size: symbol.st_size(endian),
                    kind: symbol.st_type(),
                };
                if entry.kind == elf::STT_FUNC {
                    symtab_functions.push(Function {
                        name: name.clone(),
                        addr: entry.addr,
                        size: entry.size,
                    });
                }
                symbols.entry(name).or_insert(entry);
            }
        }

        Ok(ElfIndex {
            elf_type: header.e_type(endian),
            sections,
            load_segments,
            note_segments,
            has_symtab,
            symtab_functions,
            symbols,
        })
    }

    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|section| section.name == name)
    }

    /// The PT_LOAD segment whose file-backed bytes contain `vaddr`.
    pub fn segment_containing(&self, vaddr: u64) -> Option<&LoadSegment> {
        self.load_segments
            .iter()
            .find(|segment| segment.file_offset(vaddr).is_some())
    }

    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        self.segment_containing(vaddr)?.file_offset(vaddr)
    }

    /// The file bytes for `[vaddr, vaddr + len)`, if one segment holds all of them.
    pub fn bytes_at_vaddr<'a>(&self, data: &'a [u8], vaddr: u64, len: u64) -> Option<&'a [u8]> {
        let segment = self.segment_containing(vaddr)?;
        let end = vaddr.checked_add(len)?;
        if end - segment.vaddr > segment.file_size {
            return None;
        }
        let offset = usize::try_from(segment.file_offset(vaddr)?).ok()?;
        bytes_at(data, offset, usize::try_from(len).ok()?)
    }

    /// The file range from `vaddr` to the end of the file-backed part of its segment: the most
    /// that can be read starting there.
    pub fn file_range_from_vaddr(&self, vaddr: u64) -> Option<Range<usize>> {
        let segment = self.segment_containing(vaddr)?;
        let start = usize::try_from(segment.file_offset(vaddr)?).ok()?;
        Some(start..segment.file_range().end)
    }

    pub fn symbol(&self, name: &str) -> Option<Symbol> {
        self.symbols.get(name).copied()
    }

    /// Descriptors of the ELF notes with owner `owner` and type `note_type`, looked up in the
    /// note sections and, when there are no section headers, in the PT_NOTE segments.
    pub fn note<'a>(&self, data: &'a [u8], owner: &[u8], note_type: u32) -> Option<&'a [u8]> {
        let from_sections = self
            .sections
            .iter()
            .filter(|section| section.name.starts_with(".note"))
            .filter_map(|section| section.file_range.clone());
        from_sections
            .chain(self.note_segments.iter().cloned())
            .find_map(|range| find_note(data.get(range)?, owner, note_type))
    }
}

/// Walks a sequence of ELF notes (`Elf64_Nhdr`: namesz, descsz, type, then the name and the
/// descriptor, each padded to 4 bytes).
fn find_note<'a>(mut notes: &'a [u8], owner: &[u8], note_type: u32) -> Option<&'a [u8]> {
    while notes.len() >= 12 {
        let name_size = usize::try_from(u32_at(notes, 0)?).ok()?;
        let desc_size = usize::try_from(u32_at(notes, 4)?).ok()?;
        let this_type = u32_at(notes, 8)?;
        let name_start = 12;
        let desc_start = name_start + name_size.checked_next_multiple_of(4)?;
        let next = desc_start.checked_add(desc_size.checked_next_multiple_of(4)?)?;
        let name = bytes_at(notes, name_start, name_size)?;
        let desc = bytes_at(notes, desc_start, desc_size)?;
        // Names are NUL-padded ("Go\0\0", "GNU\0").
        let trimmed_name = match name.iter().position(|&byte| byte == 0) {
            Some(nul) => &name[..nul],
            None => name,
        };
        if trimmed_name == owner && this_type == note_type {
            return Some(desc);
        }
        notes = notes.get(next..)?;
    }
    None
}

/// `offset..offset+size` clipped to a file of `file_len` bytes; `None` if it starts past the end.
fn clipped_range(file_len: usize, offset: u64, size: u64) -> Option<Range<usize>> {
    let start = usize::try_from(offset).ok()?;
    if start > file_len {
        return None;
    }
    let end = usize::try_from(offset.saturating_add(size))
        .unwrap_or(usize::MAX)
        .min(file_len);
    Some(start..end)
}

fn malformed(what: &str, error: object::read::Error) -> BinaryError {
    BinaryError::Malformed(format!("bad {what}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], note_type: u32, desc: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        out.extend_from_slice(&note_type.to_le_bytes());
        out.extend_from_slice(name);
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend_from_slice(desc);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    #[test]
    fn finds_notes_by_owner_and_type() {
        let mut notes = note(b"GNU\0", 3, &[0xde, 0xad, 0xbe, 0xef, 0x01]);
        notes.extend(note(b"Go\0\0", 4, b"abc/def"));
        assert_eq!(find_note(&notes, b"Go", 4), Some(&b"abc/def"[..]));
        assert_eq!(
            find_note(&notes, b"GNU", 3),
            Some(&[0xde, 0xad, 0xbe, 0xef, 0x01][..])
        );
        assert_eq!(find_note(&notes, b"Go", 3), None);
        // A descriptor size that runs past the end stops the walk instead of panicking.
        let mut broken = note(b"Go\0\0", 4, b"abc");
        broken[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(find_note(&broken, b"Go", 4), None);
    }

    #[test]
    fn clips_ranges_to_the_file() {
        assert_eq!(clipped_range(100, 10, 20), Some(10..30));
        assert_eq!(clipped_range(100, 90, 20), Some(90..100));
        assert_eq!(clipped_range(100, 101, 1), None);
        assert_eq!(clipped_range(100, u64::MAX, u64::MAX), None);
        assert_eq!(clipped_range(100, 5, u64::MAX), Some(5..100));
    }
}

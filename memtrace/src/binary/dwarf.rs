//! Struct layouts from the binary's own DWARF: where a build's runtime structs really put
//! their fields (a non-default `GOEXPERIMENT` can move them), preferred over the per-version
//! table when the binary has debug information.

use std::{borrow::Cow, collections::HashMap};

use object::{Object, ObjectSection};

/// Byte offsets of the `wanted` (struct, member) pairs, e.g. `("runtime.g", "goid")`, as the
/// DWARF of `data` (an ELF file) declares them. Only the `runtime` compilation units are read.
/// Pairs that are not found are absent; a file without DWARF gives an empty map.
pub fn member_offsets(data: &[u8], wanted: &[(&str, &str)]) -> HashMap<(String, String), u64> {
    let mut found = HashMap::new();
    let Ok(file) = object::File::parse(data) else {
        return found;
    };
    // Only what names and member offsets need: decompressing line tables and location lists
    // of a large binary would cost more than the rest.
    let load = |id: gimli::SectionId| -> Result<Cow<'_, [u8]>, gimli::Error> {
        let needed = matches!(
            id,
            gimli::SectionId::DebugInfo
                | gimli::SectionId::DebugAbbrev
                | gimli::SectionId::DebugStr
                | gimli::SectionId::DebugStrOffsets
                | gimli::SectionId::DebugLineStr
        );
        Ok(file
            .section_by_name(id.name())
            .filter(|_| needed)
            .and_then(|section| section.uncompressed_data().ok())
            .unwrap_or(Cow::Borrowed(&[])))
    };
    let Ok(sections) = gimli::DwarfSections::load(load) else {
        return found;
    };
    let dwarf = sections.borrow(|section| gimli::EndianSlice::new(section, gimli::LittleEndian));
    // Units are read from their headers: building a `gimli::Unit` would parse line programs,
    // which are not loaded.
    let mut units = dwarf.units();
    while let Ok(Some(header)) = units.next() {
        let Ok(abbreviations) = dwarf.abbreviations(&header) else {
            continue;
        };
        if !is_runtime_unit(&dwarf, &header, &abbreviations) {
            continue;
        }
        // The linker may split a package into several units.
        collect_members(&dwarf, &header, &abbreviations, wanted, &mut found);
        if found.len() == wanted.len() {
            break;
        }
    }
    found
}

type Slice<'a> = gimli::EndianSlice<'a, gimli::LittleEndian>;

fn name_of<'a>(
    dwarf: &gimli::Dwarf<Slice<'a>>,
    entry: &gimli::DebuggingInformationEntry<Slice<'a>>,
) -> Option<&'a str> {
    let name = match entry.attr_value(gimli::DW_AT_name)? {
        gimli::AttributeValue::String(name) => name,
        gimli::AttributeValue::DebugStrRef(offset) => dwarf.debug_str.get_str(offset).ok()?,
        _ => return None,
    };
    name.to_string().ok()
}

fn is_runtime_unit(
    dwarf: &gimli::Dwarf<Slice<'_>>,
    header: &gimli::UnitHeader<Slice<'_>>,
    abbreviations: &gimli::Abbreviations,
) -> bool {
    let mut entries = header.entries(abbreviations);
    match entries.next_dfs() {
        Ok(Some(root)) => name_of(dwarf, root) == Some("runtime"),
        _ => false,
    }
}

fn collect_members(
    dwarf: &gimli::Dwarf<Slice<'_>>,
    header: &gimli::UnitHeader<Slice<'_>>,
    abbreviations: &gimli::Abbreviations,
    wanted: &[(&str, &str)],
    found: &mut HashMap<(String, String), u64>,
) {
    let mut entries = header.entries(abbreviations);
    // The struct whose members are being read, and its depth.
    let mut current: Option<(&str, isize)> = None;
    while let Ok(Some(entry)) = entries.next_dfs() {
        let depth = entry.depth();
        if current.is_some_and(|(_, struct_depth)| depth <= struct_depth) {
            current = None;
        }
        match entry.tag() {
            gimli::DW_TAG_structure_type => {
                let name = name_of(dwarf, entry);
                current = name
                    .and_then(|name| wanted.iter().find(|(s, _)| *s == name))
                    .map(|(s, _)| (*s, depth));
            }
            gimli::DW_TAG_member => {
                let Some((struct_name, struct_depth)) = current else {
                    continue;
                };
                if depth != struct_depth + 1 {
                    continue;
                }
                let Some(member) = name_of(dwarf, entry) else {
                    continue;
                };
                if !wanted.contains(&(struct_name, member)) {
                    continue;
                }
                let Some(offset) = entry
                    .attr_value(gimli::DW_AT_data_member_location)
                    .and_then(|value| value.udata_value())
                else {
                    continue;
                };
                found.insert((struct_name.to_string(), member.to_string()), offset);
            }
            _ => {}
        }
    }
}

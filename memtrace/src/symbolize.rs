//! Turning stack addresses into functions, files and lines, with a cache per address.
//!
//! Binaries with DWARF go through blazesym (inlined frames, file:line). Stripped Go binaries
//! have no symbols blazesym can read, so they go through memtrace's own `.gopclntab` reader.
//! A recorded trace carries what its session symbolized, so a replay symbolizes from that table
//! without the binary.

use std::{
    cell::RefCell, collections::HashMap, fs::File, os::fd::AsRawFd, path::PathBuf, rc::Rc,
    sync::Arc,
};

use blazesym::symbolize::{self, Input, Symbolized};
use serde::{Deserialize, Serialize};

use crate::binary::GoBinary;

/// One frame of a symbolized stack.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Frame {
    pub function: String,
    pub file: String,
    pub line: u32,
    /// The function was inlined into the next frame.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inlined: bool,
}

impl Frame {
    pub fn unknown(vaddr: u64) -> Frame {
        Frame {
            function: format!("0x{vaddr:x}"),
            file: String::new(),
            line: 0,
            inlined: false,
        }
    }

    /// Go runtime internals, which are never the code that asked for memory.
    pub fn is_runtime(&self) -> bool {
        self.function.starts_with("runtime.") || self.function.starts_with("internal/runtime/")
    }
}

/// One fact a symbolizer learned about an address (what a recorded trace carries).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Symbol {
    /// The frames of an ELF virtual address, innermost first.
    Frames { vaddr: u64, frames: Arc<[Frame]> },
    /// The Go type whose type descriptor is at an ELF virtual address, if it names one.
    TypeName { vaddr: u64, name: Option<String> },
}

/// What the symbolizers of processes running one binary share: blazesym's parsed debug
/// information (megabytes per binary, parsed once) and the frames already resolved.
pub struct SharedSymbols {
    /// Path blazesym opens; kept valid after the target exits (see `Target::symbol_path`).
    symbol_path: PathBuf,
    /// Holds `symbol_path` open when it is one of our own fds.
    _file: Option<File>,
    blazesym: Option<RefCell<symbolize::Symbolizer>>,
    frames: RefCell<HashMap<u64, Arc<[Frame]>>>,
}

impl SharedSymbols {
    pub fn new(binary: &GoBinary, symbol_path: PathBuf) -> SharedSymbols {
        let blazesym = binary.has_dwarf().then(|| {
            RefCell::new(
                symbolize::Symbolizer::builder()
                    .enable_code_info(true)
                    .enable_inlined_fns(true)
                    .build(),
            )
        });
        SharedSymbols {
            symbol_path,
            _file: None,
            blazesym,
            frames: RefCell::new(HashMap::new()),
        }
    }

    /// Symbols of `binary`, read through `file` (an open handle on it), which it keeps open.
    pub fn for_file(binary: &GoBinary, file: File) -> SharedSymbols {
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        SharedSymbols {
            _file: Some(file),
            ..SharedSymbols::new(binary, path)
        }
    }
}

/// Where symbols come from.
enum Source {
    /// The target's binary.
    Binary {
        binary: Arc<GoBinary>,
        shared: Rc<SharedSymbols>,
    },
    /// Only what a recording carries; other addresses are unknown.
    Recorded,
}

/// Symbolizes addresses of one binary, caching every address it has seen.
pub struct Symbolizer {
    source: Source,
    cache: HashMap<u64, Arc<[Frame]>>,
    type_names: HashMap<u64, Option<String>>,
    /// Symbols learned since the last [`Symbolizer::take_new_symbols`], when recording.
    journal: Option<Vec<Symbol>>,
}

impl Symbolizer {
    pub fn new(binary: Arc<GoBinary>, symbol_path: PathBuf) -> Symbolizer {
        let shared = Rc::new(SharedSymbols::new(&binary, symbol_path));
        Symbolizer::sharing(binary, shared)
    }

    /// A symbolizer of one more process of a binary whose symbols others already read.
    pub fn sharing(binary: Arc<GoBinary>, shared: Rc<SharedSymbols>) -> Symbolizer {
        Symbolizer {
            source: Source::Binary { binary, shared },
            cache: HashMap::new(),
            type_names: HashMap::new(),
            journal: None,
        }
    }

    /// A symbolizer that knows only `symbols` (from a recorded trace).
    pub fn recorded(symbols: impl IntoIterator<Item = Symbol>) -> Symbolizer {
        let mut symbolizer = Symbolizer {
            source: Source::Recorded,
            cache: HashMap::new(),
            type_names: HashMap::new(),
            journal: None,
        };
        for symbol in symbols {
            match symbol {
                Symbol::Frames { vaddr, frames } => {
                    symbolizer.cache.insert(vaddr, frames);
                }
                Symbol::TypeName { vaddr, name } => {
                    symbolizer.type_names.insert(vaddr, name);
                }
            }
        }
        symbolizer
    }

    /// From now on, remember every symbol learned, for [`Symbolizer::take_new_symbols`].
    pub fn journal_new_symbols(&mut self) {
        self.journal.get_or_insert_with(Vec::new);
    }

    /// The symbols learned since the last call (with [`Symbolizer::journal_new_symbols`]).
    pub fn take_new_symbols(&mut self) -> Vec<Symbol> {
        self.journal
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Everything symbolized so far.
    pub fn all_symbols(&self) -> Vec<Symbol> {
        let mut symbols: Vec<Symbol> = self
            .cache
            .iter()
            .map(|(&vaddr, frames)| Symbol::Frames {
                vaddr,
                frames: frames.clone(),
            })
            .collect();
        symbols.extend(
            self.type_names
                .iter()
                .map(|(&vaddr, name)| Symbol::TypeName {
                    vaddr,
                    name: name.clone(),
                }),
        );
        symbols
    }

    /// The Go type named by a type descriptor at an ELF virtual address.
    pub fn type_name(&mut self, vaddr: u64) -> Option<String> {
        if let Some(name) = self.type_names.get(&vaddr) {
            return name.clone();
        }
        let name = match &self.source {
            Source::Binary { binary, .. } => binary.type_name(vaddr),
            Source::Recorded => None,
        };
        self.type_names.insert(vaddr, name.clone());
        if let Some(journal) = &mut self.journal {
            journal.push(Symbol::TypeName {
                vaddr,
                name: name.clone(),
            });
        }
        name
    }

    /// Frames of one ELF virtual address, innermost (most deeply inlined) first.
    pub fn frames(&mut self, vaddr: u64) -> Arc<[Frame]> {
        if let Some(frames) = self.cache.get(&vaddr) {
            return frames.clone();
        }
        let known = match &self.source {
            Source::Binary { shared, .. } => shared.frames.borrow().get(&vaddr).cloned(),
            Source::Recorded => None,
        };
        let frames: Arc<[Frame]> = match known {
            Some(frames) => frames,
            None => {
                let frames: Arc<[Frame]> = self
                    .blazesym_frames(vaddr)
                    .or_else(|| self.pclntab_frames(vaddr))
                    .unwrap_or_else(|| vec![Frame::unknown(vaddr)])
                    .into();
                if let Source::Binary { shared, .. } = &self.source {
                    shared.frames.borrow_mut().insert(vaddr, frames.clone());
                }
                frames
            }
        };
        self.cache.insert(vaddr, frames.clone());
        if let Some(journal) = &mut self.journal {
            journal.push(Symbol::Frames {
                vaddr,
                frames: frames.clone(),
            });
        }
        frames
    }

    fn blazesym_frames(&self, vaddr: u64) -> Option<Vec<Frame>> {
        let Source::Binary { shared, .. } = &self.source else {
            return None;
        };
        let symbolizer = shared.blazesym.as_ref()?.borrow();
        let source =
            symbolize::source::Source::Elf(symbolize::source::Elf::new(&shared.symbol_path));
        let result = symbolizer
            .symbolize_single(&source, Input::VirtOffset(vaddr))
            .ok()?;
        let Symbolized::Sym(sym) = result else {
            return None;
        };
        let location = |info: Option<&symbolize::CodeInfo<'_>>| match info {
            Some(info) => (info.to_path().display().to_string(), info.line.unwrap_or(0)),
            None => (String::new(), 0),
        };
        // blazesym lists inlined functions outermost first; each one's code info is where it
        // is, and the symbol's own code info is where it calls the first inlined function.
        let mut frames = Vec::with_capacity(sym.inlined.len() + 1);
        for inlined in sym.inlined.iter().rev() {
            let (file, line) = location(inlined.code_info.as_ref());
            frames.push(Frame {
                function: inlined.name.to_string(),
                file,
                line,
                inlined: true,
            });
        }
        let (file, line) = location(sym.code_info.as_deref());
        frames.push(Frame {
            function: sym.name.to_string(),
            file,
            line,
            inlined: false,
        });
        Some(frames)
    }

    fn pclntab_frames(&self, vaddr: u64) -> Option<Vec<Frame>> {
        let Source::Binary { binary, .. } = &self.source else {
            return None;
        };
        let location = binary.pclntab()?.lookup(vaddr)?;
        let mut frames: Vec<Frame> = location
            .inlined
            .iter()
            .map(|inlined| Frame {
                function: inlined.function.clone(),
                file: inlined.file.clone(),
                line: inlined.line,
                inlined: true,
            })
            .collect();
        frames.push(Frame {
            function: location.function,
            file: location.file,
            line: location.line,
            inlined: false,
        });
        Some(frames)
    }

    /// Symbolizes a captured stack (runtime addresses, innermost first). `load_bias` is what
    /// the kernel added to the binary's virtual addresses (0 for non-PIE binaries). Return
    /// addresses are looked up one byte back, so that they name the call, not the next line.
    pub fn stack(&mut self, stack: &[u64], load_bias: u64) -> Vec<Frame> {
        let mut frames = Vec::with_capacity(stack.len() + 4);
        for (depth, &addr) in stack.iter().enumerate() {
            let vaddr = addr.wrapping_sub(load_bias);
            let vaddr = if depth == 0 {
                vaddr
            } else {
                vaddr.wrapping_sub(1)
            };
            frames.extend(self.frames(vaddr).iter().cloned());
        }
        frames
    }
}

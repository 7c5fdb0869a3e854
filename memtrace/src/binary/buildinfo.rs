//! The `.go.buildinfo` blob: the Go version a binary was built with and its module/build
//! settings, as `go version -m` prints them.
//!
//! Format (Go ≥ 1.18, `debug/buildinfo/buildinfo.go`): a 32-byte header, `"\xff Go buildinf:"`
//! (14 bytes), pointer size (1 byte), flags (1 byte; bit 1 set means the strings follow inline),
//! padding; then two strings, each prefixed with its length as a uvarint: the Go version
//! (`runtime.buildVersion`) and the module info. The module info is framed by 16-byte sentinels
//! (`runtime/debug/mod.go`), which are stripped here.

use super::{
    read::{bytes_at, uvarint},
    BinaryError,
};

pub(crate) const BUILD_INFO_MAGIC: &[u8; 14] = b"\xff Go buildinf:";
const HEADER_LEN: usize = 32;
const FLAGS_OFFSET: usize = 15;
const FLAG_BIG_ENDIAN: u8 = 0x1;
const FLAG_INLINE_STRINGS: u8 = 0x2;
/// The module info is wrapped in two 16-byte sentinels (`cmd/go/internal/modload.infoStart` and
/// `infoEnd`); `debug/buildinfo` recognises them by the newline just before the end sentinel.
const MODINFO_SENTINEL_LEN: usize = 16;

/// A Go release number, such as 1.26.6. A release candidate or beta (`go1.22rc1`) and a bare
/// `go1.22` have patch 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl GoVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        GoVersion {
            major,
            minor,
            patch,
        }
    }
}

impl std::fmt::Display for GoVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "go{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// What `.go.buildinfo` says about how the binary was built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildInfo {
    /// The version string exactly as stored, e.g. `go1.26.6-X:sizespecializedmalloc`.
    pub go_version: String,
    /// The release parsed out of `go_version`.
    pub version: GoVersion,
    /// Non-baseline GOEXPERIMENTs, from the `X:` suffix of `go_version` (e.g.
    /// `["sizespecializedmalloc"]` or `["nogreenteagc"]`); empty when the build used the
    /// toolchain's defaults.
    pub experiments: Vec<String>,
    /// The main package path (the `path` line of the module info), e.g. `example.com/cmd/app`.
    pub main_path: Option<String>,
    /// The `build` lines of the module info as (key, value), e.g. `("-buildmode", "pie")` or
    /// `("GOEXPERIMENT", "sizespecializedmalloc")`, unquoted, in file order.
    pub settings: Vec<(String, String)>,
}

impl BuildInfo {
    /// The value of build setting `key` (the first, if it repeats).
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(setting, _)| setting == key)
            .map(|(_, value)| value.as_str())
    }

    /// Whether non-baseline experiment `name` is on (`experiments` holds it). Note that an
    /// experiment that is on by default in that Go release does not appear here; only its
    /// negation (`no<name>`) would.
    pub fn has_experiment(&self, name: &str) -> bool {
        self.experiments.iter().any(|experiment| experiment == name)
    }
}

/// Parses a Go version string as stored in `runtime.buildVersion`: `go1.21.13`, `go1.22`,
/// `go1.22rc1`, `go1.26.6-X:sizespecializedmalloc`, `go1.21.13 X:nocoverageredesign` (before Go
/// 1.26 the experiments were separated by a space), or a development build such as
/// `devel go1.24-abcdef Tue ...`. Returns the release and the experiment list (empty if none).
pub fn parse_go_version(s: &str) -> Option<(GoVersion, Vec<String>)> {
    let s = s.trim();
    let s = s.strip_prefix("devel ").unwrap_or(s);
    let rest = s.strip_prefix("go")?;

    let (major, rest) = leading_number(rest)?;
    let rest = rest.strip_prefix('.')?;
    let (minor, rest) = leading_number(rest)?;
    let (patch, _) = match rest.strip_prefix('.') {
        Some(after_dot) => leading_number(after_dot)?,
        // "go1.22", "go1.22rc1", "go1.24-abcdef": no patch release.
        None => (0, rest),
    };

    Some((
        GoVersion {
            major,
            minor,
            patch,
        },
        experiments_of(s),
    ))
}

/// The `X:a,b` suffix of a version string. The linker appends it after `-` or, when the version
/// already contains a `-`, after a space (`cmd/link/internal/ld/main.go`, go.dev/issue/75953);
/// Go ≤ 1.25 always used a space.
fn experiments_of(version: &str) -> Vec<String> {
    let Some(at) = version
        .match_indices("X:")
        .map(|(at, _)| at)
        .find(|&at| at > 0 && matches!(version.as_bytes().get(at - 1), Some(b' ' | b'-')))
    else {
        return Vec::new();
    };
    version[at + 2..]
        .split(|c: char| c.is_whitespace())
        .next()
        .unwrap_or("")
        .split(',')
        .filter(|experiment| !experiment.is_empty())
        .map(str::to_owned)
        .collect()
}

fn leading_number(s: &str) -> Option<(u32, &str)> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let number = s.get(..digits)?.parse().ok()?;
    Some((number, &s[digits..]))
}

/// Decodes the build info blob that starts at the beginning of `blob` (the rest of the section
/// or segment it lies in).
pub(crate) fn parse_build_info(blob: &[u8]) -> Result<BuildInfo, BinaryError> {
    let header = bytes_at(blob, 0, HEADER_LEN)
        .ok_or_else(|| BinaryError::Malformed("truncated .go.buildinfo header".into()))?;
    if &header[..BUILD_INFO_MAGIC.len()] != BUILD_INFO_MAGIC {
        return Err(BinaryError::Malformed("bad .go.buildinfo magic".into()));
    }
    let flags = header[FLAGS_OFFSET];
    if flags & FLAG_INLINE_STRINGS == 0 {
        // Before Go 1.18 the header held pointers to Go strings instead.
        return Err(BinaryError::Unsupported(
            "the build info uses the pointer format of Go before 1.18".into(),
        ));
    }
    if flags & FLAG_BIG_ENDIAN != 0 {
        return Err(BinaryError::Unsupported("big-endian Go binary".into()));
    }

    let (version_bytes, rest) = length_prefixed(&blob[HEADER_LEN..])
        .ok_or_else(|| BinaryError::Malformed("truncated Go version in .go.buildinfo".into()))?;
    let (modinfo_bytes, _) = length_prefixed(rest)
        .ok_or_else(|| BinaryError::Malformed("truncated module info in .go.buildinfo".into()))?;

    let go_version = std::str::from_utf8(version_bytes)
        .map_err(|_| BinaryError::Malformed("the Go version in .go.buildinfo is not UTF-8".into()))?
        .to_owned();
    let (version, experiments) = parse_go_version(&go_version)
        .ok_or_else(|| BinaryError::Malformed(format!("cannot parse Go version {go_version:?}")))?;

    // Mirror debug/buildinfo: module info that is not properly framed is treated as absent.
    // The sentinels are not UTF-8, so they are cut off before decoding.
    let framed = modinfo_bytes.len() > 2 * MODINFO_SENTINEL_LEN
        && modinfo_bytes[modinfo_bytes.len() - MODINFO_SENTINEL_LEN - 1] == b'\n';
    let modinfo = if framed {
        String::from_utf8_lossy(
            &modinfo_bytes[MODINFO_SENTINEL_LEN..modinfo_bytes.len() - MODINFO_SENTINEL_LEN],
        )
    } else {
        Default::default()
    };
    let (main_path, settings) = parse_modinfo(&modinfo);

    Ok(BuildInfo {
        go_version,
        version,
        experiments,
        main_path,
        settings,
    })
}

fn length_prefixed(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, prefix) = uvarint(data)?;
    let len = usize::try_from(len).ok()?;
    let body = bytes_at(data, prefix, len)?;
    Some((body, &data[prefix + len..]))
}

/// Picks the `path` and `build` lines out of the module info (`runtime/debug.BuildInfo.String`
/// format: tab-separated fields, one item per line).
fn parse_modinfo(modinfo: &str) -> (Option<String>, Vec<(String, String)>) {
    let mut main_path = None;
    let mut settings = Vec::new();
    for line in modinfo.lines() {
        if let Some(path) = line.strip_prefix("path\t") {
            main_path = Some(path.to_owned());
        } else if let Some(setting) = line.strip_prefix("build\t") {
            if let Some(pair) = parse_setting(setting) {
                settings.push(pair);
            }
        }
    }
    (main_path, settings)
}

/// `key=value`, where either side may be a Go-quoted string when it contains spaces, quotes or
/// (for keys) `=` (`runtime/debug/mod.go` `quoteKey`/`quoteValue`).
fn parse_setting(setting: &str) -> Option<(String, String)> {
    let (key, raw_value) = if setting.starts_with(['"', '`']) {
        let key_len = quoted_prefix_len(setting)?;
        let raw_value = setting[key_len..].strip_prefix('=')?;
        (unquote_go(&setting[..key_len])?, raw_value)
    } else {
        let (key, raw_value) = setting.split_once('=')?;
        (key.to_owned(), raw_value)
    };
    let value = if raw_value.starts_with(['"', '`']) {
        unquote_go(raw_value)?
    } else {
        raw_value.to_owned()
    };
    Some((key, value))
}

/// Length of the quoted string at the start of `s` (including both quotes).
fn quoted_prefix_len(s: &str) -> Option<usize> {
    let quote = s.chars().next()?;
    let mut escaped = false;
    for (at, c) in s.char_indices().skip(1) {
        if quote == '"' && escaped {
            escaped = false;
        } else if quote == '"' && c == '\\' {
            escaped = true;
        } else if c == quote {
            return Some(at + 1);
        }
    }
    None
}

/// A subset of Go's `strconv.Unquote`: back-quoted raw strings, and double-quoted strings with the
/// escapes `strconv.Quote` produces. `None` for anything else.
fn unquote_go(quoted: &str) -> Option<String> {
    if let Some(raw) = quoted.strip_prefix('`') {
        return raw.strip_suffix('`').map(str::to_owned);
    }
    let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let escape = chars.next()?;
        let hex_digits = match escape {
            'a' => {
                out.push('\u{7}');
                continue;
            }
            'b' => {
                out.push('\u{8}');
                continue;
            }
            'f' => {
                out.push('\u{c}');
                continue;
            }
            'n' => {
                out.push('\n');
                continue;
            }
            'r' => {
                out.push('\r');
                continue;
            }
            't' => {
                out.push('\t');
                continue;
            }
            'v' => {
                out.push('\u{b}');
                continue;
            }
            '\\' | '"' | '\'' => {
                out.push(escape);
                continue;
            }
            'x' => 2,
            'u' => 4,
            'U' => 8,
            _ => return None,
        };
        let digits: String = chars.by_ref().take(hex_digits).collect();
        if digits.len() != hex_digits {
            return None;
        }
        let code = u32::from_str_radix(&digits, 16).ok()?;
        out.push(char::from_u32(code)?);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(major: u32, minor: u32, patch: u32) -> GoVersion {
        GoVersion::new(major, minor, patch)
    }

    #[test]
    fn parses_release_versions() {
        assert_eq!(
            parse_go_version("go1.21.13"),
            Some((version(1, 21, 13), vec![]))
        );
        assert_eq!(
            parse_go_version("go1.22"),
            Some((version(1, 22, 0), vec![]))
        );
        assert_eq!(
            parse_go_version("go1.22rc1"),
            Some((version(1, 22, 0), vec![]))
        );
        assert_eq!(
            parse_go_version("go1.27.3"),
            Some((version(1, 27, 3), vec![]))
        );
    }

    #[test]
    fn parses_experiment_suffixes_in_both_spellings() {
        assert_eq!(
            parse_go_version("go1.26.6-X:sizespecializedmalloc"),
            Some((version(1, 26, 6), vec!["sizespecializedmalloc".to_owned()]))
        );
        assert_eq!(
            parse_go_version("go1.21.13 X:nocoverageredesign,arenas"),
            Some((
                version(1, 21, 13),
                vec!["nocoverageredesign".to_owned(), "arenas".to_owned()]
            ))
        );
        assert_eq!(
            parse_go_version("go1.27.3-X:nosizespecializedmalloc"),
            Some((
                version(1, 27, 3),
                vec!["nosizespecializedmalloc".to_owned()]
            ))
        );
        // The linker uses a space when the version already has a dash.
        assert_eq!(
            parse_go_version("go1.26rc2-custom X:nogreenteagc"),
            Some((version(1, 26, 0), vec!["nogreenteagc".to_owned()]))
        );
    }

    #[test]
    fn parses_development_builds() {
        assert_eq!(
            parse_go_version("devel go1.24-1234abcd Tue Jan 7 12:00:00 2025 +0000"),
            Some((version(1, 24, 0), vec![]))
        );
    }

    #[test]
    fn rejects_non_versions() {
        for bad in [
            "", "go", "1.21.3", "go1", "go1.", "gox.y", "go1.x", "go1.21.",
        ] {
            assert_eq!(parse_go_version(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn versions_order_numerically() {
        assert!(version(1, 9, 0) < version(1, 21, 0));
        assert!(version(1, 21, 13) < version(1, 22, 0));
        assert_eq!(version(1, 26, 6).to_string(), "go1.26.6");
    }

    fn blob(version: &[u8], modinfo: &[u8], flags: u8) -> Vec<u8> {
        let mut blob = BUILD_INFO_MAGIC.to_vec();
        blob.push(8);
        blob.push(flags);
        blob.resize(HEADER_LEN, 0);
        for s in [version, modinfo] {
            assert!(s.len() < 0x4000);
            if s.len() < 0x80 {
                blob.push(s.len() as u8);
            } else {
                blob.push((s.len() & 0x7f) as u8 | 0x80);
                blob.push((s.len() >> 7) as u8);
            }
            blob.extend_from_slice(s);
        }
        blob
    }

    #[test]
    fn decodes_a_synthetic_blob() {
        // The real sentinels (cmd/go/internal/modload) are not valid UTF-8.
        let start = b"0w\xaf\x0c\x92t\x08\x02A\xe1\xc1\x07\xe6\xd6\x18\xe6";
        let end = b"\xf92C1\x86\x18 r\x00\x82B\x10A\x16\xd8\xf2";
        let mut modinfo = start.to_vec();
        modinfo.extend_from_slice(
            b"path\texample.com/app\nmod\texample.com/app\t(devel)\t\nbuild\t-buildmode=pie\n\
              build\t-ldflags=\"-s -w\"\nbuild\tDefaultGODEBUG=a=1,b=0\n",
        );
        modinfo.extend_from_slice(end);
        let info = parse_build_info(&blob(b"go1.24.11", &modinfo, FLAG_INLINE_STRINGS)).unwrap();
        assert_eq!(info.go_version, "go1.24.11");
        assert_eq!(info.version, version(1, 24, 11));
        assert!(info.experiments.is_empty());
        assert_eq!(info.main_path.as_deref(), Some("example.com/app"));
        assert_eq!(info.setting("-buildmode"), Some("pie"));
        assert_eq!(info.setting("-ldflags"), Some("-s -w"));
        assert_eq!(info.setting("DefaultGODEBUG"), Some("a=1,b=0"));
        assert_eq!(info.setting("missing"), None);
    }

    #[test]
    fn unframed_modinfo_is_ignored_like_debug_buildinfo_does() {
        let info =
            parse_build_info(&blob(b"go1.21.13", b"path\tx\n", FLAG_INLINE_STRINGS)).unwrap();
        assert_eq!(info.main_path, None);
        assert!(info.settings.is_empty());
    }

    #[test]
    fn rejects_old_and_broken_blobs() {
        assert!(matches!(
            parse_build_info(&blob(b"go1.17", b"", 0)),
            Err(BinaryError::Unsupported(_))
        ));
        assert!(matches!(
            parse_build_info(&blob(b"go1.21.0", b"", FLAG_INLINE_STRINGS)[..40]),
            Err(BinaryError::Malformed(_))
        ));
        assert!(matches!(
            parse_build_info(&blob(b"not-a-version", b"", FLAG_INLINE_STRINGS)),
            Err(BinaryError::Malformed(_))
        ));
        let mut bad_magic = blob(b"go1.21.0", b"", FLAG_INLINE_STRINGS);
        bad_magic[3] ^= 0xff;
        assert!(matches!(
            parse_build_info(&bad_magic),
            Err(BinaryError::Malformed(_))
        ));
        // A length prefix that runs past the end.
        let mut long = blob(b"go1.21.0", b"", FLAG_INLINE_STRINGS);
        long[HEADER_LEN] = 0x7f;
        assert!(matches!(
            parse_build_info(&long),
            Err(BinaryError::Malformed(_))
        ));
    }

    #[test]
    fn unquotes_go_strings() {
        assert_eq!(unquote_go(r#""a b""#).as_deref(), Some("a b"));
        assert_eq!(
            unquote_go(r#""tab\there\"\\\x41\u00e9""#).as_deref(),
            Some("tab\there\"\\Aé")
        );
        assert_eq!(unquote_go("`raw \\n`").as_deref(), Some("raw \\n"));
        assert_eq!(unquote_go(r#""bad \q""#), None);
        assert_eq!(unquote_go(r#""short \x4""#), None);
        assert_eq!(
            parse_setting(r#""odd=key"=value"#),
            Some(("odd=key".to_owned(), "value".to_owned()))
        );
        assert_eq!(parse_setting("novalue"), None);
    }
}

//! pprof's profile.proto, gzipped: the format `go tool pprof` (and most profile viewers) read.
//!
//! The protobuf encoding is written by hand: the profile needs only varints, length-delimited
//! fields and packed repeated varints. Field numbers are those of
//! github.com/google/pprof/proto/profile.proto.
//!
//! Locations carry no address and no mapping: memtrace symbolizes stacks itself, so every
//! Location comes with its functions and lines and pprof has nothing left to look up.

use std::{
    collections::HashMap,
    io::{self, Write},
};

use flate2::{write::GzEncoder, Compression};

use super::{Profile, SiteFacts, StackProfile};
use crate::symbolize::Frame;

/// Field numbers of profile.proto, one module per message.
mod field {
    pub mod profile {
        pub const SAMPLE_TYPE: u32 = 1;
        pub const SAMPLE: u32 = 2;
        pub const LOCATION: u32 = 4;
        pub const FUNCTION: u32 = 5;
        pub const STRING_TABLE: u32 = 6;
        pub const DURATION_NANOS: u32 = 10;
        pub const PERIOD_TYPE: u32 = 11;
        pub const PERIOD: u32 = 12;
        pub const DEFAULT_SAMPLE_TYPE: u32 = 14;
    }
    pub mod value_type {
        pub const TYPE: u32 = 1;
        pub const UNIT: u32 = 2;
    }
    pub mod sample {
        pub const LOCATION_ID: u32 = 1;
        pub const VALUE: u32 = 2;
        pub const LABEL: u32 = 3;
    }
    pub mod label {
        pub const KEY: u32 = 1;
        pub const STR: u32 = 2;
        pub const NUM: u32 = 3;
        pub const NUM_UNIT: u32 = 4;
    }
    pub mod location {
        pub const ID: u32 = 1;
        pub const LINE: u32 = 4;
    }
    pub mod line {
        pub const FUNCTION_ID: u32 = 1;
        pub const LINE: u32 = 2;
    }
    pub mod function {
        pub const ID: u32 = 1;
        pub const NAME: u32 = 2;
        pub const SYSTEM_NAME: u32 = 3;
        pub const FILENAME: u32 = 4;
    }
}

/// Sample types (type, unit) in the order of Go's own heap profiles.
const ALLOC_SAMPLE_TYPES: [(&str, &str); 2] =
    [("alloc_objects", "count"), ("alloc_space", "bytes")];
const INUSE_SAMPLE_TYPES: [(&str, &str); 2] =
    [("inuse_objects", "count"), ("inuse_space", "bytes")];

/// Writes `profile` as a gzipped profile.proto. Stacks whose values are all zero are left out;
/// a profile without stacks still gives a valid (empty) pprof file.
pub fn write_pprof(profile: &Profile, out: impl Write) -> io::Result<()> {
    write_pprof_preferring(profile, false, out)
}

/// Like [`write_pprof`]; with `allocations` the default sample type is `alloc_space`, as in
/// Go's `/debug/pprof/allocs` (the same profile as `heap`, viewed by allocations).
pub fn write_pprof_preferring(
    profile: &Profile,
    allocations: bool,
    out: impl Write,
) -> io::Result<()> {
    let encoded = encode(profile, allocations);
    let mut gzip = GzEncoder::new(out, Compression::default());
    gzip.write_all(&encoded)?;
    gzip.finish()?;
    Ok(())
}

/// The uncompressed profile.proto message.
fn encode(profile: &Profile, allocations: bool) -> Vec<u8> {
    let mut builder = Builder::default();
    let mut message = Message::default();

    let sample_types = ALLOC_SAMPLE_TYPES
        .iter()
        .chain(INUSE_SAMPLE_TYPES.iter().filter(|_| profile.has_inuse));
    for (kind, unit) in sample_types {
        message.message(field::profile::SAMPLE_TYPE, builder.value_type(kind, unit));
    }

    for stack in &profile.stacks {
        let values = sample_values(stack, profile.has_inuse);
        if values.iter().all(|&value| value == 0) {
            continue;
        }
        message.message(field::profile::SAMPLE, builder.sample(stack, &values));
    }

    for (index, lines) in builder.locations.iter().enumerate() {
        let mut location = Message::default();
        location.uint(field::location::ID, id_of(index));
        for line in lines {
            let mut entry = Message::default();
            entry.uint(field::line::FUNCTION_ID, line.function_id);
            entry.int(field::line::LINE, line.line);
            location.message(field::location::LINE, entry);
        }
        message.message(field::profile::LOCATION, location);
    }

    for (index, function) in builder.functions.iter().enumerate() {
        let mut entry = Message::default();
        entry.uint(field::function::ID, id_of(index));
        entry.int(field::function::NAME, function.name);
        // Go's own profiles repeat the name here; Go names are not mangled.
        entry.int(field::function::SYSTEM_NAME, function.name);
        entry.int(field::function::FILENAME, function.file);
        message.message(field::profile::FUNCTION, entry);
    }

    // Everything that needs a string is interned before the table is written.
    let period_type = builder.value_type("space", "bytes");
    let default_sample_type = builder
        .strings
        .intern(if profile.has_inuse && !allocations {
            "inuse_space"
        } else {
            "alloc_space"
        });
    for string in &builder.strings.strings {
        message.bytes(field::profile::STRING_TABLE, string.as_bytes());
    }

    message.int(field::profile::DURATION_NANOS, clamp(profile.duration_ns));
    message.message(field::profile::PERIOD_TYPE, period_type);
    message.int(field::profile::PERIOD, clamp(profile.interval_bytes));
    message.int(field::profile::DEFAULT_SAMPLE_TYPE, default_sample_type);
    message.bytes
}

/// The values of one sample, in the order of the sample types.
fn sample_values(stack: &StackProfile, has_inuse: bool) -> Vec<i64> {
    let mut values = vec![clamp(stack.alloc_objects), clamp(stack.alloc_bytes)];
    if has_inuse {
        values.extend([clamp(stack.inuse_objects), clamp(stack.inuse_bytes)]);
    }
    values
}

/// profile.proto's numbers are int64; larger estimates saturate instead of turning negative.
fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// pprof ids are nonzero: the entry at `index` has id `index + 1`.
fn id_of(index: usize) -> u64 {
    index as u64 + 1
}

/// The tables a profile refers to by index or id, filled while its samples are encoded.
#[derive(Default)]
struct Builder {
    strings: StringTable,
    functions: Vec<FunctionEntry>,
    function_ids: HashMap<FunctionEntry, u64>,
    /// Lines of each Location, innermost first.
    locations: Vec<Vec<LineEntry>>,
    location_ids: HashMap<Vec<LineEntry>, u64>,
}

/// A Function: string-table indices of its name and file.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct FunctionEntry {
    name: i64,
    file: i64,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct LineEntry {
    function_id: u64,
    line: i64,
}

impl Builder {
    fn value_type(&mut self, kind: &str, unit: &str) -> Message {
        let mut value_type = Message::default();
        value_type.int(field::value_type::TYPE, self.strings.intern(kind));
        value_type.int(field::value_type::UNIT, self.strings.intern(unit));
        value_type
    }

    fn sample(&mut self, stack: &StackProfile, values: &[i64]) -> Message {
        // A group of frames ending with a non-inlined one is one Location: the inlined frames
        // were compiled into the function of the group's last frame.
        let location_ids: Vec<u64> = stack
            .frames
            .split_inclusive(|frame| !frame.inlined)
            .map(|group| self.location(group))
            .collect();
        let mut sample = Message::default();
        sample.packed(field::sample::LOCATION_ID, location_ids);
        // int64 values go on the wire as their two's complement, like `Message::int`.
        sample.packed(
            field::sample::VALUE,
            values.iter().map(|&value| value as u64),
        );
        for label in self.labels(&stack.site) {
            sample.message(field::sample::LABEL, label);
        }
        sample
    }

    /// The id of the Location of `frames` (innermost first), added if new.
    fn location(&mut self, frames: &[Frame]) -> u64 {
        let lines: Vec<LineEntry> = frames
            .iter()
            .map(|frame| LineEntry {
                function_id: self.function(frame),
                line: i64::from(frame.line),
            })
            .collect();
        if let Some(&id) = self.location_ids.get(&lines) {
            return id;
        }
        let id = id_of(self.locations.len());
        self.locations.push(lines.clone());
        self.location_ids.insert(lines, id);
        id
    }

    /// The id of the Function of `frame`, added if new.
    fn function(&mut self, frame: &Frame) -> u64 {
        let function = FunctionEntry {
            name: self.strings.intern(&frame.function),
            file: self.strings.intern(&frame.file),
        };
        if let Some(&id) = self.function_ids.get(&function) {
            return id;
        }
        let id = id_of(self.functions.len());
        self.functions.push(function);
        self.function_ids.insert(function, id);
        id
    }

    /// Labels of every sample of a site: the facts it has, and whether it is a leak suspect.
    fn labels(&mut self, site: &SiteFacts) -> Vec<Message> {
        // pprof keeps a zero numeric label only when it has a unit, so every number has one.
        let numbers = [
            (
                "lifetime_p50",
                site.lifetime_p50_ms.map(clamp),
                "milliseconds",
            ),
            (
                "lifetime_p99",
                site.lifetime_p99_ms.map(clamp),
                "milliseconds",
            ),
            (
                "oldest_age",
                site.oldest_age_s
                    .filter(|age| age.is_finite())
                    // Labels are integers; `as` saturates.
                    .map(|age| age.round() as i64),
                "seconds",
            ),
            (
                "gc_cycles_survived",
                site.max_gc_cycles_survived.map(clamp),
                "count",
            ),
        ];
        let mut labels = Vec::new();
        for (key, number, unit) in numbers {
            let Some(number) = number else { continue };
            let mut label = Message::default();
            label.int(field::label::KEY, self.strings.intern(key));
            label.int(field::label::NUM, number);
            label.int(field::label::NUM_UNIT, self.strings.intern(unit));
            labels.push(label);
        }
        if site.leak_suspect {
            let mut label = Message::default();
            label.int(field::label::KEY, self.strings.intern("leak_suspect"));
            label.int(field::label::STR, self.strings.intern("true"));
            labels.push(label);
        }
        labels
    }
}

/// profile.proto's string table: "" first, every string once.
struct StringTable {
    strings: Vec<String>,
    indices: HashMap<String, i64>,
}

impl Default for StringTable {
    fn default() -> StringTable {
        let mut table = StringTable {
            strings: Vec::new(),
            indices: HashMap::new(),
        };
        table.intern("");
        table
    }
}

impl StringTable {
    fn intern(&mut self, string: &str) -> i64 {
        if let Some(&index) = self.indices.get(string) {
            return index;
        }
        let index = self.strings.len() as i64;
        self.strings.push(string.to_owned());
        self.indices.insert(string.to_owned(), index);
        index
    }
}

/// Wire types of the protobuf encoding.
const WIRE_VARINT: u64 = 0;
const WIRE_LEN: u64 = 2;

/// An encoded protobuf message, built field by field.
#[derive(Default)]
struct Message {
    bytes: Vec<u8>,
}

impl Message {
    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.bytes.push((value & 0x7f) as u8 | 0x80);
            value >>= 7;
        }
        self.bytes.push(value as u8);
    }

    fn tag(&mut self, field: u32, wire_type: u64) {
        self.varint((u64::from(field) << 3) | wire_type);
    }

    /// A uint64 field; zero is proto3's default and is left out.
    fn uint(&mut self, field: u32, value: u64) {
        if value != 0 {
            self.tag(field, WIRE_VARINT);
            self.varint(value);
        }
    }

    /// An int64 field: negative numbers go on the wire as their 64-bit two's complement.
    fn int(&mut self, field: u32, value: i64) {
        self.uint(field, value as u64);
    }

    /// A length-delimited field (string, bytes or nested message), written even when empty:
    /// repeated strings such as the table's leading "" need it.
    fn bytes(&mut self, field: u32, bytes: &[u8]) {
        self.tag(field, WIRE_LEN);
        self.varint(bytes.len() as u64);
        self.bytes.extend_from_slice(bytes);
    }

    fn message(&mut self, field: u32, message: Message) {
        self.bytes(field, &message.bytes);
    }

    /// A packed repeated varint field; nothing when there are no values.
    fn packed(&mut self, field: u32, values: impl IntoIterator<Item = u64>) {
        let mut packed = Message::default();
        for value in values {
            packed.varint(value);
        }
        if !packed.bytes.is_empty() {
            self.bytes(field, &packed.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, io::Read};

    use flate2::read::GzDecoder;

    use super::*;
    use crate::export::testing::{frame, stack};

    fn suspect_site() -> SiteFacts {
        SiteFacts {
            lifetime_p50_ms: Some(12),
            lifetime_p99_ms: Some(900),
            oldest_age_s: Some(41.6),
            max_gc_cycles_survived: Some(7),
            leak_suspect: true,
        }
    }

    /// A sampled profile: an inlined allocation, a second stack sharing the caller, one stack
    /// with nothing to show.
    fn sampled_profile() -> Profile {
        Profile {
            stacks: vec![
                stack(
                    vec![
                        frame("main.newBuffer", "/src/buf.go", 10, true),
                        frame("main.handle", "/src/main.go", 20, false),
                        frame("main.main", "/src/main.go", 5, false),
                    ],
                    [100, 6400, 40, 2560],
                    suspect_site(),
                ),
                stack(
                    vec![
                        frame("main.handle", "/src/main.go", 22, false),
                        frame("main.main", "/src/main.go", 5, false),
                    ],
                    [3, 300, 0, 0],
                    SiteFacts::default(),
                ),
                stack(
                    vec![frame("main.idle", "/src/main.go", 30, false)],
                    [0, 0, 0, 0],
                    SiteFacts::default(),
                ),
            ],
            has_inuse: true,
            interval_bytes: 512 * 1024,
            duration_ns: 2_500_000_000,
        }
    }

    fn all_allocs_profile() -> Profile {
        Profile {
            stacks: vec![stack(
                vec![
                    frame("main.make", "/src/main.go", 8, false),
                    frame("main.main", "/src/main.go", 3, false),
                ],
                [9, 900, 0, 0],
                SiteFacts {
                    max_gc_cycles_survived: Some(0),
                    ..SiteFacts::default()
                },
            )],
            has_inuse: false,
            interval_bytes: 1,
            duration_ns: 1_000,
        }
    }

    fn pprof_bytes(profile: &Profile) -> Vec<u8> {
        let mut gzipped = Vec::new();
        write_pprof(profile, &mut gzipped).unwrap();
        let mut bytes = Vec::new();
        GzDecoder::new(gzipped.as_slice())
            .read_to_end(&mut bytes)
            .unwrap();
        bytes
    }

    // A small protobuf reader, enough for the fields write_pprof writes.

    enum Value<'a> {
        Varint(u64),
        Bytes(&'a [u8]),
    }

    impl Value<'_> {
        /// A varint field or a packed run of them.
        fn varints(&self) -> Vec<u64> {
            match self {
                Value::Varint(value) => vec![*value],
                Value::Bytes(mut bytes) => {
                    let mut values = Vec::new();
                    while !bytes.is_empty() {
                        values.push(read_varint(&mut bytes));
                    }
                    values
                }
            }
        }

        fn varint(&self) -> u64 {
            match self {
                Value::Varint(value) => *value,
                Value::Bytes(_) => panic!("expected a varint"),
            }
        }

        fn bytes(&self) -> &[u8] {
            match self {
                Value::Bytes(bytes) => bytes,
                Value::Varint(_) => panic!("expected a length-delimited field"),
            }
        }
    }

    fn read_varint(bytes: &mut &[u8]) -> u64 {
        let mut value = 0;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = bytes.split_first().expect("truncated varint");
            *bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return value;
            }
        }
        panic!("varint longer than 10 bytes");
    }

    fn fields(mut bytes: &[u8]) -> Vec<(u32, Value<'_>)> {
        let mut fields = Vec::new();
        while !bytes.is_empty() {
            let key = read_varint(&mut bytes);
            let number = u32::try_from(key >> 3).unwrap();
            let value = match key & 7 {
                0 => Value::Varint(read_varint(&mut bytes)),
                2 => {
                    let len = usize::try_from(read_varint(&mut bytes)).unwrap();
                    let (data, rest) = bytes.split_at(len);
                    bytes = rest;
                    Value::Bytes(data)
                }
                wire_type => panic!("unexpected wire type {wire_type}"),
            };
            fields.push((number, value));
        }
        fields
    }

    /// A field of a message that holds at most one of it; 0 when absent.
    fn single(message: &[(u32, Value<'_>)], number: u32) -> u64 {
        let mut found = message.iter().filter(|(n, _)| *n == number);
        let value = found.next().map_or(0, |(_, value)| value.varint());
        assert!(found.next().is_none(), "field {number} repeated");
        value
    }

    #[derive(Debug, PartialEq)]
    enum LabelValue {
        Str(String),
        Num(i64, String),
    }

    #[derive(Debug)]
    struct DecodedSample {
        location_ids: Vec<u64>,
        values: Vec<i64>,
        labels: Vec<(String, LabelValue)>,
    }

    /// A decoded profile, with string-table indices resolved.
    #[derive(Debug)]
    struct Decoded {
        strings: Vec<String>,
        sample_types: Vec<(String, String)>,
        samples: Vec<DecodedSample>,
        /// Location id to its lines (function, file, line), innermost first.
        locations: HashMap<u64, Vec<(String, String, i64)>>,
        function_count: usize,
        mapping_count: usize,
        period_type: (String, String),
        period: i64,
        duration_nanos: i64,
        default_sample_type: String,
    }

    impl Decoded {
        /// A sample's stack as the function names of each location, innermost first.
        fn stack(&self, sample: &DecodedSample) -> Vec<Vec<&str>> {
            sample
                .location_ids
                .iter()
                .map(|id| {
                    self.locations[id]
                        .iter()
                        .map(|(function, _, _)| function.as_str())
                        .collect()
                })
                .collect()
        }
    }

    fn decode(bytes: &[u8]) -> Decoded {
        let profile = fields(bytes);
        let strings: Vec<String> = profile
            .iter()
            .filter(|(number, _)| *number == 6)
            .map(|(_, value)| String::from_utf8(value.bytes().to_vec()).unwrap())
            .collect();
        let string = |index: u64| strings[usize::try_from(index).unwrap()].clone();
        let messages = |number: u32| {
            profile
                .iter()
                .filter(move |(n, _)| *n == number)
                .map(|(_, value)| fields(value.bytes()))
        };
        let value_type =
            |message: &[(u32, Value<'_>)]| (string(single(message, 1)), string(single(message, 2)));

        let functions: HashMap<u64, (String, String)> = messages(5)
            .map(|function| {
                assert_eq!(single(&function, 2), single(&function, 3));
                (
                    single(&function, 1),
                    (string(single(&function, 2)), string(single(&function, 4))),
                )
            })
            .collect();
        let locations = messages(4)
            .map(|location| {
                assert_eq!(single(&location, 2), 0, "no mapping");
                let lines = location
                    .iter()
                    .filter(|(number, _)| *number == 4)
                    .map(|(_, line)| {
                        let line = fields(line.bytes());
                        let (function, file) = functions[&single(&line, 1)].clone();
                        (function, file, single(&line, 2) as i64)
                    })
                    .collect();
                (single(&location, 1), lines)
            })
            .collect();
        let samples = messages(2)
            .map(|sample| {
                let varints = |number: u32| -> Vec<u64> {
                    sample
                        .iter()
                        .filter(|(n, _)| *n == number)
                        .flat_map(|(_, value)| value.varints())
                        .collect()
                };
                let labels = sample
                    .iter()
                    .filter(|(number, _)| *number == 3)
                    .map(|(_, label)| {
                        let label = fields(label.bytes());
                        let value = if single(&label, 2) != 0 {
                            LabelValue::Str(string(single(&label, 2)))
                        } else {
                            LabelValue::Num(single(&label, 3) as i64, string(single(&label, 4)))
                        };
                        (string(single(&label, 1)), value)
                    })
                    .collect();
                DecodedSample {
                    location_ids: varints(1),
                    values: varints(2).into_iter().map(|v| v as i64).collect(),
                    labels,
                }
            })
            .collect();
        Decoded {
            sample_types: messages(1).map(|t| value_type(&t)).collect(),
            samples,
            locations,
            function_count: functions.len(),
            mapping_count: messages(3).count(),
            period_type: messages(11).map(|t| value_type(&t)).next().unwrap(),
            period: single(&profile, 12) as i64,
            duration_nanos: single(&profile, 10) as i64,
            default_sample_type: string(single(&profile, 14)),
            strings,
        }
    }

    fn pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn sampled_profile_has_heap_sample_types_and_values() {
        let decoded = decode(&pprof_bytes(&sampled_profile()));
        assert_eq!(decoded.strings[0], "");
        let mut unique = decoded.strings.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            decoded.strings.len(),
            "strings are deduplicated"
        );
        assert_eq!(
            decoded.sample_types,
            pairs(&[
                ("alloc_objects", "count"),
                ("alloc_space", "bytes"),
                ("inuse_objects", "count"),
                ("inuse_space", "bytes"),
            ])
        );
        assert_eq!(decoded.default_sample_type, "inuse_space");
        assert_eq!(decoded.period_type, pairs(&[("space", "bytes")])[0]);
        assert_eq!(decoded.period, 512 * 1024);
        assert_eq!(decoded.duration_nanos, 2_500_000_000);
        assert_eq!(decoded.mapping_count, 0);

        // The all-zero stack is left out.
        let values: Vec<&[i64]> = decoded.samples.iter().map(|s| &s.values[..]).collect();
        assert_eq!(values, [&[100, 6400, 40, 2560][..], &[3, 300, 0, 0][..]]);
    }

    #[test]
    fn inlined_frames_share_a_location_with_their_caller() {
        let decoded = decode(&pprof_bytes(&sampled_profile()));
        let [inlined, plain] = &decoded.samples[..] else {
            panic!("expected two samples, got {:?}", decoded.samples);
        };
        assert_eq!(
            decoded.stack(inlined),
            [vec!["main.newBuffer", "main.handle"], vec!["main.main"]]
        );
        assert_eq!(
            decoded.locations[&inlined.location_ids[0]],
            [
                ("main.newBuffer".into(), "/src/buf.go".into(), 10),
                ("main.handle".into(), "/src/main.go".into(), 20),
            ]
        );
        assert_eq!(
            decoded.stack(plain),
            [vec!["main.handle"], vec!["main.main"]]
        );
        // main.main:5 is one Location; main.handle is one Function at two lines.
        assert_eq!(inlined.location_ids[1], plain.location_ids[1]);
        assert_eq!(decoded.locations.len(), 3);
        assert_eq!(decoded.function_count, 3);
    }

    #[test]
    fn site_facts_become_labels() {
        let decoded = decode(&pprof_bytes(&sampled_profile()));
        let num = |value: i64, unit: &str| LabelValue::Num(value, unit.to_owned());
        assert_eq!(
            decoded.samples[0].labels,
            [
                ("lifetime_p50".to_owned(), num(12, "milliseconds")),
                ("lifetime_p99".to_owned(), num(900, "milliseconds")),
                ("oldest_age".to_owned(), num(42, "seconds")),
                ("gc_cycles_survived".to_owned(), num(7, "count")),
                (
                    "leak_suspect".to_owned(),
                    LabelValue::Str("true".to_owned())
                ),
            ]
        );
        assert!(decoded.samples[1].labels.is_empty());
    }

    #[test]
    fn all_allocs_profile_has_only_alloc_types() {
        let decoded = decode(&pprof_bytes(&all_allocs_profile()));
        assert_eq!(
            decoded.sample_types,
            pairs(&[("alloc_objects", "count"), ("alloc_space", "bytes")])
        );
        assert_eq!(decoded.default_sample_type, "alloc_space");
        let [sample] = &decoded.samples[..] else {
            panic!("expected one sample, got {:?}", decoded.samples);
        };
        assert_eq!(sample.values, [9, 900]);
        assert_eq!(
            decoded.stack(sample),
            [vec!["main.make"], vec!["main.main"]]
        );
        // Facts that are None give no label; a zero keeps its label.
        assert_eq!(
            sample.labels,
            [(
                "gc_cycles_survived".to_owned(),
                LabelValue::Num(0, "count".to_owned())
            )]
        );
    }

    #[test]
    fn empty_profile_is_a_valid_file() {
        let profile = Profile {
            stacks: Vec::new(),
            has_inuse: true,
            interval_bytes: 0,
            duration_ns: 0,
        };
        let decoded = decode(&pprof_bytes(&profile));
        assert_eq!(decoded.strings[0], "");
        assert_eq!(decoded.sample_types.len(), 4);
        assert!(decoded.samples.is_empty());
        assert!(decoded.locations.is_empty());
    }

    #[test]
    fn odd_stacks_do_not_break_the_encoding() {
        let profile = Profile {
            stacks: vec![
                // Ends with an inlined frame that has no caller: still a Location of its own.
                stack(
                    vec![
                        frame("main.leaf", "", 0, false),
                        frame("main.orphan", "/src/x.go", 1, true),
                    ],
                    [u64::MAX, 1, 1, 1],
                    SiteFacts {
                        oldest_age_s: Some(f64::NAN),
                        ..SiteFacts::default()
                    },
                ),
                stack(Vec::new(), [1, 1, 1, 1], SiteFacts::default()),
            ],
            has_inuse: true,
            interval_bytes: u64::MAX,
            duration_ns: 1,
        };
        let decoded = decode(&pprof_bytes(&profile));
        let [odd, empty] = &decoded.samples[..] else {
            panic!("expected two samples, got {:?}", decoded.samples);
        };
        assert_eq!(decoded.stack(odd), [vec!["main.leaf"], vec!["main.orphan"]]);
        assert_eq!(odd.values[0], i64::MAX);
        assert!(odd.labels.is_empty());
        assert!(empty.location_ids.is_empty());
        assert_eq!(decoded.period, i64::MAX);
    }

    #[test]
    fn varints_round_trip() {
        for value in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut message = Message::default();
            message.varint(value);
            assert_eq!(read_varint(&mut message.bytes.as_slice()), value);
        }
        let mut message = Message::default();
        message.int(1, -1);
        assert_eq!(
            message.bytes.len(),
            11,
            "negative int64 takes ten bytes after the tag"
        );
    }
}

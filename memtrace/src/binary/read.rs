//! Bounds-checked little-endian reads from untrusted bytes.
//!
//! Everything in this module returns `None` instead of panicking, so that a corrupt or hostile
//! binary can only make a lookup fail, never crash the tracer.

pub(crate) fn bytes_at(data: &[u8], offset: usize, len: usize) -> Option<&[u8]> {
    data.get(offset..offset.checked_add(len)?)
}

pub(crate) fn u8_at(data: &[u8], offset: usize) -> Option<u8> {
    data.get(offset).copied()
}

pub(crate) fn u32_at(data: &[u8], offset: usize) -> Option<u32> {
    let bytes = bytes_at(data, offset, 4)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

pub(crate) fn i32_at(data: &[u8], offset: usize) -> Option<i32> {
    u32_at(data, offset).map(|value| value as i32)
}

pub(crate) fn u64_at(data: &[u8], offset: usize) -> Option<u64> {
    let bytes = bytes_at(data, offset, 8)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// The NUL-terminated string starting at `offset`, without the NUL. `None` when `offset` is out
/// of range or no NUL follows before the end of `data`.
pub(crate) fn c_str_at(data: &[u8], offset: usize) -> Option<&[u8]> {
    let rest = data.get(offset..)?;
    let len = rest.iter().position(|&byte| byte == 0)?;
    rest.get(..len)
}

/// An unsigned LEB128 varint as Go's `encoding/binary.Uvarint` writes it. Returns the value and
/// the number of bytes it took. At most 10 bytes are read, and a value that overflows 64 bits is
/// rejected.
pub(crate) fn uvarint(data: &[u8]) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    for (index, &byte) in data.iter().enumerate().take(10) {
        let bits = u64::from(byte & 0x7f);
        let shift = 7 * index as u32;
        if index == 9 && byte > 1 {
            return None;
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Some((value, index + 1));
        }
    }
    None
}

/// A 32-bit varint as the runtime's `readvarint` reads pc-value tables. Go never writes more than
/// five bytes for a `uint32`; more is treated as corruption.
pub(crate) fn uvarint32(data: &[u8]) -> Option<(u32, usize)> {
    let mut value: u32 = 0;
    for (index, &byte) in data.iter().enumerate().take(5) {
        value |= u32::from(byte & 0x7f).checked_shl(7 * index as u32)?;
        if byte & 0x80 == 0 {
            return Some((value, index + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_refuse_out_of_range_offsets() {
        let data = [1u8, 2, 3, 4, 5];
        assert_eq!(u32_at(&data, 0), Some(0x0403_0201));
        assert_eq!(u32_at(&data, 1), Some(0x0504_0302));
        assert_eq!(u32_at(&data, 2), None);
        assert_eq!(u64_at(&data, 0), None);
        assert_eq!(u32_at(&data, usize::MAX), None);
        assert_eq!(bytes_at(&data, usize::MAX - 1, 4), None);
        assert_eq!(u8_at(&data, 5), None);
    }

    #[test]
    fn c_strings_need_a_terminator() {
        assert_eq!(c_str_at(b"abc\0def", 0), Some(&b"abc"[..]));
        assert_eq!(c_str_at(b"abc\0def", 4), None);
        assert_eq!(c_str_at(b"abc\0", 3), Some(&b""[..]));
        assert_eq!(c_str_at(b"abc", 10), None);
    }

    #[test]
    fn varints_decode_and_reject_overlong_input() {
        assert_eq!(uvarint(&[0x05]), Some((5, 1)));
        assert_eq!(uvarint(&[0xac, 0x02]), Some((300, 2)));
        assert_eq!(uvarint(&[0x80]), None);
        assert_eq!(uvarint(&[0xff; 11]), None);
        assert_eq!(
            uvarint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Some((u64::MAX, 10))
        );
        assert_eq!(uvarint32(&[0xac, 0x02]), Some((300, 2)));
        assert_eq!(
            uvarint32(&[0xff, 0xff, 0xff, 0xff, 0x0f]),
            Some((u32::MAX, 5))
        );
        assert_eq!(uvarint32(&[0xff; 6]), None);
    }
}

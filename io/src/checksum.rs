//! crc32c (Castagnoli) helpers, hardware-accelerated where the CPU has it.
//!
//! Every WAL record and (later) SSTable block is guarded by one of these. The functions are
//! thin so the call sites read as what they guard.

/// The crc32c of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// Continues `crc` over `data`, as if the bytes had been concatenated.
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

/// The crc32c of several slices concatenated.
pub fn crc32c_parts(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(0, |crc, part| crc32c_append(crc, part))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector_and_parts() {
        // The standard check value of CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c_parts(&[b"1234", b"56789"]), crc32c(b"123456789"));
        assert_eq!(crc32c_append(crc32c(b"12"), b"3456789"), 0xe306_9283);
    }
}

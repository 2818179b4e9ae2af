//! Stable hashing for keys: the same value in every process, release and transport, which is
//! what maps a key to the same outbox shard, partition and lock every time.

/// 64-bit FNV-1a of `bytes`. Unlike `std`'s `DefaultHasher` it never changes between
/// processes or releases, so it may decide where data lives.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_parts(&[bytes])
}

/// FNV-1a of the concatenation of `parts`, without building it.
pub fn fnv1a_parts(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_never_change() {
        // Published FNV-1a test vectors: a change here would move every key.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_parts(&[b"fo", b"obar"]), fnv1a(b"foobar"));
    }
}

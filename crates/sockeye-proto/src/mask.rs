//! Masking (RFC 6455 §5.3), fast and without `unsafe`.
//!
//! The payload is XORed with the 4-byte key repeated. The hot loop works on 64-byte blocks
//! against a key widened to 64 bytes: fixed-size arrays give LLVM the bounds it needs to emit
//! vector XORs (SSE2 on baseline x86-64), so no intrinsics and no `unsafe` are needed.
//! [`apply_mask_scalar`] is the byte-at-a-time reference that tests check it against.

const BLOCK: usize = 64;

/// XORs `buf` with `key`, as if `buf` started at byte `offset` of the payload.
///
/// `offset` lets a payload be unmasked in pieces as it arrives. Masking twice with the same key
/// and offset gives back the original bytes.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    // Rotate the key so that byte 0 of `buf` lines up with key byte `offset % 4`.
    let key = rotate(key, offset);
    if buf.len() < BLOCK {
        // Short payloads (most control frames and chat messages): widening the key to a
        // block would cost more than the XOR itself; eight bytes at a time instead.
        let k = [
            key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
        ];
        let k = u64::from_ne_bytes(k);
        let mut words = buf.chunks_exact_mut(8);
        for word in &mut words {
            let w: [u8; 8] = (&*word).try_into().expect("chunks_exact yields 8 bytes");
            word.copy_from_slice(&(u64::from_ne_bytes(w) ^ k).to_ne_bytes());
        }
        // The tail starts at a multiple of 8, so the key is still aligned.
        for (i, b) in words.into_remainder().iter_mut().enumerate() {
            *b ^= key[i & 3];
        }
        return;
    }
    let mut wide = [0u8; BLOCK];
    for (i, b) in wide.iter_mut().enumerate() {
        *b = key[i % 4];
    }
    let mut blocks = buf.chunks_exact_mut(BLOCK);
    for block in &mut blocks {
        let block: &mut [u8; BLOCK] = block.try_into().expect("chunks_exact yields BLOCK bytes");
        for (b, k) in block.iter_mut().zip(wide.iter()) {
            *b ^= *k;
        }
    }
    // The tail starts at a multiple of BLOCK (a multiple of 4), so the key is still aligned.
    for (b, k) in blocks.into_remainder().iter_mut().zip(wide.iter()) {
        *b ^= *k;
    }
}

/// The byte-at-a-time reference implementation of [`apply_mask`].
pub fn apply_mask_scalar(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(offset + i) % 4];
    }
}

fn rotate(key: [u8; 4], offset: usize) -> [u8; 4] {
    let s = offset % 4;
    [key[s], key[(s + 1) % 4], key[(s + 2) % 4], key[(s + 3) % 4]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc_5_7_masked_hello() {
        // RFC 6455 §5.7: "Hello" masked with 37 fa 21 3d.
        let mut payload = *b"\x7f\x9f\x4d\x51\x58";
        apply_mask(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&payload, b"Hello");
    }

    proptest! {
        #[test]
        fn matches_scalar_reference(
            data in proptest::collection::vec(any::<u8>(), 0..600),
            key in any::<[u8; 4]>(),
            offset in 0usize..16,
        ) {
            let mut fast = data.clone();
            let mut slow = data.clone();
            apply_mask(&mut fast, key, offset);
            apply_mask_scalar(&mut slow, key, offset);
            prop_assert_eq!(&fast, &slow);
            apply_mask(&mut fast, key, offset);
            prop_assert_eq!(fast, data);
        }

        #[test]
        fn split_masking_equals_whole(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            key in any::<[u8; 4]>(),
            split in 0usize..300,
        ) {
            let split = split.min(data.len());
            let mut whole = data.clone();
            apply_mask(&mut whole, key, 0);
            let mut parts = data.clone();
            let (a, b) = parts.split_at_mut(split);
            apply_mask(a, key, 0);
            apply_mask(b, key, split);
            prop_assert_eq!(whole, parts);
        }
    }
}

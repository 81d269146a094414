//! Randomness for masking keys, handshake keys and ping payloads.
//!
//! RFC 6455 §5.3: the masking key "MUST be derived from a strong source of entropy". By default
//! the bytes come from the operating system (`getrandom`), drawn 256 bytes at a time into a
//! per-thread buffer so that a client sending many small frames does not make a system call
//! per frame. Tests seed a deterministic generator instead ([`crate::Config::seed`]).

use std::cell::RefCell;

const POOL: usize = 256;

thread_local! {
    static OS_POOL: RefCell<([u8; POOL], usize)> = const { RefCell::new(([0; POOL], POOL)) };
}

#[derive(Debug, Clone)]
pub(crate) enum Rng {
    Os,
    Seeded(u64),
}

impl Rng {
    pub(crate) fn new(seed: Option<u64>) -> Rng {
        match seed {
            Some(s) => Rng::Seeded(s),
            None => Rng::Os,
        }
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        match self {
            Rng::Os => OS_POOL.with(|pool| {
                let mut pool = pool.borrow_mut();
                let (bytes, pos) = &mut *pool;
                for b in buf.iter_mut() {
                    if *pos == POOL {
                        // The OS entropy source failing is not recoverable and never caused by
                        // a peer; a WebSocket client cannot mask without it.
                        getrandom::fill(bytes).expect("operating system entropy source failed");
                        *pos = 0;
                    }
                    *b = bytes[*pos];
                    *pos += 1;
                }
            }),
            Rng::Seeded(state) => {
                for chunk in buf.chunks_mut(8) {
                    // SplitMix64: deterministic, good enough for tests.
                    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let mut z = *state;
                    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                    z ^= z >> 31;
                    chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
                }
            }
        }
    }

    pub(crate) fn mask(&mut self) -> [u8; 4] {
        let mut m = [0; 4];
        self.fill(&mut m);
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_is_deterministic_and_os_varies() {
        let a: Vec<[u8; 4]> = (0..4).map(|_| Rng::Seeded(7).mask()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut r = Rng::Seeded(7);
        let (x, y) = (r.mask(), r.mask());
        assert_ne!(x, y);
        let mut os = Rng::Os;
        let keys: Vec<[u8; 4]> = (0..100).map(|_| os.mask()).collect();
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert!(distinct.len() > 90, "OS masks repeat: {}", distinct.len());
    }
}

//! What the fault tests of every on-disk reader share (tests only).

/// Deterministic random corruptions of `bytes` for the fault tests of
/// every on-disk reader: `n` variants, each with 1 to 4 bytes overwritten
/// by random values, or cut at a random length, or with a random span
/// dropped (xorshift64, so a failure names a reproducible case).
pub(crate) fn corruptions(bytes: &[u8], n: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let len = bytes.len().max(1) as u64;
    (0..n)
        .map(|_| {
            let mut b = bytes.to_vec();
            match next() % 3 {
                0 => {
                    for _ in 0..=next() % 4 {
                        let i = (next() % len) as usize;
                        if i < b.len() {
                            b[i] = next() as u8;
                        }
                    }
                }
                1 => b.truncate((next() % len) as usize),
                _ => {
                    let i = (next() % len) as usize;
                    let j = (i + 1 + (next() % 64) as usize).min(b.len());
                    b.drain(i.min(b.len())..j);
                }
            }
            b
        })
        .collect()
}

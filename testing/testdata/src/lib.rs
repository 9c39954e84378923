//! Deterministic test inputs: whole test files for the scenario suite and the worker's runtime
//! tests, and generated inputs with planted content ([`planted`]) for the engine and CLI tests.

pub mod planted;

/// `size` pseudo-random bytes from `seed`, with an AWS key id and a URL planted at a third and two
/// thirds of the way (something for the secrets and iocs analyzers to find).
pub fn test_file(seed: u64, size: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut data: Vec<u8> = (0..size)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect();
    for (i, needle) in [&b" AKIAIOSFODNN7EXAMPLE "[..], b" https://evil.example.com/payload "]
        .iter()
        .enumerate()
    {
        let at = (i + 1) * size / 3;
        if at + needle.len() < size {
            data[at..at + needle.len()].copy_from_slice(needle);
        }
    }
    data
}

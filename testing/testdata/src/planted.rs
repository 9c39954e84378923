//! Generated inputs with planted content, shared by the engine and CLI tests.

/// SplitMix64: deterministic bytes, so a failing case reproduces.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

pub fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0; len];
    Rng(seed).fill(&mut v);
    v
}

/// Low-entropy text of lowercase words: no magic of any format can appear in it.
pub fn text(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "lorem", "ipsum", "dolor", "sit", "amet", "firmware", "kernel", "module", "config", "value", "table", "entry",
    ];
    let mut rng = Rng(seed);
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(WORDS[(rng.next_u64() % 12) as usize].as_bytes());
        out.push(if rng.next_u64().is_multiple_of(9) { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

pub fn gzip_header() -> Vec<u8> {
    // Magic, deflate, no flags, mtime 0, XFL 0, OS 3 (Unix), then some deflate bytes.
    let mut v = vec![0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0x00, 0x03];
    v.extend_from_slice(&[0xcb, 0x48, 0xcd, 0xc9, 0xc9, 0xe7, 0x02, 0x00]);
    v
}

pub fn zip_local_header() -> Vec<u8> {
    let mut v = b"PK\x03\x04".to_vec();
    v.extend_from_slice(&20u16.to_le_bytes()); // version needed
    v.extend_from_slice(&0u16.to_le_bytes()); // flags
    v.extend_from_slice(&8u16.to_le_bytes()); // deflate
    v.extend_from_slice(&[0; 4]); // time, date
    v.extend_from_slice(&[0x12, 0x34, 0x56, 0x78]); // crc
    v.extend_from_slice(&10u32.to_le_bytes());
    v.extend_from_slice(&12u32.to_le_bytes());
    v.extend_from_slice(&9u16.to_le_bytes()); // name length
    v.extend_from_slice(&0u16.to_le_bytes()); // extra length
    v.extend_from_slice(b"hello.txt");
    v.extend_from_slice(&[0xcb, 0x48, 0xcd, 0xc9, 0xc9, 0xe7, 0x02, 0x00, 0, 0]);
    v
}

pub fn elf_header() -> Vec<u8> {
    let mut v = vec![0u8; 64];
    v[..4].copy_from_slice(b"\x7fELF");
    v[4] = 2; // 64-bit
    v[5] = 1; // little endian
    v[6] = 1; // version
    v[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    v[18..20].copy_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    v[20..24].copy_from_slice(&1u32.to_le_bytes());
    v
}

pub fn pe_header() -> Vec<u8> {
    let mut v = vec![0u8; 0x98];
    v[..2].copy_from_slice(b"MZ");
    v[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
    v[0x80..0x84].copy_from_slice(b"PE\0\0");
    v[0x84..0x86].copy_from_slice(&0x8664u16.to_le_bytes());
    v
}

/// A planted item: its bytes, and the rule the filetype analyzer reports for it.
pub struct Plant {
    pub offset: usize,
    pub bytes: Vec<u8>,
    pub rule: &'static str,
}

/// Text background with embedded files at chunk boundaries (for 4 KiB, 64 KiB and 1 MiB chunks)
/// and elsewhere, and two high-entropy regions aligned to the 64 KiB entropy windows.
pub fn planted_input() -> (Vec<u8>, Vec<Plant>, Vec<(u64, u64)>) {
    let len = 3 * 1024 * 1024 + 12_345;
    let mut data = text(len, 7);
    let plants = vec![
        Plant {
            offset: 4096 - 2,
            bytes: gzip_header(),
            rule: "embedded-gzip",
        },
        Plant {
            offset: 65_536 - 30,
            bytes: elf_header(),
            rule: "embedded-elf",
        },
        Plant {
            offset: 300_001,
            bytes: zip_local_header(),
            rule: "embedded-zip",
        },
        Plant {
            offset: (1 << 20) - 1,
            bytes: pe_header(),
            rule: "embedded-pe",
        },
        Plant {
            offset: 2 * (1 << 20) - 3,
            bytes: zip_local_header(),
            rule: "embedded-zip",
        },
        Plant {
            offset: 2_500_000,
            bytes: elf_header(),
            rule: "embedded-elf",
        },
        Plant {
            offset: 3 * (1 << 20) - 1,
            bytes: gzip_header(),
            rule: "embedded-gzip",
        },
    ];
    for p in &plants {
        data[p.offset..p.offset + p.bytes.len()].copy_from_slice(&p.bytes);
    }
    // Random regions well away from the plants: [5, 9) and [40, 41) windows of 64 KiB.
    let w = 64 * 1024u64;
    let regions = vec![(5 * w, 4 * w), (40 * w, w)];
    for (i, &(start, rlen)) in regions.iter().enumerate() {
        let r = random(rlen as usize, 100 + i as u64);
        data[start as usize..(start + rlen) as usize].copy_from_slice(&r);
    }
    (data, plants, regions)
}

//! BLAKE3 whose state can be checkpointed.
//!
//! `blake3::Hasher` cannot be serialized mid-stream, so this keeps the tree itself: the chaining
//! values of the complete, aligned subtrees hashed so far (at most one per bit of the length,
//! merged eagerly as BLAKE3's own CV stack does) and the last, possibly partial, chunk. Big
//! aligned subtrees are hashed with `blake3::hazmat` so the SIMD multi-chunk paths stay in use;
//! the state is under 3 KiB whatever the stream length. The last chunk is always held back
//! until more input arrives because only then is it known not to be the root.

use blake3::hazmat::{ChainingValue, HasherExt, Mode, max_subtree_len, merge_subtrees_non_root, merge_subtrees_root};
use blake3::{CHUNK_LEN, Hasher};
use serde::{Deserialize, Serialize};

use super::hex;

const CHUNK: u64 = CHUNK_LEN as u64;

/// One complete subtree: its chaining value and its length in bytes (a power of two of chunks).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Subtree {
    cv: ChainingValue,
    len: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Blake3Tree {
    /// Complete subtrees covering `[0, stack_end)`, largest first.
    stack: Vec<Subtree>,
    stack_end: u64,
    /// Bytes after `stack_end`: at most one chunk, never hashed until more input arrives.
    tail: Vec<u8>,
}

/// The serialized form of a [`Blake3Tree`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Blake3State {
    /// `(hex chaining value, length)` of each complete subtree, left to right.
    pub stack: Vec<(String, u64)>,
    /// Hex of the held-back bytes (at most 1024).
    pub tail: String,
}

/// Why a saved state cannot be restored.
#[derive(Debug, thiserror::Error)]
#[error("invalid BLAKE3 state: {0}")]
pub struct Blake3StateError(String);

impl Blake3Tree {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> u64 {
        self.stack_end + self.tail.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn update(&mut self, mut input: &[u8]) {
        // Complete the held-back chunk first; hash it only when input remains after it.
        if !self.tail.is_empty() {
            let need = CHUNK_LEN - self.tail.len();
            let take = need.min(input.len());
            self.tail.extend_from_slice(&input[..take]);
            input = &input[take..];
            if input.is_empty() {
                return;
            }
            let mut hasher = Hasher::new();
            hasher.set_input_offset(self.stack_end);
            hasher.update(&self.tail);
            let cv = hasher.finalize_non_root();
            self.push(cv, CHUNK);
            self.tail.clear();
        }
        // Hash the largest aligned subtrees that leave at least one byte behind.
        while input.len() as u64 > CHUNK {
            let avail = (input.len() as u64 - 1) / CHUNK * CHUNK;
            let mut len = prev_power_of_two(avail / CHUNK) * CHUNK;
            if let Some(max) = max_subtree_len(self.stack_end) {
                len = len.min(max);
            }
            let (subtree, rest) = input.split_at(len as usize);
            let mut hasher = Hasher::new();
            hasher.set_input_offset(self.stack_end);
            hasher.update(subtree);
            let cv = hasher.finalize_non_root();
            self.push(cv, len);
            input = rest;
        }
        self.tail.extend_from_slice(input);
    }

    /// Pushes a subtree at `stack_end` and merges equal neighbours. Never called for the last
    /// bytes seen, so no merge here can be the root.
    fn push(&mut self, cv: ChainingValue, len: u64) {
        let mut node = Subtree { cv, len };
        self.stack_end += len;
        while let Some(top) = self.stack.last() {
            if top.len != node.len {
                break;
            }
            let left = top.cv;
            self.stack.pop();
            node = Subtree {
                cv: merge_subtrees_non_root(&left, &node.cv, Mode::Hash),
                len: node.len * 2,
            };
        }
        self.stack.push(node);
    }

    pub fn finalize(&self) -> blake3::Hash {
        if self.stack.is_empty() {
            return blake3::hash(&self.tail);
        }
        let mut hasher = Hasher::new();
        hasher.set_input_offset(self.stack_end);
        hasher.update(&self.tail);
        // `tail` is never empty once something is on the stack (the last chunk is held back).
        let mut right = hasher.finalize_non_root();
        for (i, left) in self.stack.iter().enumerate().rev() {
            if i == 0 {
                return merge_subtrees_root(&left.cv, &right, Mode::Hash);
            }
            right = merge_subtrees_non_root(&left.cv, &right, Mode::Hash);
        }
        blake3::hash(&self.tail)
    }

    pub fn save(&self) -> Blake3State {
        Blake3State {
            stack: self.stack.iter().map(|s| (hex::encode(&s.cv), s.len)).collect(),
            tail: hex::encode(&self.tail),
        }
    }

    pub fn restore(state: &Blake3State) -> Result<Self, Blake3StateError> {
        let mut tree = Blake3Tree::new();
        let mut previous: Option<u64> = None;
        for (cv, len) in &state.stack {
            let bytes = hex::decode(cv).map_err(|e| Blake3StateError(e.to_string()))?;
            let cv: ChainingValue = bytes
                .try_into()
                .map_err(|_| Blake3StateError("chaining value is not 32 bytes".into()))?;
            let valid = len.is_power_of_two() && *len >= CHUNK && previous.is_none_or(|p| p > *len);
            if !valid {
                return Err(Blake3StateError(format!("subtree length {len} out of order")));
            }
            previous = Some(*len);
            tree.stack.push(Subtree { cv, len: *len });
            tree.stack_end += len;
        }
        tree.tail = hex::decode(&state.tail).map_err(|e| Blake3StateError(e.to_string()))?;
        if tree.tail.len() > CHUNK_LEN || (!tree.stack.is_empty() && tree.tail.is_empty()) {
            return Err(Blake3StateError("held-back chunk has an impossible length".into()));
        }
        Ok(tree)
    }
}

fn prev_power_of_two(n: u64) -> u64 {
    if n == 0 { 0 } else { 1 << (63 - n.leading_zeros()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8 ^ (i >> 7) as u8)
            .collect()
    }

    #[test]
    fn matches_blake3_for_many_lengths_and_split_points() {
        let input = data(300 * 1024 + 77);
        let lengths = [
            0,
            1,
            1023,
            1024,
            1025,
            2048,
            2049,
            3072,
            5000,
            64 * 1024,
            64 * 1024 + 1,
            300 * 1024 + 77,
        ];
        for len in lengths {
            let whole = blake3::hash(&input[..len]);
            for step in [1usize, 7, 1000, 1024, 4096, 65_536, 1 << 20] {
                if step == 1 && len > 5000 {
                    continue;
                }
                let mut tree = Blake3Tree::new();
                for piece in input[..len].chunks(step) {
                    tree.update(piece);
                }
                assert_eq!(tree.finalize(), whole, "len {len} step {step}");
                assert_eq!(tree.len(), len as u64);
            }
        }
    }

    #[test]
    fn save_and_restore_continue_the_same_hash() -> Result<(), Blake3StateError> {
        let input = data(200_000);
        for split in [0, 1, 1024, 1025, 99_999, 131_072, 200_000] {
            let mut first = Blake3Tree::new();
            first.update(&input[..split]);
            let state = first.save();
            let json = serde_json::to_string(&state).unwrap_or_default();
            assert!(json.len() < 4096, "state is {} bytes", json.len());
            let mut second = Blake3Tree::restore(&state)?;
            second.update(&input[split..]);
            assert_eq!(second.finalize(), blake3::hash(&input), "split {split}");
        }
        Ok(())
    }

    #[test]
    fn refuses_corrupt_state() {
        let bad = Blake3State {
            stack: vec![("00".into(), 1024)],
            tail: String::new(),
        };
        assert!(Blake3Tree::restore(&bad).is_err());
    }
}

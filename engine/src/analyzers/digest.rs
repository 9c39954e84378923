//! `digest`: SHA-256 and BLAKE3 of the whole stream.
//!
//! Both states checkpoint exactly: SHA-256 through the `SerializableState` of `sha2` 0.11 (the
//! compression state, the block counter and the partial block), BLAKE3 through
//! [`Blake3Tree`](crate::blake3_tree::Blake3Tree).

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sha2::{Digest, Sha256};
use streamscan_api::AnalyzerName;

use crate::blake3_tree::{Blake3State, Blake3Tree};
use crate::{Analyzer, AnalyzerError, FindingSink, Window, hex};

#[derive(Clone, Default)]
pub struct DigestAnalyzer {
    sha256: Sha256,
    blake3: Blake3Tree,
}

#[derive(Serialize, Deserialize)]
struct State {
    /// Hex of `sha2`'s serialized SHA-256 state.
    sha256: String,
    blake3: Blake3State,
}

impl DigestAnalyzer {
    pub fn new() -> Self {
        Self::default()
    }

    fn error(message: impl std::fmt::Display) -> AnalyzerError {
        AnalyzerError::Checkpoint {
            analyzer: AnalyzerName::Digest,
            message: message.to_string(),
        }
    }
}

impl Analyzer for DigestAnalyzer {
    fn name(&self) -> AnalyzerName {
        AnalyzerName::Digest
    }

    fn update(&mut self, window: &Window<'_>, _sink: &mut dyn FindingSink) -> Result<(), AnalyzerError> {
        let fresh = window.fresh_bytes();
        self.sha256.update(fresh);
        self.blake3.update(fresh);
        Ok(())
    }

    fn finish(&mut self, _sink: &mut dyn FindingSink) -> Result<serde_json::Value, AnalyzerError> {
        let sha256 = hex::encode(&self.sha256.clone().finalize());
        let blake3 = self.blake3.finalize().to_hex().to_string();
        Ok(json!({ "sha256": sha256, "blake3": blake3 }))
    }

    fn checkpoint(&self) -> Result<serde_json::Value, AnalyzerError> {
        let state = State {
            sha256: hex::encode(self.sha256.serialize().as_slice()),
            blake3: self.blake3.save(),
        };
        serde_json::to_value(state).map_err(Self::error)
    }

    fn restore(&mut self, state: serde_json::Value) -> Result<(), AnalyzerError> {
        let state: State = serde_json::from_value(state).map_err(Self::error)?;
        let bytes = hex::decode(&state.sha256).map_err(Self::error)?;
        let serialized = SerializedState::<Sha256>::try_from(bytes.as_slice())
            .map_err(|_| Self::error("SHA-256 state has the wrong length"))?;
        self.sha256 = Sha256::deserialize(&serialized).map_err(|_| Self::error("SHA-256 state is corrupt"))?;
        self.blake3 = Blake3Tree::restore(&state.blake3).map_err(Self::error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(analyzer: &mut DigestAnalyzer, data: &[u8]) {
        let window = Window {
            data,
            offset: 0,
            fresh: 0,
            is_last: false,
            total: None,
        };
        let mut sink = Vec::new();
        assert!(analyzer.update(&window, &mut sink).is_ok());
    }

    #[test]
    fn known_answers() -> Result<(), AnalyzerError> {
        let mut a = DigestAnalyzer::new();
        run(&mut a, b"abc");
        let summary = a.finish(&mut Vec::new())?;
        assert_eq!(
            summary["sha256"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(summary["blake3"], blake3::hash(b"abc").to_hex().as_str());
        Ok(())
    }

    #[test]
    fn checkpoint_mid_block_resumes_exactly() -> Result<(), AnalyzerError> {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut whole = DigestAnalyzer::new();
        run(&mut whole, &data);
        let expected = whole.finish(&mut Vec::new())?;
        for split in [0, 1, 63, 64, 65, 1024, 1025, 9_999] {
            let mut first = DigestAnalyzer::new();
            run(&mut first, &data[..split]);
            let state = first.checkpoint()?;
            let mut second = DigestAnalyzer::new();
            second.restore(serde_json::from_str(&state.to_string()).unwrap_or_default())?;
            run(&mut second, &data[split..]);
            assert_eq!(second.finish(&mut Vec::new())?, expected, "split {split}");
        }
        Ok(())
    }
}

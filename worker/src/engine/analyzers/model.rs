//! STUB: to be replaced by the real analyzer.

use streamscan_api::AnalyzerName;

use crate::engine::{Analyzer, AnalyzerError, FindingSink, Window};

pub struct ModelAnalyzer;

impl ModelAnalyzer {
    pub fn new(_config: ModelConfig) -> Self {
        Self
    }
}

impl Analyzer for ModelAnalyzer {
    fn name(&self) -> AnalyzerName {
        AnalyzerName::Model
    }

    fn update(&mut self, _window: &Window<'_>, _sink: &mut dyn FindingSink) -> Result<(), AnalyzerError> {
        Ok(())
    }

    fn finish(&mut self, _sink: &mut dyn FindingSink) -> Result<serde_json::Value, AnalyzerError> {
        Ok(serde_json::Value::Null)
    }

    fn checkpoint(&self) -> Result<serde_json::Value, AnalyzerError> {
        Ok(serde_json::Value::Null)
    }

    fn restore(&mut self, _state: serde_json::Value) -> Result<(), AnalyzerError> {
        Ok(())
    }
}

/// Where the external model is and how to feed it.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// HTTP(S) endpoint that scores one window of features per request.
    pub endpoint: String,
}

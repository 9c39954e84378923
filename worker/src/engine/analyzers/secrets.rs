//! STUB: to be replaced by the real analyzer.

use streamscan_api::AnalyzerName;

use crate::engine::{Analyzer, AnalyzerError, FindingSink, Window};

#[derive(Default)]
pub struct SecretsAnalyzer;

impl SecretsAnalyzer {
    pub fn new() -> Self {
        Self
    }
}

impl Analyzer for SecretsAnalyzer {
    fn name(&self) -> AnalyzerName {
        AnalyzerName::Secrets
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

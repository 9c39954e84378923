//! STUB: to be replaced by the real analyzer.

use streamscan_api::AnalyzerName;

use crate::engine::{Analyzer, AnalyzerError, FindingSink, Window};

pub struct ComponentsAnalyzer;

impl ComponentsAnalyzer {
    pub fn new(_vuln_db: &[std::path::PathBuf]) -> Result<Self, AnalyzerError> {
        Ok(Self)
    }
}

impl Analyzer for ComponentsAnalyzer {
    fn name(&self) -> AnalyzerName {
        AnalyzerName::Components
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

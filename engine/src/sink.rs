//! Finding sinks that keep reports bounded: at most `cap` findings per analyzer, and a count of
//! what was dropped.

use serde::{Deserialize, Serialize};

use super::{Finding, FindingSink};

/// Findings kept by default per analyzer; what exceeds it is counted, not stored.
pub const DEFAULT_FINDING_CAP: usize = 1000;

/// Keeps the first `cap` findings pushed into it and counts the rest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CappedSink {
    pub cap: usize,
    pub findings: Vec<Finding>,
    pub dropped: u64,
}

impl CappedSink {
    pub fn new(cap: usize) -> Self {
        CappedSink {
            cap,
            findings: Vec::new(),
            dropped: 0,
        }
    }
}

impl FindingSink for CappedSink {
    fn push(&mut self, finding: Finding) {
        if self.findings.len() < self.cap {
            self.findings.push(finding);
        } else {
            self.dropped += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use streamscan_api::AnalyzerName;

    use super::*;
    use crate::Severity;

    #[test]
    fn keeps_the_first_cap_and_counts_the_rest() {
        let mut sink = CappedSink::new(3);
        for i in 0..10 {
            sink.push(Finding::new(AnalyzerName::Entropy, "r", Severity::Low, i, "m"));
        }
        assert_eq!(sink.findings.len(), 3);
        assert_eq!(sink.findings[2].offset, 2);
        assert_eq!(sink.dropped, 7);
    }
}

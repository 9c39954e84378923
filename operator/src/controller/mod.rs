//! The AnalysisJob controller: a pure decision core ([`decide`], [`servers`]) and the thin
//! Kubernetes shell around it.

pub mod decide;
pub mod servers;

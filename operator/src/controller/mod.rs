//! The AnalysisJob controller: a pure decision core ([`decide`], [`servers`]) and the thin
//! Kubernetes shell around it.

pub mod cleanup;
pub mod decide;
pub mod ledger;
pub mod metrics;
pub mod reconcile;
pub mod run;
pub mod servers;

pub use run::{ControllerArgs, run};

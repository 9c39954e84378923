//! The AnalysisJob controller: a pure decision core ([`decide`], [`servers`]) and the thin
//! Kubernetes shell around it.

pub mod cleanup;
pub mod decide;
pub mod ledger;
pub mod metrics;
pub mod reconcile;
pub mod run;
/// Which pods are servers: shared with the gateway, so it lives in the API crate.
pub use streamscan_api::servers;

pub use run::{ControllerArgs, run};

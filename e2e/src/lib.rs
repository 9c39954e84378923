//! End-to-end support for Streamscan: where no cluster exists, a Kubernetes API simulator that
//! the real binaries talk to over HTTP (see `e2e/README.md` for what it models and what it does
//! not), and `devstack`, the whole system on one machine.

pub mod devstack;
pub mod fence;
pub mod real;
pub mod sim;
pub mod testdata;

pub use sim::{SimError, Simulator};

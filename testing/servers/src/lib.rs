//! The servers Streamscan's tests run against: the real kube-apiserver, etcd,
//! kube-controller-manager and Apache Kafka ([`real`], built by `scripts/real/`), or the API
//! simulator in their place ([`ApiServer`]). Tests only.

mod apiserver;
pub mod real;

pub use apiserver::{ApiServer, Backend, ServersError};

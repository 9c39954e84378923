//! Producer fencing in front of librdkafka's mock cluster, for the tests that must show a zombie
//! producer being fenced.
//!
//! Apache Kafka fences by epoch: InitProducerId for a `transactional.id` bumps the epoch, and from
//! then on the transaction coordinator answers the older producer's AddPartitionsToTxn, EndTxn and
//! InitProducerId with PRODUCER_FENCED, and partition leaders answer its Produce with
//! INVALID_PRODUCER_EPOCH. The mock cluster instead hands every InitProducerId a fresh producer id
//! (`rd_kafka_mock_pid_new`), so the old producer stays valid; and no Kafka-protocol broker that
//! fences can run on the test machines (no JVM Kafka or Redpanda in the reachable registries; tansu
//! 0.6 does not implement EndTxn, so transactions cannot commit on it).
//!
//! [`FencingProxy`] is a Kafka-protocol proxy that adds exactly Kafka's rule on top of the mock:
//! the latest successful InitProducerId of a transactional id owns it; requests of any other
//! producer id (or an older epoch) for that id get the error Kafka gives. Everything else passes
//! through unchanged, except that Metadata and FindCoordinator answers name the proxy as the
//! broker, so clients keep talking through it. One upstream broker (a one-broker mock cluster).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, ApiKey, EndTxnRequest, EndTxnResponse,
    FindCoordinatorResponse, InitProducerIdRequest, InitProducerIdResponse, MetadataResponse, ProduceRequest,
    ProduceResponse, ProducerId, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Kafka's error codes used here.
const PRODUCER_FENCED: i16 = 90;
const INVALID_PRODUCER_EPOCH: i16 = 47;
/// Largest frame accepted (Kafka's default socket.request.max.bytes).
const MAX_FRAME: usize = 100 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("Kafka protocol: {0}")]
    Protocol(String),
}

fn protocol(e: impl std::fmt::Display) -> FenceError {
    FenceError::Protocol(e.to_string())
}

/// Who owns each transactional id, and what the proxy refused.
#[derive(Debug, Default)]
struct Owners {
    /// transactional id -> (producer id, epoch) of its latest InitProducerId.
    owner: HashMap<String, (i64, i16)>,
    /// Every transactional id that InitProducerId was asked for, in order.
    initialised: Vec<String>,
    /// Requests answered as fenced: (transactional id, API).
    refused: Vec<(String, &'static str)>,
}

impl Owners {
    fn fenced(&mut self, txn: &str, pid: i64, epoch: i16, api: &'static str) -> bool {
        let fenced = self
            .owner
            .get(txn)
            .is_some_and(|&(owner, owner_epoch)| pid != owner || epoch < owner_epoch);
        if fenced {
            tracing::info!(
                txn,
                pid,
                epoch,
                api,
                "fencing proxy: refused a zombie producer's request"
            );
            self.refused.push((txn.to_owned(), api));
        }
        fenced
    }
}

type Shared = Arc<Mutex<Owners>>;

fn lock(owners: &Shared) -> std::sync::MutexGuard<'_, Owners> {
    owners.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running proxy; stops when dropped.
pub struct FencingProxy {
    addr: SocketAddr,
    owners: Shared,
    task: JoinHandle<()>,
}

impl FencingProxy {
    /// Listens on a free loopback port and relays to `upstream` (`host:port` of the one broker).
    pub async fn start(upstream: &str) -> Result<Self, FenceError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|source| FenceError::Io {
                what: "binding the fencing proxy".into(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| FenceError::Io {
            what: "the fencing proxy's address".into(),
            source,
        })?;
        let owners = Shared::default();
        let shared = owners.clone();
        let upstream = upstream.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let owners = shared.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    match relay(client, &upstream, addr, owners).await {
                        Ok(()) => {}
                        // A message the proxy cannot read would silently weaken what it proves.
                        Err(e @ FenceError::Protocol(_)) => {
                            tracing::warn!(error = %e, "fencing proxy: dropped a connection")
                        }
                        Err(e) => tracing::debug!(error = %e, "fencing proxy: connection ended"),
                    }
                });
            }
        });
        Ok(FencingProxy { addr, owners, task })
    }

    pub fn bootstrap_servers(&self) -> String {
        self.addr.to_string()
    }

    /// The transactional ids producers initialised, in order.
    pub fn initialised(&self) -> Vec<String> {
        lock(&self.owners).initialised.clone()
    }

    /// The requests refused as fenced: (transactional id, API name).
    pub fn refused(&self) -> Vec<(String, &'static str)> {
        lock(&self.owners).refused.clone()
    }
}

impl Drop for FencingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_frame(r: &mut (impl AsyncReadExt + Unpin)) -> Result<Option<Bytes>, FenceError> {
    let len = match r.read_i32().await {
        Ok(n) => usize::try_from(n).map_err(protocol)?,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(source) => {
            return Err(FenceError::Io {
                what: "reading a frame".into(),
                source,
            });
        }
    };
    if !(4..=MAX_FRAME).contains(&len) {
        return Err(protocol(format!("frame of {len} bytes")));
    }
    let mut buf = BytesMut::zeroed(len);
    r.read_exact(&mut buf).await.map_err(|source| FenceError::Io {
        what: "reading a frame".into(),
        source,
    })?;
    Ok(Some(buf.freeze()))
}

/// Writes one frame: its length, then `body`.
async fn write_frame(w: &mut (impl AsyncWriteExt + Unpin), body: &[u8], to: &str) -> Result<(), FenceError> {
    let len = i32::try_from(body.len()).map_err(protocol)?;
    let io = |source| FenceError::Io {
        what: format!("writing to {to}"),
        source,
    };
    w.write_all(&len.to_be_bytes()).await.map_err(io)?;
    w.write_all(body).await.map_err(io)
}

/// A response (without its length): header for `corr` plus `body`, at the request's API version.
fn response<M: Encodable>(key: ApiKey, version: i16, corr: i32, body: &M) -> Result<Bytes, FenceError> {
    let mut buf = BytesMut::new();
    let mut header = ResponseHeader::default();
    header.correlation_id = corr;
    header
        .encode(&mut buf, key.response_header_version(version))
        .map_err(protocol)?;
    body.encode(&mut buf, version).map_err(protocol)?;
    Ok(buf.freeze())
}

/// What to do with a response when it comes back.
enum Pending {
    /// Learn the new owner of a transactional id.
    Init(String),
    /// Name the proxy as the broker.
    Rewrite(ApiKey),
}

async fn relay(client: TcpStream, upstream: &str, me: SocketAddr, owners: Shared) -> Result<(), FenceError> {
    let server = TcpStream::connect(upstream).await.map_err(|source| FenceError::Io {
        what: format!("connecting to {upstream}"),
        source,
    })?;
    let (mut client_r, mut client_w) = client.into_split();
    let (mut server_r, mut server_w) = server.into_split();
    let pending: Arc<Mutex<HashMap<i32, (Pending, i16)>>> = Arc::default();
    // Frames to the client, without their length: answers from the broker and from the proxy.
    let (to_client, mut to_client_rx) = mpsc::channel::<Bytes>(64);

    let requests = {
        let pending = pending.clone();
        let owners = owners.clone();
        let to_client = to_client.clone();
        async move {
            while let Some(request) = read_frame(&mut client_r).await? {
                match on_request(&request, &owners, &pending)? {
                    Action::Drop => {}
                    Action::Answer(answer) => {
                        if to_client.send(answer).await.is_err() {
                            break;
                        }
                    }
                    Action::Forward => write_frame(&mut server_w, &request, "the broker").await?,
                }
            }
            Ok::<_, FenceError>(())
        }
    };
    let responses = async move {
        while let Some(resp) = read_frame(&mut server_r).await? {
            let out = on_response(resp, me, &owners, &pending)?;
            if to_client.send(out).await.is_err() {
                break;
            }
        }
        Ok::<_, FenceError>(())
    };
    let writer = async move {
        while let Some(body) = to_client_rx.recv().await {
            write_frame(&mut client_w, &body, "the client").await?;
        }
        Ok::<_, FenceError>(())
    };
    tokio::select! {
        r = requests => r,
        r = responses => r,
        r = writer => r,
    }
}

/// What becomes of a client's request.
enum Action {
    Forward,
    /// The proxy answers it itself (fenced).
    Answer(Bytes),
    /// Refused, and the client expects no answer (Produce with acks=0).
    Drop,
}

/// A request from a client.
fn on_request(
    request: &Bytes,
    owners: &Shared,
    pending: &Mutex<HashMap<i32, (Pending, i16)>>,
) -> Result<Action, FenceError> {
    let mut buf = request.clone();
    let (Some(k), Some(v)) = (request.get(0..2), request.get(2..4)) else {
        return Err(protocol("short request"));
    };
    let version = i16::from_be_bytes([v[0], v[1]]);
    let Ok(key) = ApiKey::try_from(i16::from_be_bytes([k[0], k[1]])) else {
        return Ok(Action::Forward);
    };
    let header = RequestHeader::decode(&mut buf, key.request_header_version(version)).map_err(protocol)?;
    let corr = header.correlation_id;
    let remember = |p: Pending| {
        pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(corr, (p, version));
    };
    match key {
        ApiKey::InitProducerId => {
            let req = InitProducerIdRequest::decode(&mut buf, version).map_err(protocol)?;
            if let Some(txn) = req.transactional_id.map(|t| t.0.as_str().to_owned()) {
                let mut o = lock(owners);
                o.initialised.push(txn.clone());
                // KIP-360: an existing producer asking for an epoch bump must still be the owner.
                if req.producer_id.0 >= 0 && o.fenced(&txn, req.producer_id.0, req.producer_epoch, "InitProducerId") {
                    let mut r = InitProducerIdResponse::default();
                    r.error_code = PRODUCER_FENCED;
                    r.producer_id = ProducerId(-1);
                    r.producer_epoch = -1;
                    return response(key, version, corr, &r).map(Action::Answer);
                }
                drop(o);
                remember(Pending::Init(txn));
            }
            Ok(Action::Forward)
        }
        ApiKey::AddPartitionsToTxn if version <= 3 => {
            let req = AddPartitionsToTxnRequest::decode(&mut buf, version).map_err(protocol)?;
            let txn = req.v3_and_below_transactional_id.0.as_str();
            if !lock(owners).fenced(
                txn,
                req.v3_and_below_producer_id.0,
                req.v3_and_below_producer_epoch,
                "AddPartitionsToTxn",
            ) {
                return Ok(Action::Forward);
            }
            let mut r = AddPartitionsToTxnResponse::default();
            r.results_by_topic_v3_and_below = req
                .v3_and_below_topics
                .iter()
                .map(|t| {
                    let mut topic = AddPartitionsToTxnTopicResult::default();
                    topic.name = t.name.clone();
                    topic.results_by_partition = t
                        .partitions
                        .iter()
                        .map(|&p| {
                            let mut part = AddPartitionsToTxnPartitionResult::default();
                            part.partition_index = p;
                            part.partition_error_code = PRODUCER_FENCED;
                            part
                        })
                        .collect();
                    topic
                })
                .collect();
            response(key, version, corr, &r).map(Action::Answer)
        }
        ApiKey::EndTxn => {
            let req = EndTxnRequest::decode(&mut buf, version).map_err(protocol)?;
            if !lock(owners).fenced(
                req.transactional_id.0.as_str(),
                req.producer_id.0,
                req.producer_epoch,
                "EndTxn",
            ) {
                return Ok(Action::Forward);
            }
            let mut r = EndTxnResponse::default();
            r.error_code = PRODUCER_FENCED;
            response(key, version, corr, &r).map(Action::Answer)
        }
        ApiKey::Produce => {
            let req = ProduceRequest::decode(&mut buf, version).map_err(protocol)?;
            let Some(txn) = req.transactional_id.as_ref().map(|t| t.0.as_str().to_owned()) else {
                return Ok(Action::Forward);
            };
            // RecordBatch v2: producerId at byte 43, producerEpoch at 51.
            let zombie = req.topic_data.iter().flat_map(|t| &t.partition_data).any(|p| {
                p.records.as_ref().and_then(|r| r.get(43..53)).is_some_and(|b| {
                    let pid = i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                    let epoch = i16::from_be_bytes([b[8], b[9]]);
                    lock(owners).fenced(&txn, pid, epoch, "Produce")
                })
            });
            if !zombie {
                return Ok(Action::Forward);
            }
            if req.acks == 0 {
                return Ok(Action::Drop);
            }
            let mut r = ProduceResponse::default();
            r.responses = req
                .topic_data
                .iter()
                .map(|t| {
                    let mut topic = TopicProduceResponse::default();
                    topic.name = t.name.clone();
                    topic.topic_id = t.topic_id;
                    topic.partition_responses = t
                        .partition_data
                        .iter()
                        .map(|p| {
                            let mut part = PartitionProduceResponse::default();
                            part.index = p.index;
                            part.error_code = INVALID_PRODUCER_EPOCH;
                            part.base_offset = -1;
                            part.log_append_time_ms = -1;
                            part.log_start_offset = -1;
                            part
                        })
                        .collect();
                    topic
                })
                .collect();
            response(key, version, corr, &r).map(Action::Answer)
        }
        ApiKey::Metadata | ApiKey::FindCoordinator => {
            remember(Pending::Rewrite(key));
            Ok(Action::Forward)
        }
        _ => Ok(Action::Forward),
    }
}

/// A response from the broker, rewritten where the proxy must see or change it.
fn on_response(
    resp: Bytes,
    me: SocketAddr,
    owners: &Shared,
    pending: &Mutex<HashMap<i32, (Pending, i16)>>,
) -> Result<Bytes, FenceError> {
    let Some(c) = resp.get(0..4) else {
        return Err(protocol("short response"));
    };
    let corr = i32::from_be_bytes([c[0], c[1], c[2], c[3]]);
    let Some((what, version)) = pending.lock().unwrap_or_else(PoisonError::into_inner).remove(&corr) else {
        return Ok(resp);
    };
    let mut buf = resp.clone();
    let host = StrBytes::from_string(me.ip().to_string());
    let port = i32::from(me.port());
    match what {
        Pending::Init(txn) => {
            ResponseHeader::decode(&mut buf, ApiKey::InitProducerId.response_header_version(version))
                .map_err(protocol)?;
            let r = InitProducerIdResponse::decode(&mut buf, version).map_err(protocol)?;
            if r.error_code == 0 {
                lock(owners).owner.insert(txn, (r.producer_id.0, r.producer_epoch));
            }
            Ok(resp)
        }
        Pending::Rewrite(key) => {
            ResponseHeader::decode(&mut buf, key.response_header_version(version)).map_err(protocol)?;
            if key == ApiKey::Metadata {
                let mut r = MetadataResponse::decode(&mut buf, version).map_err(protocol)?;
                for b in &mut r.brokers {
                    b.host = host.clone();
                    b.port = port;
                }
                response(key, version, corr, &r)
            } else {
                let mut r = FindCoordinatorResponse::decode(&mut buf, version).map_err(protocol)?;
                if r.error_code == 0 && r.node_id.0 >= 0 {
                    r.host = host.clone();
                    r.port = port;
                }
                for c in r
                    .coordinators
                    .iter_mut()
                    .filter(|c| c.error_code == 0 && c.node_id.0 >= 0)
                {
                    c.host = host.clone();
                    c.port = port;
                }
                response(key, version, corr, &r)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_initialised_producer_owns_the_transactional_id() {
        let mut o = Owners::default();
        // Unknown to the coordinator: nothing to fence it with (the broker answers itself).
        assert!(!o.fenced("t", 7, 0, "EndTxn"));
        o.owner.insert("t".into(), (7, 0));
        assert!(!o.fenced("t", 7, 0, "EndTxn"), "the owner");
        assert!(!o.fenced("t", 7, 1, "Produce"), "a newer epoch of the owner");
        assert!(!o.fenced("u", 8, 0, "EndTxn"), "another transactional id");
        // A newer attempt took the id over: the old producer id is a zombie.
        o.owner.insert("t".into(), (9, 0));
        assert!(o.fenced("t", 7, 0, "Produce"));
        // An epoch bump of the owner fences its own older epoch too.
        o.owner.insert("t".into(), (9, 1));
        assert!(o.fenced("t", 9, 0, "EndTxn"));
        assert_eq!(o.refused, vec![("t".to_owned(), "Produce"), ("t".to_owned(), "EndTxn")]);
    }
}

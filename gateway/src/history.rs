//! Redis history: per attempt, a sorted set of the exact event JSON scored by `seq`. Writes go
//! through one Lua script, so a `seq` is stored at most once whichever replica writes it first.
//! Keys carry the `analyzeId` as a hash tag so one analysis stays on one Redis Cluster slot.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use streamscan_api::ProgressEvent;

use crate::verdict::{self, Verdict};

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("stored verdict is not valid JSON: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// False when the attempt already held this `seq` (a duplicate).
    pub added: bool,
    /// Whether the attempt's final event is stored (so its verdict is due).
    pub final_seen: bool,
}

/// The verdict written for an attempt, and whether this write turned it into a mismatch.
pub struct Recorded {
    pub verdict: Verdict,
    pub newly_mismatched: bool,
}

const STORE: &str = r"
local added = 0
if redis.call('ZCOUNT', KEYS[1], ARGV[1], ARGV[1]) == 0 then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
  added = 1
end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
if ARGV[6] == '1' then
  redis.call('SET', KEYS[3], '1', 'EX', ARGV[3])
end
return {added, redis.call('EXISTS', KEYS[3])}
";

/// Returns the history's epoch, creating it (as ARGV[1]) when Redis holds none.
const EPOCH: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1])
  return ARGV[1]
end
return v
";

/// The key whose value names the Redis dataset: it changes only when Redis lost its data.
pub const EPOCH_KEY: &str = "streamscan:history:epoch";

#[derive(Clone)]
pub struct History {
    conn: ConnectionManager,
    ttl: u64,
    verdict_ttl: u64,
    store: std::sync::Arc<redis::Script>,
    epoch: std::sync::Arc<redis::Script>,
}

pub fn events_key(analyze_id: &str, event_id: &str) -> String {
    format!("streamscan:{{{analyze_id}}}:events:{event_id}")
}
pub fn attempts_key(analyze_id: &str) -> String {
    format!("streamscan:{{{analyze_id}}}:attempts")
}
fn final_key(analyze_id: &str, event_id: &str) -> String {
    format!("streamscan:{{{analyze_id}}}:final:{event_id}")
}
pub fn verdict_key(analyze_id: &str, event_id: &str) -> String {
    format!("streamscan:{{{analyze_id}}}:verdict:{event_id}")
}
/// Attempts with a verdict; outlives the events (verdict TTL) so the API can still show it.
fn verdicts_key(analyze_id: &str) -> String {
    format!("streamscan:{{{analyze_id}}}:verdicts")
}

impl History {
    /// Connects lazily, so the gateway starts (and streams live) while Redis is down.
    pub fn new(url: &str, ttl: Duration, verdict_ttl: Duration, timeout: Duration) -> Result<Self, HistoryError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(History {
            conn,
            ttl: ttl.as_secs().max(1),
            verdict_ttl: verdict_ttl.as_secs().max(1),
            store: std::sync::Arc::new(redis::Script::new(STORE)),
            epoch: std::sync::Arc::new(redis::Script::new(EPOCH)),
        })
    }

    /// How long an attempt's events stay after its last write.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl)
    }

    /// The dataset's epoch: `candidate` if Redis held none (it is new, or lost its data), else the
    /// one it holds. The key has no TTL, so it goes only with the data (or by `allkeys-*`
    /// eviction, which then costs one needless re-read).
    pub async fn epoch(&self, candidate: &str) -> Result<String, HistoryError> {
        let mut conn = self.conn.clone();
        Ok(self.epoch.key(EPOCH_KEY).arg(candidate).invoke_async(&mut conn).await?)
    }

    /// Stores one event (idempotently) and refreshes the attempt's TTL.
    pub async fn store(&self, event: &ProgressEvent, payload: &[u8]) -> Result<Stored, HistoryError> {
        let mut conn = self.conn.clone();
        let (added, final_seen): (i64, i64) = self
            .store
            .key(events_key(&event.analyze_id, &event.event_id))
            .key(attempts_key(&event.analyze_id))
            .key(final_key(&event.analyze_id, &event.event_id))
            .arg(event.seq)
            .arg(payload)
            .arg(self.ttl)
            .arg(event.attempt)
            .arg(&event.event_id)
            .arg(if event.status.is_final() { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await?;
        Ok(Stored {
            added: added == 1,
            final_seen: final_seen == 1,
        })
    }

    /// The attempts of an analysis held in Redis: `(attempt, eventId)` in attempt order.
    pub async fn attempts(&self, analyze_id: &str) -> Result<Vec<(u32, String)>, HistoryError> {
        let mut conn = self.conn.clone();
        let pairs: Vec<(String, f64)> = conn.zrange_withscores(attempts_key(analyze_id), 0, -1).await?;
        // Scores are small attempt numbers, exact in an f64.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Ok(pairs
            .into_iter()
            .map(|(event_id, score)| (score as u32, event_id))
            .collect())
    }

    /// One attempt's events as `(seq, exact JSON)`, in seq order.
    pub async fn events(&self, analyze_id: &str, event_id: &str) -> Result<Vec<(u64, Bytes)>, HistoryError> {
        let mut conn = self.conn.clone();
        let raw: Vec<(Vec<u8>, f64)> = conn.zrange_withscores(events_key(analyze_id, event_id), 0, -1).await?;
        // Scores are seqs, exact in an f64 up to 2^53.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Ok(raw.into_iter().map(|(p, s)| (s as u64, Bytes::from(p))).collect())
    }

    /// Up to `limit` of one attempt's events with a seq above `after` (all, when None), in seq
    /// order.
    async fn events_page(
        &self,
        analyze_id: &str,
        event_id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Bytes)>, HistoryError> {
        let mut conn = self.conn.clone();
        let min = after.map_or_else(|| "-inf".to_owned(), |seq| format!("({seq}"));
        let limit = isize::try_from(limit).unwrap_or(isize::MAX);
        let raw: Vec<(Vec<u8>, f64)> = conn
            .zrangebyscore_limit_withscores(events_key(analyze_id, event_id), min, "+inf", 0, limit)
            .await?;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Ok(raw.into_iter().map(|(p, s)| (s as u64, Bytes::from(p))).collect())
    }

    /// Checks an attempt's stored stream and records the verdict.
    pub async fn record_verdict(&self, analyze_id: &str, event_id: &str) -> Result<Recorded, HistoryError> {
        let stored = self.events(analyze_id, event_id).await?;
        let mut events = Vec::with_capacity(stored.len());
        let mut unreadable = 0usize;
        for (_, payload) in &stored {
            match ProgressEvent::from_slice(payload) {
                Ok(e) => events.push(e),
                Err(_) => unreadable += 1,
            }
        }
        let mut verdict = verdict::check(&events);
        if unreadable > 0 {
            verdict.ok = false;
            verdict
                .problems
                .push(format!("{unreadable} stored events are unreadable"));
        }
        if verdict.analyze_id.is_empty() {
            verdict.analyze_id = analyze_id.to_owned();
            verdict.event_id = event_id.to_owned();
        }
        let json = serde_json::to_string(&verdict)?;
        let mut conn = self.conn.clone();
        let old: Option<String> = redis::cmd("SET")
            .arg(verdict_key(analyze_id, event_id))
            .arg(json)
            .arg("EX")
            .arg(self.verdict_ttl)
            .arg("GET")
            .query_async(&mut conn)
            .await?;
        let _: () = redis::pipe()
            .zadd(verdicts_key(analyze_id), event_id, verdict.attempt)
            .ignore()
            .expire(
                verdicts_key(analyze_id),
                i64::try_from(self.verdict_ttl).unwrap_or(i64::MAX),
            )
            .ignore()
            .query_async(&mut conn)
            .await?;
        let was_ok = match old {
            Some(old) => serde_json::from_str::<Verdict>(&old).map(|v| v.ok).unwrap_or(true),
            None => true,
        };
        Ok(Recorded {
            newly_mismatched: was_ok && !verdict.ok,
            verdict,
        })
    }

    /// The recorded verdicts of an analysis's attempts, in attempt order.
    pub async fn verdicts(&self, analyze_id: &str) -> Result<Vec<Verdict>, HistoryError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = conn.zrange(verdicts_key(analyze_id), 0, -1).await?;
        let mut out = Vec::new();
        for event_id in ids {
            let raw: Option<String> = conn.get(verdict_key(analyze_id, &event_id)).await?;
            if let Some(raw) = raw {
                out.push(serde_json::from_str(&raw)?);
            }
        }
        Ok(out)
    }
}

/// Events of one history page, read from Redis at a time: a reader holds one page, however long
/// the job's history.
pub const PAGE: usize = 256;

/// One job's stored events, attempt by attempt in order, read a page at a time.
pub struct Pages {
    history: History,
    analyze_id: String,
    attempts: VecDeque<(u32, String)>,
    /// The first attempt's events up to this seq are skipped (read already, or seen by a client).
    after: Option<u64>,
}

/// One page: the attempt, its eventId, and `(seq, exact JSON)` in seq order.
pub type Page = (u32, String, Vec<(u64, Bytes)>);

impl Pages {
    /// `attempts` in order; the first one's events from after `after` on.
    pub fn new(history: History, analyze_id: String, attempts: VecDeque<(u32, String)>, after: Option<u64>) -> Self {
        Pages {
            history,
            analyze_id,
            attempts,
            after,
        }
    }

    pub fn analyze_id(&self) -> &str {
        &self.analyze_id
    }

    /// The next page, `None` once every attempt is read. Cancel-safe: the position moves only
    /// after a page is read.
    pub async fn next(&mut self) -> Result<Option<Page>, HistoryError> {
        let Some((attempt, event_id)) = self.attempts.front().cloned() else {
            return Ok(None);
        };
        let events = self
            .history
            .events_page(&self.analyze_id, &event_id, self.after, PAGE)
            .await?;
        if events.len() < PAGE {
            self.attempts.pop_front();
            self.after = None;
        } else {
            self.after = events.last().map(|(seq, _)| *seq);
        }
        Ok(Some((attempt, event_id, events)))
    }
}

//! Live progress of one job over WebSocket or SSE, resumable after a last seen `(eventId, seq)`:
//! subscribe to the live hub first, then replay the history from Redis, then go live, dropping
//! at the seam whatever was already sent, so that there is no gap and no repeat.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::ws::{
    CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use kube::ResourceExt;
use serde::Deserialize;

use crate::auth::{Caller, StreamCaller};
use crate::error::ApiError;
use crate::history::Pages;
use crate::http::AppState;
use crate::hub::{Published, Subscription};
use crate::jobs::{owned_job, request_cancel};
use crate::limits::StreamSlot;
use crate::seqset::SeqSet;

/// Header telling a client connected without a resume point that history could not be replayed.
pub const HISTORY_HEADER: &str = "x-streamscan-history";

/// A last seen event: `<eventId>:<seq>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePoint {
    pub event_id: String,
    pub seq: u64,
}

impl ResumePoint {
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let bad = || ApiError::bad_request(format!("resume point {text:?} must be <eventId>:<seq>"));
        let (event_id, seq) = text.trim().rsplit_once(':').ok_or_else(bad)?;
        if event_id.is_empty() {
            return Err(bad());
        }
        Ok(ResumePoint {
            event_id: event_id.to_owned(),
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct EventsQuery {
    /// Resume after this event (`<eventId>:<seq>`); SSE clients may send `Last-Event-ID` instead.
    pub after: Option<String>,
}

/// What a client gets next.
pub enum Next {
    Event(Arc<Published>),
    /// The client fell too far behind and was dropped by the hub.
    Overflow,
    /// Reading the rest of the history failed; the client should resume later.
    HistoryFailed,
    Closed,
}

/// The history still to replay, and the unsent rest of the page last read.
struct Replay {
    pages: Pages,
    page: VecDeque<Arc<Published>>,
}

/// One client's ordered feed: replayed history, then live events not yet sent.
pub struct Feed {
    replay: Option<Replay>,
    sub: Subscription,
    sent: HashMap<String, SeqSet>,
    pub history_replayed: bool,
    pub last: Option<(String, u64)>,
}

impl Feed {
    pub async fn open(state: &AppState, analyze_id: &str, after: Option<ResumePoint>) -> Result<Feed, ApiError> {
        // Subscribe before reading history, so nothing published meanwhile is missed.
        let sub = state.hub.subscribe(analyze_id);
        let mut feed = Feed {
            replay: None,
            sub,
            sent: HashMap::new(),
            history_replayed: false,
            last: after.as_ref().map(|a| (a.event_id.clone(), a.seq)),
        };
        if let Some(after) = &after {
            feed.sent.insert(after.event_id.clone(), SeqSet::through(after.seq));
        }
        if !state.history_ok.load(Ordering::SeqCst) {
            if after.is_some() {
                return Err(ApiError::unavailable(
                    "event history is unavailable (Redis is down or catching up), so this stream cannot resume; retry later or connect without a resume point for live events only",
                ));
            }
            return Ok(feed);
        }
        // The first page is read here, so that a Redis failure answers the request.
        let opened = match feed.plan_replay(state, analyze_id, after.as_ref()).await {
            Ok(()) => feed.fill().await,
            Err(err) => Err(err),
        };
        match opened {
            Ok(()) => {
                feed.history_replayed = true;
                Ok(feed)
            }
            Err(err) if after.is_some() => Err(ApiError::redis(&err)),
            Err(err) => {
                tracing::warn!(%err, "history unavailable; streaming live only");
                feed.replay = None;
                Ok(feed)
            }
        }
    }

    /// Which attempts to replay, and from where: those before the resume point's attempt were
    /// seen whole, the resume point's own from after its seq.
    async fn plan_replay(
        &mut self,
        state: &AppState,
        analyze_id: &str,
        after: Option<&ResumePoint>,
    ) -> Result<(), crate::history::HistoryError> {
        let attempts = state.history.attempts(analyze_id).await?;
        let resume_attempt = after.and_then(|a| attempts.iter().find(|(_, e)| *e == a.event_id).map(|(n, _)| *n));
        let mut todo = VecDeque::new();
        for (attempt, event_id) in attempts {
            if resume_attempt.is_some_and(|r| attempt < r) {
                // The client has moved past this attempt: never send it again.
                self.sent.insert(event_id, SeqSet::all());
            } else {
                todo.push_back((attempt, event_id));
            }
        }
        let first_after = match (after, todo.front()) {
            (Some(a), Some((_, first))) if *first == a.event_id => Some(a.seq),
            _ => None,
        };
        self.replay = Some(Replay {
            pages: Pages::new(state.history.clone(), analyze_id.to_owned(), todo, first_after),
            page: VecDeque::new(),
        });
        Ok(())
    }

    /// Reads history pages until one holds something to send or the history is done.
    /// Cancel-safe: state changes only after a page is read.
    async fn fill(&mut self) -> Result<(), crate::history::HistoryError> {
        loop {
            let Some(replay) = self.replay.as_mut() else {
                return Ok(());
            };
            if !replay.page.is_empty() {
                return Ok(());
            }
            let Some((attempt, event_id, events)) = replay.pages.next().await? else {
                self.replay = None;
                return Ok(());
            };
            let set = self.sent.entry(event_id.clone()).or_default();
            for (seq, payload) in events {
                if set.insert(seq) {
                    replay.page.push_back(Arc::new(Published {
                        analyze_id: replay.pages.analyze_id().to_owned(),
                        event_id: event_id.clone(),
                        attempt,
                        seq,
                        payload,
                    }));
                }
            }
        }
    }

    /// Cancel-safe: the awaits are a history page read (which changes nothing until it is
    /// complete) and the hub queue's `recv`.
    pub async fn next(&mut self) -> Next {
        if let Err(err) = self.fill().await {
            tracing::warn!(%err, "reading the history failed mid-replay");
            return Next::HistoryFailed;
        }
        if let Some(event) = self.replay.as_mut().and_then(|r| r.page.pop_front()) {
            self.last = Some((event.event_id.clone(), event.seq));
            return Next::Event(event);
        }
        loop {
            let Some(event) = self.sub.rx.recv().await else {
                return if self.sub.overflowed() {
                    Next::Overflow
                } else {
                    Next::Closed
                };
            };
            let fresh = match self.sent.get_mut(&event.event_id) {
                Some(set) => set.insert(event.seq),
                None => {
                    let mut set = SeqSet::default();
                    set.insert(event.seq);
                    self.sent.insert(event.event_id.clone(), set);
                    true
                }
            };
            if fresh {
                self.last = Some((event.event_id.clone(), event.seq));
                return Next::Event(event);
            }
        }
    }

    /// The resume point to give a client that has to reconnect.
    pub fn resume_hint(&self) -> String {
        match &self.last {
            Some((event_id, seq)) => format!("{event_id}:{seq}"),
            None => String::new(),
        }
    }
}

/// Counts a connected client for as long as it lives.
struct ClientGuard(prometheus_client::metrics::gauge::Gauge);
impl ClientGuard {
    fn new(state: &AppState, transport: &str) -> Self {
        let g = state.metrics.clients(transport);
        g.inc();
        ClientGuard(g)
    }
}
impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

const WS_READ_BUFFER: usize = 4 << 10;
const WS_WRITE_BUFFER: usize = 8 << 10;

pub async fn events(
    State(state): State<Arc<AppState>>,
    StreamCaller(caller): StreamCaller,
    Path((namespace, name)): Path<(String, String)>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let job = owned_job(&state, &caller, &namespace, &name).await?;
    // Held for as long as the connection lives.
    let slot = state.streams.acquire(&caller.user)?;
    let analyze_id = job.uid().unwrap_or_default();
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let after = match (&query.after, last_event_id) {
        (Some(a), _) => Some(ResumePoint::parse(a)?),
        (None, Some(l)) if !l.trim().is_empty() => Some(ResumePoint::parse(l)?),
        _ => None,
    };
    let wants_sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    match ws {
        Ok(ws) => {
            let feed = Feed::open(&state, &analyze_id, after).await?;
            let replayed = feed.history_replayed;
            let max = state.settings.max_ws_message_bytes;
            let mut response = ws
                .max_message_size(max)
                .max_frame_size(max)
                // tungstenite allocates its 128 KiB read buffer up front, per connection; clients
                // only send small commands, and events are a few hundred bytes, so small buffers
                // keep a thousand watchers cheap (writes still coalesce a dozen events).
                .read_buffer_size(WS_READ_BUFFER)
                .write_buffer_size(WS_WRITE_BUFFER)
                .on_upgrade(move |socket| async move {
                    let _slot = slot;
                    websocket(socket, state, caller, namespace, name, feed).await;
                });
            mark_history(&mut response, replayed);
            Ok(response)
        }
        Err(_) if wants_sse => {
            let feed = Feed::open(&state, &analyze_id, after).await?;
            let replayed = feed.history_replayed;
            let mut response = sse(state, feed, slot).into_response();
            mark_history(&mut response, replayed);
            Ok(response)
        }
        Err(_) => Err(ApiError::new(
            axum::http::StatusCode::NOT_ACCEPTABLE,
            "open this URL as a WebSocket, or send Accept: text/event-stream for Server-Sent Events",
        )),
    }
}

fn mark_history(response: &mut Response, replayed: bool) {
    let value = if replayed { "replayed" } else { "unavailable" };
    response
        .headers_mut()
        .insert(HISTORY_HEADER, HeaderValue::from_static(value));
}

fn sse(
    state: Arc<AppState>,
    feed: Feed,
    slot: StreamSlot,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let heartbeat = state.settings.heartbeat;
    let guard = (ClientGuard::new(&state, "sse"), slot);
    let shutdown = state.shutdown.clone();
    let stream = futures::stream::unfold(Some((feed, state, guard, shutdown)), |st| async move {
        let (mut feed, state, guard, shutdown) = st?;
        let next = tokio::select! {
            () = shutdown.cancelled() => return None,
            next = feed.next() => next,
        };
        match next {
            Next::Event(e) => {
                state.metrics.events_pushed.inc();
                let data = std::str::from_utf8(&e.payload).unwrap_or_default();
                let event = Event::default().id(format!("{}:{}", e.event_id, e.seq)).data(data);
                Some((Ok(event), Some((feed, state, guard, shutdown))))
            }
            Next::Overflow => {
                let comment = format!(
                    "disconnected: too slow to keep up; reconnect with Last-Event-ID: {}",
                    feed.resume_hint()
                );
                Some((Ok(Event::default().comment(comment)), None))
            }
            Next::HistoryFailed => {
                let comment = format!(
                    "disconnected: the history could not be read; reconnect later with Last-Event-ID: {}",
                    feed.resume_hint()
                );
                Some((Ok(Event::default().comment(comment)), None))
            }
            Next::Closed => None,
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(heartbeat).text("heartbeat"))
}

#[derive(Deserialize)]
struct ClientMessage {
    #[serde(rename = "type")]
    kind: String,
}

async fn websocket(
    mut socket: WebSocket,
    state: Arc<AppState>,
    caller: Caller,
    namespace: String,
    name: String,
    mut feed: Feed,
) {
    let _guard = ClientGuard::new(&state, "websocket");
    let heartbeat = state.settings.heartbeat;
    let mut ticker = tokio::time::interval(heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let send_timeout = heartbeat * 2;
    let close = |code: u16, reason: String| {
        // Close reasons are limited to 123 bytes; cut at a character boundary.
        let mut reason = reason;
        let mut end = reason.len().min(120);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(reason),
        }))
    };
    loop {
        let outgoing = tokio::select! {
            () = state.shutdown.cancelled() => Some(close(1001, "gateway shutting down; reconnect".into())),
            next = feed.next() => match next {
                Next::Event(e) => match Utf8Bytes::try_from(e.payload.clone()) {
                    Ok(text) => {
                        state.metrics.events_pushed.inc();
                        Some(Message::Text(text))
                    }
                    Err(_) => None,
                },
                Next::Overflow => {
                    let hint = feed.resume_hint();
                    let _ = send(&mut socket, close(1013, format!("too slow; reconnect with after={hint}")), send_timeout).await;
                    tracing::info!(%namespace, %name, "disconnected a slow WebSocket client");
                    return;
                }
                Next::HistoryFailed => {
                    let hint = feed.resume_hint();
                    Some(close(1011, format!("history unavailable; reconnect later with after={hint}")))
                }
                Next::Closed => Some(close(1001, "stream closed".into())),
            },
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) => return,
                Some(Ok(msg)) => {
                    last_heard = Instant::now();
                    match msg {
                        Message::Text(text) => Some(on_client_text(&state, &caller, &namespace, &name, &text).await),
                        Message::Close(_) => return,
                        _ => None,
                    }
                }
            },
            _ = ticker.tick() => {
                if last_heard.elapsed() > heartbeat * 3 {
                    tracing::info!(%namespace, %name, "WebSocket client stopped answering pings; closing");
                    let _ = send(&mut socket, close(1001, "heartbeat timeout".into()), send_timeout).await;
                    return;
                }
                Some(Message::Ping(Bytes::from_static(b"hb")))
            }
        };
        if let Some(msg) = outgoing {
            let closing = matches!(msg, Message::Close(_));
            if send(&mut socket, msg, send_timeout).await.is_err() || closing {
                return;
            }
        }
    }
}

async fn send(socket: &mut WebSocket, msg: Message, timeout: Duration) -> Result<(), ()> {
    match tokio::time::timeout(timeout, socket.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

async fn on_client_text(state: &AppState, caller: &Caller, namespace: &str, name: &str, text: &str) -> Message {
    let reply = match serde_json::from_str::<ClientMessage>(text) {
        Ok(m) if m.kind == "cancel" => match request_cancel(state, caller, namespace, name).await {
            Ok(_) => serde_json::json!({"type": "cancelAccepted"}),
            Err(err) => serde_json::json!({"type": "error", "code": err.status.as_u16(), "message": err.message}),
        },
        Ok(m) => {
            serde_json::json!({"type": "error", "message": format!("unknown message type {:?}; expected \"cancel\"", m.kind)})
        }
        Err(e) => {
            serde_json::json!({"type": "error", "message": format!("messages must be JSON objects with a type: {e}")})
        }
    };
    Message::Text(Utf8Bytes::from(reply.to_string()))
}

/// `GET .../history`: the stored events of every attempt, in order (503 while Redis is out),
/// streamed as one JSON array a page at a time.
pub async fn history(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let job = owned_job(&state, &caller, &namespace, &name).await?;
    if !state.history_ok.load(Ordering::SeqCst) {
        return Err(ApiError::unavailable(
            "event history is unavailable (Redis is down or catching up); retry later",
        ));
    }
    let analyze_id = job.uid().unwrap_or_default();
    let attempts = state
        .history
        .attempts(&analyze_id)
        .await
        .map_err(|e| ApiError::redis(&e))?;
    let pages = Pages::new(state.history.clone(), analyze_id, attempts.into(), None);
    // Stored payloads are JSON checked at ingest: written out as they are, comma-separated.
    let body = futures::stream::unfold(Some((pages, true)), |state| async move {
        let (mut pages, first) = state?;
        let events = match pages.next().await {
            Ok(Some((_, _, events))) => events,
            Ok(None) => {
                let close: &[u8] = if first { b"[]" } else { b"]" };
                return Some((Ok(Bytes::from_static(close)), None));
            }
            Err(err) => {
                tracing::warn!(%err, "reading the history failed mid-response");
                return Some((Err(err), None));
            }
        };
        let mut chunk = Vec::new();
        let mut first = first;
        for (_, payload) in events {
            chunk.push(if first { b'[' } else { b',' });
            first = false;
            chunk.extend_from_slice(&payload);
        }
        Some((Ok(chunk.into()), Some((pages, first))))
    });
    let mut response = Response::new(axum::body::Body::from_stream(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_points_parse() {
        let p = ResumePoint::parse("abc-1:42").unwrap();
        assert_eq!((p.event_id.as_str(), p.seq), ("abc-1", 42));
        let p = ResumePoint::parse("a:b:7").unwrap();
        assert_eq!((p.event_id.as_str(), p.seq), ("a:b", 7));
        assert!(ResumePoint::parse("nocolon").is_err());
        assert!(ResumePoint::parse(":3").is_err());
        assert!(ResumePoint::parse("x:-1").is_err());
    }
}

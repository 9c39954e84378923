//! Per-user limits, so that one user cannot take the installation for themselves: open streams
//! (WebSocket and SSE connections) and unfinished jobs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use kube::Api;
use kube::api::ListParams;
use streamscan_api::AnalysisJob;

use crate::error::ApiError;

/// Open streams per user.
#[derive(Clone)]
pub struct StreamSlots {
    open: Arc<Mutex<HashMap<String, usize>>>,
    max: usize,
}

/// One open stream of a user, released when dropped (the connection ended).
pub struct StreamSlot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    user: String,
}

impl StreamSlots {
    /// At most `max` open streams per user; 0: no limit.
    pub fn new(max: usize) -> Self {
        StreamSlots {
            open: Arc::default(),
            max,
        }
    }

    pub fn acquire(&self, user: &str) -> Result<StreamSlot, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(user.to_owned()).or_default();
        if self.max > 0 && *count >= self.max {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "you have {count} event streams open, the most this gateway allows per user \
                     (--max-streams-per-user); close one first"
                ),
            ));
        }
        *count += 1;
        Ok(StreamSlot {
            open: self.open.clone(),
            user: user.to_owned(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

/// Refuses a new job while `user` has `max` unfinished ones (0: no limit). Counted from the API
/// server, so every gateway replica sees the same number; concurrent creates may pass a few over.
pub async fn check_active_jobs(api: &Api<AnalysisJob>, user: &str, max: usize) -> Result<(), ApiError> {
    if max == 0 {
        return Ok(());
    }
    let mut params = ListParams::default().limit(500);
    let mut active = 0usize;
    loop {
        let page = api.list(&params).await.map_err(|e| ApiError::kube(&e))?;
        active += page
            .items
            .iter()
            .filter(|job| job.spec.user_id == user)
            .filter(|job| {
                !job.status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .is_some_and(|p| p.is_finished())
            })
            .count();
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    if active >= max {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "you have {active} unfinished jobs, the most this gateway allows per user \
                 (--max-active-jobs-per-user is {max}); wait for one to finish, or cancel one"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_slots_count_per_user_and_free_on_drop() {
        let slots = StreamSlots::new(2);
        let a1 = slots.acquire("alice");
        let a2 = slots.acquire("alice");
        assert!(a1.is_ok() && a2.is_ok());
        let refused = slots.acquire("alice").err().map(|e| e.status);
        assert_eq!(refused, Some(StatusCode::TOO_MANY_REQUESTS));
        assert!(slots.acquire("bob").is_ok(), "another user has their own slots");
        drop(a1);
        assert!(slots.acquire("alice").is_ok(), "a closed stream frees its slot");
        let unlimited = StreamSlots::new(0);
        let held: Vec<_> = (0..100).map(|_| unlimited.acquire("alice")).collect();
        assert!(held.iter().all(Result::is_ok));
    }
}

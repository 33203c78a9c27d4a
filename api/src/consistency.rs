//! Read-your-writes on whichever aipm process answers.
//!
//! Reads of the database see every committed change at once, on every process. Reads served
//! from memory (a flag's evaluation, a label's resolution, an experiment's assignment) and
//! from the audit log see another process's change once this process has read the log that
//! far. So every command that records events answers with `Aipm-Cursor`, the place of its
//! last event in the global order, and a request that sends it back as `Aipm-Read-After` is
//! answered only once this process's views and projections hold everything up to it
//! (`AppState::read_after`; the middleware is `app::read_your_writes`, and the wait runs
//! once the caller is authenticated, see [`PendingReadAfter`]).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::Response;
use domain::position::GlobalCursor;
use futures::future::BoxFuture;

use crate::error::ApiError;

/// The response header naming where a command's last event stands in the global order.
pub const CURSOR_HEADER: HeaderName = HeaderName::from_static("aipm-cursor");
/// The request header asking to be answered only once everything up to a cursor is read.
pub const READ_AFTER_HEADER: HeaderName = HeaderName::from_static("aipm-read-after");
/// How long a request waits for this process to read the log up to its `Aipm-Read-After`.
pub const READ_AFTER_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the commands of one request left the log; the route's command helpers record
/// into it, and the response carries it as `Aipm-Cursor`.
#[derive(Clone, Default)]
pub struct Written(Arc<Mutex<Option<GlobalCursor>>>);

impl Written {
    /// Records a command's last event (the furthest of a request's commands is kept).
    pub fn record(&self, cursor: Option<GlobalCursor>) {
        let Some(cursor) = cursor else { return };
        let mut written = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if written.is_none_or(|known| cursor > known) {
            *written = Some(cursor);
        }
    }

    fn cursor(&self) -> Option<GlobalCursor> {
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The wait a request's `Aipm-Read-After` asks for, or the refusal of a malformed one. The
/// middleware sets it aside and [`crate::auth::Caller`] runs it once the caller is
/// authenticated: a request without a valid key is refused as such, and never waits.
#[derive(Clone)]
pub struct PendingReadAfter(Arc<Mutex<Option<ReadAfterWait>>>);

/// Waiting for this process to read the log up to a request's `Aipm-Read-After`.
type ReadAfterWait = BoxFuture<'static, Result<(), ApiError>>;

impl PendingReadAfter {
    pub fn new(wait: impl Future<Output = Result<(), ApiError>> + Send + 'static) -> Self {
        Self(Arc::new(Mutex::new(Some(Box::pin(wait)))))
    }

    /// Runs the wait, the first time it is asked for; later calls return at once.
    pub async fn run(&self) -> Result<(), ApiError> {
        let wait = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        match wait {
            Some(wait) => wait.await,
            None => Ok(()),
        }
    }
}

/// Adds `Aipm-Cursor` to the response of a request whose commands recorded events.
pub fn stamp(response: &mut Response, written: &Written) {
    if let Some(cursor) = written.cursor() {
        if let Ok(value) = HeaderValue::from_str(&cursor.to_string()) {
            response.headers_mut().insert(CURSOR_HEADER, value);
        }
    }
}

/// The request's `Aipm-Read-After`, if it sent one.
pub fn read_after(headers: &HeaderMap) -> Result<Option<GlobalCursor>, ApiError> {
    let Some(value) = headers.get(READ_AFTER_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<GlobalCursor>().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::invalid(
                "Aipm-Read-After",
                "must be a cursor as a command's Aipm-Cursor gives it, such as 812-40",
            )
        })
}

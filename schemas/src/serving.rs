//! Serving registrations: a running replica of a deployment announces itself here.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::JobId;

/// Stored at `pool/serving/<deployment>/<alloc>.json`, refreshed by a heartbeat; readers
/// drop a registration whose `heartbeat_at + ttl_seconds` has passed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServingRegistration {
    pub deployment: String,
    pub job_id: JobId,
    pub alloc: u32,
    pub host: String,
    pub port: u16,
    pub healthy: bool,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub ttl_seconds: u32,
}

impl ServingRegistration {
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.healthy && self.heartbeat_at + chrono::Duration::seconds(self.ttl_seconds as i64) >= now
    }
}

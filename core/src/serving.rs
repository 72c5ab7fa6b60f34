//! A deployment's serving registrations as the bucket holds them.

use aic_schemas::ServingRegistration;

use crate::layout::serving_prefix;
use crate::store::{Store, StoreError};

/// Largest registration read.
pub const MAX_REGISTRATION_BYTES: u64 = 64 * 1024;

/// The registrations of `deployment`, with their keys. A registration is a claim a job's
/// code can write, so one that is not a registration (too large, not its JSON) is passed
/// over; a store that does not answer is an error.
pub async fn registrations(store: &Store, deployment: &str) -> Result<Vec<(String, ServingRegistration)>, StoreError> {
    let mut out = Vec::new();
    for m in store.list(&serving_prefix(deployment)).await? {
        let key = m.location.to_string();
        match store.get_json::<ServingRegistration>(&key, MAX_REGISTRATION_BYTES).await {
            Ok(Some(r)) => out.push((key, r)),
            Ok(None) | Err(StoreError::Json { .. }) | Err(StoreError::TooLarge { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

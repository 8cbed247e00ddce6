//! postcard encoding of openraft messages and stored records: one place, one format.

use serde::{de::DeserializeOwned, Serialize};

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("postcard encoding of in-memory values cannot fail")
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, std::io::Error> {
    postcard::from_bytes(bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("cannot decode {what} ({e}): the Raft store or a peer's message is corrupt or of another version"),
        )
    })
}

/// Fields appended to `ClusterState` since snapshots were first versioned: `adopt`, `vetoed`,
/// `flags`, `upstreams`, `slots`, `slot_ttl_ms`, `degraded`, `unrecorded_timeline`,
/// `lease_ms_before`.
const APPENDED_STATE_FIELDS: usize = 9;

/// The replicated state from a snapshot. Fields are only ever appended to `ClusterState`,
/// each an `Option` or a collection (encoded `00` when empty): a snapshot written before
/// the newest field existed ends early, and reads as if it ended with that `00`. An older
/// node reading a newer snapshot ignores the trailing bytes (postcard stops at the end of
/// the struct it knows).
pub fn decode_state(bytes: &[u8], what: &str) -> Result<crate::cluster::ClusterState, std::io::Error> {
    match postcard::from_bytes(bytes) {
        Ok(s) => Ok(s),
        Err(postcard::Error::DeserializeUnexpectedEnd) => {
            // One `00` per field appended since (each reads as `None` or empty).
            (1..=APPENDED_STATE_FIELDS)
                .find_map(|n| {
                    let padded = [bytes, &[0u8; APPENDED_STATE_FIELDS][..n]].concat();
                    postcard::from_bytes(&padded).ok()
                })
                .map_or_else(|| decode(bytes, what), Ok)
        }
        Err(_) => decode(bytes, what),
    }
}

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

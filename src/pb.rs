//! Generated protobuf and gRPC code. Only `api/` and `raft/` use these types.

#![allow(clippy::all, missing_docs)]

pub mod raft {
    tonic::include_proto!("raftpg.raft.v1");
}

pub mod control {
    tonic::include_proto!("raftpg.control.v1");
}

/// Encoded descriptors of every proto file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("control_descriptor");

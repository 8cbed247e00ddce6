//! Generated protobuf and gRPC code. Only `api/` and `raft/` use these types.

#![allow(clippy::all, missing_docs)]

pub mod raft {
    tonic::include_proto!("raftpg.raft.v1");
}

pub mod control {
    tonic::include_proto!("raftpg.control.v1");
}

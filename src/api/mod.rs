//! External interfaces: the gRPC control API (and, with the PostgreSQL issue, HTTP health).

pub mod grpc;

//! External interfaces: the gRPC control API, the HTTP health checks and metrics, and the
//! member view both are built from.

pub mod grpc;
pub mod http;

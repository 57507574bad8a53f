//! gRPC service `fulfil.v1.Fulfil` (`api/proto/fulfil/v1/fulfil.proto`),
//! served by `fulfil serve --roles api` on `--grpc-addr`, with server
//! reflection (v1 and v1alpha) so `grpcurl` and other reflection clients
//! need no `.proto`.
//!
//! Contract: each unary RPC gives the answer and the error of its REST
//! operation, because it *is* that operation: the call goes through the
//! REST router in process ([`rest`]), behind the same extractors, handlers
//! and layers. `WatchRun` streams from the API's watch hub
//! ([`fulfil_api::watch`]), like `GET /v1/runs/{id}/events`.

pub mod json;
pub mod rest;
mod service;

use fulfil_api::ApiState;

pub use prost_types;
pub use service::FulfilService;

/// The generated messages, client and server of `fulfil.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("fulfil.v1");

    /// The encoded descriptor set of `fulfil.proto` and its imports.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("fulfil_descriptor");
}

/// Why the gRPC server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// The descriptor set could not be registered for reflection.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// Serving failed.
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves `fulfil.v1.Fulfil` and reflection on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), GrpcError> {
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let hub = state.watch.clone();
    let shutdown = async move {
        shutdown.await;
        // Open WatchRun streams would hold the shutdown until their runs end.
        hub.close();
    };
    tonic::transport::Server::builder()
        .add_service(proto::fulfil_server::FulfilServer::new(FulfilService::new(
            state,
        )))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            shutdown,
        )
        .await?;
    Ok(())
}

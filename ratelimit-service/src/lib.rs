//! `gatewasm-ratelimit`: Envoy's rate limit service protocol
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, gRPC over HTTP/2) with the
//! limits file of Envoy's reference service, counting in memory (limitador) or in Redis, so that
//! several gateway replicas share one limit. See `README.md`.

pub mod config;
pub mod limiter;
pub mod store;

use std::future::Future;
use std::sync::Arc;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tonic::{Request, Response, Status};

pub use crate::config::Limits;
pub use crate::limiter::{DecisionError, Limiter};
pub use crate::store::Store;

/// The gRPC service around a [`Limiter`].
#[derive(Clone)]
pub struct Service {
    limiter: Arc<Limiter>,
}

impl Service {
    /// Serves `limiter`.
    pub fn new(limiter: Limiter) -> Service {
        Service { limiter: Arc::new(limiter) }
    }
}

#[tonic::async_trait]
impl RateLimitService for Service {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        match self.limiter.decide(request.get_ref()).await {
            Ok(answer) => Ok(Response::new(answer)),
            Err(DecisionError::Invalid(message)) => Err(Status::invalid_argument(message)),
            // UNAVAILABLE: Envoy's filter then applies its failure mode (allow, by default).
            Err(DecisionError::Store(e)) => Err(Status::unavailable(e.to_string())),
        }
    }
}

/// Serves `service` on `listener` (HTTP/2, plaintext) until `shutdown` completes, then lets the
/// calls in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Service,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(RateLimitServiceServer::new(service))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

//! Starting and stopping the server: listeners, model loading behind grpc.health.v1, reflection,
//! the Prometheus endpoint, store expiry and graceful shutdown.

use crate::config::Settings;
use crate::error::ServerError;
use crate::models::ModelSet;
use crate::registry::Registry;
use crate::service::{Service, State};
use osteo_proto::v1::osteo_service_server::OsteoServiceServer;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic_health::ServingStatus;

/// Name of the service in grpc.health.v1.
pub const SERVICE_NAME: &str = "osteo.v1.OsteoService";

/// Histogram buckets (seconds) of the latency metrics.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// Installs the Prometheus recorder and its `/metrics` listener.
fn install_metrics(addr: std::net::SocketAddr) -> Result<(), ServerError> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("osteo_batch_size".into()),
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0],
            )
        })
        .map_err(|e| ServerError::Config(format!("metrics buckets: {e}")))?
        .install()
        .map_err(|e| {
            ServerError::Config(format!(
                "server.metrics_listen = {addr}: cannot serve metrics: {e}"
            ))
        })
}

/// Serves until `shutdown` completes, then stops accepting requests, lets in-flight requests
/// finish for up to `server.shutdown_grace_s` and returns. Fails early on an invalid
/// configuration or when a model cannot be loaded.
pub async fn serve(
    settings: Settings,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let addr = settings.listen_addr()?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| ServerError::Config(format!("server.listen = {addr}: cannot listen: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| ServerError::Internal(format!("listener address: {e}")))?;
    if let Some(metrics_addr) = settings.metrics_addr()? {
        install_metrics(metrics_addr)?;
        tracing::info!(%metrics_addr, "metrics at http://{metrics_addr}/metrics");
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
        .await;
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    // Both reflection versions: grpcurl 1.8 still speaks v1alpha.
    let descriptors = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(osteo_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_err = |e| ServerError::Internal(format!("reflection: {e}"));
    let reflection = descriptors().build_v1().map_err(reflection_err)?;
    let reflection_alpha = descriptors().build_v1alpha().map_err(reflection_err)?;

    let max_message = settings.server.max_message_bytes;
    let grace = Duration::from_secs(settings.server.shutdown_grace_s);
    let state = Arc::new(State::new(settings.clone()));
    let osteo = OsteoServiceServer::new(Service::new(state.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);

    // Models load on blocking threads while health already answers NOT_SERVING.
    let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel::<ServerError>();
    {
        let state = state.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let loaded = tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                ModelSet::load(&settings, &registry).map(|m| (m, started.elapsed()))
            })
            .await;
            match loaded {
                Ok(Ok((models, took))) => {
                    let names: Vec<String> =
                        models.all().iter().map(|m| m.name().to_string()).collect();
                    let _ = state.models.set(models);
                    health
                        .set_service_status(SERVICE_NAME, ServingStatus::Serving)
                        .await;
                    health.set_service_status("", ServingStatus::Serving).await;
                    tracing::info!(models = ?names, seconds = took.as_secs_f64(), "models loaded; SERVING");
                }
                Ok(Err(e)) => {
                    let _ = fatal_tx.send(e);
                }
                Err(e) => {
                    let _ = fatal_tx.send(ServerError::Internal(format!("model loading: {e}")));
                }
            }
        });
    }
    {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                state.store.sweep();
            }
        });
    }

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(osteo)
        .serve_with_incoming_shutdown(
            // Without TCP_NODELAY, Nagle's algorithm and delayed ACKs add ~40 ms to small
            // responses.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
            },
        );
    tracing::info!(%local, "listening on {local}");
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => r.map_err(|e| ServerError::Internal(format!("server: {e}"))),
        e = async {
            // A dropped sender means the models loaded: keep serving.
            match fatal_rx.await {
                Ok(e) => e,
                Err(_) => std::future::pending().await,
            }
        } => Err(e),
        () = shutdown => {
            tracing::info!(grace_s = grace.as_secs(), "shutting down: finishing in-flight requests");
            health.set_service_status(SERVICE_NAME, ServingStatus::NotServing).await;
            health.set_service_status("", ServingStatus::NotServing).await;
            let _ = stop_tx.send(true);
            match tokio::time::timeout(grace, &mut server).await {
                Ok(r) => r.map_err(|e| ServerError::Internal(format!("server: {e}"))),
                Err(_) => {
                    tracing::warn!("shutdown grace period over; dropping unfinished requests");
                    Ok(())
                }
            }
        }
    }
}

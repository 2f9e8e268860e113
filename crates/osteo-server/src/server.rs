//! Starting and stopping the server: listeners, model loading behind grpc.health.v1, reflection,
//! the Prometheus endpoint, store expiry and graceful shutdown.

use crate::api::oip::Inference;
use crate::api::v1::Service;
use crate::auth::{AuthLayer, Authenticator};
use crate::config::Settings;
use crate::engine::Engine;
use crate::error::ServerError;
use crate::models::ModelSet;
use crate::net::connection::{ActivityLayer, ConnLimits, HTTP2_HANDSHAKE_BYTES, accept_loop};
use crate::net::tls::{Alpn, TlsSource};
use crate::registry::Registry;
use crate::state::State;
use osteo_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use osteo_proto::v1::osteo_service_server::OsteoServiceServer;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tonic_health::ServingStatus;

/// Name of the service in grpc.health.v1.
pub const SERVICE_NAME: &str = osteo_proto::SERVICE;

/// Mirrors the workers in grpc.health.v1 until shutdown: each model under its own name is
/// SERVING while all its backends are up and the server is not draining;
/// `osteo.v1.OsteoService` and "" follow the default model.
async fn follow_workers(
    state: &State,
    health: &tonic_health::server::HealthReporter,
    changed: &tokio::sync::Notify,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let status = |up: bool| {
        if up && !state.draining() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    };
    loop {
        if *stop.borrow() {
            return;
        }
        // The set in force now (it may have been replaced since the last change).
        let Some(models) = state.loaded() else {
            return;
        };
        // Each model under its name follows the version that answers requests naming none.
        for name in models.names() {
            let up = models.get(name).is_ok_and(|m| m.is_up());
            health.set_service_status(name, status(up)).await;
        }
        let overall = models.get("").map(|m| m.is_up()).unwrap_or(false);
        health
            .set_service_status(SERVICE_NAME, status(overall))
            .await;
        health.set_service_status("", status(overall)).await;
        changed.notified().await;
    }
}

/// Serves grpc.health.v1 alone, in plaintext, on `listener` until `stop` (for probes that
/// cannot speak TLS; the health service reveals nothing but serving status).
fn serve_health(
    listener: TcpListener,
    limits: ConnLimits,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), ServerError> {
    let addr = listener
        .local_addr()
        .map_err(|e| ServerError::Internal(format!("health listener address: {e}")))?;
    let incoming = tokio_stream::wrappers::ReceiverStream::new(accept_loop(
        listener,
        limits,
        None,
        stop.clone(),
        "health",
    ))
    .map(Ok::<_, std::io::Error>);
    let mut stop = stop;
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(ActivityLayer)
            .add_service(health)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            }),
    );
    tracing::info!(health_addr = %addr, "grpc.health.v1 (plaintext, health only) on {addr}");
    Ok(())
}

/// Binds `addr` for the setting `key`.
async fn bind(addr: std::net::SocketAddr, key: &str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| ServerError::Config(format!("{key} = {addr}: cannot listen: {e}")))
}

/// The bound sockets of a server.
#[derive(Debug)]
pub struct Listeners {
    /// gRPC (TLS when `server.tls` is set).
    pub grpc: TcpListener,
    /// Prometheus `/metrics`.
    pub metrics: Option<TcpListener>,
    /// Plaintext grpc.health.v1 only.
    pub health: Option<TcpListener>,
    /// The Open Inference Protocol over HTTP/REST (TLS when `server.tls` is set).
    pub http: Option<TcpListener>,
}

impl Listeners {
    /// How many listeners are bound.
    pub fn count(&self) -> usize {
        1 + [
            self.metrics.is_some(),
            self.health.is_some(),
            self.http.is_some(),
        ]
        .into_iter()
        .filter(|bound| *bound)
        .count()
    }

    /// Binds the addresses of `settings`.
    pub async fn bind(settings: &Settings) -> Result<Self, ServerError> {
        let grpc = bind(settings.listen_addr()?, "server.listen").await?;
        let metrics = match settings.metrics_addr()? {
            Some(addr) => Some(bind(addr, "server.metrics_listen").await?),
            None => None,
        };
        let health = match settings.health_addr()? {
            Some(addr) => Some(bind(addr, "server.health_listen").await?),
            None => None,
        };
        let http = match settings.http_addr()? {
            Some(addr) => Some(bind(addr, "server.http_listen").await?),
            None => None,
        };
        Ok(Self {
            grpc,
            metrics,
            health,
            http,
        })
    }
}

/// Serves on `server.listen` (and the metrics on `server.metrics_listen`, health on
/// `server.health_listen`, HTTP/REST on `server.http_listen`) until `shutdown` completes; see
/// [`serve_on`].
pub async fn serve(
    settings: Settings,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    settings.validate()?;
    let listeners = Listeners::bind(&settings).await?;
    serve_on(listeners, settings, registry, shutdown).await
}

/// Serves gRPC on bound listeners until `shutdown` completes, then drains: reports NOT_SERVING
/// (grpc.health.v1) and not ready (`/v2/health/ready`, ServerReady) while still serving for
/// `server.drain_delay_s`, then stops accepting, closes idle connections at once (GOAWAY), lets
/// in-flight requests finish for up to `server.shutdown_grace_s` and returns. Fails early on an invalid configuration, unusable TLS files or when a model cannot
/// be loaded. Tests bind port 0 and serve in process.
pub async fn serve_on(
    listeners: Listeners,
    settings: Settings,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    settings.validate()?;
    crate::net::fdlimit::ensure(
        crate::net::fdlimit::needed(listeners.count(), settings.server.max_connections),
        &settings.server.fd_limit,
    )?;
    let Listeners {
        grpc: listener,
        metrics,
        health: health_listener,
        http: http_listener,
    } = listeners;

    let tls_for = |alpn| -> Result<Option<Arc<TlsSource>>, ServerError> {
        match settings.server.tls.files() {
            Some(files) => Ok(Some(Arc::new(TlsSource::load(files, alpn)?))),
            None => Ok(None),
        }
    };
    let tls = tls_for(Alpn::H2)?;
    let http_tls = match &http_listener {
        Some(_) => tls_for(Alpn::Http11)?,
        None => None,
    };
    let local = listener
        .local_addr()
        .map_err(|e| ServerError::Internal(format!("listener address: {e}")))?;
    let sv = settings.server.clone();
    let limits = ConnLimits {
        max_connections: sv.max_connections,
        handshake_timeout: Duration::from_secs(sv.handshake_timeout_s),
        handshake_bytes: HTTP2_HANDSHAKE_BYTES,
        idle_timeout: Duration::from_secs(sv.idle_timeout_s),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    crate::metrics_http::recorder()?;
    if let Some(m) = metrics {
        let addr = m
            .local_addr()
            .map_err(|e| ServerError::Internal(format!("metrics listener address: {e}")))?;
        // An HTTP/1 request line is at least 16 bytes ("GET / HTTP/1.1\r\n").
        let metrics_limits = ConnLimits {
            handshake_bytes: 16,
            ..limits
        };
        let token = Some(settings.telemetry.metrics_token.clone()).filter(|t| !t.is_empty());
        crate::metrics_http::serve(m, metrics_limits, token, stop_rx.clone())?;
        tracing::info!(metrics_addr = %addr, "metrics at http://{addr}/metrics");
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
    let drain = Duration::from_secs(settings.server.drain_delay_s);
    let state = Arc::new(State::new(settings.clone())?);
    let auth = Authenticator::from_settings(&settings.auth)?;
    let gate = AuthLayer::new(auth, state.audit_log());
    let auth_mode = settings.auth.mode.clone();
    let insecure = settings.insecure_listener()?;
    let engine = Engine::new(state.clone());
    let osteo = OsteoServiceServer::new(Service::new(engine.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    // The Open Inference Protocol (KServe v2) on the same port, over the same state.
    let v2 = Inference::new(engine.clone());
    let inference = GrpcInferenceServiceServer::new(v2.clone())
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    if let Some(h) = http_listener {
        let addr = h
            .local_addr()
            .map_err(|e| ServerError::Internal(format!("HTTP listener address: {e}")))?;
        // An HTTP/1 request line is at least 16 bytes ("GET / HTTP/1.1\r\n").
        let http_limits = ConnLimits {
            handshake_bytes: 16,
            ..limits
        };
        let scheme = if http_tls.is_some() { "https" } else { "http" };
        let router = crate::api::rest::router(engine.clone(), gate.clone(), max_message);
        crate::api::rest::serve(h, http_limits, http_tls, router, stop_rx.clone());
        tracing::info!(http_addr = %addr, "Open Inference Protocol REST at {scheme}://{addr}/v2");
    }

    // Models load on blocking threads while health already answers NOT_SERVING.
    let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel::<ServerError>();
    // Notified when a worker's health changes and when draining starts.
    let changed = Arc::new(tokio::sync::Notify::new());
    {
        let state = state.clone();
        let health = health.clone();
        let stop = stop_rx.clone();
        let changed = changed.clone();
        let _ = state.loader.set((registry.clone(), changed.clone()));
        tokio::spawn(async move {
            let workers_changed = changed.clone();
            let loaded = tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                ModelSet::load(&settings, &registry, &workers_changed)
                    .map(|m| (m, started.elapsed()))
            })
            .await;
            match loaded {
                Ok(Ok((models, took))) => {
                    let names: Vec<String> =
                        models.all().iter().map(|m| m.name().to_string()).collect();
                    if let Err(e) = crate::traffic::start(&state, &models) {
                        let _ = fatal_tx.send(e);
                        return;
                    }
                    state.set_models(models);
                    tracing::info!(models = ?names, seconds = took.as_secs_f64(), "models loaded; SERVING");
                    follow_workers(&state, &health, &changed, stop).await;
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
    tokio::spawn(crate::engine::repository::watch_repository(engine.clone()));
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

    let keepalive =
        (sv.keepalive_interval_s > 0).then(|| Duration::from_secs(sv.keepalive_interval_s));
    // Accepted streams have TCP_NODELAY set: without it, Nagle's algorithm and delayed ACKs add
    // ~40 ms to small responses.
    let incoming = tokio_stream::wrappers::ReceiverStream::new(accept_loop(
        listener,
        limits,
        tls.clone(),
        stop_rx.clone(),
        "grpc",
    ))
    .map(Ok::<_, std::io::Error>);
    if let Some(h) = health_listener {
        serve_health(h, limits, health_service.clone(), stop_rx.clone())?;
    }
    let mut stop_rx = stop_rx;
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(keepalive)
        .http2_keepalive_timeout(Some(Duration::from_secs(sv.keepalive_timeout_s)))
        .max_concurrent_streams(sv.max_concurrent_streams)
        .layer(ActivityLayer)
        .layer(gate)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(osteo)
        .add_service(inference)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        });
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        %local,
        auth = %auth_mode,
        instance = state.store.instance(),
        "listening on {scheme}://{local}; study handles of this instance are st_{}_…",
        state.store.instance()
    );
    if insecure {
        tracing::warn!(
            %local,
            "server.allow_insecure: serving other hosts without TLS and authentication; \
             studies and results may cross the network unencrypted or reach anyone who can \
             connect"
        );
    }
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
            // Draining: NOT_SERVING and not ready at once, still serving for the drain delay so
            // balancers and endpoint controllers take this replica out before it stops
            // accepting; then the listeners close, GOAWAY goes out on every connection and
            // what is in flight gets the grace period.
            state.start_draining();
            health.set_service_status(SERVICE_NAME, ServingStatus::NotServing).await;
            health.set_service_status("", ServingStatus::NotServing).await;
            changed.notify_one();
            tracing::info!(
                drain_delay_s = drain.as_secs(),
                "draining: reporting NOT_SERVING, still serving for server.drain_delay_s"
            );
            let drained = tokio::select! {
                r = &mut server => Some(r),
                () = tokio::time::sleep(drain) => None,
            };
            if let Some(r) = drained {
                return r.map_err(|e| ServerError::Internal(format!("server: {e}")));
            }
            tracing::info!(grace_s = grace.as_secs(), "shutting down: finishing in-flight requests");
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

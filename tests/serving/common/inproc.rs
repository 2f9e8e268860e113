//! An in-process server (DESIGN §11, mini-redis style): `osteo_server::serve_on` on listeners
//! bound to port 0 before it starts, so tests run without subprocesses or port races.

use osteo_proto::v1::osteo_service_client::OsteoServiceClient;
use osteo_server::{Registry, ServerError};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The backends of this build with default options, as `osteo serve` registers them.
pub fn registry() -> Registry {
    osteo_backends::registry(&osteo_server::config::BackendSettings::default())
}

/// A server running inside the test process.
pub struct InProc {
    /// gRPC URL.
    pub url: String,
    /// gRPC address.
    pub addr: SocketAddr,
    /// Metrics address.
    pub metrics: SocketAddr,
    /// Plaintext health-only address.
    pub health_addr: SocketAddr,
    /// Open Inference Protocol REST address (TLS when the server has TLS).
    pub http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), ServerError>>>,
    _dir: tempfile::TempDir,
}

/// The settings of `config` (TOML) plus the shipped `models` (name, extra keys), with no
/// environment overrides; the first model is the default unless `config` names one.
pub fn settings(config: &str, models: &[(&str, &str)]) -> osteo_server::Settings {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!("{config}\n{}", super::models_toml(models));
    let file = dir.path().join("osteo.toml");
    std::fs::write(&file, text).expect("config");
    let no_env = config::Environment::with_prefix("OSTEO_TEST_NONE")
        .source(Some(std::collections::HashMap::new()));
    let mut overrides = Vec::new();
    if let (false, Some((first, _))) = (config.contains("default_model"), models.first()) {
        overrides.push(("server.default_model", first.to_string()));
    }
    // Tests stop at once unless they test draining.
    if !config.contains("drain_delay_s") {
        overrides.push(("server.drain_delay_s", "0".to_string()));
    }
    osteo_server::config::load_from(Some(&file), &overrides, no_env)
        .expect("valid test configuration")
}

impl InProc {
    /// Starts a server with `config` (TOML sections), the shipped `models` and `registry`, and
    /// waits until grpc.health.v1 reports SERVING.
    pub async fn start(config: &str, models: &[(&str, &str)], registry: Registry) -> Self {
        let s = settings(config, models);
        let server = Self::spawn(s, registry).await;
        server.wait_for_health("", ServingStatus::Serving).await;
        server
    }

    /// Starts a server whose gRPC listener is bound to `grpc` (a replica restarted on its
    /// address), and waits until it reports SERVING.
    pub async fn start_at(
        grpc: SocketAddr,
        config: &str,
        models: &[(&str, &str)],
        registry: Registry,
    ) -> Self {
        let server = Self::spawn_at(grpc, settings(config, models), registry).await;
        server.wait_for_health("", ServingStatus::Serving).await;
        server
    }

    /// Starts a server without waiting for its models.
    pub async fn spawn(settings: osteo_server::Settings, registry: Registry) -> Self {
        Self::spawn_at(([127, 0, 0, 1], 0).into(), settings, registry).await
    }

    /// Starts a server with its gRPC listener on `grpc`, without waiting for its models.
    pub async fn spawn_at(
        grpc: SocketAddr,
        settings: osteo_server::Settings,
        registry: Registry,
    ) -> Self {
        // A replica restarted on its address may find the old listener closing still.
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(grpc).await {
                Ok(l) => break l,
                Err(e) if grpc.port() != 0 && tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("bind {grpc}: {e}"),
            }
        };
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let health = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let http = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let http_addr = http.local_addr().expect("addr");
        let addr = listener.local_addr().expect("addr");
        let metrics_addr = metrics.local_addr().expect("addr");
        let health_addr = health.local_addr().expect("addr");
        let scheme = if settings.server.tls.enabled() {
            "https"
        } else {
            "http"
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let listeners = osteo_server::Listeners {
            grpc: listener,
            metrics: Some(metrics),
            health: Some(health),
            http: Some(http),
        };
        let task = tokio::spawn(osteo_server::server::serve_on(
            listeners,
            settings,
            registry,
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            url: format!("{scheme}://{addr}"),
            addr,
            metrics: metrics_addr,
            health_addr,
            http: http_addr,
            stop: Some(stop),
            task: Some(task),
            _dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// A client with 64 MiB message limits.
    pub async fn client(&self) -> OsteoServiceClient<Channel> {
        super::client(&self.url).await
    }

    /// The grpc.health.v1 status of `service` ("" = the whole server), asked on the plaintext
    /// health-only listener.
    pub async fn health(&self, service: &str) -> Option<ServingStatus> {
        let channel = Channel::from_shared(format!("http://{}", self.health_addr))
            .ok()?
            .connect()
            .await
            .ok()?;
        let mut h = HealthClient::new(channel);
        let r = h
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .ok()?;
        ServingStatus::try_from(r.into_inner().status).ok()
    }

    /// Waits (at most 60 s) until `service` reports `want`.
    pub async fn wait_for_health(&self, service: &str, want: ServingStatus) {
        let start = Instant::now();
        loop {
            if self.health(service).await == Some(want) {
                return;
            }
            if self.task.as_ref().is_some_and(|t| t.is_finished()) {
                panic!("the server stopped while waiting for {service:?} to be {want:?}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "health of {service:?} never became {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A raw HTTP/1.1 request to the metrics port; returns the whole response.
    pub async fn http(&self, request_line: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.metrics)
            .await
            .expect("metrics");
        let req = format!("{request_line}\r\nHost: test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    /// A raw HTTP/1.1 GET of `path` on the REST port; returns the whole response.
    pub async fn rest_get(&self, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.http)
            .await
            .expect("REST port");
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    /// The Prometheus exposition text.
    pub async fn scrape(&self) -> String {
        self.http("GET /metrics HTTP/1.1").await
    }

    /// Signals shutdown and waits for `serve_on` to return.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        self.signal_shutdown();
        match self.task.take() {
            Some(t) => t.await.expect("server task"),
            None => Ok(()),
        }
    }

    /// Signals shutdown (as SIGTERM does) without waiting: the server drains.
    pub fn signal_shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Whether `serve_on` has returned.
    pub fn finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits for `serve_on` to return on its own (a start-up failure).
    pub async fn exit(mut self) -> Result<(), ServerError> {
        match self.task.take() {
            Some(t) => t.await.expect("server task"),
            None => Ok(()),
        }
    }
}

impl Drop for InProc {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

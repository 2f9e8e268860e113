//! Server configuration: built-in defaults, then `osteo.toml`, then `OSTEO__SECTION__KEY`
//! environment variables, then command-line flags; validated at start-up with errors naming the
//! key.

pub mod reference;
mod traffic;
mod validate;

pub use traffic::{CanarySettings, CanaryTarget, ShadowSettings, TrafficPolicy, TrafficSettings};

use crate::error::ServerError;
use config::{Config, Environment, File, FileFormat};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Listening, limits and shutdown.
    pub server: ServerSettings,
    /// The study store.
    pub store: StoreSettings,
    /// DICOM ingest.
    pub ingest: IngestSettings,
    /// Dynamic batching.
    pub scheduler: SchedulerSettings,
    /// Logs, traces and metrics.
    pub telemetry: TelemetrySettings,
    /// Engine options of the backends.
    pub backends: BackendSettings,
    /// The audit log.
    pub audit: AuditSettings,
    /// Authentication.
    pub auth: AuthSettings,
    /// A model repository in Triton's layout.
    pub repository: RepositorySettings,
    /// Served models.
    pub models: Vec<ModelSettings>,
    /// Bounds of shadow traffic and the file `[[shadow]]` / `[[canary]]` may be reloaded from.
    pub traffic: TrafficSettings,
    /// Shadow pairs: a fraction of a model's requests graded again by another target.
    pub shadow: Vec<ShadowSettings>,
    /// Canary splits: a model's requests divided between versions or backends by weight.
    pub canary: Vec<CanarySettings>,
}

/// `[repository]`: a model repository in Triton's layout, `path/<name>/<version>/` each holding a
/// model directory (model.toml, weights.safetensors, model.onnx), every version of every model
/// served next to the `[[models]]` entries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepositorySettings {
    /// The repository directory ("" = none).
    pub path: String,
    /// Backends that serve every repository model.
    pub backends: Vec<String>,
    /// Backend used when a request names none (empty = the first of `backends`).
    pub default_backend: String,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// The version that answers a request naming none, by model name (default: the highest).
    pub pins: std::collections::BTreeMap<String, String>,
    /// Seconds between looks at the repository for models whose version directories changed,
    /// each reloaded as RepositoryModelLoad would (0 = only on request).
    pub poll_s: u64,
    /// Most model versions loaded at once, counting both the old and the new versions while
    /// RepositoryModelLoad swaps them; a load that would exceed it is refused before anything
    /// loads.
    pub max_loaded: usize,
}

impl Default for RepositorySettings {
    fn default() -> Self {
        Self {
            path: String::new(),
            backends: default_backends(),
            default_backend: String::new(),
            device: default_device(),
            pins: Default::default(),
            poll_s: 0,
            max_loaded: 16,
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// gRPC listen address.
    pub listen: String,
    /// Prometheus `/metrics` listen address (empty = no metrics endpoint).
    pub metrics_listen: String,
    /// Model used when a request names none (empty = the first configured model).
    pub default_model: String,
    /// Largest gRPC message in bytes (inline studies, upload chunks).
    pub max_message_bytes: usize,
    /// Deadline applied when a client sets none, in seconds.
    pub request_timeout_s: u64,
    /// Seconds between SIGTERM and closing the listeners: the server reports NOT_SERVING (and
    /// not ready) at once but keeps serving, so balancers and endpoint controllers take it out
    /// of rotation before it stops accepting.
    pub drain_delay_s: u64,
    /// Longest wait for in-flight requests at shutdown, after the drain delay, in seconds.
    pub shutdown_grace_s: u64,
    /// Classify/Explain/CompareBackends requests admitted at once; more are RESOURCE_EXHAUSTED
    /// before any ingest or view work.
    pub max_concurrent_requests: usize,
    /// Open connections (gRPC and metrics listeners each); more are closed at once.
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams (requests) per connection.
    pub max_concurrent_streams: u32,
    /// Seconds a new connection may take to send the HTTP/2 preface and SETTINGS.
    pub handshake_timeout_s: u64,
    /// Seconds a connection with no request in flight stays open.
    pub idle_timeout_s: u64,
    /// Seconds a ModelStreamInfer stream may stay open; it is then ended with
    /// DEADLINE_EXCEEDED and the client opens a new one (credentials are checked anew).
    pub max_stream_s: u64,
    /// What start-up does when the open-file limit cannot hold every listener's
    /// `max_connections`: "error" (refuse to start) or "warn" (log and serve).
    pub fd_limit: String,
    /// Seconds between HTTP/2 keepalive pings (0 = none).
    pub keepalive_interval_s: u64,
    /// Seconds to wait for a ping's acknowledgement before closing the connection.
    pub keepalive_timeout_s: u64,
    /// Allow listening on a non-loopback address without TLS and authentication.
    pub allow_insecure: bool,
    /// Plaintext listener serving only grpc.health.v1, for probes that cannot speak TLS
    /// (empty = none).
    pub health_listen: String,
    /// Open Inference Protocol HTTP/REST listen address (empty = none); same TLS and
    /// authentication as `listen`.
    pub http_listen: String,
    /// `[server.tls]`: TLS termination.
    pub tls: TlsSettings,
}

/// `[server.tls]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain (set with `key_file` to serve TLS).
    pub cert_file: String,
    /// PEM private key of the certificate.
    pub key_file: String,
    /// PEM CA bundle that signs client certificates.
    pub client_ca_file: String,
    /// `none`, `optional` or `required` client certificates.
    pub client_auth: String,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            cert_file: String::new(),
            key_file: String::new(),
            client_ca_file: String::new(),
            client_auth: "none".into(),
        }
    }
}

impl TlsSettings {
    /// Whether TLS is served.
    pub fn enabled(&self) -> bool {
        !self.cert_file.is_empty()
    }

    /// The files to load, when TLS is served.
    pub fn files(&self) -> Option<crate::net::tls::TlsFiles> {
        self.enabled().then(|| crate::net::tls::TlsFiles {
            cert: PathBuf::from(&self.cert_file),
            key: PathBuf::from(&self.key_file),
            client_ca: (!self.client_ca_file.is_empty())
                .then(|| PathBuf::from(&self.client_ca_file)),
            client_auth: crate::net::tls::ClientAuth::parse(&self.client_auth)
                .unwrap_or(crate::net::tls::ClientAuth::Required),
        })
    }
}

/// `[store]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// Total bytes of stored studies (decoded volumes).
    pub max_bytes: u64,
    /// Seconds a study is kept after upload unless deleted earlier.
    pub ttl_s: u64,
    /// Largest decoded study (voxels x bytes per voxel), reserved before decoding.
    pub max_study_bytes: u64,
    /// Largest upload (sum of DICOM file sizes) in bytes.
    pub max_upload_bytes: u64,
    /// Upload bytes (and REST request body bytes) buffered at once across every stream.
    pub max_inflight_upload_bytes: u64,
    /// Of those, the most one principal (without authentication: one peer address) may have
    /// buffered at once (0, or more than `max_inflight_upload_bytes` = no cap beyond it).
    pub max_inflight_upload_bytes_per_principal: u64,
    /// Upload streams open at once.
    pub max_concurrent_uploads: usize,
    /// Bytes of decoded studies one principal may hold (0 = no limit beyond `max_bytes`).
    pub max_bytes_per_principal: u64,
    /// Most DICOM files in one study.
    pub max_files: usize,
    /// Most slices (frames) in the selected series.
    pub max_slices: u64,
    /// Most pixels (rows x columns) per slice.
    pub max_pixels_per_slice: u64,
}

/// `[ingest]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    /// Threads that parse and decode DICOM files, shared by every ingest at once (0 = one per
    /// core); fewer leave cores to the backends while studies arrive.
    pub threads: usize,
}

/// `[scheduler]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerSettings {
    /// Largest batch sent to a backend.
    pub max_batch: usize,
    /// Longest time the first request of a batch waits for more, in milliseconds (0 =
    /// continuous batching: a batch is whatever queued while the backend was busy).
    pub max_delay_ms: u64,
    /// Requests waiting per (model, backend) before RESOURCE_EXHAUSTED.
    pub queue_capacity: usize,
}

/// `[telemetry]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `pretty` or `json`.
    pub log_format: String,
    /// Log filter, e.g. `info` or `osteo_server=debug,info`.
    pub log_level: String,
    /// OTLP/gRPC trace endpoint, e.g. `http://127.0.0.1:4317` (empty = no trace export).
    pub otlp_endpoint: String,
    /// `service.name` of exported traces.
    pub service_name: String,
    /// Bearer token Prometheus must send to scrape `/metrics` ("" = none needed).
    pub metrics_token: String,
}

/// `[auth]`: who may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// `none` (everyone is one anonymous client), `token` (bearer tokens), `mtls` (client
    /// certificates) or `token_or_mtls` (either).
    pub mode: String,
    /// TOML file of `[[tokens]]` with `principal`, `sha256` (of the token) and `roles`.
    pub tokens_file: String,
    /// Certificate names that have the admin role (every other one is a client).
    pub mtls_admins: Vec<String>,
    /// Whether a certificate without a valid subject CN is named by its first DNS or e-mail
    /// SAN (off: only the CN names a certificate principal).
    pub mtls_san_identity: bool,
    /// Certificate names mapped to the principal they act as (e.g. a token principal's name);
    /// an unmapped certificate is the principal `cert:<name>`, apart from every token
    /// principal.
    pub mtls_principals: std::collections::BTreeMap<String, String>,
}

impl AuthSettings {
    /// Whether `mode` accepts bearer tokens.
    pub fn uses_tokens(&self) -> bool {
        matches!(self.mode.as_str(), "token" | "token_or_mtls")
    }

    /// Whether `mode` accepts client certificates.
    pub fn uses_certificates(&self) -> bool {
        matches!(self.mode.as_str(), "mtls" | "token_or_mtls")
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            mode: "none".into(),
            tokens_file: String::new(),
            mtls_admins: Vec::new(),
            mtls_san_identity: false,
            mtls_principals: std::collections::BTreeMap::new(),
        }
    }
}

/// `[audit]`: the hash-chained audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSettings {
    /// JSON-lines file appended with one record per request ("" = no audit log).
    pub path: String,
    /// Sync every record to disk before answering (otherwise only flushed to the OS).
    pub fsync: bool,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            path: String::new(),
            fsync: true,
        }
    }
}

/// `[backends]`: engine options, one table per backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendSettings {
    /// `[backends.ort]`.
    pub ort: OrtSettings,
    /// `[backends.tch]`.
    pub tch: TchSettings,
}

/// `[backends.tch]`: libtorch (in binaries built with the `tch` feature).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TchSettings {
    /// libtorch's intra-op threads, process-wide (0 = libtorch's default, one per core).
    pub intra_threads: usize,
}

/// `[backends.ort]`: ONNX Runtime.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrtSettings {
    /// Threads inside one operator, per loaded model (0 = ONNX Runtime's default, one per
    /// physical core).
    pub intra_threads: usize,
    /// Let the operator threads spin for a moment after each call before they sleep (off by
    /// default: a server's concurrent requests need those cores).
    pub spinning: bool,
}

/// One `[[models]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    /// Model directory (model.toml, weights).
    pub path: PathBuf,
    /// Backends that serve it, e.g. `["candle", "ort"]`.
    #[serde(default = "default_backends")]
    pub backends: Vec<String>,
    /// Backend used when a request names none (default: the first of `backends`).
    #[serde(default)]
    pub default_backend: String,
    /// `cpu` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
}

/// ONNX Runtime first: on CPU it answers the shipped models 15-35x faster than candle
/// (BENCHMARKS.md), so it is the default answering backend; candle stays available per request.
fn default_backends() -> Vec<String> {
    vec!["ort".into(), "candle".into()]
}

fn default_device() -> String {
    "cpu".into()
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
            metrics_listen: "127.0.0.1:9464".into(),
            default_model: "osteo-fused-v2".into(),
            max_message_bytes: 64 << 20,
            request_timeout_s: 60,
            drain_delay_s: 5,
            shutdown_grace_s: 30,
            max_concurrent_requests: 64,
            max_connections: 1024,
            max_concurrent_streams: 128,
            handshake_timeout_s: 10,
            idle_timeout_s: 300,
            max_stream_s: 3600,
            fd_limit: "error".into(),
            keepalive_interval_s: 60,
            keepalive_timeout_s: 20,
            allow_insecure: false,
            health_listen: String::new(),
            http_listen: "127.0.0.1:8000".into(),
            tls: TlsSettings::default(),
        }
    }
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            max_bytes: 2 << 30,
            max_study_bytes: 1 << 30,
            ttl_s: 3600,
            max_upload_bytes: 512 << 20,
            max_inflight_upload_bytes: 1 << 30,
            max_inflight_upload_bytes_per_principal: 512 << 20,
            max_concurrent_uploads: 16,
            max_bytes_per_principal: 0,
            max_files: 4096,
            max_slices: 4096,
            max_pixels_per_slice: 2048 * 2048,
        }
    }
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_delay_ms: 0,
            queue_capacity: 256,
        }
    }
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: "pretty".into(),
            log_level: "info".into(),
            otlp_endpoint: String::new(),
            service_name: "osteoserve".into(),
            metrics_token: String::new(),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        let model = |name: &str| ModelSettings {
            path: PathBuf::from("models").join(name),
            backends: default_backends(),
            default_backend: String::new(),
            device: default_device(),
        };
        Self {
            server: ServerSettings::default(),
            store: StoreSettings::default(),
            ingest: IngestSettings::default(),
            scheduler: SchedulerSettings::default(),
            telemetry: TelemetrySettings::default(),
            backends: BackendSettings::default(),
            audit: AuditSettings::default(),
            auth: AuthSettings::default(),
            repository: RepositorySettings::default(),
            models: vec![
                model("osteo-fused-v3"),
                model("osteo-fused-v2"),
                model("osteo-fused-v1"),
                model("osteo-image-v1"),
                model("osteo-tabular-v1"),
            ],
            traffic: TrafficSettings::default(),
            shadow: Vec::new(),
            canary: Vec::new(),
        }
    }
}

impl Settings {
    /// The `[[shadow]]` and `[[canary]]` tables of this configuration.
    pub fn traffic_policy(&self) -> TrafficPolicy {
        TrafficPolicy {
            shadow: self.shadow.clone(),
            canary: self.canary.clone(),
        }
    }
}

fn config_err(e: config::ConfigError) -> ServerError {
    ServerError::Config(e.to_string())
}

/// Loads the configuration: defaults, the optional file, `OSTEO__SECTION__KEY` environment
/// variables, then `overrides` (`("server.listen", "0.0.0.0:50051")`, from command-line flags).
pub fn load(file: Option<&Path>, overrides: &[(&str, String)]) -> Result<Settings, ServerError> {
    load_from(file, overrides, Environment::with_prefix("OSTEO"))
}

/// [`load`] with an explicit environment source (tests pass their own variables).
pub fn load_from(
    file: Option<&Path>,
    overrides: &[(&str, String)],
    env: Environment,
) -> Result<Settings, ServerError> {
    let defaults = Config::try_from(&Settings::default()).map_err(config_err)?;
    let mut builder = Config::builder().add_source(defaults);
    if let Some(f) = file {
        if !f.is_file() {
            return Err(ServerError::Config(format!(
                "configuration file {} does not exist",
                f.display()
            )));
        }
        builder = builder.add_source(File::from(f).format(FileFormat::Toml).required(true));
    }
    builder = builder.add_source(env.prefix_separator("__").separator("__").try_parsing(true));
    for (key, value) in overrides {
        builder = builder
            .set_override(*key, value.clone())
            .map_err(config_err)?;
    }
    let settings: Settings = builder
        .build()
        .and_then(Config::try_deserialize)
        .map_err(config_err)?;
    settings.validate()?;
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Environment {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Environment::with_prefix("OSTEO").source(Some(map))
    }

    #[test]
    fn defaults_are_valid_and_serve_the_shipped_models() {
        let s = load_from(None, &[], env(&[])).expect("defaults");
        assert_eq!(s.server.default_model, "osteo-fused-v2");
        assert_eq!(s.models.len(), 5);
    }

    #[test]
    fn the_documented_example_file_holds_the_defaults() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../osteo.toml");
        let s = load_from(Some(&example), &[], env(&[])).expect("osteo.toml loads");
        assert_eq!(s, Settings::default(), "osteo.toml documents the defaults");
    }

    #[test]
    fn file_then_environment_then_flags_win_in_that_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("osteo.toml");
        std::fs::write(
            &file,
            "[scheduler]\nmax_batch = 8\nmax_delay_ms = 2\n[server]\nlisten = \"127.0.0.1:6000\"\n",
        )
        .expect("write");
        let s = load_from(
            Some(&file),
            &[("server.listen", "127.0.0.1:7000".into())],
            env(&[
                ("OSTEO__SCHEDULER__MAX_BATCH", "4"),
                ("OSTEO__SERVER__LISTEN", "127.0.0.1:6500"),
            ]),
        )
        .expect("loads");
        assert_eq!(s.scheduler.max_batch, 4, "environment beats the file");
        assert_eq!(s.scheduler.max_delay_ms, 2, "file beats defaults");
        assert_eq!(s.server.listen, "127.0.0.1:7000", "flags beat everything");
    }

    #[test]
    fn invalid_values_name_their_key() {
        let err = |vars: &[(&str, &str)]| {
            load_from(None, &[], env(vars))
                .expect_err("invalid")
                .to_string()
        };
        assert!(err(&[("OSTEO__SCHEDULER__MAX_BATCH", "0")]).contains("scheduler.max_batch"));
        assert!(err(&[("OSTEO__INGEST__THREADS", "5000")]).contains("ingest.threads"));
        assert!(err(&[("OSTEO__SCHEDULER__MAX_BATCH", "many")]).contains("max_batch"));
        assert!(err(&[("OSTEO__SERVER__LISTEN", "nowhere")]).contains("server.listen"));
        assert!(err(&[("OSTEO__TELEMETRY__LOG_FORMAT", "xml")]).contains("telemetry.log_format"));
        assert!(err(&[("OSTEO__SCHEDULER__MAX_BACH", "3")]).contains("max_bach"));
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("osteo.toml");
        std::fs::write(&file, "[[models]]\npath = \"m\"\ndevice = \"gpu\"\n").expect("write");
        let e = load_from(Some(&file), &[], env(&[]))
            .expect_err("bad device")
            .to_string();
        assert!(e.contains("models[0].device"), "{e}");
        std::fs::write(&file, "[[models]]\npath = \"m\"\n").expect("write");
        let s = load_from(Some(&file), &[], env(&[])).expect("one model");
        assert_eq!(
            s.models.len(),
            1,
            "the file's model list replaces the default list"
        );
        assert_eq!(s.models[0].backends, ["ort", "candle"]);
    }

    #[test]
    fn tls_and_authentication_settings_are_checked_together() {
        let err = |vars: &[(&str, &str)]| {
            load_from(None, &[], env(vars))
                .expect_err("invalid")
                .to_string()
        };
        let cert = [
            ("OSTEO__SERVER__TLS__CERT_FILE", "c.pem"),
            ("OSTEO__SERVER__TLS__KEY_FILE", "k.pem"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut v = cert.to_vec();
            v.extend_from_slice(extra);
            v
        };
        let e = err(&[("OSTEO__SERVER__TLS__CERT_FILE", "c.pem")]);
        assert!(e.contains("server.tls.key_file"), "{e}");
        let e = err(&with(&[("OSTEO__SERVER__TLS__CLIENT_AUTH", "maybe")]));
        assert!(e.contains("server.tls.client_auth"), "{e}");
        let e = err(&with(&[("OSTEO__SERVER__TLS__CLIENT_AUTH", "required")]));
        assert!(e.contains("server.tls.client_ca_file"), "{e}");
        let e = err(&[("OSTEO__SERVER__TLS__CLIENT_AUTH", "required")]);
        assert!(e.contains("need TLS"), "{e}");
        let e = err(&with(&[("OSTEO__AUTH__MODE", "mtls")]));
        assert!(e.contains("auth.mode") && e.contains("client_auth"), "{e}");
        let e = err(&[("OSTEO__AUTH__MODE", "token_or_mtls")]);
        assert!(e.contains("auth.tokens_file"), "{e}");
        // A public address needs TLS and authentication both (or allow_insecure).
        let public = ("OSTEO__SERVER__LISTEN", "0.0.0.0:50051");
        assert!(err(&[public]).contains("server.allow_insecure"));
        assert!(err(&with(&[public])).contains("server.allow_insecure"));
        let s = load_from(
            None,
            &[],
            env(&with(&[
                public,
                ("OSTEO__SERVER__TLS__CLIENT_AUTH", "required"),
                ("OSTEO__SERVER__TLS__CLIENT_CA_FILE", "ca.pem"),
                ("OSTEO__AUTH__MODE", "mtls"),
            ])),
        )
        .expect("TLS with client certificates may listen publicly");
        assert!(!s.insecure_listener().expect("address"));
        let e = err(&[("OSTEO__SERVER__HEALTH_LISTEN", "127.0.0.1:50051")]);
        assert!(e.contains("server.health_listen"), "{e}");
        // The HTTP/REST listener carries patient data too.
        let e = err(&[("OSTEO__SERVER__HTTP_LISTEN", "0.0.0.0:8000")]);
        assert!(
            e.contains("server.http_listen") && e.contains("server.allow_insecure"),
            "{e}"
        );
        let e = err(&[("OSTEO__SERVER__HTTP_LISTEN", "127.0.0.1:50051")]);
        assert!(e.contains("server.http_listen"), "{e}");
    }
}

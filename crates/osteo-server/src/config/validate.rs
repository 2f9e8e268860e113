//! Checks of the values the types alone do not constrain, each refusal naming its key, and the
//! listen addresses the settings name.

use super::Settings;
use crate::error::ServerError;
use osteo_core::Device;
use std::net::SocketAddr;

/// A validation error naming the key.
fn invalid(key: &str, value: impl std::fmt::Display, why: &str) -> ServerError {
    ServerError::Config(format!("{key} = {value}: {why}"))
}

/// `Ok` when `ok`, else the validation error naming the key.
fn require(
    ok: bool,
    key: &str,
    value: impl std::fmt::Display,
    why: &str,
) -> Result<(), ServerError> {
    if ok {
        Ok(())
    } else {
        Err(invalid(key, value, why))
    }
}

/// A `HOST:PORT` setting.
fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ServerError> {
    value
        .parse()
        .map_err(|e| invalid(key, value, &format!("not HOST:PORT ({e})")))
}

impl Settings {
    /// Checks values the types alone do not constrain.
    pub fn validate(&self) -> Result<(), ServerError> {
        let s = &self.server;
        self.listen_addr()?;
        self.validate_tls()?;
        self.validate_auth()?;
        self.traffic_policy().validate("configuration")?;
        let t = &self.traffic;
        require(
            t.shadow_queue > 0 && t.report_window > 0,
            "traffic",
            format!(
                "shadow_queue {}, report_window {}",
                t.shadow_queue, t.report_window
            ),
            "must be positive",
        )?;
        require(
            t.file.is_empty() || t.poll_s > 0,
            "traffic.poll_s",
            0,
            "must be positive when traffic.file is set",
        )?;
        for (key, addr) in self.protected_listeners()? {
            require(
                !self.exposed(addr) || s.allow_insecure,
                key,
                addr,
                "is reachable from other hosts without both TLS (server.tls) and authentication \
                 (auth.mode): patient data would cross the network in plaintext or reach anyone \
                 who can connect. Configure both, listen on 127.0.0.1 behind a TLS-terminating \
                 proxy, or set server.allow_insecure = true to accept the risk (e.g. on a private \
                 pod network restricted by a NetworkPolicy)",
            )?;
        }
        self.metrics_addr()?;
        // Port 0 (any free port) never clashes.
        let clash = |a: SocketAddr, b: Option<SocketAddr>| a.port() != 0 && Some(a) == b;
        if let Some(h) = self.health_addr()? {
            require(
                !clash(h, Some(self.listen_addr()?)),
                "server.health_listen",
                h,
                "must differ from server.listen",
            )?;
        }
        if let Some(h) = self.http_addr()? {
            require(
                !clash(h, Some(self.listen_addr()?)) && !clash(h, self.health_addr()?),
                "server.http_listen",
                h,
                "must differ from server.listen and server.health_listen",
            )?;
        }
        require(
            (1024..=1 << 30).contains(&s.max_message_bytes),
            "server.max_message_bytes",
            s.max_message_bytes,
            "must be between 1024 and 1073741824",
        )?;
        require(
            s.request_timeout_s > 0,
            "server.request_timeout_s",
            0,
            "must be positive",
        )?;
        let st = &self.store;
        require(
            st.max_bytes > 0 && st.max_upload_bytes > 0 && st.max_files > 0,
            "store",
            format!(
                "max_bytes {}, max_upload_bytes {}, max_files {}",
                st.max_bytes, st.max_upload_bytes, st.max_files
            ),
            "limits must be positive",
        )?;
        require(st.ttl_s > 0, "store.ttl_s", 0, "must be positive")?;
        for (cert, principal) in &self.auth.mtls_principals {
            require(
                crate::principal::valid_principal(cert)
                    && crate::principal::valid_principal(principal),
                "auth.mtls_principals",
                crate::text::client_text(cert),
                "maps certificate names to principals, each 1 to 64 letters, digits or ._@-",
            )?;
        }
        require(
            self.server.max_stream_s > 0,
            "server.max_stream_s",
            0,
            "must be positive",
        )?;
        require(
            matches!(self.server.fd_limit.as_str(), "error" | "warn"),
            "server.fd_limit",
            crate::text::client_text(&self.server.fd_limit),
            "must be \"error\" or \"warn\"",
        )?;
        require(
            st.max_study_bytes > 0 && st.max_study_bytes <= st.max_bytes,
            "store.max_study_bytes",
            st.max_study_bytes,
            "must be positive and at most store.max_bytes",
        )?;
        require(
            st.max_upload_bytes <= st.max_inflight_upload_bytes,
            "store.max_upload_bytes",
            st.max_upload_bytes,
            "must be at most store.max_inflight_upload_bytes (a larger upload could never be \
             buffered)",
        )?;
        require(
            st.max_inflight_upload_bytes_per_principal == 0
                || st.max_inflight_upload_bytes_per_principal >= st.max_upload_bytes,
            "store.max_inflight_upload_bytes_per_principal",
            st.max_inflight_upload_bytes_per_principal,
            "must be 0 (no cap) or at least store.max_upload_bytes (a smaller share could never \
             buffer the largest upload)",
        )?;
        require(
            st.max_concurrent_uploads > 0,
            "store.max_concurrent_uploads",
            0,
            "must be positive",
        )?;
        for (key, value) in [
            ("server.max_concurrent_requests", s.max_concurrent_requests),
            ("server.max_connections", s.max_connections),
            (
                "server.max_concurrent_streams",
                s.max_concurrent_streams as usize,
            ),
            ("server.handshake_timeout_s", s.handshake_timeout_s as usize),
            ("server.idle_timeout_s", s.idle_timeout_s as usize),
        ] {
            require(value > 0, key, value, "must be positive")?;
        }
        require(
            s.keepalive_interval_s == 0 || s.keepalive_timeout_s > 0,
            "server.keepalive_timeout_s",
            s.keepalive_timeout_s,
            "must be positive when server.keepalive_interval_s is set",
        )?;
        require(
            self.ingest.threads <= 1024,
            "ingest.threads",
            self.ingest.threads,
            "must be at most 1024 (0 = one per core)",
        )?;
        let sc = &self.scheduler;
        require(
            (1..=1024).contains(&sc.max_batch),
            "scheduler.max_batch",
            sc.max_batch,
            "must be between 1 and 1024",
        )?;
        require(
            sc.queue_capacity > 0,
            "scheduler.queue_capacity",
            0,
            "must be positive",
        )?;
        require(
            sc.max_delay_ms <= 10_000,
            "scheduler.max_delay_ms",
            sc.max_delay_ms,
            "must be at most 10000",
        )?;
        let t = &self.telemetry;
        require(
            matches!(t.log_format.as_str(), "pretty" | "json"),
            "telemetry.log_format",
            &t.log_format,
            "must be \"pretty\" or \"json\"",
        )?;
        let endpoint = &t.otlp_endpoint;
        require(
            endpoint.is_empty()
                || endpoint.starts_with("http://")
                || endpoint.starts_with("https://"),
            "telemetry.otlp_endpoint",
            endpoint,
            "must start with http:// or https://",
        )?;
        for (key, threads) in [
            (
                "backends.ort.intra_threads",
                self.backends.ort.intra_threads,
            ),
            (
                "backends.tch.intra_threads",
                self.backends.tch.intra_threads,
            ),
        ] {
            require(
                threads <= 1024,
                key,
                threads,
                "must be 0 (the library decides) to 1024",
            )?;
        }
        require(
            !self.models.is_empty(),
            "models",
            "[]",
            "configure at least one model",
        )?;
        for (i, m) in self.models.iter().enumerate() {
            require(
                !m.backends.is_empty(),
                &format!("models[{i}].backends"),
                "[]",
                "name at least one backend",
            )?;
            require(
                m.default_backend.is_empty() || m.backends.contains(&m.default_backend),
                &format!("models[{i}].default_backend"),
                &m.default_backend,
                &format!("is not one of backends {:?}", m.backends),
            )?;
            m.device
                .parse::<Device>()
                .map_err(|e| invalid(&format!("models[{i}].device"), &m.device, &e.to_string()))?;
        }
        Ok(())
    }

    /// Checks `[server.tls]`: key with certificate, a known client_auth with its CA bundle.
    fn validate_tls(&self) -> Result<(), ServerError> {
        let t = &self.server.tls;
        require(
            t.cert_file.is_empty() == t.key_file.is_empty(),
            "server.tls.key_file",
            format!("{:?}", t.key_file),
            "set server.tls.cert_file and server.tls.key_file together",
        )?;
        let Some(auth) = crate::net::tls::ClientAuth::parse(&t.client_auth) else {
            return Err(invalid(
                "server.tls.client_auth",
                &t.client_auth,
                "must be \"none\", \"optional\" or \"required\"",
            ));
        };
        if auth != crate::net::tls::ClientAuth::None {
            require(
                t.enabled(),
                "server.tls.client_auth",
                &t.client_auth,
                "client certificates need TLS: set server.tls.cert_file and key_file",
            )?;
            require(
                !t.client_ca_file.is_empty(),
                "server.tls.client_ca_file",
                "\"\"",
                "name the CA bundle that signs client certificates",
            )?;
        }
        Ok(())
    }

    /// Checks `[auth]` against `[server.tls]`.
    fn validate_auth(&self) -> Result<(), ServerError> {
        let a = &self.auth;
        let (tokens, mtls) = (a.uses_tokens(), a.uses_certificates());
        if !tokens && !mtls && a.mode != "none" {
            return Err(invalid(
                "auth.mode",
                &a.mode,
                "must be \"none\", \"token\", \"mtls\" or \"token_or_mtls\"",
            ));
        }
        require(
            !tokens || !a.tokens_file.is_empty(),
            "auth.tokens_file",
            "\"\"",
            &format!(
                "name the tokens file when auth.mode = \"{}\" (create entries with `osteo token \
                 new`)",
                a.mode
            ),
        )?;
        require(
            !mtls || self.server.tls.client_auth != "none",
            "auth.mode",
            &a.mode,
            "needs client certificates: set server.tls.client_auth to \"required\" or \
             \"optional\" and server.tls.client_ca_file",
        )?;
        for (i, name) in a.mtls_admins.iter().enumerate() {
            require(
                crate::principal::valid_principal(name),
                &format!("auth.mtls_admins[{i}]"),
                crate::text::client_text(name),
                "must be 1 to 64 letters, digits or ._@-",
            )?;
        }
        Ok(())
    }

    /// The gRPC listen address.
    pub fn listen_addr(&self) -> Result<SocketAddr, ServerError> {
        parse_addr("server.listen", &self.server.listen)
    }

    /// The listeners that carry patient data, by setting key: gRPC and the HTTP/REST one.
    fn protected_listeners(&self) -> Result<Vec<(&'static str, SocketAddr)>, ServerError> {
        let mut out = vec![("server.listen", self.listen_addr()?)];
        if let Some(h) = self.http_addr()? {
            out.push(("server.http_listen", h));
        }
        Ok(out)
    }

    /// Whether `addr` is reachable from other hosts without both TLS and authentication.
    fn exposed(&self, addr: SocketAddr) -> bool {
        let protected = self.server.tls.enabled() && self.auth.mode != "none";
        !protected && !addr.ip().is_loopback()
    }

    /// Whether a listener carrying patient data (gRPC or HTTP/REST) is reachable from other
    /// hosts without both TLS and authentication (allowed only with `server.allow_insecure`).
    pub fn insecure_listener(&self) -> Result<bool, ServerError> {
        Ok(self
            .protected_listeners()?
            .into_iter()
            .any(|(_, addr)| self.exposed(addr)))
    }

    /// The Open Inference Protocol HTTP/REST listen address, if any.
    pub fn http_addr(&self) -> Result<Option<SocketAddr>, ServerError> {
        let h = &self.server.http_listen;
        if h.is_empty() {
            Ok(None)
        } else {
            parse_addr("server.http_listen", h).map(Some)
        }
    }

    /// The plaintext health-only listen address, if any.
    pub fn health_addr(&self) -> Result<Option<SocketAddr>, ServerError> {
        let h = &self.server.health_listen;
        if h.is_empty() {
            Ok(None)
        } else {
            parse_addr("server.health_listen", h).map(Some)
        }
    }

    /// The metrics listen address, if any.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, ServerError> {
        let m = &self.server.metrics_listen;
        if m.is_empty() {
            Ok(None)
        } else {
            parse_addr("server.metrics_listen", m).map(Some)
        }
    }
}

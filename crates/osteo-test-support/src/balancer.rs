//! A throw-away nginx (Debian `nginx`) balancing gRPC over several servers the way a service
//! mesh or an L7 ingress does: per request (round robin), or by consistent hashing on a request
//! header (the affinity key). Plaintext HTTP/2 on a loopback port.

use crate::daemon::{Daemon, free_port};
use std::net::SocketAddr;

/// How the balancer picks a server for each request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routing {
    /// Each request to the next server.
    RoundRobin,
    /// Requests with the same value of this header (lowercase, `-` for `_` as nginx spells
    /// `$http_…`) to the same server; consistent hashing (ketama), as Istio and ingress-nginx do.
    ConsistentHash(String),
}

/// A running nginx gRPC balancer, stopped (and its folder removed) on drop.
pub struct GrpcBalancer {
    /// The balancer's gRPC URL, `http://127.0.0.1:PORT`.
    pub url: String,
    _daemon: Daemon,
}

impl GrpcBalancer {
    /// Starts nginx on a loopback port, passing every gRPC request to one of `servers` as
    /// `routing` says. A server that refuses the connection is skipped for one second and the
    /// request passed to the next (nginx's `grpc_next_upstream error`).
    pub fn start(servers: &[SocketAddr], routing: &Routing) -> Result<GrpcBalancer, String> {
        let hash = match routing {
            Routing::RoundRobin => String::new(),
            Routing::ConsistentHash(header) => {
                if !header
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                {
                    return Err("the hash header must be lowercase letters, digits and -".into());
                }
                format!("hash $http_{} consistent;", header.replace('-', "_"))
            }
        };
        let upstreams: String = servers
            .iter()
            .map(|s| format!("    server {s} max_fails=1 fail_timeout=1s;\n"))
            .collect();
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = free_port()?;
        // Bodies of any size, streamed as they come.
        let blocks = format!(
            "upstream osteo {{
    {hash}
{upstreams}  }}
  server {{
    listen 127.0.0.1:{port} http2;
    client_max_body_size 0;
    client_body_timeout 120s;
    location / {{
      grpc_pass grpc://osteo;
      grpc_read_timeout 120s;
      grpc_send_timeout 120s;
      grpc_connect_timeout 2s;
    }}
  }}"
        );
        Ok(GrpcBalancer {
            url: format!("http://127.0.0.1:{port}"),
            _daemon: crate::nginx::start(dir, port, &blocks)?,
        })
    }
}

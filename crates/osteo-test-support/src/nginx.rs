//! A throw-away nginx (Debian `nginx`) terminating TLS in front of a local PACS, the way sites
//! publish Orthanc: its certificate, optionally client certificates verified against a CA and a
//! required bearer token. For tests and benchmarks of `https://` DICOMweb clients.

use crate::daemon::{Daemon, find, free_port};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the proxy asks of its clients.
#[derive(Debug, Clone, Default)]
pub struct ProxyAuth {
    /// PEM CA file: clients must present a certificate it signed.
    pub client_ca: Option<PathBuf>,
    /// Requests must carry `Authorization: Bearer <token>` (letters and digits only).
    pub token: Option<String>,
}

/// A running nginx, stopped (and its folder removed) on drop.
pub struct TlsProxy {
    /// The DICOMweb service root through the proxy, `https://127.0.0.1:PORT/dicom-web`.
    pub url: String,
    _daemon: Daemon,
}

impl TlsProxy {
    /// Starts nginx on a loopback port with the server certificate `cert` and key `key`,
    /// forwarding everything to `http://127.0.0.1:{upstream_port}`.
    pub fn start(
        upstream_port: u16,
        cert: &Path,
        key: &Path,
        auth: &ProxyAuth,
    ) -> Result<TlsProxy, String> {
        if let Some(token) = &auth.token
            && !token.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err("the proxy's token must be letters and digits".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = free_port()?;
        let client = match &auth.client_ca {
            Some(ca) => format!(
                "ssl_client_certificate {};\n    ssl_verify_client on;",
                ca.display()
            ),
            None => String::new(),
        };
        let token = match &auth.token {
            Some(t) => format!("if ($http_authorization != \"Bearer {t}\") {{ return 401; }}"),
            None => String::new(),
        };
        let server = format!(
            "server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    {client}
    client_max_body_size 0;
    {token}
    location / {{
      proxy_pass http://127.0.0.1:{upstream_port};
      proxy_http_version 1.1;
      proxy_buffering off;
      proxy_request_buffering off;
    }}
  }}",
            cert = cert.display(),
            key = key.display(),
        );
        Ok(TlsProxy {
            url: format!("https://127.0.0.1:{port}/dicom-web"),
            _daemon: start(dir, port, &server)?,
        })
    }
}

/// Starts nginx in `dir` with `http_blocks` (its upstreams and servers) inside the `http` block,
/// in one process without a user switch, every temporary path in `dir`; waits for `port`.
pub(crate) fn start(
    dir: tempfile::TempDir,
    port: u16,
    http_blocks: &str,
) -> Result<Daemon, String> {
    let binary = find(&["/usr/sbin/nginx", "/usr/bin/nginx"])
        .ok_or("nginx is not installed: run scripts/setup.sh")?;
    let d = dir.path().display();
    let config = format!(
        "daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  {http_blocks}
}}
"
    );
    let file = dir.path().join("nginx.conf");
    std::fs::write(&file, config).map_err(|e| e.to_string())?;
    let mut command = Command::new(binary);
    command
        .arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .arg("-c")
        .arg(&file);
    Daemon::start("nginx", command, dir, port, Some("error.log"))
}

//! A helper server process for tests and benchmarks (Orthanc, nginx): started with its files in
//! a temporary folder, waited for on a loopback port, killed (and the folder removed) on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running helper process.
pub(crate) struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free at the moment of asking.
pub(crate) fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// The first of `candidates` that exists.
pub(crate) fn find(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

impl Daemon {
    /// Spawns `command` (output discarded) and waits up to a minute until it accepts
    /// connections on loopback `port`. On failure the error quotes `log` (a file in `dir`).
    pub(crate) fn start(
        what: &str,
        mut command: Command,
        dir: tempfile::TempDir,
        port: u16,
        log: Option<&str>,
    ) -> Result<Daemon, String> {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {what}: {e}"))?;
        let mut daemon = Daemon { child, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let failed = match daemon.child.try_wait() {
                Ok(Some(status)) => Some(format!("{what} exited at start ({status})")),
                _ if Instant::now() > deadline => {
                    Some(format!("{what} did not start within a minute"))
                }
                _ => None,
            };
            if let Some(message) = failed {
                let log = log
                    .and_then(|f| std::fs::read_to_string(daemon.dir().join(f)).ok())
                    .unwrap_or_default();
                return Err(format!("{message}: {}", log.trim()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(daemon)
    }

    /// Whether the process has exited (for instance because another process held its port and
    /// answered the readiness check in its place).
    pub(crate) fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// The process's folder.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }
}

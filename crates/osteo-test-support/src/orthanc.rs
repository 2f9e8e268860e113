//! A throw-away Orthanc PACS with its DICOMweb plugin (Debian `orthanc`, `orthanc-dicomweb`) on
//! loopback ports and a temporary storage folder, for tests and benchmarks of DICOMweb clients.

use crate::daemon::{Daemon, find, free_port};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Where Debian installs the DICOMweb plugin.
const PLUGIN: &str = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so";

/// A running Orthanc, killed (and its storage removed) on drop.
pub struct Orthanc {
    /// The DICOMweb service root, `http://127.0.0.1:PORT/dicom-web`.
    pub url: String,
    /// Orthanc's HTTP port on 127.0.0.1.
    pub http_port: u16,
    /// Orthanc's DICOM (DIMSE) port on 127.0.0.1; its AE title is `ORTHANC`.
    pub dicom_port: u16,
    _daemon: Daemon,
}

impl Orthanc {
    /// A DICOMweb client of this Orthanc: plain http, no token, default limits.
    pub fn client(&self) -> Result<osteo_dicomweb::DicomWeb, osteo_dicomweb::DicomWebError> {
        osteo_dicomweb::DicomWeb::new(
            &self.url,
            None,
            &osteo_dicomweb::TlsOptions::default(),
            osteo_dicomweb::Limits::default(),
        )
    }

    /// Starts Orthanc and waits (up to a minute) until it answers as itself. A free port can be
    /// taken by another process between choosing and binding it; then that process answers the
    /// port, this Orthanc exits, and it is started again on other ports (three tries).
    pub fn start() -> Result<Orthanc, String> {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::start_once() {
                Ok(o) => return Ok(o),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn start_once() -> Result<Orthanc, String> {
        let binary = find(&["/usr/sbin/Orthanc", "/usr/bin/Orthanc"])
            .ok_or("Orthanc is not installed: run scripts/setup.sh")?;
        if !Path::new(PLUGIN).exists() {
            return Err("orthanc-dicomweb is not installed: run scripts/setup.sh".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (http, dicom) = (free_port()?, free_port()?);
        // A name of its own, so the readiness check cannot mistake another Orthanc for it.
        let name = format!("osteo-test-{}-{http}", std::process::id());
        let config = serde_json::json!({
            "Name": name,
            "StorageDirectory": dir.path().join("db"),
            "IndexDirectory": dir.path().join("db"),
            "HttpPort": http,
            "DicomPort": dicom,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "Plugins": [PLUGIN],
            "DicomWeb": {"Enable": true, "Root": "/dicom-web/"}
        });
        let file = dir.path().join("orthanc.json");
        std::fs::write(&file, config.to_string()).map_err(|e| e.to_string())?;
        let mut command = Command::new(binary);
        command.arg(&file);
        let mut daemon = Daemon::start("Orthanc", command, dir, http, None)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !answers_as(http, &name) {
            if daemon.exited() {
                return Err(format!(
                    "Orthanc exited at start (port {http} or {dicom} taken?)"
                ));
            }
            if Instant::now() > deadline {
                return Err("Orthanc did not answer /system within a minute".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Orthanc {
            url: format!("http://127.0.0.1:{http}/dicom-web"),
            http_port: http,
            dicom_port: dicom,
            _daemon: daemon,
        })
    }
}

/// Whether the HTTP server on loopback `port` is the Orthanc called `name` (its `/system`).
fn answers_as(port: u16, name: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /system HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    let mut response = String::new();
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_to_string(&mut response).is_ok()
        && response.contains(name)
}

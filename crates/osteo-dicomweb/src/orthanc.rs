//! A throw-away Orthanc PACS with its DICOMweb plugin (Debian `orthanc`, `orthanc-dicomweb`) on
//! loopback ports and a temporary storage folder, for tests and benchmarks of DICOMweb clients.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian installs the DICOMweb plugin.
const PLUGIN: &str = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so";

/// A running Orthanc, killed (and its storage removed) on drop.
pub struct Orthanc {
    child: Child,
    /// The DICOMweb service root, `http://127.0.0.1:PORT/dicom-web`.
    pub url: String,
    /// Orthanc's HTTP port on 127.0.0.1.
    pub http_port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free at the moment of asking.
pub(crate) fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn binary() -> Option<PathBuf> {
    ["/usr/sbin/Orthanc", "/usr/bin/Orthanc"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl Orthanc {
    /// A DICOMweb client of this Orthanc: plain http, no token, default limits.
    pub fn client(&self) -> Result<crate::DicomWeb, crate::DicomWebError> {
        crate::DicomWeb::new(
            &self.url,
            None,
            &crate::TlsOptions::default(),
            crate::Limits::default(),
        )
    }

    /// Starts Orthanc and waits (up to a minute) until it accepts connections.
    pub fn start() -> Result<Orthanc, String> {
        let binary = binary().ok_or("Orthanc is not installed: run scripts/setup.sh")?;
        if !Path::new(PLUGIN).exists() {
            return Err("orthanc-dicomweb is not installed: run scripts/setup.sh".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (http, dicom) = (
            free_port().map_err(|e| e.to_string())?,
            free_port().map_err(|e| e.to_string())?,
        );
        let config = serde_json::json!({
            "Name": "osteo-test",
            "StorageDirectory": dir.path().join("db"),
            "IndexDirectory": dir.path().join("db"),
            "HttpPort": http,
            "DicomPort": dicom,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "Plugins": [PLUGIN],
            "DicomWeb": {"Enable": true, "Root": "/dicom-web/"}
        });
        let file = dir.path().join("orthanc.json");
        std::fs::write(&file, config.to_string()).map_err(|e| e.to_string())?;
        let child = Command::new(binary)
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start Orthanc: {e}"))?;
        let mut orthanc = Orthanc {
            child,
            url: format!("http://127.0.0.1:{http}/dicom-web"),
            http_port: http,
            _dir: dir,
        };
        wait_for_port("Orthanc", http, &mut orthanc.child)?;
        Ok(orthanc)
    }
}

/// Waits up to a minute until `child` accepts connections on loopback `port`.
pub(crate) fn wait_for_port(what: &str, port: u16, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited at start ({status})"));
        }
        if Instant::now() > deadline {
            return Err(format!("{what} did not start within a minute"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

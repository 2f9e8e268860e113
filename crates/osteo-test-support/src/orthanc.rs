//! A throw-away Orthanc PACS with its DICOMweb plugin (Debian `orthanc`, `orthanc-dicomweb`) on
//! loopback ports and a temporary storage folder, for tests and benchmarks of DICOMweb clients.

use crate::daemon::{Daemon, find, free_port};
use std::path::Path;
use std::process::Command;

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

    /// Starts Orthanc and waits (up to a minute) until it accepts connections.
    pub fn start() -> Result<Orthanc, String> {
        let binary = find(&["/usr/sbin/Orthanc", "/usr/bin/Orthanc"])
            .ok_or("Orthanc is not installed: run scripts/setup.sh")?;
        if !Path::new(PLUGIN).exists() {
            return Err("orthanc-dicomweb is not installed: run scripts/setup.sh".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (http, dicom) = (free_port()?, free_port()?);
        let config = serde_json::json!({
            "Name": "osteo-test",
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
        Ok(Orthanc {
            url: format!("http://127.0.0.1:{http}/dicom-web"),
            http_port: http,
            dicom_port: dicom,
            _daemon: Daemon::start("Orthanc", command, dir, http, None)?,
        })
    }
}

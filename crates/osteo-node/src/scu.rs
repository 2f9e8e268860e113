//! The storage SCU: Part-10 files (the SR and the secondary capture) sent to a destination AE
//! in one association over TCP_NODELAY, each C-STORE answered before the next.

use crate::dimse::{self, Command};
use crate::error::NodeError;
use dicom_ul::ClientAssociationOptions;
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu, PresentationContextResultReason};
use std::sync::Arc;
use std::time::Duration;

/// A destination: `AE@HOST:PORT`, over DICOM TLS when `tls` is set.
#[derive(Debug, Clone)]
pub struct Destination {
    /// The called AE title.
    pub ae_title: String,
    /// `HOST:PORT`.
    pub address: String,
    /// The TLS client configuration (trusted CA, optional client certificate); none = plain.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Destination {
    /// The host part of the address (the name its certificate must hold).
    fn host(&self) -> &str {
        self.address
            .rsplit_once(':')
            .map_or(self.address.as_str(), |(h, _)| h)
            .trim_matches(['[', ']'])
    }
}

impl std::str::FromStr for Destination {
    type Err = NodeError;

    fn from_str(s: &str) -> Result<Self, NodeError> {
        let (ae, address) = s.split_once('@').ok_or_else(|| {
            NodeError::Config(format!(
                "--send-to {s}: expected AE@HOST:PORT, e.g. PACS@10.0.0.5:104"
            ))
        })?;
        if ae.is_empty() || ae.len() > 16 || !address.contains(':') {
            return Err(NodeError::Config(format!(
                "--send-to {s}: expected AE@HOST:PORT with an AE title of 1 to 16 characters"
            )));
        }
        Ok(Self {
            ae_title: ae.to_string(),
            address: address.to_string(),
            tls: None,
        })
    }
}

/// The TLS client configuration of a destination: servers whose certificate chains to the CA
/// in `ca` (PEM), and the client certificate and key `identity` (PEM) when the destination asks
/// for one.
pub fn tls_client(
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<Arc<rustls::ClientConfig>, NodeError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        NodeError::Config(format!("{what} {}: {e}", path.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad("--send-tls-ca", ca, &e))? {
        let cert = cert.map_err(|e| bad("--send-tls-ca", ca, &e))?;
        roots.add(cert).map_err(|e| bad("--send-tls-ca", ca, &e))?;
    }
    if roots.is_empty() {
        return Err(bad("--send-tls-ca", ca, &"holds no PEM certificate"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| NodeError::Config(format!("TLS protocol versions: {e}")))?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|c| c.collect::<Result<Vec<_>, _>>())
                .map_err(|e| bad("--send-tls-cert", cert, &e))?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| bad("--send-tls-key", key, &e))?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                NodeError::Config(format!("--send-tls-cert and --send-tls-key: {e}"))
            })?
        }
    };
    Ok(Arc::new(config))
}

/// What a Part-10 file holds for sending: its SOP class and instance, transfer syntax and the
/// data set's bytes (after the file meta group).
struct Parts<'a> {
    sop_class: String,
    sop_instance: String,
    ts: String,
    data_set: &'a [u8],
}

/// Splits a Part-10 file written by OsteoServe (explicit VR little endian file meta).
fn parts(file: &[u8]) -> Result<Parts<'_>, NodeError> {
    let bad = || NodeError::Protocol("a result file is not a Part-10 file".into());
    if file.get(128..132) != Some(b"DICM") {
        return Err(bad());
    }
    let group_len = file
        .get(140..144)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(bad)?;
    let meta_end = 144 + group_len;
    let meta = file.get(144..meta_end).ok_or_else(bad)?;
    let (mut sop_class, mut sop_instance, mut ts) = (String::new(), String::new(), String::new());
    let mut at = 0;
    while at + 8 <= meta.len() {
        let element = u16::from_le_bytes([meta[at + 2], meta[at + 3]]);
        let vr = &meta[at + 4..at + 6];
        let (len, head) = if matches!(vr, b"OB" | b"OW" | b"UN" | b"SQ" | b"UT") {
            let b = meta.get(at + 8..at + 12).ok_or_else(bad)?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        } else {
            (u16::from_le_bytes([meta[at + 6], meta[at + 7]]) as usize, 8)
        };
        let value = meta.get(at + head..at + head + len).ok_or_else(bad)?;
        let text = || {
            String::from_utf8_lossy(value)
                .trim_end_matches(['\0', ' '])
                .to_string()
        };
        match element {
            0x0002 => sop_class = text(),
            0x0003 => sop_instance = text(),
            0x0010 => ts = text(),
            _ => {}
        }
        at += head + len;
    }
    if sop_class.is_empty() || sop_instance.is_empty() || ts.is_empty() {
        return Err(bad());
    }
    Ok(Parts {
        sop_class,
        sop_instance,
        ts,
        data_set: &file[meta_end..],
    })
}

/// Sends `files` to `to` as `calling_ae` in one association; every file must be acknowledged
/// with success (or a warning).
pub async fn store(
    to: &Destination,
    calling_ae: &str,
    files: &[Vec<u8>],
    timeout: Duration,
) -> Result<(), NodeError> {
    let parts: Vec<Parts<'_>> = files.iter().map(|f| parts(f)).collect::<Result<_, _>>()?;
    let mut options = ClientAssociationOptions::new()
        .calling_ae_title(calling_ae.to_string())
        .called_ae_title(to.ae_title.clone())
        .read_timeout(timeout)
        .write_timeout(timeout)
        .connection_timeout(timeout);
    let mut classes: Vec<(&str, &str)> = Vec::new();
    for p in &parts {
        if !classes.contains(&(p.sop_class.as_str(), p.ts.as_str())) {
            classes.push((&p.sop_class, &p.ts));
        }
    }
    for (class, ts) in &classes {
        options = options.with_presentation_context(class.to_string(), vec![ts.to_string()]);
    }
    match &to.tls {
        None => {
            let mut assoc = options
                .establish_async(to.address.as_str())
                .await
                .map_err(|e| NodeError::Association(format!("to {}: {e}", to.ae_title)))?;
            let _ = assoc.inner_stream().set_nodelay(true);
            send_all(assoc, to, &parts).await
        }
        Some(tls) => {
            let mut assoc = options
                .tls_config(tls.clone())
                .server_name(to.host())
                .establish_tls_async(to.address.as_str())
                .await
                .map_err(|e| NodeError::Association(format!("to {} (TLS): {e}", to.ae_title)))?;
            let _ = assoc.inner_stream().get_ref().0.set_nodelay(true);
            send_all(assoc, to, &parts).await
        }
    }
}

/// Sends every file on an established association, each C-STORE answered before the next,
/// then releases it.
async fn send_all<S>(
    mut assoc: dicom_ul::association::AsyncClientAssociation<S>,
    to: &Destination,
    parts: &[Parts<'_>],
) -> Result<(), NodeError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let max = match assoc.acceptor_max_pdu_length() {
        0 => 64 << 10,
        n => (n as usize).saturating_sub(6).max(1024),
    };
    let contexts: Vec<(u8, String, String)> = assoc
        .presentation_contexts()
        .iter()
        .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .map(|pc| {
            (
                pc.id,
                pc.abstract_syntax.clone(),
                pc.transfer_syntax.clone(),
            )
        })
        .collect();
    for (i, p) in parts.iter().enumerate() {
        let id = contexts
            .iter()
            .find(|(_, a, t)| *a == p.sop_class && *t == p.ts)
            .map(|(id, _, _)| *id)
            .ok_or_else(|| {
                NodeError::Association(format!(
                    "{} accepted no presentation context for SOP class {}",
                    to.ae_title, p.sop_class
                ))
            })?;
        let message_id = (i + 1) as u16;
        let send = |pdv: PDataValue| Pdu::PData { data: vec![pdv] };
        let fail = |e: dicom_ul::association::Error| NodeError::Association(format!("send: {e}"));
        assoc
            .send(&send(PDataValue {
                presentation_context_id: id,
                value_type: PDataValueType::Command,
                is_last: true,
                data: dimse::store_request(message_id, &p.sop_class, &p.sop_instance),
            }))
            .await
            .map_err(fail)?;
        let chunks: Vec<&[u8]> = p.data_set.chunks(max).collect();
        for (k, chunk) in chunks.iter().enumerate() {
            assoc
                .send(&send(PDataValue {
                    presentation_context_id: id,
                    value_type: PDataValueType::Data,
                    is_last: k + 1 == chunks.len(),
                    data: chunk.to_vec(),
                }))
                .await
                .map_err(fail)?;
        }
        let mut command = Vec::new();
        let status = loop {
            let pdu = assoc
                .receive()
                .await
                .map_err(|e| NodeError::Association(format!("receive: {e}")))?;
            let Pdu::PData { data } = pdu else {
                return Err(NodeError::Association(format!(
                    "{} answered {} instead of a C-STORE response",
                    to.ae_title,
                    pdu.short_description()
                )));
            };
            let mut done = None;
            for pdv in data {
                if pdv.value_type == PDataValueType::Command {
                    command.extend_from_slice(&pdv.data);
                    if pdv.is_last {
                        done = Some(Command::parse(&command)?.status);
                    }
                }
            }
            if let Some(s) = done {
                break s;
            }
        };
        let ok =
            status == dimse::SUCCESS || status == 0x0001 || (0xB000..=0xBFFF).contains(&status);
        if !ok {
            let _ = assoc.abort().await;
            return Err(NodeError::Association(format!(
                "{} refused a result with status {status:04X}",
                to.ae_title
            )));
        }
    }
    let _ = assoc.release().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_and_bad_ones_say_the_form() {
        let d: Destination = "PACS@10.0.0.5:104".parse().expect("parse");
        assert_eq!(
            (d.ae_title.as_str(), d.address.as_str()),
            ("PACS", "10.0.0.5:104")
        );
        for bad in ["PACS", "@h:1", "WAYTOOLONGAETITLE1@h:1", "PACS@host"] {
            let e = bad.parse::<Destination>().expect_err(bad);
            assert!(e.to_string().contains("AE@HOST:PORT"), "{e}");
        }
    }

    #[test]
    fn a_written_file_meta_splits_back() {
        let mut file = crate::scp::file_meta(
            "1.2.840.10008.5.1.4.1.1.88.33",
            "1.2.3",
            "1.2.840.10008.1.2.1",
        );
        file.extend_from_slice(&[1, 2, 3, 4]);
        let p = parts(&file).expect("parts");
        assert_eq!(p.sop_class, "1.2.840.10008.5.1.4.1.1.88.33");
        assert_eq!(
            (p.sop_instance.as_str(), p.ts.as_str()),
            ("1.2.3", "1.2.840.10008.1.2.1")
        );
        assert_eq!(p.data_set, [1, 2, 3, 4]);
    }
}

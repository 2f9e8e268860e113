//! The storage SCP: associations accepted within a limit (called AE title checked, calling AE
//! titles against the allow list), C-ECHO answered, and each C-STORE's data set streamed into
//! the spool as a Part-10 file, synced and kept under its study before the success response.
//! What does not fit (spool budget, instance size, instances per study) is refused with
//! "out of resources"; what cannot be read with "cannot understand"; non-CT instances are
//! acknowledged and dropped.

use crate::dimse::{self, Command};
use crate::error::NodeError;
use crate::spool::{Reservation, Spool, key};
use crate::studies::Tracker;
use dicom_ul::ServerAssociationOptions;
use dicom_ul::association::AsyncServerAssociation;
use dicom_ul::association::server::AccessControl;
use dicom_ul::pdu::{
    AssociationRJServiceUserReason, PDataValue, PDataValueType, Pdu,
    PresentationContextResultReason, UserIdentity,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// Verification (C-ECHO).
pub const VERIFICATION: &str = "1.2.840.10008.1.1";
/// CT Image Storage.
pub const CT_IMAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
/// Enhanced CT Image Storage.
pub const ENHANCED_CT: &str = "1.2.840.10008.5.1.4.1.1.2.1";
/// Storage classes accepted so that a pushed study's other objects (earlier results, screen
/// captures) do not fail the whole transfer; they are acknowledged and dropped.
const IGNORED: [&str; 4] = [
    "1.2.840.10008.5.1.4.1.1.7",     // Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.88.11", // Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22", // Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33", // Comprehensive SR
];
/// The transfer syntaxes the server's ingest decodes; others are negotiated away.
pub const TRANSFER_SYNTAXES: [&str; 12] = [
    "1.2.840.10008.1.2.1",    // Explicit VR Little Endian
    "1.2.840.10008.1.2",      // Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99", // Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50", // JPEG Baseline
    "1.2.840.10008.1.2.4.51", // JPEG Extended
    "1.2.840.10008.1.2.4.57", // JPEG Lossless
    "1.2.840.10008.1.2.4.70", // JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80", // JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81", // JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90", // JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91", // JPEG 2000
    "1.2.840.10008.1.2.5",    // RLE Lossless
];

/// The SCP's settings.
#[derive(Debug, Clone)]
pub struct ScpSettings {
    /// This node's AE title (the called AE title associations must name).
    pub ae_title: String,
    /// Calling AE titles allowed (empty = any).
    pub allow_ae: Vec<String>,
    /// Associations open at once; more are closed at once.
    pub max_associations: usize,
    /// Largest PDU this node receives.
    pub max_pdu: u32,
    /// Longest wait for the next PDU of an association (and for its request).
    pub read_timeout: Duration,
    /// Largest instance.
    pub max_instance_bytes: u64,
    /// DICOM TLS on a second listener: the server configuration for each new connection
    /// (certificates rotated in place are picked up), none = no TLS listener.
    pub tls: Option<TlsConfig>,
}

/// Where each TLS connection's server configuration comes from.
#[derive(Clone)]
pub struct TlsConfig(pub Arc<dyn Fn() -> Arc<rustls::ServerConfig> + Send + Sync>);

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConfig")
    }
}

/// Calls from a listed AE title to this node's AE title only.
#[derive(Clone)]
pub struct Allow(Vec<String>);

impl AccessControl for Allow {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if called_ae_title.trim() != this_ae_title.trim() {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        if !self.0.is_empty() && !self.0.iter().any(|a| a == calling_ae_title.trim()) {
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        Ok(())
    }
}

/// An AE title as it may be logged: at most 16 characters, control characters escaped.
pub fn shown_ae(ae: &str) -> String {
    ae.trim()
        .chars()
        .take(16)
        .flat_map(char::escape_default)
        .collect()
}

/// What the SCP shares with its associations.
pub struct Scp {
    settings: ScpSettings,
    options:
        ServerAssociationOptions<'static, Allow, dicom_ul::association::server::DefaultNegotiation>,
    spool: Arc<Spool>,
    tracker: Arc<Tracker>,
    associations: Arc<tokio::sync::Semaphore>,
}

impl Scp {
    /// The SCP of `settings` keeping instances in `spool`, telling `tracker` of each.
    pub fn new(settings: ScpSettings, spool: Arc<Spool>, tracker: Arc<Tracker>) -> Self {
        let mut options = ServerAssociationOptions::new()
            .ae_access_control(Allow(settings.allow_ae.clone()))
            .ae_title(settings.ae_title.clone())
            .max_pdu_length(settings.max_pdu)
            .read_timeout(settings.read_timeout)
            .write_timeout(settings.read_timeout)
            .with_abstract_syntax(VERIFICATION)
            .with_abstract_syntax(CT_IMAGE)
            .with_abstract_syntax(ENHANCED_CT);
        for s in IGNORED {
            options = options.with_abstract_syntax(s);
        }
        for ts in TRANSFER_SYNTAXES {
            options = options.with_transfer_syntax(ts);
        }
        Self {
            associations: Arc::new(tokio::sync::Semaphore::new(settings.max_associations)),
            settings,
            options,
            spool,
            tracker,
        }
    }

    /// Accepts associations on `listener` (DICOM TLS when `tls`) until `stop` fires.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: bool,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.changed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = self.associations.clone().try_acquire_owned() else {
                tracing::warn!(%peer, limit = self.settings.max_associations, "association limit reached; connection closed");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let scp = self.clone();
            tokio::spawn(async move {
                let done = if tls {
                    scp.tls_association(stream).await
                } else {
                    let limit = scp.settings.read_timeout;
                    match tokio::time::timeout(limit, scp.options.establish_async(stream)).await {
                        Ok(Ok(assoc)) => scp.association(assoc).await,
                        Ok(Err(e)) => {
                            Err(NodeError::Association(format!("refused or failed: {e}")))
                        }
                        Err(_) => Err(NodeError::Association(
                            "no association request in time".into(),
                        )),
                    }
                };
                if let Err(e) = done {
                    tracing::warn!(%peer, tls, error = %e, "association ended with an error");
                }
                drop(permit);
            });
        }
    }

    /// A DICOM TLS association: handshake and negotiation within the read timeout.
    async fn tls_association(&self, stream: TcpStream) -> Result<(), NodeError> {
        let Some(TlsConfig(config)) = &self.settings.tls else {
            return Err(NodeError::Config("no TLS configuration".into()));
        };
        let options = self.options.clone().tls_config(config());
        let limit = self.settings.read_timeout;
        let assoc = match tokio::time::timeout(limit, options.establish_tls_async(stream)).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => return Err(NodeError::Association(format!("refused or failed: {e}"))),
            Err(_) => {
                return Err(NodeError::Association(
                    "no TLS handshake and association request in time".into(),
                ));
            }
        };
        self.association(assoc).await
    }

    /// One association's messages until release or abort.
    async fn association<S>(&self, mut assoc: AsyncServerAssociation<S>) -> Result<(), NodeError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    {
        let calling = shown_ae(dicom_ul::association::Association::peer_ae_title(&assoc));
        let contexts: HashMap<u8, (String, String)> = assoc
            .presentation_contexts()
            .iter()
            .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
            .map(|pc| {
                (
                    pc.id,
                    (pc.abstract_syntax.clone(), pc.transfer_syntax.clone()),
                )
            })
            .collect();
        tracing::info!(calling_ae = %calling, contexts = contexts.len(), "association accepted");
        let mut command: Vec<u8> = Vec::new();
        let mut storing: Option<Incoming<'_>> = None;
        let mut stored = 0usize;
        loop {
            let pdu = assoc
                .receive()
                .await
                .map_err(|e| NodeError::Association(format!("receive: {e}")))?;
            let values = match pdu {
                Pdu::PData { data } => data,
                Pdu::ReleaseRQ => {
                    let _ = assoc.send(&Pdu::ReleaseRP).await;
                    tracing::info!(calling_ae = %calling, instances = stored, "association released");
                    return Ok(());
                }
                Pdu::AbortRQ { .. } => {
                    tracing::info!(calling_ae = %calling, instances = stored, "association aborted by the peer");
                    return Ok(());
                }
                other => {
                    let _ = assoc.abort().await;
                    return Err(NodeError::Protocol(format!(
                        "unexpected PDU {}",
                        other.short_description()
                    )));
                }
            };
            for pdv in values {
                match pdv.value_type {
                    PDataValueType::Command => {
                        if command.len() + pdv.data.len() > dimse::MAX_COMMAND_BYTES {
                            let _ = assoc.abort().await;
                            return Err(NodeError::Protocol("a command set over 64 KiB".into()));
                        }
                        command.extend_from_slice(&pdv.data);
                        if !pdv.is_last {
                            continue;
                        }
                        let cmd = match Command::parse(&command) {
                            Ok(c) => c,
                            Err(e) => {
                                let _ = assoc.abort().await;
                                return Err(e);
                            }
                        };
                        command.clear();
                        let id = pdv.presentation_context_id;
                        match cmd.field {
                            dimse::C_ECHO_RQ => {
                                respond(
                                    &mut assoc,
                                    id,
                                    dimse::response(&cmd, dimse::C_ECHO_RSP, dimse::SUCCESS),
                                )
                                .await?;
                            }
                            dimse::C_STORE_RQ if cmd.has_data_set() => {
                                let ts = contexts
                                    .get(&id)
                                    .map(|(_, ts)| ts.clone())
                                    .unwrap_or_default();
                                storing = Some(self.start(cmd, id, &ts));
                            }
                            _ => {
                                let field = cmd.field | 0x8000;
                                respond(
                                    &mut assoc,
                                    id,
                                    dimse::response(&cmd, field, dimse::UNRECOGNIZED_OPERATION),
                                )
                                .await?;
                            }
                        }
                    }
                    PDataValueType::Data => {
                        let Some(s) = storing.as_mut() else {
                            let _ = assoc.abort().await;
                            return Err(NodeError::Protocol(
                                "a data set without a C-STORE request".into(),
                            ));
                        };
                        s.write(&self.spool, &pdv.data, self.settings.max_instance_bytes)
                            .await;
                        if pdv.is_last {
                            let Some(s) = storing.take() else { continue };
                            let (cmd, id) = (s.command.clone(), s.context);
                            let status = self.finish(s).await;
                            if status == dimse::SUCCESS {
                                stored += 1;
                            }
                            respond(
                                &mut assoc,
                                id,
                                dimse::response(&cmd, dimse::C_STORE_RSP, status),
                            )
                            .await?;
                        }
                    }
                }
            }
        }
    }

    /// Starts a C-STORE's data set: preamble and file meta first, held in memory.
    fn start(&self, command: Command, context: u8, ts: &str) -> Incoming<'_> {
        let meta = file_meta(&command.sop_class, &command.sop_instance, ts);
        let mut reservation = self.spool.reserve();
        let refused = (!reservation.grow(meta.len() as u64)).then_some(dimse::OUT_OF_RESOURCES);
        Incoming {
            command,
            context,
            bytes: meta.len() as u64,
            held: meta,
            spilled: None,
            reservation,
            refused,
        }
    }

    /// Ends a C-STORE: the data set read for its identity and kept under its study, synced
    /// (or dropped when it is not CT); the status to answer.
    async fn finish(&self, s: Incoming<'_>) -> u16 {
        let Incoming {
            held,
            spilled,
            reservation,
            refused,
            command,
            ..
        } = s;
        if let Some(status) = refused {
            if let Some((path, _)) = spilled {
                let _ = tokio::fs::remove_file(&path).await;
            }
            tracing::warn!(
                status = format!("{status:04X}"),
                "instance refused: the spool budget or the instance size limit"
            );
            return status;
        }
        let spilled = match spilled {
            None => None,
            Some((path, mut file)) => {
                if let Err(e) = file.flush().await.and(file.sync_all().await) {
                    tracing::error!(error = %e, "cannot sync a spool file");
                    let _ = tokio::fs::remove_file(&path).await;
                    return dimse::OUT_OF_RESOURCES;
                }
                Some(path)
            }
        };
        let spool = self.spool.clone();
        let tracker = self.tracker.clone();
        let status = tokio::task::spawn_blocking(move || {
            keep(&spool, &tracker, &command, held, spilled.as_deref())
        })
        .await
        .unwrap_or(dimse::OUT_OF_RESOURCES);
        if status == dimse::SUCCESS {
            reservation.keep();
        }
        status
    }
}

/// Keeps a received instance (in `held`, or in the file `spilled`) under its study when it is a
/// CT image; blocking. The status to answer.
fn keep(
    spool: &Spool,
    tracker: &Tracker,
    command: &Command,
    held: Vec<u8>,
    spilled: Option<&std::path::Path>,
) -> u16 {
    let drop_spilled = || {
        if let Some(p) = spilled {
            let _ = std::fs::remove_file(p);
        }
    };
    if command.sop_class != CT_IMAGE && command.sop_class != ENHANCED_CT {
        // Earlier results and screen captures: acknowledged, not kept, not even read.
        drop_spilled();
        return dimse::SUCCESS;
    }
    let limits = spooled_limits();
    let identity = match spilled {
        Some(p) => osteo_dicom::instance_identity(p, &limits),
        None => osteo_dicom::instance_identity_in(&held, &limits),
    };
    let identity = match identity {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, "instance refused: cannot read its header");
            drop_spilled();
            return dimse::CANNOT_UNDERSTAND;
        }
    };
    // The command's class is CT (checked above); the instance must say the same.
    if identity.modality != "CT" || identity.sop_class_uid != command.sop_class {
        // Another modality, or a class other than the command named: acknowledged, not kept.
        drop_spilled();
        return dimse::SUCCESS;
    }
    let study = key(&identity.study_uid);
    let size = match spilled {
        Some(p) => std::fs::metadata(p).map_or(0, |m| m.len()),
        None => held.len() as u64,
    };
    if !tracker.admit(&study, size) {
        drop_spilled();
        tracing::warn!(study = %study, "instance refused: the study has reached its instance or byte limit; it will not be graded");
        if let Err(e) = spool.mark_incomplete(&study) {
            tracing::error!(study = %study, error = %e, "cannot mark a study incomplete");
        }
        return dimse::OUT_OF_RESOURCES;
    }
    let sop = key(&identity.sop_instance_uid);
    let kept = match spilled {
        Some(p) => spool.keep(p, &study, &sop),
        None => spool.keep_bytes(&held, &study, &sop),
    };
    match kept {
        Ok(()) => {
            tracker.received(&study, size);
            dimse::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot keep a received instance");
            drop_spilled();
            dimse::OUT_OF_RESOURCES
        }
    }
}

/// The limits an instance's header is read under: any size (the instance size limit applied
/// as it arrived).
pub(crate) fn spooled_limits() -> osteo_dicom::IngestLimits {
    osteo_dicom::IngestLimits {
        max_file_bytes: u64::MAX >> 1,
        ..Default::default()
    }
}

/// Data set bytes held in memory before an instance spills to a file in the spool.
const HELD_BYTES: usize = 4 << 20;

/// A C-STORE data set being received.
struct Incoming<'s> {
    command: Command,
    context: u8,
    /// File meta and data set, while they fit in [`HELD_BYTES`].
    held: Vec<u8>,
    /// The spool file (and its path) once they did not.
    spilled: Option<(PathBuf, tokio::fs::File)>,
    reservation: Reservation<'s>,
    bytes: u64,
    /// The status already decided (the rest of the data set is read and dropped).
    refused: Option<u16>,
}

impl Incoming<'_> {
    /// Appends a fragment, within the budget and the instance size limit.
    async fn write(&mut self, spool: &Spool, data: &[u8], max_instance_bytes: u64) {
        if self.refused.is_some() {
            return;
        }
        self.bytes += data.len() as u64;
        if self.bytes > max_instance_bytes || !self.reservation.grow(data.len() as u64) {
            self.refused = Some(dimse::OUT_OF_RESOURCES);
            self.held = Vec::new();
            return;
        }
        if self.spilled.is_none() && self.held.len() + data.len() <= HELD_BYTES {
            self.held.extend_from_slice(data);
            return;
        }
        if self.spilled.is_none() {
            let path = spool.incoming();
            match tokio::fs::File::create(&path).await {
                Ok(mut f) => {
                    let held = std::mem::take(&mut self.held);
                    if let Err(e) = f.write_all(&held).await {
                        tracing::error!(error = %e, "cannot write a spool file");
                        self.refused = Some(dimse::OUT_OF_RESOURCES);
                    }
                    self.spilled = Some((path, f));
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot create a spool file");
                    self.refused = Some(dimse::OUT_OF_RESOURCES);
                    return;
                }
            }
        }
        if let Some((_, f)) = self.spilled.as_mut()
            && let Err(e) = f.write_all(data).await
        {
            tracing::error!(error = %e, "cannot write a spool file");
            self.refused = Some(dimse::OUT_OF_RESOURCES);
        }
    }
}

/// Sends one command set as a P-DATA PDU on presentation context `id`.
async fn respond<S>(
    assoc: &mut AsyncServerAssociation<S>,
    id: u8,
    command: Vec<u8>,
) -> Result<(), NodeError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    assoc
        .send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: id,
                value_type: PDataValueType::Command,
                is_last: true,
                data: command,
            }],
        })
        .await
        .map_err(|e| NodeError::Association(format!("send: {e}")))
}

/// The preamble, magic code and file meta group of a received data set.
pub fn file_meta(sop_class: &str, sop_instance: &str, ts: &str) -> Vec<u8> {
    fn ui(out: &mut Vec<u8>, element: u16, v: &str) {
        let mut b = v.as_bytes().to_vec();
        if b.len() % 2 == 1 {
            b.push(0);
        }
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&element.to_le_bytes());
        out.extend_from_slice(b"UI");
        out.extend_from_slice(&(b.len() as u16).to_le_bytes());
        out.extend_from_slice(&b);
    }
    let mut group = Vec::new();
    // FileMetaInformationVersion (OB): 00 01.
    group.extend_from_slice(&[2, 0, 1, 0]);
    group.extend_from_slice(b"OB");
    group.extend_from_slice(&[0, 0]);
    group.extend_from_slice(&2u32.to_le_bytes());
    group.extend_from_slice(&[0, 1]);
    ui(&mut group, 0x0002, sop_class);
    ui(&mut group, 0x0003, sop_instance);
    ui(&mut group, 0x0010, ts);
    ui(&mut group, 0x0012, osteo_dicom::IMPLEMENTATION_CLASS_UID);
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    out.extend_from_slice(&[2, 0, 0, 0]);
    out.extend_from_slice(b"UL");
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&(group.len() as u32).to_le_bytes());
    out.extend_from_slice(&group);
    out
}

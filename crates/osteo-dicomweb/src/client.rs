//! The DICOMweb client: one base URL (the service root, e.g. `https://pacs/dicom-web`), TLS
//! options for `https://`, an optional bearer token, and limits on every answer.

use crate::error::DicomWebError;
use crate::multipart;
use crate::tls::{self, TlsOptions};
use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// QIDO-RS results asked for per page.
const PAGE: usize = 500;
/// StudyInstanceUID (0020,000D) in DICOM JSON.
const STUDY_UID_TAG: &str = "0020000D";

/// Size and time limits of DICOMweb answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest QIDO-RS answer page, bytes.
    pub max_search_bytes: u64,
    /// Largest WADO-RS answer (one whole study), bytes.
    pub max_study_bytes: u64,
    /// Most studies one search may return.
    pub max_matches: usize,
    /// Time one call may take.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_search_bytes: 32 << 20,
            max_study_bytes: 2 << 30,
            max_matches: 1_000_000,
            timeout: Duration::from_secs(300),
        }
    }
}

/// A DICOMweb service.
#[derive(Clone)]
pub struct DicomWeb {
    base: String,
    token: Option<String>,
    limits: Limits,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for DicomWeb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of debug output.
        f.debug_struct("DicomWeb")
            .field("base", &self.base)
            .finish()
    }
}

impl DicomWeb {
    /// A client of the service at `base_url` (`http://` or `https://host:port/path`), sending
    /// `token` as a bearer token when given; `tls` applies to `https://` only.
    pub fn new(
        base_url: &str,
        token: Option<String>,
        tls: &TlsOptions,
        limits: Limits,
    ) -> Result<Self, DicomWebError> {
        let uri: http::Uri = base_url
            .parse()
            .map_err(|_| DicomWebError::Url("not a URL".into()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(DicomWebError::Url(
                    "needs an http:// or https:// URL".into(),
                ));
            }
        };
        if uri.query().is_some() || uri.host().is_none() {
            return Err(DicomWebError::Url(
                "needs a host and no query string".into(),
            ));
        }
        if !https && tls.is_set() {
            return Err(DicomWebError::Url(
                "a CA or client certificate needs an https:// URL".into(),
            ));
        }
        // A plain-http client never uses its TLS configuration: no roots are loaded for it.
        let config = if https {
            tls::client_config(tls)?
        } else {
            tls::unused_config()?
        };
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            base: base_url.trim_end_matches('/').to_string(),
            token,
            limits,
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// QIDO-RS: the StudyInstanceUIDs of the studies matching `query` (attribute keyword or
    /// tag = value pairs such as `ModalitiesInStudy=CT`), in the server's order, every page.
    pub async fn search_studies(
        &self,
        query: &[(String, String)],
    ) -> Result<Vec<String>, DicomWebError> {
        const REQUEST: &str = "QIDO-RS search";
        check_keys(REQUEST, query)?;
        let mut uids = Vec::new();
        loop {
            let mut q = pairs(query);
            q.push(format!("limit={PAGE}"));
            q.push(format!("offset={}", uids.len()));
            q.push(format!("includefield={STUDY_UID_TAG}"));
            let path = format!("/studies?{}", q.join("&"));
            let (status, _, body) = self
                .call(
                    REQUEST,
                    Method::GET,
                    &path,
                    "application/dicom+json",
                    None,
                    self.limits.max_search_bytes,
                )
                .await?;
            let page = if status == 204 || body.is_empty() {
                Vec::new()
            } else {
                study_uids(&body).map_err(|message| DicomWebError::Protocol {
                    request: REQUEST,
                    message,
                })?
            };
            let n = page.len();
            // A PACS that ignores `offset` answers the first page again and again: a full page
            // of studies already listed ends the search instead of looping to the match limit.
            let previous = &uids[uids.len().saturating_sub(PAGE)..];
            if n == PAGE && !previous.is_empty() && page.iter().all(|u| previous.contains(u)) {
                return Err(DicomWebError::Protocol {
                    request: REQUEST,
                    message: format!(
                        "the server answered offset={} with studies it had already listed: it \
                         ignores QIDO-RS paging; narrow the query to fewer than {PAGE} matches",
                        uids.len()
                    ),
                });
            }
            uids.extend(page);
            if uids.len() > self.limits.max_matches {
                return Err(DicomWebError::TooMany {
                    request: REQUEST,
                    limit: self.limits.max_matches as u64,
                });
            }
            if n < PAGE {
                return Ok(uids);
            }
        }
    }

    /// QIDO-RS: the series of a study matching `query` (for example `Modality=CT`), each as its
    /// DICOM JSON object, with the attributes in `include` (keywords or tags) asked for too.
    pub async fn search_series(
        &self,
        study_uid: &str,
        query: &[(String, String)],
        include: &[&str],
    ) -> Result<Vec<serde_json::Value>, DicomWebError> {
        const REQUEST: &str = "QIDO-RS series search";
        check_uid(REQUEST, "StudyInstanceUID", study_uid)?;
        check_keys(REQUEST, query)?;
        let mut q = pairs(query);
        q.extend(
            include
                .iter()
                .map(|f| format!("includefield={}", encode(f))),
        );
        let (status, _, body) = self
            .call(
                REQUEST,
                Method::GET,
                &format!("/studies/{study_uid}/series?{}", q.join("&")),
                "application/dicom+json",
                None,
                self.limits.max_search_bytes,
            )
            .await?;
        if status == 204 || body.is_empty() {
            return Ok(Vec::new());
        }
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(serde_json::Value::Array(items)) => Ok(items),
            _ => Err(DicomWebError::Protocol {
                request: REQUEST,
                message: "the answer is not a DICOM JSON array".into(),
            }),
        }
    }

    /// WADO-RS: every instance of one series as DICOM Part-10 bytes (views of the one answer
    /// body, not copies), the answer at most `max_bytes` (and within the client's
    /// `max_study_bytes`).
    pub async fn retrieve_series(
        &self,
        study_uid: &str,
        series_uid: &str,
        max_bytes: u64,
    ) -> Result<Vec<Bytes>, DicomWebError> {
        const REQUEST: &str = "WADO-RS retrieve";
        check_uid(REQUEST, "SeriesInstanceUID", series_uid)?;
        self.retrieve(
            REQUEST,
            study_uid,
            &format!("/series/{series_uid}"),
            max_bytes,
        )
        .await
    }

    /// WADO-RS: every instance of a study as DICOM Part-10 bytes.
    pub async fn retrieve_study(&self, study_uid: &str) -> Result<Vec<Bytes>, DicomWebError> {
        self.retrieve("WADO-RS retrieve", study_uid, "", u64::MAX)
            .await
    }

    /// WADO-RS of `/studies/{study_uid}{rest}`: the instances of the multipart answer.
    async fn retrieve(
        &self,
        request: &'static str,
        study_uid: &str,
        rest: &str,
        max_bytes: u64,
    ) -> Result<Vec<Bytes>, DicomWebError> {
        check_uid(request, "StudyInstanceUID", study_uid)?;
        let limit = max_bytes.min(self.limits.max_study_bytes);
        let protocol = |message: &str| DicomWebError::Protocol {
            request,
            message: message.into(),
        };
        self.within_time(request, async {
            let answer = self
                .send(
                    request,
                    Method::GET,
                    &format!("/studies/{study_uid}{rest}"),
                    "multipart/related; type=\"application/dicom\"",
                    None,
                    limit,
                )
                .await?;
            let boundary = multipart::boundary(&answer.content_type)
                .ok_or_else(|| protocol("the answer is not multipart/related with a boundary"))?;
            // The parts are split off as the body arrives: the answer is held once.
            let mut splitter = multipart::Splitter::new(&boundary);
            let mut parts = Vec::new();
            read_body(answer.body, request, limit, |data| {
                let done = splitter
                    .push(data)
                    .ok_or_else(|| protocol("the multipart answer is malformed"))?;
                parts.extend(done);
                Ok(())
            })
            .await?;
            if !splitter.finished() {
                return Err(protocol("the multipart answer is malformed"));
            }
            Ok(parts)
        })
        .await
    }

    /// STOW-RS: stores DICOM Part-10 instances; every one must be accepted.
    pub async fn store(&self, instances: &[Vec<u8>]) -> Result<(), DicomWebError> {
        const REQUEST: &str = "STOW-RS store";
        let (body, content_type) = multipart::dicom_body(instances);
        let (status, _, answer) = self
            .call(
                REQUEST,
                Method::POST,
                "/studies",
                "application/dicom+json",
                Some((body, content_type)),
                self.limits.max_search_bytes,
            )
            .await?;
        // 200: all stored. The answer's FailedSOPSequence (0008,1198) lists refused instances.
        let failed = serde_json::from_slice::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| v.get("00081198")?.get("Value")?.as_array().map(Vec::len))
            .unwrap_or(0);
        if status != 200 || failed > 0 {
            return Err(DicomWebError::Protocol {
                request: REQUEST,
                message: format!(
                    "the server refused {failed} of {} instance(s) (HTTP {status})",
                    instances.len()
                ),
            });
        }
        Ok(())
    }

    /// One HTTP exchange within the time limit; the body is read up to `limit` bytes.
    async fn call(
        &self,
        request: &'static str,
        method: Method,
        path: &str,
        accept: &str,
        body: Option<(Vec<u8>, String)>,
        limit: u64,
    ) -> Result<(u16, String, Bytes), DicomWebError> {
        self.within_time(request, async {
            let answer = self
                .send(request, method, path, accept, body, limit)
                .await?;
            // The body goes into one buffer as its frames arrive (sized up front when the
            // length is declared), each frame dropped once copied.
            let mut buf = Vec::with_capacity(answer.declared.unwrap_or(0) as usize);
            let (status, content_type) = (answer.status, answer.content_type.clone());
            read_body(answer.body, request, limit, |data| {
                buf.extend_from_slice(data);
                Ok(())
            })
            .await?;
            Ok((status, content_type, Bytes::from(buf)))
        })
        .await
    }

    /// `exchange` within the client's time limit.
    async fn within_time<T>(
        &self,
        request: &'static str,
        exchange: impl std::future::Future<Output = Result<T, DicomWebError>>,
    ) -> Result<T, DicomWebError> {
        tokio::time::timeout(self.limits.timeout, exchange)
            .await
            .map_err(|_| DicomWebError::Transport {
                request,
                message: format!("no answer within {:?}", self.limits.timeout),
            })?
    }

    /// Sends one request; the answer's status is a success and its declared length (if any)
    /// at most `limit`; its body, limited to `limit` bytes, is still to be read.
    async fn send(
        &self,
        request: &'static str,
        method: Method,
        path: &str,
        accept: &str,
        body: Option<(Vec<u8>, String)>,
        limit: u64,
    ) -> Result<Answer, DicomWebError> {
        let transport = |message: String| DicomWebError::Transport { request, message };
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::ACCEPT, accept);
        if let Some(token) = &self.token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let content = match body {
            Some((bytes, content_type)) => {
                builder = builder.header(header::CONTENT_TYPE, content_type);
                Bytes::from(bytes)
            }
            None => Bytes::new(),
        };
        let req = builder
            .body(Full::new(content))
            .map_err(|e| transport(e.to_string()))?;
        let response = self
            .client
            .request(req)
            .await
            .map_err(|e| match tls::tls_failure(&e) {
                Some(message) => DicomWebError::Handshake { request, message },
                None => transport(osteo_core::error::chain(&e)),
            })?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(DicomWebError::Status { request, status });
        }
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let declared = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit) {
            return Err(DicomWebError::TooLarge { request, limit });
        }
        Ok(Answer {
            status,
            content_type,
            declared,
            body: Limited::new(
                response.into_body(),
                usize::try_from(limit).unwrap_or(usize::MAX),
            ),
        })
    }
}

/// The first value of attribute `tag` (8 hex digits) of a DICOM JSON object, as text.
pub fn attribute<'a>(object: &'a serde_json::Value, tag: &str) -> Option<&'a str> {
    object.get(tag)?.get("Value")?.get(0)?.as_str()
}

/// The StudyInstanceUIDs of a QIDO-RS JSON answer.
fn study_uids(body: &[u8]) -> Result<Vec<String>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| "the answer is not DICOM JSON".to_string())?;
    let items = v
        .as_array()
        .ok_or_else(|| "the answer is not a JSON array".to_string())?;
    items
        .iter()
        .map(|item| {
            item.get(STUDY_UID_TAG)
                .and_then(|a| a.get("Value")?.get(0)?.as_str())
                .filter(|uid| valid_uid(uid))
                .map(str::to_string)
                .ok_or_else(|| "a match has no valid StudyInstanceUID (0020,000D)".to_string())
        })
        .collect()
}

/// Whether `uid` is a DICOM UID: digits and dots, at most 64 characters.
pub fn valid_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && !uid.starts_with('.')
        && !uid.ends_with('.')
}

/// Query keys must be attribute keywords or tags.
fn check_keys(request: &'static str, query: &[(String, String)]) -> Result<(), DicomWebError> {
    for (key, _) in query {
        if key.is_empty() || key.len() > 64 || !key.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(DicomWebError::Protocol {
                request,
                message: "a query key must be an attribute keyword or tag".into(),
            });
        }
    }
    Ok(())
}

fn check_uid(request: &'static str, attribute: &str, uid: &str) -> Result<(), DicomWebError> {
    if valid_uid(uid) {
        Ok(())
    } else {
        Err(DicomWebError::Protocol {
            request,
            message: format!("the {attribute} is not a valid UID (digits and dots, at most 64)"),
        })
    }
}

/// `key=value` query parameters, values percent-encoded.
fn pairs(query: &[(String, String)]) -> Vec<String> {
    query
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect()
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An answer whose status and declared length were checked, its body still to be read.
struct Answer {
    status: u16,
    content_type: String,
    declared: Option<u64>,
    body: Limited<hyper::body::Incoming>,
}

/// Reads `body` frame by frame, handing each frame's bytes to `take` and dropping the frame.
async fn read_body(
    mut body: Limited<hyper::body::Incoming>,
    request: &'static str,
    limit: u64,
    mut take: impl FnMut(&[u8]) -> Result<(), DicomWebError>,
) -> Result<(), DicomWebError> {
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame
            .map_err(|e| body_error(request, limit, e))?
            .into_data()
        {
            take(&data)?;
        }
    }
    Ok(())
}

/// The error of a body that failed while read: over `limit`, or the transport's.
fn body_error(
    request: &'static str,
    limit: u64,
    e: Box<dyn std::error::Error + Send + Sync>,
) -> DicomWebError {
    if e.is::<http_body_util::LengthLimitError>() {
        DicomWebError::TooLarge { request, limit }
    } else {
        DicomWebError::Transport {
            request,
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_uids_and_query_values_are_checked() {
        let new = |url: &str, tls: &TlsOptions| DicomWeb::new(url, None, tls, Limits::default());
        let plain = TlsOptions::default();
        assert!(new("http://127.0.0.1:8042/dicom-web", &plain).is_ok());
        for bad in ["ftp://x/", "not a url", "http://h/p?x=1"] {
            assert!(new(bad, &plain).is_err(), "{bad}");
        }
        let ca = TlsOptions {
            ca_pem: Some(b"-----BEGIN CERTIFICATE-----".to_vec()),
            identity: None,
        };
        let e = new("http://pacs/dicom-web", &ca).expect_err("TLS options on http");
        assert!(e.to_string().contains("needs an https:// URL"), "{e}");
        assert!(valid_uid("1.2.840.10008.1.2"));
        for bad in ["", "1..2/../x", "1.2.", "a.b", &"1".repeat(65)] {
            assert!(!valid_uid(bad), "{bad}");
        }
        assert_eq!(encode("20240101-20241231"), "20240101-20241231");
        assert_eq!(encode("A B&c=d"), "A%20B%26c%3Dd");
    }

    #[test]
    fn qido_answers_are_parsed_or_refused() {
        let ok = br#"[{"0020000D":{"vr":"UI","Value":["1.2.3"]}},{"0020000D":{"vr":"UI","Value":["1.2.4"]}}]"#;
        assert_eq!(study_uids(ok).expect("uids"), ["1.2.3", "1.2.4"]);
        assert!(study_uids(b"{}").is_err());
        assert!(study_uids(br#"[{"0020000D":{"vr":"UI","Value":["../x"]}}]"#).is_err());
    }

    #[test]
    fn transient_errors_are_told_apart() {
        let status = |status| DicomWebError::Status {
            request: "x",
            status,
        };
        assert!(status(503).is_transient() && status(429).is_transient());
        assert!(!status(404).is_transient() && !status(400).is_transient());
    }
}

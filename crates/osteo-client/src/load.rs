//! A bounded Classify load: the study uploaded once, a fixed number of requests from
//! concurrent clients (each with its own connection), every response's status counted and
//! every success's latency kept.

use crate::affinity;
use crate::connect::{Credentials, connect};
use crate::error::{ClientError, code_name};
use crate::grade::{Choice, Subject};
use crate::upload::{read_path, upload};
use osteo_proto::v1 as pb;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What a load run sends.
#[derive(Debug, Clone)]
pub struct Load {
    /// Concurrent clients.
    pub clients: usize,
    /// Total requests, split evenly between the clients.
    pub requests: usize,
    /// Stop sending after this long.
    pub max_time: Duration,
}

/// What a load run measured.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Latencies of the successful requests, in milliseconds.
    pub served_ms: Vec<f64>,
    /// Responses by status code name.
    pub codes: BTreeMap<&'static str, usize>,
    /// Wall time of the run (the warm-up request excluded).
    pub wall: Duration,
}

/// Runs `load` Classify requests of `subject` (its study uploaded once and classified by
/// handle, every call with one affinity key so a hashing balancer keeps them on the replica
/// that holds the study; deleted at the end) against the server at `url`.
pub async fn classify(
    url: &str,
    credentials: &Credentials,
    choice: &Choice,
    subject: &Subject<'_>,
    load: &Load,
) -> Result<Measured, ClientError> {
    let mut first = connect(url, credentials).await?;
    let key = affinity::new_key();
    let study = match subject.dicom {
        Some(path) => Some(
            upload(&mut first, read_path(path)?, Some(&key))
                .await?
                .study,
        ),
        None => None,
    };
    let request = pb::ClassifyRequest {
        study: study.clone().map(|handle| pb::StudyRef {
            source: Some(pb::study_ref::Source::Study(handle)),
        }),
        clinical: Some(subject.clinical),
        model: choice.model.clone(),
        backend: choice.backend.clone(),
        clinical_from_dicom: subject.clinical_from_dicom,
        dicom_outputs: false,
        fhir_outputs: false,
        model_version: choice.version.clone(),
    };
    // Warm-up: one request, not counted.
    first
        .classify(affinity::request(request.clone(), Some(&key))?)
        .await?;
    let deadline = Instant::now() + load.max_time;
    let start = Instant::now();
    let mut tasks = Vec::new();
    let clients = load.clients.max(1);
    for c in 0..clients {
        let share = load.requests / clients + usize::from(c < load.requests % clients);
        let mut client = connect(url, credentials).await?;
        let request = affinity::request(request.clone(), Some(&key))?;
        let metadata = request.metadata().clone();
        let request = request.into_inner();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(share);
            for _ in 0..share {
                if Instant::now() >= deadline {
                    break;
                }
                let t = Instant::now();
                let r = client
                    .classify(tonic::Request::from_parts(
                        metadata.clone(),
                        Default::default(),
                        request.clone(),
                    ))
                    .await;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                out.push((r.map(|_| ()).map_err(|s| s.code()), ms));
            }
            out
        }));
    }
    let mut served_ms = Vec::new();
    let mut codes: BTreeMap<&'static str, usize> = BTreeMap::new();
    for t in tasks {
        let results = t
            .await
            .map_err(|e| ClientError::Answer(format!("a client task failed: {e}")))?;
        for (r, ms) in results {
            match r {
                Ok(()) => {
                    *codes.entry("OK").or_default() += 1;
                    served_ms.push(ms);
                }
                Err(code) => *codes.entry(code_name(code)).or_default() += 1,
            }
        }
    }
    let wall = start.elapsed();
    if let Some(handle) = study
        && let Ok(r) = affinity::request(pb::DeleteStudyRequest { study: handle }, Some(&key))
    {
        let _ = first.delete_study(r).await;
    }
    Ok(Measured {
        served_ms,
        codes,
        wall,
    })
}

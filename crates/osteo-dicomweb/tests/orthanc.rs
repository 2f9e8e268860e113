//! The client against a real PACS: Orthanc with its DICOMweb plugin (Debian `orthanc`,
//! `orthanc-dicomweb`, installed by `scripts/setup.sh`), started on loopback ports with a
//! throw-away storage folder. Phantom studies are stored with STOW-RS, found with QIDO-RS and
//! retrieved with WADO-RS byte for byte.

use osteo_dicomweb::{DicomWeb, DicomWebError, Limits, TlsOptions};
use osteo_phantom::{PhantomSpec, SeriesIdentity, TScoreModel, phantom_volume, write_series};
use osteo_test_support::orthanc::Orthanc;
use std::path::Path;

/// A phantom study: its StudyInstanceUID and its files' bytes.
fn phantom(dir: &Path, index: u64) -> (String, Vec<Vec<u8>>) {
    let patient = TScoreModel::default().patient(9, index);
    let (_, volume) = phantom_volume(&patient, &PhantomSpec::default());
    let identity = SeriesIdentity::for_patient(&patient);
    let files = write_series(&volume, &identity, dir).expect("write series");
    let bytes = files
        .iter()
        .map(|f| std::fs::read(f).expect("read"))
        .collect();
    (identity.study_uid, bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_search_and_retrieve_against_orthanc() {
    let orthanc = Orthanc::start().expect("Orthanc");
    let pacs = orthanc.client().expect("client");
    let dir = tempfile::tempdir().expect("tempdir");
    let (a_uid, a) = phantom(&dir.path().join("a"), 0);
    let (b_uid, b) = phantom(&dir.path().join("b"), 1);
    assert!(
        pacs.search_studies(&[])
            .await
            .expect("empty search")
            .is_empty()
    );

    pacs.store(&a).await.expect("store a");
    pacs.store(&b).await.expect("store b");
    let mut all = pacs.search_studies(&[]).await.expect("search");
    all.sort();
    let mut want = vec![a_uid.clone(), b_uid.clone()];
    want.sort();
    assert_eq!(all, want);
    let query = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
    assert_eq!(
        pacs.search_studies(&query("StudyInstanceUID", &a_uid))
            .await
            .expect("by uid"),
        std::slice::from_ref(&a_uid)
    );
    assert_eq!(
        pacs.search_studies(&query("ModalitiesInStudy", "CT"))
            .await
            .expect("CT")
            .len(),
        2
    );
    assert!(
        pacs.search_studies(&query("ModalitiesInStudy", "MR"))
            .await
            .expect("MR")
            .is_empty()
    );

    // WADO-RS gives back exactly the files that were stored.
    let mut got = pacs.retrieve_study(&a_uid).await.expect("retrieve");
    let mut sent = a.clone();
    got.sort();
    sent.sort();
    assert_eq!(got.len(), sent.len());
    assert!(
        got == sent,
        "the retrieved instances differ from the stored ones"
    );

    // Errors: an unknown study, a bad UID, an answer over the limit, a query key that is not
    // an attribute, an instance the PACS refuses.
    let err = pacs.retrieve_study("1.2.3.4").await.expect_err("unknown");
    assert!(
        matches!(err, DicomWebError::Status { status: 404, .. }),
        "{err}"
    );
    assert!(!err.is_transient());
    let err = pacs.retrieve_study("1.2/../3").await.expect_err("bad uid");
    assert!(matches!(err, DicomWebError::Protocol { .. }), "{err}");
    let small = DicomWeb::new(
        &orthanc.url,
        None,
        &TlsOptions::default(),
        Limits {
            max_study_bytes: 1 << 20,
            ..Limits::default()
        },
    )
    .expect("client");
    let err = small.retrieve_study(&a_uid).await.expect_err("too large");
    assert!(matches!(err, DicomWebError::TooLarge { .. }), "{err}");
    let err = pacs
        .search_studies(&query("Study&Date", "x"))
        .await
        .expect_err("bad key");
    assert!(matches!(err, DicomWebError::Protocol { .. }), "{err}");
    let err = pacs
        .store(&[b"not DICOM".to_vec()])
        .await
        .expect_err("refused");
    eprintln!("storing garbage: {err}");

    // A PACS that is not there is a transient error.
    drop(orthanc);
    let err = pacs.search_studies(&[]).await.expect_err("gone");
    assert!(err.is_transient(), "{err}");
}

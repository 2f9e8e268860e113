//! Authenticated clients: bearer tokens made with `osteo token new`, connections with or
//! without TLS, and every RPC that takes a study, for the isolation checks.

use super::{by_handle, clinical};
use osteo_proto::v1 as pb;
use std::process::Command;
use tonic::Code;

/// Sends `authorization: Bearer <token>` with every call.
#[derive(Clone)]
pub struct Bearer(pub Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            r.metadata_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("ascii"),
            );
        }
        Ok(r)
    }
}

pub type Authed = osteo_proto::v1::osteo_service_client::OsteoServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;

/// A client of `url` (TLS with `tls`) sending `token`.
pub async fn connect_as(
    url: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
    token: Option<&str>,
) -> Authed {
    try_connect_as(url, tls, token).await.expect("connect")
}

/// A client of `url` (TLS with `tls`) sending `token`, or why it cannot connect.
pub async fn try_connect_as(
    url: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
    token: Option<&str>,
) -> Result<Authed, tonic::transport::Error> {
    let mut endpoint = tonic::transport::Channel::from_shared(url.to_string()).expect("url");
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    let channel = endpoint.connect().await?;
    Ok(
        osteo_proto::v1::osteo_service_client::OsteoServiceClient::with_interceptor(
            channel,
            Bearer(token.map(str::to_string)),
        )
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20),
    )
}

/// `osteo token new`; returns the token (the last line of stdout).
pub fn new_token(file: &std::path::Path, principal: &str, role: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_osteo"))
        .args([
            "token",
            "new",
            "--principal",
            principal,
            "--role",
            role,
            "--tokens-file",
        ])
        .arg(file)
        .output()
        .expect("run osteo token new");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let token = stdout.lines().last().expect("token line").to_string();
    assert!(token.starts_with("ost_") && token.len() == 68, "{token}");
    let file_text = std::fs::read_to_string(file).expect("tokens file");
    assert!(
        !file_text.contains(&token),
        "the tokens file holds digests only"
    );
    token
}

/// GetStudy, Classify, Explain, CompareBackends and DeleteStudy on `handle`, in that order.
pub async fn every_study_rpc(c: &mut Authed, handle: &str) -> Vec<(&'static str, (Code, String))> {
    let study = || by_handle(handle);
    vec![
        (
            "GetStudy",
            code_of(
                c.get_study(pb::GetStudyRequest {
                    study: handle.into(),
                })
                .await,
            ),
        ),
        (
            "Classify",
            code_of(
                c.classify(pb::ClassifyRequest {
                    study: study(),
                    clinical: Some(clinical()),
                    ..Default::default()
                })
                .await,
            ),
        ),
        (
            "Explain",
            code_of(
                c.explain(pb::ExplainRequest {
                    study: study(),
                    clinical: Some(clinical()),
                    ..Default::default()
                })
                .await,
            ),
        ),
        (
            "CompareBackends",
            code_of(
                c.compare_backends(pb::CompareBackendsRequest {
                    study: study(),
                    clinical: Some(clinical()),
                    ..Default::default()
                })
                .await,
            ),
        ),
        (
            "DeleteStudy",
            code_of(
                c.delete_study(pb::DeleteStudyRequest {
                    study: handle.into(),
                })
                .await,
            ),
        ),
    ]
}

pub fn code_of<T>(r: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    match r {
        Ok(_) => (Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_string()),
    }
}

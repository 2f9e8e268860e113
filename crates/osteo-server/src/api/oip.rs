//! The Open Inference Protocol (KServe v2) over gRPC: `inference.GRPCInferenceService` on the
//! same port as osteo.v1, each method a call of the engine's OIP operations (the REST front
//! door is its sibling over the same operations).

use crate::api::grpc::serve;
use crate::auth::{Credential, Principal};
use crate::engine::{Call, Engine, Rpc};
use osteo_proto::inference as v2;
use osteo_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use std::time::Duration;
use tonic::{Request, Response, Status};

pub use crate::engine::oip::EXTENSIONS;

/// The v2 service over the engine.
#[derive(Clone)]
pub struct Inference {
    engine: Engine,
}

impl Inference {
    /// The v2 service over `engine` (the models, admission and audit log osteo.v1 uses).
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }
}

/// The answers of a ModelStreamInfer stream.
type InferStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<v2::ModelStreamInferResponse, Status>> + Send>,
>;

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(
        &self,
        request: Request<v2::ServerLiveRequest>,
    ) -> Result<Response<v2::ServerLiveResponse>, Status> {
        serve(&self.engine, Rpc::ServerLive, request, |_, _, _| {
            Box::pin(async { Ok(v2::ServerLiveResponse { live: true }) })
        })
        .await
    }

    async fn server_ready(
        &self,
        request: Request<v2::ServerReadyRequest>,
    ) -> Result<Response<v2::ServerReadyResponse>, Status> {
        serve(&self.engine, Rpc::ServerReady, request, |e, _, _| {
            Box::pin(async move { Ok(e.server_ready()) })
        })
        .await
    }

    async fn model_ready(
        &self,
        request: Request<v2::ModelReadyRequest>,
    ) -> Result<Response<v2::ModelReadyResponse>, Status> {
        serve(&self.engine, Rpc::ModelReady, request, |e, c, req| {
            Box::pin(async move { e.model_ready(c, &req.name, &req.version) })
        })
        .await
    }

    async fn server_metadata(
        &self,
        request: Request<v2::ServerMetadataRequest>,
    ) -> Result<Response<v2::ServerMetadataResponse>, Status> {
        serve(&self.engine, Rpc::ServerMetadata, request, |e, _, _| {
            Box::pin(async move { Ok(e.server_metadata()) })
        })
        .await
    }

    async fn model_metadata(
        &self,
        request: Request<v2::ModelMetadataRequest>,
    ) -> Result<Response<v2::ModelMetadataResponse>, Status> {
        serve(&self.engine, Rpc::ModelMetadata, request, |e, c, req| {
            Box::pin(async move { e.model_metadata(c, &req.name, &req.version) })
        })
        .await
    }

    async fn model_infer(
        &self,
        request: Request<v2::ModelInferRequest>,
    ) -> Result<Response<v2::ModelInferResponse>, Status> {
        serve(&self.engine, Rpc::ModelInfer, request, |e, c, req| {
            Box::pin(e.model_infer(c, req))
        })
        .await
    }

    type ModelStreamInferStream = InferStream;

    /// Each request of the stream is a call of its own by the stream's principal (admitted,
    /// counted and audited one by one), answered in order; a failed request is answered with
    /// its error message and the stream goes on. A stream opened with a bearer token re-checks
    /// it every second and before every request: revoked, the stream ends UNAUTHENTICATED. A
    /// stream ends DEADLINE_EXCEEDED after `server.max_stream_s`.
    async fn model_stream_infer(
        &self,
        request: Request<tonic::Streaming<v2::ModelInferRequest>>,
    ) -> Result<Response<InferStream>, Status> {
        let principal = request.extensions().get::<Principal>().cloned();
        let credential = request.extensions().get::<Credential>().cloned();
        let peer = request.remote_addr();
        let affinity = request
            .metadata()
            .get(crate::engine::AFFINITY_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let lifetime = Duration::from_secs(self.engine.state().settings.server.max_stream_s);
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let engine = self.engine.clone();
        tokio::spawn(async move {
            let ends = tokio::time::Instant::now() + lifetime;
            let mut recheck = tokio::time::interval(Duration::from_secs(1));
            let still_valid = || credential.as_ref().map_or(Ok(()), Credential::recheck);
            loop {
                let next = tokio::select! {
                    m = inbound.message() => m,
                    _ = recheck.tick() => match still_valid() {
                        Ok(()) => continue,
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    },
                    () = tokio::time::sleep_until(ends) => {
                        let _ = tx
                            .send(Err(Status::deadline_exceeded(format!(
                                "the stream reached its lifetime limit (server.max_stream_s, \
                                 {} s); open a new stream",
                                lifetime.as_secs()
                            ))))
                            .await;
                        return;
                    }
                };
                let message = match next {
                    Ok(Some(m)) => m,
                    Ok(None) => return,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                if let Err(status) = still_valid() {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                let call = Call::new(
                    Rpc::ModelStreamInfer,
                    principal.clone(),
                    peer,
                    engine.request_timeout(),
                )
                .with_affinity(affinity.as_deref());
                let answer = match engine
                    .run(call, |e, c| Box::pin(e.model_infer(c, message)))
                    .await
                {
                    Ok(r) => v2::ModelStreamInferResponse {
                        error_message: String::new(),
                        infer_response: Some(r),
                    },
                    Err(e) => v2::ModelStreamInferResponse {
                        error_message: Status::from(e).message().to_string(),
                        infer_response: None,
                    },
                };
                if tx.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn model_config(
        &self,
        request: Request<v2::ModelConfigRequest>,
    ) -> Result<Response<v2::ModelConfigResponse>, Status> {
        serve(&self.engine, Rpc::ModelConfig, request, |e, c, req| {
            Box::pin(async move { e.model_config(c, &req.name, &req.version) })
        })
        .await
    }

    async fn model_statistics(
        &self,
        request: Request<v2::ModelStatisticsRequest>,
    ) -> Result<Response<v2::ModelStatisticsResponse>, Status> {
        serve(&self.engine, Rpc::ModelStatistics, request, |e, c, req| {
            Box::pin(async move { e.model_statistics(c, &req.name, &req.version) })
        })
        .await
    }

    async fn repository_model_load(
        &self,
        request: Request<v2::RepositoryModelLoadRequest>,
    ) -> Result<Response<v2::RepositoryModelLoadResponse>, Status> {
        serve(
            &self.engine,
            Rpc::RepositoryModelLoad,
            request,
            |e, c, req| {
                Box::pin(async move {
                    e.load_model(c, &req.model_name).await?;
                    Ok(v2::RepositoryModelLoadResponse {})
                })
            },
        )
        .await
    }

    async fn repository_model_unload(
        &self,
        request: Request<v2::RepositoryModelUnloadRequest>,
    ) -> Result<Response<v2::RepositoryModelUnloadResponse>, Status> {
        serve(
            &self.engine,
            Rpc::RepositoryModelUnload,
            request,
            |e, c, req| {
                Box::pin(async move {
                    e.unload_model(c, &req.model_name).await?;
                    Ok(v2::RepositoryModelUnloadResponse {})
                })
            },
        )
        .await
    }

    async fn repository_index(
        &self,
        request: Request<v2::RepositoryIndexRequest>,
    ) -> Result<Response<v2::RepositoryIndexResponse>, Status> {
        serve(&self.engine, Rpc::RepositoryIndex, request, |e, _, req| {
            Box::pin(async move { e.repository_index(req.ready) })
        })
        .await
    }
}

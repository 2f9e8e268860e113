//! The osteo.v1 front door: `osteo.v1.OsteoService` over gRPC, each method a call of the engine.

use crate::api::grpc::serve;
use crate::engine::{Engine, Rpc};
use crate::error::ServerError;
use osteo_proto::v1 as pb;
use osteo_proto::v1::osteo_service_server::OsteoService;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

/// A client stream's failure as the engine sees it.
fn stream_error<M>(m: Result<M, Status>) -> Result<M, ServerError> {
    m.map_err(|s| ServerError::InvalidArgument(format!("upload stream failed: {}", s.message())))
}

/// The gRPC service.
#[derive(Clone)]
pub struct Service {
    engine: Engine,
}

impl Service {
    /// The osteo.v1 service over `engine`.
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }
}

#[tonic::async_trait]
impl OsteoService for Service {
    async fn upload_study(
        &self,
        request: Request<Streaming<pb::UploadStudyRequest>>,
    ) -> Result<Response<pb::UploadStudyResponse>, Status> {
        serve(&self.engine, Rpc::UploadStudy, request, |e, c, stream| {
            Box::pin(e.upload(c, stream.map(stream_error)))
        })
        .await
    }

    async fn grade_study(
        &self,
        request: Request<Streaming<pb::GradeStudyRequest>>,
    ) -> Result<Response<pb::GradeStudyResponse>, Status> {
        serve(&self.engine, Rpc::GradeStudy, request, |e, c, stream| {
            Box::pin(e.grade_study(c, stream.map(stream_error)))
        })
        .await
    }

    async fn classify(
        &self,
        request: Request<pb::ClassifyRequest>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        serve(&self.engine, Rpc::Classify, request, |e, c, req| {
            Box::pin(e.classify(c, req))
        })
        .await
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        serve(&self.engine, Rpc::Explain, request, |e, c, req| {
            Box::pin(e.explain(c, req))
        })
        .await
    }

    async fn compare_backends(
        &self,
        request: Request<pb::CompareBackendsRequest>,
    ) -> Result<Response<pb::CompareBackendsResponse>, Status> {
        serve(&self.engine, Rpc::CompareBackends, request, |e, c, req| {
            Box::pin(e.compare_backends(c, req))
        })
        .await
    }

    async fn list_models(
        &self,
        request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        serve(&self.engine, Rpc::ListModels, request, |e, _, _| {
            Box::pin(e.list_models())
        })
        .await
    }

    async fn get_study(
        &self,
        request: Request<pb::GetStudyRequest>,
    ) -> Result<Response<pb::GetStudyResponse>, Status> {
        serve(&self.engine, Rpc::GetStudy, request, |e, c, req| {
            Box::pin(e.get_study(c, req))
        })
        .await
    }

    async fn delete_study(
        &self,
        request: Request<pb::DeleteStudyRequest>,
    ) -> Result<Response<pb::DeleteStudyResponse>, Status> {
        serve(&self.engine, Rpc::DeleteStudy, request, |e, c, req| {
            Box::pin(e.delete_study(c, req))
        })
        .await
    }

    async fn get_shadow_report(
        &self,
        request: Request<pb::GetShadowReportRequest>,
    ) -> Result<Response<pb::GetShadowReportResponse>, Status> {
        serve(&self.engine, Rpc::GetShadowReport, request, |e, c, req| {
            Box::pin(e.shadow_report(c, req))
        })
        .await
    }
}

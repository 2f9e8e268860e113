//! Studies and models: upload a study into the store, read its summary, delete it, list the
//! served models.

use super::{Call, Engine};
use crate::convert;
use crate::error::ServerError;
use crate::principal::{Principal, Role};
use crate::upload::{Upload, read_upload};
use osteo_proto::v1 as pb;
use tokio_stream::Stream;

/// The owner filter of a study lookup: admins reach any study for reading and deleting.
fn owner_filter(p: &Principal) -> Option<&str> {
    (!p.has(Role::Admin)).then_some(p.name.as_str())
}

impl Engine {
    /// UploadStudy: the messages of an upload (header, then chunks) read within the upload
    /// budgets, ingested and stored for the caller; answered with the study's summary and its
    /// quality gate.
    pub async fn upload<S>(
        &self,
        call: &mut Call,
        mut messages: S,
    ) -> Result<pb::UploadStudyResponse, ServerError>
    where
        S: Stream<Item = Result<pb::UploadStudyRequest, ServerError>> + Unpin + Send,
    {
        let state = &self.state;
        let owner = call.principal().name.clone();
        let holder = state.budget_holder(Some(call.principal()), call.peer());
        let (
            _,
            Upload {
                files,
                series_uid,
                held_bytes,
                slot,
            },
        ) = read_upload(state, &holder, &mut messages, |h: &pb::UploadHeader| {
            Ok(h.clone())
        })
        .await?;
        let study = state.ingest(files, series_uid, owner).await?;
        drop((held_bytes, slot));
        let (study, ttl) = state.store.insert(study);
        call.study(&study);
        let gates = state.gates(&study).await?;
        Ok(pb::UploadStudyResponse {
            summary: Some(convert::summary(&study, Some(ttl), &gates)),
        })
    }

    /// GetStudy: a stored study's summary (the caller's own; any study for an admin).
    pub async fn get_study(
        &self,
        call: &mut Call,
        req: pb::GetStudyRequest,
    ) -> Result<pb::GetStudyResponse, ServerError> {
        call.refers_to(&req.study);
        let (study, left) = self
            .state
            .store
            .get(&req.study, owner_filter(call.principal()))?;
        let gates = self.state.gates(&study).await?;
        Ok(pb::GetStudyResponse {
            summary: Some(convert::summary(&study, Some(left), &gates)),
        })
    }

    /// DeleteStudy: removes a stored study (the caller's own; any study for an admin).
    pub async fn delete_study(
        &self,
        call: &mut Call,
        req: pb::DeleteStudyRequest,
    ) -> Result<pb::DeleteStudyResponse, ServerError> {
        call.refers_to(&req.study);
        let freed_bytes = self
            .state
            .store
            .delete(&req.study, owner_filter(call.principal()))?;
        Ok(pb::DeleteStudyResponse { freed_bytes })
    }

    /// ListModels: every served model and the default.
    pub async fn list_models(&self) -> Result<pb::ListModelsResponse, ServerError> {
        let models = self.state.models()?;
        Ok(pb::ListModelsResponse {
            models: models.all().iter().map(convert::model).collect(),
            default_model: models.default_name().to_string(),
        })
    }
}

//! Studies and models: upload a study into the store, read its summary, delete it, list the
//! served models.

use super::{Call, Engine};
use crate::convert;
use crate::error::ServerError;
use crate::principal::{Principal, Role};
use crate::store::Study;
use crate::upload::{Framed, Upload, read_upload};
use osteo_proto::v1 as pb;
use tokio::sync::OwnedSemaphorePermit;
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
        let (owner, holder) = self.owner_and_holder(call);
        let (_, study, _) = self
            .ingest_stream(
                &mut messages,
                owner,
                &holder,
                false,
                |h: &pb::UploadHeader| Ok(h.clone()),
            )
            .await?;
        let (study, ttl) = state.store.insert(study);
        call.study(&study);
        let gates = state.gates(&study).await?;
        Ok(pb::UploadStudyResponse {
            summary: Some(convert::summary(&study, Some(ttl), &gates)),
        })
    }

    /// The caller's name (studies' owner) and who its buffered bytes count against.
    pub(super) fn owner_and_holder(&self, call: &Call) -> (String, String) {
        let owner = call.principal().name.clone();
        let holder = self
            .state
            .budget_holder(Some(call.principal()), call.peer());
        (owner, holder)
    }

    /// Reads a stream in upload framing under the upload budgets (`begin` checks its header
    /// before any file is read), takes an admission permit when `admit`, and ingests the files
    /// for `owner`; the upload's slot and bytes are given back once the study is decoded.
    /// Returns the stream's header, the (unstored) study and the permit.
    pub(super) async fn ingest_stream<S, M>(
        &self,
        messages: &mut S,
        owner: String,
        holder: &str,
        admit: bool,
        begin: impl FnOnce(&M::Header) -> Result<pb::UploadHeader, ServerError>,
    ) -> Result<(M::Header, Study, Option<OwnedSemaphorePermit>), ServerError>
    where
        S: Stream<Item = Result<M, ServerError>> + Unpin,
        M: Framed,
    {
        let state = &self.state;
        let (
            header,
            Upload {
                files,
                series_uid,
                held_bytes,
                slot,
            },
        ) = read_upload(state, holder, messages, begin).await?;
        let permit = if admit { Some(state.admit()?) } else { None };
        let study = state.ingest(files, series_uid, owner).await?;
        drop((held_bytes, slot));
        Ok((header, study, permit))
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
            models: models
                .all()
                .iter()
                .map(|m| pb::ModelDescriptor {
                    default_version: models
                        .get(m.name())
                        .is_ok_and(|d| d.version() == m.version()),
                    ..convert::model(m)
                })
                .collect(),
            default_model: models.default_name().to_string(),
        })
    }
}

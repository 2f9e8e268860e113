//! GradeStudy: a study uploaded and graded in one call — nothing stored, so any replica behind
//! any balancer can answer it and a failed call can simply be sent again.

use super::grading::compare_backends;
use super::{Call, Engine};
use crate::convert;
use crate::error::ServerError;
use osteo_proto::v1 as pb;
use std::sync::Arc;
use tokio_stream::Stream;

/// What the header asks for.
enum Action {
    Classify(pb::ClassifyRequest),
    Explain(pb::ExplainRequest),
    Compare(pb::CompareBackendsRequest),
}

impl Action {
    /// The header's action: exactly one, its `study` unset (the call's files are the study).
    fn of(header: &pb::GradeStudyHeader) -> Result<Self, ServerError> {
        use pb::grade_action::Action as A;
        let action = header
            .action
            .as_ref()
            .and_then(|a| a.action.clone())
            .ok_or_else(|| {
                ServerError::InvalidArgument(
                    "header.action is required: set classify, explain or compare".into(),
                )
            })?;
        let (name, study) = match &action {
            A::Classify(r) => ("classify", r.study.is_some()),
            A::Explain(r) => ("explain", r.study.is_some()),
            A::Compare(r) => ("compare", r.study.is_some()),
        };
        if study {
            return Err(ServerError::InvalidArgument(format!(
                "header.action.{name}.study must be unset: GradeStudy grades the files sent in \
                 this call"
            )));
        }
        Ok(match action {
            A::Classify(r) => Action::Classify(r),
            A::Explain(r) => Action::Explain(r),
            A::Compare(r) => Action::Compare(r),
        })
    }

    /// Checks what can be checked before any file arrives: the model, the backend(s) and the
    /// explained grade.
    fn check(&self, engine: &Engine, call: &mut Call) -> Result<(), ServerError> {
        match self {
            Action::Classify(r) => engine
                .resolve_exact(call, &r.model, &r.model_version, &r.backend)
                .map(|_| ()),
            Action::Explain(r) => {
                engine.resolve_exact(call, &r.model, &r.model_version, &r.backend)?;
                convert::grade_from(r.target).map(|_| ())
            }
            Action::Compare(r) => {
                let (model, _) = engine.resolve_exact(call, &r.model, &r.model_version, "")?;
                let model = model.as_ref();
                compare_backends(model, &r.backends).map(|_| ())
            }
        }
    }
}

impl Engine {
    /// GradeStudy: the header's action checked first, then the study's files read within the
    /// upload budgets, an admission permit taken, the study ingested (its decoded size reserved
    /// in the store as for an upload, released when the call ends) and the action run on it;
    /// answered with the action's result and the study's summary with its quality gate.
    pub async fn grade_study<S>(
        &self,
        call: &mut Call,
        mut messages: S,
    ) -> Result<pb::GradeStudyResponse, ServerError>
    where
        S: Stream<Item = Result<pb::GradeStudyRequest, ServerError>> + Unpin + Send,
    {
        let (owner, holder) = self.owner_and_holder(call);
        let mut action = None;
        let (_, study, _permit) = self
            .ingest_stream(
                &mut messages,
                owner,
                &holder,
                true,
                |h: &pb::GradeStudyHeader| {
                    let a = Action::of(h)?;
                    a.check(self, call)?;
                    action = Some(a);
                    Ok(h.upload.clone().unwrap_or_default())
                },
            )
            .await?;
        let action = action.ok_or_else(|| {
            ServerError::Internal("GradeStudy: the header's action was not kept".into())
        })?;
        let study = Arc::new(study);
        call.study(&study);
        let gates = self.state.gates(&study).await?;
        let summary = Some(convert::summary(&study, None, &gates));
        use pb::grade_study_response::Result as R;
        let result = match action {
            Action::Classify(r) => {
                R::Classification(self.classify_study(call, r, Some(study)).await?)
            }
            Action::Explain(r) => R::Explanation(self.explain_study(call, r, Some(study)).await?),
            Action::Compare(r) => R::Comparison(self.compare_study(call, r, Some(study)).await?),
        };
        Ok(pb::GradeStudyResponse {
            summary,
            result: Some(result),
        })
    }
}

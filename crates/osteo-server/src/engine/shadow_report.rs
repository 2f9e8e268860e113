//! GetShadowReport: every shadow pair in force with its counts, agreement figures and
//! bootstrap intervals, computed off the async threads, one report at a time (a concurrent
//! request is RESOURCE_EXHAUSTED).

use super::{Call, Engine};
use crate::error::ServerError;
use crate::state::blocking;
use crate::traffic::Interval;
use osteo_proto::v1 as pb;

/// Bootstrap resamples when a request names none.
const DEFAULT_RESAMPLES: u32 = 1000;
/// Most bootstrap resamples a request may ask for (each costs a pass over every window).
const MAX_RESAMPLES: u32 = 10_000;

fn interval(i: Interval) -> Option<pb::Interval> {
    Some(pb::Interval {
        estimate: i.estimate,
        low: i.low,
        high: i.high,
    })
}

impl Engine {
    /// GetShadowReport.
    pub async fn shadow_report(
        &self,
        _call: &mut Call,
        req: pb::GetShadowReportRequest,
    ) -> Result<pb::GetShadowReportResponse, ServerError> {
        let resamples = match req.resamples {
            0 => DEFAULT_RESAMPLES,
            n if n <= MAX_RESAMPLES => n,
            n => {
                return Err(ServerError::InvalidArgument(format!(
                    "resamples is {n}: ask for at most {MAX_RESAMPLES} (0 = {DEFAULT_RESAMPLES})"
                )));
            }
        };
        let permit = self
            .state
            .traffic
            .reporting
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                ServerError::ResourceExhausted(
                    "another shadow report is being computed; retry in a moment".into(),
                )
            })?;
        let pairs = self.state.traffic.pairs();
        let pairs = blocking(move || {
            // Held until the computation ends, even when the caller's deadline passed.
            let _permit = permit;
            Ok(pairs
                .iter()
                .map(|p| {
                    let r = p.stats.report(resamples as usize);
                    pb::ShadowPairReport {
                        model: p.primary.clone(),
                        shadow: p.shadow.clone(),
                        fraction: p.settings.fraction,
                        compared: r.compared,
                        dropped: r.dropped,
                        failed: r.failed,
                        disagreements: r.disagreements,
                        confusion: r.confusion.iter().flatten().copied().collect(),
                        max_abs_diff: r.max_abs_diff,
                        window: r.window as u64,
                        agreement: interval(r.agreement),
                        kappa: interval(r.kappa),
                        mean_abs_diff: interval(r.mean_abs_diff),
                        latency_ratio: interval(r.latency_ratio),
                    }
                })
                .collect())
        })
        .await?;
        Ok(pb::GetShadowReportResponse { pairs, resamples })
    }
}

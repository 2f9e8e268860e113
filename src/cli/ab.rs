//! `osteo ab`: live-traffic experiments on a server — the shadow pairs' agreement report.

use super::client::{Credentials, runtime};
use clap::{Args, Subcommand};
use osteo_client::retry::{retry, transient_status};
use osteo_proto::v1 as pb;

/// `osteo ab` subcommands.
#[derive(Debug, Subcommand)]
pub enum AbCommand {
    /// Print each shadow pair's counts and agreement with the primary (grade agreement, Cohen's
    /// kappa, probability differences, latency ratio, with 95% bootstrap intervals) and the
    /// confusion matrix of their grades.
    #[command(
        after_help = "Example:\n  osteo ab report --server http://127.0.0.1:50051\n\nThe pairs come from the server's [[shadow]] tables (docs/models.md)."
    )]
    Report(ReportArgs),
}

/// Arguments of `osteo ab report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Server URL, e.g. http://127.0.0.1:50051 or https://osteo.hospital.example:50051.
    #[arg(long, value_name = "URL")]
    server: String,
    #[command(flatten)]
    credentials: Credentials,
    /// Bootstrap resamples per interval (0 = the server's default, 1000).
    #[arg(long, default_value_t = 0, value_name = "N")]
    resamples: u32,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs an `osteo ab` subcommand.
pub fn run(cmd: AbCommand) -> anyhow::Result<()> {
    match cmd {
        AbCommand::Report(args) => report(args),
    }
}

fn report(args: ReportArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let client = osteo_client::connect(&args.server, &args.credentials.load()?).await?;
        let resamples = args.resamples;
        let r = retry(transient_status, || {
            let mut c = client.clone();
            async move {
                c.get_shadow_report(pb::GetShadowReportRequest { resamples })
                    .await
            }
        })
        .await
        .map_err(osteo_client::ClientError::from)?
        .into_inner();
        if args.json {
            println!("{}", serde_json::to_string(&json(&r))?);
            return Ok(());
        }
        if r.pairs.is_empty() {
            println!(
                "no shadow pairs are in force on this server (see [[shadow]] in docs/models.md)"
            );
        }
        for p in &r.pairs {
            print_pair(p, r.resamples);
        }
        Ok(())
    })
}

fn interval(i: &Option<pb::Interval>) -> String {
    let i = i.unwrap_or_default();
    format!("{:.3} [{:.3}, {:.3}]", i.estimate, i.low, i.high)
}

fn print_pair(p: &pb::ShadowPairReport, resamples: u32) {
    println!("{} -> {} (fraction {})", p.model, p.shadow, p.fraction);
    println!(
        "  compared {}  dropped {}  failed {}  disagreements {}",
        p.compared, p.dropped, p.failed, p.disagreements
    );
    if p.window == 0 {
        println!("  nothing compared yet");
        return;
    }
    println!(
        "  over the last {} comparisons (95% intervals, {} bootstrap resamples):",
        p.window, resamples
    );
    println!("    grade agreement   {}", interval(&p.agreement));
    println!("    Cohen's kappa     {}", interval(&p.kappa));
    println!("    mean max |dp|     {}", interval(&p.mean_abs_diff));
    println!("    latency ratio     {}", interval(&p.latency_ratio));
    println!("  max |dp| since start {:.4}", p.max_abs_diff);
    println!("  confusion (rows: primary, columns: shadow)");
    let names = ["normal", "osteopenia", "osteoporosis"];
    println!(
        "    {:<13} {:>8} {:>11} {:>13}",
        "", names[0], names[1], names[2]
    );
    for (i, name) in names.iter().enumerate() {
        let row: Vec<u64> = (0..3)
            .map(|j| p.confusion.get(i * 3 + j).copied().unwrap_or(0))
            .collect();
        println!(
            "    {:<13} {:>8} {:>11} {:>13}",
            name, row[0], row[1], row[2]
        );
    }
}

fn json(r: &pb::GetShadowReportResponse) -> serde_json::Value {
    let interval = |i: &Option<pb::Interval>| {
        let i = i.unwrap_or_default();
        serde_json::json!({"estimate": i.estimate, "low": i.low, "high": i.high})
    };
    serde_json::json!({
        "resamples": r.resamples,
        "pairs": r.pairs.iter().map(|p| serde_json::json!({
            "model": p.model,
            "shadow": p.shadow,
            "fraction": p.fraction,
            "compared": p.compared,
            "dropped": p.dropped,
            "failed": p.failed,
            "disagreements": p.disagreements,
            "confusion": p.confusion.chunks(3).map(<[u64]>::to_vec).collect::<Vec<_>>(),
            "max_abs_diff": p.max_abs_diff,
            "window": p.window,
            "agreement": interval(&p.agreement),
            "kappa": interval(&p.kappa),
            "mean_abs_diff": interval(&p.mean_abs_diff),
            "latency_ratio": interval(&p.latency_ratio),
        })).collect::<Vec<_>>(),
    })
}

//! The documentation, executed: every ```` ```sh test ```` block of README.md and docs/ runs
//! against a real `osteo serve` with the shipped models (as `scripts/run.sh` serves them) and the
//! demo study (as `scripts/run.sh` writes it), so an example that stops working fails the suite;
//! and the command synopsis in docs/cli.md names exactly the flags `osteo <command> --help` does.

use crate::common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The documents: README.md and every Markdown file in docs/.
fn documents() -> Vec<PathBuf> {
    let mut docs = vec![root().join("README.md")];
    let mut more: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    more.sort();
    docs.extend(more);
    docs
}

/// The fenced blocks of `text` whose info string is `info`, with the line each starts on.
fn blocks(text: &str, info: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        match &mut open {
            None if line.trim_end() == format!("```{info}") => open = Some((i + 1, String::new())),
            None => {}
            Some(_) if line.starts_with("```") => out.extend(open.take()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    out
}

/// `text` with each `out/` that starts a path (not inside a longer word or path) under `base`.
fn rebase_out(text: &str, base: &Path) -> String {
    let mut result = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("out/") {
        let starts_path = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || "/_.-".contains(c)));
        result.push_str(&rest[..at]);
        if starts_path {
            result.push_str(&format!("{}/", base.join("out").display()));
        } else {
            result.push_str("out/");
        }
        rest = &rest[at + 4..];
    }
    result.push_str(rest);
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sh_test_example_in_the_docs_runs_as_printed() {
    // The models and backends of the shipped osteo.toml (scripts/run.sh).
    let both = "backends = [\"ort\", \"candle\"]";
    let server = Server::start_with(
        "[server]\ndefault_model = \"osteo-fused-v2\"\n",
        &[
            ("osteo-fused-v3", both),
            ("osteo-fused-v2", both),
            ("osteo-fused-v1", both),
            ("osteo-image-v1", both),
            ("osteo-tabular-v1", both),
        ],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = env!("CARGO_BIN_EXE_osteo");
    let demo = dir.path().join("out/demo");
    let synth = Command::new(bin)
        .args([
            "synth",
            "--patients",
            "1",
            "--seed",
            "2026",
            "--dicom",
            "--out",
        ])
        .arg(&demo)
        .output()
        .expect("osteo synth");
    assert!(synth.status.success(), "{synth:?}");
    // docs/screening.md's local Orthanc, on ports of its own.
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port().to_string())
            .expect("a free port")
    };
    let (orthanc_http, orthanc_dicom) = (free(), free());
    let grpc = server.url.trim_start_matches("http://").to_string();
    let rest = server.rest.trim_start_matches("http://").to_string();
    let mut ran = 0;
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).expect("read");
        for (line, block) in blocks(&text, "sh test") {
            let script = rebase_out(&block, dir.path())
                .replace("target/release/osteo", bin)
                .replace("127.0.0.1:50051", &grpc)
                .replace("127.0.0.1:8000", &rest)
                .replace("localhost:8000", &rest)
                .replace("127.0.0.1:8042", &format!("127.0.0.1:{orthanc_http}"))
                .replace(
                    "\"HttpPort\": 8042",
                    &format!("\"HttpPort\": {orthanc_http}"),
                )
                .replace(
                    "\"DicomPort\": 4242",
                    &format!("\"DicomPort\": {orthanc_dicom}"),
                );
            let mut bash = Command::new("bash");
            bash.args(["-euo", "pipefail", "-c", &script])
                .current_dir(root());
            let out = output(bash).await;
            let name = doc
                .strip_prefix(root())
                .unwrap_or(&doc)
                .display()
                .to_string();
            assert!(
                out.status.success(),
                "the example at {name}:{line} failed ({}):\n{block}\nstdout:\n{}\nstderr:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(!stdout.trim().is_empty(), "{name}:{line} printed nothing");
            assert!(
                !stdout.contains(PATIENT_NAME)
                    && !String::from_utf8_lossy(&out.stderr).contains("Error"),
                "{name}:{line}: {stdout}"
            );
            ran += 1;
        }
    }
    assert!(ran >= 6, "only {ran} examples found");
    assert!(
        demo.join("overlay.png").exists(),
        "the README's explain wrote its overlay"
    );
}

/// The `--flags` of a piece of text.
fn flags(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_string)
        .collect()
}

#[test]
fn the_cli_synopsis_names_exactly_the_flags_of_each_commands_help() {
    let text = std::fs::read_to_string(root().join("docs/cli.md")).expect("docs/cli.md");
    let (_, synopsis) = blocks(&text, "text")
        .into_iter()
        .next()
        .expect("the synopsis block");
    // The groups defined under the commands: `<name> = flags`.
    let groups: Vec<(String, String)> = synopsis
        .lines()
        .filter(|l| l.starts_with('<'))
        .filter_map(|l| {
            let (name, body) = l.split_once(" = ")?;
            Some((name.trim().to_string(), body.to_string()))
        })
        .collect();
    let mut checked = 0;
    for line in synopsis.lines().filter(|l| l.starts_with("osteo ")) {
        let line = line.split("   #").next().unwrap_or(line);
        let command: Vec<&str> = line
            .split_whitespace()
            .skip(1)
            .take_while(|w| {
                !w.starts_with('-') && w.chars().all(|c| c.is_ascii_lowercase() || c == '-')
            })
            .collect();
        let mut expanded = line.to_string();
        for (name, body) in &groups {
            expanded = expanded.replace(name.as_str(), body);
        }
        let documented = flags(&expanded);
        let help = Command::new(env!("CARGO_BIN_EXE_osteo"))
            .args(&command)
            .arg("--help")
            .output()
            .expect("osteo --help");
        assert!(help.status.success(), "osteo {command:?} --help");
        let help = String::from_utf8_lossy(&help.stdout);
        // Options are the help lines that begin with a flag at clap's option indent (wrapped
        // descriptions are indented further).
        let options: BTreeSet<String> = help
            .lines()
            .filter(|l| l.len() - l.trim_start().len() <= 6)
            .filter_map(|l| {
                let t = l.trim_start();
                let t = t
                    .strip_prefix("-h, ")
                    .or_else(|| t.strip_prefix("-V, "))
                    .unwrap_or(t);
                t.starts_with("--")
                    .then(|| t.split([' ', '=']).next().unwrap_or(t).to_string())
            })
            .filter(|f| f != "--help" && f != "--version")
            .collect();
        assert_eq!(
            documented,
            options,
            "docs/cli.md's synopsis of `osteo {}` against its --help",
            command.join(" ")
        );
        checked += 1;
    }
    assert!(checked >= 17, "{checked} commands checked");
}

/// GitHub's anchor of a heading: lowercase, punctuation dropped, spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file's headings (outside fenced blocks).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.insert(anchor(line.trim_start_matches('#').trim()));
        }
    }
    out
}

#[test]
fn every_link_between_the_documents_resolves() {
    let mut docs = documents();
    docs.push(root().join("BENCHMARKS.md"));
    let mut broken = Vec::new();
    for doc in &docs {
        let text = std::fs::read_to_string(doc).expect("read");
        for piece in text.split("](").skip(1) {
            let Some(target) = piece.split(')').next() else {
                continue;
            };
            if target.starts_with("http") || target.contains(char::is_whitespace) {
                continue;
            }
            let (path, fragment) = target.split_once('#').unwrap_or((target, ""));
            let file = if path.is_empty() {
                doc.clone()
            } else {
                doc.parent().expect("dir").join(path)
            };
            if !file.exists() {
                broken.push(format!("{}: {target}", doc.display()));
            } else if !fragment.is_empty()
                && file.extension().is_some_and(|x| x == "md")
                && !anchors(&std::fs::read_to_string(&file).expect("read")).contains(fragment)
            {
                broken.push(format!("{}: {target} (no such heading)", doc.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links: {broken:#?}");
}

//! The server's integration tests, one binary with a module per area (DESIGN §11): in-process
//! servers on pre-bound listeners through the client library wherever no real process is the
//! point, `osteo serve` subprocesses where the binary itself is under test (signals, exit
//! codes, log format, descriptor limits, telemetry export).

mod common;

mod clients;
mod clinical_header;
mod cluster;
mod compare;
mod decision;
mod docs;
mod grade_study;
mod hardening;
mod inference;
mod measured;
mod node;
mod node_abuse;
mod quality_gate;
mod results_dicom;
mod screen;
mod security;
mod server;
mod telemetry;
mod tls;
mod traffic;
mod versions;

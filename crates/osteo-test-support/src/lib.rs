//! Test fixtures (dev-only): a throw-away local Orthanc PACS with DICOMweb ([`orthanc`]), an
//! nginx TLS proxy in front of it ([`nginx`]) and an nginx gRPC balancer over several servers
//! ([`balancer`]), each a daemon on a free loopback port in a
//! temporary directory, stopped when dropped. The tests of osteo-dicomweb and of the `osteo`
//! screening job use them; nothing shipped depends on this crate.
#![deny(missing_docs)]

pub mod balancer;
mod daemon;
pub mod nginx;
pub mod orthanc;

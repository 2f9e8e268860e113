//! The front doors, siblings over one [`crate::engine`]: osteo.v1 over gRPC ([`v1`]), the Open
//! Inference Protocol over gRPC ([`oip`]) and over REST ([`rest`]). Each translates its
//! protocol into engine calls and the typed answers back; none calls another. [`grpc`] holds
//! what the two gRPC doors share.

pub(crate) mod grpc;
pub mod oip;
pub mod rest;
pub mod v1;

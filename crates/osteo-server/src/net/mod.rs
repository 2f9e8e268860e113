//! The network beneath the front doors: the accept loop with its connection limits and
//! timeouts ([`connection`]), TLS with certificate reloads and peer certificates ([`tls`]), and
//! the process's descriptor limit ([`fdlimit`]).

pub mod connection;
pub mod fdlimit;
pub mod tls;

//! The open-file limit. Every connection holds a descriptor, so the limits of the listeners
//! (`server.max_connections` each) can only be honoured when the process may open that many
//! files: at start-up the soft limit is raised to the hard limit, and a configuration that still
//! does not fit stops the server (or, with `server.fd_limit = "warn"`, is logged).

use crate::error::ServerError;

/// Descriptors the server needs besides its connections: listeners, models, the audit log,
/// TLS and tokens files, the runtime's own.
const RESERVED: u64 = 128;

/// The descriptors `listeners` listeners of `max_connections` each need.
pub fn needed(listeners: usize, max_connections: usize) -> u64 {
    (listeners as u64)
        .saturating_mul(max_connections as u64)
        .saturating_add(RESERVED)
}

/// Raises the soft open-file limit to the hard limit and checks that `needed` descriptors fit
/// under it; `policy` "warn" logs a shortfall instead of refusing to start. Returns the limit
/// in force (None where the platform has none to read).
pub fn ensure(needed: u64, policy: &str) -> Result<Option<u64>, ServerError> {
    let Some(limit) = raise() else {
        return Ok(None);
    };
    if needed > limit {
        let message = format!(
            "the open-file limit is {limit} but the listeners may hold {needed} descriptors \
             (server.max_connections per listener, plus {RESERVED}); raise the limit \
             (ulimit -n, LimitNOFILE=, the container runtime's nofile) or lower \
             server.max_connections"
        );
        if policy == "warn" {
            tracing::warn!("{message}; serving anyway (server.fd_limit = \"warn\")");
        } else {
            return Err(ServerError::Config(format!(
                "server.fd_limit: {message}, or set server.fd_limit = \"warn\""
            )));
        }
    }
    Ok(Some(limit))
}

/// Raises the soft limit to the hard limit; the soft limit in force after.
#[cfg(unix)]
fn raise() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    if current != maximum {
        let raised = Rlimit {
            current: maximum,
            maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "cannot raise the open-file limit to its hard limit");
            return Some(current.unwrap_or(u64::MAX));
        }
        tracing::debug!(
            from = current.unwrap_or(u64::MAX),
            to = maximum.unwrap_or(u64::MAX),
            "raised the open-file limit to its hard limit"
        );
    }
    Some(maximum.unwrap_or(u64::MAX))
}

/// No limit to raise off Unix.
#[cfg(not(unix))]
fn raise() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_raised_and_a_configuration_beyond_it_is_refused_or_warned() {
        let limit = ensure(needed(1, 1), "error")
            .expect("one connection fits")
            .expect("unix has a limit");
        #[cfg(unix)]
        {
            let l = rustix::process::getrlimit(rustix::process::Resource::Nofile);
            assert_eq!(
                l.current, l.maximum,
                "the soft limit is raised to the hard one"
            );
        }
        if limit < u64::MAX / 4 {
            let over = limit + 1;
            let e = ensure(over, "error").expect_err("over the limit");
            let e = e.to_string();
            assert!(
                e.contains("server.max_connections") && e.contains("server.fd_limit"),
                "{e}"
            );
            assert_eq!(ensure(over, "warn").expect("warned"), Some(limit));
        }
        assert_eq!(needed(3, 1024), 3 * 1024 + RESERVED);
    }
}

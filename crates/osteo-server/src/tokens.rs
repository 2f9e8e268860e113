//! The tokens file: bearer tokens by the SHA-256 digest of each, with the principal and roles
//! they stand for. The file is looked at at most once a second when a token is checked and
//! re-read when it changed (size, modification time or inode), so tokens are added and revoked
//! without a restart. It fails closed: once it is deleted or no longer parses, every token is
//! refused (logged as an error, `osteo_auth_tokens_file_valid` 0) until it is valid again. An
//! open stream keeps the [`Credential`] it was opened with and re-checks it.

use crate::error::ServerError;
use crate::principal::{Principal, Role, valid_principal};
use osteo_core::FileStamp;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// One entry of the tokens file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    principal: String,
    sha256: String,
    #[serde(default)]
    roles: Vec<Role>,
}

/// The tokens file: `[[tokens]]` with `principal`, `sha256` and `roles`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

/// Hex SHA-256 of a token.
pub fn token_digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The tokens in force and where they came from.
#[derive(Debug)]
pub struct Tokens {
    path: PathBuf,
    state: RwLock<TokensState>,
}

#[derive(Debug)]
struct TokensState {
    by_digest: HashMap<String, Principal>,
    stamp: Option<FileStamp>,
    checked: Instant,
}

/// How often the tokens file is looked at for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

impl Tokens {
    /// The tokens of the file at `path`; errors name the file and the entry.
    pub fn load(path: &Path) -> Result<Self, ServerError> {
        let stamp = FileStamp::of_path(path);
        let by_digest = read_tokens(path)?;
        metrics::gauge!("osteo_auth_tokens_file_valid").set(1.0);
        Ok(Self {
            path: path.to_path_buf(),
            state: RwLock::new(TokensState {
                by_digest,
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    /// The principal of a token digest and the credential a stream re-checks, re-reading the
    /// file first if it changed.
    pub fn credential(self: &Arc<Self>, digest: String) -> Option<(Principal, Credential)> {
        let principal = self.get(&digest)?;
        let credential = Credential {
            tokens: self.clone(),
            digest,
            principal: principal.clone(),
        };
        Some((principal, credential))
    }

    /// The principal of a token digest, re-reading the file first if it changed.
    fn get(&self, digest: &str) -> Option<Principal> {
        self.reload_if_changed();
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        state.by_digest.get(digest).cloned()
    }

    /// Makes the next check look at the file, however recent the last one was.
    #[cfg(test)]
    pub(crate) fn expire_check(&self) {
        self.state
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .checked -= RELOAD_CHECK;
    }

    fn reload_if_changed(&self) {
        {
            let state = self.state.read().unwrap_or_else(|p| p.into_inner());
            if state.checked.elapsed() < RELOAD_CHECK {
                return;
            }
        }
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if state.checked.elapsed() < RELOAD_CHECK {
            return;
        }
        state.checked = Instant::now();
        let stamp = FileStamp::of_path(&self.path);
        if stamp == state.stamp {
            return;
        }
        state.stamp = stamp;
        // The file fails closed: once it is deleted or no longer parses, no token is valid
        // until a valid file is in place again (a revocation can never be undone by a typo).
        match read_tokens(&self.path) {
            Ok(by_digest) => {
                tracing::info!(tokens = by_digest.len(), "tokens file changed; reloaded");
                metrics::gauge!("osteo_auth_tokens_file_valid").set(1.0);
                state.by_digest = by_digest;
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "tokens file changed and cannot be used: every token is refused until it is \
                     valid again"
                );
                metrics::gauge!("osteo_auth_tokens_file_valid").set(0.0);
                state.by_digest.clear();
            }
        }
    }
}

/// A bearer token as a request presented it, for a stream to re-check while it is open: a
/// token revoked (or given other roles) in the tokens file ends the streams it opened.
#[derive(Debug, Clone)]
pub struct Credential {
    tokens: Arc<Tokens>,
    digest: String,
    principal: Principal,
}

impl Credential {
    /// Ok while the token still names the same principal with the same roles (the tokens file
    /// is looked at at most once a second); UNAUTHENTICATED once it is revoked or changed.
    pub fn recheck(&self) -> Result<(), tonic::Status> {
        match self.tokens.get(&self.digest) {
            Some(p) if p == self.principal => Ok(()),
            _ => Err(tonic::Status::unauthenticated(
                "the token this stream was opened with has been revoked or its roles changed; \
                 open a new stream with a valid token",
            )),
        }
    }
}

/// The entries of a tokens file by digest; errors name the file and the entry.
fn read_tokens(path: &Path) -> Result<HashMap<String, Principal>, ServerError> {
    let bad =
        |why: String| ServerError::Config(format!("auth.tokens_file {}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let file: TokensFile = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let mut by_digest = HashMap::new();
    for (i, t) in file.tokens.into_iter().enumerate() {
        if !valid_principal(&t.principal) {
            return Err(bad(format!(
                "tokens[{i}].principal must be 1 to 64 letters, digits or ._@-"
            )));
        }
        let digest = t.sha256.to_ascii_lowercase();
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!(
                "tokens[{i}].sha256 must be 64 hex digits (the SHA-256 of the token)"
            )));
        }
        let principal = Principal {
            name: t.principal,
            roles: t.roles.into_iter().collect(),
        };
        if by_digest.insert(digest, principal).is_some() {
            return Err(bad(format!(
                "tokens[{i}] repeats the digest of an earlier token"
            )));
        }
    }
    Ok(by_digest)
}

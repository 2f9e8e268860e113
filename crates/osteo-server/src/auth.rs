//! Authentication and roles: bearer tokens checked against a tokens file that holds only their
//! SHA-256 digests, and client certificates (the connection's verified certificate names the
//! principal, see [`crate::net::tls::PeerCert`]). A tower layer in front of every service but
//! grpc.health.v1 (Kubernetes probes carry no credentials) refuses a request without valid
//! credentials with UNAUTHENTICATED — before its message is read — counts and audits the
//! refusal, and hands the [`Principal`] to the services in the request's extensions; the
//! osteo.v1 service then checks the principal's roles for the RPC. The tokens file, re-read
//! when it changes and failing closed, is [`crate::tokens`].

use crate::audit::{AuditLog, Record};
use crate::engine::Rpc;
use crate::error::ServerError;
use crate::net::connection::{BoxFuture, ConnInfo};
use crate::net::tls::PeerCert;
pub use crate::principal::{Principal, Role, valid_principal};
pub use crate::tokens::{Credential, Tokens, token_digest};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

/// How requests are authenticated: by bearer token, by client certificate, or either; with
/// neither, everyone is [`Principal::anonymous`].
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    tokens: Option<Arc<Tokens>>,
    certificates: Option<Arc<Certificates>>,
}

/// How client certificates name principals.
#[derive(Debug, Default)]
struct Certificates {
    /// Certificate names with the admin role.
    admins: BTreeSet<String>,
    /// Whether the first SAN names a certificate without a valid CN.
    san_identity: bool,
    /// Certificate names mapped to the principal they act as.
    mapped: BTreeMap<String, String>,
}

impl Certificates {
    /// The principal of a verified certificate with these names, if one names it.
    fn principal(&self, cn: Option<&String>, san: Option<&String>) -> Option<Principal> {
        let name = cn.or(san.filter(|_| self.san_identity))?;
        let role = if self.admins.contains(name) {
            Role::Admin
        } else {
            Role::Client
        };
        // Certificate principals live apart from token principals unless mapped: a
        // certificate with CN "alice" is not the token principal "alice".
        let principal = self
            .mapped
            .get(name)
            .cloned()
            .unwrap_or_else(|| format!("{CERT_PREFIX}{name}"));
        Some(Principal {
            name: principal,
            roles: [role].into_iter().collect(),
        })
    }
}

/// What an unmapped certificate principal's name starts with.
pub const CERT_PREFIX: &str = "cert:";

impl Authenticator {
    /// No authentication: everyone is [`Principal::anonymous`].
    pub fn none() -> Self {
        Self::default()
    }

    /// Bearer tokens from a tokens file; errors name the file and the entry.
    pub fn from_tokens_file(path: &Path) -> Result<Self, ServerError> {
        Ok(Self {
            tokens: Some(Arc::new(Tokens::load(path)?)),
            certificates: None,
        })
    }

    /// Also accepts client certificates, named by their CN as `cert:<CN>`; the certificate
    /// names in `admins` have the admin role, every other certificate principal the client
    /// role.
    pub fn with_certificates(self, admins: impl IntoIterator<Item = String>) -> Self {
        self.with_certificate_names(admins, false, BTreeMap::new())
    }

    /// [`Authenticator::with_certificates`], naming a certificate without a valid CN by its
    /// first SAN when `san_identity`, and mapping the certificate names in `mapped` to the
    /// principals they act as.
    pub fn with_certificate_names(
        mut self,
        admins: impl IntoIterator<Item = String>,
        san_identity: bool,
        mapped: BTreeMap<String, String>,
    ) -> Self {
        self.certificates = Some(Arc::new(Certificates {
            admins: admins.into_iter().collect(),
            san_identity,
            mapped,
        }));
        self
    }

    /// The authenticator of `auth.mode`.
    pub fn from_settings(a: &crate::config::AuthSettings) -> Result<Self, ServerError> {
        let auth = if a.uses_tokens() {
            Self::from_tokens_file(Path::new(&a.tokens_file))?
        } else {
            Self::none()
        };
        Ok(if a.uses_certificates() {
            auth.with_certificate_names(
                a.mtls_admins.iter().cloned(),
                a.mtls_san_identity,
                a.mtls_principals.clone(),
            )
        } else {
            auth
        })
    }
}

/// A refused request: the metric label of the reason and the status it is answered with.
type Refusal = (&'static str, tonic::Status);

/// A refusal with reason `reason` and message `message`.
fn refuse(reason: &'static str, message: &'static str) -> Refusal {
    (reason, tonic::Status::unauthenticated(message))
}

impl Authenticator {
    /// What a refused request is told it may present.
    fn wanted(&self) -> &'static str {
        match (&self.tokens, &self.certificates) {
            (Some(_), Some(_)) => {
                "no credentials: send the metadata `authorization: Bearer <token>` or connect \
                 with a client certificate"
            }
            (None, Some(_)) => {
                "no credentials: connect with a client certificate signed by the server's client CA"
            }
            _ => "no credentials: send the metadata `authorization: Bearer <token>`",
        }
    }

    /// The principal of a request with these headers on a connection whose client certificate
    /// says `cert`. A presented token is checked even when a certificate would do, so a wrong
    /// token is never ignored.
    pub fn authenticate(
        &self,
        headers: &http::HeaderMap,
        cert: &PeerCert,
    ) -> Result<Principal, tonic::Status> {
        self.check(headers, cert)
            .map(|(p, _)| p)
            .map_err(|(_, status)| status)
    }

    /// [`Authenticator::authenticate`], with the token credential a stream re-checks, and the
    /// reason of a refusal as a metric label.
    fn check(
        &self,
        headers: &http::HeaderMap,
        cert: &PeerCert,
    ) -> Result<(Principal, Option<Credential>), Refusal> {
        if self.tokens.is_none() && self.certificates.is_none() {
            return Ok((Principal::anonymous(), None));
        }
        if let (Some(tokens), Some(value)) =
            (&self.tokens, headers.get(http::header::AUTHORIZATION))
        {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    refuse(
                        "malformed",
                        "the authorization metadata must read `Bearer <token>`",
                    )
                })?;
            let (principal, credential) = tokens
                .credential(token_digest(token))
                .ok_or_else(|| refuse("invalid_token", "the token is not valid"))?;
            return Ok((principal, Some(credential)));
        }
        if let Some(certificates) = &self.certificates
            && let PeerCert::Verified { cn, san } = cert
        {
            return certificates
                .principal(cn.as_ref(), san.as_ref())
                .map(|p| (p, None))
                .ok_or_else(|| {
                    refuse(
                        "certificate",
                        "the client certificate names no usable principal: its subject CN must \
                         be 1 to 64 letters, digits or ._@- (or its first DNS or e-mail SAN, \
                         where auth.mtls_san_identity is on)",
                    )
                });
        }
        Err(refuse("missing", self.wanted()))
    }
}

/// Tower layer that authenticates every request except grpc.health.v1; refusals are counted
/// (`osteo_auth_failures_total`) and, with an audit log, recorded in it.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Authenticator,
    audit: Option<Arc<AuditLog>>,
}

impl AuthLayer {
    /// A layer authenticating with `auth` and recording refusals in `audit`.
    pub fn new(auth: Authenticator, audit: Option<Arc<AuditLog>>) -> Self {
        Self { auth, audit }
    }
}

impl AuthLayer {
    /// The principal of a request to `rpc` (an audit-log RPC name) with `headers` on `conn`. A
    /// refusal is counted (`osteo_auth_failures_total`) and logged at once, and comes with a
    /// future that writes its audit record: answer the refusal once it completes.
    pub(crate) fn admit(
        &self,
        headers: &http::HeaderMap,
        conn: Option<&ConnInfo>,
        rpc: Rpc,
    ) -> Result<(Principal, Option<Credential>), (tonic::Status, BoxFuture<()>)> {
        let cert = conn.map_or(&PeerCert::Absent, ConnInfo::peer_cert);
        let (reason, status) = match self.auth.check(headers, cert) {
            Ok(admitted) => return Ok(admitted),
            Err(refusal) => refusal,
        };
        metrics::counter!("osteo_auth_failures_total", "reason" => reason).increment(1);
        let peer = conn
            .and_then(ConnInfo::remote_addr)
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!(%rpc, %peer, "request refused: {}", status.message());
        let audit = self.audit.clone();
        let recorded: BoxFuture<()> = Box::pin(async move {
            if let Some(log) = audit {
                let record = Record::new(rpc.name(), "", peer, tonic::Code::Unauthenticated, 0.0);
                let written = tokio::task::spawn_blocking(move || log.append(record)).await;
                if !matches!(written, Ok(Ok(()))) {
                    tracing::error!("the audit record of a refused request was not written");
                }
            }
        });
        Err((status, recorded))
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            gate: self.clone(),
        }
    }
}

/// The service of [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    gate: AuthLayer,
}

/// Path prefix of the health service, callable without credentials.
const HEALTH: &str = "/grpc.health.v1.Health/";

impl<S, B, RB> tower_service::Service<http::Request<B>> for Auth<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<RB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if !req.uri().path().starts_with(HEALTH) {
            let rpc = Rpc::of_grpc_path(req.uri().path());
            let conn = req.extensions().get::<ConnInfo>();
            match self.gate.admit(req.headers(), conn, rpc) {
                Ok((p, credential)) => {
                    req.extensions_mut().insert(p);
                    if let Some(c) = credential {
                        req.extensions_mut().insert(c);
                    }
                }
                Err((status, recorded)) => {
                    let resp = status.into_http::<RB>();
                    return Box::pin(async move {
                        recorded.await;
                        Ok(resp)
                    });
                }
            }
        }
        let fut = self.inner.call(req);
        Box::pin(fut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(cn: &str) -> PeerCert {
        PeerCert::Verified {
            cn: Some(cn.into()),
            san: None,
        }
    }

    fn headers(auth: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(a) = auth {
            h.insert(http::header::AUTHORIZATION, a.parse().expect("header"));
        }
        h
    }

    #[test]
    fn tokens_are_checked_by_digest_and_never_echoed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("tokens.toml");
        std::fs::write(
            &file,
            format!(
                "[[tokens]]\nprincipal = \"alice\"\nsha256 = \"{}\"\nroles = [\"client\"]\n",
                token_digest("s3cret-token")
            ),
        )
        .expect("write");
        let auth = Authenticator::from_tokens_file(&file).expect("tokens");
        let p = auth
            .authenticate(&headers(Some("Bearer s3cret-token")), &PeerCert::Absent)
            .expect("valid");
        assert_eq!(p.name, "alice");
        assert!(p.has(Role::Client) && !p.has(Role::Admin));
        for bad in [
            None,
            Some("Bearer nope-nope"),
            Some("Basic s3cret-token"),
            Some("Bearer "),
        ] {
            let s = auth
                .authenticate(&headers(bad), &named("alice"))
                .expect_err("refused: a certificate is no credential in token mode");
            assert_eq!(s.code(), tonic::Code::Unauthenticated);
            assert!(
                !s.message().contains("nope") && !s.message().contains("s3cret"),
                "{s:?}"
            );
        }
        std::fs::write(&file, "[[tokens]]\nprincipal = \"a b\"\nsha256 = \"00\"\n").expect("write");
        let e = Authenticator::from_tokens_file(&file)
            .expect_err("bad entry")
            .to_string();
        assert!(e.contains("tokens[0].principal"), "{e}");
    }

    #[test]
    fn certificates_name_the_principal_and_a_wrong_token_is_never_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("tokens.toml");
        std::fs::write(
            &file,
            format!(
                "[[tokens]]\nprincipal = \"bob\"\nsha256 = \"{}\"\nroles = [\"client\"]\n",
                token_digest("bobs-token")
            ),
        )
        .expect("write");
        let mtls = Authenticator::none().with_certificates(["ops".to_string()]);
        let either = Authenticator::from_tokens_file(&file)
            .expect("tokens")
            .with_certificates(Vec::new());
        let cert = named("pacs-gw");
        let p = mtls.authenticate(&headers(None), &cert).expect("cert");
        assert_eq!(p.name, "cert:pacs-gw");
        assert!(p.has(Role::Client) && !p.has(Role::Admin));
        let ops = mtls
            .authenticate(&headers(None), &named("ops"))
            .expect("cert");
        assert!(ops.has(Role::Admin));
        for (auth, h, c) in [
            (&mtls, None, PeerCert::Absent),
            (
                &mtls,
                None,
                PeerCert::Verified {
                    cn: None,
                    san: None,
                },
            ),
            (
                &mtls,
                None,
                PeerCert::Verified {
                    cn: None,
                    san: Some("pacs-admin".into()),
                },
            ),
            (&mtls, Some("Bearer bobs-token"), PeerCert::Absent),
            (&either, None, PeerCert::Absent),
            (&either, Some("Bearer wrong"), cert.clone()),
        ] {
            let s = auth.authenticate(&headers(h), &c).expect_err("refused");
            assert_eq!(s.code(), tonic::Code::Unauthenticated, "{h:?} {c:?}");
        }
        assert_eq!(
            either
                .authenticate(&headers(Some("Bearer bobs-token")), &cert)
                .expect("token")
                .name,
            "bob"
        );
        assert_eq!(
            either
                .authenticate(&headers(None), &cert)
                .expect("cert")
                .name,
            "cert:pacs-gw"
        );
    }

    #[test]
    fn certificate_principals_are_apart_from_token_principals_unless_mapped() {
        let alice = named("alice");
        let plain = Authenticator::none().with_certificates(Vec::new());
        let p = plain.authenticate(&headers(None), &alice).expect("cert");
        assert_eq!(p.name, "cert:alice", "not the token principal alice");
        let san_only = PeerCert::Verified {
            cn: None,
            san: Some("pacs-admin".into()),
        };
        let with_san = Authenticator::none().with_certificate_names(
            ["pacs-admin".to_string()],
            true,
            [("alice".to_string(), "alice".to_string())].into(),
        );
        let admin = with_san
            .authenticate(&headers(None), &san_only)
            .expect("SAN identity configured");
        assert_eq!(admin.name, "cert:pacs-admin");
        assert!(admin.has(Role::Admin));
        let mapped = with_san.authenticate(&headers(None), &alice).expect("cert");
        assert_eq!(mapped.name, "alice", "explicitly mapped");
    }

    #[test]
    fn the_tokens_file_fails_closed_and_open_credentials_see_revocation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("tokens.toml");
        let entry = |who: &str, token: &str| {
            format!(
                "[[tokens]]\nprincipal = \"{who}\"\nsha256 = \"{}\"\nroles = [\"client\"]\n",
                token_digest(token)
            )
        };
        std::fs::write(
            &file,
            entry("alice", "alice-token") + &entry("bob", "bob-token"),
        )
        .expect("write");
        let auth = Authenticator::from_tokens_file(&file).expect("tokens");
        let tokens = auth.tokens.clone().expect("token mode");
        let open = |t: &str| {
            auth.check(&headers(Some(&format!("Bearer {t}"))), &PeerCert::Absent)
                .expect("valid")
                .1
                .expect("a token credential")
        };
        let alices_stream = open("alice-token");
        let force_check = || tokens.expire_check();
        // alice revoked: her open credential fails its next check, bob's holds.
        std::fs::write(&file, entry("bob", "bob-token")).expect("write");
        force_check();
        let e = alices_stream.recheck().expect_err("revoked");
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        open("bob-token").recheck().expect("bob still valid");
        // A file that no longer parses refuses every token (loudly, in the log).
        std::fs::write(&file, "[[tokens]\nbroken").expect("write");
        force_check();
        assert!(
            auth.authenticate(&headers(Some("Bearer bob-token")), &PeerCert::Absent)
                .is_err()
        );
        // So does a deleted one; a valid file in place again is served again.
        std::fs::remove_file(&file).expect("rm");
        force_check();
        assert!(
            auth.authenticate(&headers(Some("Bearer bob-token")), &PeerCert::Absent)
                .is_err()
        );
        std::fs::write(&file, entry("bob", "bob-token")).expect("write");
        force_check();
        auth.authenticate(&headers(Some("Bearer bob-token")), &PeerCert::Absent)
            .expect("valid again");
    }
}

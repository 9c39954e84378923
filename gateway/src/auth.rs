//! Bearer JWT authentication: `sub` is the userId; a configurable boolean claim marks admins.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::error::ApiError;
use crate::http::AppState;

#[derive(clap::Args, Debug, Clone)]
pub struct AuthArgs {
    /// File holding the HS256 shared secret (raw bytes, trailing newline ignored).
    #[arg(long, env = "STREAMSCAN_JWT_HS256_SECRET_FILE")]
    pub jwt_hs256_secret_file: Option<PathBuf>,
    /// PEM file of the RS256 (RSA) or ES256 (P-256) public key that verifies tokens.
    #[arg(long, env = "STREAMSCAN_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// The `iss` claim every token must carry (required: without it a token minted by any issuer
    /// that shares the key would pass).
    #[arg(long, env = "STREAMSCAN_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The `aud` claim every token must carry (required: a token minted for another service
    /// would pass otherwise).
    #[arg(long, env = "STREAMSCAN_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Boolean claim that, when true, lets the caller see every job.
    #[arg(long, default_value = "admin")]
    pub jwt_admin_claim: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("no JWT key configured: give --jwt-hs256-secret-file and/or --jwt-public-key-file")]
    NoKey,
    #[error(
        "no {flag} given: every token must name its issuer and audience, which the gateway checks \
         (set {flag}, or gateway.auth.{value} in the chart)"
    )]
    NoClaim { flag: &'static str, value: &'static str },
    #[error(
        "the HS256 secret in {path} is {len} bytes; at least {MIN_HS256_SECRET} are required (a short \
         shared secret can be brute-forced from one token)"
    )]
    WeakSecret { path: PathBuf, len: usize },
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is neither an RSA nor an EC public key in PEM: {source}")]
    Key {
        path: PathBuf,
        source: jsonwebtoken::errors::Error,
    },
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    pub admin: bool,
}

impl Caller {
    /// Whether the caller may see a job owned by `user_id`.
    pub fn owns(&self, user_id: &str) -> bool {
        self.admin || self.user == user_id
    }
}

/// RFC 7518 §3.2: an HS256 key of at least the hash's size (256 bits).
pub const MIN_HS256_SECRET: usize = 32;

pub struct Auth {
    keys: Vec<(DecodingKey, Validation)>,
    admin_claim: String,
}

impl Auth {
    pub fn from_args(args: &AuthArgs) -> Result<Self, AuthSetupError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| AuthSetupError::Read {
                path: path.clone(),
                source,
            })
        };
        let claim = |given: &Option<String>, flag, value| match given.as_deref().map(str::trim) {
            Some(v) if !v.is_empty() => Ok(v.to_owned()),
            _ => Err(AuthSetupError::NoClaim { flag, value }),
        };
        let issuer = claim(&args.jwt_issuer, "--jwt-issuer", "jwtIssuer")?;
        let audience = claim(&args.jwt_audience, "--jwt-audience", "jwtAudience")?;
        let validation = |alg: Algorithm| {
            let mut v = Validation::new(alg);
            v.set_issuer(&[&issuer]);
            v.set_audience(&[&audience]);
            v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            v.validate_nbf = true;
            v
        };
        let mut keys = Vec::new();
        if let Some(path) = &args.jwt_hs256_secret_file {
            let mut secret = read(path)?;
            while secret.last().is_some_and(|b| b.is_ascii_whitespace()) {
                secret.pop();
            }
            if secret.len() < MIN_HS256_SECRET {
                return Err(AuthSetupError::WeakSecret {
                    path: path.clone(),
                    len: secret.len(),
                });
            }
            keys.push((DecodingKey::from_secret(&secret), validation(Algorithm::HS256)));
        }
        if let Some(path) = &args.jwt_public_key_file {
            let pem = read(path)?;
            let key = match DecodingKey::from_rsa_pem(&pem) {
                Ok(key) => (key, validation(Algorithm::RS256)),
                Err(_) => DecodingKey::from_ec_pem(&pem)
                    .map(|key| (key, validation(Algorithm::ES256)))
                    .map_err(|source| AuthSetupError::Key {
                        path: path.clone(),
                        source,
                    })?,
            };
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(AuthSetupError::NoKey);
        }
        Ok(Auth {
            keys,
            admin_claim: args.jwt_admin_claim.clone(),
        })
    }

    /// Verifies a token: signature, `exp`, `nbf` when present, `iss` and `aud`.
    pub fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        let mut last = None;
        for (key, validation) in &self.keys {
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, key, validation) {
                Ok(data) => {
                    let user = match data.claims.get("sub") {
                        Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
                        _ => return Err(ApiError::unauthorized("the token has no sub claim")),
                    };
                    let admin = data.claims.get(&self.admin_claim) == Some(&serde_json::Value::Bool(true));
                    return Ok(Caller { user, admin });
                }
                Err(err) => last = Some(err),
            }
        }
        tracing::debug!(err = ?last, "token refused");
        Err(ApiError::unauthorized("invalid or expired bearer token"))
    }
}

/// The bearer token of the `Authorization` header.
fn header_token(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
}

/// The `?access_token=` query parameter.
fn query_token(parts: &Parts) -> Option<String> {
    parts.uri.query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "access_token")
            .map(|(_, v)| v.to_owned())
    })
}

/// A caller authenticated by the `Authorization` header only: a token in a URL ends up in proxy
/// and access logs, so only the streaming route, which browsers cannot give headers, takes one.
impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        match header_token(parts) {
            Some(token) => state.auth.verify(token),
            None if query_token(parts).is_some() => Err(ApiError::unauthorized(
                "?access_token= is accepted only on .../events (WebSocket and EventSource); send the \
                 token as an Authorization: Bearer header",
            )),
            None => Err(ApiError::unauthorized("missing bearer token")),
        }
    }
}

/// A caller of the streaming route: the header, or `?access_token=` (browsers cannot set headers
/// on a WebSocket or an EventSource).
pub struct StreamCaller(pub Caller);

impl FromRequestParts<Arc<AppState>> for StreamCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        match (header_token(parts), query_token(parts)) {
            (Some(token), _) => state.auth.verify(token).map(StreamCaller),
            (None, Some(token)) => state.auth.verify(&token).map(StreamCaller),
            (None, None) => Err(ApiError::unauthorized("missing bearer token")),
        }
    }
}

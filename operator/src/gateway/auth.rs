//! Bearer JWT authentication: `sub` is the userId; a configurable boolean claim marks admins.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::error::ApiError;
use super::http::AppState;

#[derive(clap::Args, Debug, Clone)]
pub struct AuthArgs {
    /// File holding the HS256 shared secret (raw bytes, trailing newline ignored).
    #[arg(long, env = "STREAMSCAN_JWT_HS256_SECRET_FILE")]
    pub jwt_hs256_secret_file: Option<PathBuf>,
    /// PEM file of the RS256 (RSA) or ES256 (P-256) public key that verifies tokens.
    #[arg(long, env = "STREAMSCAN_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// Required `iss` claim.
    #[arg(long)]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim.
    #[arg(long)]
    pub jwt_audience: Option<String>,
    /// Boolean claim that, when true, lets the caller see every job.
    #[arg(long, default_value = "admin")]
    pub jwt_admin_claim: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("no JWT key configured: give --jwt-hs256-secret-file and/or --jwt-public-key-file")]
    NoKey,
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
        let validation = |alg: Algorithm| {
            let mut v = Validation::new(alg);
            if let Some(iss) = &args.jwt_issuer {
                v.set_issuer(&[iss]);
            }
            match &args.jwt_audience {
                Some(aud) => v.set_audience(&[aud]),
                None => v.validate_aud = false,
            }
            v
        };
        let mut keys = Vec::new();
        if let Some(path) = &args.jwt_hs256_secret_file {
            let mut secret = read(path)?;
            while secret.last().is_some_and(|b| b.is_ascii_whitespace()) {
                secret.pop();
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

    /// Verifies a token: signature, `exp`, and `iss`/`aud` when configured.
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

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        // Browsers cannot set headers on a WebSocket or EventSource: accept ?access_token= too.
        let query = parts.uri.query().and_then(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == "access_token")
                .map(|(_, v)| v.to_owned())
        });
        match (header, query) {
            (Some(token), _) => state.auth.verify(token),
            (None, Some(token)) => state.auth.verify(&token),
            (None, None) => Err(ApiError::unauthorized("missing bearer token")),
        }
    }
}

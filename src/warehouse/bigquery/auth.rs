//! OAuth access tokens for BigQuery from the JSON key file named by
//! `GOOGLE_APPLICATION_CREDENTIALS`.
//!
//! A `service_account` key signs an RS256 JWT and trades it for a token (Google's
//! "OAuth 2.0 for server to server applications"); an `authorized_user` file, as
//! `gcloud auth application-default login` writes it, trades its refresh token. Signing uses
//! `ring`, which the TLS stack compiles anyway, instead of a Google SDK.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;

use super::BigQueryError;

const CREDENTIALS_VAR: &str = "GOOGLE_APPLICATION_CREDENTIALS";
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
const SCOPE: &str = "https://www.googleapis.com/auth/bigquery";
/// The longest lifetime Google accepts for a JWT assertion.
const ASSERTION_LIFETIME_SECS: u64 = 3600;
/// A token this close to its expiry is renewed, so no request carries one that lapses in
/// flight.
const RENEW_BEFORE_EXPIRY: Duration = Duration::from_secs(120);
/// The most of a token endpoint's answer orch reads.
const MAX_TOKEN_ANSWER: usize = 64 * 1024;

/// The key file, by its `type`.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum KeyFile {
    ServiceAccount {
        client_email: String,
        private_key: String,
        private_key_id: Option<String>,
        token_uri: Option<String>,
    },
    AuthorizedUser {
        client_id: String,
        client_secret: String,
        refresh_token: String,
        token_uri: Option<String>,
    },
}

enum Credentials {
    ServiceAccount {
        client_email: String,
        /// Boxed: a key pair is far larger than the other variant.
        key: Box<RsaKeyPair>,
        key_id: Option<String>,
        token_uri: String,
    },
    AuthorizedUser {
        client_id: String,
        client_secret: String,
        refresh_token: String,
        token_uri: String,
    },
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: u64,
}

struct CachedToken {
    access_token: String,
    renew_at: Instant,
}

/// Hands out a bearer token, fetching a new one when the cached one is about to expire.
/// Deliberately not `Debug`: it holds secrets.
pub struct TokenSource {
    http: reqwest::Client,
    /// The key file's path, for error messages.
    key_file: String,
    credentials: Credentials,
    cached: Mutex<Option<CachedToken>>,
}

impl TokenSource {
    /// Reads and checks the key file; fetches no token yet.
    pub fn from_environment(http: reqwest::Client) -> Result<TokenSource, BigQueryError> {
        let path = std::env::var_os(CREDENTIALS_VAR)
            .filter(|p| !p.is_empty())
            .ok_or(BigQueryError::NoCredentials)?;
        let shown = path.to_string_lossy().into_owned();
        let bad = |reason: String| BigQueryError::BadCredentials {
            path: shown.clone(),
            reason,
        };
        let text = std::fs::read(&path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        let key_file: KeyFile = serde_json::from_slice(&text)
            .map_err(|e| bad(format!("not a service account or authorized user key: {e}")))?;
        let credentials = match key_file {
            KeyFile::ServiceAccount {
                client_email,
                private_key,
                private_key_id,
                token_uri,
            } => {
                let der = PrivatePkcs8KeyDer::from_pem_slice(private_key.as_bytes())
                    .map_err(|e| bad(format!("private_key is not a PKCS#8 PEM key: {e}")))?;
                let key = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
                    .map(Box::new)
                    .map_err(|e| bad(format!("private_key is not a usable RSA key: {e}")))?;
                Credentials::ServiceAccount {
                    client_email,
                    key,
                    key_id: private_key_id,
                    token_uri: token_uri.unwrap_or_else(|| DEFAULT_TOKEN_URI.to_string()),
                }
            }
            KeyFile::AuthorizedUser {
                client_id,
                client_secret,
                refresh_token,
                token_uri,
            } => Credentials::AuthorizedUser {
                client_id,
                client_secret,
                refresh_token,
                token_uri: token_uri.unwrap_or_else(|| DEFAULT_TOKEN_URI.to_string()),
            },
        };
        Ok(TokenSource {
            http,
            key_file: shown,
            credentials,
            cached: Mutex::new(None),
        })
    }

    /// A valid access token, from the cache or freshly fetched.
    pub async fn token(&self) -> Result<String, BigQueryError> {
        let mut cached = self.cached.lock().await;
        if let Some(token) = cached.as_ref()
            && Instant::now() < token.renew_at
        {
            return Ok(token.access_token.clone());
        }
        let requested = Instant::now();
        let answer = self.fetch().await?;
        let lifetime = Duration::from_secs(answer.expires_in);
        let token = cached.insert(CachedToken {
            access_token: answer.access_token,
            renew_at: requested + lifetime.saturating_sub(RENEW_BEFORE_EXPIRY),
        });
        Ok(token.access_token.clone())
    }

    async fn fetch(&self) -> Result<TokenAnswer, BigQueryError> {
        let (token_uri, form): (&str, Vec<(&str, String)>) = match &self.credentials {
            Credentials::ServiceAccount {
                client_email,
                key,
                key_id,
                token_uri,
            } => {
                let assertion = signed_assertion(client_email, key, key_id.as_deref(), token_uri)
                    .map_err(|_| BigQueryError::BadCredentials {
                    path: self.key_file.clone(),
                    reason: "signing with private_key failed".to_string(),
                })?;
                (
                    token_uri,
                    vec![
                        (
                            "grant_type",
                            "urn:ietf:params:oauth:grant-type:jwt-bearer".to_string(),
                        ),
                        ("assertion", assertion),
                    ],
                )
            }
            Credentials::AuthorizedUser {
                client_id,
                client_secret,
                refresh_token,
                token_uri,
            } => (
                token_uri,
                vec![
                    ("grant_type", "refresh_token".to_string()),
                    ("client_id", client_id.clone()),
                    ("client_secret", client_secret.clone()),
                    ("refresh_token", refresh_token.clone()),
                ],
            ),
        };
        let call = format!("token request to {token_uri}");
        let response = self
            .http
            .post(token_uri)
            .form(&form)
            .send()
            .await
            .map_err(|e| BigQueryError::Transport {
                call: call.clone(),
                reason: crate::http_client::describe(&e),
            })?;
        let status = response.status();
        let body = crate::http_client::read_body(response, MAX_TOKEN_ANSWER)
            .await
            .map_err(|e| BigQueryError::from_body(&call, e))?;
        if !status.is_success() {
            return Err(BigQueryError::TokenRefused {
                uri: token_uri.to_string(),
                status: status.as_u16(),
                message: oauth_error(&body),
            });
        }
        // The answer holds the token: its parse error must not quote it.
        serde_json::from_slice(&body).map_err(|_| BigQueryError::BadAnswer {
            call: format!("token request to {token_uri}"),
            detail: "no access_token and expires_in in the answer".to_string(),
        })
    }
}

/// `header.claims.signature` of an RS256 JWT that asks `token_uri` for a BigQuery token.
fn signed_assertion(
    client_email: &str,
    key: &RsaKeyPair,
    key_id: Option<&str>,
    token_uri: &str,
) -> Result<String, ring::error::Unspecified> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut header = json!({"alg": "RS256", "typ": "JWT"});
    if let Some(key_id) = key_id {
        header["kid"] = json!(key_id);
    }
    let claims = json!({
        "iss": client_email,
        "scope": SCOPE,
        "aud": token_uri,
        "iat": now,
        "exp": now + ASSERTION_LIFETIME_SECS,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        signing_input.as_bytes(),
        &mut signature,
    )?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

/// An OAuth error answer's `error: error_description`, else the start of the body.
fn oauth_error(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct OAuthError {
        error: String,
        error_description: Option<String>,
    }
    match serde_json::from_slice::<OAuthError>(body) {
        Ok(OAuthError {
            error,
            error_description: Some(description),
        }) => format!("{error}: {description}"),
        Ok(OAuthError { error, .. }) => error,
        Err(_) => String::from_utf8_lossy(body).chars().take(300).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};

    const TEST_KEY: &str = include_str!("../../../tests/fixtures/bigquery-test-key.pem");

    #[test]
    fn the_assertion_is_an_rs256_jwt_that_verifies_with_the_public_key() {
        let der = PrivatePkcs8KeyDer::from_pem_slice(TEST_KEY.as_bytes()).expect("pem");
        let key = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).expect("key");
        let jwt = signed_assertion("sa@p.iam.gserviceaccount.com", &key, Some("k1"), "http://t")
            .expect("sign");
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let decode = |part: &str| -> serde_json::Value {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64")).expect("json")
        };
        let header = decode(parts[0]);
        assert_eq!(
            (header["alg"].as_str(), header["kid"].as_str()),
            (Some("RS256"), Some("k1"))
        );
        let claims = decode(parts[1]);
        assert_eq!(claims["scope"], SCOPE);
        assert_eq!(claims["aud"], "http://t");
        assert_eq!(
            claims["exp"].as_u64(),
            claims["iat"].as_u64().map(|iat| iat + 3600)
        );
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).expect("signature");
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key.public().as_ref())
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .expect("signature verifies");
    }

    #[test]
    fn oauth_errors_give_error_and_description() {
        assert_eq!(
            oauth_error(
                br#"{"error": "invalid_grant", "error_description": "Invalid JWT Signature."}"#
            ),
            "invalid_grant: Invalid JWT Signature."
        );
    }
}

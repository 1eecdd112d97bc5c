//! Edge authentication at the gateway: an `authenticated` route takes a request only with a JWT
//! bearer token the document's `auth` accepts: RS256 or ES256 (never `none`, never HMAC), signed
//! by a key of the JWKS file (chosen by `kid`, or the only key), from the issuer, for one of the
//! audiences, inside its `nbf`..`exp` with the leeway. The token's `sub` goes on to the service in
//! the subject header; what an outside caller sends in that header is always removed.
//!
//! `jsonwebtoken` (over ring, the mesh's crypto) checks signatures and claims; this module picks
//! the key, refuses what no real issuer signs with, and names why a token was refused.

use std::collections::HashMap;

use base64::Engine as _;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use mesh_registry::gateway::Auth;

use crate::telemetry::labels::AuthFailure;

/// The largest JWKS file read.
const MAX_JWKS_BYTES: u64 = 1 << 20;
/// The longest subject passed on.
const MAX_SUBJECT: usize = 256;

/// A refused token: why (a label), and what exactly (for the caller and the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) reason: AuthFailure,
    pub(crate) detail: String,
}

fn refuse(reason: AuthFailure, detail: impl Into<String>) -> Refusal {
    Refusal { reason, detail: detail.into() }
}

/// The document's `auth`, with its keys loaded.
pub(crate) struct Verifier {
    /// By `kid` (`None`: a key without one).
    keys: HashMap<Option<String>, (Algorithm, DecodingKey)>,
    validations: [(Algorithm, Validation); 2],
    pub(crate) subject_header: HeaderName,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("keys", &self.keys.keys().collect::<Vec<_>>()).finish_non_exhaustive()
    }
}

/// Optional here, so that a token without one is refused by the claims check, which says so.
#[derive(serde::Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
}

impl Verifier {
    /// Reads the JWKS file `auth` names; errors name the file.
    pub(crate) fn load(auth: &Auth) -> Result<Self, String> {
        let path = auth.jwks_file.display();
        let size = std::fs::metadata(&auth.jwks_file).map_err(|e| format!("{path}: {e}"))?.len();
        if size > MAX_JWKS_BYTES {
            return Err(format!("{path}: {size} bytes, over the {MAX_JWKS_BYTES}-byte limit"));
        }
        let bytes = std::fs::read(&auth.jwks_file).map_err(|e| format!("{path}: {e}"))?;
        let set: JwkSet = serde_json::from_slice(&bytes).map_err(|e| format!("{path}: not a JWK set: {e}"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let algorithm = match (&jwk.common.key_algorithm, &jwk.algorithm) {
                (None | Some(KeyAlgorithm::RS256), AlgorithmParameters::RSA(_)) => Algorithm::RS256,
                (None | Some(KeyAlgorithm::ES256), AlgorithmParameters::EllipticCurve(ec))
                    if ec.curve == EllipticCurve::P256 =>
                {
                    Algorithm::ES256
                }
                // Keys for other uses or algorithms: not ours to accept tokens with.
                _ => continue,
            };
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|e| format!("{path}: key {:?}: {e}", jwk.common.key_id.as_deref().unwrap_or("")))?;
            keys.insert(jwk.common.key_id.clone(), (algorithm, key));
        }
        if keys.is_empty() {
            return Err(format!("{path}: no RS256 (RSA) or ES256 (P-256) key in it"));
        }
        let validation = |algorithm| {
            let mut v = Validation::new(algorithm);
            v.set_issuer(&[&auth.issuer]);
            v.set_audience(&auth.audiences);
            v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            v.leeway = u64::from(auth.leeway_s);
            v.validate_nbf = true;
            (algorithm, v)
        };
        let subject_header = HeaderName::from_bytes(auth.subject_header.as_bytes())
            .map_err(|e| format!("subject_header {:?}: {e}", auth.subject_header))?;
        Ok(Self { keys, validations: [validation(Algorithm::RS256), validation(Algorithm::ES256)], subject_header })
    }

    /// The subject of the request's bearer token, or why it is refused.
    pub(crate) fn verify(&self, headers: &HeaderMap) -> Result<HeaderValue, Refusal> {
        let Some(raw) = headers.get(AUTHORIZATION) else {
            return Err(refuse(AuthFailure::Missing, "no bearer token (Authorization: Bearer <token>)"));
        };
        let token = raw
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| refuse(AuthFailure::Malformed, "Authorization is not `Bearer <token>`"))?;
        let header = match jsonwebtoken::decode_header(token) {
            Ok(header) => header,
            Err(_) if declares_alg_none(token) => {
                return Err(refuse(AuthFailure::Algorithm, "alg `none` is not accepted"));
            }
            Err(e) => return Err(refuse(AuthFailure::Malformed, format!("not a JWT: {e}"))),
        };
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(refuse(AuthFailure::Algorithm, format!("alg {:?} is not accepted (RS256, ES256)", header.alg)));
        }
        let key = match &header.kid {
            Some(kid) => self.keys.get(&Some(kid.clone())),
            None if self.keys.len() == 1 => self.keys.values().next(),
            None => None,
        };
        let Some((algorithm, key)) = key else {
            let kid = header.kid.as_deref().unwrap_or("(none)");
            return Err(refuse(AuthFailure::UnknownKey, format!("no key {kid:?} in the JWKS")));
        };
        if *algorithm != header.alg {
            let detail = format!("the key is for {algorithm:?}, the token says {:?}", header.alg);
            return Err(refuse(AuthFailure::Algorithm, detail));
        }
        let validation = &self.validations.iter().find(|(a, _)| a == algorithm).unwrap_or(&self.validations[0]).1;
        let data = jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => refuse(AuthFailure::BadSignature, "the signature does not verify"),
            ErrorKind::ExpiredSignature => refuse(AuthFailure::Expired, "the token has expired"),
            ErrorKind::ImmatureSignature => refuse(AuthFailure::NotYetValid, "the token is not valid yet (nbf)"),
            ErrorKind::InvalidIssuer => refuse(AuthFailure::WrongIssuer, "the token is from another issuer"),
            ErrorKind::InvalidAudience => refuse(AuthFailure::WrongAudience, "the token is for another audience"),
            ErrorKind::MissingRequiredClaim(claim) => {
                refuse(AuthFailure::MissingClaim, format!("the token has no `{claim}`"))
            }
            ErrorKind::InvalidAlgorithm => refuse(AuthFailure::Algorithm, "the algorithm does not fit the key"),
            _ => refuse(AuthFailure::Malformed, format!("not a usable JWT: {e}")),
        })?;
        let Some(subject) = data.claims.sub else {
            return Err(refuse(AuthFailure::MissingClaim, "the token has no `sub`"));
        };
        if subject.is_empty() || subject.len() > MAX_SUBJECT {
            return Err(refuse(AuthFailure::Malformed, "`sub` is empty or too long"));
        }
        HeaderValue::from_str(&subject)
            .map_err(|_| refuse(AuthFailure::Malformed, "`sub` cannot be passed on in a header"))
    }
}

/// Whether the token's header says `"alg": "none"` (which `jsonwebtoken` cannot even parse).
fn declares_alg_none(token: &str) -> bool {
    let Some(header) = token.split('.').next() else { return false };
    let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header.trim_end_matches('=')) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&json)
        .ok()
        .and_then(|v| v.get("alg")?.as_str().map(|a| a.eq_ignore_ascii_case("none")))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alg_none_is_recognised_to_say_so() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(r#"{"sub":"x"}"#));
        assert!(declares_alg_none(&token));
        assert!(!declares_alg_none(&format!("{}.e30.x", b64(r#"{"alg":"RS256"}"#))));
        assert!(!declares_alg_none("garbage"));
    }
}

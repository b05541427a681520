//! HS256 sync tokens (PROTOCOL.md §1).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The `kid` of every token this server mints.
pub const KID: &str = "sync-auth-v1";
/// The claims version of every token this server mints.
pub const CLAIMS_VERSION: &str = "oa_sync_claims_v1";

/// Claims of a sync JWT, exactly the set of PROTOCOL.md §1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncClaims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Subject (`user:42`).
    pub sub: String,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Not before (unix seconds, = `iat`).
    pub nbf: i64,
    /// Expiry (unix seconds).
    pub exp: i64,
    /// Token id.
    pub jti: String,
    /// User id: a string or an integer (servers accept both, §7).
    pub oa_user_id: serde_json::Value,
    /// Organisation id.
    pub oa_org_id: String,
    /// Session id.
    pub oa_session_id: String,
    /// Device id.
    pub oa_device_id: String,
    /// Granted scopes.
    pub oa_sync_scopes: Vec<String>,
    /// Granted topics.
    pub oa_sync_topics: Vec<String>,
    /// `oa_sync_claims_v1`.
    pub oa_claims_version: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url segments of JSON, or a header other than HS256.
    #[error("malformed token")]
    Malformed,
    /// The HMAC does not verify.
    #[error("bad token signature")]
    BadSignature,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf`/`iat` is in the future beyond the allowed skew.
    #[error("token not yet valid")]
    NotYetValid,
    /// Issuer or audience differ from this server's.
    #[error("token issuer or audience mismatch")]
    WrongIssuer,
}

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8]) -> HmacSha256 {
    #[allow(clippy::expect_used)]
    HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length")
}

/// Signs `claims` as an HS256 JWT with header `{"alg":"HS256","typ":"JWT","kid":"sync-auth-v1"}`.
pub fn sign(secret: &[u8], claims: &SyncClaims) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT","kid":"sync-auth-v1"}"#);
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signing_input = format!("{header}.{body}");
    let mut m = mac(secret);
    m.update(signing_input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

/// The same token with its first signature character flipped: a well-formed JWT whose
/// signature no longer verifies.
pub fn tamper(token: &str) -> String {
    match token.rsplit_once('.') {
        Some((head, sig)) => {
            let mut chars: Vec<char> = sig.chars().collect();
            if let Some(c) = chars.first_mut() {
                *c = if *c == 'A' { 'B' } else { 'A' };
            }
            format!("{head}.{}", chars.into_iter().collect::<String>())
        }
        None => token.to_owned(),
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// Verifies signature, issuer/audience, `exp` (strict) and `nbf`/`iat` (with `skew` seconds).
pub fn verify(
    secret: &[u8],
    token: &str,
    now: i64,
    skew: i64,
    issuer: &str,
    audience: &str,
) -> Result<SyncClaims, TokenError> {
    let mut parts = token.split('.');
    let (Some(h), Some(b), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header_bytes = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| TokenError::Malformed)?;
    let header: Header =
        serde_json::from_slice(&header_bytes).map_err(|_| TokenError::Malformed)?;
    if header.alg != "HS256" {
        return Err(TokenError::Malformed);
    }
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| TokenError::Malformed)?;
    let mut m = mac(secret);
    m.update(h.as_bytes());
    m.update(b".");
    m.update(b.as_bytes());
    m.verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;
    let body = URL_SAFE_NO_PAD
        .decode(b)
        .map_err(|_| TokenError::Malformed)?;
    let claims: SyncClaims = serde_json::from_slice(&body).map_err(|_| TokenError::Malformed)?;
    if claims.iss != issuer || claims.aud != audience {
        return Err(TokenError::WrongIssuer);
    }
    if now >= claims.exp {
        return Err(TokenError::Expired);
    }
    if claims.nbf > now + skew || claims.iat > now + skew {
        return Err(TokenError::NotYetValid);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> SyncClaims {
        SyncClaims {
            iss: "i".into(),
            aud: "a".into(),
            sub: "user:1".into(),
            iat: 100,
            nbf: 100,
            exp,
            jti: "j".into(),
            oa_user_id: 1.into(),
            oa_org_id: "org:1".into(),
            oa_session_id: "s".into(),
            oa_device_id: "d".into(),
            oa_sync_scopes: vec![],
            oa_sync_topics: vec![],
            oa_claims_version: CLAIMS_VERSION.into(),
        }
    }

    #[test]
    fn round_trips_and_rejects() {
        let t = sign(b"k", &claims(200));
        assert_eq!(verify(b"k", &t, 150, 30, "i", "a"), Ok(claims(200)));
        assert_eq!(
            verify(b"x", &t, 150, 30, "i", "a"),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify(b"k", &t, 200, 30, "i", "a"),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify(b"k", &t, 60, 30, "i", "a"),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(verify(b"k", &t, 75, 30, "i", "a").map(|c| c.exp), Ok(200));
        assert_eq!(
            verify(b"k", "a.b", 150, 30, "i", "a"),
            Err(TokenError::Malformed)
        );
    }
}

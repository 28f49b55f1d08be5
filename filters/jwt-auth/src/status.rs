//! Why a request passed or failed, with the words and status codes of Envoy's `jwt_authn`, so
//! the same case gives the same answer whichever filter runs.

/// The outcome of verifying a request's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Every token verified.
    Ok,
    /// No token in any configured location.
    Missing,
    /// A token is larger than `max_token_bytes`.
    TooLarge,
    /// Not three base64url segments separated by dots.
    BadFormat,
    /// The header segment is not base64url.
    HeaderBadBase64,
    /// The header is not a JSON object.
    HeaderBadJson,
    /// The header has no string `alg`.
    HeaderBadAlg,
    /// The header's `alg` is not one this filter verifies (`none` among them).
    HeaderNotImplementedAlg,
    /// The header's `kid` is not a string.
    HeaderBadKid,
    /// The header has a `crit` parameter (no extension is understood).
    HeaderUnknownCrit,
    /// The payload segment is not base64url.
    PayloadBadBase64,
    /// The payload is not a JSON object.
    PayloadBadJson,
    /// `iss` is not a string.
    PayloadIssNotString,
    /// `aud` is not a string or a list of strings.
    PayloadAudNotString,
    /// `exp` is not a number.
    PayloadExpNotNumber,
    /// `nbf` is not a number.
    PayloadNbfNotNumber,
    /// `iat` is not a number.
    PayloadIatNotNumber,
    /// The signature segment is not base64url.
    SignatureBadBase64,
    /// The token's issuer is not the provider's.
    UnknownIssuer,
    /// `exp` has passed (with the clock skew).
    Expired,
    /// `nbf` has not come yet (with the clock skew).
    NotYetValid,
    /// The provider requires `exp` and the token has none.
    MissingExpiration,
    /// The token lives longer than the provider's `max_lifetime`.
    LifetimeExceeded,
    /// The algorithm is not among the provider's allowed ones.
    AlgNotAllowed,
    /// No audience of the token is allowed (403).
    AudienceNotAllowed,
    /// No key matches the token's `kid` and `alg`.
    KidAlgMismatch,
    /// The provider's remote key set has not been fetched yet.
    JwksUnavailable,
    /// A key matched and the signature does not verify with it.
    VerificationFailed,
    /// An Ed25519 key matched and the signature is not 64 bytes.
    Ed25519SignatureWrongLength,
    /// Every token verified and one lacks a claim or scope the requirement demands (403,
    /// RFC 6750's `insufficient_scope`).
    InsufficientScope,
    /// Tokens that verified name different identities (the values `claim_to_headers` would
    /// send differ); Envoy would send both.
    IdentityConflict,
}

impl Status {
    /// The HTTP status Envoy's `jwt_authn` answers with: 403 for an audience that is not
    /// allowed (and here for missing claims or scopes), 401 for everything else.
    pub fn http_status(self) -> u16 {
        match self {
            Status::AudienceNotAllowed | Status::InsufficientScope => 403,
            _ => 401,
        }
    }

    /// Envoy's message for the case (the body of its reply; here the `message` of the JSON body).
    pub fn message(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Missing => "Jwt is missing",
            Status::TooLarge => "Jwt is larger than the allowed size",
            Status::BadFormat => {
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            }
            Status::HeaderBadBase64 => "Jwt header is an invalid Base64url encoded",
            Status::HeaderBadJson => "Jwt header is an invalid JSON",
            Status::HeaderBadAlg => "Jwt header [alg] field is required and must be a string",
            Status::HeaderNotImplementedAlg => "Jwt header [alg] is not supported",
            Status::HeaderBadKid => "Jwt header [kid] field is not a string",
            Status::HeaderUnknownCrit => "Jwt header [crit] names an extension that is not understood",
            Status::PayloadBadBase64 => "Jwt payload is an invalid Base64url encoded",
            Status::PayloadBadJson => "Jwt payload is an invalid JSON",
            Status::PayloadIssNotString => "Jwt payload [iss] field is not a string",
            Status::PayloadAudNotString => "Jwt payload [aud] field is not a string or string list",
            Status::PayloadExpNotNumber => "Jwt payload [exp] field is not a number",
            Status::PayloadNbfNotNumber => "Jwt payload [nbf] field is not a number",
            Status::PayloadIatNotNumber => "Jwt payload [iat] field is not a number",
            Status::SignatureBadBase64 => "Jwt signature is an invalid Base64url encoded",
            Status::UnknownIssuer => "Jwt issuer is not configured",
            Status::Expired => "Jwt is expired",
            Status::NotYetValid => "Jwt not yet valid",
            Status::MissingExpiration => "Jwt has no exp claim and the provider requires one",
            Status::LifetimeExceeded => "Jwt lifetime exceeds the allowed maximum",
            Status::AlgNotAllowed => "Jwt header [alg] is not allowed for this provider",
            Status::AudienceNotAllowed => "Audiences in Jwt are not allowed",
            Status::KidAlgMismatch => "Jwks doesn't have key to match kid or alg from Jwt",
            Status::JwksUnavailable => "Jwks remote fetch is failed",
            Status::VerificationFailed => "Jwt verification fails",
            Status::Ed25519SignatureWrongLength => "Jwt ED25519 signature is wrong length",
            Status::IdentityConflict => "Jwts in the request name different identities",
            Status::InsufficientScope => "Jwt lacks the claims or scopes the route requires",
        }
    }

    /// The `code` of the JSON reply and the `reason` label of the denied counter.
    pub fn code(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Missing => "missing",
            Status::TooLarge => "too_large",
            Status::BadFormat
            | Status::HeaderBadBase64
            | Status::HeaderBadJson
            | Status::HeaderBadAlg
            | Status::HeaderBadKid
            | Status::PayloadBadBase64
            | Status::PayloadBadJson
            | Status::PayloadIssNotString
            | Status::PayloadAudNotString
            | Status::PayloadExpNotNumber
            | Status::PayloadNbfNotNumber
            | Status::PayloadIatNotNumber
            | Status::SignatureBadBase64 => "malformed",
            Status::HeaderNotImplementedAlg | Status::AlgNotAllowed => "bad_algorithm",
            Status::HeaderUnknownCrit => "unknown_crit",
            Status::UnknownIssuer => "unknown_issuer",
            Status::Expired => "expired",
            Status::NotYetValid => "not_yet_valid",
            Status::MissingExpiration | Status::LifetimeExceeded => "bad_lifetime",
            Status::AudienceNotAllowed => "audience_not_allowed",
            Status::KidAlgMismatch => "unknown_key",
            Status::JwksUnavailable => "jwks_unavailable",
            Status::VerificationFailed | Status::Ed25519SignatureWrongLength => "bad_signature",
            Status::IdentityConflict => "identity_conflict",
            Status::InsufficientScope => "insufficient_scope",
        }
    }

    /// Every reason a request can be denied with (the `reason` label values).
    pub const DENY_CODES: [&'static str; 15] = [
        "missing",
        "too_large",
        "malformed",
        "bad_algorithm",
        "unknown_crit",
        "unknown_issuer",
        "expired",
        "not_yet_valid",
        "bad_lifetime",
        "audience_not_allowed",
        "unknown_key",
        "jwks_unavailable",
        "bad_signature",
        "identity_conflict",
        "insufficient_scope",
    ];

    /// Whether, among several failures of a `requires_any`, another one says more: a missing
    /// token or a token of another issuer only tell that this alternative did not apply.
    pub fn is_weak(self) -> bool {
        matches!(self, Status::Missing | Status::UnknownIssuer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_audience_and_claims_are_forbidden() {
        assert_eq!(Status::AudienceNotAllowed.http_status(), 403);
        assert_eq!(Status::InsufficientScope.http_status(), 403);
        assert_eq!(Status::Missing.http_status(), 401);
        assert_eq!(Status::VerificationFailed.http_status(), 401);
        assert_eq!(Status::JwksUnavailable.http_status(), 401);
        assert_eq!(Status::IdentityConflict.http_status(), 401);
    }

    #[test]
    fn every_code_is_a_declared_reason() {
        let all = [
            Status::Missing,
            Status::TooLarge,
            Status::BadFormat,
            Status::HeaderNotImplementedAlg,
            Status::HeaderUnknownCrit,
            Status::UnknownIssuer,
            Status::Expired,
            Status::NotYetValid,
            Status::LifetimeExceeded,
            Status::AudienceNotAllowed,
            Status::KidAlgMismatch,
            Status::JwksUnavailable,
            Status::VerificationFailed,
            Status::Ed25519SignatureWrongLength,
            Status::IdentityConflict,
            Status::InsufficientScope,
        ];
        for s in all {
            assert!(Status::DENY_CODES.contains(&s.code()), "{s:?}");
        }
    }
}

//! Verifying tokens for providers, and requirements (provider, any, all, allow missing) over a
//! request's tokens, with Envoy's `jwt_authn` semantics:
//! - a provider requirement needs at least one token in the provider's locations, and every
//!   token found there must verify (a good token next to a bad one fails: the upstream could
//!   otherwise read the bad one);
//! - checks run in Envoy's order: format, issuer, `exp`/`nbf`, audiences, then key and
//!   signature; so a token for the wrong audience is answered 403 as Envoy answers it;
//! - `requires_any` passes when one alternative passes; otherwise it reports the most telling
//!   failure (a missing token or another issuer's token only when nothing else failed).

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;

use gatewasm::Request;

use crate::authz::ClaimRules;
use crate::extractor::{self, Found, Location};
use crate::jwks_cache::{KeySource, TokenCache, Verified};
use crate::jwt::{self, Alg};
use crate::keys::SignatureCheck;
use crate::outputs;
use crate::rules::Requirement;
use crate::status::Status;

/// What a provider does with a token that verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outputs {
    /// `(header, claim path)`: the claim's value (string, number or boolean) goes upstream in
    /// the header.
    pub claim_to_headers: Vec<(String, String)>,
    /// Header that receives the payload segment (base64url).
    pub forward_payload_header: Option<String>,
    /// Keep the token in the request (otherwise it is removed from where it was found).
    pub forward: bool,
}

/// A configured provider.
#[derive(Debug)]
pub struct Provider {
    /// Its name in the configuration.
    pub name: String,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Allowed audiences (normalized); empty: not checked.
    pub audiences: Vec<String>,
    /// Allowed algorithms; empty: every algorithm a key fits.
    pub algorithms: Vec<Alg>,
    /// Where its tokens are.
    pub locations: Vec<Location>,
    /// Clock skew for `exp`/`nbf`, seconds.
    pub clock_skew: u64,
    /// Whether `exp` is required.
    pub require_expiration: bool,
    /// Longest allowed lifetime, seconds.
    pub max_lifetime: Option<u64>,
    /// Largest token accepted, bytes.
    pub max_token_bytes: usize,
    /// What happens upstream of a verified token.
    pub outputs: Outputs,
    /// Its keys.
    pub keys: KeySource,
    /// Its verified tokens.
    pub cache: RefCell<TokenCache>,
}

/// Audiences compare without `http://`/`https://` and a trailing `/`, as Envoy compares them.
pub fn normalize_audience(aud: &str) -> &str {
    let a = aud.strip_prefix("https://").or_else(|| aud.strip_prefix("http://")).unwrap_or(aud);
    a.strip_suffix('/').unwrap_or(a)
}

fn audiences_ok(allowed: &[String], token: &[String]) -> bool {
    allowed.is_empty() || token.iter().any(|a| allowed.iter().any(|b| b == normalize_audience(a)))
}

impl Provider {
    /// Verifies one token at time `now` (seconds); `audiences` replace the provider's when given.
    /// `host` checks the RS*/ES* signatures it can (Envoy's `verify_signature`); without it
    /// (`host_crypto` off) the module checks every signature itself.
    pub fn verify(
        &self,
        token: &str,
        now: u64,
        audiences: Option<&[String]>,
        host: Option<SignatureCheck<'_>>,
    ) -> Result<Rc<Verified>, Status> {
        if token.len() > self.max_token_bytes {
            return Err(Status::TooLarge);
        }
        let audiences = audiences.unwrap_or(&self.audiences);
        let cached = self.cache.borrow().get(token);
        if let Some(v) = cached {
            if v.claims.exp.is_some_and(|exp| now > exp.saturating_add(self.clock_skew)) {
                self.cache.borrow_mut().remove(token);
                return Err(Status::Expired);
            }
            if !audiences_ok(audiences, &v.claims.aud) {
                return Err(Status::AudienceNotAllowed);
            }
            return Ok(v);
        }

        let jwt = jwt::parse(token)?;
        let c = &jwt.claims;
        if let Some(iss) = &self.issuer {
            if c.iss.as_deref() != Some(iss.as_str()) {
                return Err(Status::UnknownIssuer);
            }
        }
        if c.exp.is_some_and(|exp| now > exp.saturating_add(self.clock_skew)) {
            return Err(Status::Expired);
        }
        if c.nbf.is_some_and(|nbf| nbf > now.saturating_add(self.clock_skew)) {
            return Err(Status::NotYetValid);
        }
        if self.require_expiration && c.exp.is_none() {
            return Err(Status::MissingExpiration);
        }
        if let Some(max) = self.max_lifetime {
            let exp = c.exp.ok_or(Status::MissingExpiration)?;
            let start = c.iat.or(c.nbf).unwrap_or(now);
            if exp.saturating_sub(start) > max {
                return Err(Status::LifetimeExceeded);
            }
        }
        if !audiences_ok(audiences, &c.aud) {
            return Err(Status::AudienceNotAllowed);
        }
        if !self.algorithms.is_empty() && !self.algorithms.contains(&jwt.alg) {
            return Err(Status::AlgNotAllowed);
        }
        let keys = self.keys.current().ok_or(Status::JwksUnavailable)?;
        match keys.verify(&jwt, host) {
            Status::Ok => {}
            Status::KidAlgMismatch => {
                if let (Some(kid), KeySource::Remote(remote)) = (&jwt.kid, &self.keys) {
                    if !keys.has_kid(kid) {
                        remote.unknown_kid();
                    }
                }
                return Err(Status::KidAlgMismatch);
            }
            other => return Err(other),
        }
        let verified = Rc::new(Verified { claims: jwt.claims, payload_b64: jwt.payload_b64.to_string() });
        self.cache.borrow_mut().insert(token, Rc::clone(&verified));
        Ok(verified)
    }
}

/// A token that verified, and where it was.
#[derive(Debug, Clone)]
pub struct Success<'r> {
    /// Provider index.
    pub provider: usize,
    /// Location index in the provider's list.
    pub location: usize,
    /// The token as found (borrowed from the request where it could be).
    pub token: Cow<'r, str>,
    /// The verified token.
    pub verified: Rc<Verified>,
}

/// A token's verification under `allow_missing*`: the provider that verified it, or why not.
type Outcome = Result<(usize, Rc<Verified>), Status>;

/// One request's evaluation: tokens are extracted per provider once.
pub struct Evaluation<'a> {
    providers: &'a [Provider],
    req: &'a Request,
    now: u64,
    host: Option<SignatureCheck<'a>>,
    found: Vec<Option<Vec<Found<'a>>>>,
}

impl<'a> Evaluation<'a> {
    /// An evaluation of `req` at time `now` (seconds), signatures checked by `host` where it
    /// can ([`Provider::verify`]).
    pub fn new(
        providers: &'a [Provider],
        req: &'a Request,
        now: u64,
        host: Option<SignatureCheck<'a>>,
    ) -> Self {
        Self { providers, req, now, host, found: providers.iter().map(|_| None).collect() }
    }

    /// Evaluates the rule's requirement: [`Evaluation::run`], then refuses a request whose
    /// verified tokens name different identities ([`identities_conflict`]).
    pub fn decide(&mut self, requirement: &Requirement, out: &mut Vec<Success<'a>>) -> Status {
        let status = self.run(requirement, out);
        if status == Status::Ok && identities_conflict(self.providers, out) {
            return Status::IdentityConflict;
        }
        status
    }

    /// `(provider, location)` of every token this evaluation found that is not among the
    /// verified `successes` (at that location, with that text): one that failed under
    /// `allow_missing_or_failed`, or in an alternative of `requires_any` that did not pass, or
    /// that was never checked because another token of its provider failed first. The request
    /// passed without them, and an unverified credential must not reach the upstream, whatever
    /// `forward` says. Empty (and not allocated) when every token found verified.
    pub fn unverified(&self, successes: &[Success<'_>]) -> Vec<(usize, usize)> {
        let mut unverified = Vec::new();
        for (index, slot) in self.found.iter().enumerate() {
            let (Some(found), Some(p)) = (slot, self.providers.get(index)) else { continue };
            for f in found {
                let at = p.locations.get(f.location);
                let verified = successes.iter().any(|s| {
                    s.token == f.token
                        && self.providers.get(s.provider).and_then(|q| q.locations.get(s.location)) == at
                });
                if !verified && !unverified.contains(&(index, f.location)) {
                    unverified.push((index, f.location));
                }
            }
        }
        unverified
    }

    fn tokens(&mut self, provider: usize) -> Vec<Found<'a>> {
        let Some(slot) = self.found.get_mut(provider) else {
            return Vec::new();
        };
        if slot.is_none() {
            let locations = self.providers.get(provider).map(|p| p.locations.as_slice()).unwrap_or_default();
            *slot = Some(extractor::extract(locations, self.req));
        }
        slot.clone().unwrap_or_default()
    }

    /// Evaluates `req`, appending the verified tokens to `out` when it passes.
    pub fn run(&mut self, requirement: &Requirement, out: &mut Vec<Success<'a>>) -> Status {
        match requirement {
            Requirement::Provider { provider, audiences, claims } => {
                self.provider(*provider, audiences.as_deref(), claims.as_deref(), out)
            }
            Requirement::Any(alternatives) => {
                let mut failure: Option<Status> = None;
                for alt in alternatives {
                    let mut mine = Vec::new();
                    match self.run(alt, &mut mine) {
                        Status::Ok => {
                            out.append(&mut mine);
                            return Status::Ok;
                        }
                        s => {
                            let better = match failure {
                                None => true,
                                Some(f) => {
                                    !s.is_weak() || (f == Status::Missing && s == Status::UnknownIssuer)
                                }
                            };
                            if better {
                                failure = Some(s);
                            }
                        }
                    }
                }
                failure.unwrap_or(Status::Missing)
            }
            Requirement::All(all) => {
                let mut mine = Vec::new();
                for r in all {
                    let s = self.run(r, &mut mine);
                    if s != Status::Ok {
                        return s;
                    }
                }
                out.append(&mut mine);
                Status::Ok
            }
            Requirement::AllowMissing => self.any_provider(false, out),
            Requirement::AllowMissingOrFailed => self.any_provider(true, out),
        }
    }

    /// Every token in the provider's locations must verify and, with `claims`, carry them.
    fn provider(
        &mut self,
        index: usize,
        audiences: Option<&[String]>,
        claims: Option<&ClaimRules>,
        out: &mut Vec<Success<'a>>,
    ) -> Status {
        let Some(p) = self.providers.get(index) else {
            return Status::UnknownIssuer;
        };
        let found = self.tokens(index);
        if found.is_empty() {
            return Status::Missing;
        }
        let mut mine: Vec<Success<'a>> = Vec::with_capacity(found.len());
        for (i, f) in found.iter().enumerate() {
            // The same token in two places is verified once.
            let earlier = found.iter().take(i).position(|g| g.token == f.token);
            let verified = match earlier.and_then(|e| mine.get(e)) {
                Some(s) => Rc::clone(&s.verified),
                None => match p.verify(&f.token, self.now, audiences, self.host) {
                    Ok(v) => v,
                    Err(s) => return s,
                },
            };
            mine.push(Success { provider: index, location: f.location, token: f.token.clone(), verified });
        }
        // Checked once every token verified, so a bad token is answered as such (401) first.
        // The tokens stay out of `out`: the request does not pass with them.
        if let Some(rules) = claims {
            if !mine.iter().all(|s| rules.satisfied_by(&s.verified.claims)) {
                return Status::InsufficientScope;
            }
        }
        out.append(&mut mine);
        Status::Ok
    }

    /// Tokens are optional: each token found in any provider's locations must verify with a
    /// provider that has that location and its issuer, unless `ignore_failures`.
    fn any_provider(&mut self, ignore_failures: bool, out: &mut Vec<Success<'a>>) -> Status {
        // Every token found, in order; a token text found again is verified once, but each of
        // its locations gets the outcome (a failed copy must be removed too).
        let mut all: Vec<(usize, usize, Cow<'a, str>)> = Vec::new();
        for index in 0..self.providers.len() {
            for f in self.tokens(index) {
                all.push((index, f.location, f.token));
            }
        }
        let mut outcomes: Vec<(Cow<'a, str>, Outcome)> = Vec::new();
        // Providers sharing a location (`authorization`) find the same token there: one place.
        let mut places: Vec<(&Location, Cow<'a, str>)> = Vec::new();
        let mut failure = None;
        for (index, location, token) in all {
            let Some(loc) = self.providers.get(index).and_then(|p| p.locations.get(location)) else {
                continue;
            };
            if places.iter().any(|(l, t)| *l == loc && *t == token) {
                continue;
            }
            places.push((loc, token.clone()));
            let earlier = outcomes.iter().find(|(t, _)| *t == token).map(|(_, r)| r.clone());
            let first = earlier.is_none();
            let result = match earlier {
                Some(r) => r,
                None => {
                    // Providers with the same location, this one first; the first whose issuer
                    // fits.
                    let candidates = std::iter::once(index).chain((0..self.providers.len()).filter(|&i| {
                        i != index && self.providers.get(i).is_some_and(|p| p.locations.contains(loc))
                    }));
                    let mut result = Err(Status::UnknownIssuer);
                    for c in candidates {
                        let Some(p) = self.providers.get(c) else { continue };
                        result = p.verify(&token, self.now, None, self.host).map(|v| (c, v));
                        if result.as_ref().err() != Some(&Status::UnknownIssuer) {
                            break;
                        }
                    }
                    outcomes.push((token.clone(), result.clone()));
                    result
                }
            };
            match result {
                Ok((c, verified)) => {
                    // The location as the verifying provider lists it (a copy found only through
                    // another provider's location keeps its place: it verified).
                    if let Some(at) =
                        self.providers.get(c).and_then(|p| p.locations.iter().position(|l| l == loc))
                    {
                        out.push(Success { provider: c, location: at, token: token.clone(), verified });
                    }
                }
                Err(s) => {
                    if failure.is_none() && first {
                        failure = Some(s);
                    }
                }
            }
        }
        match failure {
            Some(s) if !ignore_failures => s,
            _ => Status::Ok,
        }
    }
}

/// Whether the verified tokens of one request name different identities: some header of
/// `claim_to_headers` would get different values from two of them (a claim one token has and
/// another lacks counts as different). Tokens found in several places would otherwise let the
/// last one read decide who the request is, so a link carrying `?token=` could switch the
/// identity a logged-in browser presents.
pub fn identities_conflict(providers: &[Provider], successes: &[Success<'_>]) -> bool {
    let Some((first, rest)) = successes.split_first() else { return false };
    // One token (found once or in several places) cannot disagree with itself.
    if rest.iter().all(|s| std::rc::Rc::ptr_eq(&s.verified, &first.verified)) {
        return false;
    }
    let mut seen: Vec<(&str, Option<String>)> = Vec::new();
    for s in successes {
        let Some(p) = providers.get(s.provider) else { continue };
        for (header, claim) in &p.outputs.claim_to_headers {
            let value = s.verified.claims.get(claim).and_then(outputs::claim_header_value);
            match seen.iter().find(|(h, _)| h == header) {
                Some((_, earlier)) if *earlier != value => return true,
                Some(_) => {}
                None => seen.push((header, value)),
            }
        }
    }
    false
}

//! Pushing an [`Image`] to a registry over the OCI distribution API (`oci-client`, rustls with
//! the ring provider).

use std::fmt;

use anyhow::{bail, Context as _};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use crate::image::{Image, MANIFEST_MEDIA_TYPE};

/// Environment variable with the registry user name (basic auth).
pub const USERNAME_ENV: &str = "GATEWASM_REGISTRY_USERNAME";
/// Environment variable with the registry password (basic auth).
pub const PASSWORD_ENV: &str = "GATEWASM_REGISTRY_PASSWORD";
/// Environment variable with a registry bearer token.
pub const TOKEN_ENV: &str = "GATEWASM_REGISTRY_TOKEN";

/// Registry credentials. `Debug` never shows a secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// No credentials.
    #[default]
    Anonymous,
    /// HTTP basic auth (also used to obtain a token when the registry asks for bearer auth).
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// A bearer token sent as is.
    Bearer(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credentials::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

impl Credentials {
    /// Credentials from a user name (flag or [`USERNAME_ENV`]), a password ([`PASSWORD_ENV`] or
    /// stdin, passed in) and a token ([`TOKEN_ENV`]). A password without a user name, or both a
    /// token and a password, is an error.
    pub fn resolve(
        username: Option<String>,
        password: Option<String>,
        token: Option<String>,
    ) -> anyhow::Result<Credentials> {
        let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
        match (nonempty(username), nonempty(password), nonempty(token)) {
            (_, Some(_), Some(_)) => bail!("give either a password or ${TOKEN_ENV}, not both"),
            (None, None, None) => Ok(Credentials::Anonymous),
            (Some(username), Some(password), None) => Ok(Credentials::Basic { username, password }),
            (Some(username), None, None) => {
                bail!(
                    "--username {username:?} needs a password: set ${PASSWORD_ENV} or pass --password-stdin"
                )
            }
            (None, Some(_), _) => bail!("a password was given without --username (or ${USERNAME_ENV})"),
            (_, None, Some(token)) => Ok(Credentials::Bearer(token)),
        }
    }

    fn to_auth(&self) -> RegistryAuth {
        match self {
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Credentials::Bearer(token) => RegistryAuth::Bearer(token.clone()),
        }
    }
}

/// Where to push.
#[derive(Clone, Debug)]
pub struct Target {
    /// `host[:port]/path/name:tag`.
    pub reference: String,
    /// Talk plain HTTP (local registries); HTTPS otherwise.
    pub plain_http: bool,
    /// Credentials.
    pub credentials: Credentials,
}

/// What a push did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// The reference pushed (`host/path/name:tag`).
    pub reference: String,
    /// The manifest digest the registry reports for the tag, `sha256:<hex>` (checked equal to
    /// the image's own digest).
    pub manifest_digest: String,
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Blobs the registry already had.
    pub already_present: usize,
}

/// Pushes `image` (blobs, then the manifest under the reference's tag) and checks that the
/// registry reports the manifest digest the image has. Blobs the registry has are not uploaded.
pub async fn push(image: &Image, target: &Target) -> anyhow::Result<Pushed> {
    // The ring provider is the process-wide rustls provider; installing it twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let reference: Reference = target
        .reference
        .parse()
        .with_context(|| format!("image reference {:?} is not valid", target.reference))?;
    let config = ClientConfig {
        protocol: if target.plain_http { ClientProtocol::Http } else { ClientProtocol::Https },
        ..ClientConfig::default()
    };
    let client = Client::new(config);
    let auth = target.credentials.to_auth();
    client
        .auth(&reference, &auth, RegistryOperation::Push)
        .await
        .with_context(|| format!("authenticating to {}", reference.resolve_registry()))?;
    let (mut uploaded, mut already_present) = (0, 0);
    for blob in image.blobs() {
        let exists = client
            .blob_exists(&reference, &blob.digest)
            .await
            .with_context(|| format!("checking blob {} in {}", blob.digest, target.reference))?;
        if exists {
            already_present += 1;
            continue;
        }
        client
            .push_blob(&reference, blob.data.clone(), &blob.digest)
            .await
            .with_context(|| format!("uploading blob {} to {}", blob.digest, target.reference))?;
        uploaded += 1;
    }
    let content_type = http::HeaderValue::from_static(MANIFEST_MEDIA_TYPE);
    client
        .push_manifest_raw(&reference, image.manifest.data.clone(), content_type)
        .await
        .with_context(|| format!("pushing the manifest of {}", target.reference))?;
    let manifest_digest = client
        .fetch_manifest_digest(&reference, &auth)
        .await
        .with_context(|| format!("reading back the manifest digest of {}", target.reference))?;
    if manifest_digest != image.digest() {
        bail!(
            "{} reports manifest digest {manifest_digest}, the image has {}; the registry rewrote the manifest",
            target.reference,
            image.digest()
        );
    }
    Ok(Pushed { reference: target.reference.clone(), manifest_digest, uploaded, already_present })
}

/// [`push`] on a fresh single-threaded runtime, for synchronous callers.
pub fn push_blocking(image: &Image, target: &Target) -> anyhow::Result<Pushed> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(push(image, target))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    #[test]
    fn credentials() {
        assert_eq!(Credentials::resolve(None, None, None).unwrap(), Credentials::Anonymous);
        assert_eq!(
            Credentials::resolve(s("u"), s("p"), None).unwrap(),
            Credentials::Basic { username: "u".into(), password: "p".into() }
        );
        assert_eq!(Credentials::resolve(None, None, s("t")).unwrap(), Credentials::Bearer("t".into()));
        assert!(Credentials::resolve(s("u"), None, None)
            .unwrap_err()
            .to_string()
            .contains("--username \"u\""));
        assert!(Credentials::resolve(None, s("p"), None).is_err());
        assert!(Credentials::resolve(s("u"), s("p"), s("t")).is_err());
        assert_eq!(Credentials::resolve(s(""), s(""), s("")).unwrap(), Credentials::Anonymous);
    }

    #[test]
    fn debug_hides_secrets() {
        let basic = Credentials::Basic { username: "u".into(), password: "hunter2".into() };
        assert_eq!(format!("{basic:?}"), "Basic(u, <redacted>)");
        assert!(!format!("{:?}", Credentials::Bearer("tok".into())).contains("tok"));
    }
}

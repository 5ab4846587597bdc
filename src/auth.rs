//! Who is calling and what they may do: credentials from an auth file, session tokens, roles, and
//! the signatures that keep statement handles from being forged.
//!
//! The auth file (`--auth-file`, TOML) lists users with Argon2 password hashes and API tokens stored as
//! SHA-256 digests, each with a role: `read` (queries and metadata) or `read_write` (also ingest, DDL,
//! DML, `REFRESH`, `RELOAD MODELS`). A user logs in with the Flight handshake (HTTP Basic) and gets a
//! bearer token signed with the server's key; API tokens are sent as bearer tokens directly. Without an
//! auth file every caller is `anonymous` with `read_write` (only allowed on a loopback address).
//!
//! The signing key comes from `QUIVER_AUTH_SECRET` (so tokens and handles stay valid across restarts
//! and replicas) or is drawn at random when the server starts.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ring::rand::SecureRandom;
use ring::{digest, hmac};
use serde::Deserialize;

use crate::error::{Error, Result};

/// Environment variable holding the signing secret (at least 32 bytes).
pub const SECRET_ENV: &str = "QUIVER_AUTH_SECRET";
const MIN_SECRET_BYTES: usize = 32;
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);
const SESSION_TOKEN_PREFIX: &str = "qv1";
/// Basic credentials are standard base64; Go's Flight client (the ADBC driver) omits the padding.
const BASIC: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Queries, metadata, prepared statements.
    Read,
    /// Everything `Read` may, plus ingest, DDL, DML, `REFRESH FEATURE VIEW`, `RELOAD MODELS`.
    ReadWrite,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::ReadWrite => "read_write",
        }
    }
}

/// An authenticated caller, attached to each request by the server's auth layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: Arc<str>,
    pub role: Role,
}

impl Principal {
    /// The caller of a server without an auth file.
    pub fn anonymous() -> Self {
        Self {
            name: "anonymous".into(),
            role: Role::ReadWrite,
        }
    }

    /// Fails with PermissionDenied unless this caller may write; `what` names the operation.
    pub fn authorize_write(&self, what: &str) -> Result<()> {
        match self.role {
            Role::ReadWrite => Ok(()),
            Role::Read => Err(Error::PermissionDenied(format!(
                "'{}' has role {} and cannot run {what} (needs {})",
                self.name,
                self.role.as_str(),
                Role::ReadWrite.as_str()
            ))),
        }
    }
}

/// The auth file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    /// How long a token from the handshake is valid, e.g. "12h".
    token_ttl: Option<String>,
    #[serde(default)]
    users: Vec<UserEntry>,
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    /// Argon2 PHC string (`quiver auth hash-password`).
    password_hash: String,
    role: Role,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    /// Hex SHA-256 of the token (`quiver auth new-token`).
    sha256: String,
    role: Role,
}

struct User {
    password_hash: String,
    role: Role,
}

/// Credentials the server accepts.
struct Credentials {
    users: HashMap<String, User>,
    /// SHA-256 of each API token.
    tokens: HashMap<[u8; 32], Principal>,
    token_ttl: Duration,
}

/// Authentication and signing for one server.
pub struct Auth {
    /// `None`: no auth file, everyone is [`Principal::anonymous`].
    credentials: Option<Credentials>,
    key: hmac::Key,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("enabled", &self.credentials.is_some())
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// No authentication: every caller is anonymous and may write.
    pub fn open() -> Result<Self> {
        Ok(Self {
            credentials: None,
            key: signing_key()?,
        })
    }

    /// Loads an auth file; every mistake names the file and the entry.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bad = |message: String| Error::Config {
            setting: "--auth-file",
            message: format!("{}: {message}", path.display()),
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let file: AuthFile = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let token_ttl = match &file.token_ttl {
            None => DEFAULT_TOKEN_TTL,
            Some(raw) => humantime::parse_duration(raw)
                .map_err(|e| bad(format!("token_ttl '{raw}': {e}")))?,
        };
        let mut users = HashMap::new();
        for user in file.users {
            argon2::PasswordHash::new(&user.password_hash).map_err(|e| {
                bad(format!(
                    "user '{}': password_hash is not an Argon2 PHC string ({e}); make one with \
                     `quiver auth hash-password`",
                    user.name
                ))
            })?;
            if users.contains_key(&user.name) {
                return Err(bad(format!("user '{}' is listed twice", user.name)));
            }
            users.insert(
                user.name,
                User {
                    password_hash: user.password_hash,
                    role: user.role,
                },
            );
        }
        let mut tokens = HashMap::new();
        for token in file.tokens {
            let digest = parse_sha256(&token.sha256).ok_or_else(|| {
                bad(format!(
                    "token '{}': sha256 must be 64 hex digits (`quiver auth new-token` prints it)",
                    token.name
                ))
            })?;
            let principal = Principal {
                name: token.name.into(),
                role: token.role,
            };
            if tokens.insert(digest, principal).is_some() {
                return Err(bad("two tokens have the same sha256".into()));
            }
        }
        if users.is_empty() && tokens.is_empty() {
            return Err(bad(
                "lists no users and no tokens: nobody could connect".into()
            ));
        }
        Ok(Self {
            credentials: Some(Credentials {
                users,
                tokens,
                token_ttl,
            }),
            key: signing_key()?,
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.credentials.is_some()
    }

    /// The caller of an RPC, from its `authorization` header (`Bearer <token>`).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal> {
        let Some(credentials) = &self.credentials else {
            return Ok(Principal::anonymous());
        };
        let Some(header) = authorization else {
            return Err(Error::Unauthenticated(
                "no credentials: send 'authorization: Bearer <token>', or log in with a username \
                 and password (Flight handshake)"
                    .into(),
            ));
        };
        let Some(token) = strip_scheme(header, "Bearer") else {
            return Err(Error::Unauthenticated(
                "the authorization header must be 'Bearer <token>' (username and password go \
                 through the Flight handshake)"
                    .into(),
            ));
        };
        let digest = sha256(token.as_bytes());
        if let Some(principal) = credentials.tokens.get(&digest) {
            return Ok(principal.clone());
        }
        self.verify_session_token(credentials, token)
    }

    /// Checks `Basic <base64(user:password)>` and returns the user with a fresh bearer token.
    /// Argon2 is deliberately slow: call this off the IO threads.
    pub fn login(&self, authorization: Option<&str>) -> Result<(Principal, String)> {
        let Some(credentials) = &self.credentials else {
            let principal = Principal::anonymous();
            let token = self.issue(&principal, DEFAULT_TOKEN_TTL);
            return Ok((principal, token));
        };
        let refused = || Error::Unauthenticated("invalid username or password".into());
        let encoded = authorization
            .and_then(|h| strip_scheme(h, "Basic"))
            .ok_or_else(|| {
                Error::Unauthenticated(
                    "the handshake needs 'authorization: Basic <base64(user:password)>'".into(),
                )
            })?;
        let decoded = BASIC
            .decode(encoded)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| {
                Error::Unauthenticated(
                    "the Basic credentials are not base64 of user:password".into(),
                )
            })?;
        let (name, password) = decoded.split_once(':').ok_or_else(refused)?;
        let user = credentials.users.get(name).ok_or_else(refused)?;
        let hash = argon2::PasswordHash::new(&user.password_hash)
            .map_err(|e| Error::Internal(format!("stored hash of '{name}': {e}")))?;
        use argon2::PasswordVerifier;
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .map_err(|_| refused())?;
        let principal = Principal {
            name: name.into(),
            role: user.role,
        };
        let token = self.issue(&principal, credentials.token_ttl);
        Ok((principal, token))
    }

    /// A session token: `qv1.<user>.<expiry>.<signature>`, verified without server state.
    fn issue(&self, principal: &Principal, ttl: Duration) -> String {
        let expiry = now_secs().saturating_add(ttl.as_secs());
        let name = URL_SAFE_NO_PAD.encode(principal.name.as_bytes());
        let tag = hmac::sign(&self.key, token_payload(&name, expiry).as_bytes());
        format!(
            "{SESSION_TOKEN_PREFIX}.{name}.{expiry}.{}",
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    fn verify_session_token(&self, credentials: &Credentials, token: &str) -> Result<Principal> {
        let invalid = || {
            Error::Unauthenticated(
                "invalid bearer token (unknown, altered, or signed with another key)".into(),
            )
        };
        let mut parts = token.split('.');
        let (Some(SESSION_TOKEN_PREFIX), Some(name), Some(expiry), Some(tag), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(invalid());
        };
        let expiry: u64 = expiry.parse().map_err(|_| invalid())?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| invalid())?;
        hmac::verify(&self.key, token_payload(name, expiry).as_bytes(), &tag)
            .map_err(|_| invalid())?;
        if expiry < now_secs() {
            return Err(Error::Unauthenticated(
                "the bearer token has expired: log in again".into(),
            ));
        }
        let name = URL_SAFE_NO_PAD
            .decode(name)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(invalid)?;
        // The role is the user's current one: a user removed from the file loses access.
        let user = credentials.users.get(&name).ok_or_else(|| {
            Error::Unauthenticated(format!("user '{name}' is no longer configured"))
        })?;
        Ok(Principal {
            name: name.into(),
            role: user.role,
        })
    }

    /// Signs `body` for `principal`: statement handles carry this, so a client can neither alter one
    /// nor use one issued to somebody else.
    pub fn sign(&self, principal: &Principal, body: &[u8]) -> Vec<u8> {
        hmac::sign(&self.key, &signed_message(b"handle", principal, body))
            .as_ref()
            .to_vec()
    }

    pub fn verify(&self, principal: &Principal, body: &[u8], tag: &[u8]) -> Result<()> {
        hmac::verify(&self.key, &signed_message(b"handle", principal, body), tag).map_err(|_| {
            Error::PermissionDenied(format!(
                "statement handle rejected: it was not issued by this server to '{}' (altered, \
                 issued to another user, or signed before a restart without {SECRET_ENV}); \
                 prepare the statement again",
                principal.name
            ))
        })
    }

    /// Signs a client's session settings (the cookie that carries them), for `principal`.
    pub fn sign_settings(&self, principal: &Principal, body: &[u8]) -> Vec<u8> {
        hmac::sign(&self.key, &signed_message(b"settings", principal, body))
            .as_ref()
            .to_vec()
    }

    /// Whether `tag` is this server's signature of `body` as `principal`'s settings.
    pub fn verify_settings(&self, principal: &Principal, body: &[u8], tag: &[u8]) -> bool {
        hmac::verify(
            &self.key,
            &signed_message(b"settings", principal, body),
            tag,
        )
        .is_ok()
    }
}

/// What a signature covers: what is signed (`kind`), the user it was issued to and the body.
fn signed_message(kind: &[u8], principal: &Principal, body: &[u8]) -> Vec<u8> {
    [
        kind,
        &b"\0"[..],
        principal.name.as_bytes(),
        &b"\0"[..],
        body,
    ]
    .concat()
}

fn token_payload(name: &str, expiry: u64) -> String {
    format!("token\0{name}\0{expiry}")
}

fn strip_scheme<'a>(header: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, rest) = header.trim().split_once(' ')?;
    given
        .eq_ignore_ascii_case(scheme)
        .then(|| rest.trim())
        .filter(|rest| !rest.is_empty())
}

fn signing_key() -> Result<hmac::Key> {
    match std::env::var(SECRET_ENV) {
        Ok(secret) if secret.len() >= MIN_SECRET_BYTES => {
            Ok(hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()))
        }
        Ok(_) => Err(Error::Config {
            setting: SECRET_ENV,
            message: format!("must be at least {MIN_SECRET_BYTES} bytes"),
        }),
        Err(_) => hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
            .map_err(|_| Error::Internal("no system randomness for the signing key".into())),
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
    out
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `quiver auth hash-password`: an Argon2id PHC string for the auth file.
pub fn hash_password(password: &str) -> Result<String> {
    use argon2::PasswordHasher;
    use argon2::password_hash::SaltString;
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| Error::Internal("no system randomness".into()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| Error::Internal(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| Error::Internal(format!("hashing the password: {e}")))
}

/// `quiver auth new-token`: a random token and the SHA-256 the auth file stores.
pub fn new_token() -> Result<(String, String)> {
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Internal("no system randomness".into()))?;
    let token = format!("qvt_{}", URL_SAFE_NO_PAD.encode(bytes));
    let digest: String = sha256(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((token, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth_with(file: &str) -> Result<Auth> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("auth.toml");
        std::fs::write(&path, file).expect("write");
        Auth::from_file(&path)
    }

    #[test]
    fn passwords_tokens_and_roles() {
        let hash = hash_password("s3cret").expect("hash");
        let (token, digest) = new_token().expect("token");
        let auth = auth_with(&format!(
            "[[users]]\nname = \"ana\"\npassword_hash = \"{hash}\"\nrole = \"read\"\n\
             [[tokens]]\nname = \"etl\"\nsha256 = \"{digest}\"\nrole = \"read_write\"\n"
        ))
        .expect("auth");
        use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
        let basic = format!("Basic {}", STANDARD.encode("ana:s3cret"));
        let unpadded = format!("Basic {}", STANDARD_NO_PAD.encode("ana:s3cret"));
        assert!(auth.login(Some(&unpadded)).is_ok());
        let (ana, session) = auth.login(Some(&basic)).expect("login");
        assert_eq!(ana.role, Role::Read);
        let back = auth
            .authenticate(Some(&format!("Bearer {session}")))
            .expect("session token");
        assert_eq!(back, ana);
        assert!(back.authorize_write("INSERT").is_err());
        let etl = auth
            .authenticate(Some(&format!("Bearer {token}")))
            .expect("api token");
        assert!(etl.authorize_write("INSERT").is_ok());

        let wrong = format!("Basic {}", STANDARD.encode("ana:nope"));
        assert!(matches!(
            auth.login(Some(&wrong)),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            auth.authenticate(None),
            Err(Error::Unauthenticated(_))
        ));
        let mut forged = session.clone();
        forged.replace_range(4..5, if &session[4..5] == "Y" { "Z" } else { "Y" });
        assert!(
            auth.authenticate(Some(&format!("Bearer {forged}")))
                .is_err()
        );
    }

    #[test]
    fn handles_are_bound_to_their_user() {
        let auth = Auth::open().expect("auth");
        let ana = Principal {
            name: "ana".into(),
            role: Role::Read,
        };
        let bob = Principal {
            name: "bob".into(),
            role: Role::ReadWrite,
        };
        let tag = auth.sign(&ana, b"SELECT 1");
        assert!(auth.verify(&ana, b"SELECT 1", &tag).is_ok());
        assert!(auth.verify(&bob, b"SELECT 1", &tag).is_err());
        assert!(auth.verify(&ana, b"DROP TABLE t", &tag).is_err());
    }

    #[test]
    fn mistakes_in_the_file_are_named() {
        let err = auth_with("[[users]]\nname = \"a\"\npassword_hash = \"x\"\nrole = \"read\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("user 'a'") && err.contains("Argon2"), "{err}");
        let err = auth_with("[[tokens]]\nname = \"t\"\nsha256 = \"ab\"\nrole = \"admin\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("role") || err.contains("admin"), "{err}");
        let err = auth_with("").unwrap_err().to_string();
        assert!(err.contains("nobody could connect"), "{err}");
    }
}

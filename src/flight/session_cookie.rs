//! A client's session settings (`SET`, Flight SQL session options) carried in a signed cookie.
//!
//! The server keeps nothing per client: the settings travel in the cookie `quiver_settings`,
//! `<base64url(settings)>.<base64url(HMAC)>`, signed for the caller with the key that signs statement
//! handles, so any replica that shares `QUIVER_SECRET` reads them. [`super::guard`] reads the cookie
//! of every call into [`ClientSettings`] and, when a handler changed them, answers with
//! `Set-Cookie`. Clients that keep cookies: the Flight SQL JDBC driver by default, ADBC's Flight SQL
//! driver with `adbc.flight.sql.rpc.with_cookie_middleware=true`.

use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use http::header::{COOKIE, HeaderMap};

use crate::auth::{Auth, Principal};
use crate::query::settings::Settings;

const COOKIE_NAME: &str = "quiver_settings";

/// The settings a call came with, and what its handler changed them to.
#[derive(Debug, Clone, Default)]
pub struct ClientSettings {
    pub current: Settings,
    /// `Some` once a handler changed the settings (written back as a cookie).
    changed: Arc<Mutex<Option<Settings>>>,
    /// The call carried a cookie that does not verify (another server's key, altered): cleared.
    stale: bool,
}

impl ClientSettings {
    /// Records the client's new settings; the call's answer carries them.
    pub fn change(&self, settings: Settings) {
        *self
            .changed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(settings);
    }

    /// The `Set-Cookie` value for the call's answer, if one is due.
    pub fn set_cookie(&self, auth: &Auth, principal: &Principal) -> Option<HeaderValue> {
        let changed = self
            .changed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let value = match changed {
            Some(settings) if !settings.is_empty() => {
                let body = settings.encode();
                let tag = auth.sign_settings(principal, &body);
                format!(
                    "{COOKIE_NAME}={}.{}; Path=/; HttpOnly",
                    URL_SAFE_NO_PAD.encode(&body),
                    URL_SAFE_NO_PAD.encode(tag)
                )
            }
            Some(_) => format!("{COOKIE_NAME}=; Path=/; Max-Age=0"),
            None if self.stale => format!("{COOKIE_NAME}=; Path=/; Max-Age=0"),
            None => return None,
        };
        HeaderValue::from_str(&value).ok()
    }
}

/// The settings in a call's `Cookie` headers. A cookie that does not verify or decode counts as
/// none (the server's defaults) and is cleared in the answer: after a restart with a new key, a
/// client's next `SET` starts again.
pub fn read(headers: &HeaderMap, auth: &Auth, principal: &Principal) -> ClientSettings {
    let Some(value) = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
    else {
        return ClientSettings::default();
    };
    match verified(value, auth, principal) {
        Some(current) => ClientSettings {
            current,
            ..Default::default()
        },
        None => {
            tracing::info!(user = %principal.name, "session settings cookie rejected; cleared");
            ClientSettings {
                stale: true,
                ..Default::default()
            }
        }
    }
}

fn verified(value: &str, auth: &Auth, principal: &Principal) -> Option<Settings> {
    let (body, tag) = value.split_once('.')?;
    let body = URL_SAFE_NO_PAD.decode(body).ok()?;
    let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
    if !auth.verify_settings(principal, &body, &tag) {
        return None;
    }
    Settings::decode(&body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(name: &str) -> Principal {
        Principal {
            name: name.into(),
            role: crate::auth::Role::ReadWrite,
        }
    }

    fn answer_cookie(settings: &ClientSettings, auth: &Auth, who: &Principal) -> String {
        let value = settings.set_cookie(auth, who).expect("a cookie");
        value.to_str().expect("text").to_string()
    }

    fn request_with(cookie: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let pair = cookie.split(';').next().expect("pair");
        headers.insert(
            COOKIE,
            HeaderValue::from_str(&format!("other=1; {pair}")).unwrap(),
        );
        headers
    }

    #[test]
    fn settings_round_trip_for_their_user_only() {
        let auth = Auth::open().expect("auth");
        let alice = principal("alice");
        let first = read(&HeaderMap::new(), &auth, &alice);
        assert!(first.current.is_empty());
        assert!(first.set_cookie(&auth, &alice).is_none(), "nothing changed");
        let settings = Settings::default()
            .with("datafusion.execution.time_zone", "+05:30")
            .unwrap();
        first.change(settings.clone());
        let cookie = answer_cookie(&first, &auth, &alice);
        assert_eq!(
            read(&request_with(&cookie), &auth, &alice).current,
            settings
        );

        // Another user, or an altered cookie: no settings, and the cookie is cleared.
        let bob = read(&request_with(&cookie), &auth, &principal("bob"));
        assert!(bob.current.is_empty());
        assert!(answer_cookie(&bob, &auth, &principal("bob")).contains("Max-Age=0"));
        let altered = cookie.replacen("quiver_settings=", "quiver_settings=e", 1);
        assert!(
            read(&request_with(&altered), &auth, &alice)
                .current
                .is_empty()
        );

        // RESET ALL clears it.
        let next = read(&request_with(&cookie), &auth, &alice);
        next.change(Settings::default());
        assert!(answer_cookie(&next, &auth, &alice).contains("Max-Age=0"));
    }
}

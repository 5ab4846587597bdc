//! Flight's session-option actions (`SetSessionOptions`, `GetSessionOptions`, `CloseSession`),
//! which ADBC exposes as connection options (`adbc.flight.sql.session.option.<name>`): the same
//! settings as `SET` (see `query::settings`), kept in the client's cookie (see `session_cookie`).
//!
//! arrow-flight 59 generates no types for these messages; they are declared here as in Flight.proto.

use std::collections::HashMap;

use prost::{Message, Oneof};

use crate::error::{Error, Result};
use crate::flight::session_cookie::ClientSettings;
use crate::query::settings::Settings;

#[derive(Clone, PartialEq, Message)]
pub struct SessionOptionValue {
    #[prost(oneof = "OptionValue", tags = "1, 2, 3, 4, 5")]
    pub option_value: Option<OptionValue>,
}

#[derive(Clone, PartialEq, Oneof)]
pub enum OptionValue {
    #[prost(string, tag = "1")]
    StringValue(String),
    #[prost(bool, tag = "2")]
    BoolValue(bool),
    #[prost(sfixed64, tag = "3")]
    Int64Value(i64),
    #[prost(double, tag = "4")]
    DoubleValue(f64),
    #[prost(message, tag = "5")]
    StringListValue(StringListValue),
}

#[derive(Clone, PartialEq, Message)]
pub struct StringListValue {
    #[prost(string, repeated, tag = "1")]
    pub values: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct SetSessionOptionsRequest {
    #[prost(map = "string, message", tag = "1")]
    pub session_options: HashMap<String, SessionOptionValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct SetSessionOptionsResult {
    #[prost(map = "string, message", tag = "1")]
    pub errors: HashMap<String, SetSessionOptionError>,
}

#[derive(Clone, PartialEq, Message)]
pub struct SetSessionOptionError {
    /// `SetSessionOptionsResult.ErrorValue`.
    #[prost(int32, tag = "1")]
    pub value: i32,
}

const INVALID_NAME: i32 = 1;
const INVALID_VALUE: i32 = 2;

#[derive(Clone, PartialEq, Message)]
pub struct GetSessionOptionsResult {
    #[prost(map = "string, message", tag = "1")]
    pub session_options: HashMap<String, SessionOptionValue>,
}

/// Flight's `CloseSessionResult`.
#[derive(Clone, PartialEq, Message)]
pub struct CloseSessionResult {
    #[prost(int32, tag = "1")]
    pub status: i32,
}
const CLOSE_SESSION_CLOSED: i32 = 1;

/// `SetSessionOptions`: each option set (or erased, when it has no value) in the client's settings.
/// An option a session may not set fails the whole call with `PermissionDenied`, nothing changed;
/// unknown names and bad values are reported per option, the others applied.
pub fn set(body: &[u8], settings: &ClientSettings) -> Result<Vec<u8>> {
    let request = SetSessionOptionsRequest::decode(body)
        .map_err(|e| Error::InvalidInput(format!("malformed SetSessionOptionsRequest: {e}")))?;
    let mut next = settings.current.clone();
    let mut errors = HashMap::new();
    let mut options: Vec<_> = request.session_options.into_iter().collect();
    options.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, value) in options {
        let applied = match value.option_value {
            None => next.without(Some(&name)),
            Some(OptionValue::StringListValue(_)) => Err(Error::InvalidInput(format!(
                "{name} takes one value, not a list"
            ))),
            Some(value) => next.with(&name, &text(value)),
        };
        match applied {
            Ok(settings) => next = settings,
            Err(e @ Error::PermissionDenied(_)) => return Err(e),
            Err(e) => {
                let value = if Settings::default().without(Some(&name)).is_ok() {
                    INVALID_VALUE
                } else {
                    INVALID_NAME
                };
                tracing::info!(option = %name, error = %e, "session option refused");
                errors.insert(name, SetSessionOptionError { value });
            }
        }
    }
    settings.change(next);
    Ok(SetSessionOptionsResult { errors }.encode_to_vec())
}

/// `GetSessionOptions`: the client's settings, as strings.
pub fn get(settings: &ClientSettings) -> Vec<u8> {
    let session_options = settings
        .current
        .iter()
        .map(|(name, value)| {
            let value = SessionOptionValue {
                option_value: Some(OptionValue::StringValue(value.to_string())),
            };
            (name.to_string(), value)
        })
        .collect();
    GetSessionOptionsResult { session_options }.encode_to_vec()
}

/// `CloseSession`: the client's settings are dropped (its cookie cleared).
pub fn close(settings: &ClientSettings) -> Vec<u8> {
    settings.change(Settings::default());
    CloseSessionResult {
        status: CLOSE_SESSION_CLOSED,
    }
    .encode_to_vec()
}

fn text(value: OptionValue) -> String {
    match value {
        OptionValue::StringValue(s) => s,
        OptionValue::BoolValue(b) => b.to_string(),
        OptionValue::Int64Value(i) => i.to_string(),
        OptionValue::DoubleValue(d) => d.to_string(),
        OptionValue::StringListValue(list) => list.values.join(","),
    }
}

//! Per-client session settings: `SET` / `RESET` statements and Flight SQL session options.
//!
//! A client may change a short allow-list of DataFusion settings for its own statements (the time
//! zone, the batch size, the SQL dialect, ...). The server keeps no state for it: the settings travel
//! with the client in a signed cookie (see `flight::guard`), like statement handles, so any replica
//! serves the next call the same way. Settings that would let a caller escape the server's limits
//! (memory, spilling, parallelism) are `PermissionDenied`; names DataFusion does not know are
//! `InvalidArgument`.

use std::collections::BTreeMap;

use datafusion::config::ConfigOptions;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What a client may set for its session, with what each one changes.
pub const SETTABLE: &[&str] = &[
    "datafusion.execution.time_zone",
    "datafusion.execution.batch_size",
    "datafusion.sql_parser.dialect",
    "datafusion.sql_parser.enable_ident_normalization",
    "datafusion.sql_parser.parse_float_as_decimal",
    "datafusion.explain.format",
    "datafusion.explain.show_schema",
    "datafusion.explain.show_statistics",
    "datafusion.format.null",
    "datafusion.format.date_format",
    "datafusion.format.timestamp_format",
];

/// The largest `batch_size` a session may ask for (the server's default is 8192).
const MAX_BATCH_SIZE: usize = 65_536;

/// A client's settings: name → value as DataFusion parses it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings(BTreeMap<String, String>);

impl Settings {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// These settings with `name` set to `value`, both checked.
    pub fn with(&self, name: &str, value: &str) -> Result<Settings> {
        let name = settable(name)?;
        check_value(&name, value)?;
        let mut next = self.clone();
        next.0.insert(name, value.to_string());
        Ok(next)
    }

    /// These settings without `name` (back to the server's value); `None`: without any.
    pub fn without(&self, name: Option<&str>) -> Result<Settings> {
        let Some(name) = name else {
            return Ok(Settings::default());
        };
        let name = settable(name)?;
        let mut next = self.clone();
        next.0.remove(&name);
        Ok(next)
    }

    /// The settings as bytes for a cookie.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&self.0).unwrap_or_default()
    }

    /// Settings read back from [`Settings::encode`], each checked again (the allow-list may have
    /// changed since they were issued).
    pub fn decode(bytes: &[u8]) -> Result<Settings> {
        let map: BTreeMap<String, String> = serde_json::from_slice(bytes)
            .map_err(|e| Error::InvalidInput(format!("malformed session settings: {e}")))?;
        map.iter()
            .try_fold(Settings::default(), |settings, (k, v)| settings.with(k, v))
    }
}

/// `name` in DataFusion's spelling if a session may set it.
fn settable(name: &str) -> Result<String> {
    let name = name.trim().to_ascii_lowercase();
    let name = if name.starts_with("datafusion.") {
        name
    } else {
        format!("datafusion.{name}")
    };
    if SETTABLE.contains(&name.as_str()) {
        return Ok(name);
    }
    let known = name.starts_with("datafusion.runtime.")
        || ConfigOptions::default()
            .entries()
            .iter()
            .any(|e| e.key == name);
    if known {
        return Err(Error::PermissionDenied(format!(
            "{name} is the server's to set (memory, spilling and parallelism limits hold for every \
             client); a session may set {}",
            SETTABLE.join(", ")
        )));
    }
    Err(Error::InvalidInput(format!(
        "unknown setting {name}; a session may set {}",
        SETTABLE.join(", ")
    )))
}

fn check_value(name: &str, value: &str) -> Result<()> {
    let mut options = ConfigOptions::default();
    options
        .set(name, value)
        .map_err(|e| Error::InvalidInput(format!("SET {name} = '{value}': {e}")))?;
    if name == "datafusion.execution.batch_size"
        && !(1..=MAX_BATCH_SIZE).contains(&options.execution.batch_size.get())
    {
        return Err(Error::PermissionDenied(format!(
            "{name} must be between 1 and {MAX_BATCH_SIZE} (got {value})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_settings_are_kept_checked_and_round_trip() {
        let settings = Settings::default()
            .with("datafusion.execution.time_zone", "+05:30")
            .unwrap()
            .with("execution.batch_size", "100")
            .unwrap();
        let names: Vec<&str> = settings.iter().map(|(k, _)| k).collect();
        assert_eq!(
            names,
            [
                "datafusion.execution.batch_size",
                "datafusion.execution.time_zone"
            ]
        );
        assert_eq!(Settings::decode(&settings.encode()).unwrap(), settings);
        let reset = settings
            .without(Some("datafusion.execution.time_zone"))
            .unwrap();
        assert_eq!(reset.iter().count(), 1);
        assert!(settings.without(None).unwrap().is_empty());
    }

    #[test]
    fn limits_are_permission_denied_and_unknown_names_invalid() {
        use tonic::Code;
        let code =
            |name: &str, value: &str| Settings::default().with(name, value).unwrap_err().code();
        assert_eq!(
            code("datafusion.runtime.memory_limit", "100G"),
            Code::PermissionDenied
        );
        assert_eq!(
            code("datafusion.execution.target_partitions", "64"),
            Code::PermissionDenied
        );
        assert_eq!(
            code("datafusion.execution.batch_size", "10000000"),
            Code::PermissionDenied
        );
        assert_eq!(code("datafusion.no_such_thing", "1"), Code::InvalidArgument);
        assert_eq!(
            code("datafusion.execution.batch_size", "many"),
            Code::InvalidArgument
        );
        assert_eq!(
            code("datafusion.sql_parser.dialect", "klingon"),
            Code::InvalidArgument
        );
    }
}

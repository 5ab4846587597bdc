//! Object stores: the warehouse and its Delta tables on a local directory, S3, GCS or Azure.
//!
//! Credentials, endpoints and regions come from the environment the way each cloud's own tools read
//! them (`AWS_*`, `GOOGLE_*`, `AZURE_*`; see object_store's builders for the full lists), then the
//! provider's usual fallbacks (web identity, container and instance credentials). The warehouse and
//! delta-rs get their stores from the same function, so a table is reachable exactly when its
//! warehouse is.
//!
//! Transient errors of the cloud stores (5xx, timeouts, connection resets) are retried with
//! exponential backoff: `--store-max-retries` times within `--store-retry-timeout`
//! ([`set_retry`], applied to every store built here).
//!
//! Delta commits need an atomic put-if-absent. object_store gives it on all three clouds (S3 through
//! `If-None-Match`, on AWS since 2024 and on MinIO/R2; GCS and Azure natively), so delta-rs's default
//! log store is safe there and no external lock table (DynamoDB) is needed.

use std::collections::HashMap;
use std::sync::{Arc, Once, OnceLock};
use std::time::Duration;

use deltalake::DeltaResult;
use deltalake::logstore::{
    DeltaIOStorageBackend, LogStore, LogStoreFactory, ObjectStoreFactory, ObjectStoreRef,
    StorageConfig, default_logstore, logstore_factories, object_store_factories,
};
use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{BackoffConfig, ObjectStoreScheme, Result as StoreResult, RetryConfig};
use url::Url;

/// URL schemes served by the cloud builders below.
const CLOUD_SCHEMES: &[&str] = &["s3", "s3a", "gs", "az", "adl", "azure", "abfs", "abfss"];

static RETRY: OnceLock<RetryConfig> = OnceLock::new();

/// Sets how the cloud stores retry transient errors (once, at start; later calls are ignored).
pub fn set_retry(max_retries: usize, timeout: Duration) {
    let _ = RETRY.set(RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries,
        retry_timeout: timeout,
    });
}

fn retry() -> RetryConfig {
    RETRY.get().cloned().unwrap_or_default()
}

/// Builds the store holding `url` and the path of `url` inside it.
///
/// `options` are extra builder settings by their object_store names (`aws_endpoint`,
/// `google_service_account`, `azure_storage_account_name`, ...); they override the environment.
/// Names a builder does not know are ignored: delta-rs passes its own settings through here too.
pub fn open(
    url: &Url,
    options: &HashMap<String, String>,
) -> StoreResult<(Arc<dyn ObjectStore>, Path)> {
    let (scheme, path) = ObjectStoreScheme::parse(url)?;
    let store: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::Local => Arc::new(LocalFileSystem::new()),
        ObjectStoreScheme::Memory => Arc::new(InMemory::new()),
        ObjectStoreScheme::AmazonS3 => {
            let builder = configure::<AmazonS3ConfigKey, _>(
                AmazonS3Builder::from_env()
                    .with_url(url.as_str())
                    .with_retry(retry()),
                options,
                AmazonS3Builder::with_config,
            );
            Arc::new(builder.build()?)
        }
        ObjectStoreScheme::GoogleCloudStorage => {
            let builder = configure::<GoogleConfigKey, _>(
                GoogleCloudStorageBuilder::from_env()
                    .with_url(url.as_str())
                    .with_retry(retry()),
                options,
                GoogleCloudStorageBuilder::with_config,
            );
            Arc::new(builder.build()?)
        }
        ObjectStoreScheme::MicrosoftAzure => {
            let builder = configure::<AzureConfigKey, _>(
                MicrosoftAzureBuilder::from_env()
                    .with_url(url.as_str())
                    .with_retry(retry()),
                options,
                MicrosoftAzureBuilder::with_config,
            );
            Arc::new(builder.build()?)
        }
        other => {
            return Err(object_store::Error::NotSupported {
                source: format!("{other:?} URLs ({url}) cannot hold a warehouse or a Delta table")
                    .into(),
            });
        }
    };
    Ok((store, path))
}

fn configure<K: std::str::FromStr, B>(
    builder: B,
    options: &HashMap<String, String>,
    with_config: fn(B, K, String) -> B,
) -> B {
    options.iter().fold(builder, |builder, (key, value)| {
        match key.to_ascii_lowercase().parse::<K>() {
            Ok(key) => with_config(builder, key, value.clone()),
            Err(_) => builder,
        }
    })
}

/// Lets delta-rs open tables on S3, GCS and Azure with the stores built by [`open`].
/// Idempotent; called before the first table is opened.
pub fn register_with_delta() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        let stores = object_store_factories();
        let logs = logstore_factories();
        for scheme in CLOUD_SCHEMES {
            let Ok(url) = Url::parse(&format!("{scheme}://")) else {
                continue;
            };
            stores.insert(url.clone(), Arc::new(EnvStoreFactory));
            logs.insert(url, Arc::new(PutIfAbsentLogStoreFactory));
        }
    });
}

struct EnvStoreFactory;

impl ObjectStoreFactory for EnvStoreFactory {
    fn parse_url_opts(
        &self,
        url: &Url,
        config: &StorageConfig,
    ) -> DeltaResult<(ObjectStoreRef, Path)> {
        let (mut store, path) = open(url, &config.raw)?;
        if let Some(runtime) = &config.runtime {
            store = Arc::new(DeltaIOStorageBackend::new(store, runtime.clone()));
        }
        Ok((store, path))
    }
}

/// delta-rs's default log store: commits with put-if-absent, which every store above supports.
struct PutIfAbsentLogStoreFactory;

impl LogStoreFactory for PutIfAbsentLogStoreFactory {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_override_and_unknown_names_are_ignored() {
        let url = Url::parse("s3://bucket/warehouse/").unwrap();
        let options = HashMap::from([
            ("aws_endpoint".to_string(), "http://127.0.0.1:9".to_string()),
            ("aws_access_key_id".to_string(), "key".to_string()),
            ("aws_secret_access_key".to_string(), "secret".to_string()),
            ("aws_region".to_string(), "eu-west-1".to_string()),
            ("allow_http".to_string(), "true".to_string()),
            ("delta_only_setting".to_string(), "x".to_string()),
        ]);
        let (store, path) = open(&url, &options).unwrap();
        assert_eq!(path.as_ref(), "warehouse");
        let shown = format!("{store}");
        assert!(shown.contains("bucket"), "{shown}");
    }

    #[test]
    fn http_urls_are_refused_with_a_reason() {
        let url = Url::parse("http://example.com/data/").unwrap();
        let error = open(&url, &HashMap::new()).unwrap_err().to_string();
        assert!(error.contains("cannot hold a warehouse"), "{error}");
    }
}

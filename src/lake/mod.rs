//! The data lake: Parquet files under one URL, on local disk or in object storage.
//!
//! `ORCH_LAKE_URL` picks the place: `file://<home>/data/lake` by default, or `s3://BUCKET/PREFIX`,
//! `gs://BUCKET/PREFIX`, `az://CONTAINER/PREFIX` with credentials from the usual environment
//! variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`). Every write is a whole-object put: object stores
//! publish an object only once it is complete, and the local store writes a hidden temporary
//! file and renames it, so a reader never sees half a file.

pub mod daily_ohlcv;
pub mod daily_trades;
pub mod query;
pub mod raw_trades;

use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("lake URL `{url}`: {message}")]
    Url { url: String, message: String },
    #[error("lake {url}: cannot {action} `{key}`: {source}")]
    Store {
        url: String,
        action: &'static str,
        key: String,
        source: Box<object_store::Error>,
    },
}

impl LakeError {
    /// Whether another attempt can help: yes for a store that failed or timed out, not for a
    /// bad URL, a missing object, refused credentials or a broken precondition.
    pub fn is_transient(&self) -> bool {
        match self {
            LakeError::Url { .. } => false,
            LakeError::Store { source, .. } => !matches!(
                **source,
                object_store::Error::NotFound { .. }
                    | object_store::Error::InvalidPath { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. }
                    | object_store::Error::NotImplemented { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
                    | object_store::Error::UnknownConfigurationKey { .. }
            ),
        }
    }
}

impl LakeError {
    /// Whether the object asked for is not there.
    pub fn is_not_found(&self) -> bool {
        matches!(self, LakeError::Store { source, .. } if matches!(**source, object_store::Error::NotFound { .. }))
    }
}

/// One object in the lake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LakeObject {
    /// The path below the lake's root, e.g. `raw/binance_trades/symbol=BTCUSDT/...`.
    pub key: String,
    pub size: u64,
    /// When it was written.
    pub modified: chrono::DateTime<chrono::Utc>,
}

/// A handle to the lake; cheap to clone.
#[derive(Clone, Debug)]
pub struct Lake {
    store: Arc<dyn ObjectStore>,
    root: Path,
    url: String,
}

impl Lake {
    /// The default lake of a home.
    pub fn default_url(home: &FsPath) -> String {
        format!("file://{}", home.join("data").join("lake").display())
    }

    pub fn open(url: &str) -> Result<Lake, LakeError> {
        let fail = |message: String| LakeError::Url {
            url: url.to_string(),
            message,
        };
        let parsed = url::Url::parse(url).map_err(|e| fail(e.to_string()))?;
        let (store, root): (Arc<dyn ObjectStore>, Path) = match parsed.scheme() {
            "file" => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|()| fail("not an absolute file path".to_string()))?;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
                let local = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| fail(e.to_string()))?;
                (Arc::new(local), Path::default())
            }
            "s3" | "s3a" => {
                let s3 = object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(|e| fail(e.to_string()))?;
                (Arc::new(s3), prefix_of(&parsed))
            }
            "gs" => {
                let gcs = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(|e| fail(e.to_string()))?;
                (Arc::new(gcs), prefix_of(&parsed))
            }
            "az" | "azure" | "abfs" | "abfss" => {
                let azure = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(|e| fail(e.to_string()))?;
                (Arc::new(azure), prefix_of(&parsed))
            }
            other => {
                return Err(fail(format!(
                    "unsupported scheme `{other}`; use file://, s3://, gs:// or az://"
                )));
            }
        };
        Ok(Lake {
            store,
            root,
            url: url.to_string(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Where `key` lies on this machine, for a `file://` lake: readers that can map a file
    /// need not hold it in memory.
    pub fn local_path(&self, key: &str) -> Option<std::path::PathBuf> {
        let parsed = url::Url::parse(&self.url).ok()?;
        if parsed.scheme() != "file" {
            return None;
        }
        let mut path = parsed.to_file_path().ok()?;
        path.extend(key.split('/').filter(|part| !part.is_empty()));
        Some(path)
    }

    /// Where a reader that opens objects itself (Polars) finds `key`: its path on this
    /// machine for a `file://` lake, else its URL in the store.
    pub fn object_url(&self, key: &str) -> String {
        match self.local_path(key) {
            Some(path) => path.display().to_string(),
            None => format!(
                "{}/{}",
                self.url.trim_end_matches('/'),
                key.trim_start_matches('/')
            ),
        }
    }

    fn path(&self, key: &str) -> Path {
        key.split('/')
            .filter(|part| !part.is_empty())
            .fold(self.root.clone(), |path, part| path.join(part))
    }

    fn error(
        &self,
        action: &'static str,
        key: &str,
    ) -> impl FnOnce(object_store::Error) -> LakeError {
        let url = self.url.clone();
        let key = key.to_string();
        move |source| LakeError::Store {
            url,
            action,
            key,
            source: Box::new(source),
        }
    }

    /// Writes a whole object, replacing any object of the same key.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), LakeError> {
        self.store
            .put(&self.path(key), PutPayload::from_bytes(bytes))
            .await
            .map_err(self.error("write", key))?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, LakeError> {
        let result = self
            .store
            .get(&self.path(key))
            .await
            .map_err(self.error("read", key))?;
        result.bytes().await.map_err(self.error("read", key))
    }

    /// Removes an object; one already gone is no error.
    pub async fn delete(&self, key: &str) -> Result<(), LakeError> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("delete", key)(e)),
        }
    }

    /// Every object below `prefix`, sorted by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<LakeObject>, LakeError> {
        let base = self.path(prefix);
        let root_parts = self.root.parts().count();
        let mut objects: Vec<LakeObject> = self
            .store
            .list(Some(&base))
            .map_ok(|meta| LakeObject {
                key: meta
                    .location
                    .parts()
                    .skip(root_parts)
                    .map(|p| p.as_ref().to_string())
                    .collect::<Vec<_>>()
                    .join("/"),
                size: meta.size,
                modified: meta.last_modified,
            })
            .try_collect()
            .await
            .map_err(self.error("list", prefix))?;
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }
}

impl Lake {
    /// The objects in the folders directly below `dir` whose name sorts at or after `from`
    /// (`date=2026-11-20/`), or in all of them: a run lists the partitions it needs, not a
    /// year of files.
    pub async fn list_partitions_from(
        &self,
        dir: &str,
        from: Option<&str>,
    ) -> Result<Vec<LakeObject>, LakeError> {
        let mut objects = Vec::new();
        for sub in self.list_dirs(dir).await? {
            let name = sub.strip_prefix(dir).unwrap_or(&sub);
            if from.is_none_or(|from| name >= from) {
                objects.extend(self.list(&sub).await?);
            }
        }
        Ok(objects)
    }

    /// The folders directly below `prefix` (each key ends with `/`), sorted: one listing of one
    /// level, however many files lie deeper.
    pub async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, LakeError> {
        let base = self.path(prefix);
        let root_parts = self.root.parts().count();
        let listed = match self.store.list_with_delimiter(Some(&base)).await {
            Ok(listed) => listed,
            // A folder not made yet holds nothing.
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(self.error("list", prefix)(e)),
        };
        let mut dirs: Vec<String> = listed
            .common_prefixes
            .iter()
            .map(|path| {
                let parts: Vec<String> = path
                    .parts()
                    .skip(root_parts)
                    .map(|p| p.as_ref().to_string())
                    .collect();
                format!("{}/", parts.join("/"))
            })
            .collect();
        dirs.sort();
        Ok(dirs)
    }
}

fn prefix_of(url: &url::Url) -> Path {
    url.path()
        .split('/')
        .filter(|p| !p.is_empty())
        .fold(Path::default(), |path, part| path.join(part))
}

//! Resolving `skill@version` through the registry into a verified artifact on this host: the
//! same pull as `tend skill pull` (log, blob digest, signature against the orchestrator's own
//! trust policy, rollback floor), cached in memory so that the request path never fetches or
//! verifies the same artifact twice. Every cache hit is checked again (cheaply, without
//! re-hashing) against the trust policy's revocations and the rollback floor, including the
//! versions seen since it was cached: a cache never serves what a fresh pull would refuse.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tend_registry::client::{ClientError, RegistryClient};
use tend_registry::local::LocalStore;
use tend_registry::trust::{TrustPolicy, VerifyOptions};
use tend_runtime::Manifest;

/// A verified skill ready to be decided on and run.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub name: String,
    pub version: String,
    /// `sha256:<hex>` of the component.
    pub digest: String,
    /// `sha256:<hex>` of the signed manifest text: with `digest`, what identifies a skill.
    pub manifest_digest: String,
    pub manifest: Manifest,
    pub publisher: String,
    pub key_id: String,
    pub component: PathBuf,
    pub input_schema: Option<Arc<jsonschema::Validator>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Untrusted(String),
    #[error("{0}")]
    Registry(String),
}

/// How long `name@latest` is remembered before asking the registry again.
const LATEST_TTL: Duration = Duration::from_secs(10);

pub struct Catalog {
    client: RegistryClient,
    trust: TrustPolicy,
    store: LocalStore,
    by_version: Mutex<HashMap<(String, String), Arc<Resolved>>>,
    latest: Mutex<HashMap<String, (Instant, String)>>,
    /// One pull at a time: concurrent first requests for a skill wait for one verified pull.
    pulling: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("registry", &self.client.base())
            .finish_non_exhaustive()
    }
}

impl Catalog {
    pub fn new(client: RegistryClient, trust: TrustPolicy, store: LocalStore) -> Catalog {
        Catalog {
            client,
            trust,
            store,
            by_version: Mutex::default(),
            latest: Mutex::default(),
            pulling: tokio::sync::Mutex::new(()),
        }
    }

    /// `version` `None` means the latest release.
    pub async fn resolve(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Arc<Resolved>, ResolveError> {
        let version = match version {
            Some(v) => v.to_string(),
            None => {
                let cached = self
                    .latest
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(name)
                    .filter(|(at, _)| at.elapsed() < LATEST_TTL)
                    .map(|(_, v)| v.clone());
                match cached {
                    Some(v) => v,
                    None => {
                        let entry = self
                            .client
                            .resolve(name, "latest")
                            .await
                            .map_err(map_client)?;
                        self.latest
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(name.to_string(), (Instant::now(), entry.version.clone()));
                        entry.version
                    }
                }
            }
        };
        let key = (name.to_string(), version.clone());
        let cached = || {
            self.by_version
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .cloned()
        };
        if let Some(r) = cached() {
            return self.recheck(r);
        }
        let _pulling = self.pulling.lock().await;
        if let Some(r) = cached() {
            return self.recheck(r);
        }
        let pulled = self
            .client
            .pull(
                name,
                &version,
                &self.trust,
                &self.store,
                VerifyOptions::default(),
            )
            .await
            .map_err(map_client)?;
        let installed = self
            .store
            .find(name, Some(&version))
            .ok_or_else(|| ResolveError::Registry("the pulled skill vanished".into()))?;
        let v = pulled.verified;
        let input_schema = v
            .manifest
            .input
            .as_ref()
            .and_then(|s| jsonschema::validator_for(&s.schema).ok())
            .map(Arc::new);
        let manifest_digest = v.manifest_digest();
        let resolved = Arc::new(Resolved {
            name: v.manifest.skill.name.to_string(),
            version: v.manifest.skill.version.clone(),
            digest: v.digest,
            manifest_digest,
            manifest: v.manifest,
            publisher: v.publisher,
            key_id: v.key_id,
            component: installed.component,
            input_schema,
        });
        self.by_version
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, resolved.clone());
        Ok(resolved)
    }

    /// The orchestrator's own trust policy (the console says why a publisher is trusted).
    pub fn trust(&self) -> &TrustPolicy {
        &self.trust
    }

    /// The registry's skills (latest release of each) and every published (name, version),
    /// oldest first, as the registry lists them: nothing here is verified yet.
    pub async fn listing(
        &self,
    ) -> Result<(Vec<tend_registry::wire::Entry>, Vec<(String, String)>), ResolveError> {
        let latest = self.client.list(None).await.map_err(map_client)?;
        let log = self.client.log().await.map_err(map_client)?;
        let versions = log
            .entries
            .into_iter()
            .map(|e| (e.name, e.version))
            .collect();
        Ok((latest, versions))
    }

    /// A cached artifact, if the trust policy and the versions seen since still accept it.
    fn recheck(&self, r: Arc<Resolved>) -> Result<Arc<Resolved>, ResolveError> {
        self.store
            .with_seen_floors(&self.trust)
            .map_err(|e| ResolveError::Registry(e.to_string()))?
            .recheck(&r.name, &r.version, &r.digest, &r.key_id)
            .map_err(|e| ResolveError::Untrusted(format!("not trusted: {e}")))?;
        Ok(r)
    }
}

fn map_client(e: ClientError) -> ResolveError {
    match e {
        ClientError::Api { status: 404, .. } => ResolveError::NotFound(e.to_string()),
        e if e.is_refusal() => ResolveError::Untrusted(e.to_string()),
        e => ResolveError::Registry(e.to_string()),
    }
}

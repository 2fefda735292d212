//! `tend skill publish | pull | push | list | search`: moving signed skills between this host,
//! a Tend registry and OCI registries. Pull trusts nothing it is served: the local trust policy
//! decides, and the pulled skill is precompiled so that it is ready to run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use tend_registry::client::{ClientError, RegistryClient};
use tend_registry::envelope::{Envelope, sha256_hex};
#[cfg(feature = "registry")]
use tend_registry::oci;
use tend_registry::trust::Verified;
use tend_registry::wire::Entry;
use tend_runtime::{Provenance, Runtime};

use crate::admit::{TrustArgs, local_store};
use crate::{CacheArgs, Failure, read_component};

/// Which Tend registry, and as whom.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// The registry's base URL
    #[arg(
        long,
        env = "TEND_REGISTRY",
        value_name = "URL",
        default_value = "http://127.0.0.1:7070"
    )]
    pub registry: String,
    /// A registry token (publishing needs the publisher role)
    #[arg(
        long,
        env = "TEND_REGISTRY_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
}

impl RegistryArgs {
    fn client(&self) -> Result<RegistryClient, Failure> {
        RegistryClient::new(&self.registry, self.token.clone()).map_err(Failure::host)
    }
}

fn client_failure(e: ClientError) -> Failure {
    match e {
        ClientError::Unreachable { .. } => Failure::host(e),
        e => Failure::bad_input(e),
    }
}

/// Read a component and its envelope, and check that they belong together.
#[cfg(feature = "authoring")]
fn signed_artifact(
    component: &Path,
    signature: Option<PathBuf>,
) -> Result<(Vec<u8>, Envelope), Failure> {
    let bytes = read_component(component)?;
    let sig_path = signature.unwrap_or_else(|| super::default_signature_path(component));
    let sig = std::fs::read(&sig_path).map_err(|e| {
        Failure::bad_input(format!(
            "{}: no signature envelope at {} ({e}); sign it first with `tend skill sign`",
            component.display(),
            sig_path.display()
        ))
    })?;
    let envelope = Envelope::parse(&sig)
        .map_err(|e| Failure::bad_input(format!("{}: {e}", sig_path.display())))?;
    let digest = sha256_hex(&bytes);
    if digest != envelope.component_sha256 {
        return Err(Failure::bad_input(format!(
            "{} (sha256:{digest}) is not the component {} signs (sha256:{})",
            component.display(),
            sig_path.display(),
            envelope.component_sha256
        )));
    }
    Ok((bytes, envelope))
}

#[cfg(feature = "authoring")]
fn name_version(envelope: &Envelope) -> Result<(String, String), Failure> {
    let m = tend_runtime::Manifest::parse(&envelope.manifest, "signed manifest")
        .map_err(Failure::bad_input)?;
    Ok((m.skill.name.into(), m.skill.version))
}

#[cfg(feature = "authoring")]
pub async fn publish(
    component: &Path,
    signature: Option<PathBuf>,
    registry: &RegistryArgs,
    json: bool,
) -> Result<u8, Failure> {
    let (bytes, envelope) = signed_artifact(component, signature)?;
    let (name, version) = name_version(&envelope)?;
    let (entry, created) = registry
        .client()?
        .publish(bytes, &envelope, &name, &version)
        .await
        .map_err(client_failure)?;
    if json {
        crate::out(&serde_json::to_string_pretty(&entry).map_err(Failure::host)?);
    } else if created {
        crate::out(&format!(
            "published {} {} ({}) to {} — publication log entry {}",
            entry.name, entry.version, entry.digest, registry.registry, entry.log_index
        ));
    } else {
        crate::out(&format!(
            "{} {} ({}) was already published to {} with these bytes; nothing changed",
            entry.name, entry.version, entry.digest, registry.registry
        ));
    }
    Ok(0)
}

#[derive(Debug, Serialize)]
struct PullReport<'a> {
    name: &'a str,
    version: &'a str,
    digest: &'a str,
    publisher: &'a str,
    key_id: &'a str,
    component: String,
    reasons: &'a [String],
    fetch_ms: f64,
    ready_ms: f64,
    total_ms: f64,
}

/// Store, precompile and report a verified pull.
fn finish_pull(
    verified: &Verified,
    component: &[u8],
    started: Instant,
    fetched: Instant,
    cache: &CacheArgs,
    json: bool,
) -> Result<u8, Failure> {
    let store = local_store()?;
    let m = &verified.manifest.skill;
    let installed = store
        .find(&m.name, Some(&m.version))
        .ok_or_else(|| Failure::host("the pulled skill vanished from the local store"))?;
    // Precompile now (into the disk cache) so the first run compiles nothing.
    let runtime = Runtime::new(cache.runtime_config())?;
    runtime.load_admitted(
        component,
        Some(verified.manifest.clone()),
        Provenance::Signed {
            publisher: verified.publisher.clone(),
            key_id: verified.key_id.clone(),
            digest: verified.digest.clone(),
        },
    )?;
    let done = Instant::now();
    let ms = |a: Instant, b: Instant| b.duration_since(a).as_secs_f64() * 1000.0;
    let report = PullReport {
        name: &m.name,
        version: &m.version,
        digest: &verified.digest,
        publisher: &verified.publisher,
        key_id: &verified.key_id,
        component: installed.component.display().to_string(),
        reasons: &verified.reasons,
        fetch_ms: ms(started, fetched),
        ready_ms: ms(fetched, done),
        total_ms: ms(started, done),
    };
    if json {
        crate::out(&serde_json::to_string_pretty(&report).map_err(Failure::host)?);
    } else {
        crate::out(&format!(
            "pulled {} {} ({}) signed by {} (key {})",
            m.name, m.version, verified.digest, verified.publisher, verified.key_id
        ));
        for r in &verified.reasons {
            crate::out(&format!("  - {r}"));
        }
        crate::out(&format!(
            "ready to run in {:.1} ms (fetch and verify {:.1} ms, precompile {:.1} ms): tend run {}@{}",
            report.total_ms, report.fetch_ms, report.ready_ms, m.name, m.version
        ));
    }
    Ok(0)
}

pub async fn pull(
    what: &str,
    registry: &RegistryArgs,
    trust: &TrustArgs,
    cache: &CacheArgs,
    json: bool,
) -> Result<u8, Failure> {
    let policy = trust.policy()?;
    let store = local_store()?;
    let started = Instant::now();
    #[cfg(not(feature = "registry"))]
    if what.starts_with("oci://") {
        return Err(Failure::bad_input(format!(
            "{what}: this build of tend has no OCI client (it was built without the `registry` feature)"
        )));
    }
    #[cfg(feature = "registry")]
    if what.starts_with("oci://") {
        let reference = oci::parse_reference(what).map_err(Failure::bad_input)?;
        let (name, version) = oci::named_skill(&reference).map_err(Failure::bad_input)?;
        let pulled = oci::pull(&reference).await.map_err(Failure::bad_input)?;
        let policy = store
            .with_seen_floors(&policy)
            .map_err(Failure::bad_input)?;
        // Several signatures may refer to one component (e.g. a key rotation): the first one
        // the trust policy accepts wins; nothing is compiled or stored before that. An OCI
        // registry keeps every signature pushed, so the same bytes may also be listed under
        // two different signed manifests (other grants, another level): which one a pull
        // would take then depends on the registry's listing order, so such a pull is refused,
        // as a Tend registry refuses to publish the second.
        let mut refusals = Vec::new();
        let mut accepted: Option<(&Envelope, Verified)> = None;
        for (digest, envelope) in &pulled.signatures {
            match policy
                .verify(&pulled.component, envelope, trust.options())
                .and_then(|v| v.ensure_requested(&name, &version).map(|()| v))
            {
                Ok(verified) => match &accepted {
                    None => accepted = Some((envelope, verified)),
                    Some((first, _)) if first.manifest != envelope.manifest => {
                        return Err(Failure::bad_input(format!(
                            "not trusted: {what}: signature {digest} signs {name} {version} \
                             (these same bytes) under a different manifest than an earlier \
                             signature does; a version has one signed manifest, so Tend will \
                             not pick one: push it again as a new version"
                        )));
                    }
                    Some(_) => {}
                },
                Err(e) if pulled.signatures.len() == 1 => refusals.push(e.to_string()),
                Err(e) => refusals.push(format!("signature {digest}: {e}")),
            }
        }
        let Some((envelope, verified)) = accepted else {
            return Err(Failure::bad_input(format!(
                "not trusted: {what}: {}",
                refusals.join("; ")
            )));
        };
        let component = pulled.component;
        store
            .install(&component, envelope, &verified)
            .map_err(Failure::host)?;
        return finish_pull(&verified, &component, started, Instant::now(), cache, json);
    }
    let (name, version) = what.split_once('@').unwrap_or((what, "latest"));
    let version_ok = version == "latest" || semver::Version::parse(version).is_ok();
    let name_ok = tend_manifest::is_skill_name(name);
    if !name_ok || !version_ok {
        return Err(Failure::bad_input(format!(
            "{what:?} is not NAME@VERSION, NAME@latest or oci://host/repo:tag"
        )));
    }
    let pulled = registry
        .client()?
        .pull(name, version, &policy, &store, trust.options())
        .await
        .map_err(|e| match e {
            ClientError::Untrusted(e) => {
                Failure::bad_input(format!("not trusted: {name}@{version}: {e}"))
            }
            e => client_failure(e),
        })?;
    finish_pull(
        &pulled.verified,
        &pulled.component,
        started,
        Instant::now(),
        cache,
        json,
    )
}

#[cfg(all(feature = "authoring", feature = "registry"))]
pub async fn push(
    reference: &str,
    component: &Path,
    signature: Option<PathBuf>,
) -> Result<u8, Failure> {
    let parsed = oci::parse_reference(reference).map_err(Failure::bad_input)?;
    let (bytes, envelope) = signed_artifact(component, signature)?;
    let (name, version) = name_version(&envelope)?;
    let named = oci::named_skill(&parsed).map_err(Failure::bad_input)?;
    if named != (name.clone(), version.clone()) {
        return Err(Failure::bad_input(format!(
            "{reference} names {} {}, but the component is signed as {name} {version}: push it to …/{name}:{version}",
            named.0, named.1
        )));
    }
    let digest = sha256_hex(&bytes);
    let pushed = oci::push(&parsed, bytes, &envelope)
        .await
        .map_err(Failure::host)?;
    crate::out(&format!(
        "pushed {name} {version} (sha256:{digest}) to {reference} as a wasm artifact\nmanifest: {}\nsignature: {} (an artifact whose subject is the manifest)",
        pushed.manifest.digest, pushed.signature.digest
    ));
    if let Some(tag) = &pushed.referrers_tag {
        crate::out(&format!(
            "the registry has no referrers API: the signature is listed in the referrers tag {tag}"
        ));
    }
    Ok(0)
}

pub async fn list(query: Option<&str>, registry: &RegistryArgs, json: bool) -> Result<u8, Failure> {
    let skills: Vec<Entry> = registry
        .client()?
        .list(query)
        .await
        .map_err(client_failure)?;
    if json {
        crate::out(&serde_json::to_string_pretty(&skills).map_err(Failure::host)?);
        return Ok(0);
    }
    if skills.is_empty() {
        crate::out(match query {
            Some(_) => "no skill matches",
            None => "the registry has no skills yet",
        });
        return Ok(0);
    }
    crate::out(&format!(
        "{:<24} {:<10} {:<9} {:<3} {:<18} DESCRIPTION",
        "NAME", "VERSION", "KIND", "LVL", "PUBLISHER"
    ));
    for s in &skills {
        crate::out(&format!(
            "{:<24} {:<10} {:<9} L{:<2} {:<18} {}",
            s.name, s.version, s.kind, s.level, s.publisher, s.description
        ));
    }
    Ok(0)
}

//! One lock per environment, held on the hosts, so that two people (or a
//! person and CI) running `up` or `down` at once take turns instead of
//! racing.
//!
//! The lock is a container named `<env>-lock`: Docker reserves container
//! names atomically, so of two creates exactly one succeeds. Its labels
//! name the holder (user, machine, command, since when). It runs `stagectl
//! agent hold`, which reads its stdin until end of file, with stdin attached
//! to the holder's connection: when the holder's process ends, however it
//! ends (SIGKILL included), its connection closes, the hold process exits,
//! and a stopped lock container is a lock whose holder died, taken over with
//! a message. It carries `io.stagectl.lock`, not the environment's label,
//! so nothing that works on the environment's containers ever sees it.
//!
//! Where: on the local engine for a topology with a lab (the lab itself
//! lives there, and two first `up`s must not both create it), else on the
//! first host.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, RemoveContainerOptions,
};

use crate::engine::docker::DockerHost;

use crate::labels;

/// Who holds a lock, from its labels.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Holder {
    /// The lock container's ID: a takeover removes exactly this one, never
    /// a newer lock that took its name meanwhile.
    pub id: String,
    /// `user@machine (pid N)`.
    pub who: String,
    pub command: String,
    /// Unix seconds, by the holder's clock (shown, never compared).
    pub since: u64,
    /// Seconds since the lock was created, by the host's clock (its
    /// engine's time against the container's creation): a machine whose
    /// clock is off cannot make a fresh lock look old, or an old one new.
    pub age: u64,
    /// Whether the holder's process still holds it (its connection is open).
    pub alive: bool,
    /// Whether its hold process runs (`alive` also counts a lock still
    /// starting).
    #[serde(skip)]
    pub running: bool,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let age = self.age;
        write!(
            f,
            "{} running `{}` since {} s ago",
            self.who, self.command, age
        )
    }
}

/// A held lock; [`Lock::release`] gives it back. Dropped without release
/// (a panic), it is freed when this process exits and its connection
/// closes.
pub struct Lock {
    host: DockerHost,
    env: String,
    /// Its container's ID (not its name: if this run lost the lock, say its
    /// connection dropped and another run took it over, releasing must not
    /// remove the other run's lock).
    id: String,
    /// The attached stdin: open as long as this process holds the lock.
    _stdin: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    /// The container's start, still under way (see [`Lock::confirm`]).
    starting: Option<tokio::task::JoinHandle<Result<()>>>,
}

fn name(env: &str) -> String {
    format!("{env}-lock")
}

use crate::clock::unix_now as now;

/// `user@machine (pid N)` of this process.
pub fn this_holder() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let machine = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{machine} (pid {})", std::process::id())
}

impl Lock {
    /// Take the lock of `env` on `host` for `command`, waiting up to
    /// `timeout` for a live holder; `waiting` is told once who it waits for.
    pub async fn acquire(
        host: &DockerHost,
        env: &str,
        image: &str,
        command: &str,
        timeout: Duration,
        waiting: impl Fn(&str),
    ) -> Result<Lock> {
        let deadline = Instant::now() + timeout;
        let mut told = false;
        let mut taken_over = String::new();
        loop {
            if let Some(lock) = Self::try_create(host, env, image, command).await? {
                return Ok(lock);
            }
            match holder(host, env).await? {
                None => continue, // released meanwhile
                Some(h) if !h.alive => {
                    if taken_over != h.id {
                        waiting(&format!(
                            "taking over the lock of {env} on {}: its holder, {h}, is gone",
                            host.name
                        ));
                        taken_over = h.id.clone();
                    }
                    remove_id(host, &h.id).await?;
                    // Its removal (ours, or its holder's release) may still
                    // be under way: the name frees when it is done.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Some(h) => {
                    if Instant::now() >= deadline {
                        bail!(
                            "{env} is locked on {} by {h}; waited {} s (--lock-timeout); \
                             if that run is known dead, `stagectl unlock` frees it",
                            host.name,
                            timeout.as_secs()
                        );
                    }
                    if !told {
                        waiting(&format!(
                            "waiting for the lock of {env} on {}, held by {h}",
                            host.name
                        ));
                        told = true;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Create and attach the lock container, and start it in the
    /// background; `None` when the name is taken.
    ///
    /// The create is what excludes other runs (one name, one winner); the
    /// start only arms the end-of-process detection, and costs most of the
    /// time (runc). Others count a lock created less than a minute ago as
    /// held (see [`holder`]), so the run goes on while it starts, and checks
    /// it did with [`Lock::confirm`] before changing anything.
    async fn try_create(
        host: &DockerHost,
        env: &str,
        image: &str,
        command: &str,
    ) -> Result<Option<Lock>> {
        let name = name(env);
        let labels = HashMap::from([
            (labels::LOCK.to_string(), env.to_string()),
            (labels::LOCK_HOLDER.to_string(), this_holder()),
            (labels::LOCK_COMMAND.to_string(), command.to_string()),
            (labels::LOCK_SINCE.to_string(), now().to_string()),
        ]);
        let created = host
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                ContainerCreateBody {
                    image: Some(image.to_string()),
                    cmd: Some(vec!["agent".into(), "hold".into()]),
                    labels: Some(labels),
                    open_stdin: Some(true),
                    stdin_once: Some(true),
                    attach_stdin: Some(true),
                    host_config: Some(HostConfig {
                        network_mode: Some("none".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await;
        let id = match created {
            Ok(c) => c.id,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("{}: cannot create the lock of {env} ({image})", host.name)
                })
            }
        };
        let attached = host
            .docker
            .attach_container(
                &id,
                Some(AttachContainerOptions {
                    stdin: true,
                    stream: true,
                    ..Default::default()
                }),
            )
            .await
            .with_context(|| format!("{}: cannot attach to {name}", host.name))?;
        let starting = {
            let (host, id) = (host.clone(), id.clone());
            tokio::spawn(async move {
                host.docker
                    .start_container(&id, None)
                    .await
                    .with_context(|| format!("{}: cannot start {name}", host.name))
            })
        };
        Ok(Some(Lock {
            host: host.clone(),
            env: env.to_string(),
            id,
            _stdin: attached.input,
            starting: Some(starting),
        }))
    }

    /// Wait until the lock container has started (from then on the lock
    /// outlives a minute only while this process does), then check it is
    /// still ours: the container of the lock's name is the one this run
    /// created, by ID, and runs. Called before each phase that changes
    /// hosts: a run whose connection dropped (its hold ended) or whose lock
    /// was removed stops there rather than race the run that took over.
    pub async fn confirm(&mut self) -> Result<()> {
        if let Some(start) = self.starting.take() {
            start.await.context("the lock's start did not finish")??;
        }
        let lost = |why: String| {
            anyhow::anyhow!(
                "{}: this run lost the lock of {}: {why}; stopping before changing anything more",
                self.host.name,
                self.env
            )
        };
        match holder(&self.host, &self.env).await? {
            Some(h) if h.id == self.id && h.running => Ok(()),
            Some(h) if h.id == self.id => {
                Err(lost("its hold ended (the connection dropped)".into()))
            }
            Some(h) => Err(lost(format!("it is now held by {h}"))),
            None => Err(lost("it was removed (`stagectl unlock`?)".into())),
        }
    }

    /// Give the lock back (its start finished first, so the removal never
    /// races it).
    pub async fn release(mut self) -> Result<()> {
        let started = match self.starting.take() {
            Some(start) => start.await.context("the lock's start did not finish")?,
            None => Ok(()),
        };
        remove_id(&self.host, &self.id).await?;
        started
    }
}

/// Who holds the lock of `env` on `host`, if anyone.
pub async fn holder(host: &DockerHost, env: &str) -> Result<Option<Holder>> {
    let inspect = match host.docker.inspect_container(&name(env), None).await {
        Ok(i) => i,
        Err(e) if crate::engine::docker::is_not_found(&e) => return Ok(None),
        Err(e) => return Err(e).context(format!("{}: cannot read the lock of {env}", host.name)),
    };
    let labels = inspect.config.and_then(|c| c.labels).unwrap_or_default();
    if labels.get(labels::LOCK).map(String::as_str) != Some(env) {
        bail!(
            "{}: a container named {} exists that is not stagectl's lock; rename it",
            host.name,
            name(env)
        );
    }
    let label = |k: &str| labels.get(k).cloned().unwrap_or_else(|| "?".into());
    let since: u64 = label(labels::LOCK_SINCE).parse().unwrap_or(0);
    let state = inspect.state.unwrap_or_default();
    // Created but not started yet: its holder is between the two calls,
    // unless that was long ago (it died right there).
    let created = inspect.created.as_deref().and_then(unix_seconds);
    let host_now = match host.docker.info().await {
        Ok(info) => info.system_time.as_deref().and_then(unix_seconds),
        Err(_) => None,
    };
    let age = match (created, host_now) {
        (Some(c), Some(n)) => n.saturating_sub(c),
        // An engine that says neither: the label, by our clock.
        _ => now().saturating_sub(since),
    };
    let starting =
        state.status == Some(bollard::models::ContainerStateStatusEnum::CREATED) && age < 60;
    Ok(Some(Holder {
        id: inspect.id.unwrap_or_default(),
        who: label(labels::LOCK_HOLDER),
        command: label(labels::LOCK_COMMAND),
        since,
        age,
        alive: state.running.unwrap_or(false) || starting,
        running: state.running.unwrap_or(false),
    }))
}

/// An engine's RFC 3339 time (`2026-12-04T20:41:07.123456789Z`) as Unix seconds.
fn unix_seconds(s: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp()).ok()
}

/// Free the lock of `env` on `host` if it is still the one with container
/// ID `id` (what `stagectl unlock` showed): a lock taken meanwhile by
/// another run is never removed. `false` when it was not that one.
pub async fn remove(host: &DockerHost, env: &str, id: &str) -> Result<bool> {
    match holder(host, env).await? {
        Some(h) if h.id == id => {
            remove_id(host, &h.id).await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Remove one lock container, by ID (or name); gone already is fine.
async fn remove_id(host: &DockerHost, id: &str) -> Result<()> {
    match host
        .docker
        .remove_container(
            id,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if crate::engine::docker::is_not_found(&e) => Ok(()),
        // Another run (the holder releasing it, or a second taker) is
        // removing it already: it goes either way.
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            ref message,
        }) if message.contains("already in progress") => Ok(()),
        Err(e) => Err(e).context(format!("{}: cannot remove lock {id}", host.name)),
    }
}

/// `stagectl agent hold`: read stdin until it closes (the lock holder's
/// connection ended), then exit.
pub fn hold() -> Result<()> {
    use std::io::Read;
    let mut sink = [0u8; 256];
    let mut stdin = std::io::stdin();
    while stdin.read(&mut sink)? > 0 {}
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn engine_times_read_as_unix_seconds() {
        assert_eq!(
            super::unix_seconds("2026-12-04T20:41:07.123456789Z"),
            Some(1796416867)
        );
        assert_eq!(
            super::unix_seconds("2026-12-04T21:41:07+01:00"),
            Some(1796416867)
        );
        assert_eq!(super::unix_seconds("yesterday"), None);
    }
}

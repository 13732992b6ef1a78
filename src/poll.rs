//! Ask again until something holds or time is up: the one loop behind every
//! wait (the Consul cluster, the routes, a drained instance's successor, an
//! agent's port, nginx's answer).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// One look at what is awaited.
pub enum Check<T> {
    /// It holds: stop with this.
    Ready(T),
    /// Not yet; why, for the message if time runs out.
    Waiting(String),
}

/// Call `check` every `every` until it is ready, fails (stops at once), or
/// `limit` has passed: then the error carries what it last waited for.
pub async fn until<T, F, Fut>(limit: Duration, every: Duration, mut check: F) -> Result<T, Timeout>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Check<T>>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let waiting = match check().await {
            Ok(Check::Ready(v)) => return Ok(v),
            Ok(Check::Waiting(why)) => why,
            Err(e) => return Err(Timeout::Failed(e)),
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(Timeout::Expired(waiting));
        }
        // The last look comes at the deadline, not an interval before it.
        tokio::time::sleep(every.min(deadline - now)).await;
    }
}

/// Why a wait ended without its result.
#[derive(Debug)]
pub enum Timeout {
    /// Time ran out; what it was still waiting for.
    Expired(String),
    /// A check failed in a way waiting cannot mend.
    Failed(anyhow::Error),
}

impl Timeout {
    /// An error saying what did not happen `within` the limit, and why.
    pub fn context(self, what: impl std::fmt::Display) -> anyhow::Error {
        match self {
            Timeout::Expired(why) => anyhow::anyhow!("{what}: {why}"),
            Timeout::Failed(e) => e,
        }
    }
}

/// True once `check` holds within `limit` (for waits whose reason does not
/// matter: a port that opens, an answer that comes).
pub async fn holds<F, Fut>(limit: Duration, every: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    until(limit, every, || {
        let attempt = check();
        async move {
            Ok(match attempt.await {
                true => Check::Ready(()),
                false => Check::Waiting(String::new()),
            })
        }
    })
    .await
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_stops_waiting_and_time_out_says_why() {
        let mut n = 0;
        let v = until(Duration::from_secs(5), Duration::from_millis(1), || {
            n += 1;
            let n = n;
            async move {
                Ok(if n == 3 {
                    Check::Ready(n)
                } else {
                    Check::Waiting(format!("try {n}"))
                })
            }
        })
        .await
        .unwrap();
        assert_eq!(v, 3);

        let err = until(
            Duration::from_millis(30),
            Duration::from_millis(5),
            || async { Ok(Check::<()>::Waiting("no leader".into())) },
        )
        .await
        .unwrap_err()
        .context("the cluster did not form within 0 s");
        assert_eq!(
            err.to_string(),
            "the cluster did not form within 0 s: no leader"
        );

        let failed = until(Duration::from_secs(5), Duration::from_millis(1), || async {
            Err::<Check<()>, _>(anyhow::anyhow!("nginx rejected the config"))
        })
        .await
        .unwrap_err()
        .context("x");
        assert_eq!(failed.to_string(), "nginx rejected the config");
        assert!(
            !holds(
                Duration::from_millis(20),
                Duration::from_millis(5),
                || async { false }
            )
            .await
        );
    }
}

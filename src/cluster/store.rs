//! The shared log of each stream in Redis: the lease that makes one instance its leader, the
//! fenced appends of that leader, and the reads of everyone else.
//!
//! Each operation that changes state is one Lua script (`store/*.lua`), so it is one round trip
//! and atomic; every key it touches is in `KEYS` and shares one hash tag ([`LogKeys`]).
//! `state.lua` is prepended to the scripts that read a stream's state: it decides when the keys
//! do not fit together and the stream must start a new epoch.
//!
//! # Timeouts and cancellation in the `redis` crate (1.8, read in its source)
//!
//! - A [`MultiplexedConnection`] (and the [`ConnectionManager`] around one) sends each command
//!   to a driver task with a oneshot for its reply; the driver matches replies to commands in
//!   FIFO order. Dropping a command's future (our `tokio::time::timeout`, or the crate's own
//!   response timeout) drops only the oneshot: the driver still pops the entry when the reply
//!   arrives and throws it away, and skips writing a command whose receiver is already gone. So
//!   a dropped command never hands its reply to the next one — but it may still run on the
//!   server. A timed-out append may have been applied (appends are idempotent by seq for that
//!   reason); a timed-out claim may have taken the lease (the holder then names this node).
//! - A blocking command holds its connection on the server: commands written behind it wait
//!   until it returns. Blocking reads therefore have their own connection ([`Reader`]), which
//!   is thrown away whenever a read does not complete.
//! - The crate's response timeout (500 ms by default) fails the command with an I/O `TimedOut`
//!   error, which the manager does not count as a dropped connection: it keeps the connection
//!   (a stopped Redis answers later, in order). Reset, EOF, broken pipe and refusal do count:
//!   the manager then reconnects in the background, retrying with exponential backoff, and
//!   commands issued meanwhile await that reconnect — unbounded but for our own timeout. A
//!   reconnect that fails on authentication is kept for good (only I/O errors start another),
//!   so the store builds a new manager after an authentication failure.
//! - A half-open connection (the host vanished without a reset) is noticed by neither; the
//!   client's TCP keepalive and `TCP_USER_TIMEOUT` make the kernel fail it (`client.rs`).
//!
//! Hence every call here is bounded by `op_timeout` as a whole, whatever the crate does.

mod reader;
mod reply;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, Script, Value};

use super::client::{self, redis_fault, StoreFault};
use super::keys::LogKeys;
use crate::config::ClusterConfig;

pub(crate) use reader::Reader;

#[cfg(doc)]
use redis::aio::MultiplexedConnection;

/// The scripts, hashed once per process. Each is sent by `EVALSHA`, loaded on `NOSCRIPT`
/// (a restarted or flushed Redis) and sent again: `Script::invoke_async`.
struct Scripts {
    claim: Script,
    renew: Script,
    release: Script,
    append: Script,
    headers: Script,
    restart: Script,
    #[cfg(test)]
    position: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    claim: Script::new(concat!(
        include_str!("store/state.lua"),
        include_str!("store/claim.lua")
    )),
    renew: Script::new(include_str!("store/renew.lua")),
    release: Script::new(include_str!("store/release.lua")),
    append: Script::new(concat!(
        include_str!("store/state.lua"),
        include_str!("store/append.lua")
    )),
    headers: Script::new(include_str!("store/headers.lua")),
    restart: Script::new(include_str!("store/restart.lua")),
    #[cfg(test)]
    position: Script::new(concat!(
        include_str!("store/state.lua"),
        include_str!("store/position.lua")
    )),
});

/// How long a wake stream lives after its last wake: the wake streams of instances that are
/// gone (every deploy names new ones) do not pile up.
const WAKE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Entries read per round trip when scanning the log for an app's id.
const SCAN_PAGE: usize = 256;

/// The shared logs in Redis, over one multiplexed, self-reconnecting connection. Cheap to
/// clone; every call returns within the op timeout.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// Replaced after an authentication failure, which the manager never recovers from.
    manager: Mutex<ConnectionManager>,
    op_timeout: Duration,
}

/// Where a stream's log stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    /// The epoch: the first part of every SSE id of this log. A new epoch means the old log is
    /// gone, and with it every id that named it.
    pub(crate) epoch: Box<str>,
    /// The seq the next event gets (events are numbered from 1).
    pub(crate) next: u64,
    /// The last upstream event id the leader recorded: a new leader resumes the upstream from it.
    pub(crate) upstream_id: Option<String>,
    /// The claim found the stream missing or inconsistent and started this epoch.
    pub(crate) fresh: bool,
    /// The app's latest response headers, as the leader stored them (`name: value` lines).
    pub(crate) headers: Option<Bytes>,
}

/// What a claim of the lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claim {
    /// This instance holds the lease now; `token` fences its appends and renews.
    Won {
        /// `<node>/<gen>`: renew, release and append with it.
        token: String,
        /// Where the log stands: append from `position.next`.
        position: Position,
    },
    /// Another holder has the lease.
    Held {
        /// The holder's token `<node>/<gen>`. Naming this instance's own node, it is a claim
        /// whose reply was lost (a timeout): the token is this instance's to use or release.
        holder: String,
        /// Where the log stands.
        position: Position,
    },
}

/// What an append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Appended {
    /// Every event is in the log (some perhaps by an earlier attempt); `next` follows them.
    Done {
        /// The seq the next event gets.
        next: u64,
    },
    /// The lease is not this token's any more: stop leading, append nothing.
    Fenced,
    /// The log is not the epoch appended to. `Some`: it moved on (the new position, lease
    /// still held); `None`: it vanished or is inconsistent, claim again for a fresh epoch.
    Epoch {
        /// The log's current position, if it has a consistent one.
        position: Option<Position>,
    },
    /// The first event's seq is past the log's next: events in between are missing.
    Order {
        /// The seq the log expects.
        next: u64,
    },
}

/// One event of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Logged {
    /// Its seq in the epoch.
    pub(crate) seq: u64,
    /// The encoded SSE event, as it goes on the wire.
    pub(crate) bytes: Bytes,
    /// The app's own id of the event, if it had one.
    pub(crate) app_id: Option<Box<str>>,
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// Redis did not answer within the op timeout (down, stopped, unreachable or slow).
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection or Redis itself failed the command.
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
    /// A reply of an unexpected shape, or data under our keys we did not write.
    #[error("unexpected data in Redis: {0}")]
    Data(String),
}

impl StoreError {
    /// Whose fault this is.
    pub(crate) fn fault(&self) -> StoreFault {
        match self {
            StoreError::Timeout(_) => StoreFault::Timeout,
            StoreError::Data(_) => StoreFault::Data,
            StoreError::Redis(error) => redis_fault(error),
        }
    }

    /// Redis refused the credentials (`WRONGPASS`, `NOAUTH`, a failed `AUTH`).
    pub(crate) fn is_auth(&self) -> bool {
        self.fault() == StoreFault::Auth
    }

    /// A call that failed for a reason retrying soon may fix (no answer, no connection, a busy
    /// or loading server), unlike wrong credentials, refused commands or foreign data.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self.fault(),
            StoreFault::Unreachable | StoreFault::Timeout | StoreFault::Server
        )
    }
}

/// Milliseconds for Redis: at least 1 (0 means "forever" or "delete now" to Redis).
pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Store {
    /// Connects (and authenticates) within `op_timeout`; every later call is bounded by it.
    pub(crate) async fn connect(config: &ClusterConfig, op_timeout: Duration) -> Result<Store, StoreError> {
        let store = Store::lazy(config, op_timeout)?;
        // A PING proves the password too: without one, a server that wants one connects fine
        // and answers NOAUTH to the first command.
        store
            .run(|mut conn| async move {
                redis::cmd("PING").query_async::<()>(&mut conn).await?;
                Ok(())
            })
            .await?;
        Ok(store)
    }

    /// A store that connects on its first call: for starting while Redis is down (the calls
    /// fail, within the op timeout, until it is up). Call within a Tokio runtime (the
    /// connection manager spawns a task).
    pub(crate) fn lazy(config: &ClusterConfig, op_timeout: Duration) -> Result<Store, StoreError> {
        let client = client::build(config)?;
        // Short reconnect settings: a down Redis must fail calls fast (a breaker above decides
        // when to try again), and no call may wait past `op_timeout` anyway.
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(op_timeout))
            .set_connection_timeout(Some(op_timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500))
            .set_exponent_base(2.0);
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), manager_config.clone())?;
        Ok(Store {
            inner: Arc::new(Inner {
                client,
                config: manager_config,
                manager: Mutex::new(manager),
                op_timeout,
            }),
        })
    }

    /// Runs `op` on the manager within the op timeout.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let manager = self
            .inner
            .manager
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let timeout = self.inner.op_timeout;
        match tokio::time::timeout(timeout, op(manager)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(StoreError::Redis(error))) => {
                if error.kind() == ErrorKind::AuthenticationFailed {
                    self.replace_manager();
                }
                if error.is_timeout() {
                    Err(StoreError::Timeout(timeout))
                } else {
                    Err(StoreError::Redis(error))
                }
            }
            Ok(Err(error)) => Err(error),
            Err(_) => Err(StoreError::Timeout(timeout)),
        }
    }

    /// A new manager, connecting on its next use: the old one keeps a failed authentication
    /// forever (see the module docs).
    fn replace_manager(&self) {
        match ConnectionManager::new_lazy_with_config(self.inner.client.clone(), self.inner.config.clone()) {
            Ok(manager) => {
                *self.inner.manager.lock().unwrap_or_else(PoisonError::into_inner) = manager;
            }
            Err(error) => tracing::debug!(%error, "cannot renew the Redis connection manager"),
        }
    }

    /// Claims the stream's lease for `node` for `lease`, unless someone holds it. Starts a new
    /// epoch `new_epoch` first if the stream's keys vanished or do not fit together. A won
    /// claim keeps the meta and log for `ttl` more.
    pub(crate) async fn claim(
        &self,
        keys: &LogKeys,
        node: &str,
        lease: Duration,
        new_epoch: &str,
        ttl: Duration,
    ) -> Result<Claim, StoreError> {
        let reply = self
            .run(|mut conn| async move {
                let value = SCRIPTS
                    .claim
                    .key(&keys.meta)
                    .key(&keys.log)
                    .key(&keys.lease)
                    .arg(node)
                    .arg(millis(lease))
                    .arg(new_epoch)
                    .arg(millis(ttl))
                    .invoke_async::<Value>(&mut conn)
                    .await?;
                Ok(value)
            })
            .await?;
        let fields = reply::items(reply, "claim")?;
        let [tag, who, epoch, next, up, fresh, headers] = <[Value; 7]>::try_from(fields)
            .map_err(|fields| StoreError::Data(format!("claim: {fields:?}")))?;
        let mut position = reply::position(&epoch, &next, &up, reply::int(&fresh) == Some(1))?;
        position.headers = match headers {
            Value::BulkString(bytes) => Some(Bytes::from(bytes)),
            _ => None,
        };
        let who = reply::text(&who)
            .ok_or_else(|| StoreError::Data(format!("claim: lease holder {who:?}")))?
            .to_owned();
        match reply::text(&tag) {
            Some("won") => Ok(Claim::Won { token: who, position }),
            Some("held") => Ok(Claim::Held {
                holder: who,
                position,
            }),
            _ => Err(StoreError::Data(format!("claim: {tag:?}"))),
        }
    }

    /// Starts the stream over in `new_epoch` (the holder of `token` found the log behind what
    /// it had seen); `None`: `token` no longer holds the lease (nothing written).
    pub(crate) async fn restart(
        &self,
        keys: &LogKeys,
        token: &str,
        new_epoch: &str,
        ttl: Duration,
    ) -> Result<Option<Position>, StoreError> {
        let reply = self
            .run(|mut conn| async move {
                let value = SCRIPTS
                    .restart
                    .key(&keys.meta)
                    .key(&keys.log)
                    .key(&keys.lease)
                    .arg(token)
                    .arg(new_epoch)
                    .arg(millis(ttl))
                    .invoke_async::<Value>(&mut conn)
                    .await?;
                Ok(value)
            })
            .await?;
        if reply == Value::Nil {
            return Ok(None);
        }
        let fields = reply::items(reply, "restart")?;
        match fields.as_slice() {
            [epoch, next] => reply::position(epoch, next, &Value::Nil, true).map(Some),
            _ => Err(StoreError::Data(format!("restart: {fields:?}"))),
        }
    }

    /// Keeps the app's response headers beside the stream for its followers, if `token` still
    /// holds the lease; `false`: it does not (nothing written).
    pub(crate) async fn set_headers(
        &self,
        keys: &LogKeys,
        token: &str,
        headers: &[u8],
    ) -> Result<bool, StoreError> {
        let reply = self
            .run(|mut conn| async move {
                let value = SCRIPTS
                    .headers
                    .key(&keys.meta)
                    .key(&keys.lease)
                    .arg(token)
                    .arg(headers)
                    .invoke_async::<i64>(&mut conn)
                    .await?;
                Ok(value)
            })
            .await?;
        Ok(reply == 1)
    }

    /// Extends the lease by `lease` if `token` still holds it; `false`: it does not.
    pub(crate) async fn renew(
        &self,
        keys: &LogKeys,
        token: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let reply = self
            .run(|mut conn| async move {
                let value = SCRIPTS
                    .renew
                    .key(&keys.lease)
                    .arg(token)
                    .arg(millis(lease))
                    .invoke_async::<Value>(&mut conn)
                    .await?;
                Ok(value)
            })
            .await?;
        match reply::int(&reply) {
            Some(held) => Ok(held == 1),
            None => Err(StoreError::Data(format!("renew: {reply:?}"))),
        }
    }

    /// Gives the lease up if `token` still holds it (a drain hands leadership over at once).
    pub(crate) async fn release(&self, keys: &LogKeys, token: &str) -> Result<(), StoreError> {
        self.run(|mut conn| async move {
            SCRIPTS
                .release
                .key(&keys.lease)
                .arg(token)
                .invoke_async::<Value>(&mut conn)
                .await?;
            Ok(())
        })
        .await
    }

    /// Appends `events` (encoded event, app id) as seqs `first_seq`, `first_seq + 1`, ... to the
    /// log of `epoch`, if `token` still holds the lease; records `upstream_id` if given, trims
    /// the log to about `maxlen` entries and keeps the stream for `ttl` more. Seqs the log
    /// already has are skipped, so retrying an append whose reply was lost is safe. An empty
    /// app id counts as none.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn append(
        &self,
        keys: &LogKeys,
        token: &str,
        epoch: &str,
        first_seq: u64,
        events: &[(Bytes, Option<Box<str>>)],
        upstream_id: Option<&str>,
        maxlen: usize,
        ttl: Duration,
    ) -> Result<Appended, StoreError> {
        let reply = self
            .run(|mut conn| async move {
                let mut call = SCRIPTS.append.key(&keys.meta);
                call.key(&keys.log)
                    .key(&keys.lease)
                    .arg(token)
                    .arg(epoch)
                    .arg(first_seq)
                    .arg(upstream_id.unwrap_or(""))
                    .arg(maxlen.max(1))
                    .arg(millis(ttl));
                for (bytes, app_id) in events {
                    call.arg(bytes.as_ref()).arg(app_id.as_deref().unwrap_or(""));
                }
                let value = call.invoke_async::<Value>(&mut conn).await?;
                Ok(value)
            })
            .await?;
        let fields = reply::items(reply, "append")?;
        let next = |value: Option<&Value>| {
            value
                .and_then(reply::int)
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| StoreError::Data(format!("append: next {value:?}")))
        };
        match fields.first().and_then(reply::text) {
            Some("ok") => Ok(Appended::Done {
                next: next(fields.get(1))?,
            }),
            Some("fenced") => Ok(Appended::Fenced),
            Some("order") => Ok(Appended::Order {
                next: next(fields.get(1))?,
            }),
            Some("epoch") => match (fields.get(1), fields.get(2), fields.get(3)) {
                (Some(epoch), Some(next), up) if *epoch != Value::Nil => Ok(Appended::Epoch {
                    position: Some(reply::position(epoch, next, up.unwrap_or(&Value::Nil), false)?),
                }),
                _ => Ok(Appended::Epoch { position: None }),
            },
            _ => Err(StoreError::Data(format!("append: {fields:?}"))),
        }
    }

    /// Where the log stands; `None` if it is absent or inconsistent (a claim starts it anew).
    #[cfg(test)]
    pub(crate) async fn position(&self, keys: &LogKeys) -> Result<Option<Position>, StoreError> {
        let reply = self
            .run(|mut conn| async move {
                let value = SCRIPTS
                    .position
                    .key(&keys.meta)
                    .key(&keys.log)
                    .invoke_async::<Value>(&mut conn)
                    .await?;
                Ok(value)
            })
            .await?;
        if reply == Value::Nil {
            return Ok(None);
        }
        let fields = reply::items(reply, "position")?;
        match fields.as_slice() {
            [epoch, next, up] => reply::position(epoch, next, up, false).map(Some),
            _ => Err(StoreError::Data(format!("position: {fields:?}"))),
        }
    }

    /// The events with seqs `from_seq..=to_seq` still in the log, at most `limit`, oldest first.
    /// Trimmed seqs are simply missing: the caller compares the first seq with what it asked.
    pub(crate) async fn range(
        &self,
        keys: &LogKeys,
        from_seq: u64,
        to_seq: u64,
        limit: usize,
    ) -> Result<Vec<Logged>, StoreError> {
        if from_seq > to_seq || limit == 0 {
            return Ok(Vec::new());
        }
        let reply = self
            .run(|mut conn| async move {
                let value = redis::cmd("XRANGE")
                    .arg(&keys.log)
                    .arg(format!("{from_seq}-0"))
                    .arg(format!("{to_seq}-0"))
                    .arg("COUNT")
                    .arg(limit)
                    .query_async::<Value>(&mut conn)
                    .await?;
                Ok(value)
            })
            .await?;
        reply::entries(reply, &keys.log)
    }

    /// The seq of the newest event before seq `before` whose app id is `app_id`, scanning at
    /// most `scan_limit` events back (in pages, within one op timeout); `None` if not among
    /// them. (The events from `before` on are the caller's already.)
    pub(crate) async fn find_app_id(
        &self,
        keys: &LogKeys,
        app_id: &str,
        before: u64,
        scan_limit: usize,
    ) -> Result<Option<u64>, StoreError> {
        if app_id.is_empty() || before <= 1 {
            return Ok(None);
        }
        self.run(|mut conn| async move {
            let mut end = format!("{}-0", before - 1);
            let mut left = scan_limit;
            while left > 0 {
                let page = left.min(SCAN_PAGE);
                let reply = redis::cmd("XREVRANGE")
                    .arg(&keys.log)
                    .arg(&end)
                    .arg("-")
                    .arg("COUNT")
                    .arg(page)
                    .query_async::<Value>(&mut conn)
                    .await?;
                let entries = reply::entries(reply, &keys.log)?;
                if let Some(found) = entries.iter().find(|e| e.app_id.as_deref() == Some(app_id)) {
                    return Ok(Some(found.seq));
                }
                match entries.last() {
                    Some(oldest) if entries.len() == page && oldest.seq > 1 => {
                        end = format!("{}-0", oldest.seq - 1);
                        left -= page;
                    }
                    _ => break,
                }
            }
            Ok(None)
        })
        .await
    }

    /// Wakes the blocked follower read of the instance whose wake stream is `wake_key`
    /// ([`LogKeys::wake`]), so it starts following a new stream at once.
    pub(crate) async fn wake(&self, wake_key: &str) -> Result<(), StoreError> {
        self.run(|mut conn| async move {
            redis::pipe()
                .cmd("XADD")
                .arg(wake_key)
                .arg("MAXLEN")
                .arg(1)
                .arg("*")
                .arg("w")
                .arg(1)
                .ignore()
                .cmd("PEXPIRE")
                .arg(wake_key)
                .arg(millis(WAKE_TTL))
                .ignore()
                .query_async::<()>(&mut conn)
                .await?;
            Ok(())
        })
        .await
    }
}

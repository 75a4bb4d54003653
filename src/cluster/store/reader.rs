//! The follower's blocking reads: one `XREAD BLOCK` over every log this instance follows, on a
//! connection of its own.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};

use super::{client, millis, reply, Logged, StoreError};
use crate::config::ClusterConfig;

/// A dedicated connection for blocking reads. Never the store's multiplexed one: a blocking
/// command holds its connection on the server, and everything written behind it would wait.
#[derive(Debug)]
pub(crate) struct Reader {
    client: redis::Client,
    /// `None` after a read that did not complete (an error, a timeout, or its future dropped):
    /// its XREAD may still be blocked on the server, so the next read opens a new connection
    /// rather than queue behind it.
    conn: Option<MultiplexedConnection>,
    config: AsyncConnectionConfig,
    block: Duration,
    op_timeout: Duration,
}

/// What one read brought.
#[derive(Debug)]
pub(crate) struct ReadBatch {
    /// Per log of the read, in its order: the entries after its seq (often none), or why that
    /// log's reply is unusable (foreign data: treat the stream as vanished). One bad log does
    /// not hide the others' entries.
    pub(crate) logs: Vec<Result<Vec<Logged>, StoreError>>,
    /// The id of the newest wake entry read, if the wake stream had one: read after it next.
    pub(crate) wake: Option<String>,
}

impl Reader {
    /// Connects (and authenticates) within `op_timeout`. A read blocks up to `block` (keep it
    /// short, 1–2 s, so the caller sees its own control messages between reads); its reply may
    /// take `op_timeout` beyond that.
    pub(crate) async fn connect(
        config: &ClusterConfig,
        block: Duration,
        op_timeout: Duration,
    ) -> Result<Reader, StoreError> {
        let client = client::build(config)?;
        // The crate's response timeout would otherwise cut every XREAD BLOCK longer than 500 ms.
        let connection = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(op_timeout))
            .set_response_timeout(Some(block + op_timeout));
        let mut reader = Reader {
            client,
            conn: None,
            config: connection,
            block,
            op_timeout,
        };
        reader.conn = Some(reader.open().await?);
        Ok(reader)
    }

    /// A new connection, proven by a PING (a missing password shows only at the first command).
    async fn open(&self) -> Result<MultiplexedConnection, StoreError> {
        let connect = async {
            let mut conn = self
                .client
                .get_multiplexed_async_connection_with_config(&self.config)
                .await?;
            redis::cmd("PING").query_async::<()>(&mut conn).await?;
            Ok::<_, StoreError>(conn)
        };
        match tokio::time::timeout(self.op_timeout, connect).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(StoreError::Redis(error))) if error.is_timeout() => {
                Err(StoreError::Timeout(self.op_timeout))
            }
            Ok(Err(error)) => Err(error),
            Err(_) => Err(StoreError::Timeout(self.op_timeout)),
        }
    }

    /// Reads the entries after seq `after` of each `(log key, after)` of `logs` (distinct keys),
    /// and of the wake stream after the id given with it (`"0"` at first: a spurious wake is
    /// harmless), blocking until one has news or `block` passed; at most `count` entries per
    /// log. Returns within `block` plus the op timeout (plus a reconnect's op timeout).
    ///
    /// Dropping the future mid-read is safe: the connection goes with it.
    pub(crate) async fn read(
        &mut self,
        logs: &[(&str, u64)],
        wake: Option<(&str, &str)>,
        count: usize,
    ) -> Result<ReadBatch, StoreError> {
        if logs.is_empty() && wake.is_none() {
            tokio::time::sleep(self.block).await;
            return Ok(ReadBatch {
                logs: Vec::new(),
                wake: None,
            });
        }
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.open().await?,
        };
        let mut xread = redis::cmd("XREAD");
        xread
            .arg("COUNT")
            .arg(count.max(1))
            .arg("BLOCK")
            .arg(millis(self.block))
            .arg("STREAMS");
        for (key, _) in logs {
            xread.arg(*key);
        }
        if let Some((key, _)) = wake {
            xread.arg(key);
        }
        for (_, after) in logs {
            xread.arg(format!("{after}-0"));
        }
        if let Some((_, after)) = wake {
            xread.arg(after);
        }
        let limit = self.block + self.op_timeout;
        let result = tokio::time::timeout(limit, xread.query_async::<Value>(&mut conn)).await;
        match result {
            Ok(Ok(reply)) => {
                self.conn = Some(conn);
                split(reply, logs, wake.map(|(key, _)| key))
            }
            Ok(Err(error)) if error.code() == Some("WRONGTYPE") => {
                // One key that is not a stream fails the whole XREAD: find which, so only its
                // stream is reported.
                let batch = self.probe(&mut conn, logs, wake.map(|(key, _)| key)).await;
                if batch.is_ok() {
                    self.conn = Some(conn);
                }
                batch
            }
            Ok(Err(error)) if error.is_timeout() => Err(StoreError::Timeout(limit)),
            Ok(Err(error)) => {
                if matches!(
                    error.kind(),
                    redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
                ) {
                    // The server answered: the connection is sound.
                    self.conn = Some(conn);
                }
                Err(error.into())
            }
            Err(_) => Err(StoreError::Timeout(limit)),
        }
    }

    /// After a WRONGTYPE: an empty batch in which each key that is not a stream is an error.
    async fn probe(
        &self,
        conn: &mut MultiplexedConnection,
        logs: &[(&str, u64)],
        wake: Option<&str>,
    ) -> Result<ReadBatch, StoreError> {
        let mut types = redis::pipe();
        for (key, _) in logs {
            types.cmd("TYPE").arg(*key);
        }
        if let Some(key) = wake {
            types.cmd("TYPE").arg(key);
        }
        let types: Vec<String> = match tokio::time::timeout(self.op_timeout, types.query_async(conn)).await {
            Ok(types) => types?,
            Err(_) => return Err(StoreError::Timeout(self.op_timeout)),
        };
        let not_stream = |t: &str| t != "stream" && t != "none";
        if let (Some(key), Some(kind)) = (wake, types.get(logs.len())) {
            if not_stream(kind) {
                return Err(StoreError::Data(format!("the wake stream {key} is a {kind}")));
            }
        }
        let logs = logs
            .iter()
            .zip(&types)
            .map(|((key, _), kind)| {
                if not_stream(kind) {
                    Err(StoreError::Data(format!("{key} is a {kind}, not a stream")))
                } else {
                    Ok(Vec::new())
                }
            })
            .collect();
        Ok(ReadBatch { logs, wake: None })
    }
}

/// An XREAD reply split per log of the request (in its order) and the wake stream.
fn split(reply: Value, logs: &[(&str, u64)], wake: Option<&str>) -> Result<ReadBatch, StoreError> {
    let mut batch = ReadBatch {
        logs: logs.iter().map(|_| Ok(Vec::new())).collect(),
        wake: None,
    };
    if reply == Value::Nil {
        return Ok(batch);
    }
    let index: HashMap<&str, usize> = logs
        .iter()
        .enumerate()
        .rev()
        .map(|(i, (key, _))| (*key, i))
        .collect();
    for (key, entries) in reply::pairs(reply, "XREAD")? {
        let key = reply::text(&key).ok_or_else(|| StoreError::Data(format!("XREAD: stream name {key:?}")))?;
        if Some(key) == wake {
            batch.wake = newest_id(entries);
        } else if let Some(&i) = index.get(key) {
            batch.logs[i] = reply::entries(entries, key);
        }
    }
    Ok(batch)
}

/// The id of the last entry of a wake stream's reply (its content does not matter).
fn newest_id(entries: Value) -> Option<String> {
    let Value::Array(entries) = entries else {
        return None;
    };
    match entries.into_iter().last()? {
        Value::Array(entry) => entry.first().and_then(reply::text).map(str::to_owned),
        _ => None,
    }
}

//! Redis replies read into the store's types, strictly: a reply of another shape, or data
//! under our keys that we did not write, is a [`StoreError::Data`], never a panic.

use bytes::Bytes;
use redis::Value;

use super::{Logged, Position, StoreError};

/// A text reply (bulk or simple string) as UTF-8.
pub(super) fn text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        Value::Okay => Some("OK"),
        _ => None,
    }
}

/// An integer reply, or a decimal text (Redis answers numbers as either).
pub(super) fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        other => text(other).and_then(|t| t.parse().ok()),
    }
}

/// The items of an array reply; `what` names the reply in the error.
pub(super) fn items(value: Value, what: &str) -> Result<Vec<Value>, StoreError> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        other => Err(StoreError::Data(format!(
            "{what}: expected an array, got {other:?}"
        ))),
    }
}

/// The `[key, value]` pairs of an XREAD reply (a RESP3 map is taken as well).
pub(super) fn pairs(value: Value, what: &str) -> Result<Vec<(Value, Value)>, StoreError> {
    let items = match value {
        Value::Map(pairs) => return Ok(pairs),
        other => items(other, what)?,
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::Array(pair) => match <[Value; 2]>::try_from(pair) {
                Ok([key, value]) => Ok((key, value)),
                Err(pair) => Err(StoreError::Data(format!("{what}: pair {pair:?}"))),
            },
            other => Err(StoreError::Data(format!("{what}: pair {other:?}"))),
        })
        .collect()
}

/// A position from a script's reply fields; `next` must be a seq (≥ 1).
pub(super) fn position(epoch: &Value, next: &Value, up: &Value, fresh: bool) -> Result<Position, StoreError> {
    let epoch = text(epoch)
        .filter(|e| !e.is_empty())
        .ok_or_else(|| StoreError::Data(format!("epoch: {epoch:?}")))?;
    let next = int(next)
        .and_then(|n| u64::try_from(n).ok())
        .filter(|n| *n >= 1)
        .ok_or_else(|| StoreError::Data(format!("next seq: {next:?}")))?;
    let upstream_id = match up {
        Value::Nil => None,
        other => Some(
            text(other)
                .ok_or_else(|| StoreError::Data(format!("upstream id: {other:?}")))?
                .to_owned(),
        ),
    };
    Ok(Position {
        epoch: epoch.into(),
        next,
        upstream_id,
        fresh,
        headers: None,
    })
}

/// The seq of an entry id `<seq>-0` (seq ≥ 1); `None` for any other id.
pub(super) fn seq_of(id: &[u8]) -> Option<u64> {
    let seq = id.strip_suffix(b"-0")?;
    if seq.is_empty() || !seq.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(seq).ok()?.parse().ok().filter(|s| *s >= 1)
}

/// The entries of an XRANGE / XREVRANGE / XREAD reply for the log `key`, in reply order.
pub(super) fn entries(value: Value, key: &str) -> Result<Vec<Logged>, StoreError> {
    let items = match value {
        Value::Nil => return Ok(Vec::new()),
        other => items(other, key)?,
    };
    items
        .into_iter()
        .map(|item| entry(item).map_err(|why| StoreError::Data(format!("{key}: {why}"))))
        .collect()
}

/// One log entry: `[id, [field, value, ...]]` with id `<seq>-0`, field `e` (the encoded
/// event) and optionally `i` (the app's id). Other fields are ignored.
fn entry(value: Value) -> Result<Logged, String> {
    let Value::Array(parts) = value else {
        return Err(format!("entry is not an array: {value:?}"));
    };
    let Ok([Value::BulkString(id), fields]) = <[Value; 2]>::try_from(parts) else {
        return Err("entry is not [id, fields]".to_owned());
    };
    let shown = String::from_utf8_lossy(&id).into_owned();
    let seq = seq_of(&id).ok_or_else(|| format!("entry id {shown:?} is not <seq>-0"))?;
    let fields = match fields {
        Value::Array(fields) => {
            let mut fields = fields.into_iter();
            let mut pairs = Vec::new();
            while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                pairs.push((name, value));
            }
            pairs
        }
        Value::Map(pairs) => pairs,
        other => return Err(format!("entry {shown}: fields {other:?}")),
    };
    let mut bytes = None;
    let mut app_id = None;
    for (name, value) in fields {
        match (text(&name), value) {
            (Some("e"), Value::BulkString(value)) => bytes = Some(Bytes::from(value)),
            (Some("i"), Value::BulkString(value)) => {
                let id = String::from_utf8(value)
                    .map_err(|_| format!("entry {shown}: the app id is not UTF-8"))?;
                app_id = Some(id.into_boxed_str());
            }
            (Some("e" | "i"), other) => return Err(format!("entry {shown}: field {other:?}")),
            _ => {}
        }
    }
    let bytes = bytes.ok_or_else(|| format!("entry {shown} has no event (field e)"))?;
    Ok(Logged { seq, bytes, app_id })
}

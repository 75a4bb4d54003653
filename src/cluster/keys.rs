//! The Redis key names of a stream: a keyed digest of its stream key, so Redis never holds a
//! raw path, query or credential, and nobody without the secret can guess which key is which.

use ring::hmac;

/// The three keys one stream keeps in Redis. They share the hash tag `{<digest>}`, so a Redis
/// Cluster keeps them in one slot and every script may touch all three.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogKeys {
    /// The metadata hash: `epoch`, `next` (the seq the next event gets), `gen` (lease
    /// generation counter), `up` (the last upstream event id).
    pub(crate) meta: String,
    /// The log: a Redis stream whose entry ids are `<seq>-0`.
    pub(crate) log: String,
    /// The lease: a string holding the leader's token `<node>/<gen>`, with an expiry.
    pub(crate) lease: String,
    /// Lowercase hex HMAC-SHA256 of the stream key: names the stream in logs without naming
    /// what it carries.
    pub(crate) digest: String,
}

impl LogKeys {
    /// The keys of the stream `stream_key`, under `prefix`, digested with `secret`.
    ///
    /// A `prefix` must not contain `{` or `}`: Redis Cluster hashes the first `{...}` of a key,
    /// so braces in the prefix would put every stream in one slot.
    pub(crate) fn new(prefix: &str, secret: &[u8], stream_key: &[u8]) -> LogKeys {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let digest = hex(hmac::sign(&key, stream_key).as_ref());
        LogKeys {
            meta: format!("{prefix}:{{{digest}}}:meta"),
            log: format!("{prefix}:{{{digest}}}:log"),
            lease: format!("{prefix}:{{{digest}}}:lease"),
            digest,
        }
    }

    /// The wake stream of the instance `node`: an entry added to it makes that instance's
    /// blocked follower read return, so it can start following a new stream at once. Not
    /// hash-tagged: it belongs to no stream.
    pub(crate) fn wake(prefix: &str, node: &str) -> String {
        format!("{prefix}:wake:{node}")
    }
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag_and_never_show_the_stream_key() {
        // RFC 4231 test case 2: HMAC-SHA256(key "Jefe", "what do ya want for nothing?").
        let keys = LogKeys::new("ssegate", b"Jefe", b"what do ya want for nothing?");
        let digest = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert_eq!(keys.digest, digest);
        assert_eq!(keys.meta, format!("ssegate:{{{digest}}}:meta"));
        assert_eq!(keys.log, format!("ssegate:{{{digest}}}:log"));
        assert_eq!(keys.lease, format!("ssegate:{{{digest}}}:lease"));
        assert_eq!(LogKeys::wake("ssegate", "web-1"), "ssegate:wake:web-1");
    }

    #[test]
    fn another_secret_names_other_keys() {
        let a = LogKeys::new("p", b"one", b"/feed?token=secret");
        let b = LogKeys::new("p", b"two", b"/feed?token=secret");
        assert_ne!(a.digest, b.digest);
        assert!(!a.meta.contains("feed") && !a.meta.contains("secret"));
    }
}

//! What one client may make ssegate open. A new stream is the costly thing a subscription can
//! cause (an upstream request, a buffer, and a linger after the client left), and distinct
//! stream keys are free to make up (a query string, a header), so each client gets a budget:
//! at most `max_streams_per_client` streams it opened alive at once, and at most
//! `new_streams_per_client` new ones per second (a token bucket with a burst).
//!
//! A subscription past its client's budget is not refused (any status but 200 ends an
//! EventSource for good): it is held, with heartbeats, until the budget allows, and its stream
//! is never opened if it leaves first. Joining a live stream never costs anything.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{Config, StreamRate};

/// Who a client is, for its budget: its IPv4 address, or its IPv6 /64 (one host usually has a
/// whole /64 to draw addresses from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId(IpAddr);

impl From<IpAddr> for ClientId {
    fn from(ip: IpAddr) -> ClientId {
        match ip {
            IpAddr::V4(_) => ClientId(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientId(IpAddr::V4(v4)),
                None => ClientId(IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into())),
            },
        }
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Every client's budget. Entries exist while a client has streams, waiters, or a bucket not
/// yet refilled, so the map stays as small as the set of active clients.
#[derive(Debug)]
pub(crate) struct Budgets {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    max_streams: Option<usize>,
    rate: Option<StreamRate>,
    accounts: HashMap<ClientId, Account>,
    /// Map size after the last sweep of idle entries: the next sweep waits for it to double.
    swept_at: usize,
}

#[derive(Debug)]
struct Account {
    /// Streams this client opened that are alive.
    open: usize,
    /// Tokens in the bucket, refilled at `rate` up to the burst.
    tokens: f64,
    refilled: Instant,
    /// Told whenever one of the client's streams ends.
    released: watch::Sender<()>,
    /// Whether the client was told (in the log) that it is over its budget.
    warned: bool,
}

/// One stream's charge on its client's budget, released when the stream ends.
#[derive(Debug)]
pub(crate) struct Charge {
    budgets: Arc<Budgets>,
    client: ClientId,
}

/// Why a subscription must wait, and until when.
#[derive(Debug)]
pub(crate) struct Wait {
    /// Changes when one of the client's streams ends.
    released: watch::Receiver<()>,
    /// When the bucket has a token again (rate limit); `None`: when a stream ends.
    until: Option<Instant>,
    /// Which limit held it, for the log.
    pub reason: &'static str,
}

/// The answer of [`Budgets::take`].
#[derive(Debug)]
pub(crate) enum Grant {
    /// The client may open a stream; the charge goes with it.
    Granted(Charge),
    /// The client must wait; the first time it is held (since it was last within budget) is
    /// flagged, so the log says it once.
    Wait(Wait, bool),
}

impl Budgets {
    /// The budgets of `config`.
    pub(crate) fn new(config: &Config) -> Arc<Budgets> {
        Arc::new(Budgets {
            inner: Mutex::new(Inner {
                max_streams: config.max_streams_per_client,
                rate: config.new_streams_per_client,
                accounts: HashMap::new(),
                swept_at: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the limits of a reloaded config; held subscriptions look again.
    pub(crate) fn reconfigure(&self, config: &Config) {
        let mut inner = self.lock();
        inner.max_streams = config.max_streams_per_client;
        inner.rate = config.new_streams_per_client;
        for account in inner.accounts.values() {
            account.released.send_replace(());
        }
    }

    /// Clients with an entry now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.lock().accounts.len()
    }

    /// Asks for one new stream for `client`.
    pub(crate) fn take(self: &Arc<Self>, client: ClientId) -> Grant {
        let now = Instant::now();
        let mut inner = self.lock();
        let (max_streams, rate) = (inner.max_streams, inner.rate);
        // Streams are counted even with no limit in force, so a reload that sets one counts
        // the streams already open, and every release matches a count.
        if inner.accounts.len() >= 2 * inner.swept_at.max(512) {
            inner.sweep(now);
        }
        let burst = rate.map_or(0.0, |r| r.burst as f64);
        let account = inner.accounts.entry(client).or_insert_with(|| Account {
            open: 0,
            tokens: burst,
            refilled: now,
            released: watch::Sender::new(()),
            warned: false,
        });
        if let Some(rate) = rate {
            let elapsed = now.saturating_duration_since(account.refilled).as_secs_f64();
            account.tokens = (account.tokens + elapsed * rate.per_second as f64).min(burst);
            account.refilled = now;
        }
        let held = if max_streams.is_some_and(|max| account.open >= max) {
            Some((None, "max_streams_per_client"))
        } else {
            match rate {
                Some(rate) if account.tokens < 1.0 => {
                    let missing = 1.0 - account.tokens;
                    let wait = Duration::from_secs_f64(missing / rate.per_second.max(1) as f64);
                    Some((Some(now + wait), "new_streams_per_client"))
                }
                _ => None,
            }
        };
        match held {
            Some((until, reason)) => {
                let first = !std::mem::replace(&mut account.warned, true);
                Grant::Wait(
                    Wait {
                        released: account.released.subscribe(),
                        until,
                        reason,
                    },
                    first,
                )
            }
            None => {
                account.open += 1;
                if rate.is_some() {
                    account.tokens -= 1.0;
                }
                account.warned = false;
                Grant::Granted(Charge {
                    budgets: self.clone(),
                    client,
                })
            }
        }
    }

    fn release(&self, client: ClientId) {
        let mut inner = self.lock();
        if let Some(account) = inner.accounts.get_mut(&client) {
            account.open = account.open.saturating_sub(1);
            account.released.send_replace(());
        }
    }
}

impl Inner {
    /// Drops the entries of clients with nothing open, nobody waiting and a full bucket: they
    /// are as if new.
    fn sweep(&mut self, now: Instant) {
        let rate = self.rate;
        self.accounts.retain(|_, account| {
            let full = rate.is_none_or(|r| {
                let elapsed = now.saturating_duration_since(account.refilled).as_secs_f64();
                account.tokens + elapsed * r.per_second as f64 >= r.burst as f64
            });
            account.open > 0 || account.released.receiver_count() > 0 || !full
        });
        self.swept_at = self.accounts.len();
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budgets.release(self.client);
    }
}

impl Wait {
    /// Resolves when the budget may allow a new stream: one of the client's streams ended, the
    /// bucket refilled, or the limits changed. The caller asks again.
    pub(crate) async fn done(mut self) {
        match self.until {
            Some(until) => {
                tokio::select! {
                    _ = self.released.changed() => {}
                    () = tokio::time::sleep_until(until) => {}
                }
            }
            None => {
                // An error means the account is gone, which is also worth a new look.
                let _ = self.released.changed().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budgets(toml: &str) -> Arc<Budgets> {
        let config = Config::from_toml(
            &format!("{toml}\n[[route]]\npath = \"/\"\nupstream = \"http://127.0.0.1:1\"\n"),
            "t",
        )
        .expect("config");
        Budgets::new(&config)
    }

    fn client(ip: &str) -> ClientId {
        ClientId::from(ip.parse::<IpAddr>().expect("ip"))
    }

    #[tokio::test(start_paused = true)]
    async fn streams_per_client_are_capped_and_released() {
        let budgets = budgets("max_streams_per_client = 2\nnew_streams_per_client = \"off\"");
        let a = client("10.0.0.1");
        let (Grant::Granted(one), Grant::Granted(_two)) = (budgets.take(a), budgets.take(a)) else {
            panic!("two streams are within the budget");
        };
        let Grant::Wait(wait, first) = budgets.take(a) else {
            panic!("the third waits");
        };
        assert!(first);
        assert_eq!(wait.reason, "max_streams_per_client");
        assert!(matches!(budgets.take(a), Grant::Wait(_, false)), "said once");
        assert!(
            matches!(budgets.take(client("10.0.0.2")), Grant::Granted(_)),
            "another client is not affected"
        );
        let waiting = tokio::spawn(wait.done());
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(one);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("a stream ending wakes the waiter")
            .expect("task");
        assert!(matches!(budgets.take(a), Grant::Granted(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn new_streams_are_rate_limited_with_a_burst() {
        let budgets =
            budgets("max_streams_per_client = \"off\"\nnew_streams_per_client = 10\nnew_streams_burst = 3");
        let a = client("10.0.0.1");
        let mut charges = Vec::new();
        for _ in 0..3 {
            let Grant::Granted(charge) = budgets.take(a) else {
                panic!("the burst is granted at once");
            };
            charges.push(charge);
        }
        let Grant::Wait(wait, _) = budgets.take(a) else {
            panic!("past the burst: wait");
        };
        assert_eq!(wait.reason, "new_streams_per_client");
        let started = Instant::now();
        wait.done().await;
        assert_eq!(
            Instant::now() - started,
            Duration::from_millis(100),
            "one token at 10/s"
        );
        assert!(matches!(budgets.take(a), Grant::Granted(_)));
    }

    fn config(toml: &str) -> Config {
        Config::from_toml(
            &format!("{toml}\n[[route]]\npath = \"/\"\nupstream = \"http://127.0.0.1:1\"\n"),
            "t",
        )
        .expect("config")
    }

    // Found by probing: streams opened while no limit was in force were not counted, but
    // their release was, so after a reload that set a limit a client could open twice it.
    #[test]
    fn streams_opened_without_a_limit_count_once_one_is_set() {
        let budgets = Budgets::new(&config(
            "max_streams_per_client = \"off\"\nnew_streams_per_client = \"off\"",
        ));
        let a = client("10.0.0.1");
        let old: Vec<Charge> = (0..3)
            .map(|_| match budgets.take(a) {
                Grant::Granted(charge) => charge,
                Grant::Wait(..) => panic!("no limit"),
            })
            .collect();
        budgets.reconfigure(&config(
            "max_streams_per_client = 2\nnew_streams_per_client = \"off\"",
        ));
        assert!(
            matches!(budgets.take(a), Grant::Wait(..)),
            "three are open already"
        );
        drop(old);
        let new: Vec<Grant> = (0..3).map(|_| budgets.take(a)).collect();
        assert!(matches!(new[0], Grant::Granted(_)));
        assert!(matches!(new[1], Grant::Granted(_)));
        assert!(matches!(new[2], Grant::Wait(..)), "two, not more");
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        assert_eq!(client("2001:db8:1:2:aaaa::1"), client("2001:db8:1:2:bbbb::9"));
        assert_ne!(client("2001:db8:1:2::1"), client("2001:db8:1:3::1"));
        assert_eq!(client("::ffff:10.0.0.1"), client("10.0.0.1"));
        assert_eq!(client("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_clients_are_forgotten() {
        let budgets = budgets("new_streams_per_client = 1000\nnew_streams_burst = 1");
        for n in 0..2000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            drop(budgets.take(ClientId::from(ip)));
            tokio::time::advance(Duration::from_millis(2)).await;
        }
        assert!(budgets.tracked() < 1100, "{} entries", budgets.tracked());
    }
}

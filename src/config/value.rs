//! The value syntaxes of the config file: durations, sizes, and "off".

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A duration written as a string: `"250ms"`, `"15s"`, `"10m"`, `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DurationValue(pub Duration);

/// A duration, or `"off"` where the feature can be disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Toggle(pub Option<Duration>);

/// A size in bytes: an integer, or a string such as `"8MiB"`, `"512KiB"`, `"64kB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SizeValue(pub u64);

/// A count, or `"off"` for no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LimitValue(pub Option<u64>);

/// A list of names (`["br", "gzip"]`), or `"off"` for none; each name keeps its span, so a
/// name the key does not know is reported on its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NameList(pub Vec<toml::Spanned<String>>);

/// An address block such as `10.0.0.0/8` or `fd00::/8`; a bare address is a block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `addr/prefix` or a bare address; the error says what was expected.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let bad = |why: &str| format!("{text:?} is not an address block such as \"10.0.0.0/8\" ({why})");
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text.trim(), None),
        };
        let network: IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(digits) => match digits.parse::<u8>() {
                Ok(n) if n <= max && digits.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(bad(&format!("the prefix length must be 0 to {max}"))),
            },
        };
        let cidr = Cidr { network, prefix };
        if cidr.mask(network) != network {
            return Err(bad("bits are set after the prefix; write the network address"));
        }
        Ok(cidr)
    }

    /// `ip` with the bits after this block's prefix cleared.
    fn mask(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V4((bits & mask).into())
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V6((bits & mask).into())
            }
        }
    }

    /// Whether `ip` is in this block (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.network.is_ipv4() && self.mask(ip) == self.network
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Parses a duration string; the error says what was expected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    use humantime::DurationError;
    let trimmed = text.trim();
    humantime::parse_duration(trimmed).map_err(|error| {
        // humantime's own words ("expected number at 0") name byte offsets; say it plainly.
        let at = |offset: usize| trimmed.get(offset..).and_then(|rest| rest.chars().next());
        let why = match error {
            DurationError::Empty => "it is empty".to_owned(),
            DurationError::NumberExpected(offset) => match at(offset) {
                Some('-') => "a duration cannot be negative".to_owned(),
                Some(c) if offset == 0 => format!("it must start with a number, not `{c}`"),
                _ => "each unit needs a number before it".to_owned(),
            },
            DurationError::InvalidCharacter(offset) => match at(offset) {
                Some(c) => format!("`{c}` is not allowed (use `.` for a fraction)"),
                None => "it has a character that is not allowed".to_owned(),
            },
            DurationError::UnknownUnit { unit, value, .. } if unit.is_empty() => {
                format!("the number needs a unit, such as \"{value}s\" or \"{value}ms\"")
            }
            DurationError::UnknownUnit { unit, .. } => {
                format!("`{unit}` is not a unit (ms, s or sec, m or min, h, d)")
            }
            DurationError::NumberOverflow => "the number is too large or too precise".to_owned(),
        };
        format!("invalid duration {text:?}: {why}; write it like \"250ms\", \"1.5s\", \"15 sec\", \"10m\" or \"1h\"")
    })
}

/// Parses a size string; the error says what was expected.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("invalid size {text:?}; write bytes as an integer or like \"512KiB\", \"8MiB\"");
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(bad()),
    };
    number.checked_mul(multiplier).ok_or_else(bad)
}

/// Formats a duration the way the config file writes it.
pub fn format_duration(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".to_owned();
    }
    humantime::format_duration(duration).to_string()
}

/// Formats a duration or `off`.
pub fn format_toggle(duration: Option<Duration>) -> String {
    duration.map_or_else(|| "off".to_owned(), format_duration)
}

/// Formats a size with the largest binary unit that divides it.
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = deserializer.deserialize_any(StringVisitor("a duration such as \"15s\""))?;
        if text == "off" {
            return Err(de::Error::custom("this setting cannot be \"off\""));
        }
        parse_duration(&text)
            .map(DurationValue)
            .map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Toggle {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = deserializer.deserialize_any(StringVisitor("a duration such as \"15s\", or \"off\""))?;
        if text == "off" {
            return Ok(Toggle(None));
        }
        let duration = parse_duration(&text).map_err(de::Error::custom)?;
        if duration.is_zero() {
            return Err(de::Error::custom(
                "a zero duration here means nothing; write \"off\" to disable",
            ));
        }
        Ok(Toggle(Some(duration)))
    }
}

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = SizeValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: an integer of bytes, or a string such as \"8MiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SizeValue, E> {
                u64::try_from(v)
                    .map(SizeValue)
                    .map_err(|_| E::custom(format!("invalid size {v}: a size cannot be negative")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SizeValue, E> {
                Ok(SizeValue(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SizeValue, E> {
                parse_size(v).map(SizeValue).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

impl<'de> Deserialize<'de> for LimitValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LimitVisitor;
        impl Visitor<'_> for LimitVisitor {
            type Value = LimitValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a positive integer, or \"off\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<LimitValue, E> {
                match u64::try_from(v) {
                    Ok(n) if n > 0 => Ok(LimitValue(Some(n))),
                    _ => Err(E::custom(format!(
                        "invalid limit {v}: must be at least 1, or \"off\""
                    ))),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LimitValue, E> {
                match v {
                    "off" => Ok(LimitValue(None)),
                    _ => Err(E::custom(format!(
                        "invalid limit {v:?}: write an integer, or \"off\""
                    ))),
                }
            }
        }
        deserializer.deserialize_any(LimitVisitor)
    }
}

impl<'de> Deserialize<'de> for NameList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = NameList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of names such as [\"br\", \"gzip\"], or \"off\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<NameList, E> {
                match v {
                    "off" => Ok(NameList(Vec::new())),
                    _ => Err(E::custom(format!(
                        "invalid value {v:?}: write a list such as [\"{v}\"], or \"off\""
                    ))),
                }
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<NameList, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element()? {
                    names.push(name);
                }
                Ok(NameList(names))
            }
        }
        deserializer.deserialize_any(ListVisitor)
    }
}

/// Formats a limit or `off`.
pub fn format_limit(limit: Option<u64>) -> String {
    limit.map_or_else(|| "\"off\"".to_owned(), |n| n.to_string())
}

/// Accepts only a string, with an error that names what the string should hold.
struct StringVisitor(&'static str);

impl Visitor<'_> for StringVisitor {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_duration("15").is_err());
        assert!(parse_duration("fast").is_err());
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_toggle(None), "off");
    }

    #[test]
    fn address_blocks() {
        let block = Cidr::parse("10.0.0.0/8").expect("valid");
        assert!(block.contains("10.1.2.3".parse().expect("ip")));
        assert!(block.contains("::ffff:10.1.2.3".parse().expect("ip")));
        assert!(!block.contains("11.0.0.1".parse().expect("ip")));
        assert!(!block.contains("::1".parse().expect("ip")));
        let one = Cidr::parse("192.168.1.7").expect("valid");
        assert!(one.contains("192.168.1.7".parse().expect("ip")));
        assert!(!one.contains("192.168.1.8".parse().expect("ip")));
        let v6 = Cidr::parse("fd00::/8").expect("valid");
        assert!(v6.contains("fd12::1".parse().expect("ip")));
        assert!(Cidr::parse("0.0.0.0/0")
            .expect("valid")
            .contains("8.8.8.8".parse().expect("ip")));
        assert_eq!(v6.to_string(), "fd00::/8");
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "example.com",
            "::/129",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("64kB"), Ok(64_000));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("8 megs").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
        assert_eq!(format_size(8 << 20), "8MiB");
        assert_eq!(format_size(1000), "1000");
    }
}

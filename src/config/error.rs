//! Config errors that name the file, the line, the section and the key.

use std::ops::Range;

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path as given.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid config.
    #[error("{origin}:{line}:{column}: {message}")]
    Invalid {
        /// The file name (or another name for the text, such as "embedded demo config").
        origin: String,
        /// 1-based line of the offending key or value.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, naming the key and section.
        message: String,
    },
}

/// The text being loaded, to turn byte spans into lines and sections.
pub(super) struct Source<'a> {
    pub origin: &'a str,
    pub text: &'a str,
}

impl Source<'_> {
    /// An error at `span` with `message` as given.
    pub(super) fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        ConfigError::Invalid {
            origin: self.origin.to_owned(),
            line,
            column: self.text[line_start..start].chars().count() + 1,
            message: message.into(),
        }
    }

    /// Turns a TOML or serde error into one that names the key and section it happened in.
    pub(super) fn toml_error(&self, error: &toml::de::Error) -> ConfigError {
        let span = error.span().unwrap_or(0..0);
        let raw = error.message().trim().replace('\n', "; ");
        let raw = raw.as_str();
        let section = self.section_at(span.start);
        let message = if let Some((unknown, hint)) = unknown_key_message(raw) {
            format!("{unknown} in {section}{hint}")
        } else if let Some(key) = self.key_at(span.start) {
            format!("key `{key}` in {section}: {raw}")
        } else {
            format!("in {section}: {raw}")
        };
        self.error(span, message)
    }

    /// The key assigned on the line holding `offset`, if that line is a `key = value` line.
    fn key_at(&self, offset: usize) -> Option<&str> {
        let start = self.text[..offset.min(self.text.len())]
            .rfind('\n')
            .map_or(0, |i| i + 1);
        let line = self.text[start..].lines().next()?;
        let key = line.split_once('=')?.0.trim();
        let bare = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"' | '\'');
        (!key.is_empty() && key.chars().all(bare)).then_some(key)
    }

    /// The table header (`[defaults]`, `[[route]]`) in force at `offset`, or "the top level".
    fn section_at(&self, offset: usize) -> String {
        let offset = offset.min(self.text.len());
        let line_end = self.text[offset..]
            .find('\n')
            .map_or(self.text.len(), |i| offset + i);
        self.text[..line_end]
            .lines()
            .rev()
            .map(str::trim)
            .find(|line| line.starts_with('['))
            .map(|header| header.split('#').next().unwrap_or(header).trim().to_owned())
            .unwrap_or_else(|| "the top level".to_owned())
    }
}

/// Rewrites serde's "unknown field `x`, expected one of `a`, `b`" into "unknown key `x`" and a
/// hint: "did you mean" when a known key is close, else the known keys.
fn unknown_key_message(raw: &str) -> Option<(String, String)> {
    let rest = raw.strip_prefix("unknown field `")?;
    let (unknown, expected) = rest.split_once('`')?;
    let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let best = known
        .iter()
        .map(|k| (edit_distance(unknown, k), *k))
        .min()
        .filter(|(distance, k)| *distance <= 2.max(k.len() / 3));
    let hint = match best {
        Some((_, close)) => format!(" (did you mean `{close}`?)"),
        None if known.is_empty() => String::new(),
        None => format!("; known keys: {}", known.join(", ")),
    };
    Some((format!("unknown key `{unknown}`"), hint))
}

/// Levenshtein distance, with an adjacent swap counted as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let raw = "unknown field `hearbeat`, expected one of `retry`, `heartbeat`, `ids`";
        let (head, hint) = unknown_key_message(raw).expect("recognised");
        assert_eq!(head, "unknown key `hearbeat`");
        assert_eq!(hint, " (did you mean `heartbeat`?)");
        let raw = "unknown field `zzz`, expected `path` or `upstream`";
        let (_, hint) = unknown_key_message(raw).expect("recognised");
        assert_eq!(hint, "; known keys: path, upstream");
        assert_eq!(edit_distance("retyr", "retry"), 1);
    }
}

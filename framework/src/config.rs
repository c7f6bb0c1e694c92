//! Helpers for connector configs: field documentation, unknown-key detection with
//! suggestions, lenient numbers, and secrets that never print.

use serde::de::{self, DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use crate::error::{ConnectorError, Result};

/// One documented config key. The registry's field lists drive `describe`, `validate` and the
/// "did you mean" of unknown keys, so each key is written down once.
#[derive(Debug, Clone, Copy)]
pub struct FieldDoc {
    pub name: &'static str,
    /// Type as a user writes it: `string`, `integer`, `list of strings`, …
    pub ty: &'static str,
    pub required: bool,
    /// Default in words, empty when required.
    pub default: &'static str,
    pub doc: &'static str,
}

/// The closest of `candidates` to `unknown`, when it is close enough to be a likely typo.
pub fn closest<'a>(unknown: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(&unknown.to_ascii_lowercase(), &c.to_ascii_lowercase()), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// One mistake in a config: the key it is about (as the general form names it; `None` for the
/// config as a whole), and what is wrong, in words that say what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: Option<String>,
    pub message: String,
}

impl Problem {
    pub fn at(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: Some(key.into()), message: message.into() }
    }
    pub fn general(message: impl Into<String>) -> Self {
        Self { key: None, message: message.into() }
    }
    /// `` `key`: message ``, or the message alone.
    pub fn render(&self) -> String {
        match &self.key {
            Some(k) => format!("`{k}`: {}", self.message),
            None => self.message.clone(),
        }
    }
}

/// `what: one problem`, or `what has N mistakes:` and one line each.
pub fn render_problems(what: &str, problems: &[Problem]) -> String {
    match problems {
        [] => format!("{what}: invalid"),
        [one] => format!("{what}: {}", one.render()),
        many => {
            let lines: Vec<String> = many.iter().map(|p| format!("  - {}", p.render())).collect();
            format!("{what} has {} mistakes:\n{}", many.len(), lines.join("\n"))
        }
    }
}

/// Every key of `value` that is not in `fields`, each with the closest valid key.
pub fn unknown_keys(value: &serde_json::Value, fields: &[FieldDoc]) -> Vec<Problem> {
    let Some(map) = value.as_object() else {
        return vec![Problem::general("expected a JSON object")];
    };
    let mut out = Vec::new();
    for key in map.keys() {
        if key == "kind" || fields.iter().any(|f| f.name == key) {
            continue;
        }
        let hint = match closest(key, fields.iter().map(|f| f.name)) {
            Some(near) => format!("did you mean `{near}`?"),
            None => format!("valid keys: {}", fields.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")),
        };
        out.push(Problem::at(key.clone(), format!("unknown key; {hint}")));
    }
    out
}

/// Every required key of `fields` that `value` lacks (or leaves empty).
pub fn missing_keys(value: &serde_json::Value, fields: &[FieldDoc]) -> Vec<Problem> {
    let Some(map) = value.as_object() else { return Vec::new() };
    fields
        .iter()
        .filter(|f| f.required)
        .filter(|f| map.get(f.name).is_none_or(|v| v.is_null() || v.as_str().is_some_and(|s| s.trim().is_empty())))
        .map(|f| Problem::at(f.name, format!("is required ({})", f.doc)))
        .collect()
}

/// Rejects keys of `value` that are not in `fields`, suggesting the closest valid key for each.
pub fn check_keys(what: &str, value: &serde_json::Value, fields: &[FieldDoc]) -> Result<()> {
    let problems = unknown_keys(value, fields);
    if problems.is_empty() { Ok(()) } else { Err(ConnectorError::config_problems(what, problems)) }
}

/// Parses a component config: every unknown and missing key at once (with suggestions), then
/// the values, the key of a wrong one named.
pub fn parse<T: DeserializeOwned>(what: &str, value: &serde_json::Value, fields: &[FieldDoc]) -> Result<T> {
    let mut problems = unknown_keys(value, fields);
    problems.extend(missing_keys(value, fields));
    if !problems.is_empty() {
        return Err(ConnectorError::config_problems(what, problems));
    }
    let mut value = value.clone();
    if let Some(map) = value.as_object_mut() {
        map.remove("kind");
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        let problem =
            if key == "." { Problem::general(e.inner().to_string()) } else { Problem::at(key, e.inner().to_string()) };
        ConnectorError::config_problems(what, vec![problem])
    })
}

/// Renders field docs as an aligned table for `describe`.
pub fn render_fields(fields: &[FieldDoc]) -> String {
    let width = fields.iter().map(|f| f.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for f in fields {
        let req = if f.required { "required".to_string() } else { format!("default: {}", f.default) };
        out.push_str(&format!("  {:width$}  {} ({}). {}\n", f.name, f.ty, req, f.doc, width = width));
    }
    out
}

/// Accepts `3306` or `"3306"`, as the original tool's configs write numbers as strings.
/// Errors say which numbers are allowed, in words (never a Rust type name).
pub mod lenient {
    use super::*;

    /// A number type a config may hold, with its range in words.
    pub trait Number: std::str::FromStr + Sized {
        const EXPECTED: &'static str;
    }
    macro_rules! number {
        ($($t:ty => $e:expr),*) => { $(impl Number for $t { const EXPECTED: &'static str = $e; })* };
    }
    number!(
        u8 => "a whole number from 0 to 255",
        u16 => "a whole number from 0 to 65535",
        u32 => "a whole number from 0 to 4294967295",
        u64 => "a whole number of at least 0",
        usize => "a whole number of at least 0",
        i64 => "a whole number",
        f64 => "a number"
    );

    fn convert<T: Number, E: de::Error>(raw: serde_json::Value) -> std::result::Result<T, E> {
        let text = match &raw {
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::String(s) => s.trim().to_string(),
            other => return Err(E::custom(format!("expected {}, got {other}", T::EXPECTED))),
        };
        text.parse().map_err(|_| E::custom(format!("expected {}, got {raw}", T::EXPECTED)))
    }

    pub fn deserialize<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: Number,
    {
        convert(serde_json::Value::deserialize(d)?)
    }

    /// The same for optional numbers (`null` or `""` is none).
    pub mod option {
        use super::*;
        pub fn deserialize<'de, D, T>(d: D) -> std::result::Result<Option<T>, D::Error>
        where
            D: Deserializer<'de>,
            T: Number,
        {
            match serde_json::Value::deserialize(d)? {
                serde_json::Value::Null => Ok(None),
                serde_json::Value::String(s) if s.trim().is_empty() => Ok(None),
                raw => convert(raw).map(Some),
            }
        }
    }
}

/// A duration written as `"24h"`, `"90m"`, `"7d"` (or a number of seconds), kept as seconds.
pub mod duration_secs {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<u64>, D::Error> {
        match Option::<serde_json::Value>::deserialize(d)? {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| de::Error::custom("expected a whole number of seconds or a duration like \"24h\"")),
            Some(serde_json::Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(serde_json::Value::String(s)) => humantime::parse_duration(s.trim())
                .map(|d| Some(d.as_secs()))
                .map_err(|_| de::Error::custom(format!("expected a duration like \"24h\" or \"30m\", got \"{s}\""))),
            Some(_) => Err(de::Error::custom("expected a duration like \"24h\"")),
        }
    }
}

/// A list given as a JSON array or as the original tool's comma-separated string.
pub mod string_list {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
        let items: Vec<String> = match serde_json::Value::deserialize(d)? {
            serde_json::Value::Null => Vec::new(),
            serde_json::Value::String(s) => s.split(',').map(str::to_string).collect(),
            serde_json::Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    serde_json::Value::String(s) => Ok(s),
                    other => Err(de::Error::custom(format!("expected a list of names, got {other} in it"))),
                })
                .collect::<std::result::Result<_, _>>()?,
            other => return Err(de::Error::custom(format!("expected a list of names or \"a,b,c\", got {other}"))),
        };
        Ok(items.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
    }
}

/// A secret: given literally, as `${ENV_VAR}`, or resolved from a named variable. Its `Debug`
/// and `Serialize` never show the value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A secret value; registered so that no message ever shows it (see [`crate::secrets`]).
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        crate::secrets::register(&value);
        Self(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Resolves `${NAME}` from the environment; other text is taken literally.
    pub fn resolve(raw: &str, what: &str) -> Result<Self> {
        let trimmed = raw.trim();
        if let Some(name) = trimmed.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
            return Self::from_env(name, what);
        }
        Ok(Self::new(raw))
    }
    pub fn from_env(name: &str, what: &str) -> Result<Self> {
        std::env::var(name).map(Self::new).map_err(|_| {
            let prefix = if what.is_empty() { String::new() } else { format!("{what}: ") };
            ConnectorError::config(format!(
                "{prefix}environment variable `{name}` is not set; export it before running"
            ))
        })
    }

    /// The secret in file `path`: its first line, a trailing newline dropped (how secret mounts
    /// and `echo > file` leave it). The error names the file, never its content.
    pub fn from_file(path: &std::path::Path, key: &str) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConnectorError::config(format!(
                "{key} {}: cannot read it ({e}); check the path and that this user may read it",
                path.display()
            ))
        })?;
        let value = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
        if value.is_empty() {
            return Err(ConnectorError::config(format!("{key} {}: the file is empty", path.display())));
        }
        Ok(Self::new(value))
    }
}

/// The connection keys every database source has, checked alike (no I/O besides reading the
/// environment for `password_env`): the pool and timeout bounds, the password given one way
/// only, and TLS files that fit the mode. `password` receives the `password_env` value.
#[derive(Debug)]
pub struct ConnectionKeys<'a> {
    pub pool_size: usize,
    pub connect_timeout: u64,
    pub password: &'a mut Secret,
    pub password_env: Option<&'a str>,
    pub password_file: bool,
    /// The `ssl_mode` value as written, for messages.
    pub ssl_mode: &'a str,
    /// The mode checks the certificate against `ssl_ca`.
    pub ssl_verifies: bool,
    /// The mode is "no TLS".
    pub ssl_disabled: bool,
    pub ssl_ca: bool,
    pub ssl_cert: bool,
    pub ssl_key: bool,
}

impl ConnectionKeys<'_> {
    /// Every mistake, each with its key.
    pub fn problems(self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.pool_size == 0 || self.pool_size > 256 {
            problems.push(Problem::at("pool_size", format!("between 1 and 256, got {}", self.pool_size)));
        }
        if self.connect_timeout == 0 || self.connect_timeout > 3600 {
            problems.push(Problem::at(
                "connect_timeout",
                format!("between 1 and 3600 seconds, got {}", self.connect_timeout),
            ));
        }
        let sources = [!self.password.expose().is_empty(), self.password_env.is_some(), self.password_file];
        if sources.iter().filter(|s| **s).count() > 1 {
            problems.push(Problem::at(
                "password",
                "give the password one way only: password, password_env or password_file",
            ));
        }
        if self.ssl_verifies && !self.ssl_ca {
            problems.push(Problem::at(
                "ssl_ca",
                format!(
                    "ssl_mode {} checks the server's certificate against a CA: give the CA certificate's path",
                    self.ssl_mode
                ),
            ));
        }
        if self.ssl_cert != self.ssl_key {
            problems.push(Problem::at(
                if self.ssl_cert { "ssl_key" } else { "ssl_cert" },
                "a client certificate needs both ssl_cert and ssl_key",
            ));
        }
        if self.ssl_disabled && (self.ssl_ca || self.ssl_cert || self.ssl_key) {
            problems.push(Problem::at(
                "ssl_mode",
                format!("is {}, yet ssl_ca / ssl_cert / ssl_key are set", self.ssl_mode),
            ));
        }
        if let Some(var) = self.password_env {
            match Secret::from_env(var, "password_env") {
                Ok(secret) => *self.password = secret,
                Err(e) => problems
                    .push(Problem::at("password_env", e.message().trim_start_matches("password_env: ").to_string())),
            }
        }
        problems
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "***" })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        // Numbers are accepted as the password's digits; serde's own error would quote them.
        let raw = match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Null => String::new(),
            _ => return Err(de::Error::custom("a password must be a string")),
        };
        Secret::resolve(&raw, "").map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_closest_key() {
        let fields = [
            FieldDoc { name: "db_host", ty: "string", required: true, default: "", doc: "" },
            FieldDoc { name: "batch_size", ty: "integer", required: false, default: "1000", doc: "" },
        ];
        let err = check_keys("params.json", &serde_json::json!({"batch_sise": 5}), &fields).unwrap_err();
        assert!(err.message().contains("did you mean `batch_size`"), "{}", err.message());
        let err = check_keys("params.json", &serde_json::json!({"zzz": 5}), &fields).unwrap_err();
        assert!(err.message().contains("valid keys: db_host, batch_size"), "{}", err.message());
        let err = check_keys("params.json", &serde_json::json!({"db_hots": 1, "batch_sise": 5}), &fields).unwrap_err();
        assert!(err.message().contains("2 mistakes") && err.problems().len() == 2, "every mistake at once: {err}");
    }

    #[test]
    fn secrets_never_print() {
        let numeric: Secret = serde_json::from_value(serde_json::json!(12345678)).unwrap();
        assert_eq!(numeric.expose(), "12345678");
        let err = serde_json::from_value::<Secret>(serde_json::json!([987654])).unwrap_err().to_string();
        assert!(!err.contains("987654"), "{err}");
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "\"***\"");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"***\"");
    }

    #[test]
    fn numbers_may_be_strings() {
        #[derive(Debug, Deserialize)]
        struct T {
            #[serde(deserialize_with = "lenient::deserialize")]
            port: u16,
            #[serde(default, deserialize_with = "string_list::deserialize")]
            list: Vec<String>,
        }
        let t: T = serde_json::from_value(serde_json::json!({"port": "3306", "list": "a, b,,c"})).unwrap();
        assert_eq!(t.port, 3306);
        assert_eq!(t.list, ["a", "b", "c"]);
        let fields = [
            FieldDoc { name: "port", ty: "integer", required: false, default: "", doc: "" },
            FieldDoc { name: "list", ty: "list", required: false, default: "", doc: "" },
        ];
        let e = parse::<T>("source", &serde_json::json!({"port": "x"}), &fields).unwrap_err();
        assert_eq!(e.message(), "source: `port`: expected a whole number from 0 to 65535, got \"x\"");
        let e = parse::<T>("source", &serde_json::json!({"port": 70000}), &fields).unwrap_err();
        assert_eq!(e.message(), "source: `port`: expected a whole number from 0 to 65535, got 70000");
        assert_eq!(e.problems()[0].key.as_deref(), Some("port"));
    }
}

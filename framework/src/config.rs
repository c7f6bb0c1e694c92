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

/// Rejects keys of `value` that are not in `fields`, suggesting the closest valid key.
pub fn check_keys(what: &str, value: &serde_json::Value, fields: &[FieldDoc]) -> Result<()> {
    let Some(map) = value.as_object() else {
        return Err(ConnectorError::config(format!("{what}: expected a JSON object")));
    };
    for key in map.keys() {
        if key == "kind" || fields.iter().any(|f| f.name == key) {
            continue;
        }
        let hint = match closest(key, fields.iter().map(|f| f.name)) {
            Some(near) => format!("did you mean `{near}`?"),
            None => format!("valid keys: {}", fields.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")),
        };
        return Err(ConnectorError::config(format!("{what}: unknown key `{key}`; {hint}")));
    }
    Ok(())
}

/// Parses a component config: unknown keys first (with suggestions), then serde.
pub fn parse<T: DeserializeOwned>(what: &str, value: &serde_json::Value, fields: &[FieldDoc]) -> Result<T> {
    check_keys(what, value, fields)?;
    let mut value = value.clone();
    if let Some(map) = value.as_object_mut() {
        map.remove("kind");
    }
    serde_json::from_value(value).map_err(|e| ConnectorError::config(format!("{what}: {e}")))
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
pub mod lenient {
    use super::*;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrString<T> {
        Num(T),
        Str(String),
    }

    pub fn deserialize<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de> + std::str::FromStr,
    {
        match NumOrString::<T>::deserialize(d)? {
            NumOrString::Num(n) => Ok(n),
            NumOrString::Str(s) => {
                s.trim().parse().map_err(|_| de::Error::custom(format!("expected a number, got \"{s}\"")))
            }
        }
    }

    /// The same for optional numbers.
    pub mod option {
        use super::*;
        pub fn deserialize<'de, D, T>(d: D) -> std::result::Result<Option<T>, D::Error>
        where
            D: Deserializer<'de>,
            T: Deserialize<'de> + std::str::FromStr,
        {
            match Option::<NumOrString<T>>::deserialize(d)? {
                None => Ok(None),
                Some(NumOrString::Num(n)) => Ok(Some(n)),
                Some(NumOrString::Str(s)) if s.trim().is_empty() => Ok(None),
                Some(NumOrString::Str(s)) => {
                    s.trim().parse().map(Some).map_err(|_| de::Error::custom(format!("expected a number, got \"{s}\"")))
                }
            }
        }
    }
}

/// A list given as a JSON array or as the original tool's comma-separated string.
pub mod string_list {
    use super::*;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        Str(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
        let items = match Option::<ListOrString>::deserialize(d)? {
            None => Vec::new(),
            Some(ListOrString::List(v)) => v,
            Some(ListOrString::Str(s)) => s.split(',').map(str::to_string).collect(),
        };
        Ok(items.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
    }
}

/// A secret: given literally, as `${ENV_VAR}`, or resolved from a named variable. Its `Debug`
/// and `Serialize` never show the value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
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
        Ok(Self(raw.to_string()))
    }
    pub fn from_env(name: &str, what: &str) -> Result<Self> {
        std::env::var(name).map(Self).map_err(|_| {
            ConnectorError::config(format!(
                "{what}: environment variable `{name}` is not set; export it before running"
            ))
        })
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
        Secret::resolve(&raw, "password").map_err(de::Error::custom)
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
        #[derive(Deserialize)]
        struct T {
            #[serde(deserialize_with = "lenient::deserialize")]
            port: u16,
            #[serde(default, deserialize_with = "string_list::deserialize")]
            list: Vec<String>,
        }
        let t: T = serde_json::from_value(serde_json::json!({"port": "3306", "list": "a, b,,c"})).unwrap();
        assert_eq!(t.port, 3306);
        assert_eq!(t.list, ["a", "b", "c"]);
        assert!(serde_json::from_value::<T>(serde_json::json!({"port": "x"})).is_err());
    }
}

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::Error;

/// A plugin's settings: the manifest's `[config.<key>]` defaults merged with the host's
/// overrides, validated by the host against the manifest's schema before `create`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    values: Map<String, Value>,
}

impl Config {
    /// Decodes the JSON object the host passes to `create`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.is_empty() {
            return Ok(Self::default());
        }
        match serde_json::from_slice(bytes) {
            Ok(Value::Object(values)) => Ok(Self { values }),
            Ok(other) => Err(Error::invalid_input(format!(
                "config must be a JSON object, got `{other}`"
            ))),
            Err(err) => Err(Error::invalid_input(format!(
                "config is not valid JSON: {err}"
            ))),
        }
    }

    pub fn from_map(values: Map<String, Value>) -> Self {
        Self { values }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.values.get(key)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.values.get(key).and_then(Value::as_str)
    }

    pub fn get_i64(&self, key: &str) -> Option<i64> {
        self.values.get(key).and_then(Value::as_i64)
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.values.get(key).and_then(Value::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.values.get(key).and_then(Value::as_bool)
    }

    /// Decodes the whole config into the plugin's own settings type.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_value(Value::Object(self.values.clone())).map_err(|err| {
            Error::invalid_input(format!(
                "config does not match the plugin's settings: {err}"
            ))
        })
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.values).unwrap_or_else(|_| b"{}".to_vec())
    }
}

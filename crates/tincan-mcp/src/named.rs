//! Tool arguments whose errors name the parameter: serde's own message for a wrong type says what
//! it expected but not where ("invalid type: integer `1`, expected a string"); an agent needs to
//! know which argument to fix.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

/// `T`, deserialized with the path of the offending parameter in its error; its JSON schema is
/// `T`'s, so the tool's input schema is unchanged.
#[derive(Debug)]
pub struct Named<T>(pub T);

impl<'de, T: DeserializeOwned> Deserialize<'de> for Named<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        serde_path_to_error::deserialize(value)
            .map(Named)
            .map_err(|e| {
                let path = e.path().to_string();
                if path == "." {
                    D::Error::custom(e.into_inner())
                } else {
                    D::Error::custom(format!("parameter `{path}`: {}", e.into_inner()))
                }
            })
    }
}

impl<T: JsonSchema> JsonSchema for Named<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }

    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug, Deserialize, JsonSchema)]
    struct Args {
        #[allow(dead_code)]
        to: String,
        #[allow(dead_code)]
        #[serde(default)]
        wait: Option<u64>,
    }

    #[test]
    fn a_wrong_type_names_the_parameter_and_the_schema_is_the_inner_one() {
        let e = serde_json::from_str::<Named<Args>>(r#"{"to": 1}"#).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("parameter `to`: invalid type: integer `1`"),
            "{e}"
        );
        let e = serde_json::from_str::<Named<Args>>(r#"{"to": "x", "wait": -5}"#).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("parameter `wait`: invalid value: integer `-5`"),
            "{e}"
        );
        let e = serde_json::from_str::<Named<Args>>(r#"{}"#).unwrap_err();
        assert!(e.to_string().contains("missing field `to`"), "{e}");
        assert_eq!(
            schemars::schema_for!(Named<Args>),
            schemars::schema_for!(Args)
        );
    }
}

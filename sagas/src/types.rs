//! Value types that make bad input unrepresentable. Each one is validated when it is built,
//! including when it is deserialized, so a command that holds one already satisfies its rule
//! and an HTTP body that breaks it is refused as `422 invalid_body` before any aggregate is
//! loaded. They serialize as plain JSON numbers and strings.
//!
//! The rules are part of the stored event format (`OrderPlaced` carries [`OrderLine`]s):
//! loosening one is always safe, tightening one needs an upcaster for the history it rejects.
//!
//! [`OrderLine`]: crate::order::OrderLine

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a value was refused; the message names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(&'static str);

/// Declares an `i64` newtype whose value is always in `MIN..=MAX`: checked by `new`, and by
/// deserialization (which refuses anything but a JSON integer). It serializes as that integer.
macro_rules! bounded_i64 {
    ($(#[$doc:meta])* $name:ident in $min:expr, $max:expr; $rule:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "i64", into = "i64")]
        pub struct $name(i64);

        impl $name {
            /// The smallest value allowed.
            pub const MIN: i64 = $min;
            /// The largest value allowed.
            pub const MAX: i64 = $max;

            /// The value, or why it breaks the rule.
            pub fn new(value: i64) -> Result<Self, InvalidValue> {
                if (Self::MIN..=Self::MAX).contains(&value) {
                    Ok($name(value))
                } else {
                    Err(InvalidValue($rule))
                }
            }

            /// The value.
            pub fn get(self) -> i64 {
                self.0
            }
        }

        impl TryFrom<i64> for $name {
            type Error = InvalidValue;

            fn try_from(value: i64) -> Result<Self, InvalidValue> {
                $name::new(value)
            }
        }

        impl From<$name> for i64 {
            fn from(value: $name) -> i64 {
                value.0
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::Type::Integer)
                    .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                        utoipa::openapi::KnownFormat::Int64,
                    )))
                    .minimum(Some(Self::MIN))
                    .maximum(Some(Self::MAX))
                    .description(Some($rule))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

bounded_i64! {
    /// A number of units of one SKU: always in `1..=1_000_000`.
    Quantity in 1, 1_000_000;
    "quantity must be a positive integer of at most 1000000"
}

bounded_i64! {
    /// An amount of money to move, in integer cents: always in `1..=1_000_000_000_000`.
    AmountCents in 1, 1_000_000_000_000;
    "amount_cents must be a positive integer number of cents of at most 1000000000000"
}

bounded_i64! {
    /// A unit price in integer cents: never negative (free items are allowed), at most
    /// [`AmountCents::MAX`].
    PriceCents in 0, AmountCents::MAX;
    "unit_price_cents must be a non-negative integer number of cents of at most 1000000000000"
}

/// A stock keeping unit: 1 to 64 characters of `A-Z a-z 0-9 _ . -`, so it is safe in a URL
/// path segment and in a stream id. Case-sensitive: `ABC` and `abc` are two SKUs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sku(String);

impl Sku {
    /// The longest SKU, in bytes (every allowed character is one byte).
    pub const MAX_LEN: usize = 64;

    /// The SKU, or why it breaks the rule.
    pub fn new(sku: impl Into<String>) -> Result<Self, InvalidValue> {
        let sku = sku.into();
        Self::check(&sku)?;
        Ok(Sku(sku))
    }

    /// Checks the rule without building a `Sku` (used to validate ids taken from URLs).
    pub fn check(sku: &str) -> Result<(), InvalidValue> {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
        if !sku.is_empty() && sku.len() <= Self::MAX_LEN && sku.bytes().all(allowed) {
            Ok(())
        } else {
            Err(InvalidValue(
                "sku must be 1 to 64 characters of A-Z, a-z, 0-9, '_', '.' and '-'",
            ))
        }
    }

    /// The SKU as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Sku {
    type Error = InvalidValue;

    fn try_from(sku: String) -> Result<Self, InvalidValue> {
        Sku::new(sku)
    }
}

impl From<Sku> for String {
    fn from(s: Sku) -> String {
        s.0
    }
}

impl utoipa::PartialSchema for Sku {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::RefOr::T(sku_schema())
    }
}

impl utoipa::ToSchema for Sku {}

/// The schema of a SKU: what [`Sku::check`] accepts.
pub(crate) fn sku_schema() -> utoipa::openapi::Schema {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .pattern(Some("^[A-Za-z0-9_.-]{1,64}$"))
        .description(Some(
            "A stock keeping unit: 1 to 64 characters of A-Z, a-z, 0-9, '_', '.' and '-'",
        ))
        .examples([serde_json::json!("SKU-1")])
        .into()
}

/// The schema of a UUID in the one form stream ids use (see [`check_canonical_uuid`]).
pub(crate) fn canonical_uuid_schema(what: &str) -> utoipa::openapi::Schema {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
            utoipa::openapi::KnownFormat::Uuid,
        )))
        .pattern(Some(
            "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        ))
        .description(Some(format!("{what}: a UUID in lowercase hyphenated form")))
        .examples([serde_json::json!("0193a0c4-0000-7000-8000-000000000001")])
        .into()
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks that `id` is a UUID written the one way it is written in stream ids (lowercase,
/// hyphenated), so one entity never ends up with two streams.
pub(crate) fn check_canonical_uuid(id: &str, what: &str) -> Result<(), String> {
    match uuid::Uuid::try_parse(id) {
        Ok(u) if u.hyphenated().to_string() == id => Ok(()),
        _ => Err(format!(
            "{what} must be a UUID in lowercase hyphenated form, got {id:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantity_accepts_only_positive_integers_up_to_the_max() {
        assert_eq!(
            serde_json::from_value::<Quantity>(json!(1)).unwrap().get(),
            1
        );
        assert_eq!(
            serde_json::from_value::<Quantity>(json!(1_000_000))
                .unwrap()
                .get(),
            1_000_000
        );
        for bad in [
            json!(0),
            json!(-1),
            json!(1_000_001),
            json!("5"),
            json!(1.5),
            json!(null),
            json!(u64::MAX),
        ] {
            assert!(
                serde_json::from_value::<Quantity>(bad.clone()).is_err(),
                "{bad} was accepted"
            );
        }
        let message = serde_json::from_value::<Quantity>(json!(0))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("quantity must be a positive integer"),
            "{message}"
        );
        assert_eq!(
            serde_json::to_value(Quantity::new(7).unwrap()).unwrap(),
            json!(7)
        );
    }

    #[test]
    fn amount_is_positive_and_bounded() {
        assert!(AmountCents::new(1).is_ok());
        assert!(AmountCents::new(AmountCents::MAX).is_ok());
        assert!(AmountCents::new(0).is_err());
        assert!(AmountCents::new(-5).is_err());
        assert!(AmountCents::new(AmountCents::MAX + 1).is_err());
        assert!(serde_json::from_value::<AmountCents>(json!("100")).is_err());
        assert_eq!(
            serde_json::to_value(AmountCents::new(250).unwrap()).unwrap(),
            json!(250)
        );
    }

    #[test]
    fn price_may_be_zero_but_never_negative() {
        assert_eq!(PriceCents::new(0).unwrap().get(), 0);
        assert!(PriceCents::new(-1).is_err());
        assert!(PriceCents::new(AmountCents::MAX + 1).is_err());
        assert!(serde_json::from_value::<PriceCents>(json!(-1)).is_err());
    }

    #[test]
    fn sku_is_short_and_url_safe() {
        for good in ["A", "sku-1", "SKU_2.b", &"x".repeat(64)] {
            assert_eq!(Sku::new(good).unwrap().as_str(), good);
        }
        for bad in ["", "has space", "slash/", "ümlaut", "a\n", &"x".repeat(65)] {
            assert!(Sku::new(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(serde_json::from_value::<Sku>(json!("")).is_err());
        assert!(serde_json::from_value::<Sku>(json!(5)).is_err());
        assert_eq!(
            serde_json::to_value(Sku::new("abc").unwrap()).unwrap(),
            json!("abc")
        );
    }

    #[test]
    fn only_canonical_uuids_name_a_stream() {
        let id = uuid::Uuid::now_v7();
        assert!(check_canonical_uuid(&id.to_string(), "id").is_ok());
        assert!(check_canonical_uuid(&id.to_string().to_uppercase(), "id").is_err());
        assert!(check_canonical_uuid(&id.simple().to_string(), "id").is_err());
        assert!(check_canonical_uuid(&id.braced().to_string(), "id").is_err());
        assert!(check_canonical_uuid("not-a-uuid", "id").is_err());
    }
}

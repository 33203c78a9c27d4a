//! Money: exact decimal amounts and ISO 4217 currencies. No floating point anywhere money
//! is stored or summed; amounts travel as decimal strings.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::text::InvalidText;

/// Largest amount accepted: the read models store money as NUMERIC(20,10).
const MAX_INTEGER_DIGITS: u32 = 10;
/// Most digits after the decimal point.
const MAX_SCALE: u32 = 10;

/// A non-negative amount of money (a price per million tokens, a budget), exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Amount(#[serde(with = "rust_decimal::serde::str")] Decimal);

impl Amount {
    /// A decimal number written as text (`"2.50"`), at least 0, below 10^10, with at most ten
    /// digits after the point.
    pub fn parse(field: &'static str, text: &str) -> Result<Self, InvalidText> {
        let invalid = |reason: &str| InvalidText::new(field, reason.to_string());
        let text = text.trim();
        if text.is_empty() || !text.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return Err(invalid(
                "must be a non-negative decimal number written as a string, e.g. \"2.50\"",
            ));
        }
        let value: Decimal = text
            .parse()
            .map_err(|_| invalid("must be a decimal number such as \"2.50\""))?;
        if value.scale() > MAX_SCALE {
            return Err(invalid("must have at most 10 digits after the decimal point"));
        }
        if value >= Decimal::from(10u64.pow(MAX_INTEGER_DIGITS)) {
            return Err(invalid("must be less than 10000000000"));
        }
        Ok(Self(value.normalize()))
    }

    pub fn value(self) -> Decimal {
        self.0
    }
}

impl std::fmt::Display for Amount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// An ISO 4217 currency code, e.g. `USD`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Currency(String);

impl Currency {
    pub fn parse(field: &'static str, text: &str) -> Result<Self, InvalidText> {
        if ISO_4217.binary_search(&text).is_ok() {
            Ok(Self(text.to_string()))
        } else {
            Err(InvalidText::new(
                field,
                "must be an ISO 4217 currency code in capitals, e.g. USD or EUR",
            ))
        }
    }
}

impl AsRef<str> for Currency {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The active ISO 4217 currency codes (list one of the standard), sorted.
const ISO_4217: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BGN", "BHD",
    "BIF", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF", "CHE", "CHF",
    "CHW", "CLF", "CLP", "CNY", "COP", "COU", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD", "EGP",
    "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL",
    "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF",
    "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD",
    "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK",
    "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF",
    "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL",
    "THB", "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "USN", "UYI", "UYU",
    "UYW", "UZS", "VED", "VES", "VND", "VUV", "WST", "XAF", "XAG", "XAU", "XCD", "XCG", "XDR", "XOF", "XPD",
    "XPF", "XPT", "XSU", "XUA", "YER", "ZAR", "ZMW", "ZWG", "ZWL",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_exact_non_negative_decimals_written_as_text() {
        assert_eq!(Amount::parse("p", "2.50").unwrap().to_string(), "2.5");
        assert_eq!(Amount::parse("p", "0.0000001").unwrap().to_string(), "0.0000001");
        assert_eq!(Amount::parse("p", "0").unwrap().to_string(), "0");
        for bad in [
            "",
            "-1",
            "1e3",
            "abc",
            "1.2.3",
            "0.00000000001",
            "10000000000",
            " ",
        ] {
            assert!(Amount::parse("p", bad).is_err(), "{bad:?}");
        }
        let sum = Amount::parse("p", "0.1").unwrap().value() + Amount::parse("p", "0.2").unwrap().value();
        assert_eq!(sum.to_string(), "0.3", "no floating point in between");
    }

    #[test]
    fn currencies_are_iso_4217_codes() {
        assert!(
            ISO_4217.windows(2).all(|w| w[0] < w[1]),
            "sorted, for the binary search"
        );
        assert!(Currency::parse("c", "USD").is_ok());
        assert!(Currency::parse("c", "EUR").is_ok());
        for bad in ["usd", "US", "USDX", "ABC", ""] {
            assert!(Currency::parse("c", bad).is_err(), "{bad:?}");
        }
    }
}

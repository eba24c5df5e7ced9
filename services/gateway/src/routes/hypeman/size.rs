//! Human-readable sizes as hypeman writes them: `"1GB"`, `"512MB"`, `"2G"`.
//!
//! hypeman parses sizes with binary multiples (`1KB` = 1024 bytes, `1GB` =
//! 1024³ bytes), whatever the spelling: the crates that parse such strings in
//! Rust read `GB` as 10⁹ bytes, so this small parser keeps hypeman's meaning.
//! Accepted: a whole number, optional spaces, and a unit, case-insensitive:
//! none, `b`, `byte(s)`; `k`, `kb`, `kib`, `kilo`, `kilobyte(s)`; the same
//! for `m`/`mega`, `g`/`giga`, `t`/`tera`. `Kb`, `Mb`, `Gb`, `Tb` (a capital
//! prefix with a small `b`) are bits and refused, as hypeman refuses them.
//! Sizes are written back with the largest unit that divides them exactly,
//! so what is written parses back to the same number (`1536MB`, not `1.5GB`).

/// Binary multiples, largest first, with the unit written for each.
const UNITS: [(u64, &str); 5] = [(1 << 40, "TB"), (1 << 30, "GB"), (1 << 20, "MB"), (1 << 10, "KB"), (1, "B")];

/// What [`parse`] accepts as syntax, as a JSON Schema pattern (a test
/// checks they agree): only the number's size is beyond it (an overflow).
/// Spaces only around the parts; a capital prefix with a small `b` (bits)
/// is refused.
pub const PATTERN: &str = concat!(
    "^ *[0-9]+ *(",
    "[bB]([yY][tT][eE][sS]?)?",
    "|[kK]|k[bB]|KB|[kK][iI][bB]|[kK][iI][lL][oO]([bB][yY][tT][eE][sS]?)?",
    "|[mM]|m[bB]|MB|[mM][iI][bB]|[mM][eE][gG][aA]([bB][yY][tT][eE][sS]?)?",
    "|[gG]|g[bB]|GB|[gG][iI][bB]|[gG][iI][gG][aA]([bB][yY][tT][eE][sS]?)?",
    "|[tT]|t[bB]|TB|[tT][iI][bB]|[tT][eE][rR][aA]([bB][yY][tT][eE][sS]?)?",
    ")? *$"
);

/// The OpenAPI schema of a size in a request (see [`PATTERN`]).
pub struct SizeText;

impl utoipa::PartialSchema for SizeText {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(PATTERN))
            .max_length(Some(64))
            .description(Some("A whole number and an optional unit of binary multiples, case-insensitive: B, K/KB/KiB/kilo(bytes), M..., G..., T... (`1GB` is 1024³ bytes); `Kb`, `Mb`, `Gb`, `Tb` are bits and refused."))
            .examples([serde_json::json!("1GB")])
            .into()
    }
}

impl utoipa::ToSchema for SizeText {}

/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;

/// Why a size does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("`{0}` is not a size: a whole number and a unit such as 512MB, 1GB or 2G")]
    Syntax(String),
    #[error("`{0}` is in bits; sizes are in bytes (B, KB, MB, GB, TB)")]
    Bits(String),
    #[error("`{0}` is too large")]
    Overflow(String),
}

/// The number of bytes `text` says.
pub fn parse(text: &str) -> Result<u64, SizeError> {
    let t = text.trim_matches(' ');
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(SizeError::Syntax(text.to_owned()));
    }
    let unit = t[digits..].trim_matches(' ');
    if ["Kb", "Mb", "Gb", "Tb"].contains(&unit) {
        return Err(SizeError::Bits(text.to_owned()));
    }
    let multiple: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" | "byte" | "bytes" => 1,
        "k" | "kb" | "kib" | "kilo" | "kilobyte" | "kilobytes" => 1 << 10,
        "m" | "mb" | "mib" | "mega" | "megabyte" | "megabytes" => 1 << 20,
        "g" | "gb" | "gib" | "giga" | "gigabyte" | "gigabytes" => 1 << 30,
        "t" | "tb" | "tib" | "tera" | "terabyte" | "terabytes" => 1 << 40,
        _ => return Err(SizeError::Syntax(text.to_owned())),
    };
    // The syntax first: a number too large with a unit that is no unit is not a size.
    let value: u64 = t[..digits].parse().map_err(|_| SizeError::Overflow(text.to_owned()))?;
    value.checked_mul(multiple).ok_or_else(|| SizeError::Overflow(text.to_owned()))
}

/// `bytes` in the largest unit that divides it exactly: `1GB`, `512MB`, `0B`.
pub fn format(bytes: u64) -> String {
    let (multiple, unit) = UNITS.into_iter().find(|(m, _)| bytes.is_multiple_of(*m) && bytes >= *m).unwrap_or((1, "B"));
    format!("{}{unit}", bytes / multiple)
}

/// `bytes` in whole units of `unit` bytes, rounded up.
pub fn ceil_div(bytes: u64, unit: u64) -> u64 {
    bytes.div_ceil(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypeman_spellings_are_binary_multiples() {
        for (text, bytes) in [
            ("1GB", GIB),
            ("512MB", 512 * MIB),
            ("2G", 2 * GIB),
            ("3gb", 3 * GIB),
            ("10 GB", 10 * GIB),
            ("1GiB", GIB),
            ("64k", 64 << 10),
            ("1T", 1 << 40),
            ("4096", 4096),
            ("7 bytes", 7),
            ("2 gigabytes", 2 * GIB),
        ] {
            assert_eq!(parse(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn what_is_not_a_size_is_refused() {
        for bad in ["", "GB", "1.5GB", "-1GB", "1 PB", "1GBs", "one", "1 G B"] {
            assert!(matches!(parse(bad), Err(SizeError::Syntax(_))), "{bad}");
        }
        for bits in ["1Gb", "8Mb"] {
            assert!(matches!(parse(bits), Err(SizeError::Bits(_))), "{bits}");
        }
        assert!(matches!(parse("99999999999999999999"), Err(SizeError::Overflow(_))));
        assert!(matches!(parse("20000000TB"), Err(SizeError::Overflow(_))));
    }

    /// The document's pattern and the parser agree: every string the
    /// pattern matches parses (or is only too large), and every other is
    /// refused, over every combination of the parts below.
    #[test]
    fn the_pattern_is_the_parser() {
        let pattern = jsonschema::validator_for(&serde_json::json!({"pattern": PATTERN})).unwrap();
        let units = [
            "",
            "b",
            "B",
            "byte",
            "Bytes",
            "BYTES",
            "k",
            "K",
            "kb",
            "kB",
            "KB",
            "Kb",
            "kib",
            "KiB",
            "kilo",
            "Kilobyte",
            "kilobytes",
            "m",
            "mb",
            "Mb",
            "MB",
            "mib",
            "mega",
            "megabytes",
            "g",
            "G",
            "gb",
            "Gb",
            "GB",
            "gib",
            "GiB",
            "giga",
            "Gigabyte",
            "t",
            "tb",
            "Tb",
            "TB",
            "tib",
            "tera",
            "terabytes",
            "p",
            "pb",
            "bit",
            "gbs",
            "GBs",
            "byt",
            "kilob",
            "g b",
            "1",
            ".5",
            "\t",
            "é",
        ];
        let mut checked = 0;
        for lead in ["", " ", "  ", "\t", "-", "+"] {
            for number in ["", "0", "12", "007", "99999999999999999999", "1.5", "1_0"] {
                for gap in ["", " ", "\t"] {
                    for unit in units {
                        for trail in ["", " ", "\n", "x"] {
                            let text = format!("{lead}{number}{gap}{unit}{trail}");
                            let parsed = !matches!(parse(&text), Err(SizeError::Syntax(_) | SizeError::Bits(_)));
                            assert_eq!(pattern.is_valid(&serde_json::json!(text)), parsed, "{text:?}: {:?}", parse(&text));
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert!(checked > 1000);
    }

    #[test]
    fn sizes_are_written_exactly_and_parse_back() {
        for (bytes, text) in [(GIB, "1GB"), (512 * MIB, "512MB"), (1536 * MIB, "1536MB"), (10 * GIB, "10GB"), (0, "0B"), (1 << 40, "1TB"), (1000, "1000B")] {
            assert_eq!(format(bytes), text);
            assert_eq!(parse(text), Ok(bytes), "{text} parses back");
        }
    }

    #[test]
    fn rounding_up() {
        assert_eq!(ceil_div(512 * MIB, GIB), 1);
        assert_eq!(ceil_div(GIB, GIB), 1);
        assert_eq!(ceil_div(GIB + 1, GIB), 2);
        assert_eq!(ceil_div(1, MIB), 1);
    }
}

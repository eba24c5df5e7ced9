//! Typed identifiers: a type prefix and a ULID (`vm_01jd…`).
//!
//! The prefix makes an id self-describing in logs, URLs and NATS subjects, and
//! the ULID sorts by creation time, which list views rely on for stable order.
//! Ids are valid NATS subject tokens (no `.`, `*`, `>` or whitespace).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use ulid::Ulid;

/// Why a string is not an id of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("expected an id starting with `{expected}_`")]
    WrongPrefix { expected: &'static str },
    #[error("`{0}` is not a valid ULID")]
    BadUlid(String),
}

/// The ULID part of an id: 26 characters of Crockford's base 32 (either
/// case; no I, L, O or U), the first at most `7` (a ULID is 128 bits). The
/// pattern each id's OpenAPI schema states, and exactly what [`parse_ulid`]
/// accepts (a test checks the two agree).
macro_rules! ulid_pattern {
    () => {
        "[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}"
    };
}

/// The ULID of an id's text after its prefix, when it matches [`ulid_pattern`].
fn parse_ulid(text: &str) -> Option<Ulid> {
    let b = text.as_bytes();
    let crockford = |c: &u8| c.is_ascii_digit() || (c.is_ascii_alphabetic() && !matches!(c.to_ascii_lowercase(), b'i' | b'l' | b'o' | b'u'));
    if b.len() != ulid::ULID_LEN || !(b'0'..=b'7').contains(&b[0]) || !b.iter().all(crockford) {
        return None;
    }
    Ulid::from_string(text).ok()
}

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Ulid);

        impl $name {
            /// The type prefix, without the underscore.
            pub const PREFIX: &'static str = $prefix;

            /// A fresh id; ULIDs made in the same millisecond still differ.
            pub fn new() -> Self {
                Self(Ulid::new())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Encoded on the stack: ids are formatted for every key and view.
                let mut buf = [0u8; ulid::ULID_LEN];
                let ulid = self.0.array_to_str(&mut buf);
                ulid.make_ascii_lowercase();
                write!(f, "{}_{ulid}", $prefix)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                let rest = s
                    .strip_prefix($prefix)
                    .and_then(|r| r.strip_prefix('_'))
                    .ok_or(IdError::WrongPrefix { expected: $prefix })?;
                parse_ulid(rest).map(Self).ok_or_else(|| IdError::BadUlid(rest.to_owned()))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some(concat!("^", $prefix, "_", ulid_pattern!(), "$")))
                    .examples([serde_json::json!(concat!($prefix, "_01jdx3v9k6m2w8q4r5t7y9z0ab"))])
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

typed_id!(
    /// A virtual machine.
    VmId, "vm");
typed_id!(
    /// One accepted command and everything it caused; clients poll it.
    OpId, "op");
typed_id!(
    /// A tenant: the unit of isolation between customers.
    OrgId, "org");
typed_id!(
    /// A grouping of resources inside an org.
    ProjectId, "prj");
typed_id!(
    /// An API key; the secret itself is never stored.
    ApiKeyId, "key");
typed_id!(
    /// A hypervisor host running one worker.
    HostId, "host");
typed_id!(
    /// A block volume that can outlive the VMs it is attached to.
    VolumeId, "vol");
typed_id!(
    /// A memory, device and disk snapshot of a VM, which new VMs resume from.
    SnapshotId, "snap");
typed_id!(
    /// A bootable image.
    ImageId, "img");
typed_id!(
    /// A template: default values for creating VMs.
    TemplateId, "tpl");
typed_id!(
    /// One event in the event stream.
    EventId, "evt");
typed_id!(
    /// An SSH public key stored in an org, named by id at create (`ssh_key_ids`).
    SshKeyId, "sshkey");
typed_id!(
    /// A webhook endpoint of an org: where its events are delivered.
    WebhookId, "wh");
typed_id!(
    /// One event's delivery to one webhook endpoint: the event's ulid, so a
    /// delivery keeps its id however often it is attempted.
    DeliveryId, "dlv");

impl DeliveryId {
    /// The delivery of `event` (to whichever endpoint names it).
    pub fn of(event: EventId) -> DeliveryId {
        DeliveryId(event.0)
    }
}

impl OrgId {
    /// The `default` org, which always exists; the admin token acts in it when no org is given.
    pub const DEFAULT: OrgId = OrgId(Ulid::nil());
}

impl ImageId {
    /// The id of an image named by its slug: stable on every host, so the same
    /// image announced by several hosts is one image.
    pub fn for_slug(slug: &str) -> ImageId {
        // FNV-1a, twice with different offsets, for 128 bits.
        let fnv = |offset: u64| slug.bytes().fold(offset, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        let (hi, lo) = (fnv(0xcbf2_9ce4_8422_2325), fnv(0x6c62_272e_07bb_0142));
        ImageId(Ulid::from((u128::from(hi) << 64) | u128::from(lo)))
    }
}

impl ProjectId {
    /// The `default` project of every org, which always exists.
    pub const DEFAULT: ProjectId = ProjectId(Ulid::nil());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_display_parse() {
        let id = VmId::new();
        let s = id.to_string();
        assert!(s.starts_with("vm_"));
        assert_eq!(s.len(), 3 + 26);
        assert_eq!(s.parse::<VmId>().unwrap(), id);
        assert_eq!(s.to_ascii_uppercase().replacen("VM_", "vm_", 1).parse::<VmId>().unwrap(), id);
    }

    /// The schema's pattern and the parser accept the same texts.
    #[test]
    fn the_pattern_is_what_parses() {
        use utoipa::PartialSchema;
        let id = VmId::new().to_string();
        let mut cases: Vec<String> =
            vec![id.clone(), id.to_ascii_uppercase().replacen("VM_", "vm_", 1), format!("vm_{}", "7".repeat(26)), format!("vm_8{}", "0".repeat(25))];
        for c in ['i', 'l', 'o', 'u', 'I', 'L', 'O', 'U', 'z', 'Z', '-', '_', ' ', 'é', '0'] {
            cases.push(format!("{}{c}", &id[..id.len() - 1]));
        }
        cases.extend([format!("{id}0"), id[..id.len() - 1].to_owned(), "vm_".into(), format!("op{}", &id[2..]), format!(" {id}"), format!("{id}\n")]);
        for case in &cases {
            assert_eq!(crate::schema_check::accepts(VmId::schema(), case), case.parse::<VmId>().is_ok(), "{case:?}");
        }
        assert!(cases.iter().filter(|c| c.parse::<VmId>().is_ok()).count() >= 4, "some cases parse");
    }

    #[test]
    fn rejects_wrong_prefix_and_garbage() {
        let op = OpId::new().to_string();
        assert_eq!(op.parse::<VmId>(), Err(IdError::WrongPrefix { expected: "vm" }));
        assert!(matches!("vm_nope".parse::<VmId>(), Err(IdError::BadUlid(_))));
        assert!("vm".parse::<VmId>().is_err());
        assert!("vmx01jdx3v9k6m2w8q4r5t7y9z0ab".parse::<VmId>().is_err());
        assert!("".parse::<VmId>().is_err());
    }

    #[test]
    fn serde_as_string() {
        let id = HostId::new();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<HostId>(&json).unwrap(), id);
        let packed = rmp_serde::to_vec(&id).unwrap();
        assert_eq!(rmp_serde::from_slice::<HostId>(&packed).unwrap(), id);
    }

    #[test]
    fn image_ids_are_stable_per_slug() {
        assert_eq!(ImageId::for_slug("debian-minimal"), ImageId::for_slug("debian-minimal"));
        assert_ne!(ImageId::for_slug("debian-minimal"), ImageId::for_slug("debian-minimal2"));
        let s = ImageId::for_slug("x").to_string();
        assert_eq!(s.parse::<ImageId>().unwrap(), ImageId::for_slug("x"));
    }

    #[test]
    fn defaults_are_stable() {
        assert_eq!(OrgId::DEFAULT.to_string(), "org_00000000000000000000000000");
        assert_eq!(ProjectId::DEFAULT.to_string(), "prj_00000000000000000000000000");
    }
}

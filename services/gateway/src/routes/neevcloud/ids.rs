//! Ids as NeevCloud spells them: UUIDs (`format: uuid`). A vmplane id is a
//! type prefix and a 128-bit ULID; its 128 bits are the UUID, and the prefix
//! is implied by where the id stands (a VM id in `/vms/{vm_id}`, a disk id in
//! `/root_disks/{root_disk_id}` or `disk_id`). Orgs and projects, plain
//! strings in the seed, are accepted as UUIDs or as vmplane's own ids.

use ulid::Ulid;
use vmplane_domain::{OrgId, ProjectId};

/// The UUID text of a ULID: 8-4-4-4-12 lowercase hex digits.
pub fn uuid(id: Ulid) -> String {
    let h = format!("{:032x}", id.0);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// A UUID in its hyphenated text form (either case) as a ULID.
pub fn parse_uuid(s: &str) -> Option<Ulid> {
    let b = s.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u128::from_str_radix(&hex, 16).ok().map(Ulid)
}

/// An org named in the path: a UUID or an `org_` id.
pub fn parse_org(s: &str) -> Option<OrgId> {
    parse_uuid(s).map(OrgId).or_else(|| s.parse().ok())
}

/// A project named in the path: a UUID or a `prj_` id.
pub fn parse_project(s: &str) -> Option<ProjectId> {
    parse_uuid(s).map(ProjectId).or_else(|| s.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_round_trip_and_keep_every_bit() {
        for id in [Ulid::nil(), Ulid::new(), Ulid(u128::MAX)] {
            let text = uuid(id);
            assert_eq!(text.len(), 36);
            assert_eq!(parse_uuid(&text), Some(id));
            assert_eq!(parse_uuid(&text.to_ascii_uppercase()), Some(id));
        }
        assert_eq!(uuid(Ulid::nil()), "00000000-0000-0000-0000-000000000000");
        assert_eq!(uuid(Ulid(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef)), "01234567-89ab-cdef-0123-456789abcdef");
    }

    #[test]
    fn only_hyphenated_uuids_are_uuids() {
        for bad in [
            "",
            "vm_01jdx3v9k6m2w8q4r5t7y9z0ab",
            "0123456789abcdef0123456789abcdef",
            "01234567-89ab-cdef-0123-456789abcdeg",
            "01234567-89abc-def-0123-456789abcdef",
            "+1234567-89ab-cdef-0123-456789abcdef",
        ] {
            assert_eq!(parse_uuid(bad), None, "{bad}");
        }
    }

    #[test]
    fn orgs_and_projects_take_either_spelling() {
        let org = OrgId::new();
        assert_eq!(parse_org(&uuid(org.0)), Some(org));
        assert_eq!(parse_org(&org.to_string()), Some(org));
        assert_eq!(parse_org("acme"), None);
        let prj = ProjectId::new();
        assert_eq!(parse_project(&uuid(prj.0)), Some(prj));
        assert_eq!(parse_project(&prj.to_string()), Some(prj));
        assert_eq!(parse_project(&org.to_string()), None, "an org id is not a project id");
    }
}

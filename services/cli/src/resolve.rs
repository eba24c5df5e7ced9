//! Names wherever an id is accepted: an argument that is an id (`vm_…`) is
//! used as it is; anything else is looked up by name in the list the API
//! gives the caller (VMs and volumes with the list's `name` filter, one
//! request). No match is "not found"; several are an error that names them
//! (use an id then).

use crate::client::{Api, str_at};
use crate::error::{Error, Result};
use serde_json::Value;

/// The org the admin acts in when it names none (`OrgId::DEFAULT`).
pub const DEFAULT_ORG: &str = "org_00000000000000000000000000";

/// Whether `s` is an id of this type: `<prefix>_` and a 26-character ULID.
pub fn looks_like_id(prefix: &str, s: &str) -> bool {
    s.strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('_'))
        .is_some_and(|ulid| ulid.len() == 26 && ulid.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b.is_ascii_uppercase()))
}

/// The one id among `items` whose value at `name_at` is `name`.
pub fn pick(kind: &'static str, name: &str, items: &[Value], name_at: &str) -> Result<String> {
    let ids: Vec<String> = items
        .iter()
        .filter(|i| i.pointer(name_at).and_then(Value::as_str) == Some(name))
        .map(|i| str_at(i, "/id").map(str::to_owned))
        .collect::<Result<_>>()?;
    match ids.len() {
        0 => Err(Error::NameNotFound { kind, name: name.to_owned() }),
        1 => Ok(ids.into_iter().next().unwrap_or_default()),
        _ => Err(Error::Ambiguous { kind, name: name.to_owned(), ids }),
    }
}

/// A VM's id from its id or name (VMs that are not deleted).
pub async fn vm(api: &Api, input: &str) -> Result<String> {
    if looks_like_id("vm", input) {
        return Ok(input.to_owned());
    }
    pick("vm", input, &named(api, "vm", "/v1/vms", input).await?, "/name")
}

/// The items of the list at `path` named `name`: the API's name filter
/// refuses what cannot be a name (400 `invalid_query`), which no item has.
async fn named(api: &Api, kind: &'static str, path: &str, name: &str) -> Result<Vec<Value>> {
    match api.list_all(path, &[("name", name)]).await {
        Err(Error::Api { status: 400, code, .. }) if code == "invalid_query" => Err(Error::NameNotFound { kind, name: name.to_owned() }),
        listed => listed,
    }
}

/// A volume's id from its id or name.
pub async fn volume(api: &Api, input: &str) -> Result<String> {
    if looks_like_id("vol", input) {
        return Ok(input.to_owned());
    }
    pick("volume", input, &named(api, "volume", "/v1/volumes", input).await?, "/name")
}

/// A snapshot's id from its id or name (the list has no name filter: one
/// request per page of the caller's snapshots).
pub async fn snapshot(api: &Api, input: &str) -> Result<String> {
    if looks_like_id("snap", input) {
        return Ok(input.to_owned());
    }
    pick("snapshot", input, &api.list_all("/v1/snapshots", &[]).await?, "/name")
}

/// A host's id from its id or name.
pub async fn host(api: &Api, input: &str) -> Result<String> {
    if looks_like_id("host", input) {
        return Ok(input.to_owned());
    }
    pick("host", input, &api.list("/v1/hosts").await?, "/name")
}

/// An API key's id from its id or name.
pub async fn api_key(api: &Api, input: &str) -> Result<String> {
    if looks_like_id("key", input) {
        return Ok(input.to_owned());
    }
    pick("API key", input, &api.list("/v1/api-keys").await?, "/name")
}

/// An org's id from its id or name (names need the admin token).
pub async fn org(api: &Api, input: &str) -> Result<String> {
    if looks_like_id("org", input) {
        return Ok(input.to_owned());
    }
    pick("org", input, &api.list("/v1/orgs").await?, "/name")
}

/// A project's id in `org` from its id or name.
pub async fn project(api: &Api, org: &str, input: &str) -> Result<String> {
    if looks_like_id("prj", input) {
        return Ok(input.to_owned());
    }
    pick("project", input, &api.list(&format!("/v1/orgs/{org}/projects")).await?, "/name")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_are_recognised() {
        assert!(looks_like_id("vm", "vm_01jdx3v9k6m2w8q4r5t7y9z0ab"));
        assert!(looks_like_id("org", DEFAULT_ORG));
        assert!(!looks_like_id("vm", "vol_01jdx3v9k6m2w8q4r5t7y9z0ab"));
        assert!(!looks_like_id("vm", "vm_web"));
        assert!(!looks_like_id("vm", "web"));
        assert!(!looks_like_id("vm", "vm_01jdx3v9k6m2w8q4r5t7y9z0a/"));
    }

    #[test]
    fn names_resolve_to_one_id_or_fail() {
        let items = vec![json!({"id": "vm_a", "name": "web"}), json!({"id": "vm_b", "name": "db"}), json!({"id": "vm_c", "name": "db"})];
        assert_eq!(pick("vm", "web", &items, "/name").unwrap(), "vm_a");
        assert!(matches!(pick("vm", "nope", &items, "/name"), Err(Error::NameNotFound { .. })));
        match pick("vm", "db", &items, "/name") {
            Err(Error::Ambiguous { ids, .. }) => assert_eq!(ids, ["vm_b", "vm_c"]),
            other => panic!("{other:?}"),
        }
        // A match without an id is a bad answer, not a panic.
        assert!(matches!(pick("vm", "x", &[json!({"name": "x"})], "/name"), Err(Error::BadResponse(_))));
    }
}

//! The published schemas: the OpenAPI document of the `/v1` API and the JSON
//! schema of the event envelope with every event type. Both are committed
//! under `schemas/`; a test fails when the code and the files disagree
//! (`VMPLANE_UPDATE_SCHEMAS=1 cargo test -p vmplane-gateway schemas` rewrites them).

use utoipa::OpenApi;
use vmplane_domain::event::Envelope;

/// The OpenAPI document, as served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    crate::routes::native::openapi()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "vmplane events",
        description = "Every message in the VMPLANE_EVENTS stream is a MessagePack (rmp-serde, named fields) encoding of Envelope. Subjects: see schemas/subjects.md."
    ),
    components(schemas(Envelope))
)]
struct EventSchemas;

/// The event schemas: `Envelope` and everything it contains.
pub fn events() -> utoipa::openapi::OpenApi {
    EventSchemas::openapi()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn check(name: &str, doc: &utoipa::openapi::OpenApi) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas").join(name);
        let fresh = doc.to_pretty_json().expect("schema serialises") + "\n";
        if std::env::var_os("VMPLANE_UPDATE_SCHEMAS").is_some() {
            std::fs::write(&path, &fresh).expect("writing schema");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(committed == fresh, "{} is out of date: run VMPLANE_UPDATE_SCHEMAS=1 cargo test -p vmplane-gateway schemas", path.display());
    }

    #[test]
    fn committed_openapi_matches_the_router() {
        check("openapi.json", &openapi());
    }

    /// Bounds the document states with a literal (utoipa takes no constant
    /// there) are the ones the handlers check.
    #[test]
    fn literal_bounds_are_the_checked_ones() {
        let doc = serde_json::to_value(openapi()).unwrap();
        let param =
            |path: &str, name: &str| doc["paths"][path]["get"]["parameters"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()["schema"].clone();
        assert_eq!(param("/v1/operations/{id}", "wait")["maximum"].as_u64(), Some(crate::app::operations::MAX_WAIT.as_secs()));
        assert_eq!(param("/v1/vms/{id}/logs", "tail")["maximum"].as_u64(), Some(crate::app::logs::MAX_TAIL as u64));
        use vmplane_domain::spec::{MAX_DISK_GB, MAX_MEMORY_MIB, MAX_VCPUS};
        let field = |schema: &str, name: &str| {
            let f = &doc["components"]["schemas"][schema]["properties"][name];
            (f["minimum"].as_u64(), f["maximum"].as_u64())
        };
        for schema in ["CreateVmRequest", "TemplateSpec"] {
            assert_eq!(field(schema, "vcpus"), (Some(1), Some(u64::from(MAX_VCPUS))), "{schema}");
            assert_eq!(field(schema, "memory_mib"), (Some(64), Some(MAX_MEMORY_MIB)), "{schema}");
            assert_eq!(field(schema, "hotplug_memory_mib"), (Some(0), Some(MAX_MEMORY_MIB)), "{schema}");
            assert_eq!(field(schema, "disk_gb"), (Some(1), Some(u64::from(MAX_DISK_GB))), "{schema}");
        }
        assert_eq!(field("CreateVolumeRequest", "size_gb"), (Some(1), Some(u64::from(MAX_DISK_GB))));
        // And the domain refuses just outside them.
        let mut spec = vmplane_domain::spec::VmSpec::named("x");
        spec.vcpus = MAX_VCPUS + 1;
        assert!(spec.validate().is_err());
        spec.vcpus = MAX_VCPUS;
        spec.memory_mib = 63;
        assert!(spec.validate().is_err());
    }

    /// A create's answer links to the operations on what it made, in
    /// OpenAPI's spelling (`operationId`), each naming an operation that
    /// exists and taking the parameter that operation's path has.
    #[test]
    fn creates_link_to_what_can_be_done_with_their_id() {
        let doc = serde_json::to_value(openapi()).unwrap();
        let links = doc["paths"]["/v1/vms"]["post"]["responses"]["202"]["links"].as_object().unwrap();
        assert_eq!(links["start_vm"], serde_json::json!({"operationId": "start_vm", "parameters": {"id": "$response.body#/id"}}));
        assert!(!links.contains_key("attach_volume") && !links.contains_key("detach_volume"), "two ids: not linked");
        let ids: std::collections::BTreeSet<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .filter_map(|op| op["operationId"].as_str())
            .collect();
        let mut linked = 0;
        for item in doc["paths"].as_object().unwrap().values() {
            for response in item["post"]["responses"].as_object().into_iter().flat_map(|r| r.values()) {
                for link in response["links"].as_object().into_iter().flat_map(|l| l.values()) {
                    assert!(ids.contains(link["operationId"].as_str().unwrap()), "{link}");
                    linked += 1;
                }
            }
        }
        assert!(linked > 20, "{linked}");
    }

    /// No schema is an `allOf` with a part that forbids the other parts'
    /// fields (a view flattening a strict request type), which no answer
    /// could satisfy; such views are documented as the one object they are.
    #[test]
    fn no_view_forbids_its_own_fields() {
        let doc = serde_json::to_value(openapi()).unwrap();
        let named = doc["components"]["schemas"].clone();
        fn walk(v: &serde_json::Value, named: &serde_json::Value, at: &str) {
            match v {
                serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, named, at)),
                serde_json::Value::Object(map) => {
                    if let Some(parts) = map.get("allOf").and_then(|p| p.as_array()) {
                        for part in parts {
                            let target = part["$ref"].as_str().and_then(|r| r.strip_prefix("#/components/schemas/")).map_or(part, |n| &named[n]);
                            assert_ne!(target["additionalProperties"], serde_json::json!(false), "{at}: an allOf part forbids the others");
                        }
                    }
                    map.iter().for_each(|(k, v)| walk(v, named, &format!("{at}/{k}")));
                }
                _ => {}
            }
        }
        walk(&doc, &named, "");
        let view = &named["TemplateView"];
        assert!(view["properties"]["id"].is_object() && view["properties"]["name"].is_object(), "{view}");
    }

    #[test]
    fn committed_event_schemas_match_the_code() {
        check("events.json", &events());
    }

    #[test]
    fn every_event_type_is_in_the_event_schema() {
        let json = events().to_json().unwrap();
        for ty in [
            "created",
            "provisioning_started",
            "network_allocated",
            "disk_prepared",
            "booted",
            "ready",
            "start_requested",
            "stop_requested",
            "restart_requested",
            "rebooted",
            "standby_requested",
            "snapshotted",
            "restore_requested",
            "restored",
            "stopped",
            "delete_requested",
            "deleted",
            "failed",
            "operation_finished",
            "org_created",
            "project_created",
            "api_key_created",
            "api_key_revoked",
            "registered",
            "ssh_key_created",
            "ssh_key_deleted",
            "template_created",
            "template_deleted",
            "webhook_endpoint_created",
            "webhook_endpoint_updated",
            "webhook_endpoint_deleted",
            "webhook_secret_rotated",
        ] {
            assert!(json.contains(&format!("\"{ty}\"")), "event type {ty} missing from the schema");
        }
    }

    #[test]
    fn every_v1_route_is_documented_with_errors() {
        let doc = openapi();
        assert!(doc.paths.paths.len() >= 10);
        for (path, item) in &doc.paths.paths {
            assert!(path.starts_with("/v1/"), "{path}");
            let ops = [&item.get, &item.post, &item.delete, &item.put, &item.patch];
            for op in ops.into_iter().flatten() {
                assert!(op.responses.responses.keys().any(|s| s.starts_with('4')), "{path} documents no 4xx");
            }
        }
    }
}

//! `dashboard/openapi.json` is the OpenAPI document the server serves: the
//! dashboard's client types are generated from that file
//! (`npm run api`), so a stale copy means stale types. Run with
//! `PICLOUD_BLESS=1` to rewrite it after changing the API.

#[test]
fn dashboard_copy_of_the_openapi_document_is_current() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dashboard/openapi.json");
    let mut current = picloud_manager::api::openapi::document_value()
        .to_pretty_json()
        .unwrap();
    current.push('\n');
    if std::env::var_os("PICLOUD_BLESS").is_some() {
        std::fs::write(&path, &current).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == current,
        "{} is stale: run `PICLOUD_BLESS=1 cargo test -p picloud-manager --test openapi_file` \
         then `cd dashboard && npm run api`",
        path.display()
    );
}

/// Operation ids are unique: generated clients key operations by them.
#[test]
fn operation_ids_are_unique() {
    let doc: serde_json::Value = serde_json::from_str(
        &picloud_manager::api::openapi::document_value()
            .to_json()
            .unwrap(),
    )
    .unwrap();
    let mut seen = std::collections::BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap_or_default().to_owned();
            if let Some(other) = seen.insert(id.clone(), format!("{method} {path}")) {
                panic!("operationId {id:?} of {method} {path} is also {other}'s");
            }
        }
    }
    assert!(
        seen.contains_key("get_scripts_by_name_versions"),
        "{seen:?}"
    );
}

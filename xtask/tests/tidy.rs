//! The architecture invariants of `docs/ARCHITECTURE.md`, checked against
//! the workspace as it is. Each test prints what to fix.

use xtask::{
    dependency_edges, long_files, packages, sqlx_outside_the_store, unexplained_unwraps,
    unsafe_code,
};

fn assert_none(what: &str, bad: Vec<String>) {
    assert!(bad.is_empty(), "{what}:\n  {}", bad.join("\n  "));
}

#[test]
fn crates_depend_only_on_what_the_code_map_allows() {
    assert_none(
        "dependency edges the code map forbids",
        dependency_edges(&packages()),
    );
}

#[test]
fn unsafe_code_is_forbidden_outside_its_two_places() {
    assert_none("unsafe code", unsafe_code(&packages()));
}

#[test]
fn only_the_store_names_sqlx() {
    assert_none(
        "sqlx named outside the store",
        sqlx_outside_the_store(&packages()),
    );
}

#[test]
fn shipped_code_explains_every_unwrap() {
    assert_none("unexplained unwraps", unexplained_unwraps(&packages()));
}

#[test]
fn no_source_file_is_too_long_to_read_in_one_sitting() {
    assert_none("files too long", long_files(&packages()));
}

#[test]
fn the_checks_see_the_workspace() {
    // A check that reads nothing passes vacuously: make sure it reads.
    let p = packages();
    let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
    for expected in [
        "picloud-core",
        "picloud-sandbox",
        "picloud-store",
        "picloud",
    ] {
        assert!(names.contains(&expected), "{expected} not in {names:?}");
    }
    let store = p.iter().find(|p| p.name == "picloud-store").unwrap();
    assert!(store.deps.iter().any(|d| d == "sqlx"));
    assert!(!store.roots.is_empty());
}

#[test]
fn the_checks_catch_what_they_forbid() {
    // Each rule on a made-up crate that breaks it.
    let dir = std::env::temp_dir().join(format!("tidy-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let root = dir.join("src/lib.rs");
    let body = "pub fn f() -> u8 { Some(1).unwrap() }\n".repeat(801);
    std::fs::write(&root, body).unwrap();
    // A comment may name it; code may not.
    let listener = "// sqlx::postgres::PgListener is the store's\n\
                    pub fn l(_: sqlx::postgres::PgListener) {}\n";
    std::fs::write(dir.join("src/listen.rs"), listener).unwrap();
    let bad = xtask::Package {
        name: "picloud-gateway".into(),
        dir: dir.clone(),
        deps: vec![
            "sqlx".into(),
            "picloud-store".into(),
            "picloud-testkit".into(),
        ],
        dev_deps: vec![],
        roots: vec![root],
    };
    let p = [bad];
    assert_eq!(dependency_edges(&p).len(), 3);
    assert_eq!(unsafe_code(&p).len(), 1);
    assert_eq!(unexplained_unwraps(&p).len(), 801);
    assert_eq!(long_files(&p).len(), 1);
    let named = sqlx_outside_the_store(&p);
    assert_eq!(named.len(), 1, "{named:?}");
    assert!(named[0].contains("listen.rs:2:"), "{named:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

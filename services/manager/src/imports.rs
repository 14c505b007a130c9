//! What a deploy imports: pinning module versions for a script, and refusing
//! import cycles among modules. Both follow each module's *latest* version,
//! the one a deploy made now would get.

use std::collections::{BTreeMap, HashMap, VecDeque};

use picloud_store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("imports the module {}, which does not exist", picloud_core::quote(.0))]
    Unknown(String),
    #[error("import cycle: {}", .0.join(" → "))]
    Cycle(Vec<String>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The latest version of every module in the import closure of `imports`.
pub async fn pin(store: &Store, imports: &[String]) -> Result<BTreeMap<String, u32>, ImportError> {
    let mut pinned = BTreeMap::new();
    let mut queue: VecDeque<String> = imports.iter().cloned().collect();
    while let Some(name) = queue.pop_front() {
        if pinned.contains_key(&name) {
            continue;
        }
        let row = store
            .latest_module_version(&name)
            .await?
            .ok_or_else(|| ImportError::Unknown(name.clone()))?;
        pinned.insert(name, row.version);
        queue.extend(row.imports);
    }
    Ok(pinned)
}

/// Refuses a new version of `module` importing `imports` when that closes a
/// cycle back to `module`; also checks every imported module exists.
pub async fn check_module(
    store: &Store,
    module: &str,
    imports: &[String],
) -> Result<(), ImportError> {
    // Breadth-first from the new imports; `parent` rebuilds the path.
    let mut parent: HashMap<String, String> = HashMap::new();
    let mut queue: VecDeque<String> = VecDeque::new();
    for i in imports {
        if parent.insert(i.clone(), module.to_owned()).is_none() {
            queue.push_back(i.clone());
        }
    }
    while let Some(name) = queue.pop_front() {
        if name == module {
            let mut path = vec![module.to_owned()];
            let mut at = parent[module].clone();
            while at != module {
                path.push(at.clone());
                at = parent[&at].clone();
            }
            path.push(module.to_owned());
            let last = path.len() - 1;
            path[1..last].reverse();
            return Err(ImportError::Cycle(path));
        }
        let row = store
            .latest_module_version(&name)
            .await?
            .ok_or_else(|| ImportError::Unknown(name.clone()))?;
        for next in row.imports {
            if !parent.contains_key(&next) {
                parent.insert(next.clone(), name.clone());
                queue.push_back(next);
            }
        }
    }
    Ok(())
}

//! `picloud deploy FILE|DIR` and `picloud module deploy FILE`.
//!
//! A folder deploys every `*.rhai` in it: a file that another file of the
//! folder imports (`import "name"`) is a module and goes first (in import
//! order); every other file is a script named after its file. A compile
//! error names the file, line and column and shows the line with a caret.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::client::{CliError, Client, seg};
use super::output::Out;
use super::output::{outln, text};

/// What one deploy asks for.
pub struct DeployArgs {
    pub path: PathBuf,
    pub name: Option<String>,
    pub limits: Vec<String>,
    /// `--route 'GET /users/:id'` (one script only).
    pub routes: Vec<String>,
    /// Async jobs of the deployed scripts keep the caller's credentials.
    pub keep_credentials: bool,
    /// `picloud module deploy FILE`: the file is a module.
    pub module: bool,
}

pub async fn deploy(client: &Client, out: Out, args: DeployArgs) -> Result<(), CliError> {
    let limits = parse_limits(&args.limits)?;
    let plan = if args.path.is_dir() {
        if args.module {
            return Err(CliError::local(format!(
                "{} is a folder; `picloud deploy FOLDER` deploys its modules and scripts",
                args.path.display()
            )));
        }
        if args.name.is_some() {
            return Err(CliError::local(
                "--name names one script; a folder's scripts are named after their files",
            ));
        }
        if !args.routes.is_empty() {
            return Err(CliError::local(
                "--route gives one script its routes; deploy that script's file with it",
            ));
        }
        plan_folder(&args.path)?
    } else {
        let name = match args.name {
            Some(n) => n,
            None => stem(&args.path)?,
        };
        vec![Item {
            kind: if args.module {
                Kind::Module
            } else {
                Kind::Script
            },
            name,
            file: args.path.clone(),
        }]
    };
    let bar = progress(plan.len());
    let mut results = Vec::new();
    for item in &plan {
        bar.set_message(format!("{} {}", item.kind.word(), item.name));
        let source = read(&item.file)?;
        let (path, body) = match item.kind {
            Kind::Module => (
                format!("/modules/{}", seg(&item.name)),
                json!({ "source": source }),
            ),
            Kind::Script => (
                format!("/scripts/{}", seg(&item.name)),
                json!({
                    "source": source,
                    "limits": limits,
                    "keep_credentials": args.keep_credentials,
                    "routes": args.routes,
                }),
            ),
        };
        match client.api(Method::PUT, &path, Some(&body)).await {
            Ok(v) => {
                bar.inc(1);
                results.push(json!({
                    "kind": item.kind.word(),
                    "name": item.name,
                    "version": v["version"],
                    "file": item.file.display().to_string(),
                    "url": (item.kind == Kind::Script)
                        .then(|| format!("{}/fn/{}", client.base(), item.name)),
                    "routes": route_urls(client.base(), &v["routes"]),
                }));
            }
            Err(e) => {
                bar.finish_and_clear();
                // What a folder deployed before the failure stays deployed:
                // say so, then why the rest was not.
                if !results.is_empty() {
                    report(out, &results);
                    eprintln!(
                        "stopped at {} {}; {} of {} deployed",
                        item.kind.word(),
                        item.name,
                        results.len(),
                        plan.len()
                    );
                }
                return Err(with_source_context(e, &item.file, &source));
            }
        }
    }
    bar.finish_and_clear();
    report(out, &results);
    Ok(())
}

/// What was deployed: one line each with the endpoint, or the JSON list.
fn report(out: Out, results: &[Value]) {
    if out.json {
        return out.json(&Value::Array(results.to_vec()));
    }
    for r in results {
        let what = format!(
            "{} {} v{}",
            r["kind"].as_str().unwrap_or(""),
            r["name"].as_str().unwrap_or(""),
            r["version"]
        );
        match r["url"].as_str() {
            Some(url) => outln!("{}  {what}  {url}", out.paint("deployed", true)),
            None => outln!("{}  {what}", out.paint("deployed", true)),
        }
        for route in r["routes"].as_array().into_iter().flatten() {
            outln!("  {}", text(route));
        }
    }
}

/// A script's routes (`["GET /users/:id"]` from the API) as
/// `GET http://host/users/:id`, the endpoint each one serves.
pub fn route_urls(base: &str, routes: &Value) -> Value {
    let urls = routes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|r| match r.split_once(' ') {
            Some((method, path)) => json!(format!("{method} {base}{path}")),
            None => json!(r),
        })
        .collect();
    Value::Array(urls)
}

/// `--limit k=v`, as the API's `limits` object.
fn parse_limits(raw: &[String]) -> Result<Map<String, Value>, CliError> {
    let mut limits = Map::new();
    for l in raw {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| CliError::local(format!("--limit {l:?}: write it as name=value")))?;
        let n: u64 = v.trim().parse().map_err(|_| {
            CliError::local(format!("--limit {l:?}: the value must be a whole number"))
        })?;
        limits.insert(k.trim().to_owned(), json!(n));
    }
    Ok(limits)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Module,
    Script,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Self::Module => "module",
            Self::Script => "script",
        }
    }
}

struct Item {
    kind: Kind,
    name: String,
    file: PathBuf,
}

/// A folder's files in deploy order: modules (imported ones first), then
/// scripts, each group by name.
fn plan_folder(dir: &Path) -> Result<Vec<Item>, CliError> {
    let mut files = BTreeMap::new();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| CliError::local(format!("cannot read {}: {e}", dir.display())))?;
    for e in entries.flatten() {
        let p = e.path();
        if p.is_file() && p.extension().is_some_and(|x| x == "rhai") {
            files.insert(stem(&p)?, p);
        }
    }
    if files.is_empty() {
        return Err(CliError::local(format!(
            "no *.rhai files in {}",
            dir.display()
        )));
    }
    let mut imports = BTreeMap::new();
    for (name, file) in &files {
        imports.insert(name.clone(), imports_of(&read(file)?));
    }
    let imported: BTreeSet<&String> = imports.values().flatten().collect();
    let modules: BTreeSet<String> = files
        .keys()
        .filter(|n| imported.contains(n))
        .cloned()
        .collect();
    // Depth-first: a module's own imports go before it.
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        name: &str,
        imports: &BTreeMap<String, Vec<String>>,
        modules: &BTreeSet<String>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(name.to_owned()) {
            return;
        }
        for dep in imports.get(name).into_iter().flatten() {
            if modules.contains(dep) {
                visit(dep, imports, modules, seen, order);
            }
        }
        order.push(name.to_owned());
    }
    for m in &modules {
        visit(m, &imports, &modules, &mut seen, &mut order);
    }
    let mut plan: Vec<Item> = order
        .into_iter()
        .map(|name| Item {
            kind: Kind::Module,
            file: files[&name].clone(),
            name,
        })
        .collect();
    for (name, file) in &files {
        if !modules.contains(name) {
            plan.push(Item {
                kind: Kind::Script,
                name: name.clone(),
                file: file.clone(),
            });
        }
    }
    Ok(plan)
}

/// The literal module names a source imports (`import "name"`).
fn imports_of(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(i) = rest.find("import") {
        rest = &rest[i + "import".len()..];
        let after = rest.trim_start();
        if let Some(quoted) = after.strip_prefix('"')
            && let Some(end) = quoted.find('"')
        {
            out.push(quoted[..end].to_owned());
        }
    }
    out
}

fn stem(p: &Path) -> Result<String, CliError> {
    p.file_stem()
        .and_then(|s| s.to_str())
        .map(str::to_owned)
        .ok_or_else(|| CliError::local(format!("cannot name a script after {}", p.display())))
}

fn read(p: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(p)
        .map_err(|e| CliError::local(format!("cannot read {}: {e}", p.display())))
}

fn progress(len: usize) -> ProgressBar {
    // Drawn on stderr, and only on a terminal (indicatif hides it otherwise).
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} deploying {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// A compile error with the file, the line and a caret under the column.
fn with_source_context(e: CliError, file: &Path, source: &str) -> CliError {
    let CliError::Api {
        code,
        message,
        details: Some(d),
        ..
    } = &e
    else {
        return e;
    };
    let (Some(line), Some(column)) = (d["line"].as_u64(), d["column"].as_u64()) else {
        return e;
    };
    CliError::Local(render_compile_error(
        file,
        source,
        code,
        message,
        line as usize,
        column as usize,
    ))
}

pub fn render_compile_error(
    file: &Path,
    source: &str,
    code: &str,
    message: &str,
    line: usize,
    column: usize,
) -> String {
    let text = source.lines().nth(line.saturating_sub(1)).unwrap_or("");
    let gutter = line.to_string().len();
    // The caret sits under the column's character; tabs keep their width.
    let pad: String = text
        .chars()
        .take(column.saturating_sub(1))
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    format!(
        "{message} ({code})\n --> {}:{line}:{column}\n{:gutter$} |\n{line} | {text}\n{:gutter$} | {pad}^",
        file.display(),
        "",
        "",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compile_error_points_at_its_column() {
        let s = render_compile_error(
            Path::new("hello.rhai"),
            "let a = 1;\nlet b = ;\n",
            "compile_error",
            "syntax error: expecting an expression",
            2,
            9,
        );
        assert_eq!(
            s,
            "syntax error: expecting an expression (compile_error)\n --> hello.rhai:2:9\n  |\n2 | let b = ;\n  |         ^"
        );
    }

    #[test]
    fn imports_are_read_without_running_anything() {
        let src = "import \"util\" as u;\n// import nothing\nimport  \"math\" as m;";
        assert_eq!(imports_of(src), ["util", "math"]);
    }

    #[test]
    fn a_folder_deploys_imported_modules_first() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("api.rhai"), "import \"util\" as u; u::f()").unwrap();
        std::fs::write(
            dir.path().join("util.rhai"),
            "import \"base\" as b; fn f() { b::g() }",
        )
        .unwrap();
        std::fs::write(dir.path().join("base.rhai"), "fn g() { 1 }").unwrap();
        std::fs::write(dir.path().join("zeta.rhai"), "1").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a script").unwrap();
        let plan = plan_folder(dir.path()).unwrap();
        let names: Vec<(&str, &str)> = plan
            .iter()
            .map(|i| (i.kind.word(), i.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("module", "base"),
                ("module", "util"),
                ("script", "api"),
                ("script", "zeta")
            ]
        );
    }

    #[test]
    fn limits_must_be_numbers() {
        assert!(parse_limits(&["max_operations=5".into()]).is_ok());
        assert!(parse_limits(&["max_operations".into()]).is_err());
        assert!(parse_limits(&["max_operations=lots".into()]).is_err());
    }
}

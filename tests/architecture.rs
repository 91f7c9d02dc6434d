//! ARCHITECTURE.md's layering table is the code's: which module uses which (by `crate::` paths
//! in `src/`), with no cycle. The test fails when either side changes without the other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level modules of the crate and the other top-level modules each one's code names.
fn uses_in_code() -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<String> = std::fs::read_dir("src")
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let module = name.strip_suffix(".rs")?.to_string();
            (module != "lib" && module != "main").then_some(module)
        })
        .collect();
    modules
        .iter()
        .map(|module| {
            let mut files = vec![Path::new("src").join(format!("{module}.rs"))];
            collect(&Path::new("src").join(module), &mut files);
            let mut uses = BTreeSet::new();
            for file in files {
                for name in crate_paths(&std::fs::read_to_string(&file).unwrap()) {
                    if modules.contains(&name) && name != *module {
                        uses.insert(name);
                    }
                }
            }
            (module.clone(), uses)
        })
        .collect()
}

fn collect(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The module names after `crate::` in code: comments and the test module (last in a file, by
/// the house style) are not the module's dependencies.
fn crate_paths(text: &str) -> Vec<String> {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    code.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .flat_map(|line| line.match_indices("crate::").map(move |(i, _)| &line[i + 7..]))
        .map(|rest| rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect())
        .collect()
}

/// The table between the layering markers of ARCHITECTURE.md.
fn uses_in_doc() -> BTreeMap<String, BTreeSet<String>> {
    let doc = std::fs::read_to_string("ARCHITECTURE.md").unwrap();
    let start = doc.find("<!-- layering: checked by tests/architecture.rs -->").expect("the layering table's marker");
    let end = doc[start..].find("<!-- /layering -->").expect("the layering table's end") + start;
    doc[start..end]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|row| {
            let cells: Vec<&str> = row.trim_matches('|').split('|').collect();
            let name = |cell: &str| cell.trim().trim_matches('`').to_string();
            let uses = cells[1].split(',').map(name).filter(|n| !n.is_empty()).collect();
            (name(cells[0]), uses)
        })
        .collect()
}

#[test]
fn the_layering_table_is_what_the_code_does() {
    let code = uses_in_code();
    let doc = uses_in_doc();
    let mut disagreements = Vec::new();
    for (module, uses) in &code {
        match doc.get(module) {
            None => disagreements.push(format!("{module} is not in the table")),
            Some(listed) if listed != uses => disagreements.push(format!(
                "{module}: the code uses {:?}, the table says {:?}",
                uses.iter().collect::<Vec<_>>(),
                listed.iter().collect::<Vec<_>>()
            )),
            _ => {}
        }
    }
    for module in doc.keys().filter(|m| !code.contains_key(*m)) {
        disagreements.push(format!("{module} is in the table but not in src/"));
    }
    assert!(disagreements.is_empty(), "ARCHITECTURE.md and src/ disagree:\n{}", disagreements.join("\n"));
}

#[test]
fn no_two_modules_use_each_other() {
    let code = uses_in_code();
    for start in code.keys() {
        // Depth-first from each module: reaching it again is a cycle, printed as its path.
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((module, path)) = stack.pop() {
            for next in &code[&module] {
                assert!(next != start, "cycle: {} -> {next}", path.join(" -> "));
                if seen.insert(next.clone()) {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    stack.push((next.clone(), longer));
                }
            }
        }
    }
}

#[test]
fn a_reference_in_a_comment_or_a_test_is_no_dependency() {
    let text = "use crate::config::X;\n// crate::app is wired elsewhere\nlet y = crate::yaml::parse; // crate::cli\n#[cfg(test)]\nmod tests {\n    use crate::demo;\n}\n";
    assert_eq!(crate_paths(text), ["config", "yaml"]);
}
